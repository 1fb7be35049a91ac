//! Registration limits kept in storage, on real gateways over one store: the
//! codes sent to an identifier and the wrong codes tried for it are counted
//! for the whole deployment (two gateways share them, a restart keeps them),
//! and a recovery of an account with a registration lock needs its PIN, whose
//! attempts are limited the same way.

mod support;

use rossby_gateway::config::StorageConfig;
use rossby_gateway::settings::Rate;
use rossby_gateway::{Config, Gateway};
use rossby_keyspace::DeviceId;
use rossby_protocol::crypto::DeviceKeys;
use rossby_protocol::pb::{self, Method, Status};
use rossby_storage::kv::BackendConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{RawConn, RawDevice, codes_file, expect_status, last_code, start_with, wrong_code};

/// Gateways of one deployment over one in-memory store.
struct Deployment {
    dir: tempfile::TempDir,
    kv: rossby_storage::Kv,
    first: Option<Config>,
}

impl Deployment {
    async fn new() -> Deployment {
        Deployment {
            dir: tempfile::tempdir().unwrap(),
            kv: rossby_storage::kv::open(&BackendConfig::Memory)
                .await
                .unwrap(),
            first: None,
        }
    }

    /// Starts a gateway named `name` with the limits under test.
    async fn start(&mut self, name: &str) -> Gateway {
        let mut c = Config::for_tests(self.dir.path().join(name));
        if let Some(first) = &self.first {
            c = c.same_deployment_as(first);
        }
        c.storage = StorageConfig::Shared(self.kv.clone());
        // Three codes per identifier, none more for a day.
        c.api.rate_limits.registrations_per_identifier = Rate {
            per_second: 1.0 / 86_400.0,
            burst: 3.0,
        };
        c.api.wrong_codes_per_identifier_per_day = 4;
        c.api.registration_lock_max_attempts = 3;
        c.api.registration_lock_lockout = Duration::from_secs(3600);
        // Keeps the slow hash quick in unoptimised test builds.
        c.api.registration_lock_memory_kib = 64;
        if self.first.is_none() {
            self.first = Some(c.clone());
        }
        start_with(c).await
    }

    fn codes(&self, name: &str) -> PathBuf {
        codes_file(&self.dir.path().join(name))
    }
}

/// A device that has not registered yet.
struct Fresh {
    keys: DeviceKeys,
    id: DeviceId,
}

fn fresh() -> Fresh {
    Fresh {
        keys: DeviceKeys::generate(),
        id: DeviceId::new(),
    }
}

async fn register(conn: &RawConn, identifier: &str, device: &Fresh, recover: bool) -> pb::Response {
    let mut request = support::register_request(identifier, &device.keys, device.id);
    request.recover = recover;
    conn.call_anonymous(Method::Register, &request).await
}

