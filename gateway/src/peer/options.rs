//! The gateway-to-gateway options: the peer endpoint, its presence leases, the
//! box-ownership lease and the fetch poll that backs up lost notifications.

use super::PeerConfig;
use super::tls::PeerTls;
use crate::config::check::{millis, secs};
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

crate::config::options! {
    /// The peer endpoint and the leases gateways coordinate through
    /// (docs/configuration.md, "Cross-gateway push").
    #[derive(clap::Args, serde::Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "Cross-gateway push")]
    pub struct PeerOptions {
        /// Peer endpoint (UDP) listen address; turns gateway-to-gateway notifications
        /// on (with --peer-ca, --peer-cert, --peer-key) [default: off].
        #[arg(long, env = "ROSSBY_PEER_LISTEN", value_name = "ADDR")]
        pub peer_listen: Option<SocketAddr>,
        /// `host:port` other gateways dial to reach this one's peer endpoint
        /// [default: --peer-listen, when it is a specific address].
        #[arg(long, env = "ROSSBY_PEER_ADVERTISE", value_name = "HOST:PORT")]
        pub peer_advertise: Option<String>,
        /// The deployment CA certificate (PEM) that signs every gateway's peer certificate.
        #[arg(long, env = "ROSSBY_PEER_CA", value_name = "FILE")]
        pub peer_ca: Option<PathBuf>,
        /// This gateway's peer certificate chain (PEM), signed by --peer-ca.
        #[arg(long, env = "ROSSBY_PEER_CERT", value_name = "FILE")]
        pub peer_cert: Option<PathBuf>,
        /// The private key (PEM) of --peer-cert.
        #[arg(long, env = "ROSSBY_PEER_KEY", value_name = "FILE")]
        pub peer_key: Option<PathBuf>,
        /// Lifetime of a presence lease in seconds [default: 30].
        #[arg(long, env = "ROSSBY_PEER_LEASE_SECS", value_name = "SECS")]
        pub peer_lease_secs: Option<u64>,
        /// Seconds between presence lease renewals; below --peer-lease-secs [default: 10].
        #[arg(long, env = "ROSSBY_PEER_RENEW_SECS", value_name = "SECS")]
        pub peer_renew_secs: Option<u64>,
        /// Lifetime of a gateway's box-ownership lease in milliseconds: a dead
        /// owner's boxes move within this plus --owner-renew-ms [default: 5000].
        #[arg(long, env = "ROSSBY_OWNER_LEASE_MS", value_name = "MS")]
        pub owner_lease_ms: Option<u64>,
        /// Milliseconds between ownership lease renewals (and refreshes of the view of
        /// every region's gateways); below --owner-lease-ms [default: 1000].
        #[arg(long, env = "ROSSBY_OWNER_RENEW_MS", value_name = "MS")]
        pub owner_renew_ms: Option<u64>,
        /// Milliseconds between storage re-reads of a waiting fetch (the fallback for
        /// lost notifications); 0 switches it off [default: 1000].
        #[arg(long, env = "ROSSBY_FETCH_POLL_MS", value_name = "MS")]
        pub fetch_poll_ms: Option<u64>,
    }
}

/// What the peer options set, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSettings {
    /// The peer endpoint; `None`: peer notifications are off.
    pub peer: Option<PeerConfig>,
    /// Lifetime and renewal interval of the box-ownership lease.
    pub owner_lease: (Duration, Duration),
    /// How often a waiting fetch re-reads storage; `None`: never.
    pub fetch_poll_interval: Option<Duration>,
}

impl PeerOptions {
    /// The settings: the endpoint is off without `--peer-listen`, which then
    /// needs the CA, certificate and key files.
    pub fn into_settings(self) -> Result<PeerSettings> {
        let poll_ms = self
            .fetch_poll_ms
            .unwrap_or(millis(crate::api::messaging::FETCH_POLL_INTERVAL));
        if poll_ms > 60_000 {
            return Err(Error::Config(format!(
                "--fetch-poll-ms must be between 0 (off) and 60000 (got {poll_ms})"
            )));
        }
        let fetch_poll_interval = (poll_ms > 0).then(|| Duration::from_millis(poll_ms));
        let owner_lease = owner_lease(
            self.owner_lease_ms
                .unwrap_or(millis(super::ownership::DEFAULT_OWNER_LEASE)),
            self.owner_renew_ms
                .unwrap_or(millis(super::ownership::DEFAULT_OWNER_RENEW)),
        )?;
        let lease = secs(
            "peer-lease-secs",
            self.peer_lease_secs
                .unwrap_or(super::DEFAULT_LEASE.as_secs()),
            2,
            3600,
        )?;
        let renew_interval = secs(
            "peer-renew-secs",
            self.peer_renew_secs
                .unwrap_or(super::DEFAULT_RENEW_INTERVAL.as_secs()),
            1,
            3600,
        )?;
        let files = [
            ("peer-ca", self.peer_ca),
            ("peer-cert", self.peer_cert),
            ("peer-key", self.peer_key),
        ];
        let advertise = self.peer_advertise;
        let Some(listen) = self.peer_listen else {
            if let Some((flag, _)) = files.iter().find(|(_, path)| path.is_some()) {
                return Err(Error::Config(format!("--{flag} needs --peer-listen")));
            }
            if advertise.is_some() {
                return Err(Error::Config("--peer-advertise needs --peer-listen".into()));
            }
            return Ok(PeerSettings {
                peer: None,
                owner_lease,
                fetch_poll_interval,
            });
        };
        let [(_, ca), (_, cert), (_, key)] = files;
        let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
            return Err(Error::Config(
                "--peer-listen needs --peer-ca, --peer-cert and --peer-key".into(),
            ));
        };
        let advertise = advertise.map(|a| a.trim().to_string());
        if advertise.is_none() && listen.ip().is_unspecified() {
            return Err(Error::Config(format!(
                "--peer-advertise is needed when --peer-listen is {listen} (other gateways cannot dial it)"
            )));
        }
        let (owner_lease_time, owner_renew) = owner_lease;
        let peer = PeerConfig {
            listen,
            advertise,
            tls: PeerTls::Files { ca, cert, key },
            lease,
            renew_interval,
            owner_lease: owner_lease_time,
            owner_renew,
        };
        peer.check()?;
        Ok(PeerSettings {
            peer: Some(peer),
            owner_lease,
            fetch_poll_interval,
        })
    }
}

