//! Online backup through the admin port and offline restore of the embedded
//! store: a backup taken while clients keep sending restores into a new store on
//! which a gateway with the same secret and pepper serves every message
//! acknowledged before the backup (and none sent after it); damaged, truncated
//! and unauthorized backups and restores into a used store are refused; and the
//! `rossby-gateway backup` / `restore` commands keep their exit codes.

mod support;

use rossby_client::{Body, Client};
use rossby_gateway::backup::{
    self, BackupArgs, BackupOptions, RestoreOptions, SNAPSHOT_FILE, backup_token,
};
use rossby_gateway::config::StorageConfig;
use rossby_gateway::{Config, Gateway};
use rossby_storage::BackendConfig;
use rossby_storage::kv::fjall::FjallConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{bounded, client, client_at, codes_file, register, start_gateway, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
/// Messages to Bob acknowledged before the backup.
const TO_BOB: usize = 12;

/// Every text message `client` can fetch now (fetching acknowledges them).
async fn fetch_all(client: &Client) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let batch = bounded("fetch", client.fetch(Duration::ZERO))
            .await
            .expect("fetch");
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        if batch.messages.is_empty() {
            return texts;
        }
        for message in batch.messages {
            if let Body::Text(text) = message.body {
                texts.push(text);
            }
        }
    }
}

/// A gateway on the restored `store`, with the original deployment's secret and
/// pepper files (in `original`).
fn restored_config(data_dir: &Path, store: &Path, original: &Path) -> Config {
    let mut config = Config::for_tests(data_dir);
    config.storage = StorageConfig::Backend(BackendConfig::Fjall(FjallConfig::new(store)));
    config.secret_file = original.join("secret");
    config.pepper_file = original.join("pepper");
    config
}

