//! `rossby`: the Rossby command-line client.
//!
//! Every API call is a subcommand; see `rossby --help`. Output meant for
//! scripts goes to stdout (one line per item); warnings go to stderr. Every
//! failure exits non-zero with one line `rossby: <reason>` on stderr.

use clap::{Args, Parser, Subcommand};
use rossby_client::connection::{Connection, GatewayConfig, parse_certificate};
use rossby_client::sdk::{self, Batch, Body, Client, ClientConfig, DEFAULT_GATEWAY, Received};
use rossby_client::state::{Protection, StateKey, StateStore};
use rossby_client::{Error, KdfParams, Result, RetryPolicy};
use rossby_keyspace::DeviceId;
use rossby_protocol::hawk::ServiceName;
use rossby_protocol::pb;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Rossby command-line client: end-to-end encrypted messaging from the shell.
#[derive(Debug, Parser)]
#[command(name = "rossby", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

/// Options of every subcommand.
#[derive(Debug, Args)]
struct GlobalOptions {
    /// The device's state file (encrypted; created by `register` or `link --new`).
    #[arg(
        long,
        global = true,
        env = "ROSSBY_STATE",
        default_value = "./rossby-state"
    )]
    state: PathBuf,
    /// Gateway address HOST:PORT (default: the one this state last used, else 127.0.0.1:7400).
    #[arg(long, global = true, env = "ROSSBY_GATEWAY")]
    gateway: Option<String>,
    /// Certificate to pin (PEM or DER), e.g. the gateway's <data-dir>/cert.pem
    /// (default: the one this state remembers, else the public web PKI).
    #[arg(long, global = true, env = "ROSSBY_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The deployment's service name requests are signed for; must equal the
    /// gateway's (default: remembered, else rossby:7400).
    #[arg(long, global = true, env = "ROSSBY_SERVICE_NAME")]
    service_name: Option<String>,
    /// Read the state passphrase from this file (else ROSSBY_PASSPHRASE, else a
    /// key file <state>.key).
    #[arg(long, global = true, env = "ROSSBY_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start registering a phone number or e-mail address (creates the state).
    Register {
        /// Phone number (+country code) or e-mail address.
        identifier: String,
        /// Take over an existing account (replaces its devices, drops its queue).
        #[arg(long)]
        recover: bool,
        /// Label of this device.
        #[arg(long, default_value = "rossby-cli")]
        label: String,
    },
    /// Complete registration with the verification code.
    Authorize {
        /// The code.
        code: String,
    },
    /// Link devices: `link --new` on the new device, `link <request>` on an
    /// authorized one, `link --finish <grant>` on the new device again.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["new", "finish", "request"])))]
    Link {
        /// Create this device's state and print its link request.
        #[arg(long)]
        new: bool,
        /// Import the grant printed by the authorized device.
        #[arg(long, value_name = "GRANT")]
        finish: Option<String>,
        /// Label of the new device (with --new).
        #[arg(long, default_value = "rossby-cli", requires = "new")]
        label: String,
        /// A link request printed by `link --new` (on the authorized device).
        request: Option<String>,
    },
    /// Look a user up, verify and remember their keys.
    Contact {
        /// Identifier.
        identifier: String,
    },
    /// List known contacts (no network).
    Contacts,
    /// Send a text message.
    Send {
        /// Recipient identifier or box id.
        to: String,
        /// The text (several words are joined by spaces).
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Fetch, print and acknowledge messages: one line `<sender> <text>` each.
    Fetch {
        /// Wait up to this many seconds when nothing is queued.
        #[arg(long, default_value_t = 0)]
        wait: u32,
    },
    /// Subscribe to pushes and print messages as they arrive (until interrupted).
    Watch,
    /// Show, retry or clear sends that were not confirmed.
    Outbox {
        /// Retry them (with their original message ids).
        #[arg(long, conflicts_with = "clear")]
        retry: bool,
        /// Forget them.
        #[arg(long)]
        clear: bool,
    },
    /// Block a user (identifier or box id).
    Block {
        /// Identifier or box id.
        who: String,
    },
    /// Unblock a user.
    Unblock {
        /// Identifier or box id.
        who: String,
    },
    /// Change privacy settings.
    Settings {
        /// Whether others can find you by identifier.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        discoverable: Option<bool>,
        /// Whether only your contacts can message you.
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        contacts_only: Option<bool>,
    },
    /// Print the safety number(s) to compare with a contact out of band.
    SafetyNumber {
        /// Identifier or box id.
        who: String,
    },
    /// List this account's devices.
    Devices,
    /// Remove a device from this account.
    RemoveDevice {
        /// Device id (UUID).
        device_id: String,
    },
    /// Delete this account and all its data.
    DeleteAccount {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Show this device's local state (no network).
    Whoami,
    /// Ask the gateway about its health.
    Health,
    /// Measure the round trip to the gateway.
    Ping,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            eprintln!("rossby: {}", first_line_of_clap_error(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rossby: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rossby: {}", printable(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Clap's error without the usage and help hints, on one line.
fn first_line_of_clap_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = message.join(" ");
    let line = line.trim_start_matches("error: ").trim();
    if line.is_empty() {
        "invalid arguments (see --help)".to_string()
    } else {
        format!("{line} (see --help)")
    }
}

/// Escapes control characters so a peer-supplied text stays on one line.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Resolves `HOST:PORT` (or `HOST`, port 7400) to an address and a TLS name.
async fn resolve_gateway(spec: &str) -> Result<(SocketAddr, Option<String>)> {
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok((addr, None));
    }
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| Error::Config(format!("invalid port in gateway address {spec:?}")))?,
        ),
        _ => (spec, rossby_protocol::DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err(Error::Config(format!("invalid gateway address {spec:?}")));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Config(format!("cannot resolve {host}: {e}")))?;
    let addr = addrs
        .next()
        .ok_or_else(|| Error::Config(format!("{host} has no address")))?;
    let name = if host.parse::<std::net::IpAddr>().is_ok() {
        None
    } else {
        Some(host.to_string())
    };
    Ok((addr, name))
}

