//! Register, Authorize, LinkDevice and RefreshCredentials: how devices get
//! credentials.
//!
//! Register stores a pending registration (the keyed hash of a fresh six-digit
//! code, its expiry, an attempt counter, and the device's id, keys, label, recovery
//! flag and region) and sends the code through the verifier. Authorize checks the
//! code and, in the same transaction that deletes the pending registration, creates
//! the account (or, for recovery, replaces its devices and drops its queue) and
//! authorizes the device. Wrong codes are counted in storage, per pending
//! registration and per identifier over all its registrations, and so are the
//! codes sent to an identifier, so the limits hold across gateways and
//! restarts. A recovery of an account with a registration lock needs its PIN
//! once the code is right (`registration_lock_check`).
//!
//! Credentials (`pb::Credentials`: Hawk id and derived key) are always issued
//! under the current server secret version, sealed to the device's public keys
//! with [`seal`] under [`CONTEXT_CREDENTIALS`]; the reply's `sealed_credentials`
//! is the protobuf encoding of the resulting `pb::Sealed`. Code hashes are made
//! with the current version and checked against every configured one
//! ([`codes::matches_any`]).

use super::{Failure, Shared, check_label, decode, now_ms, parse_device_id, parse_identifier, pin};
use crate::auth::keys::CredentialId;
use crate::auth::{Authenticated, codes, keys};
use crate::verifier::CodeMessage;
use prost::Message;
use rossby_keyspace::{BoxId, DeviceId, Identifier, RegionId};
use rossby_protocol::crypto::{CONTEXT_CREDENTIALS, PublicKeys, seal};
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::records::{Device, PendingRegistration};
use rossby_storage::tables::{
    code_budgets, devices, identifier_limits, lifecycle, lookup, registration_lock, registrations,
};
use rossby_storage::transact;
use std::time::Duration;

/// The key version of a newly authorized device.
const FIRST_KEY_VERSION: u32 = 1;

/// Checks a key bundle from a request: present, well-formed and self-signed.
fn check_bundle(keys: Option<&pb::KeyBundle>) -> Result<pb::KeyBundle, Failure> {
    let bundle = keys.ok_or_else(|| Failure::bad_request("the device's key bundle is required"))?;
    PublicKeys::from_bundle(bundle).map_err(|_| {
        Failure::bad_request("the key bundle is invalid (key lengths, key encodings or signature)")
    })?;
    Ok(bundle.clone())
}

/// The record of a new, not yet authorized device.
fn device_record(bundle: &pb::KeyBundle, label: &str) -> Device {
    Device {
        identity_key: bundle.identity_key.clone(),
        encryption_key: bundle.encode_to_vec(),
        credential_version: FIRST_KEY_VERSION,
        label: label.to_string(),
        ..Device::default()
    }
}

/// The device's Hawk credentials sealed to its keys: a protobuf `pb::Sealed`.
fn sealed_credentials(
    shared: &Shared,
    bundle: &pb::KeyBundle,
    box_id: BoxId,
    device_id: DeviceId,
    key_version: u32,
) -> Result<Vec<u8>, Failure> {
    let public = PublicKeys::from_bundle(bundle).map_err(|e| {
        tracing::error!(error = %e, "a stored key bundle no longer verifies");
        Failure::internal()
    })?;
    let secrets = shared.auth.secrets();
    let creds = keys::credentials(
        secrets.current(),
        CredentialId {
            box_id,
            device: device_id,
            key_version,
            secret_version: secrets.current_version(),
        },
    );
    let plaintext = pb::Credentials {
        id: creds.id,
        key: creds.key.to_vec(),
    }
    .encode_to_vec();
    let sealed = seal(&public, CONTEXT_CREDENTIALS, &plaintext).map_err(|e| {
        tracing::error!(error = %e, "sealing credentials failed");
        Failure::internal()
    })?;
    Ok(sealed.encode_to_vec())
}

/// A fresh verification code, as Register and AddIdentifier issue it.
pub(crate) struct IssuedCode {
    /// The code itself: only ever sent out, never stored.
    code: String,
    /// Its keyed hash ([`codes::code_mac`]) under the current server secret.
    pub(crate) code_mac: Vec<u8>,
    /// When it stops being accepted.
    pub(crate) expires_at_ms: u64,
    /// When it was issued.
    pub(crate) now_ms: u64,
}

/// Takes one code from the identifier's rate limit and issues a code for it. The
/// bucket is the identifier's (by lookup digest), whichever RPC asks, so
/// Register and AddIdentifier together send no more codes to one identifier
/// than either alone. It is kept in storage
/// ([`identifier_limits`]), so it holds across gateways and restarts; the
/// per-address and per-device limits were taken when the request arrived.
pub(crate) async fn issue_code(
    shared: &Shared,
    digest: &rossby_keyspace::LookupDigest,
) -> Result<IssuedCode, Failure> {
    let now = now_ms();
    let rate = shared.settings.rate_limits.registrations_per_identifier;
    let rate = identifier_limits::CodeRate {
        per_ms: rate.per_second / 1000.0,
        burst: rate.burst,
    };
    let store = &shared.store;
    let wait = transact!(store, |txn| identifier_limits::take_code(
        txn,
        &digest.digest,
        rate,
        now
    )
    .await)?;
    if let Some(wait_ms) = wait {
        return Err(Failure::rate_limited(
            crate::ratelimit::Limited {
                retry_after: Duration::from_millis(wait_ms),
            },
            "too many verification codes for this identifier",
        ));
    }
    let ttl_ms = u64::try_from(shared.settings.code_ttl.as_millis()).unwrap_or(u64::MAX);
    let code = codes::generate();
    Ok(IssuedCode {
        code_mac: codes::code_mac(shared.auth.secrets().current(), &digest.digest, &code).to_vec(),
        code,
        expires_at_ms: now.saturating_add(ttl_ms),
        now_ms: now,
    })
}

