//! From a commit to wake-up pushes, off the send path.
//!
//! [`Pusher::committed`] only puts the box on a bounded queue (a full queue
//! drops it: the devices then see the message at their next fetch), so a send
//! never waits for storage reads or a push service. One scheduler task takes
//! everything queued at once and lets storage decide, in one transaction, which
//! devices to wake ([`rossby_storage::tables::push::due_wakes`]: no live
//! presence lease, not subscribed here, interval passed, nothing outstanding),
//! recording each decision. Every due wake-up goes to its provider's bounded
//! queue; a full provider queue drops it and releases it in storage.
//!
//! Each provider has its own delivery task and at most `concurrency` requests
//! in flight, so a hanging or throttling service delays only its own wake-ups.
//! A delivery is retried after 429, 5xx and network failures with exponential
//! back-off (at least the service's `Retry-After`, capped), at most
//! `max_attempts` times. A token the service no longer knows is removed; a
//! delivery that finally fails releases the wake-up so a later message may try
//! again after the interval.

use super::provider::{Outcome, Provider, ProviderKind, Target, WakeUp};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::server::now_ms;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_storage::tables::Store;
use rossby_storage::tables::push::{DueWake, Settlement, WakePolicy};
use rossby_storage::tables::records::PushProvider;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Most boxes one scheduling transaction looks at.
pub const SCHEDULE_BATCH: usize = 256;

/// How wake-ups are scheduled and delivered. Every field is configurable
/// (`--push-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSettings {
    /// Least time between two wake-ups of one device.
    pub interval: Duration,
    /// How long an unanswered wake-up blocks the next one.
    pub outstanding: Duration,
    /// Boxes waiting for the scheduler before new ones are dropped.
    pub queue: usize,
    /// Wake-ups waiting for each provider before new ones are dropped.
    pub provider_queue: usize,
    /// Requests in flight per provider.
    pub concurrency: usize,
    /// Delivery attempts per wake-up (the first included).
    pub max_attempts: u32,
    /// Back-off before the first retry; doubles per attempt.
    pub retry_base: Duration,
    /// Longest back-off, `Retry-After` included.
    pub retry_cap: Duration,
    /// How long a push service keeps a wake-up for an unreachable device.
    pub ttl: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            interval: Duration::from_secs(30),
            outstanding: Duration::from_secs(15 * 60),
            queue: 8192,
            provider_queue: 4096,
            concurrency: 32,
            max_attempts: 4,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl PushSettings {
    /// Rejects zero sizes and inconsistent durations, naming the option.
    pub fn check(&self) -> Result<(), String> {
        if self.queue == 0 || self.provider_queue == 0 || self.concurrency == 0 {
            return Err(
                "--push-queue, --push-provider-queue and --push-concurrency must be positive"
                    .into(),
            );
        }
        if self.max_attempts == 0 {
            return Err("--push-max-attempts must be at least 1".into());
        }
        if self.outstanding < self.interval {
            return Err(format!(
                "--push-outstanding-secs ({:?}) must not be shorter than --push-interval-ms ({:?})",
                self.outstanding, self.interval
            ));
        }
        if self.retry_base.is_zero() || self.retry_cap < self.retry_base {
            return Err(
                "--push-retry-base-ms must be positive and at most --push-retry-cap-secs".into(),
            );
        }
        if self.ttl.is_zero() {
            return Err("--push-ttl-secs must be positive".into());
        }
        Ok(())
    }

    fn policy(&self) -> WakePolicy {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        WakePolicy {
            interval_ms: ms(self.interval),
            outstanding_ms: ms(self.outstanding),
        }
    }
}

/// The provider of a stored token's kind.
fn kind_of(provider: PushProvider) -> Option<ProviderKind> {
    match provider {
        PushProvider::Apns => Some(ProviderKind::Apns),
        PushProvider::Fcm => Some(ProviderKind::Fcm),
        PushProvider::Webpush => Some(ProviderKind::WebPush),
        PushProvider::Unspecified => None,
    }
}

/// Where a due wake-up goes, or `None` for a record that cannot be used (only
/// valid tokens are stored, so this means damage).
fn target_of(wake: &DueWake) -> Option<Target> {
    let token = &wake.token;
    Some(match kind_of(token.provider)? {
        ProviderKind::Apns => Target::Apns {
            device_token: token.token.clone(),
        },
        ProviderKind::Fcm => Target::Fcm {
            registration_token: token.token.clone(),
        },
        ProviderKind::WebPush => Target::WebPush {
            endpoint: token.token.clone(),
            p256dh: token.p256dh.as_slice().try_into().ok()?,
            auth: token.auth.as_slice().try_into().ok()?,
        },
    })
}

