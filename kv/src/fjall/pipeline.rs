//! The threads of the commit pipeline: conflict check and logging, sync and apply,
//! checkpoints (see the module above for how they fit together).

use super::commit_log::{self, CommitLog, GroupWrite, SealedQueue};
use super::{Durability, Shared, backend_error, lock};
use crate::overlay::{Pending, escape};
use crate::{Error, Key, Result, Value};
use fjall::{Database, Keyspace, PersistMode};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// At most this many commits go into one group, so a group's record stays
/// moderate and the first commit of a long queue is not held back by the last.
const MAX_GROUP_COMMITS: usize = 4096;

/// How often fjall's journal is synced so log segments can go.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A transaction asking to commit.
pub(super) struct CommitRequest {
    /// The last group applied when it began.
    pub start: u64,
    pub pending: Pending,
    pub reply: oneshot::Sender<Result<()>>,
}

type Reply = oneshot::Sender<Result<()>>;

/// Accepted commits written to the log together, on their way to the sync thread.
struct Group {
    /// Its number; 0 for a batch whose commits were all refused (nothing to log).
    id: u64,
    /// The log segment holding the group's record.
    file: Option<Arc<File>>,
    writes: Vec<BTreeMap<Key, Option<Value>>>,
    replies: Vec<Reply>,
    /// Commits refused for a conflict with a group not yet applied, answered once
    /// this group (which comes after it) is: a retry that begins then sees the
    /// write it lost to, instead of losing to it again.
    refused: Vec<(Reply, Error)>,
}

impl Group {
    /// Tells every accepted commit that its outcome is unknown, and every refused
    /// one why it was refused.
    fn abandon(self, why: &str) {
        answer(self.replies, why);
        for (reply, err) in self.refused {
            let _ = reply.send(Err(err));
        }
    }
}

/// The running pipeline, as the store holds it.
pub(super) struct Running {
    /// The commit thread's queue.
    pub submit: mpsc::Sender<CommitRequest>,
    /// The commit, sync and apply threads: they end once `submit` is dropped.
    pub threads: Vec<JoinHandle<()>>,
    /// The checkpointer thread, and the sender whose drop stops it (after a last
    /// checkpoint).
    pub checkpointer: (mpsc::Sender<()>, JoinHandle<()>),
}

/// Starts the pipeline's threads.
pub(super) fn start(
    shared: Arc<Shared>,
    log: CommitLog,
    sealed: SealedQueue,
    log_dir: PathBuf,
    durability: Durability,
) -> Result<Running> {
    let (submit, requests) = mpsc::channel();
    let (to_sync, groups) = mpsc::channel();
    let (to_apply, synced) = mpsc::channel();
    let (stop, stopped) = mpsc::channel();
    let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| Error::Unavailable(format!("cannot start thread {name}: {e}")))
    };
    let committer = {
        let shared = Arc::clone(&shared);
        spawn(
            "rossby-commit",
            Box::new(move || run_committer(&shared, &requests, log, &to_sync)),
        )?
    };
    let syncer = {
        let shared = Arc::clone(&shared);
        spawn(
            "rossby-sync",
            Box::new(move || run_syncer(&shared, &groups, &to_apply, durability)),
        )?
    };
    let applier = {
        let shared = Arc::clone(&shared);
        spawn(
            "rossby-apply",
            Box::new(move || run_applier(&shared, &synced)),
        )?
    };
    let checkpointer = spawn(
        "rossby-ckpt",
        Box::new(move || run_checkpointer(&shared, &stopped, &sealed, &log_dir)),
    )?;
    Ok(Running {
        submit,
        threads: vec![committer, syncer, applier],
        checkpointer: (stop, checkpointer),
    })
}

/// Which group last wrote (or locked) each key, for as long as a running
/// transaction may not have seen it.
#[derive(Default)]
struct Conflicts {
    /// Keyed with a fast, randomly seeded hash: the keys contain client-chosen
    /// parts (message ids), so they must not be able to pick collisions.
    last: foldhash::HashMap<Key, u64>,
    /// Groups in order with the keys they recorded, to forget them in order.
    history: VecDeque<(u64, Vec<Key>)>,
}

impl Conflicts {
    /// Finds the first key of `request` written by a group it did not see, and
    /// names that group and the key.
    fn check(&self, request: &CommitRequest) -> Option<(u64, String)> {
        request.pending.conflict_keys().find_map(|key| {
            let group = *self.last.get(key)?;
            (group > request.start).then(|| {
                let msg = format!(
                    "key {} was written by commit group {group}, after this transaction \
                         began at group {}",
                    escape(key),
                    request.start
                );
                (group, msg)
            })
        })
    }

    fn record(&mut self, group: u64, request: &CommitRequest) {
        let keys: Vec<Key> = request.pending.conflict_keys().cloned().collect();
        for key in &keys {
            self.last.insert(key.clone(), group);
        }
        self.history.push_back((group, keys));
    }