fn options(gateway: &Gateway, secret_file: &Path, out: PathBuf) -> BackupOptions {
    BackupArgs {
        admin: Some(gateway.admin_addr().to_string()),
        secret_file: Some(secret_file.to_path_buf()),
        out,
    }
    .options()
    .expect("backup options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gw");
    let gateway = start_gateway(&gw_dir).await;
    let codes = codes_file(&gw_dir);
    let alice = Arc::new(client(&gateway, dir.path().join("alice.state")).await);
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    let carol = Arc::new(client(&gateway, dir.path().join("carol.state")).await);
    register(&alice, ALICE, &codes).await;
    register(&bob, BOB, &codes).await;
    register(&carol, CAROL, &codes).await;
    for i in 0..TO_BOB {
        alice.send_text(BOB, &format!("to bob {i}")).await.unwrap();
    }

    // Carol keeps writing to Alice while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (carol, stop, started, acked) =
            (carol.clone(), stop.clone(), started.clone(), acked.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let i = started.fetch_add(1, Ordering::AcqRel);
                carol
                    .send_text(ALICE, &format!("to alice {i}"))
                    .await
                    .expect("send during the backup");
                // Sends are sequential: every send before this one was acknowledged.
                acked.store(i + 1, Ordering::Release);
            }
        })
    };
    bounded("traffic before the backup", async {
        while acked.load(Ordering::Acquire) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let acked_before = acked.load(Ordering::Acquire);
    let out = dir.path().join("backups").join("first");
    let report = bounded(
        "backup",
        backup::take_backup(&options(&gateway, &gw_dir.join("secret"), out.clone())),
    )
    .await
    .expect("backup");
    let started_after = started.load(Ordering::Acquire);
    // Let traffic continue past the backup, so some sends certainly miss it.
    bounded("traffic after the backup", async {
        while acked.load(Ordering::Acquire) < started_after + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Release);
    bounded("traffic", traffic).await.unwrap();

    let summary = &report.summary;
    assert_eq!(summary.header.backend, "fjall");
    assert!(summary.records > 0);
    assert_eq!(report.snapshot, out.join(SNAPSHOT_FILE));
    let manifest = std::fs::read_to_string(out.join("manifest.txt")).unwrap();
    assert!(
        manifest.contains(&format!("records {}\n", summary.records)),
        "{manifest}"
    );
    assert!(
        manifest.contains(&format!("file_sha256 {}\n", report.file_sha256)),
        "{manifest}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&report.snapshot)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        backup::verify_backup(&out).unwrap().sha256,
        summary.sha256,
        "the file verifies as it was received"
    );

    for c in [&*alice, &bob, &*carol] {
        c.close().await;
    }
    drop((alice, bob, carol));
    gateway.shutdown().await;

    let restored_dir = dir.path().join("restored");
    let store = restored_dir.join("store");
    let restored = bounded(
        "restore",
        backup::restore(&RestoreOptions {
            from: out.clone(),
            store_dir: store.clone(),
        }),
    )
    .await
    .expect("restore");
    assert_eq!(restored.sha256, summary.sha256);
    assert_eq!(restored.records, summary.records);

    let gateway = start_with(restored_config(&restored_dir, &store, &gw_dir)).await;
    let cert = gateway.certificate_der().to_vec();
    let bob = client_at(dir.path().join("bob.state"), gateway.quic_addr(), &cert).await;
    let expected: Vec<String> = (0..TO_BOB).map(|i| format!("to bob {i}")).collect();
    assert_eq!(fetch_all(&bob).await, expected);

    let alice = client_at(dir.path().join("alice.state"), gateway.quic_addr(), &cert).await;
    let got: BTreeSet<String> = fetch_all(&alice).await.into_iter().collect();
    for i in 0..acked_before {
        assert!(
            got.contains(&format!("to alice {i}")),
            "message {i}, acknowledged before the backup, is missing"
        );
    }
    for i in started_after..started.load(Ordering::Acquire) {
        assert!(
            !got.contains(&format!("to alice {i}")),
            "message {i}, sent after the backup, is in it"
        );
    }
    // The restored accounts keep working: identifiers resolve (same pepper) and
    // credentials verify (same secret).
    alice.send_text(BOB, "after the restore").await.unwrap();
    assert_eq!(fetch_all(&bob).await, vec!["after the restore".to_string()]);
    alice.close().await;
    bob.close().await;
    gateway.shutdown().await;
}

/// A small fjall gateway with one account, backed up into `<dir>/backup`.
async fn backed_up(dir: &Path) -> PathBuf {
    let gw_dir = dir.join("gw");
    let gateway = start_gateway(&gw_dir).await;
    let alice = client(&gateway, dir.join("alice.state")).await;
    register(&alice, ALICE, &codes_file(&gw_dir)).await;
    alice.close().await;
    let out = dir.join("backup");
    bounded(
        "backup",
        backup::take_backup(&options(&gateway, &gw_dir.join("secret"), out.clone())),
    )
    .await
    .expect("backup");
    gateway.shutdown().await;
    out
}

fn copy_backup(from: &Path, to: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    std::fs::create_dir_all(to).unwrap();
    let mut bytes = std::fs::read(from.join(SNAPSHOT_FILE)).unwrap();
    edit(&mut bytes);
    std::fs::write(to.join(SNAPSHOT_FILE), bytes).unwrap();
}

fn rossby_gateway(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rossby-gateway"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ROSSBY_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("the binary runs")
}

fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_truncated_backups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = backed_up(dir.path()).await;
    let size = std::fs::metadata(good.join(SNAPSHOT_FILE)).unwrap().len() as usize;

    let flipped = dir.path().join("flipped");
    copy_backup(&good, &flipped, |b| b[size / 2] ^= 0x20);
    let truncated = dir.path().join("truncated");
    copy_backup(&good, &truncated, |b| b.truncate(size - 10));
    let extended = dir.path().join("extended");
    copy_backup(&good, &extended, |b| b.extend_from_slice(b"more"));

    for (backup_dir, needle) in [
        (&flipped, "damaged backup"),
        (&truncated, "incomplete"),
        (&extended, "after the trailer"),
    ] {
        let message = backup::verify_backup(backup_dir).unwrap_err().to_string();
        assert!(message.contains(needle), "{message}");
        let store = dir.path().join("never").join("store");
        let message = backup::restore(&RestoreOptions {
            from: backup_dir.clone(),
            store_dir: store.clone(),
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(message.contains(needle), "{message}");
        assert!(!store.exists(), "nothing is written from a bad backup");
    }

    // The command line: exit 1 with one line naming the problem.
    let store = dir.path().join("cli-store");
    let output = rossby_gateway(&[
        "restore",
        "--from",
        truncated.to_str().unwrap(),
        "--store-dir",
        store.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("incomplete"));
    let output = rossby_gateway(&["restore", "--from", good.to_str().unwrap(), "--check"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("is complete"));
    let output = rossby_gateway(&["restore", "--from", flipped.to_str().unwrap(), "--check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("damaged backup"));
    let output = rossby_gateway(&["restore", "--from", dir.path().to_str().unwrap(), "--check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("not a backup directory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_used_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = backed_up(dir.path()).await;
    let used = dir.path().join("gw").join("store");
    let before: BTreeSet<PathBuf> = std::fs::read_dir(&used)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let message = backup::restore(&RestoreOptions {
        from: good.clone(),
        store_dir: used.clone(),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(message.contains("is not empty"), "{message}");
    let after: BTreeSet<PathBuf> = std::fs::read_dir(&used)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
    let output = rossby_gateway(&[
        "restore",
        "--from",
        good.to_str().unwrap(),
        "--store-dir",
        used.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("is not empty"));

    // An empty directory (a fresh mount point) is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let restored = backup::restore(&RestoreOptions {
        from: good,
        store_dir: empty.clone(),
    })
    .await
    .unwrap();
    assert!(restored.records > 0);
}

/// Sends `POST /backup` with `authorization` (if any); returns the status line
/// and the head of the answer.
async fn raw_backup_request(admin: std::net::SocketAddr, authorization: Option<&str>) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /backup HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    bounded("admin answer", stream.read_to_end(&mut raw))
        .await
        .unwrap();
    String::from_utf8_lossy(&raw).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_needs_the_token_of_the_servers_secret() {
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gw");
    let gateway = start_gateway(&gw_dir).await;
    let admin = gateway.admin_addr();

    for authorization in [None, Some("Basic YTpi"), Some("Bearer 00")] {
        let answer = raw_backup_request(admin, authorization).await;
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{authorization:?}: {answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    // A token of another secret is refused, and the backup directory is not left behind.
    let out = dir.path().join("refused");
    let message = backup::take_backup(&BackupOptions {
        admin: admin.to_string(),
        token: backup_token(&[7; 32]),
        out: out.clone(),
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(message.contains("401"), "{message}");
    assert!(!out.exists());

    // The right token, formed from the secret file.
    let secret = std::fs::read_to_string(gw_dir.join("secret")).unwrap();
    let token = backup_token(&hex::decode(secret.trim()).unwrap());
    let answer = raw_backup_request(admin, Some(&format!("Bearer {token}"))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("RSBYBAK\u{1}"),
        "the stream starts with the magic"
    );

    // The command line: the same refusal as one line and exit 1; an existing
    // directory is never overwritten.
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, hex::encode([9; 32])).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = dir.path().join("cli");
    let output = rossby_gateway(&[
        "backup",
        "--admin",
        &admin.to_string(),
        "--secret-file",
        wrong.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("401"));
    assert!(!out.exists());
    let output = rossby_gateway(&[
        "backup",
        "--admin",
        &admin.to_string(),
        "--secret-file",
        gw_dir.join("secret").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("backup "), "{stdout}");
    assert!(out.join(SNAPSHOT_FILE).is_file());
    let output = rossby_gateway(&[
        "backup",
        "--admin",
        &admin.to_string(),
        "--secret-file",
        gw_dir.join("secret").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("already exists"));
    gateway.shutdown().await;
}

#[test]
fn the_tools_have_their_own_usage() {
    for (args, code) in [
        (&["backup"][..], 2),
        (&["backup", "--out"][..], 2),
        (&["backup", "--out", "x", "--bogus"][..], 2),
        (&["restore"][..], 2),
        (&["restore", "--from", "x"][..], 2),
        (
            &["restore", "--from", "x", "--check", "--store-dir", "y"][..],
            2,
        ),
    ] {
        let output = rossby_gateway(args);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        assert!(stderr_line(&output).starts_with("rossby-gateway: "));
    }
    let help = rossby_gateway(&["backup", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("rossby-gateway backup"), "{text}");
    assert!(text.contains("--secret-file"), "{text}");
    let help = rossby_gateway(&["restore", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--store-dir"));
    // The gateway's own options are unchanged, and its help names the tools.
    let help = rossby_gateway(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--pepper-version"), "{text}");
    assert!(text.contains("rossby-gateway backup"), "{text}");
    let output = rossby_gateway(&["--bogus"]);
    assert_eq!(output.status.code(), Some(2));
}
