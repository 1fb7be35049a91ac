//! The QUIC transport options: connection and stream limits, flow-control
//! windows, address validation and the per-connection byte budget.

use crate::config::check::{at_least, between, secs};
use crate::error::Result;
use clap::ValueEnum;
use serde::Deserialize;
use std::time::Duration;

/// When the gateway asks a client to prove its address with a QUIC Retry before
/// it spends a handshake's work and bytes on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressValidation {
    /// Every new connection from an unvalidated address (one more round trip).
    Always,
    /// Only while many handshakes are in progress
    /// ([`QuicConfig::retry_above_handshakes`]).
    #[default]
    UnderLoad,
    /// Never (a spoofed Initial is answered with up to three times its bytes).
    Off,
}

/// Handshakes in progress from which `under-load` address validation asks new
/// connections for a Retry, unless configured otherwise.
pub const DEFAULT_RETRY_ABOVE_HANDSHAKES: usize = 64;

/// QUIC transport limits. Small stream limits and windows keep idle connections
/// cheap (quinn's per-connection memory grows with them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// Most open connections; further handshakes are refused.
    pub max_connections: usize,
    /// Concurrent bidirectional (request) streams a client may open.
    pub max_streams_per_connection: u32,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Receive window of one stream, in bytes.
    pub stream_receive_window: u32,
    /// Receive window of a connection, in bytes.
    pub receive_window: u32,
    /// Send window of a connection, in bytes.
    pub send_window: u64,
    /// Receive buffer of the UDP socket, in bytes: datagrams that arrive while the
    /// gateway is busy wait there instead of being dropped (a drop costs a QUIC
    /// loss recovery and a smaller congestion window).
    pub udp_receive_buffer: u32,
    /// Most open connections from one address (IPv6: one /64 prefix).
    pub max_connections_per_address: usize,
    /// When new connections must prove their address with a Retry.
    pub address_validation: AddressValidation,
    /// With [`AddressValidation::UnderLoad`], the number of handshakes in
    /// progress from which new connections are asked for a Retry.
    pub retry_above_handshakes: usize,
    /// Bytes in flight per connection ([`crate::budget`]).
    pub connection_budget_bytes: usize,
    /// How long a request frame may take to arrive (and to get budget).
    pub request_read_timeout: Duration,
    /// How long a reply may take to be written before its stream is reset.
    pub response_write_timeout: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            max_connections: 100_000,
            max_streams_per_connection: 64,
            idle_timeout: Duration::from_secs(60),
            stream_receive_window: 256 * 1024,
            receive_window: 1024 * 1024,
            send_window: 1024 * 1024,
            udp_receive_buffer: 4 * 1024 * 1024,
            max_connections_per_address: 32,
            address_validation: AddressValidation::UnderLoad,
            retry_above_handshakes: DEFAULT_RETRY_ABOVE_HANDSHAKES,
            connection_budget_bytes: 4 * 1024 * 1024,
            request_read_timeout: Duration::from_secs(10),
            response_write_timeout: Duration::from_secs(5),
        }
    }
}

crate::config::options! {
    /// The QUIC transport limits.
    #[derive(clap::Args, Deserialize, Clone, Debug, Default)]
    #[command(next_help_heading = "QUIC transport")]
    pub struct QuicOptions {
        /// Most open connections; more are refused [default: 100000].
        #[arg(long, env = "ROSSBY_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: Option<u32>,
        /// Concurrent request streams per connection [default: 64].
        #[arg(long, env = "ROSSBY_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
        pub max_streams_per_connection: Option<u32>,
        /// Seconds without traffic after which a connection is closed [default: 60].
        #[arg(long, env = "ROSSBY_IDLE_TIMEOUT_SECS", value_name = "SECS")]
        pub idle_timeout_secs: Option<u64>,
        /// Receive window per stream in bytes [default: 262144].
        #[arg(long, env = "ROSSBY_STREAM_RECEIVE_WINDOW", value_name = "BYTES")]
        pub stream_receive_window: Option<u32>,
        /// Receive window per connection in bytes [default: 1048576].
        #[arg(long, env = "ROSSBY_RECEIVE_WINDOW", value_name = "BYTES")]
        pub receive_window: Option<u32>,
        /// Send window per connection in bytes [default: 1048576].
        #[arg(long, env = "ROSSBY_SEND_WINDOW", value_name = "BYTES")]
        pub send_window: Option<u64>,
        /// Receive buffer of the QUIC UDP socket in bytes; the kernel caps it at
        /// `net.core.rmem_max` [default: 4194304].
        #[arg(long, env = "ROSSBY_UDP_RECEIVE_BUFFER", value_name = "BYTES")]
        pub udp_receive_buffer: Option<u32>,
        /// Most open connections from one address (IPv6: one /64); more are
        /// refused [default: 32].
        #[arg(long, env = "ROSSBY_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
        pub max_connections_per_address: Option<u32>,
        /// When new connections must prove their address with a QUIC Retry:
        /// `always`, `under-load` or `off` [default: under-load].
        #[arg(long, env = "ROSSBY_ADDRESS_VALIDATION", value_name = "MODE")]
        pub address_validation: Option<AddressValidation>,
        /// With `--address-validation under-load`, the handshakes in progress
        /// from which new connections must first prove their address [default: 64].
        #[arg(long, env = "ROSSBY_RETRY_ABOVE_HANDSHAKES", value_name = "N")]
        pub retry_above_handshakes: Option<usize>,
        /// Bytes in flight per connection (request bodies being read, replies being
        /// built or not yet acknowledged) [default: 4194304].
        #[arg(long, env = "ROSSBY_CONNECTION_BUDGET_BYTES", value_name = "BYTES")]
        pub connection_budget_bytes: Option<usize>,
        /// Milliseconds a request frame may take to arrive once its stream is open,
        /// including the wait for connection budget [default: 10000].
        #[arg(long, env = "ROSSBY_REQUEST_READ_TIMEOUT_MS", value_name = "MS")]
        pub request_read_timeout_ms: Option<u64>,
        /// Milliseconds a reply may take to be written (the peer reading it); then
        /// its stream is reset and the reply dropped [default: 5000].
        #[arg(long, env = "ROSSBY_RESPONSE_WRITE_TIMEOUT_MS", value_name = "MS")]
        pub response_write_timeout_ms: Option<u64>,
    }
}

