//! `rossby`: the Rossby command-line client.
//!
//! Every API call is a subcommand; see `rossby --help`. Output meant for
//! scripts goes to stdout (one line per item); warnings go to stderr. Every
//! failure exits non-zero with one line `rossby: <reason>` on stderr.

use clap::{Args, Parser, Subcommand};
use rossby_client::connection::{Connection, GatewayConfig, parse_certificate};
use rossby_client::groups::GroupSummary;
use rossby_client::groups::state::Membership;
use rossby_client::sdk::{self, Batch, Body, Client, ClientConfig, DEFAULT_GATEWAY, Received};
use rossby_client::sealed::SealedSenderMode;
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
        /// Home region code of the new box [default: the gateway's region].
        #[arg(long, value_name = "CODE")]
        region: Option<u16>,
    },
    /// Complete registration with the verification code.
    Authorize {
        /// The code.
        code: String,
        /// The account's registration-lock PIN (a recovery of a locked account
        /// needs it; asked for only once the code is right).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
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
    /// Look a user up, verify and remember their keys (they become a
    /// contact: with `settings --contacts-only` only contacts may write).
    Contact {
        /// Identifier (or, with --remove, box id).
        identifier: String,
        /// Take them off your contacts instead.
        #[arg(long)]
        remove: bool,
    },
    /// List known contacts (no network).
    Contacts,
    /// List 1:1 conversations: each is an MLS group of both accounts' devices
    /// (no network).
    Conversations,
    /// Renew this device's keys in the 1:1 conversation with a user (an MLS
    /// self-update; sending does it weekly).
    ConversationUpdate {
        /// The other user's identifier or box id.
        who: String,
    },
    /// Send a message: text, files, a location.
    Send {
        /// Recipient identifier or box id.
        to: String,
        #[command(flatten)]
        extras: MessageExtras,
        /// The text (several words are joined by spaces; optional with --file
        /// or --location).
        #[arg(required_unless_present_any = ["files", "location"], num_args = 0.., allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Fetch, print and acknowledge messages: one line `<sender> <text>` each,
    /// and one `<sender> [file <name> <bytes> bytes]` per attached file. Their
    /// senders get read receipts (delivered receipts with `settings
    /// --read-receipts false`).
    Fetch {
        /// Wait up to this many seconds when nothing is queued.
        #[arg(long, default_value_t = 0)]
        wait: u32,
        /// Save attached files into this directory (created if missing) under
        /// their original names, made unique when taken.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
    },
    /// Subscribe to pushes and print messages and typing indicators as they
    /// arrive (until interrupted).
    Watch {
        /// Save attached files into this directory, as `fetch --files`.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
    },
    /// Tell a user's online devices that you are typing (nothing is stored).
    Typing {
        /// Recipient identifier or box id.
        to: String,
        /// Say that you stopped typing instead.
        #[arg(long)]
        stop: bool,
    },
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
        /// Registration lock: a PIN (4 to 64 characters) every recovery of the
        /// account must give, or `off` to remove it.
        #[arg(long, value_name = "PIN|off")]
        registration_lock: Option<String>,
        /// Whether senders learn that you read their messages (this device's
        /// setting; off: they learn only that the messages were delivered).
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
        read_receipts: Option<bool>,
        /// Who may send you sealed-sender messages, which the gateway cannot
        /// attribute to anyone: nobody (`off`), your contacts (`contacts`: they
        /// learn a secret with your messages) or `anyone`.
        #[arg(long, value_name = "off|contacts|anyone", value_parser = parse_sealed_mode)]
        sealed_sender: Option<SealedSenderMode>,
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
    /// Check a gateway end to end: QUIC (TLS) handshake, Ping, and the Health
    /// RPC's storage read. Prints `ok ...` and exits 0, or exits 1 with the reason.
    /// With --gateway no state file is read.
    Health {
        /// Give up (and fail) after this many seconds in all.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Measure the round trip to the gateway.
    Ping,
    /// Groups (MLS): create, add, remove, leave, send, list.
    #[command(subcommand)]
    Group(GroupCommand),
    /// This account's phone numbers and e-mail addresses: add, confirm, remove,
    /// list, discoverable.
    #[command(subcommand)]
    Identifier(IdentifierCommand),
    /// Wake-up pushes for this device: webpush, apns, fcm, remove, info.
    #[command(subcommand)]
    Push(PushCommand),
}

/// What a message may carry besides text.
#[derive(Debug, Args)]
struct MessageExtras {
    /// Attach a file (encrypted, uploaded in parts; an interrupted upload of
    /// the same file continues where it stopped). Repeat for several.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Share a location (decimal degrees).
    #[arg(long, value_name = "LAT,LON", allow_hyphen_values = true)]
    location: Option<String>,
}

impl MessageExtras {
    /// Uploads the files and builds the message.
    async fn into_message(self, client: &Client, text: Vec<String>) -> Result<pb::RichMessage> {
        let location = self
            .location
            .as_deref()
            .map(rossby_client::messages::parse_location)
            .transpose()?;
        let mut attachments = Vec::with_capacity(self.files.len());
        for path in &self.files {
            attachments.push(client.upload_attachment(path, None).await?);
        }
        Ok(pb::RichMessage {
            text: text.join(" "),
            attachments,
            location,
        })
    }
}

/// `rossby group ...`: end-to-end encrypted groups. `fetch` prints group messages
/// as `<group> <sender> <text>`.
#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group (your other devices join it).
    Create {
        /// The group's name (members see it).
        name: String,
    },
    /// Add a user (all their devices) to a group.
    Add {
        /// The group's name.
        name: String,
        /// Identifier or box id of the user.
        identifier: String,
    },
    /// Remove a user (all their devices) from a group.
    Remove {
        /// The group's name.
        name: String,
        /// Identifier or box id of the user.
        identifier: String,
    },
    /// Leave a group (with all your devices).
    Leave {
        /// The group's name.
        name: String,
    },
    /// Send a message to a group: text, files, a location.
    Send {
        /// The group's name.
        name: String,
        #[command(flatten)]
        extras: MessageExtras,
        /// The text (several words are joined by spaces; optional with --file
        /// or --location).
        #[arg(required_unless_present_any = ["files", "location"], num_args = 0.., allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Replace this device's key material in a group.
    Update {
        /// The group's name.
        name: String,
    },
    /// List your groups (no network).
    List,
}

/// `off`, `contacts` or `anyone`.
fn parse_sealed_mode(s: &str) -> std::result::Result<SealedSenderMode, String> {
    match s {
        "off" => Ok(SealedSenderMode::Off),
        "contacts" => Ok(SealedSenderMode::Contacts),
        "anyone" => Ok(SealedSenderMode::Anyone),
        other => Err(format!("expected off, contacts or anyone, not {other:?}")),
    }
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
        state_compaction: Default::default(),
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

/// The lines a received message prints as.
fn format_message(m: &Received) -> Vec<String> {
    let line = match &m.body {
        Body::Text(t) => format!("{} {}", m.sender, printable(t)),
        Body::Message(message) => return message_lines(&m.sender, message),
        Body::SentCopy { to_box, to, text } => {
            format!("{} {}", sent_to(&m.sender, to_box, to), printable(text))
        }
        Body::SentMessage {
            to_box,
            to,
            message,
        } => return message_lines(&sent_to(&m.sender, to_box, to), message),
        Body::Receipt { kind, messages } => {
            let verb = match kind {
                pb::ReceiptKind::Read => format!("read by {}", m.sender),
                _ => format!("delivered to {}", m.sender),
            };
            return messages
                .iter()
                .map(|r| match &r.preview {
                    Some(p) => format!("{verb}: {}", printable(p)),
                    None => format!(
                        "{verb}: message {}",
                        uuid::Uuid::from_bytes(r.message_id).hyphenated()
                    ),
                })
                .collect();
        }
        Body::Typing(true) => format!("{} is typing", m.sender),
        Body::Typing(false) => format!("{} stopped typing", m.sender),
        Body::Signal(s) => format!("{} [signal] {}", m.sender, printable(s)),
        Body::Mls(b) => format!("{} [mls message, {} bytes]", m.sender, b.len()),
        Body::Group { group, text } => {
            format!("{} {} {}", printable(group), m.sender, printable(text))
        }
        Body::GroupMessage { group, message } => {
            return message_lines(&format!("{} {}", printable(group), m.sender), message);
        }
        Body::GroupJoined(group) => format!("joined {} (added by {})", printable(group), m.sender),
        Body::GroupRemoved(group) => format!("removed from {}", printable(group)),
        Body::GroupLeft(group) => format!("left {}", printable(group)),
        Body::Empty => format!("{} [empty message]", m.sender),
    };
    vec![line]
}

/// `<sender> (to <recipient>)`: how a copy of an own send is introduced.
fn sent_to(sender: &str, to_box: &rossby_keyspace::BoxId, to: &str) -> String {
    let to = if to.is_empty() {
        to_box.to_string()
    } else {
        to.to_string()
    };
    format!("{sender} (to {})", printable(&to))
}

/// A rich message: one line per attachment, then the location and text.
fn message_lines(prefix: &str, message: &pb::RichMessage) -> Vec<String> {
    let mut lines: Vec<String> = message
        .attachments
        .iter()
        .map(|a| file_line(prefix, &a.file_name, a.size))
        .collect();
    lines.extend(rest_line(prefix, message));
    if lines.is_empty() {
        lines.push(prefix.to_string());
    }
    lines
}

/// `<prefix> [file <name> <bytes> bytes]`.
fn file_line(prefix: &str, name: &str, size: u64) -> String {
    format!("{prefix} [file {} {size} bytes]", printable(name))
}

/// The location and text of a rich message, if it has either.
fn rest_line(prefix: &str, message: &pb::RichMessage) -> Option<String> {
    let mut line = prefix.to_string();
    if let Some(l) = &message.location {
        line.push_str(&format!(
            " [location {}]",
            rossby_client::messages::format_location(l)
        ));
    }
    if !message.text.is_empty() {
        line.push(' ');
        line.push_str(&printable(&message.text));
    }
    (line.len() > prefix.len()).then_some(line)
}

/// The line prefix and the message of a received message with attachments.
fn with_attachments(m: &Received) -> Option<(String, &pb::RichMessage)> {
    let (prefix, message) = match &m.body {
        Body::Message(message) => (m.sender.clone(), message),
        Body::SentMessage {
            to_box,
            to,
            message,
        } => (sent_to(&m.sender, to_box, to), message),
        Body::GroupMessage { group, message } => {
            (format!("{} {}", printable(group), m.sender), message)
        }
        _ => return None,
    };
    (!message.attachments.is_empty()).then_some((prefix, message))
}

/// Prints a message, saving its attachments into `files` when given. Returns
/// how many attachments were not saved.
async fn print_message(client: &Client, m: &Received, files: Option<&Path>) -> Result<usize> {
    let Some((prefix, message)) = with_attachments(m) else {
        for line in format_message(m) {
            out(line)?;
        }
        return Ok(0);
    };
    let mut unsaved = 0;
    for a in &message.attachments {
        let saved = match files {
            Some(dir) => match client.download_attachment(a, dir).await {
                Ok(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
                Err(e) => {
                    warn(format!(
                        "could not save {} from {}: {e}",
                        printable(&a.file_name),
                        m.sender
                    ));
                    None
                }
            },
            None => None,
        };
        if saved.is_none() {
            unsaved += 1;
        }
        let name = saved.as_deref().unwrap_or(&a.file_name);
        out(file_line(&prefix, name, a.size))?;
    }
    if let Some(line) = rest_line(&prefix, message) {
        out(line)?;
    }
    Ok(unsaved)
}

/// Prints a batch's messages and warnings (saving attachments into `files`),
/// then acknowledges it.
async fn print_and_ack(client: &Client, batch: &Batch, files: Option<&Path>) -> Result<()> {
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
    let mut unsaved = 0;
    for m in &batch.messages {
        unsaved += print_message(client, m, files).await?;
    }
    if unsaved > 0 && files.is_none() {
        warn(format!(
            "{unsaved} attached file(s) not saved: `fetch --files DIR` saves them"
        ));
    }
    if let Some(up_to) = batch.ack_up_to {
        client.ack(up_to).await?;
    }
    // Printed means read. A receipt that cannot be sent now stays in the outbox.
    for (sender, result) in client.send_receipts(batch, pb::ReceiptKind::Read).await? {
        if let Err(e) = result {
            warn(format!("no receipt sent to {sender}: {e}"));
        }
    }
    Ok(())
}

/// Fetches until the queue is drained (the first round may wait).
async fn drain(client: &Client, first_wait: Duration, files: Option<&Path>) -> Result<()> {
    if let Some(dir) = files {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            what: "cannot create",
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let mut wait = first_wait;
    loop {
        let batch = client.fetch_batch(wait).await?;
        print_and_ack(client, &batch, files).await?;
        match batch.ack_up_to {
            Some(acked) if acked < batch.last_seq => wait = Duration::ZERO,
            _ => return Ok(()),
        }
    }
}

async fn watch(client: &Client, files: Option<&Path>) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.subscribe().await {
            Ok(mut sub) => {
                backoff = Duration::from_millis(200);
                drain(client, Duration::ZERO, files).await?;
                while let Some(push) = sub.next().await? {
                    match push.event {
                        Some(pb::push::Event::Messages(_)) => {
                            drain(client, Duration::ZERO, files).await?
                        }
                        Some(pb::push::Event::Ephemeral(e)) => {
                            match client.open_ephemeral(&e).await {
                                Ok(m) => {
                                    for line in format_message(&m) {
                                        out(line)?;
                                    }
                                }
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
    if let Command::Health { timeout } = command
        && (cli.global.gateway.is_some() || !cli.global.state.exists())
    {
        return probe_health(&cli.global, Duration::from_secs(timeout)).await;
    }
    if matches!(command, Command::Ping) && !cli.global.state.exists() {
        return probe_ping(&cli.global).await;
    }
    let client = open_client(&cli.global, &command).await?;
    let result = execute(&client, command, &cli.global.state).await;
    if let Some(home) = client.home_hint() {
        // On stderr: scripts read stdout.
        eprintln!(
            "rossby: note: your box is homed in region {}{}",
            home.region,
            if home.gateways.is_empty() {
                String::new()
            } else {
                format!(
                    "; its gateways are closer to your data: {}",
                    home.gateways.join(", ")
                )
            }
        );
    }
    let result = match result {
        Err(Error::Status {
            status: pb::Status::Unauthenticated,
            message,
        }) => Err(service_name_hint(&client, message).await),
        other => other,
    };
    client.close().await;
    result.map_err(|e| with_hint(e, &cli.global))
}

/// An `UNAUTHENTICATED` answer: when the gateway's service name (from Ping)
/// differs from the one this device signs for, that is the cause; say so.
async fn service_name_hint(client: &Client, message: String) -> Error {
    let ours = client.service_name();
    // Through the connection alone: a Ping must not make this client remember
    // settings that were just refused.
    match sdk::ping(client.connection()).await {
        Ok(pong) if !pong.service_name.is_empty() && pong.service_name != ours => {
            Error::Config(format!(
                "{message}: the gateway's service name is {}, this device signs for {ours}; pass --service-name {}",
                pong.service_name, pong.service_name
            ))
        }
        _ => Error::Status {
            status: pb::Status::Unauthenticated,
            message,
        },
    }
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

/// The connection `ping` and `health` use without a state file: only the gateway
/// options count.
async fn probe_connection(global: &GlobalOptions, retry: RetryPolicy) -> Result<Connection> {
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
    Connection::new(GatewayConfig {
        addr,
        server_name: server_name.unwrap_or_else(|| addr.ip().to_string()),
        ca_cert_der: read_ca_cert(global)?,
        service,
        retry,
    })
}

/// `ping` without a state file.
async fn probe_ping(global: &GlobalOptions) -> Result<()> {
    let conn = probe_connection(global, RetryPolicy::default()).await?;
    let result = sdk::ping(&conn).await.and_then(|pong| print_pong(&pong));
    conn.close().await;
    result
}

/// `health` without a state file. A health check answers quickly or fails: one
/// handshake per attempt and a single retry of a broken request, all within the
/// check's `timeout` (the per-step limits lie beyond it, so a slow step is always
/// reported by [`check_health`], naming the step).
async fn probe_health(global: &GlobalOptions, timeout: Duration) -> Result<()> {
    let beyond = timeout + Duration::from_secs(1);
    let retry = RetryPolicy {
        max_attempts: 2,
        max_connect_attempts: 1,
        connect_timeout: beyond,
        request_timeout: beyond,
        ..RetryPolicy::default()
    };
    let conn = probe_connection(global, retry).await?;
    let result = check_health(&conn, timeout).await;
    // Closing waits for the gateway to acknowledge (a loopback or LAN round trip);
    // an unreachable gateway never does, and must not hold the exit up.
    let _ = tokio::time::timeout(Duration::from_millis(250), conn.close()).await;
    result
}

/// The health check: the QUIC handshake and a Ping (is the gateway up and
/// reachable, with the expected certificate?), then the Health RPC (can it read
/// from storage?), all within `timeout`. Prints one `ok` line, or fails with the
/// first problem.
async fn check_health(conn: &Connection, timeout: Duration) -> Result<()> {
    let step = std::cell::Cell::new("the QUIC handshake and Ping");
    let checks = async {
        let pong = sdk::ping(conn).await?;
        step.set("the Health RPC's storage read");
        let health = sdk::health(conn).await?;
        Ok::<_, Error>((pong, health))
    };
    let (pong, health) = match tokio::time::timeout(timeout, checks).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Unreachable {
                addr: conn.config().addr.to_string(),
                reason: format!(
                    "health check timed out after {} s waiting for {}",
                    timeout.as_secs_f64(),
                    step.get()
                ),
            });
        }
    };
    if !health.storage_ok {
        return Err(Error::Invalid(format!(
            "storage not ok: the gateway at {} (region {}) could not read from storage (gave up after {} ms); see its /readyz and log",
            conn.config().addr,
            health.region,
            health.storage_latency_us / 1000
        )));
    }
    out(format!(
        "ok region {} storage latency {} us rtt {:.1} ms",
        health.region,
        health.storage_latency_us,
        pong.rtt.as_secs_f64() * 1000.0
    ))
}

fn print_pong(p: &sdk::Pong) -> Result<()> {
    out(format!(
        "pong region {} rtt {:.1} ms server time {} service {}",
        p.region,
        p.rtt.as_secs_f64() * 1000.0,
        p.server_time_ms,
        if p.service_name.is_empty() {
            "-"
        } else {
            &p.service_name
        }
    ))
}

async fn execute(client: &Client, command: Command, state_path: &Path) -> Result<()> {
    match command {
        Command::Register {
            identifier,
            recover,
            region,
            ..
        } => {
            let region = region.map(rossby_keyspace::RegionId);
            let expires = client.register_homed(&identifier, recover, region).await?;
            let now = rossby_client::connection::unix_ms(client.connection().now());
            let minutes =
                ((i64::try_from(expires).unwrap_or(i64::MAX) - now).max(0) + 30_000) / 60_000;
            out(format!(
                "verification code sent to {} (valid for {minutes} min); complete with: rossby authorize <code>",
                client.identifier().await
            ))
        }
        Command::Authorize { code, pin } => {
            let box_id = client.recover(&code, pin.as_deref()).await?;
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
        Command::Contact {
            identifier,
            remove: true,
        } => {
            client.remove_contact(&identifier).await?;
            out(format!("{} is no longer a contact", printable(&identifier)))
        }
        Command::Contact {
            identifier,
            remove: false,
        } => {
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
        Command::Conversations => {
            for c in client.conversations().await {
                out(format!(
                    "{} box {} epoch {} devices {} suite={}",
                    printable(&c.peer),
                    c.peer_box,
                    c.epoch,
                    c.devices,
                    c.ciphersuite
                ))?;
            }
            Ok(())
        }
        Command::ConversationUpdate { who } => {
            let c = client.update_conversation_keys(&who).await?;
            out(format!(
                "{} epoch {} devices {}",
                printable(&c.peer),
                c.epoch,
                c.devices
            ))
        }
        Command::Send { to, extras, text } => {
            let message = extras.into_message(client, text).await?;
            let report = client.send_message(&to, message).await?;
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
        Command::Fetch { wait, files } => {
            drain(
                client,
                Duration::from_secs(u64::from(wait)),
                files.as_deref(),
            )
            .await
        }
        Command::Watch { files } => watch(client, files.as_deref()).await,
        Command::Typing { to, stop } => {
            client.send_typing(&to, !stop).await?;
            out(if stop {
                format!("told {to} you stopped typing")
            } else {
                format!("told {to} you are typing")
            })
        }
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
            read_receipts,
            sealed_sender,
            registration_lock,
        } => {
            if let Some(pin) = registration_lock {
                let pin = (pin != "off").then_some(pin);
                let on = client.set_registration_lock(pin.as_deref()).await?;
                out(format!(
                    "registration lock {}",
                    if on { "on" } else { "off" }
                ))?;
            }
            if let Some(on) = read_receipts {
                client.set_read_receipts(on).await?;
            }
            if let Some(mode) = sealed_sender {
                client.set_sealed_sender(mode).await?;
            }
            let s = client.update_settings(discoverable, contacts_only).await?;
            let sealed = match client.sealed_sender_mode().await {
                SealedSenderMode::Off => "off",
                SealedSenderMode::Contacts => "contacts",
                SealedSenderMode::Anyone => "anyone",
            };
            out(format!(
                "discoverable {} contacts-only {} read-receipts {} sealed-sender {sealed}",
                s.discoverable,
                s.contacts_only,
                client.read_receipts().await
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
        Command::Health { timeout } => {
            check_health(client.connection(), Duration::from_secs(timeout)).await
        }
        Command::Ping => print_pong(&client.ping().await?),
        Command::Group(group_command) => group(client, group_command).await,
        Command::Identifier(command) => identifier(client, command).await,
        Command::Push(command) => push(client, command).await,
    }
}

// ----- rossby push ... -----

/// `rossby push ...`: how the gateway wakes this device while it is not
/// connected. A device has one push token; registering replaces it.
#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Register a Web Push subscription (its endpoint URL and keys, base64url
    /// as the browser's PushSubscription gives them).
    Webpush {
        /// The subscription's endpoint URL.
        endpoint: String,
        /// `keys.p256dh`.
        p256dh: String,
        /// `keys.auth`.
        auth: String,
    },
    /// Register an APNs device token (hex).
    Apns {
        /// The device token.
        token: String,
    },
    /// Register an FCM registration token.
    Fcm {
        /// The registration token.
        token: String,
    },
    /// Remove this device's push token.
    Remove,
    /// The providers the gateway wakes devices through (and its VAPID key).
    Info,
}

/// `rossby push ...`.
async fn push(client: &Client, command: PushCommand) -> Result<()> {
    let (target, name) = match command {
        PushCommand::Webpush {
            endpoint,
            p256dh,
            auth,
        } => (
            rossby_client::PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            },
            "Web Push subscription",
        ),
        PushCommand::Apns { token } => (rossby_client::PushTarget::Apns(token), "APNs token"),
        PushCommand::Fcm { token } => (rossby_client::PushTarget::Fcm(token), "FCM token"),
        PushCommand::Remove => {
            return out(if client.remove_push().await? {
                "push token removed".to_string()
            } else {
                "this device had no push token".to_string()
            });
        }
        PushCommand::Info => {
            let info = client.push_info().await?;
            let providers = if info.providers.is_empty() {
                "none".to_string()
            } else {
                info.providers.join(",")
            };
            out(format!("providers {providers}"))?;
            if let Some(key) = info.vapid_public_key {
                out(format!("vapid-public-key {key}"))?;
            }
            return Ok(());
        }
    };
    client.register_push(&target).await?;
    out(format!("{name} registered for this device"))
}

// ----- rossby identifier ... -----

/// `rossby identifier ...`: the account's identifiers (phone numbers and e-mail
/// addresses). `list` prints one identifier a line, followed by ` (hidden)` when
/// contacts cannot find the account by it.
#[derive(Debug, Subcommand)]
enum IdentifierCommand {
    /// Start adding an identifier: a verification code is sent to it.
    Add {
        /// Phone number (+country code) or e-mail address.
        identifier: String,
        /// Contacts cannot find you by it (see `discoverable`).
        #[arg(long)]
        hidden: bool,
    },
    /// Bind an identifier with the code it received.
    Confirm {
        /// The identifier.
        identifier: String,
        /// The code.
        code: String,
    },
    /// Remove an identifier (never the last one).
    Remove {
        /// The identifier.
        identifier: String,
    },
    /// List this account's identifiers, one a line.
    List,
    /// Whether contacts can find you by an identifier.
    Discoverable {
        /// The identifier.
        identifier: String,
        /// `on` or `off`.
        #[arg(value_parser = parse_on_off, value_name = "on|off", action = clap::ArgAction::Set)]
        findable: bool,
    },
}

fn parse_on_off(text: &str) -> std::result::Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got {text:?}")),
    }
}

/// One line of `rossby identifier list`.
fn identifier_line(info: &rossby_client::IdentifierInfo) -> String {
    let name = info.identifier.as_deref().map_or_else(
        || "(bound before identifiers were listed)".to_string(),
        printable,
    );
    let hidden = if info.discoverable { "" } else { " (hidden)" };
    format!("{name}{hidden}")
}

/// `rossby identifier ...`.
async fn identifier(client: &Client, command: IdentifierCommand) -> Result<()> {
    match command {
        IdentifierCommand::Add { identifier, hidden } => {
            let expires = client.add_identifier(&identifier, !hidden).await?;
            let now = rossby_client::connection::unix_ms(client.connection().now());
            let minutes =
                ((i64::try_from(expires).unwrap_or(i64::MAX) - now).max(0) + 30_000) / 60_000;
            out(format!(
                "verification code sent to {} (valid for {minutes} min); complete with: rossby identifier confirm <identifier> <code>",
                printable(&identifier)
            ))
        }
        IdentifierCommand::Confirm { identifier, code } => {
            let info = client.confirm_identifier(&identifier, &code).await?;
            out(format!("added {}", identifier_line(&info)))
        }
        IdentifierCommand::Remove { identifier } => {
            let remaining = client.remove_identifier(&identifier).await?;
            out(format!(
                "removed {} ({remaining} left)",
                printable(&identifier)
            ))
        }
        IdentifierCommand::List => {
            for info in client.list_identifiers().await? {
                out(identifier_line(&info))?;
            }
            Ok(())
        }
        IdentifierCommand::Discoverable {
            identifier,
            findable,
        } => {
            let info = client
                .set_identifier_discoverable(&identifier, findable)
                .await?;
            let name = info.identifier.as_deref().unwrap_or(&identifier);
            out(if info.discoverable {
                format!("{} is discoverable", printable(name))
            } else {
                format!("{} is hidden", printable(name))
            })
        }
    }
}

/// `rossby group ...`.
async fn group(client: &Client, command: GroupCommand) -> Result<()> {
    let describe = |g: &GroupSummary| {
        let mut line = format!(
            "{} epoch {} members {} devices {}",
            printable(&g.name),
            g.epoch,
            g.members
                .iter()
                .map(|m| printable(m))
                .collect::<Vec<_>>()
                .join(","),
            g.devices
        );
        if let Some(suite) = g.ciphersuite {
            line.push_str(&format!(" suite={suite}"));
        }
        line
    };
    match command {
        GroupCommand::Create { name } => {
            let g = client.create_group(&name).await?;
            out(format!("created {}", describe(&g)))
        }
        GroupCommand::Add { name, identifier } => {
            let g = client.add_to_group(&name, &identifier).await?;
            out(format!(
                "added {} to {}",
                printable(&identifier),
                describe(&g)
            ))
        }
        GroupCommand::Remove { name, identifier } => {
            let g = client.remove_from_group(&name, &identifier).await?;
            out(format!(
                "removed {} from {}",
                printable(&identifier),
                describe(&g)
            ))
        }
        GroupCommand::Leave { name } => {
            client.leave_group(&name).await?;
            out(format!("left {}", printable(&name)))
        }
        GroupCommand::Send { name, extras, text } => {
            let message = extras.into_message(client, text).await?;
            let report = client.send_message_to_group(&name, message).await?;
            if report.failed > 0 {
                warn(format!(
                    "{} member account(s) did not take the message (deleted, blocking you, or unavailable)",
                    report.failed
                ));
            }
            out(format!(
                "sent {} to {} ({} member accounts)",
                report.message_id,
                printable(&name),
                report.delivered
            ))
        }
        GroupCommand::Update { name } => {
            let g = client.update_group_keys(&name).await?;
            out(format!("updated keys in {}", describe(&g)))
        }
        GroupCommand::List => {
            for g in client.groups().await {
                match g.membership {
                    Membership::Active => out(describe(&g))?,
                    Membership::Removed => out(format!("{} (removed)", printable(&g.name)))?,
                    Membership::Left => out(format!("{} (left)", printable(&g.name)))?,
                }
            }
            Ok(())
        }
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
            Command::Send { to, text, .. } => {
                assert_eq!(to, "bob@example.com");
                assert_eq!(text.join(" "), "hello there");
            }
            other => panic!("{other:?}"),
        }
        // Global options may follow the subcommand too.
        let cli = parse(&["fetch", "--wait", "5", "--state", "s"]).unwrap();
        assert!(matches!(cli.command, Command::Fetch { wait: 5, .. }));
        assert_eq!(cli.global.state, PathBuf::from("s"));
    }

    #[test]
    fn every_documented_subcommand_parses() {
        let ok: &[&[&str]] = &[
            &["register", "+14155550123"],
            &["register", "a@b.c", "--recover", "--label", "phone"],
            &["authorize", "123456"],
            &["authorize", "123456", "--pin", "2468"],
            &["settings", "--registration-lock", "2468"],
            &["settings", "--registration-lock", "off"],
            &["contact", "a@b.c"],
            &["contacts"],
            &["group", "create", "friends"],
            &["group", "add", "friends", "a@b.c"],
            &["group", "remove", "friends", "a@b.c"],
            &["group", "leave", "friends"],
            &["group", "send", "friends", "hello", "-there"],
            &["group", "update", "friends"],
            &["group", "list"],
            &["identifier", "add", "+14155550199"],
            &["identifier", "add", "a@b.c", "--hidden"],
            &["identifier", "confirm", "a@b.c", "123456"],
            &["identifier", "remove", "a@b.c"],
            &["identifier", "list"],
            &["identifier", "discoverable", "a@b.c", "on"],
            &["identifier", "discoverable", "a@b.c", "off"],
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
            &["health", "--timeout", "3"],
            &["ping"],
            &["devices"],
            &["remove-device", "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"],
            &["delete-account", "--yes"],
            &["outbox", "--retry"],
            &["whoami"],
            &["send", "a@b.c", "-dash text"],
            &["send", "a@b.c", "--location", "52.52,13.405"],
            &["send", "a@b.c", "--file", "a.jpg"],
            &[
                "send", "a@b.c", "--file", "a.jpg", "--file", "b.pdf", "two", "files",
            ],
            &["group", "send", "friends", "--file", "a.jpg"],
            &["group", "send", "friends", "--location", "1,2", "here"],
            &["fetch", "--files", "downloads"],
            &["watch", "--files", "downloads"],
            &["send", "a@b.c", "--location", "-33.9,-70.6", "meet", "here"],
            &["typing", "a@b.c"],
            &["typing", "a@b.c", "--stop"],
            &["settings", "--read-receipts", "false"],
        ];
        for args in ok {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let bad: &[&[&str]] = &[
            &[],
            &["send", "a@b.c"],
            &["group", "send", "friends"],
            &["send", "a@b.c", "--file"],
            &["fetch", "--wait", "soon"],
            &["settings", "--discoverable", "maybe"],
            &["link"],
            &["link", "--new", "--finish", "x"],
            &["outbox", "--retry", "--clear"],
            &["frobnicate"],
            // Operator commands are rossby-admin's.
            &["placement"],
            &["placement", "plan", "--topology", "t.toml"],
            &["identifier"],
            &["identifier", "add"],
            &["identifier", "confirm", "a@b.c"],
            &["identifier", "discoverable", "a@b.c", "maybe"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} should not parse");
        }
        let cli = parse(&["settings", "--discoverable", "false"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Settings {
                discoverable: Some(false),
                contacts_only: None,
                read_receipts: None,
                sealed_sender: None,
                registration_lock: None,
            }
        ));
    }

    #[test]
    fn identifier_lines_mark_hidden_ones() {
        let info = |identifier: Option<&str>, discoverable| rossby_client::IdentifierInfo {
            identifier: identifier.map(str::to_string),
            discoverable,
            bound_at_ms: 1,
        };
        assert_eq!(identifier_line(&info(Some("a@b.cd"), true)), "a@b.cd");
        assert_eq!(
            identifier_line(&info(Some("+14155550123"), false)),
            "+14155550123 (hidden)"
        );
        assert!(!identifier_line(&info(None, true)).contains('\n'));
        let cli = parse(&["identifier", "discoverable", "a@b.c", "off"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Identifier(IdentifierCommand::Discoverable {
                findable: false,
                ..
            })
        ));
        let cli = parse(&["identifier", "add", "a@b.c", "--hidden"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Identifier(IdentifierCommand::Add { hidden: true, .. })
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
