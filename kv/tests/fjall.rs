//! Runs the backend conformance suite against the embedded fjall store, plus the
//! checks only a persistent store needs: reopening, and a crash test in which a
//! child process doing durable commits is killed with SIGKILL.

mod conformance;

use async_trait::async_trait;
use rossby_kv::fjall::{FjallConfig, FjallStore};
use rossby_kv::{Error, Kv, KvStore, Transaction};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A fjall store that owns its temporary directory.
struct TempFjall {
    store: FjallStore,
    _dir: TempDir,
}

#[async_trait]
impl KvStore for TempFjall {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    async fn begin(&self) -> rossby_kv::Result<Box<dyn Transaction>> {
        self.store.begin().await
    }
}

async fn make_store() -> Option<Kv> {
    let dir = TempDir::new().expect("temp dir");
    let store = FjallStore::open(FjallConfig::new(dir.path())).expect("open fjall");
    Some(Arc::new(TempFjall { store, _dir: dir }))
}

// Snapshot isolation exactly like TiKV's: write skew commits.
conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);

async fn put(kv: &dyn KvStore, key: &[u8], value: &[u8]) {
    let mut txn = kv.begin().await.unwrap();
    txn.put(key.to_vec(), value.to_vec()).await.unwrap();
    txn.commit().await.unwrap();
}

async fn read(kv: &dyn KvStore, key: &[u8]) -> Option<Vec<u8>> {
    let mut txn = kv.begin().await.unwrap();
    let value = txn.get(key).await.unwrap();
    txn.rollback().await.unwrap();
    value
}

#[tokio::test]
async fn committed_data_survives_reopening() {
    let dir = TempDir::new().unwrap();
    {
        let store = FjallStore::open(FjallConfig::new(dir.path())).unwrap();
        for i in 0u32..100 {
            put(&store, &i.to_be_bytes(), b"kept").await;
        }
        let mut txn = store.begin().await.unwrap();
        txn.put(b"uncommitted".to_vec(), b"x".to_vec())
            .await
            .unwrap();
        drop(txn);
    }
    let store = FjallStore::open(FjallConfig::new(dir.path())).unwrap();
    for i in 0u32..100 {
        assert_eq!(
            read(&store, &i.to_be_bytes()).await.as_deref(),
            Some(&b"kept"[..])
        );
    }
    assert_eq!(read(&store, b"uncommitted").await, None);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused_clearly() {
    let dir = TempDir::new().unwrap();
    let _first = FjallStore::open(FjallConfig::new(dir.path())).unwrap();
    match FjallStore::open(FjallConfig::new(dir.path())) {
        Err(Error::Unavailable(msg)) => assert!(msg.contains("in use"), "{msg}"),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("a second open of a locked store succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_syncs() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(FjallConfig::new(dir.path())).unwrap());
    let mut tasks = Vec::new();
    for t in 0u32..32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0u32..20 {
                let key = [t.to_be_bytes(), i.to_be_bytes()].concat();
                put(store.as_ref(), &key, b"v").await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Every acknowledged commit is covered by a finished sync, and syncs were
    // shared.
    let stats = store.stats();
    assert_eq!(stats.commits, 32 * 20);
    assert!(
        stats.syncs < stats.commits,
        "{} syncs for {} commits",
        stats.syncs,
        stats.commits
    );
}

/// Environment variable that turns `crash_child` into the crashing writer.
const CHILD_DIR_ENV: &str = "ROSSBY_CRASH_CHILD_DIR";

/// The child half of the crash test: commits numbered keys from several tasks and
/// prints `durable <n>` after each commit is acknowledged, until killed (or, as a
/// safety net, after 60 seconds). Does nothing when run as a normal test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let store = Arc::new(FjallStore::open(FjallConfig::new(dir)).unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0u64..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut n = t;
            while started.elapsed() < Duration::from_secs(60) {
                let key = n.to_be_bytes();
                let value = vec![(n % 251) as u8; 100 + (n % 900) as usize];
                put(store.as_ref(), &key, &value).await;
                let mut out = std::io::stdout().lock();
                writeln!(out, "durable {n}").unwrap();
                out.flush().unwrap();
                n += 8;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn every_acknowledged_commit_survives_sigkill() {
    let dir = TempDir::new().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("durable ") {
            acknowledged.push(n.parse::<u64>().unwrap());
        }
        if acknowledged.len() >= 2_000 || Instant::now() > deadline {
            break;
        }
    }
    // SIGKILL while the child is still committing.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acknowledged.len() >= 100,
        "the child acknowledged only {} commits",
        acknowledged.len()
    );

    let store = FjallStore::open(FjallConfig::new(dir.path())).unwrap();
    let mut missing = BTreeMap::new();
    for n in &acknowledged {
        let expected = vec![(n % 251) as u8; 100 + (n % 900) as usize];
        if read(&store, &n.to_be_bytes()).await.as_ref() != Some(&expected) {
            missing.insert(*n, ());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged commits were lost, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.keys().take(5).collect::<Vec<_>>()
    );
}

/// Two transactions write the same key and commit at once; the one refused for
/// the conflict is told so only once the winning write is visible, so a retry that
/// begins right then reads it (instead of losing to it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_reported_once_the_winning_write_is_visible() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(FjallConfig::new(dir.path())).unwrap());
    for round in 0u32..50 {
        let mut txns = Vec::new();
        for writer in 0u32..2 {
            let mut txn = store.begin().await.unwrap();
            txn.get(b"hot").await.unwrap();
            let value = [round.to_be_bytes(), writer.to_be_bytes()].concat();
            txn.put(b"hot".to_vec(), value.clone()).await.unwrap();
            txns.push((txn, value));
        }
        let mut tasks = Vec::new();
        for (txn, value) in txns {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                match txn.commit().await {
                    Ok(()) => Some(value),
                    Err(Error::Conflict(_)) => {
                        // What a retry would see first.
                        let seen = read(store.as_ref(), b"hot").await.unwrap();
                        assert_ne!(seen, value, "round {round}: the loser's write is not there");
                        assert_eq!(seen[..4], round.to_be_bytes(), "round {round}: stale read");
                        None
                    }
                    Err(other) => panic!("round {round}: {other}"),
                }
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            winners.extend(task.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one commits");
    }
}

/// fjall's flush and compaction threads run at a lower CPU priority than the rest
/// of the process (nice 10), so their bursts do not starve request handling.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn fjall_background_threads_run_at_lower_priority() {
    let dir = TempDir::new().unwrap();
    let _store = FjallStore::open(FjallConfig::new(dir.path())).unwrap();
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fjall") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after_name.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 10, "{}", comm.trim());
        seen += 1;
    }
    assert!(seen > 0, "no fjall worker thread found");
}