/// The push service clients a gateway runs with.
#[derive(Debug, Default)]
pub struct Providers {
    /// One client per provider.
    pub clients: Vec<Arc<dyn Provider>>,
    /// What PushInfo tells web apps when Web Push is among the clients.
    pub vapid_public_key: Option<String>,
    /// Whether registrations may name insecure Web Push endpoints (tests).
    pub allow_insecure_endpoints: bool,
}

struct Lane {
    tx: mpsc::Sender<(DueWake, Target)>,
}

/// The wake-up scheduler of one gateway. Cloning shares it.
#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::Sender<(BoxId, Option<DeviceId>)>,
    lanes: Arc<BTreeMap<ProviderKind, Lane>>,
    vapid_public_key: Option<String>,
    allow_insecure_endpoints: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("providers", &self.providers())
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts the scheduler and one delivery task per provider; returns the
    /// handle and the tasks (aborted at shutdown).
    pub fn start(
        store: Store,
        presence: Presence,
        providers: Providers,
        settings: PushSettings,
        metrics: Arc<Metrics>,
    ) -> (Pusher, Vec<JoinHandle<()>>) {
        let Providers {
            clients: providers,
            vapid_public_key,
            allow_insecure_endpoints,
        } = providers;
        let mut tasks = Vec::new();
        let mut lanes = BTreeMap::new();
        let settings = Arc::new(settings);
        for provider in providers {
            let (tx, rx) = mpsc::channel(settings.provider_queue);
            tasks.push(tokio::spawn(deliver(
                rx,
                provider.clone(),
                store.clone(),
                settings.clone(),
                metrics.clone(),
            )));
            lanes.insert(provider.kind(), Lane { tx });
        }
        let (tx, rx) = mpsc::channel(settings.queue);
        let pusher = Pusher {
            tx,
            lanes: Arc::new(lanes),
            vapid_public_key,
            allow_insecure_endpoints,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(schedule(
            rx,
            pusher.clone(),
            store,
            presence,
            settings,
        )));
        (pusher, tasks)
    }

    /// Announces a commit into `box_id` of messages that wake (`skip`: the
    /// sending device, when the box is its own). Never waits.
    pub fn committed(&self, box_id: BoxId, skip: Option<DeviceId>) {
        if self.tx.try_send((box_id, skip)).is_err() {
            self.metrics
                .push_dropped_total
                .with_label_values(&["scheduler"])
                .inc();
        }
    }

    /// The providers this gateway can wake devices through.
    pub fn providers(&self) -> Vec<ProviderKind> {
        self.lanes.keys().copied().collect()
    }

    /// Whether tokens of `kind` can be used here.
    pub fn supports(&self, kind: ProviderKind) -> bool {
        self.lanes.contains_key(&kind)
    }

    /// Whether Web Push endpoints on loopback and private addresses (and plain
    /// http) are accepted: tests only.
    pub fn allows_insecure_endpoints(&self) -> bool {
        self.allow_insecure_endpoints
    }

    /// The VAPID public key (base64url), when Web Push is on.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.vapid_public_key.as_deref()
    }
}

async fn schedule(
    mut rx: mpsc::Receiver<(BoxId, Option<DeviceId>)>,
    pusher: Pusher,
    store: Store,
    presence: Presence,
    settings: Arc<PushSettings>,
) {
    let policy = settings.policy();
    while let Some(first) = rx.recv().await {
        // Several commits into one box need one decision; a box written by
        // several devices skips none of them.
        let mut boxes: BTreeMap<BoxId, Option<DeviceId>> = BTreeMap::new();
        let mut next = Some(first);
        while let Some((box_id, skip)) = next.take() {
            boxes
                .entry(box_id)
                .and_modify(|s| {
                    if *s != skip {
                        *s = None;
                    }
                })
                .or_insert(skip);
            if boxes.len() < SCHEDULE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let boxes: Vec<(BoxId, Option<DeviceId>)> = boxes.into_iter().collect();
        let online = |b: BoxId, d: DeviceId| presence.device_online(b, d);
        let due = match store.due_wakes(&boxes, &online, policy, now_ms()).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, boxes = boxes.len(), "deciding wake-ups failed");
                pusher
                    .metrics
                    .push_dropped_total
                    .with_label_values(&["scheduler"])
                    .inc_by(boxes.len() as u64);
                continue;
            }
        };
        for wake in due {
            let lane = target_of(&wake).and_then(|t| Some((pusher.lanes.get(&t.kind())?, t)));
            let queued = match lane {
                Some((lane, target)) => {
                    let kind = target.kind();
                    match lane.tx.try_send((wake, target)) {
                        Ok(()) => {
                            pusher
                                .metrics
                                .push_pending
                                .with_label_values(&[kind.name()])
                                .inc();
                            continue;
                        }
                        Err(refused) => {
                            pusher
                                .metrics
                                .push_dropped_total
                                .with_label_values(&[kind.name()])
                                .inc();
                            refused.into_inner().0
                        }
                    }
                }
                // A token of a provider this gateway has no credentials for
                // (configuration changed since it was registered).
                None => {
                    pusher
                        .metrics
                        .push_dropped_total
                        .with_label_values(&["scheduler"])
                        .inc();
                    wake
                }
            };
            release(&store, &queued, Settlement::Failed).await;
        }
    }
}

