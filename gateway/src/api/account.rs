//! Block, Unblock, UpdateSettings, RemoveDevice and DeleteAccount.
//!
//! Block by identifier finds only users the caller could discover (a hidden or
//! blocking user answers `NOT_FOUND`, as everywhere); block by box id works for
//! any live box (for example the sender of a received message). Unblock always
//! succeeds for a well-formed target and reveals nothing. RemoveDevice removes a
//! device of the caller's own box (the calling device included); a device id that
//! is not in the caller's box answers `NOT_FOUND`.

use super::{Failure, Shared, decode, now_ms, parse_box_id, parse_device_id, parse_identifier};
use crate::auth::Authenticated;
use rossby_keyspace::{BoxId, Identifier};
use rossby_protocol::pb;
use rossby_storage::tables::accounts::{self, SettingsUpdate};
use rossby_storage::tables::contacts::{self, Relationship};
use rossby_storage::tables::records::AcceptFrom;
use rossby_storage::tables::{lifecycle, lookup, registration_lock};
use rossby_storage::transact;

enum Target {
    Identifier(Identifier),
    Box(BoxId),
}

fn block_target(req: &pb::BlockRequest) -> Result<Target, Failure> {
    match (req.identifier.is_empty(), req.box_id.is_empty()) {
        (false, true) => Ok(Target::Identifier(parse_identifier(&req.identifier)?)),
        (true, false) => Ok(Target::Box(parse_box_id(&req.box_id)?)),
        _ => Err(Failure::bad_request(
            "set exactly one of identifier and box_id",
        )),
    }
}