/// The window in which wrong codes per identifier are counted.
pub(crate) const WRONG_CODE_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// How long the deployment-wide code budgets count.
const CODE_BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// Spends one code from the source address's budget (in this gateway's
/// memory) and from the deployment's budgets in storage: every code, and the
/// phone number's prefix (its first five digits, against SMS pumping into one
/// range). A refusal names the budget, is counted in
/// `rossby_verification_codes_refused_total{budget}`, and spends nothing else.
pub(crate) async fn spend_code_budgets(
    shared: &Shared,
    id: &Identifier,
    address: std::net::IpAddr,
) -> Result<(), Failure> {
    let refused = |budget: &str, retry_after: Duration, message: &str| {
        shared.metrics.verification_code_refused(budget);
        Failure::rate_limited(crate::ratelimit::Limited { retry_after }, message)
    };
    if let Err(limited) = shared.limits.code_from(address) {
        return Err(refused(
            "address",
            limited.retry_after,
            "too many verification codes requested from this address",
        ));
    }
    let settings = &shared.settings;
    let mut budgets = vec![code_budgets::Budget {
        scope: "all".into(),
        limit: settings.codes_per_hour,
    }];
    if let Identifier::Phone(number) = id {
        budgets.push(code_budgets::Budget {
            scope: format!("prefix:{}", number.chars().take(6).collect::<String>()),
            limit: settings.codes_per_prefix_per_hour,
        });
    }
    let now = now_ms();
    let window_ms = u64::try_from(CODE_BUDGET_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let store = &shared.store;
    let exhausted = transact!(store, |txn| code_budgets::spend(
        txn, &budgets, now, window_ms
    )
    .await)?;
    match exhausted {
        None => Ok(()),
        Some(i) => {
            let retry_after = Duration::from_millis(window_ms - now % window_ms.max(1));
            let (budget, message) = if i == 0 {
                (
                    "global",
                    "the deployment sent its hourly budget of verification codes",
                )
            } else {
                (
                    "prefix",
                    "too many verification codes for numbers of this range",
                )
            };
            Err(refused(budget, retry_after, message))
        }
    }
}

/// Sends an issued code to the identifier through the verifier.
pub(crate) async fn deliver_code(
    shared: &Shared,
    identifier: rossby_keyspace::Identifier,
    issued: IssuedCode,
) -> Result<(), Failure> {
    let message = CodeMessage {
        identifier,
        code: issued.code,
        expires_at_ms: issued.expires_at_ms,
    };
    if let Err(err) = shared.verifier.send(&message).await {
        tracing::warn!(error = %err, "verification code not delivered");
        return Err(Failure::unavailable(
            "the verification code could not be sent; try again later",
        ));
    }
    shared.metrics.verification_codes_sent_total.inc();
    Ok(())
}

/// What a presented code is worth against a pending record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeCheck {
    /// The record expired (or there is none): start again.
    Expired,
    /// Too many wrong codes were tried: start again.
    Exhausted,
    /// Wrong: count it ([`after_wrong_code`]).
    Wrong,
    /// Right.
    Valid,
}

/// What a pending record (a registration or an identifier addition) keeps about
/// its code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingCode<'a> {
    /// The keyed hash of the code.
    pub(crate) code_mac: &'a [u8],
    /// When the code stops being accepted.
    pub(crate) expires_at_ms: u64,
    /// Wrong codes tried so far.
    pub(crate) attempts: u32,
}

/// Checks `presented` against a pending record's code hash, expiry and wrong
/// attempts, in that order. Expired and exhausted records must be deleted by the
/// caller; a wrong code must be counted in storage (a write, so concurrent
/// guesses conflict).
pub(crate) fn check_code(
    shared: &Shared,
    digest: &rossby_keyspace::LookupDigest,
    presented: &str,
    pending: PendingCode<'_>,
    now: u64,
) -> CodeCheck {
    if pending.expires_at_ms <= now {
        CodeCheck::Expired
    } else if pending.attempts >= shared.settings.code_max_attempts {
        CodeCheck::Exhausted
    } else if codes::matches_any(
        shared.auth.secrets(),
        &digest.digest,
        presented,
        pending.code_mac,
    ) {
        CodeCheck::Valid
    } else {
        CodeCheck::Wrong
    }
}

/// What a wrong code counted as the `attempts`-th leaves: [`CodeCheck::Wrong`],
/// or [`CodeCheck::Exhausted`] when the record must now be deleted.
pub(crate) fn after_wrong_code(shared: &Shared, attempts: u32) -> CodeCheck {
    if attempts >= shared.settings.code_max_attempts {
        CodeCheck::Exhausted
    } else {
        CodeCheck::Wrong
    }
}

/// Counts a wrong code against its identifier's daily budget too (shared by
/// registrations and additions) and says what it leaves: the pending code's
/// `attempts` so far, or the identifier's budget, may be spent.
pub(crate) async fn wrong_code_check(
    shared: &Shared,
    txn: &mut rossby_storage::tables::Tx<'_>,
    digest: &[u8; 32],
    attempts: u32,
    now: u64,
) -> rossby_storage::Result<CodeCheck> {
    let wrong =
        identifier_limits::record_wrong_code(txn, digest, now, WRONG_CODE_WINDOW_MS).await?;
    Ok(
        if wrong >= shared.settings.wrong_codes_per_identifier_per_day {
            CodeCheck::Exhausted
        } else {
            after_wrong_code(shared, attempts)
        },
    )
}