/// Records how a wake-up ended; a failure to record it only delays the next
/// wake-up of that device (by at most the outstanding time).
async fn release(store: &Store, wake: &DueWake, how: Settlement) {
    if let Err(err) = store.settle_wake(wake, how).await {
        tracing::warn!(error = %err, ?how, "recording the end of a wake-up failed");
    }
}

async fn deliver(
    mut rx: mpsc::Receiver<(DueWake, Target)>,
    provider: Arc<dyn Provider>,
    store: Store,
    settings: Arc<PushSettings>,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    while let Some((wake, target)) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let provider = provider.clone();
        let store = store.clone();
        let settings = settings.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            deliver_one(&*provider, &store, &settings, &metrics, wake, target).await;
            drop(permit);
        });
    }
}

async fn deliver_one(
    provider: &dyn Provider,
    store: &Store,
    settings: &PushSettings,
    metrics: &Metrics,
    wake: DueWake,
    target: Target,
) {
    let name = provider.kind().name();
    let request = WakeUp {
        target,
        ttl: settings.ttl,
    };
    let mut attempt = 0u32;
    let settlement = loop {
        attempt += 1;
        let started = Instant::now();
        let outcome = provider.send(&request).await;
        metrics
            .push_duration_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Delivered => {
                metrics.push_sent_total.with_label_values(&[name]).inc();
                break None;
            }
            // Counted as a removed token, not as a failure: uninstalled apps
            // are normal and must not look like a broken provider.
            Outcome::Unregistered { reason } => {
                tracing::debug!(provider = name, reason, "push token no longer registered");
                break Some(Settlement::Unregistered);
            }
            Outcome::Failed { reason } => {
                metrics
                    .push_failed_total
                    .with_label_values(&[name, reason])
                    .inc();
                break Some(Settlement::Failed);
            }
            Outcome::Retry { reason, after } => {
                metrics
                    .push_failed_total
                    .with_label_values(&[name, reason])
                    .inc();
                if attempt >= settings.max_attempts {
                    break Some(Settlement::Failed);
                }
                tokio::time::sleep(backoff(settings, attempt, after)).await;
            }
        }
    };
    if let Some(how) = settlement {
        release(store, &wake, how).await;
        if how == Settlement::Unregistered {
            metrics
                .push_tokens_removed_total
                .with_label_values(&[name])
                .inc();
        }
    }
    metrics.push_pending.with_label_values(&[name]).dec();
}

/// The wait before retry number `attempt` (1-based): `retry_base` doubled per
/// earlier retry with up to half of it as jitter, at least the service's
/// `Retry-After`, at most `retry_cap`.
fn backoff(settings: &PushSettings, attempt: u32, after: Option<Duration>) -> Duration {
    let exp = settings
        .retry_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let jitter = exp.mul_f64(rand::random::<f64>() * 0.5);
    exp.saturating_add(jitter)
        .max(after.unwrap_or_default())
        .min(settings.retry_cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_respects_retry_after_and_is_capped() {
        let settings = PushSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(2),
            ..PushSettings::default()
        };
        let first = backoff(&settings, 1, None);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150));
        let third = backoff(&settings, 3, None);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(600));
        assert_eq!(
            backoff(&settings, 1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(backoff(&settings, 30, None), Duration::from_secs(2));
        assert_eq!(
            backoff(&settings, 1, Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(PushSettings::default().check().is_ok());
        let bad = [
            PushSettings {
                queue: 0,
                ..PushSettings::default()
            },
            PushSettings {
                max_attempts: 0,
                ..PushSettings::default()
            },
            PushSettings {
                outstanding: Duration::from_secs(1),
                ..PushSettings::default()
            },
            PushSettings {
                retry_cap: Duration::from_millis(1),
                ..PushSettings::default()
            },
        ];
        for settings in bad {
            assert!(settings.check().is_err(), "{settings:?}");
        }
    }
}