/// Block: the target can no longer send to or find the caller.
pub(crate) async fn block(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::BlockResponse, Failure> {
    let req: pb::BlockRequest = decode(body, "BlockRequest")?;
    let target = block_target(&req)?;
    if matches!(target, Target::Identifier(_)) {
        super::discovery_limit(shared, caller)?;
    }
    let store = &shared.store;
    let owner = caller.box_id;
    let now = now_ms();
    let done = transact!(store, |txn| async {
        let other = match &target {
            Target::Identifier(id) => {
                match lookup::discover(txn, &store.hasher, id, owner, now).await? {
                    Some(other) => other,
                    None => return Ok(false),
                }
            }
            Target::Box(b) => {
                if accounts::profile(txn, *b).await?.is_none() {
                    return Ok(false);
                }
                *b
            }
        };
        if other == owner {
            return Err(rossby_storage::Error::Invalid(
                "you cannot block yourself".into(),
            ));
        }
        contacts::add(txn, &store.limits, Relationship::Block, owner, other, now).await?;
        Ok(true)
    }
    .await)?;
    if !done {
        return Err(Failure::not_found());
    }
    Ok(pb::BlockResponse {})
}

/// Unblock: removes a block; succeeds whether or not the target was blocked.
pub(crate) async fn unblock(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::BlockResponse, Failure> {
    let req: pb::BlockRequest = decode(body, "BlockRequest")?;
    let target = block_target(&req)?;
    if matches!(target, Target::Identifier(_)) {
        super::discovery_limit(shared, caller)?;
    }
    let store = &shared.store;
    let owner = caller.box_id;
    let now = now_ms();
    transact!(store, |txn| async {
        let other = match &target {
            Target::Identifier(id) => lookup::resolve(txn, &store.hasher, id, now).await?,
            Target::Box(b) => Some(*b),
        };
        if let Some(other) = other {
            contacts::remove(txn, Relationship::Block, owner, other).await?;
        }
        Ok(())
    }
    .await)?;
    Ok(pb::BlockResponse {})
}

/// RemoveContact: takes a box off the caller's contacts; succeeds whether or
/// not it was one.
pub(crate) async fn remove_contact(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RemoveContactResponse, Failure> {
    let req: pb::RemoveContactRequest = decode(body, "RemoveContactRequest")?;
    let other = super::parse_box_id(&req.box_id)?;
    let store = &shared.store;
    let owner = caller.box_id;
    transact!(store, |txn| async {
        contacts::remove(txn, Relationship::Contact, owner, other).await?;
        Ok(())
    }
    .await)?;
    Ok(pb::RemoveContactResponse {})
}

/// UpdateSettings: discoverability, who may send, sealed sender and the registration lock.
pub(crate) async fn update_settings(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::UpdateSettingsResponse, Failure> {
    let req: pb::UpdateSettingsRequest = decode(body, "UpdateSettingsRequest")?;
    // Hashed before the transaction: the hash is slow and must not be repeated
    // by a retry.
    let registration_lock = match req.registration_lock_pin.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(pin) => {
            super::pin::check_format(pin)?;
            let memory = shared.settings.registration_lock_memory_kib;
            Some(Some(super::pin::hash(pin, memory).await?))
        }
    };
    let update = SettingsUpdate {
        hidden: req.discoverable.map(|d| !d),
        accept_from: req.contacts_only.map(|c| {
            if c {
                AcceptFrom::Contacts
            } else {
                AcceptFrom::Anyone
            }
        }),
        sealed_sender_key: req.sealed_sender_key,
        sealed_sender_anyone: req.sealed_sender_anyone,
    };
    let store = &shared.store;
    let now = now_ms();
    let box_id = caller.box_id;
    let profile = transact!(store, |txn| async {
        if let Some(lock) = &registration_lock {
            registration_lock::set(txn, box_id, lock.as_deref(), now).await?;
        }
        accounts::update_settings(txn, box_id, &update, now).await
    }
    .await)?;
    Ok(pb::UpdateSettingsResponse {
        discoverable: !profile.hidden,
        contacts_only: profile.accept_from() == AcceptFrom::Contacts,
        sealed_sender: !profile.sealed_sender_key.is_empty(),
        sealed_sender_anyone: profile.sealed_sender_anyone,
        registration_lock: !profile.registration_lock.is_empty(),
    })
}

/// RemoveDevice: removes a device of the caller's box.
pub(crate) async fn remove_device(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RemoveDeviceResponse, Failure> {
    let req: pb::RemoveDeviceRequest = decode(body, "RemoveDeviceRequest")?;
    let device = parse_device_id(&req.device_id)?;
    let store = &shared.store;
    let limits = &store.limits;
    let box_id = caller.box_id;
    let removed = transact!(store, |txn| lifecycle::remove_device(
        txn, limits, box_id, device
    )
    .await);
    // Also when the outcome is unknown: the device may be gone.
    shared.auth.devices().revoke_box(box_id);
    let version = removed?;
    shared.presence.remove_device(box_id, device);
    Ok(pb::RemoveDeviceResponse {
        device_list_version: version,
    })
}

/// DeleteAccount: deletes the caller's box and everything in it. One transaction
/// makes the box invisible at once (profile tombstoned, identifiers unbound,
/// devices and credentials gone) and records its purge; the reply does not wait
/// for the rest, which the region's maintenance removes ([`crate::maintenance`]).
pub(crate) async fn delete_account(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::DeleteAccountResponse, Failure> {
    let _req: pb::DeleteAccountRequest = decode(body, "DeleteAccountRequest")?;
    let deleted = shared.store.delete_account(caller.box_id, now_ms()).await;
    shared.auth.devices().revoke_box(caller.box_id);
    deleted?;
    shared.presence.remove_box(caller.box_id);
    tracing::info!("account deleted");
    Ok(pb::DeleteAccountResponse {})
}

/// Whether `target` is visible to `requester` by box id (re-exported for tests).
#[cfg(test)]
pub(crate) async fn visible(shared: &Shared, target: BoxId, requester: BoxId) -> bool {
    let store = &shared.store;
    transact!(store, |txn| super::directory::visible_by_box(
        txn, target, requester
    )
    .await)
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::TestEnv;
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;

    #[tokio::test]
    async fn removing_devices() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let laptop = env.link(&alice, "laptop").await;
        let bob = env.register("bob@example.com").await;
        // Bob cannot name Alice's device: it is not in his box.
        let req = pb::RemoveDeviceRequest {
            device_id: laptop.device_id.as_bytes().to_vec(),
        };
        let resp = env.call_as(&bob, 1, Method::RemoveDevice, &req).await;
        assert_eq!(status_of(&resp), Status::NotFound);
        // Alice removes the laptop; its credentials die.
        let resp = env.call_as(&alice, 1, Method::RemoveDevice, &req).await;
        assert_eq!(status_of(&resp), Status::Ok);
        let resp = env
            .call_as(&laptop, 2, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        // A device may remove itself.
        let req = pb::RemoveDeviceRequest {
            device_id: alice.device_id.as_bytes().to_vec(),
        };
        assert_eq!(
            status_of(&env.call_as(&alice, 1, Method::RemoveDevice, &req).await),
            Status::Ok
        );
        let resp = env
            .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
    }

    #[tokio::test]
    async fn deleting_an_account_frees_the_identifier() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let resp = env
            .call_as(
                &alice,
                1,
                Method::DeleteAccount,
                &pb::DeleteAccountRequest {},
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert!(!super::visible(env.shared(), alice.box_id, bob.box_id).await);
        assert_eq!(
            status_of(&env.request_key(&bob, "alice@example.com").await),
            Status::NotFound
        );
        let resp = env
            .call_as(&alice, 1, Method::ListDevices, &pb::ListDevicesRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        // The identifier can be registered again, as a new box.
        let again = env.register("alice@example.com").await;
        assert_ne!(again.box_id, alice.box_id);
    }

    #[tokio::test]
    async fn blocking_needs_a_visible_target_and_not_oneself() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let block = |identifier: &str| pb::BlockRequest {
            identifier: identifier.into(),
            ..pb::BlockRequest::default()
        };
        let resp = env
            .call_as(&alice, 1, Method::Block, &block("nobody@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::NotFound);
        let resp = env
            .call_as(&alice, 1, Method::Block, &block("alice@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        let resp = env
            .call_as(&alice, 1, Method::Unblock, &block("nobody@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let resp = env
            .call_as(&alice, 1, Method::Block, &pb::BlockRequest::default())
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
    }
}