/// The box-ownership lease and its renewal interval, checked.
fn owner_lease(lease_ms: u64, renew_ms: u64) -> Result<(Duration, Duration)> {
    if !(100..=600_000).contains(&lease_ms) {
        return Err(Error::Config(format!(
            "--owner-lease-ms must be between 100 and 600000 (got {lease_ms})"
        )));
    }
    if renew_ms == 0 || renew_ms >= lease_ms {
        return Err(Error::Config(format!(
            "--owner-renew-ms must be positive and below --owner-lease-ms ({lease_ms}) (got {renew_ms})"
        )));
    }
    Ok((
        Duration::from_millis(lease_ms),
        Duration::from_millis(renew_ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{ENV_LOCK, err, parse};

    #[test]
    fn peer_options_turn_notifications_on_and_are_checked() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let c = parse(&[]).unwrap();
        assert!(c.peer.is_none(), "off by default");
        assert_eq!(c.fetch_poll_interval, Some(Duration::from_secs(1)));

        let c = parse(&[
            "--peer-listen",
            "0.0.0.0:7402",
            "--peer-advertise",
            "gw1.us-east.internal:7402",
            "--peer-ca",
            "/ca.pem",
            "--peer-cert",
            "/peer.pem",
            "--peer-key",
            "/peer.key",
            "--peer-lease-secs",
            "20",
            "--peer-renew-secs",
            "5",
            "--owner-lease-ms",
            "3000",
            "--owner-renew-ms",
            "500",
            "--fetch-poll-ms",
            "0",
        ])
        .unwrap();
        let peer = c.peer.unwrap();
        assert_eq!(peer.owner_lease, Duration::from_millis(3000));
        assert_eq!(peer.owner_renew, Duration::from_millis(500));
        assert_eq!(peer.listen, "0.0.0.0:7402".parse().unwrap());
        assert_eq!(peer.advertise.as_deref(), Some("gw1.us-east.internal:7402"));
        assert_eq!(
            peer.tls,
            crate::peer::tls::PeerTls::Files {
                ca: "/ca.pem".into(),
                cert: "/peer.pem".into(),
                key: "/peer.key".into(),
            }
        );
        assert_eq!(peer.lease, Duration::from_secs(20));
        assert_eq!(peer.renew_interval, Duration::from_secs(5));
        assert_eq!(c.fetch_poll_interval, None);

        let files = ["--peer-ca", "/c", "--peer-cert", "/p", "--peer-key", "/k"];
        let with = |extra: &[&'static str]| {
            let mut argv = files.to_vec();
            argv.extend_from_slice(extra);
            argv
        };
        for (argv, needle) in [
            (vec!["--peer-ca", "/c"], "--peer-ca needs --peer-listen"),
            (
                vec!["--peer-advertise", "gw:1"],
                "--peer-advertise needs --peer-listen",
            ),
            (
                vec!["--peer-listen", "127.0.0.1:7402"],
                "needs --peer-ca, --peer-cert and --peer-key",
            ),
            (
                with(&["--peer-listen", "0.0.0.0:7402"]),
                "--peer-advertise is needed",
            ),
            (
                with(&[
                    "--peer-listen",
                    "127.0.0.1:7402",
                    "--peer-advertise",
                    "nohost",
                ]),
                "--peer-advertise",
            ),
            (
                with(&["--peer-listen", "127.0.0.1:7402", "--peer-renew-secs", "30"]),
                "--peer-renew-secs",
            ),
            (vec!["--fetch-poll-ms", "70000"], "--fetch-poll-ms"),
        ] {
            let message = err(&argv);
            assert!(message.contains(needle), "{argv:?}: {message}");
        }
    }
}