/// Where the state key comes from: `--passphrase-file`, `ROSSBY_PASSPHRASE`,
/// a prompt (only for an existing passphrase-protected state and a terminal),
/// else the key file.
fn state_key(global: &GlobalOptions) -> Result<StateKey> {
    if let Some(path) = &global.passphrase_file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            what: "cannot read passphrase file",
            path: path.clone(),
            source: e,
        })?;
        let pass = text.strip_suffix('\n').unwrap_or(&text);
        let pass = pass.strip_suffix('\r').unwrap_or(pass);
        if pass.is_empty() {
            return Err(Error::Invalid(format!(
                "the passphrase file {} is empty",
                path.display()
            )));
        }
        return Ok(StateKey::passphrase(pass));
    }
    if let Ok(pass) = std::env::var("ROSSBY_PASSPHRASE")
        && !pass.is_empty()
    {
        return Ok(StateKey::passphrase(pass));
    }
    if StateStore::protection(&global.state)? == Some(Protection::Passphrase)
        && std::io::stdin().is_terminal()
    {
        let prompt = format!("Passphrase for {}: ", global.state.display());
        let pass = rpassword::prompt_password(prompt)
            .map_err(|e| Error::Invalid(format!("cannot read the passphrase: {e}")))?;
        return Ok(StateKey::passphrase(pass));
    }
    Ok(StateKey::KeyFile)
}

fn read_ca_cert(global: &GlobalOptions) -> Result<Option<Vec<u8>>> {
    let Some(path) = &global.ca_cert else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        what: "cannot read certificate",
        path: path.clone(),
        source: e,
    })?;
    parse_certificate(&bytes).map(Some)
}

fn creates_state(command: &Command) -> bool {
    matches!(
        command,
        Command::Register { .. } | Command::Link { new: true, .. }
    )
}