    /// Forgets writers of groups up to `point`: every transaction that could
    /// still commit began at or after it, so it saw them.
    fn prune(&mut self, point: u64) {
        while let Some((group, _)) = self.history.front() {
            if *group > point {
                break;
            }
            let Some((group, keys)) = self.history.pop_front() else {
                break;
            };
            for key in keys {
                if self.last.get(&key) == Some(&group) {
                    self.last.remove(&key);
                }
            }
        }
    }
}

fn run_committer(
    shared: &Shared,
    requests: &mpsc::Receiver<CommitRequest>,
    mut log: CommitLog,
    to_sync: &mpsc::Sender<Group>,
) {
    let mut conflicts = Conflicts::default();
    let mut next_group = 1u64;
    let mut record = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMITS {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        conflicts.prune(shared.prune_point());

        let id = next_group;
        let mut group = Group {
            id,
            file: None,
            writes: Vec::with_capacity(batch.len()),
            replies: Vec::with_capacity(batch.len()),
            refused: Vec::new(),
        };
        for mut request in batch {
            let verdict = match shared.failed.get() {
                Some(msg) => Err((0, Error::Unavailable(msg.to_string()))),
                None => match conflicts.check(&request) {
                    Some((winner, msg)) => Err((winner, Error::Conflict(msg))),
                    None => Ok(()),
                },
            };
            shared.leave(request.start);
            match verdict {
                Ok(()) => {
                    conflicts.record(id, &request);
                    group
                        .writes
                        .push(std::mem::take(&mut request.pending.writes));
                    group.replies.push(request.reply);
                }
                Err((winner, err)) => {
                    if matches!(err, Error::Conflict(_)) {
                        shared.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    if winner > shared.applied.load(Ordering::Acquire) {
                        group.refused.push((request.reply, err));
                    } else {
                        // The requester may have gone away (a cancelled request).
                        let _ = request.reply.send(Err(err));
                    }
                }
            }
        }
        if group.replies.is_empty() {
            // Nothing to log; the refusals still wait for the groups before.
            group.id = 0;
            if !group.refused.is_empty()
                && let Err(mpsc::SendError(group)) = to_sync.send(group)
            {
                group.abandon("the sync thread stopped");
            }
            continue;
        }
        commit_log::encode(
            &mut record,
            id,
            group
                .writes
                .iter()
                .flat_map(|w| w.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))),
        );
        match log.append(id, &record) {
            Ok(file) => {
                group.file = Some(file);
                next_group += 1;
                shared.groups.fetch_add(1, Ordering::Relaxed);
                if let Err(mpsc::SendError(group)) = to_sync.send(group) {
                    group.abandon("the sync thread stopped");
                }
            }
            Err(err) => {
                // The record may be partly written: nothing may follow it.
                let msg = shared.fail(format!("commit log: {err}"));
                group.abandon(&msg);
            }
        }
    }
}

/// Tells every commit of a group that its outcome is unknown.
fn answer(replies: Vec<Reply>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(Error::Undetermined(why.to_string())));
    }
}

fn run_syncer(
    shared: &Shared,
    groups: &mpsc::Receiver<Group>,
    to_apply: &mpsc::Sender<Vec<Group>>,
    durability: Durability,
) {
    while let Ok(first) = groups.recv() {
        let mut ready = vec![first];
        while let Ok(group) = groups.try_recv() {
            ready.push(group);
        }
        if let Some(msg) = shared.failed.get() {
            ready.into_iter().for_each(|g| g.abandon(msg));
            continue;
        }
        if durability == Durability::GroupCommit
            && let Err(err) = sync_files(shared, &ready)
        {
            let msg = shared.fail(format!("commit log sync failed: {err}"));
            ready.into_iter().for_each(|g| g.abandon(&msg));
            continue;
        }
        // Applying is left to another thread so the next sync starts at once.
        if let Err(mpsc::SendError(ready)) = to_apply.send(ready) {
            ready
                .into_iter()
                .for_each(|g| g.abandon("the apply thread stopped"));
        }
    }
}