async fn authorize(
    conn: &RawConn,
    identifier: &str,
    device: &Fresh,
    code: &str,
    pin: &str,
) -> pb::Response {
    let request = pb::AuthorizeRequest {
        identifier: identifier.into(),
        device_id: device.id.as_bytes().to_vec(),
        code: code.into(),
        registration_lock_pin: pin.into(),
    };
    conn.call_anonymous(Method::Authorize, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_limits_are_shared_by_gateways_and_survive_a_restart() {
    let mut deployment = Deployment::new().await;
    let a = deployment.start("a").await;
    let b = deployment.start("b").await;
    let (conn_a, conn_b) = (RawConn::connect(&a).await, RawConn::connect(&b).await);
    let victim = "+14155550123";
    // The attack: spread registrations over gateways to get more codes (and so
    // more guesses) than one gateway allows. Three codes in all, wherever asked.
    for conn in [&conn_a, &conn_b, &conn_a] {
        support::ok::<pb::RegisterResponse>(&register(conn, victim, &fresh(), false).await);
    }
    expect_status(
        &register(&conn_b, victim, &fresh(), false).await,
        Status::RateLimited,
    );
    // A restarted gateway does not start again from a full bucket.
    conn_a.close().await;
    a.shutdown().await;
    let a = deployment.start("a2").await;
    let conn_a = RawConn::connect(&a).await;
    let refused = register(&conn_a, victim, &fresh(), false).await;
    expect_status(&refused, Status::RateLimited);
    assert!(refused.retry_after_ms > 0);

    // Wrong codes count per identifier over all its registrations and gateways:
    // four in all, then even the right code is refused.
    let other = "+14155550124";
    let devices = [fresh(), fresh(), fresh()];
    for d in &devices {
        support::ok::<pb::RegisterResponse>(&register(&conn_b, other, d, false).await);
    }
    let code_of = |n: usize| support::codes_for(&deployment.codes("b"), other)[n].clone();
    for (conn, device, n) in [
        (&conn_a, &devices[0], 0),
        (&conn_b, &devices[0], 0),
        (&conn_a, &devices[1], 1),
    ] {
        let wrong = wrong_code(&code_of(n));
        expect_status(
            &authorize(conn, other, device, &wrong, "").await,
            Status::InvalidCode,
        );
    }
    let wrong = wrong_code(&code_of(1));
    expect_status(
        &authorize(&conn_b, other, &devices[1], &wrong, "").await,
        Status::CodeAttemptsExhausted,
    );
    expect_status(
        &authorize(&conn_a, other, &devices[2], &code_of(2), "").await,
        Status::CodeAttemptsExhausted,
    );
    for conn in [conn_a, conn_b] {
        conn.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_identifier_spends_the_same_wrong_code_budget() {
    let mut deployment = Deployment::new().await;
    let a = deployment.start("a").await;
    let conn = RawConn::connect(&a).await;
    let codes = deployment.codes("a");
    let target = "+14155550125";
    // A stranger's wrong code at registration counts for the identifier...
    let stranger = fresh();
    support::ok::<pb::RegisterResponse>(&register(&conn, target, &stranger, false).await);
    let wrong = wrong_code(&last_code(&codes, target));
    expect_status(
        &authorize(&conn, target, &stranger, &wrong, "").await,
        Status::InvalidCode,
    );
    // ...and so do an account's wrong codes when it adds the identifier: four
    // in all, whichever way they were tried, then even the right code fails.
    let alice = support::register_raw(&conn, &codes, "alice@example.com").await;
    let add = pb::AddIdentifierRequest {
        identifier: target.into(),
        discoverable: true,
    };
    support::ok::<pb::AddIdentifierResponse>(&conn.call(&alice, Method::AddIdentifier, &add).await);
    let code = last_code(&codes, target);
    let confirm = |code: String| pb::ConfirmIdentifierRequest {
        identifier: target.into(),
        code,
    };
    for _ in 0..2 {
        expect_status(
            &conn
                .call(
                    &alice,
                    Method::ConfirmIdentifier,
                    &confirm(wrong_code(&code)),
                )
                .await,
            Status::InvalidCode,
        );
    }
    expect_status(
        &conn
            .call(
                &alice,
                Method::ConfirmIdentifier,
                &confirm(wrong_code(&code)),
            )
            .await,
        Status::CodeAttemptsExhausted,
    );
    support::ok::<pb::AddIdentifierResponse>(&conn.call(&alice, Method::AddIdentifier, &add).await);
    expect_status(
        &conn
            .call(
                &alice,
                Method::ConfirmIdentifier,
                &confirm(last_code(&codes, target)),
            )
            .await,
        Status::CodeAttemptsExhausted,
    );
    conn.close().await;
    a.shutdown().await;
}

/// Registers `identifier` through `conn` (codes from `codes`) and sets its
/// registration lock.
async fn locked_account(conn: &RawConn, codes: &Path, identifier: &str, pin: &str) -> RawDevice {
    let owner = support::register_raw(conn, codes, identifier).await;
    let lock = pb::UpdateSettingsRequest {
        registration_lock_pin: Some(pin.into()),
        ..pb::UpdateSettingsRequest::default()
    };
    let reply: pb::UpdateSettingsResponse =
        support::ok(&conn.call(&owner, Method::UpdateSettings, &lock).await);
    assert!(reply.registration_lock);
    owner
}

async fn still_works(conn: &RawConn, device: &RawDevice) -> bool {
    let response = conn
        .call(device, Method::ListDevices, &pb::ListDevicesRequest {})
        .await;
    rossby_protocol::status::status_of(&response) == Status::Ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_of_a_locked_account_needs_its_pin() {
    let mut deployment = Deployment::new().await;
    let gateway = deployment.start("gw").await;
    let codes = deployment.codes("gw");
    let conn = RawConn::connect(&gateway).await;
    let identifier = "lock@example.com";
    let owner = locked_account(&conn, &codes, identifier, "2468").await;

    // The attack: whoever receives the code (a SIM swap) recovers the account.
    let thief = fresh();
    support::ok::<pb::RegisterResponse>(&register(&conn, identifier, &thief, true).await);
    let code = last_code(&codes, identifier);
    let no_pin = authorize(&conn, identifier, &thief, &code, "").await;
    expect_status(&no_pin, Status::RegistrationLocked);
    let wrong = authorize(&conn, identifier, &thief, &code, "1357").await;
    expect_status(&wrong, Status::RegistrationLocked);
    assert!(
        still_works(&conn, &owner).await,
        "the owner keeps the account"
    );
    // A wrong code is still a wrong code, whatever the PIN.
    expect_status(
        &authorize(&conn, identifier, &thief, &wrong_code(&code), "2468").await,
        Status::InvalidCode,
    );

    // With the PIN (the owner on a new phone) the same code recovers it.
    let recovered: pb::AuthorizeResponse =
        support::ok(&authorize(&conn, identifier, &thief, &code, "2468").await);
    assert_eq!(recovered.box_id, owner.box_id.as_bytes());
    assert!(
        !still_works(&conn, &owner).await,
        "the old devices are gone"
    );

    // The lock stays after a recovery; removed, recovery needs no PIN.
    let new_device = RawDevice {
        keys: thief.keys.clone(),
        device_id: thief.id,
        box_id: owner.box_id,
        creds: support::open_credentials(&thief.keys, &recovered.sealed_credentials),
    };
    let unlock = pb::UpdateSettingsRequest {
        registration_lock_pin: Some(String::new()),
        ..pb::UpdateSettingsRequest::default()
    };
    let reply: pb::UpdateSettingsResponse = support::ok(
        &conn
            .call(&new_device, Method::UpdateSettings, &unlock)
            .await,
    );
    assert!(!reply.registration_lock);
    // A PIN too short to be a lock is refused.
    let short = pb::UpdateSettingsRequest {
        registration_lock_pin: Some("12".into()),
        ..pb::UpdateSettingsRequest::default()
    };
    let reply = conn.call(&new_device, Method::UpdateSettings, &short).await;
    expect_status(&reply, Status::BadRequest);
    let another = fresh();
    support::ok::<pb::RegisterResponse>(&register(&conn, identifier, &another, true).await);
    let code = last_code(&codes, identifier);
    support::ok::<pb::AuthorizeResponse>(&authorize(&conn, identifier, &another, &code, "").await);
    conn.close().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_attempts_are_limited_across_gateways() {
    let mut deployment = Deployment::new().await;
    let a = deployment.start("a").await;
    let b = deployment.start("b").await;
    let (conn_a, conn_b) = (RawConn::connect(&a).await, RawConn::connect(&b).await);
    let identifier = "pin@example.com";
    let owner = locked_account(&conn_a, &deployment.codes("a"), identifier, "9999").await;

    let thief = fresh();
    support::ok::<pb::RegisterResponse>(&register(&conn_b, identifier, &thief, true).await);
    let code = last_code(&deployment.codes("b"), identifier);
    // Three wrong PINs, on either gateway: the third starts the lockout.
    for (conn, pin) in [(&conn_a, "0001"), (&conn_b, "0002")] {
        expect_status(
            &authorize(conn, identifier, &thief, &code, pin).await,
            Status::RegistrationLocked,
        );
    }
    let locked = authorize(&conn_a, identifier, &thief, &code, "0003").await;
    expect_status(&locked, Status::RateLimited);
    assert!(
        locked.retry_after_ms > 3_000_000,
        "{}",
        locked.retry_after_ms
    );
    // Now even the right PIN is not checked, on any gateway.
    expect_status(
        &authorize(&conn_b, identifier, &thief, &code, "9999").await,
        Status::RateLimited,
    );
    assert!(still_works(&conn_a, &owner).await);
    assert_eq!(
        b.metrics().registration_lock_refused_total.get()
            + a.metrics().registration_lock_refused_total.get(),
        3
    );
    for conn in [conn_a, conn_b] {
        conn.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_the_cli_set_the_lock_and_recover_with_the_pin() {
    let mut deployment = Deployment::new().await;
    let gateway = deployment.start("gw").await;
    let codes = deployment.codes("gw");
    let dir = deployment.dir.path().to_path_buf();
    let identifier = "sdk@example.com";
    let box_id = {
        let owner = support::client(&gateway, dir.join("owner.state")).await;
        let box_id = support::register(&owner, identifier, &codes).await;
        assert!(owner.set_registration_lock(Some("8642")).await.unwrap());
        assert!(owner.set_registration_lock(Some("1")).await.is_err());
        owner.close().await;
        box_id
    };
    let phone_state = dir.join("phone.state");
    {
        let phone = support::client(&gateway, phone_state.clone()).await;
        phone.register(identifier, true).await.unwrap();
        let code = last_code(&codes, identifier);
        let refused = phone.recover(&code, None).await.unwrap_err();
        assert_eq!(
            refused.status(),
            Some(Status::RegistrationLocked),
            "{refused}"
        );
        assert_eq!(phone.recover(&code, Some("8642")).await.unwrap(), box_id);
        phone.close().await;
    }
    let (status, out, err) =
        support::rossby(&phone_state, &["settings", "--registration-lock", "off"]).await;
    assert_eq!(status, Some(0), "{out}{err}");
    assert!(out.contains("registration lock off"), "{out}");
    gateway.shutdown().await;
}