async fn open_client(global: &GlobalOptions, command: &Command) -> Result<Client> {
    let create = creates_state(command);
    if !create && !global.state.exists() {
        return Err(Error::NoState(global.state.clone()));
    }
    let key = state_key(global)?;
    let (gateway, server_name) = match &global.gateway {
        Some(spec) => {
            let (a, n) = resolve_gateway(spec).await?;
            (Some(a), n)
        }
        None => (None, None),
    };
    let ca_cert_der = read_ca_cert(global)?;
    let service_name = global
        .service_name
        .as_deref()
        .map(|s| {
            s.parse::<ServiceName>()
                .map_err(|e| Error::Config(format!("invalid service name {s:?}: {e}")))
        })
        .transpose()?;
    let label = match command {
        Command::Register { label, .. } | Command::Link { label, .. } => label.clone(),
        _ => "rossby-cli".into(),
    };
    Client::open(ClientConfig {
        state_path: global.state.clone(),
        state_key: key,
        kdf: KdfParams::default(),
        create,
        device_label: label,
        gateway,
        server_name,
        ca_cert_der,
        service_name,
        retry: RetryPolicy::default(),
    })
    .await
}

fn out(line: impl AsRef<str>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", line.as_ref())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Io {
            what: "cannot write to",
            path: PathBuf::from("stdout"),
            source: e,
        })
}

fn warn(line: impl AsRef<str>) {
    eprintln!("rossby: warning: {}", line.as_ref());
}

fn format_message(m: &Received) -> String {
    match &m.body {
        Body::Text(t) => format!("{} {}", m.sender, printable(t)),
        Body::SentCopy { to_box, to, text } => {
            let to = if to.is_empty() {
                to_box.to_string()
            } else {
                to.clone()
            };
            format!("{} (to {}) {}", m.sender, printable(&to), printable(text))
        }
        Body::Signal(s) => format!("{} [signal] {}", m.sender, printable(s)),
        Body::Mls(b) => format!("{} [mls message, {} bytes]", m.sender, b.len()),
        Body::Empty => format!("{} [empty message]", m.sender),
    }
}

/// Prints a batch's messages and warnings, then acknowledges it.
async fn print_and_ack(client: &Client, batch: &Batch) -> Result<()> {
    if let Some((from, to)) = batch.gap {
        warn(format!(
            "messages {from} to {to} expired before this device fetched them"
        ));
    }
    for name in &batch.key_changes {
        warn(format!(
            "{name} has new keys (a new device or a re-registration): compare `rossby safety-number {name}`"
        ));
    }
    for r in &batch.rejected {
        warn(format!(
            "dropped message {} from {}: {}",
            r.seq,
            r.sender,
            printable(&r.reason)
        ));
    }
    for m in &batch.messages {
        out(format_message(m))?;
    }
    if let Some(up_to) = batch.ack_up_to {
        client.ack(up_to).await?;
    }
    Ok(())
}

/// Fetches until the queue is drained (the first round may wait).
async fn drain(client: &Client, first_wait: Duration) -> Result<()> {
    let mut wait = first_wait;
    loop {
        let batch = client.fetch_batch(wait).await?;
        print_and_ack(client, &batch).await?;
        match batch.ack_up_to {
            Some(acked) if acked < batch.last_seq => wait = Duration::ZERO,
            _ => return Ok(()),
        }
    }
}

