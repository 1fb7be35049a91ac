//! Ping and Health: unauthenticated liveness and storage checks.

use super::{Failure, Shared, now_ms};
use rossby_keyspace::{BoxId, Key, RegionId};
use rossby_protocol::pb;
use std::time::{Duration, Instant};

/// Deadline of Health's storage probe.
pub const HEALTH_PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Ping: the gateway clock and region.
pub(crate) fn ping(shared: &Shared) -> Result<pb::PingResponse, Failure> {
    Ok(pb::PingResponse {
        server_time_ms: now_ms(),
        region: u32::from(shared.settings.region.0),
        sender_certificate_keys: shared.certificate_keys.public().to_vec(),
        service_name: shared.settings.service.to_string(),
    })
}

/// Health: whether a storage read completes within [`HEALTH_PROBE_DEADLINE`], and
/// how long it took.
pub(crate) async fn health(shared: &Shared) -> pb::HealthResponse {
    let started = Instant::now();
    let probe_key = Key::Next(BoxId::with_random(
        RegionId(shared.settings.region.0),
        [0; 16],
    ))
    .encode();
    let probe = async {
        let mut txn = shared.store.kv.begin().await?;
        let read = txn.get(&probe_key).await;
        txn.rollback().await?;
        read.map(|_| ())
    };
    let storage_ok = match tokio::time::timeout(HEALTH_PROBE_DEADLINE, probe).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health probe: storage read failed");
            false
        }
        Err(_) => {
            tracing::warn!("health probe: storage did not answer in time");
            false
        }
    };
    pb::HealthResponse {
        storage_ok,
        storage_latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        region: u32::from(shared.settings.region.0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::TestEnv;
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;

    #[tokio::test]
    async fn ping_and_health_answer_without_credentials() {
        let env = TestEnv::new();
        let resp = env.call(1, Method::Ping, &pb::PingRequest {}).await;
        assert_eq!(status_of(&resp), Status::Ok);
        let ping: pb::PingResponse = TestEnv::body(&resp);
        assert_eq!(ping.region, u32::from(env.region().0));
        assert!(ping.server_time_ms > 1_700_000_000_000);
        assert!(resp.server_time_ms >= ping.server_time_ms);
        // The service name every MAC covers, so a client can compare its own.
        assert_eq!(ping.service_name, "rossby:7400");
        let resp = env.call(1, Method::Health, &pb::HealthRequest {}).await;
        let health: pb::HealthResponse = TestEnv::body(&resp);
        assert!(health.storage_ok);
    }
}