/// The answer to a code that was not accepted; `start` says what to do to get
/// a new code.
pub(crate) fn code_failure(check: CodeCheck, start: &str) -> Failure {
    match check {
        CodeCheck::Expired => Failure::new(
            Status::CodeExpired,
            format!("nothing is pending for this identifier, or its code expired: {start}"),
        ),
        CodeCheck::Exhausted => Failure::new(
            Status::CodeAttemptsExhausted,
            format!("too many wrong codes: {start} to get a new code"),
        ),
        CodeCheck::Wrong => Failure::new(Status::InvalidCode, "the verification code is wrong"),
        // Not a failure; answered as one only if a caller gets this wrong.
        CodeCheck::Valid => Failure::internal(),
    }
}

/// Register: starts a registration and sends a code.
pub(crate) async fn register(
    shared: &Shared,
    origin: &super::Origin<'_>,
    body: &[u8],
) -> Result<pb::RegisterResponse, Failure> {
    let req: pb::RegisterRequest = decode(body, "RegisterRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let device_id = parse_device_id(&req.device_id)?;
    let bundle = check_bundle(req.keys.as_ref())?;
    check_label(&req.device_label)?;
    // Stored resolved, so the pending record names the region whose
    // maintenance deletes it once its code expired.
    let region = super::routing::region_for_new_box(&shared.settings, req.region)?;
    let store = &shared.store;
    let digest = store.hasher.current(&id);
    // A bound identifier is answered like an unbound one (a code is sent, to
    // its owner): whether an identifier is registered is learned only by whoever
    // holds its code, at Authorize.
    spend_code_budgets(shared, &id, origin.remote.ip()).await?;
    let issued = issue_code(shared, &digest).await?;
    let now = issued.now_ms;
    let record = PendingRegistration {
        code_mac: issued.code_mac.clone(),
        expires_at_ms: issued.expires_at_ms,
        attempts: 0,
        device_id: device_id.as_bytes().to_vec(),
        key_bundle: bundle.encode_to_vec(),
        label: req.device_label.clone(),
        recover: req.recover,
        region: u32::from(region.0),
        created_at_ms: now,
    };
    transact!(store, |txn| registrations::store_pending(
        txn, &digest, device_id, &record
    )
    .await)?;
    let expires_at_ms = issued.expires_at_ms;
    deliver_code(shared, id, issued).await?;
    Ok(pb::RegisterResponse {
        code_expires_at_ms: expires_at_ms,
    })
}

/// What the Authorize transaction decided.
enum Outcome {
    /// The code was not accepted (expired or nothing pending for this device,
    /// exhausted, or wrong and counted).
    Refused(CodeCheck),
    /// The identifier was bound by someone else since the code was sent.
    AlreadyRegistered,
    /// A recovery of an account whose registration lock was not (or no longer)
    /// satisfied by a checked PIN.
    Locked,
    /// The device is authorized.
    Done {
        box_id: BoxId,
        version: u64,
        /// The device's credential key version.
        key_version: u32,
        bundle: pb::KeyBundle,
        recovered: bool,
        purge_left: bool,
    },
}

/// Authorize: checks the code and completes the registration.
pub(crate) async fn authorize(
    shared: &Shared,
    body: &[u8],
) -> Result<pb::AuthorizeResponse, Failure> {
    let req: pb::AuthorizeRequest = decode(body, "AuthorizeRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let device_id = parse_device_id(&req.device_id)?;
    let store = &shared.store;
    let limits = &store.limits;
    let digest = store.hasher.current(&id);
    let home = shared.settings.region;
    let now = now_ms();
    let unlocked = registration_lock_check(shared, &id, &digest, device_id, &req, now).await?;
    let max_wrong = shared.settings.wrong_codes_per_identifier_per_day;
    let outcome = transact!(store, |txn| async {
        let Some(pending) = registrations::pending(txn, &digest, device_id).await? else {
            return Ok(Outcome::Refused(CodeCheck::Expired));
        };
        if pending.device_id != device_id.as_bytes() {
            return Ok(Outcome::Refused(CodeCheck::Expired));
        }
        // Wrong codes of every registration of the identifier count together.
        let wrong =
            identifier_limits::wrong_codes(txn, &digest.digest, now, WRONG_CODE_WINDOW_MS).await?;
        if wrong >= max_wrong {
            registrations::remove_pending(txn, &digest, device_id).await?;
            return Ok(Outcome::Refused(CodeCheck::Exhausted));
        }
        let stored = PendingCode {
            code_mac: &pending.code_mac,
            expires_at_ms: pending.expires_at_ms,
            attempts: pending.attempts,
        };
        match check_code(shared, &digest, &req.code, stored, now) {
            CodeCheck::Valid => {}
            CodeCheck::Wrong => {
                let attempts = registrations::record_wrong_attempt(txn, &digest, device_id).await?;
                let check = wrong_code_check(shared, txn, &digest.digest, attempts, now).await?;
                if check == CodeCheck::Exhausted {
                    registrations::remove_pending(txn, &digest, device_id).await?;
                }
                return Ok(Outcome::Refused(check));
            }
            check => {
                registrations::remove_pending(txn, &digest, device_id).await?;
                return Ok(Outcome::Refused(check));
            }
        }
        let bundle = pb::KeyBundle::decode(pending.key_bundle.as_slice()).map_err(|e| {
            rossby_storage::Error::Corrupt {
                what: "pending registration",
                detail: e.to_string(),
            }
        })?;
        let device = device_record(&bundle, &pending.label);
        registrations::remove_pending(txn, &digest, device_id).await?;
        match lookup::resolve(txn, &store.hasher, &id, now).await? {
            Some(box_id) if pending.recover => {
                let satisfied = match &unlocked {
                    Unlock::Checked(hash) => registration_lock::accept(txn, box_id, hash).await?,
                    Unlock::NoLock => {
                        // Set meanwhile: its PIN was not checked.
                        registration_lock::peek(txn, box_id, now).await?
                            == registration_lock::Gate::Unlocked
                    }
                };
                if !satisfied {
                    return Ok(Outcome::Locked);
                }
                let (version, complete) =
                    lifecycle::recover_account(txn, limits, box_id, device_id, &device, now)
                        .await?;
                Ok(Outcome::Done {
                    box_id,
                    version,
                    key_version: key_version_of(txn, box_id, device_id).await?,
                    bundle,
                    recovered: true,
                    purge_left: !complete,
                })
            }
            Some(_) => Ok(Outcome::AlreadyRegistered),
            None => {
                let region = match pending.region {
                    0 => home,
                    r => RegionId(u16::try_from(r).unwrap_or(home.0)),
                };
                let box_id = BoxId::new(region);
                let version = lifecycle::create_account(
                    txn,
                    limits,
                    &store.hasher,
                    &id,
                    box_id,
                    device_id,
                    &device,
                    now,
                )
                .await?;
                Ok(Outcome::Done {
                    box_id,
                    version,
                    key_version: key_version_of(txn, box_id, device_id).await?,
                    bundle,
                    recovered: false,
                    purge_left: false,
                })
            }
        }
    }
    .await);
    if let Err(err) = &outcome
        && is_undetermined(err)
    {
        // A recovery may have replaced the box's devices; which box is unknown.
        shared.auth.devices().revoke_all();
    }
    match outcome? {
        Outcome::Refused(check) => Err(code_failure(check, "register again")),
        Outcome::Locked => Err(Failure::new(
            Status::RegistrationLocked,
            "the account's registration lock changed while recovering: authorize again with its PIN",
        )),
        Outcome::AlreadyRegistered => Err(Failure::new(
            Status::AlreadyRegistered,
            "this identifier is registered: link this device from one of the account's devices, or register again with recovery",
        )),
        Outcome::Done {
            box_id,
            version,
            key_version,
            bundle,
            recovered,
            purge_left,
        } => {
            if recovered {
                // The replaced devices' credentials and subscriptions end now.
                shared.auth.devices().revoke_box(box_id);
                shared.presence.remove_box(box_id);
                tracing::info!("account recovered; previous devices replaced");
            }
            if purge_left {
                purge_dropped_queue(shared, box_id).await;
            }
            let sealed = sealed_credentials(shared, &bundle, box_id, device_id, key_version)?;
            Ok(pb::AuthorizeResponse {
                box_id: box_id.as_bytes().to_vec(),
                sealed_credentials: sealed,
                device_list_version: version,
            })
        }
    }
}

/// What the registration-lock check let an Authorize go on with.
enum Unlock {
    /// No lock was found (or this is no recovery of a bound identifier): the
    /// Authorize transaction makes sure none was set meanwhile.
    NoLock,
    /// The PIN matched this stored hash: the Authorize transaction makes sure
    /// it is still the lock, and forgives the attempt.
    Checked(String),
}

/// The registration lock of a recovery (docs/security.md §11): once the code
/// is right, an account with a lock needs its PIN. Every PIN checked is
/// counted in storage before it is checked, so concurrent guesses on any
/// number of gateways stay within the limit; the last wrong one starts a
/// lockout in which no PIN is checked. Nothing is counted before the code is
/// known to be right, so only the holder of the code can spend the attempts.
async fn registration_lock_check(
    shared: &Shared,
    id: &Identifier,
    digest: &rossby_keyspace::LookupDigest,
    device_id: DeviceId,
    req: &pb::AuthorizeRequest,
    now: u64,
) -> Result<Unlock, Failure> {
    let store = &shared.store;
    let target = transact!(store, |txn| async {
        let Some(pending) = registrations::pending(txn, digest, device_id).await? else {
            return Ok(None);
        };
        if !pending.recover || pending.device_id != device_id.as_bytes() {
            return Ok(None);
        }
        let stored = PendingCode {
            code_mac: &pending.code_mac,
            expires_at_ms: pending.expires_at_ms,
            attempts: pending.attempts,
        };
        // A code that is not right is refused and counted by the Authorize
        // transaction itself.
        if check_code(shared, digest, &req.code, stored, now) != CodeCheck::Valid {
            return Ok(None);
        }
        let Some(box_id) = lookup::resolve(txn, &store.hasher, id, now).await? else {
            return Ok(None);
        };
        Ok(Some((
            box_id,
            registration_lock::peek(txn, box_id, now).await?,
        )))
    }
    .await)?;
    let Some((box_id, gate)) = target else {
        return Ok(Unlock::NoLock);
    };
    let locked_out = |retry_after_ms: u64| {
        Failure::rate_limited(
            crate::ratelimit::Limited {
                retry_after: Duration::from_millis(retry_after_ms),
            },
            "too many wrong registration-lock PINs: try again later",
        )
    };
    match gate {
        registration_lock::Gate::Unlocked => return Ok(Unlock::NoLock),
        registration_lock::Gate::LockedOut { retry_after_ms } => {
            return Err(locked_out(retry_after_ms));
        }
        registration_lock::Gate::Check { .. } => {}
    }
    if req.registration_lock_pin.is_empty() {
        return Err(Failure::new(
            Status::RegistrationLocked,
            "this account has a registration lock: authorize again with its PIN",
        ));
    }
    let settings = &shared.settings;
    let max = settings.registration_lock_max_attempts;
    let lockout = u64::try_from(settings.registration_lock_lockout.as_millis()).unwrap_or(u64::MAX);
    let gate = transact!(store, |txn| registration_lock::begin_attempt(
        txn, box_id, max, lockout, now
    )
    .await)?;
    let hash = match gate {
        registration_lock::Gate::Check { hash } => hash,
        registration_lock::Gate::Unlocked => return Ok(Unlock::NoLock),
        registration_lock::Gate::LockedOut { retry_after_ms } => {
            return Err(locked_out(retry_after_ms));
        }
    };
    if pin::verify(&req.registration_lock_pin, &hash).await? {
        return Ok(Unlock::Checked(hash));
    }
    let now_locked = transact!(store, |txn| registration_lock::refuse(
        txn, box_id, max, lockout, now
    )
    .await)?;
    shared.metrics.registration_lock_refused_total.inc();
    Err(if now_locked {
        locked_out(lockout)
    } else {
        Failure::new(Status::RegistrationLocked, "wrong registration-lock PIN")
    })
}

/// Whether a commit may or may not have happened.
fn is_undetermined(err: &rossby_storage::Error) -> bool {
    matches!(
        err,
        rossby_storage::Error::Kv(rossby_storage::kv::Error::Undetermined(_))
    )
}

/// Deletes envelopes left below the low-water mark by a recovery, in bounded
/// transactions. Best effort: they are never served, and a failure only leaves
/// garbage behind (logged).
async fn purge_dropped_queue(shared: &Shared, box_id: BoxId) {
    let store = &shared.store;
    let step = store.limits.max_deletes_per_txn;
    loop {
        match transact!(store, |txn| lifecycle::purge_dropped(txn, box_id, step)
            .await)
        {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "could not delete a recovered box's dropped envelopes");
                return;
            }
        }
    }
}