async fn watch(client: &Client) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.subscribe().await {
            Ok(mut sub) => {
                backoff = Duration::from_millis(200);
                drain(client, Duration::ZERO).await?;
                while let Some(push) = sub.next().await? {
                    match push.event {
                        Some(pb::push::Event::Messages(_)) => drain(client, Duration::ZERO).await?,
                        Some(pb::push::Event::Ephemeral(e)) => {
                            match client.open_ephemeral(&e).await {
                                Ok(m) => out(format_message(&m))?,
                                Err(err) => warn(format!("dropped an ephemeral message: {err}")),
                            }
                        }
                        None => {}
                    }
                }
                warn("subscription ended; reconnecting");
            }
            Err(e @ Error::Unreachable { .. }) => warn(format!("{e}; retrying")),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn parse_device(s: &str) -> Result<DeviceId> {
    s.trim()
        .parse::<DeviceId>()
        .map_err(|_| Error::Invalid(format!("{s:?} is not a device id (UUID)")))
}

async fn run(cli: Cli) -> Result<()> {
    let command = cli.command;
    if let Command::DeleteAccount { yes: false } = command {
        return Err(Error::Invalid(
            "deleting the account removes all its data; confirm with --yes".into(),
        ));
    }
    if matches!(command, Command::Ping | Command::Health) && !cli.global.state.exists() {
        return probe(&cli.global, &command).await;
    }
    let client = open_client(&cli.global, &command).await?;
    let result = execute(&client, command, &cli.global.state).await;
    client.close().await;
    result.map_err(|e| with_hint(e, &cli.global))
}

/// Adds a hint to errors whose usual cause is a configuration mismatch.
fn with_hint(e: Error, global: &GlobalOptions) -> Error {
    match e {
        Error::Status {
            status: pb::Status::Unauthenticated,
            message,
        } => {
            let flag = global
                .service_name
                .as_deref()
                .map_or_else(String::new, |s| format!(" ({s})"));
            Error::Status {
                status: pb::Status::Unauthenticated,
                message: format!(
                    "{message}; if this device was not removed, check that --service-name{flag} equals the gateway's"
                ),
            }
        }
        other => other,
    }
}

/// Ping and health without a state file: only the gateway options are used.
async fn probe(global: &GlobalOptions, command: &Command) -> Result<()> {
    let (addr, server_name) = match &global.gateway {
        Some(spec) => resolve_gateway(spec).await?,
        None => (
            DEFAULT_GATEWAY
                .parse()
                .map_err(|_| Error::Config("invalid default gateway".into()))?,
            None,
        ),
    };
    let service = global
        .service_name
        .as_deref()
        .map(|s| {
            s.parse::<ServiceName>()
                .map_err(|e| Error::Config(format!("invalid service name {s:?}: {e}")))
        })
        .transpose()?
        .unwrap_or_default();
    let conn = Connection::new(GatewayConfig {
        addr,
        server_name: server_name.unwrap_or_else(|| addr.ip().to_string()),
        ca_cert_der: read_ca_cert(global)?,
        service,
        retry: RetryPolicy::default(),
    })?;
    let result = match command {
        Command::Health => print_health(&sdk::health(&conn).await?),
        _ => print_pong(&sdk::ping(&conn).await?),
    };
    conn.close().await;
    result
}

fn print_health(h: &pb::HealthResponse) -> Result<()> {
    if !h.storage_ok {
        return Err(Error::Invalid(format!(
            "gateway in region {} reports storage unhealthy",
            h.region
        )));
    }
    out(format!(
        "ok region {} storage latency {} us",
        h.region, h.storage_latency_us
    ))
}

fn print_pong(p: &sdk::Pong) -> Result<()> {
    out(format!(
        "pong region {} rtt {:.1} ms server time {}",
        p.region,
        p.rtt.as_secs_f64() * 1000.0,
        p.server_time_ms
    ))
}

async fn execute(client: &Client, command: Command, state_path: &Path) -> Result<()> {
    match command {
        Command::Register {
            identifier,
            recover,
            ..
        } => {
            let expires = client.register(&identifier, recover).await?;
            let now = rossby_client::connection::unix_ms(client.connection().now());
            let minutes =
                ((i64::try_from(expires).unwrap_or(i64::MAX) - now).max(0) + 30_000) / 60_000;
            out(format!(
                "verification code sent to {} (valid for {minutes} min); complete with: rossby authorize <code>",
                client.identifier().await
            ))
        }
        Command::Authorize { code } => {
            let box_id = client.authorize(&code).await?;
            out(format!(
                "authorized {} as box {box_id}, device {}",
                client.identifier().await,
                client.device_id()
            ))
        }
        Command::Link {
            new: true,
            finish: None,
            ..
        } => {
            let request = client.link_request().await?;
            out(&request)?;
            eprintln!(
                "rossby: run `rossby link <request>` with this request on an authorized device, then `rossby --state {} link --finish <grant>` here",
                state_path.display()
            );
            Ok(())
        }
        Command::Link {
            finish: Some(grant),
            ..
        } => {
            let box_id = client.finish_link(&grant).await?;
            out(format!(
                "linked device {} to box {box_id} ({})",
                client.device_id(),
                client.identifier().await
            ))
        }
        Command::Link {
            request: Some(request),
            ..
        } => {
            let grant = client.link_device(&request).await?;
            out(&grant)?;
            eprintln!(
                "rossby: run `rossby link --finish <grant>` with this grant on the new device"
            );
            Ok(())
        }
        Command::Link { .. } => Err(Error::Invalid(
            "use one of: link --new, link <request>, link --finish <grant>".into(),
        )),
        Command::Contact { identifier } => {
            let c = client.contact(&identifier).await?;
            if c.keys_changed {
                warn(format!(
                    "{} has new keys since you last checked: compare `rossby safety-number {}`",
                    c.identifier, c.identifier
                ));
            }
            out(format!(
                "{} box {} devices {}",
                c.identifier,
                c.box_id,
                c.devices.len()
            ))
        }
        Command::Contacts => {
            for c in client.contacts().await {
                let name = if c.identifier.is_empty() {
                    "-".to_string()
                } else {
                    c.identifier
                };
                let mark = if c.keys_changed { " keys-changed" } else { "" };
                out(format!(
                    "{name} box {} devices {}{mark}",
                    c.box_id,
                    c.devices.len()
                ))?;
            }
            Ok(())
        }
        Command::Send { to, text } => {
            let text = text.join(" ");
            let report = client.send_text(&to, &text).await?;
            if report.keys_changed {
                warn(format!(
                    "{to} has new keys (a new device or a re-registration): compare `rossby safety-number {to}`"
                ));
            }
            out(format!(
                "sent {} to {} (seq {})",
                report.message_id, to, report.seq
            ))
        }
        Command::Fetch { wait } => drain(client, Duration::from_secs(u64::from(wait))).await,
        Command::Watch => watch(client).await,
        Command::Outbox { retry, clear } => {
            if clear {
                let n = client.clear_outbox().await?;
                return out(format!("forgot {n} unconfirmed send(s)"));
            }
            if retry {
                let mut failed = 0usize;
                for (p, result) in client.retry_outbox().await? {
                    match result {
                        Ok(r) => out(format!("sent {} (seq {})", r.message_id, r.seq))?,
                        Err(e) => {
                            failed += 1;
                            warn(format!("{} still not sent: {e}", p.message_id));
                        }
                    }
                }
                if failed > 0 {
                    return Err(Error::Invalid(format!(
                        "{failed} send(s) still unconfirmed"
                    )));
                }
                return Ok(());
            }
            for p in client.outbox().await {
                let to = if p.to.is_empty() {
                    p.to_box.to_string()
                } else {
                    p.to
                };
                out(format!("{} {} {}", p.message_id, to, printable(&p.text)))?;
            }
            Ok(())
        }
        Command::Block { who } => {
            client.block(&who).await?;
            out(format!("blocked {who}"))
        }
        Command::Unblock { who } => {
            client.unblock(&who).await?;
            out(format!("unblocked {who}"))
        }
        Command::Settings {
            discoverable,
            contacts_only,
        } => {
            let s = client.update_settings(discoverable, contacts_only).await?;
            out(format!(
                "discoverable {} contacts-only {}",
                s.discoverable, s.contacts_only
            ))
        }
        Command::SafetyNumber { who } => {
            let numbers = client.safety_number(&who).await?;
            if let [only] = numbers.as_slice() {
                return out(&only.number);
            }
            for n in numbers {
                out(format!("{} {}", n.device_id, n.number))?;
            }
            Ok(())
        }
        Command::Devices => {
            let me = client.device_id();
            for d in client.devices().await? {
                let this = if d.device_id == me {
                    " (this device)"
                } else {
                    ""
                };
                out(format!("{} {}{this}", d.device_id, printable(&d.label)))?;
            }
            Ok(())
        }
        Command::RemoveDevice { device_id } => {
            let device = parse_device(&device_id)?;
            let version = client.remove_device(device).await?;
            out(format!(
                "removed device {device} (device list version {version})"
            ))
        }
        Command::DeleteAccount { .. } => {
            client.delete_account().await?;
            out("account deleted")
        }
        Command::Whoami => {
            let state = client.state().await;
            let box_id = client
                .box_id()
                .await
                .map_or_else(|| "-".to_string(), |b| b.to_string());
            let identifier = if state.identifier.is_empty() {
                "-"
            } else {
                &state.identifier
            };
            let status = if state.credentials.is_some() {
                "authorized"
            } else if state.registration_pending {
                "registration pending"
            } else {
                "not registered"
            };
            out(format!(
                "{identifier} box {box_id} device {} {status} gateway {} service {}",
                client.device_id(),
                if state.gateway.is_empty() {
                    DEFAULT_GATEWAY
                } else {
                    &state.gateway
                },
                state.service_name
            ))
        }
        Command::Health => print_health(&client.health().await?),
        Command::Ping => print_pong(&client.ping().await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rossby").chain(args.iter().copied()))
    }

    #[test]
    fn global_options_and_subcommands_parse() {
        let cli = parse(&[
            "--state",
            "/tmp/a",
            "--gateway",
            "example.net:7400",
            "--ca-cert",
            "c.pem",
            "--service-name",
            "chat.example.net:7400",
            "send",
            "bob@example.com",
            "hello",
            "there",
        ])
        .unwrap();
        assert_eq!(cli.global.state, PathBuf::from("/tmp/a"));
        assert_eq!(cli.global.gateway.as_deref(), Some("example.net:7400"));
        assert_eq!(
            cli.global.service_name.as_deref(),
            Some("chat.example.net:7400")
        );
        match cli.command {
            Command::Send { to, text } => {
                assert_eq!(to, "bob@example.com");
                assert_eq!(text.join(" "), "hello there");
            }
            other => panic!("{other:?}"),
        }
        // Global options may follow the subcommand too.
        let cli = parse(&["fetch", "--wait", "5", "--state", "s"]).unwrap();
        assert!(matches!(cli.command, Command::Fetch { wait: 5 }));
        assert_eq!(cli.global.state, PathBuf::from("s"));
    }

    #[test]
    fn every_documented_subcommand_parses() {
        let ok: &[&[&str]] = &[
            &["register", "+14155550123"],
            &["register", "a@b.c", "--recover", "--label", "phone"],
            &["authorize", "123456"],
            &["contact", "a@b.c"],
            &["contacts"],
            &["fetch"],
            &["watch"],
            &["link", "--new"],
            &["link", "--new", "--label", "tablet"],
            &["link", "rossby-link-request:abc"],
            &["link", "--finish", "rossby-link-grant:abc"],
            &["block", "a@b.c"],
            &["unblock", "a@b.c"],
            &[
                "settings",
                "--discoverable",
                "false",
                "--contacts-only",
                "true",
            ],
            &["settings"],
            &["safety-number", "a@b.c"],
            &["health"],
            &["ping"],
            &["devices"],
            &["remove-device", "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"],
            &["delete-account", "--yes"],
            &["outbox", "--retry"],
            &["whoami"],
            &["send", "a@b.c", "-dash text"],
        ];
        for args in ok {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let bad: &[&[&str]] = &[
            &[],
            &["send", "a@b.c"],
            &["fetch", "--wait", "soon"],
            &["settings", "--discoverable", "maybe"],
            &["link"],
            &["link", "--new", "--finish", "x"],
            &["outbox", "--retry", "--clear"],
            &["frobnicate"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} should not parse");
        }
        let cli = parse(&["settings", "--discoverable", "false"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Settings {
                discoverable: Some(false),
                contacts_only: None
            }
        ));
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = parse(&["send", "a@b.c"]).unwrap_err();
        let line = first_line_of_clap_error(&e);
        assert!(!line.contains('\n'));
        assert!(!line.is_empty());
    }

    #[test]
    fn texts_are_printed_on_one_line() {
        assert_eq!(printable("a\nb\u{7}"), "a\\nb\\u{7}");
        assert_eq!(printable("héllo wörld"), "héllo wörld");
    }

    #[tokio::test]
    async fn gateway_addresses_resolve() {
        let (addr, name) = resolve_gateway("127.0.0.1:7999").await.unwrap();
        assert_eq!(addr.port(), 7999);
        assert_eq!(name, None);
        let (addr, name) = resolve_gateway("localhost:7400").await.unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(name.as_deref(), Some("localhost"));
        let (addr, _) = resolve_gateway("[::1]:7401").await.unwrap();
        assert_eq!(addr.port(), 7401);
        assert!(resolve_gateway("localhost:notaport").await.is_err());
    }
}
