//! `rossby-admin backup` and `restore`: a backup of a running gateway's embedded
//! store through its admin port, checked and restored into a new store, with the
//! exit codes the runbooks rely on.

use rossby_gateway::{Config, Gateway};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn rossby_admin(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rossby-admin"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ROSSBY_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("the binary runs")
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rossby_admin(&args)
    })
    .await
    .expect("the command's thread")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn one_stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(stderr.starts_with("rossby-admin: "), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_check_then_restore() {
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gw");
    let gateway = tokio::time::timeout(
        Duration::from_secs(60),
        Gateway::start(Config::for_tests(&gw_dir)),
    )
    .await
    .expect("the gateway starts in time")
    .expect("the gateway starts");
    let admin = gateway.admin_addr().to_string();
    let out = dir.path().join("backups").join("first");

    let backup = |out: &Path| {
        vec![
            "backup".to_string(),
            "--admin".into(),
            admin.clone(),
            "--secret-file".into(),
            path(&gw_dir.join("secret")),
            "--out".into(),
            path(out),
        ]
    };
    let output = run(backup(&out)).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(
        line.starts_with(&format!("backup {}: ", out.display())),
        "{line}"
    );
    assert!(line.contains("of the fjall store"), "{line}");
    assert!(out.join("snapshot.rbk").is_file() && out.join("manifest.txt").is_file());

    // A backup never overwrites.
    let output = run(backup(&out)).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(one_stderr_line(&output).contains("already exists"));
    gateway.shutdown().await;

    let output = run(vec![
        "restore".into(),
        "--from".into(),
        path(&out),
        "--check".into(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(line.contains("is complete"), "{line}");

    let store = dir.path().join("restored");
    let restore = vec![
        "restore".to_string(),
        "--from".into(),
        path(&out),
        "--store-dir".into(),
        path(&store),
    ];
    let output = run(restore.clone()).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(line.starts_with("restored "), "{line}");
    assert!(line.trim_end().ends_with(&path(&store)), "{line}");

    // Restore merges nothing.
    let output = run(restore).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(one_stderr_line(&output).contains("not empty"));
}

#[test]
fn backup_and_restore_have_their_usage() {
    for args in [
        &["backup"][..],
        &["backup", "--out"][..],
        &["restore"][..],
        &["restore", "--from", "x"][..],
        &["restore", "--from", "x", "--check", "--store-dir", "y"][..],
    ] {
        let output = rossby_admin(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        one_stderr_line(&output);
    }
    let help = rossby_admin(&["backup", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--secret-file") && text.contains("--out"),
        "{text}"
    );
    assert!(text.contains("rossby-admin backup"), "{text}");
    let output = rossby_admin(&["restore", "--from", "/nonexistent", "--check"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(one_stderr_line(&output).contains("not a backup directory"));
}