impl QuicOptions {
    /// The transport limits, checked, with the defaults for what is unset.
    pub fn into_config(self) -> Result<QuicConfig> {
        let d = QuicConfig::default();
        let millis = |flag: &str, value: Option<u64>, default: Duration| -> Result<Duration> {
            let ms = value.map_or(default.as_millis() as usize, |v| {
                usize::try_from(v).unwrap_or(usize::MAX)
            });
            Ok(Duration::from_millis(
                between(flag, ms, 100, 600_000)? as u64
            ))
        };
        Ok(QuicConfig {
            max_connections: at_least(
                "max-connections",
                self.max_connections.unwrap_or(d.max_connections as u32),
                1,
            )? as usize,
            max_streams_per_connection: at_least(
                "max-streams-per-connection",
                self.max_streams_per_connection
                    .unwrap_or(d.max_streams_per_connection),
                1,
            )?,
            idle_timeout: secs(
                "idle-timeout-secs",
                self.idle_timeout_secs.unwrap_or(d.idle_timeout.as_secs()),
                1,
                86_400,
            )?,
            stream_receive_window: at_least(
                "stream-receive-window",
                self.stream_receive_window
                    .unwrap_or(d.stream_receive_window),
                1024,
            )?,
            receive_window: at_least(
                "receive-window",
                self.receive_window.unwrap_or(d.receive_window),
                1024,
            )?,
            send_window: at_least(
                "send-window",
                self.send_window.unwrap_or(d.send_window),
                1024,
            )?,
            udp_receive_buffer: at_least(
                "udp-receive-buffer",
                self.udp_receive_buffer.unwrap_or(d.udp_receive_buffer),
                4096,
            )?,
            max_connections_per_address: at_least(
                "max-connections-per-address",
                self.max_connections_per_address
                    .unwrap_or(d.max_connections_per_address as u32),
                1,
            )? as usize,
            address_validation: self.address_validation.unwrap_or(d.address_validation),
            retry_above_handshakes: at_least(
                "retry-above-handshakes",
                self.retry_above_handshakes
                    .unwrap_or(d.retry_above_handshakes),
                1,
            )?,
            connection_budget_bytes: at_least(
                "connection-budget-bytes",
                self.connection_budget_bytes
                    .unwrap_or(d.connection_budget_bytes),
                64 * 1024,
            )?,
            request_read_timeout: millis(
                "request-read-timeout-ms",
                self.request_read_timeout_ms,
                d.request_read_timeout,
            )?,
            response_write_timeout: millis(
                "response-write-timeout-ms",
                self.response_write_timeout_ms,
                d.response_write_timeout,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        quic: QuicOptions,
    }

    fn quic(argv: &[&str]) -> Result<QuicConfig> {
        let flags = Flags::try_parse_from(std::iter::once("test").chain(argv.iter().copied()))
            .map_err(|e| crate::error::Error::Config(e.to_string()))?;
        flags.quic.into_config()
    }

    #[test]
    fn the_retry_threshold_defaults_to_64_and_must_be_positive() {
        assert_eq!(quic(&[]).unwrap().retry_above_handshakes, 64);
        let c = quic(&["--retry-above-handshakes", "8"]).unwrap();
        assert_eq!(c.retry_above_handshakes, 8);
        assert_eq!(c.address_validation, AddressValidation::UnderLoad);
        let message = quic(&["--retry-above-handshakes", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("--retry-above-handshakes must be at least 1"),
            "{message}"
        );
        assert!(quic(&["--retry-above-handshakes", "-1"]).is_err());
        let from_file: QuicOptions = toml::from_str("retry_above_handshakes = 200").unwrap();
        assert_eq!(from_file.into_config().unwrap().retry_above_handshakes, 200);
    }
}