fn run_applier(shared: &Shared, synced: &mpsc::Receiver<Vec<Group>>) {
    while let Ok(mut groups) = synced.recv() {
        if let Some(msg) = shared.failed.get() {
            groups.into_iter().for_each(|g| g.abandon(msg));
            continue;
        }
        // One fjall batch for all of them: no key is written by two groups that
        // were unapplied together (the second writer began before the first was
        // applied, so the commit thread refused it), so their order inside the
        // batch does not matter.
        let last = groups.iter().map(|g| g.id).max().unwrap_or(0);
        let commits: u64 = groups.iter().map(|g| g.replies.len() as u64).sum();
        let writes = groups
            .iter_mut()
            .flat_map(|g| std::mem::take(&mut g.writes))
            .flatten();
        if let Err(err) = apply(&shared.db, &shared.keyspace, writes) {
            // Durable in the log, so replayed on the next open; until then it
            // cannot be shown.
            let msg = shared.fail(format!("applying commit groups to fjall failed: {err}"));
            groups.into_iter().for_each(|g| g.abandon(&msg));
            continue;
        }
        if last != 0 {
            shared.applied.store(last, Ordering::Release);
        }
        shared.commits.fetch_add(commits, Ordering::AcqRel);
        for group in groups {
            for reply in group.replies {
                let _ = reply.send(Ok(()));
            }
            for (reply, err) in group.refused {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Syncs every log segment the groups went to, oldest first.
fn sync_files(shared: &Shared, groups: &[Group]) -> std::io::Result<()> {
    let mut synced: Option<&Arc<File>> = None;
    for file in groups.iter().filter_map(|g| g.file.as_ref()) {
        if synced.is_some_and(|f| Arc::ptr_eq(f, file)) {
            continue;
        }
        file.sync_data()?;
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        synced = Some(file);
    }
    Ok(())
}

/// Applies writes to fjall as one atomic batch, without syncing fjall's journal
/// (the commit log holds them durably).
pub(super) fn apply(
    db: &Database,
    keyspace: &Keyspace,
    writes: impl IntoIterator<Item = GroupWrite>,
) -> std::result::Result<(), fjall::Error> {
    let mut batch = db.batch().durability(None);
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(keyspace, key, value),
            None => batch.remove(keyspace, key),
        }
    }
    batch.commit()
}

fn run_checkpointer(
    shared: &Shared,
    stop: &mpsc::Receiver<()>,
    sealed: &SealedQueue,
    log_dir: &std::path::Path,
) {
    let mut checkpointed = 0u64;
    loop {
        let stopping = !matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if shared.failed.get().is_some() {
            return;
        }
        let applied = shared.applied.load(Ordering::Acquire);
        if applied > checkpointed {
            if let Err(err) = checkpoint(shared, applied, sealed, log_dir) {
                shared.fail(format!("checkpoint failed: {err}"));
                return;
            }
            checkpointed = applied;
        }
        if stopping {
            return;
        }
    }
}

/// Makes fjall's journal durable up to at least group `applied`, then deletes the
/// sealed log segments it now covers.
fn checkpoint(
    shared: &Shared,
    applied: u64,
    sealed: &SealedQueue,
    log_dir: &std::path::Path,
) -> Result<()> {
    // Every group up to `applied` was written to fjall's journal before `applied`
    // was published, so this sync covers them.
    shared
        .db
        .persist(PersistMode::SyncData)
        .map_err(backend_error)?;
    let mut removed = false;
    loop {
        let segment = {
            let mut queue = lock(sealed);
            match queue.front() {
                Some(s) if s.last_group <= applied => queue.pop_front(),
                _ => None,
            }
        };
        let Some(segment) = segment else { break };
        std::fs::remove_file(&segment.path)
            .map_err(|e| commit_log::io_error("cannot remove", &segment.path, e))?;
        removed = true;
    }
    if removed {
        commit_log::sync_dir(log_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(start: u64, writes: &[&[u8]], locked: &[&[u8]]) -> CommitRequest {
        CommitRequest {
            start,
            pending: Pending {
                writes: writes
                    .iter()
                    .map(|k| (k.to_vec(), Some(b"v".to_vec())))
                    .collect(),
                locked: locked.iter().map(|k| k.to_vec()).collect(),
            },
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_key_written_after_the_start_conflicts_and_one_written_before_does_not() {
        let mut conflicts = Conflicts::default();
        conflicts.record(5, &request(4, &[b"a"], &[b"l"]));
        assert!(conflicts.check(&request(4, &[b"a"], &[])).is_some());
        assert!(conflicts.check(&request(4, &[], &[b"a"])).is_some());
        assert!(
            conflicts.check(&request(4, &[b"l"], &[])).is_some(),
            "locks count"
        );
        assert!(conflicts.check(&request(5, &[b"a"], &[])).is_none());
        assert!(conflicts.check(&request(4, &[b"b"], &[])).is_none());
    }

    #[test]
    fn pruning_forgets_only_groups_every_running_transaction_saw() {
        let mut conflicts = Conflicts::default();
        conflicts.record(1, &request(0, &[b"a", b"b"], &[]));
        conflicts.record(2, &request(1, &[b"a"], &[]));
        conflicts.prune(1);
        assert_eq!(conflicts.last.get(b"a".as_slice()), Some(&2));
        assert_eq!(conflicts.last.get(b"b".as_slice()), None);
        assert!(conflicts.check(&request(1, &[b"a"], &[])).is_some());
        conflicts.prune(2);
        assert!(conflicts.last.is_empty() && conflicts.history.is_empty());
    }
}