/// The credential key version of a device just added (a device id used before
/// in the box continues above its old version).
async fn key_version_of(
    txn: &mut rossby_storage::tables::Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
) -> rossby_storage::Result<u32> {
    Ok(devices::get_device(txn, box_id, device_id)
        .await?
        .map_or(FIRST_KEY_VERSION, |d| d.credential_version))
}

/// LinkDevice: an authorized device adds and authorizes a new device of its box.
/// Repeating the request for a device that already exists with the same keys
/// answers its credentials again (a retry after a lost reply).
pub(crate) async fn link_device(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::LinkDeviceResponse, Failure> {
    let req: pb::LinkDeviceRequest = decode(body, "LinkDeviceRequest")?;
    let device_id = parse_device_id(&req.device_id)?;
    let bundle = check_bundle(req.keys.as_ref())?;
    check_label(&req.label)?;
    let record = device_record(&bundle, &req.label);
    let store = &shared.store;
    let limits = &store.limits;
    let box_id = caller.box_id;
    let now = now_ms();
    let (version, key_version) = transact!(store, |txn| async {
        match devices::get_device(txn, box_id, device_id).await? {
            Some(existing)
                if existing.authorized && existing.encryption_key == record.encryption_key =>
            {
                let (version, _) = devices::recipients(txn, box_id).await?;
                Ok((version, existing.credential_version))
            }
            Some(_) => Err(rossby_storage::Error::DeviceExists(device_id)),
            None => {
                devices::add(txn, limits, box_id, device_id, &record, now).await?;
                let version = devices::authorize(txn, box_id, device_id, now).await?;
                Ok((version, key_version_of(txn, box_id, device_id).await?))
            }
        }
    }
    .await)?;
    let sealed = sealed_credentials(shared, &bundle, box_id, device_id, key_version)?;
    Ok(pb::LinkDeviceResponse {
        sealed_credentials: sealed,
        device_list_version: version,
    })
}

/// RefreshCredentials: the caller's credentials under the current server secret
/// version, with its key version, sealed to its stored key bundle.
pub(crate) async fn refresh_credentials(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RefreshCredentialsResponse, Failure> {
    let _: pb::RefreshCredentialsRequest = decode(body, "RefreshCredentialsRequest")?;
    let store = &shared.store;
    let (box_id, device_id) = (caller.box_id, caller.device_id);
    let device = transact!(store, |txn| devices::get_device(txn, box_id, device_id)
        .await)?
    .filter(|d| d.authorized && d.credential_version == caller.key_version)
    .ok_or_else(|| Failure::new(Status::Unauthenticated, "unknown or revoked credentials"))?;
    let bundle = pb::KeyBundle::decode(device.encryption_key.as_slice()).map_err(|e| {
        tracing::error!(error = %e, "a stored key bundle does not decode");
        Failure::internal()
    })?;
    let sealed = sealed_credentials(
        shared,
        &bundle,
        caller.box_id,
        caller.device_id,
        caller.key_version,
    )?;
    Ok(pb::RefreshCredentialsResponse {
        sealed_credentials: sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{SECRET, TestDevice, TestEnv, TestSettings};
    use crate::auth::keys::{self, CredentialId};
    use crate::auth::secrets::ServerSecrets;
    use prost::Message;
    use rossby_protocol::crypto::{CONTEXT_CREDENTIALS, open};
    use rossby_protocol::hawk::DeviceCredentials;
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;
    use std::time::Duration;

    #[tokio::test]
    async fn register_authorize_and_use_the_credentials() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        assert_eq!(alice.box_id.home_region(), env.region());
        // The credentials work: an authenticated request succeeds.
        let resp = env
            .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let list: pb::ListDevicesResponse = TestEnv::body(&resp);
        let devices = list.devices.unwrap();
        assert_eq!(devices.devices.len(), 1);
        assert_eq!(devices.devices[0].device_id, alice.device_id.as_bytes());
        assert_eq!(devices.devices[0].keys.as_ref(), Some(&alice.keys.bundle()));
        // The code was delivered as one line and never stored in clear.
        let codes = env.code_lines();
        assert_eq!(codes.len(), 1);
        assert!(codes[0].starts_with("alice@example.com "));
    }

    #[tokio::test]
    async fn an_identifier_registers_once_unless_recovering() {
        let env = TestEnv::new();
        let _alice = env.register("+14155550123").await;
        let other = TestEnv::new_device();
        // Answered as a free identifier would be; the code goes to the owner.
        let resp = env.register_request("+1 415 555 0123", &other, false).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        assert_eq!(env.code_lines().len(), 2);
        let code = env.last_code("+14155550123");
        let resp = env.authorize_request("+14155550123", &other, &code).await;
        assert_eq!(status_of(&resp), Status::AlreadyRegistered);
        assert!(resp.message.contains("recovery"), "{}", resp.message);
    }

    #[tokio::test]
    async fn recovery_replaces_devices_and_contacts_see_new_keys() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        // Bob sends Alice a message she never fetches.
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let sent = env.send(&bob, alice.box_id, version, b"hello").await;
        assert_eq!(sent.status, Status::Ok as i32);

        // Alice loses her phone and recovers on a new device.
        let recovered = env.recover("alice@example.com").await;
        assert_eq!(recovered.box_id, alice.box_id);
        // The old device's credentials are dead.
        let resp = env
            .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        // The queue was dropped: the new device fetches nothing.
        let fetched = env.fetch(&recovered, 0).await;
        assert!(fetched.envelopes.is_empty());
        // Bob's next send with the old device list is stale and carries the new keys.
        let stale = env.send(&bob, alice.box_id, version, b"again").await;
        assert_eq!(stale.status, Status::StaleDevices as i32);
        let current = stale.current.unwrap();
        assert_eq!(current.devices.len(), 1);
        assert_eq!(
            current.devices[0].keys.as_ref(),
            Some(&recovered.keys.bundle())
        );
        // And a lookup shows the new keys.
        let new_version = env.device_list_version(&bob, "alice@example.com").await;
        assert_eq!(new_version, current.version);
        let sent = env.send(&bob, alice.box_id, new_version, b"again").await;
        assert_eq!(sent.status, Status::Ok as i32);
        assert_eq!(env.fetch(&recovered, 0).await.envelopes.len(), 1);
    }

    #[tokio::test]
    async fn wrong_codes_are_counted_and_exhaust_the_registration() {
        let env = TestEnv::with(TestSettings {
            code_max_attempts: 3,
            ..TestSettings::default()
        });
        let device = TestEnv::new_device();
        let resp = env
            .register_request("carol@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let code = env.last_code("carol@example.com");
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for _ in 0..2 {
            let resp = env
                .authorize_request("carol@example.com", &device, wrong)
                .await;
            assert_eq!(status_of(&resp), Status::InvalidCode);
        }
        // A malformed code counts too; the third wrong one ends the registration.
        let resp = env
            .authorize_request("carol@example.com", &device, "abc")
            .await;
        assert_eq!(status_of(&resp), Status::CodeAttemptsExhausted);
        // Even the right code is refused now.
        let resp = env
            .authorize_request("carol@example.com", &device, &code)
            .await;
        assert_eq!(status_of(&resp), Status::CodeExpired);
    }

    #[tokio::test]
    async fn the_code_belongs_to_the_device_that_asked_and_expires() {
        let env = TestEnv::with(TestSettings {
            code_ttl: Duration::from_millis(300),
            ..TestSettings::default()
        });
        let device = TestEnv::new_device();
        let resp = env
            .register_request("dave@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let code = env.last_code("dave@example.com");
        let intruder = TestEnv::new_device();
        let resp = env
            .authorize_request("dave@example.com", &intruder, &code)
            .await;
        assert_eq!(status_of(&resp), Status::CodeExpired);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let resp = env
            .authorize_request("dave@example.com", &device, &code)
            .await;
        assert_eq!(status_of(&resp), Status::CodeExpired);
        // Nothing pending for an unknown identifier either.
        let resp = env
            .authorize_request("nobody@example.com", &device, &code)
            .await;
        assert_eq!(status_of(&resp), Status::CodeExpired);
    }

    #[tokio::test]
    async fn bad_registrations_are_rejected() {
        let env = TestEnv::new();
        let device = TestEnv::new_device();
        let resp = env
            .register_request("not an identifier", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        // A bundle whose signature does not verify.
        let mut bundle = device.keys.bundle();
        bundle.x25519_key[0] ^= 1;
        let req = pb::RegisterRequest {
            identifier: "erin@example.com".into(),
            device_id: device.device_id.as_bytes().to_vec(),
            keys: Some(bundle),
            ..pb::RegisterRequest::default()
        };
        let resp = env.call(1, Method::Register, &req).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        assert!(!resp.message.contains("erin"));
        // A short device id and a missing bundle.
        let req = pb::RegisterRequest {
            identifier: "erin@example.com".into(),
            device_id: vec![1, 2, 3],
            ..pb::RegisterRequest::default()
        };
        assert_eq!(
            status_of(&env.call(1, Method::Register, &req).await),
            Status::BadRequest
        );
        // Undecodable body.
        let resp = env.call_raw(1, Method::Register, vec![0xff, 0xff]).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        assert!(env.code_lines().is_empty());
    }

    #[tokio::test]
    async fn registrations_per_identifier_are_rate_limited() {
        let env = TestEnv::with(TestSettings {
            registrations: Some((0.0, 2.0)),
            ..TestSettings::default()
        });
        let device = TestEnv::new_device();
        for _ in 0..2 {
            let resp = env
                .register_request("frank@example.com", &device, false)
                .await;
            assert_eq!(status_of(&resp), Status::Ok);
        }
        let resp = env
            .register_request("Frank@Example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.retry_after_ms > 0);
        // Another identifier is not affected.
        let resp = env
            .register_request("grace@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
    }

    #[tokio::test]
    async fn linked_devices_get_their_own_credentials() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let laptop = env.link(&alice, "laptop").await;
        assert_eq!(laptop.box_id, alice.box_id);
        let resp = env
            .call_as(&laptop, 2, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let list: pb::ListDevicesResponse = TestEnv::body(&resp);
        assert_eq!(list.devices.unwrap().devices.len(), 2);
        // Linking the same device again with the same keys answers again;
        // with other keys it is refused.
        let again = env
            .link_request(&alice, &laptop.as_new_device(), "laptop")
            .await;
        assert_eq!(status_of(&again), Status::Ok);
        let mut impostor = TestEnv::new_device();
        impostor.device_id = laptop.device_id;
        let resp = env.link_request(&alice, &impostor, "x").await;
        assert_eq!(status_of(&resp), Status::BadRequest);
    }

    const NEW_SECRET: [u8; 32] = [8; 32];

    fn secrets(current: u32) -> ServerSecrets {
        ServerSecrets::new(
            vec![(1, SECRET.to_vec()), (2, NEW_SECRET.to_vec())],
            current,
        )
        .unwrap()
    }

    async fn list_devices(env: &TestEnv, device: &TestDevice) -> pb::Response {
        env.call_as(device, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await
    }

    async fn refreshed(env: &TestEnv, device: &TestDevice) -> TestDevice {
        let resp = env
            .call_as(
                device,
                1,
                Method::RefreshCredentials,
                &pb::RefreshCredentialsRequest {},
            )
            .await;
        let reply: pb::RefreshCredentialsResponse = TestEnv::body(&resp);
        let sealed = pb::Sealed::decode(reply.sealed_credentials.as_slice()).unwrap();
        let plain = open(&device.keys, CONTEXT_CREDENTIALS, &sealed).unwrap();
        let creds = pb::Credentials::decode(plain.as_slice()).unwrap();
        TestDevice {
            creds: DeviceCredentials {
                id: creds.id,
                key: creds.key.try_into().unwrap(),
            },
            ..device.clone()
        }
    }

    #[tokio::test]
    async fn a_rotated_secret_keeps_old_credentials_and_refreshes_them() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let resp = list_devices(&env, &alice).await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert!(!resp.credentials_outdated);

        // Versions 1 and 2, 2 current: version 1 credentials work and are outdated.
        let rotated = env.with_server_secrets(secrets(2));
        let resp = list_devices(&rotated, &alice).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        assert!(resp.credentials_outdated);
        let fresh = refreshed(&rotated, &alice).await;
        let expected = CredentialId {
            box_id: alice.box_id,
            device: alice.device_id,
            key_version: 1,
            secret_version: 2,
        };
        assert_eq!(
            fresh.creds.id,
            format!("{}.{}.1.2", alice.box_id, alice.device_id)
        );
        assert_eq!(fresh.creds.key, keys::device_key(&NEW_SECRET, &expected));
        let resp = list_devices(&rotated, &fresh).await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert!(!resp.credentials_outdated);
        // Both work side by side while version 1 is configured.
        assert_eq!(status_of(&list_devices(&rotated, &alice).await), Status::Ok);

        // Version 1 pinned as current: version 2 credentials work and are outdated;
        // a refresh gives the three-part id back.
        let pinned = env.with_server_secrets(secrets(1));
        let resp = list_devices(&pinned, &fresh).await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert!(resp.credentials_outdated);
        assert_eq!(refreshed(&pinned, &fresh).await.creds, alice.creds);

        // Only version 1 configured: version 2 credentials are unknown.
        let resp = list_devices(&env, &fresh).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.auth_failures("unknown_secret_version"), 1);
        // Only version 2: version 1 credentials are unknown.
        let only_new =
            env.with_server_secrets(ServerSecrets::new(vec![(2, NEW_SECRET.to_vec())], 2).unwrap());
        let resp = list_devices(&only_new, &alice).await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(only_new.auth_failures("unknown_secret_version"), 1);
        assert_eq!(
            status_of(&list_devices(&only_new, &fresh).await),
            Status::Ok
        );
        // A refresh needs valid credentials like any authenticated RPC.
        let resp = only_new
            .call(
                1,
                Method::RefreshCredentials,
                &pb::RefreshCredentialsRequest {},
            )
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
    }

    #[tokio::test]
    async fn codes_sent_before_a_rotation_still_verify() {
        let env = TestEnv::new();
        let device = TestEnv::new_device();
        let resp = env
            .register_request("bob@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let code = env.last_code("bob@example.com");
        // The deployment now runs with version 2 current.
        let rotated = env.with_server_secrets(secrets(2));
        let resp = rotated
            .authorize_request("bob@example.com", &device, &code)
            .await;
        let reply: pb::AuthorizeResponse = TestEnv::body(&resp);
        let sealed = pb::Sealed::decode(reply.sealed_credentials.as_slice()).unwrap();
        let plain = open(&device.keys, CONTEXT_CREDENTIALS, &sealed).unwrap();
        let creds = pb::Credentials::decode(plain.as_slice()).unwrap();
        assert!(creds.id.ends_with(".1.2"), "{}", creds.id);
        // A code hashed under version 2 fails once version 2 is removed.
        let carol = TestEnv::new_device();
        let resp = rotated
            .register_request("carol@example.com", &carol, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let code = rotated.last_code("carol@example.com");
        let resp = env
            .authorize_request("carol@example.com", &carol, &code)
            .await;
        assert_eq!(status_of(&resp), Status::InvalidCode);
    }

    #[tokio::test]
    async fn a_device_linked_again_never_gets_its_old_credentials_back() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let phone = TestEnv::new_device();
        let link =
            |resp: &pb::Response| TestEnv::body::<pb::LinkDeviceResponse>(resp).sealed_credentials;
        let resp = env.link_request(&alice, &phone, "phone").await;
        let first = TestEnv::open_credentials(&phone, alice.box_id, &link(&resp));
        let list = pb::ListDevicesRequest {};
        let works = |resp: pb::Response| status_of(&resp) == Status::Ok;
        assert!(works(
            env.call_as(&first, 1, Method::ListDevices, &list).await
        ));
        let remove = pb::RemoveDeviceRequest {
            device_id: phone.device_id.as_bytes().to_vec(),
        };
        assert!(works(
            env.call_as(&alice, 1, Method::RemoveDevice, &remove).await
        ));
        // Linked again under the same id and keys: a new key version, so the
        // credentials from before the removal stay refused.
        let resp = env.link_request(&alice, &phone, "phone").await;
        let second = TestEnv::open_credentials_of_version(&phone, alice.box_id, &link(&resp), 2);
        let old = env.call_as(&first, 1, Method::ListDevices, &list).await;
        assert_eq!(status_of(&old), Status::Unauthenticated);
        assert!(works(
            env.call_as(&second, 1, Method::ListDevices, &list).await
        ));
        // And once more: version 3.
        assert!(works(
            env.call_as(&alice, 1, Method::RemoveDevice, &remove).await
        ));
        let resp = env.link_request(&alice, &phone, "phone").await;
        TestEnv::open_credentials_of_version(&phone, alice.box_id, &link(&resp), 3);
    }

    #[tokio::test]
    async fn bound_and_free_identifiers_are_answered_alike() {
        let env = TestEnv::with(TestSettings {
            registrations: Some((0.0, 2.0)),
            ..TestSettings::default()
        });
        env.register("alice@example.com").await;
        let resp = env
            .register_request("nobody@example.com", &TestEnv::new_device(), false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        // Someone probing identifiers sees the same answers for a registered
        // one and a free one with the same history: a code sent, then the same
        // rate limit.
        for id in ["alice@example.com", "nobody@example.com"] {
            let resp = env
                .register_request(id, &TestEnv::new_device(), false)
                .await;
            assert_eq!(status_of(&resp), Status::Ok, "{id}: {}", resp.message);
            let expires = TestEnv::body::<pb::RegisterResponse>(&resp).code_expires_at_ms;
            assert!(expires > super::now_ms(), "{id}");
        }
        for id in ["alice@example.com", "nobody@example.com"] {
            let resp = env
                .register_request(id, &TestEnv::new_device(), false)
                .await;
            assert_eq!(status_of(&resp), Status::RateLimited, "{id}");
        }
        assert_eq!(
            env.code_lines().len(),
            4,
            "two registrations and two probes"
        );
    }

    #[tokio::test]
    async fn another_devices_register_does_not_replace_the_owners() {
        let env = TestEnv::new();
        let owner = TestEnv::new_device();
        let other = TestEnv::new_device();
        let resp = env.register_request("bob@example.com", &owner, false).await;
        assert_eq!(status_of(&resp), Status::Ok);
        let owners_code = env.last_code("bob@example.com");
        let resp = env.register_request("bob@example.com", &other, false).await;
        assert_eq!(status_of(&resp), Status::Ok);
        // The other device's code does not work for the owner's device, nor
        // the owner's for it, and the owner's registration is still there.
        let others_code = env.last_code("bob@example.com");
        assert_ne!(owners_code, others_code);
        let resp = env
            .authorize_request("bob@example.com", &owner, &owners_code)
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        // Bound now: the other registration cannot create a second account.
        let resp = env
            .authorize_request("bob@example.com", &other, &others_code)
            .await;
        assert_eq!(status_of(&resp), Status::AlreadyRegistered);
    }

    fn register(identifier: &str) -> pb::RegisterRequest {
        let device = TestEnv::new_device();
        pb::RegisterRequest {
            identifier: identifier.into(),
            device_id: device.device_id.as_bytes().to_vec(),
            keys: Some(device.keys.bundle()),
            ..pb::RegisterRequest::default()
        }
    }

    #[tokio::test]
    async fn codes_fit_the_deployments_budgets_in_storage() {
        // Three codes an hour in all, two per number range.
        let env = TestEnv::with(TestSettings {
            code_budgets: Some((3, 2)),
            ..TestSettings::default()
        });
        let refused = |budget: &str| {
            env.metrics
                .verification_codes_refused_total
                .with_label_values(&[budget])
                .get()
        };
        for (n, number) in ["+14155550101", "+14155550102"].iter().enumerate() {
            let resp = env
                .call(n as u64, Method::Register, &register(number))
                .await;
            assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        }
        // A third number of the +1 415 5 range: refused, whatever the address.
        let resp = env
            .call(7, Method::Register, &register("+14155550103"))
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.message.contains("range"), "{}", resp.message);
        assert!(resp.retry_after_ms > 0);
        assert_eq!(refused("prefix"), 1);
        // Another range still has room, until the global budget is spent.
        let resp = env
            .call(8, Method::Register, &register("+442071234567"))
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let resp = env
            .call(9, Method::Register, &register("dora@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert_eq!(refused("global"), 1);
        // Only the accepted ones sent a code.
        assert_eq!(env.code_lines().len(), 3);
        // A second gateway of the deployment sees the same budget.
        let other = env.with_server_secrets(
            crate::auth::secrets::ServerSecrets::single(SECRET.to_vec()).unwrap(),
        );
        let resp = other
            .call(10, Method::Register, &register("erin@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
    }

    #[tokio::test]
    async fn codes_are_limited_per_source_address() {
        let env = TestEnv::with(TestSettings {
            codes_per_address: Some((0.0, 2.0)),
            ..TestSettings::default()
        });
        for identifier in ["a@example.com", "b@example.com"] {
            let resp = env.call(1, Method::Register, &register(identifier)).await;
            assert_eq!(status_of(&resp), Status::Ok);
        }
        let resp = env
            .call(1, Method::Register, &register("c@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.message.contains("address"), "{}", resp.message);
        assert_eq!(
            env.metrics
                .verification_codes_refused_total
                .with_label_values(&["address"])
                .get(),
            1
        );
        // Another address is not limited by it.
        let resp = env
            .call(2, Method::Register, &register("c@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
    }

    #[tokio::test]
    async fn the_nil_device_id_is_refused() {
        let env = TestEnv::new();
        let mut req = register("nil@example.com");
        req.device_id = vec![0; 16];
        let resp = env.call(1, Method::Register, &req).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        assert!(resp.message.contains("nil"), "{}", resp.message);
        assert!(env.code_lines().is_empty());
    }
}
