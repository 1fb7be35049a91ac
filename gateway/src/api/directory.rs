//! RequestKey (contact discovery), PublishKeyPackages, ClaimKeyPackages and
//! ListDevices.
//!
//! A user who is hidden, who blocked the caller, or whose account is being deleted
//! answers exactly like an unknown one: `NOT_FOUND` with the same message. Looking
//! up by box id ignores `hidden` (hiding is about identifiers) but not blocks.
//! Lookups by identifier count against the caller's account's discovery rate limit
//! (shared with Block and Unblock by identifier, whichever device asks).

use super::{Failure, Shared, decode, device_info, now_ms, parse_box_id, parse_identifier};
use crate::auth::Authenticated;
use rossby_keyspace::{BoxId, Identifier};
use rossby_protocol::crypto::IdentityKey;
use rossby_protocol::mls::key_package;
use rossby_protocol::pb::{self, Status};

use rossby_storage::tables::contacts::{self, Relationship};
use rossby_storage::tables::records::Device;
use rossby_storage::tables::{Tx, accounts, devices, keypackages, lookup};
use rossby_storage::transact;

/// A device list as handed to clients.
pub(crate) fn build_device_list(
    box_id: BoxId,
    version: u64,
    devices: &[(rossby_keyspace::DeviceId, Device)],
) -> Result<pb::DeviceList, Failure> {
    Ok(pb::DeviceList {
        box_id: box_id.as_bytes().to_vec(),
        version,
        devices: devices
            .iter()
            .map(|(id, d)| device_info(*id, d))
            .collect::<Result<_, _>>()?,
    })
}

/// The current device list of a box (authorized devices and version).
pub(crate) async fn device_list(shared: &Shared, box_id: BoxId) -> Result<pb::DeviceList, Failure> {
    let store = &shared.store;
    let (version, devices) = transact!(store, |txn| devices::recipients(txn, box_id).await)?;
    build_device_list(box_id, version, &devices)
}

/// Whether `target` is a live box that has not blocked `requester`.
pub(crate) async fn visible_by_box(
    txn: &mut Tx<'_>,
    target: BoxId,
    requester: BoxId,
) -> rossby_storage::Result<bool> {
    if accounts::profile(txn, target).await?.is_none() {
        return Ok(false);
    }
    Ok(target == requester || !contacts::is_blocked(txn, target, requester).await?)
}

enum Target {
    Identifier(Identifier),
    Box(BoxId),
}

/// RequestKey: a user's box, device keys and encrypted profile.
pub(crate) async fn request_key(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RequestKeyResponse, Failure> {
    let req: pb::RequestKeyRequest = decode(body, "RequestKeyRequest")?;
    let target = match (req.identifier.is_empty(), req.box_id.is_empty()) {
        (false, true) => {
            let id = parse_identifier(&req.identifier)?;
            super::discovery_limit(shared, caller)?;
            Target::Identifier(id)
        }
        (true, false) => Target::Box(parse_box_id(&req.box_id)?),
        _ => {
            return Err(Failure::bad_request(
                "set exactly one of identifier and box_id",
            ));
        }
    };
    let store = &shared.store;
    let requester = caller.box_id;
    let add_contact = req.add_contact;
    let now = now_ms();
    let found = transact!(store, |txn| async {
        let owner = match &target {
            Target::Identifier(id) => {
                match lookup::discover(txn, &store.hasher, id, requester, now).await? {
                    Some(owner) => owner,
                    None => return Ok(None),
                }
            }
            Target::Box(b) => {
                if !visible_by_box(txn, *b, requester).await? {
                    return Ok(None);
                }
                *b
            }
        };
        // A box being deleted has no profile any more: it is gone.
        if accounts::profile(txn, owner).await?.is_none() {
            return Ok(None);
        }
        let (version, devices) = devices::recipients(txn, owner).await?;
        if add_contact && owner != requester {
            contacts::add(
                txn,
                &store.limits,
                Relationship::Contact,
                requester,
                owner,
                now,
            )
            .await?;
        }
        Ok(Some((owner, version, devices)))
    }
    .await)?;
    let Some((owner, version, devices)) = found else {
        return Err(Failure::not_found());
    };
    Ok(pb::RequestKeyResponse {
        devices: Some(build_device_list(owner, version, &devices)?),
    })
}

/// PublishKeyPackages: stores MLS KeyPackages of the calling device.
pub(crate) async fn publish_key_packages(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::PublishKeyPackagesResponse, Failure> {
    let req: pb::PublishKeyPackagesRequest = decode(body, "PublishKeyPackagesRequest")?;
    let store = &shared.store;
    let limits = &store.limits;
    if req.key_packages.len() > limits.max_key_packages_per_device {
        return Err(Failure::new(
            Status::TooLarge,
            format!(
                "at most {} KeyPackages per request",
                limits.max_key_packages_per_device
            ),
        ));
    }
    let last_resort = (!req.last_resort.is_empty()).then_some(req.last_resort.as_slice());
    let now = now_ms();
    check_key_packages(caller, &req.key_packages, last_resort, now / 1000)?;
    let stored = transact!(store, |txn| keypackages::publish(
        txn,
        limits,
        caller.box_id,
        caller.device_id,
        &req.key_packages,
        last_resort,
        now
    )
    .await)?;
    Ok(pb::PublishKeyPackagesResponse {
        stored: u32::try_from(stored).unwrap_or(u32::MAX),
    })
}

/// Refuses (`STATUS_BAD_REQUEST`, naming the KeyPackage and the reason) any
/// KeyPackage no member could use or that is not the caller's: it must be an
/// MLS 1.0 KeyPackage of the deployment's ciphersuite whose credential names
/// the caller's device, vouched for by the identity key the gateway holds for
/// it, with valid signatures and a lifetime that has not ended
/// ([`rossby_protocol::mls::key_package`]). Checked before anything is stored.
fn check_key_packages(
    caller: &Authenticated,
    key_packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
    now_secs: u64,
) -> Result<(), Failure> {
    let Some(device_key) = caller
        .identity_key
        .and_then(|k| IdentityKey::from_bytes(&k).ok())
    else {
        return Err(Failure::bad_request(
            "this device's record has no usable identity key to check KeyPackages against",
        ));
    };
    let (box_id, device_id) = (caller.box_id.as_bytes(), caller.device_id.as_bytes());
    let named = key_packages
        .iter()
        .enumerate()
        .map(|(i, kp)| (format!("KeyPackage {i}"), kp.as_slice()))
        .chain(last_resort.map(|kp| ("the last-resort KeyPackage".to_string(), kp)));
    for (name, bytes) in named {
        key_package::parse_key_package(bytes)
            .and_then(|kp| kp.check(box_id, device_id, &device_key, now_secs))
            .map_err(|e| Failure::bad_request(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// ClaimKeyPackages: one KeyPackage per authorized device of a box.
pub(crate) async fn claim_key_packages(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::ClaimKeyPackagesResponse, Failure> {
    let req: pb::ClaimKeyPackagesRequest = decode(body, "ClaimKeyPackagesRequest")?;
    let target = parse_box_id(&req.box_id)?;
    let store = &shared.store;
    let requester = caller.box_id;
    let now = now_ms();
    let claimed = transact!(store, |txn| async {
        if !visible_by_box(txn, target, requester).await? {
            return Ok(None);
        }
        Ok(Some(keypackages::claim_for_box(txn, target, now).await?))
    }
    .await)?;
    let claimed = claimed.ok_or_else(Failure::not_found)?;
    Ok(pb::ClaimKeyPackagesResponse {
        packages: claimed
            .into_iter()
            .map(|c| pb::ClaimedKeyPackage {
                device_id: c.device.as_bytes().to_vec(),
                key_package: c.data,
                last_resort: c.last_resort,
            })
            .collect(),
    })
}

/// ListDevices: the caller's own device list.
pub(crate) async fn list_devices(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::ListDevicesResponse, Failure> {
    let _req: pb::ListDevicesRequest = decode(body, "ListDevicesRequest")?;
    Ok(pb::ListDevicesResponse {
        devices: Some(device_list(shared, caller.box_id).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{TestEnv, TestSettings};
    use rossby_protocol::mls::key_package;
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;

    #[tokio::test]
    async fn lookups_find_visible_users_only() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let carol = env.register("carol@example.com").await;

        let found = env.request_key(&bob, "Alice@Example.com").await;
        assert_eq!(status_of(&found), Status::Ok);
        let resp: pb::RequestKeyResponse = TestEnv::body(&found);
        assert_eq!(resp.devices.unwrap().box_id, alice.box_id.as_bytes());

        let unknown = env.request_key(&bob, "nobody@example.com").await;
        assert_eq!(status_of(&unknown), Status::NotFound);

        // Alice hides: she looks exactly like an unknown user, also by message.
        let resp = env
            .call_as(
                &alice,
                1,
                Method::UpdateSettings,
                &pb::UpdateSettingsRequest {
                    discoverable: Some(false),
                    ..pb::UpdateSettingsRequest::default()
                },
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let hidden = env.request_key(&bob, "alice@example.com").await;
        assert_eq!(status_of(&hidden), Status::NotFound);
        assert_eq!(hidden.message, unknown.message);
        assert_eq!(hidden.body, unknown.body);
        // By box id she can still be found (hiding is about identifiers), and she
        // finds herself.
        let by_box = env.request_key_by_box(&bob, alice.box_id).await;
        assert_eq!(status_of(&by_box), Status::Ok);
        assert_eq!(
            status_of(&env.request_key(&alice, "alice@example.com").await),
            Status::Ok
        );

        // Carol blocks Bob: to Bob she looks unknown, by identifier and by box.
        let resp = env
            .call_as(
                &carol,
                1,
                Method::Block,
                &pb::BlockRequest {
                    identifier: "bob@example.com".into(),
                    ..pb::BlockRequest::default()
                },
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let blocked = env.request_key(&bob, "carol@example.com").await;
        assert_eq!(status_of(&blocked), Status::NotFound);
        assert_eq!(blocked.message, unknown.message);
        assert_eq!(
            status_of(&env.request_key_by_box(&bob, carol.box_id).await),
            Status::NotFound
        );
        // Alice still finds Carol.
        assert_eq!(
            status_of(&env.request_key(&alice, "carol@example.com").await),
            Status::Ok
        );

        // Exactly one of identifier and box id.
        let both = pb::RequestKeyRequest {
            identifier: "carol@example.com".into(),
            box_id: carol.box_id.as_bytes().to_vec(),
            ..pb::RequestKeyRequest::default()
        };
        let resp = env.call_as(&bob, 1, Method::RequestKey, &both).await;
        assert_eq!(status_of(&resp), Status::BadRequest);
    }

    #[tokio::test]
    async fn discovery_is_rate_limited_per_account() {
        let env = TestEnv::with(TestSettings {
            discovery: Some((0.0, 3.0)),
            ..TestSettings::default()
        });
        let alice = env.register("alice@example.com").await;
        for i in 0..3 {
            let resp = env
                .request_key(&alice, &format!("user{i}@example.com"))
                .await;
            assert_eq!(status_of(&resp), Status::NotFound);
        }
        let resp = env.request_key(&alice, "user9@example.com").await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.retry_after_ms > 0);
        // Lookups by box id are not discovery.
        let resp = env.request_key_by_box(&alice, alice.box_id).await;
        assert_eq!(status_of(&resp), Status::Ok);
        // A freshly linked device shares the account's budget.
        let laptop = env.link(&alice, "laptop").await;
        let resp = env.request_key(&laptop, "user10@example.com").await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        // Block and Unblock by identifier answer OK or NOT_FOUND, so they are
        // lookups too.
        for method in [Method::Block, Method::Unblock] {
            let req = pb::BlockRequest {
                identifier: "user11@example.com".into(),
                box_id: Vec::new(),
            };
            let resp = env.call_as(&alice, 1, method, &req).await;
            assert_eq!(status_of(&resp), Status::RateLimited, "{method:?}");
        }
        // By box id they are not.
        let req = pb::BlockRequest {
            identifier: String::new(),
            box_id: laptop.box_id.as_bytes().to_vec(),
        };
        let resp = env.call_as(&alice, 1, Method::Unblock, &req).await;
        assert_eq!(status_of(&resp), Status::Ok);
    }

    /// A KeyPackage of `device` whose init key is `tag` repeated.
    fn make_key_package(
        device: &super::super::testkit::TestDevice,
        tag: u8,
        suite: u16,
    ) -> Vec<u8> {
        let now = super::now_ms() / 1000;
        key_package::build_key_package(&key_package::KeyPackageParts {
            device: &device.keys,
            box_id: *device.box_id.as_bytes(),
            device_id: *device.device_id.as_bytes(),
            leaf_signer: &ed25519_dalek::SigningKey::from_bytes(&[tag; 32]),
            init_key: &[tag; 64],
            encryption_key: &[tag; 64],
            cipher_suite: suite,
            lifetime: (now - 3600, now + 86_400),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn key_packages_must_be_the_publishing_devices_and_of_the_suite() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let publish = |key_packages: Vec<Vec<u8>>, last_resort: Vec<u8>| {
            let req = pb::PublishKeyPackagesRequest {
                key_packages,
                last_resort,
            };
            let env = &env;
            let alice = &alice;
            async move {
                env.call_as(alice, 1, Method::PublishKeyPackages, &req)
                    .await
            }
        };
        let good = make_key_package(&alice, 1, key_package::CIPHERSUITE);
        for (bad, reason) in [
            (vec![1; 40], "KeyPackage 1: malformed"),
            (
                make_key_package(&bob, 2, key_package::CIPHERSUITE),
                "names another device",
            ),
            (make_key_package(&alice, 3, 0x0001), "ciphersuite 0x0001"),
        ] {
            let resp = publish(vec![good.clone(), bad], Vec::new()).await;
            assert_eq!(status_of(&resp), Status::BadRequest);
            assert!(resp.message.contains(reason), "{}", resp.message);
        }
        let resp = publish(
            Vec::new(),
            make_key_package(&bob, 4, key_package::CIPHERSUITE),
        )
        .await;
        assert!(resp.message.contains("last-resort"), "{}", resp.message);
        // Nothing of a refused request was stored.
        let claim = pb::ClaimKeyPackagesRequest {
            box_id: alice.box_id.as_bytes().to_vec(),
        };
        let resp = env.call_as(&bob, 1, Method::ClaimKeyPackages, &claim).await;
        let claimed: pb::ClaimKeyPackagesResponse = TestEnv::body(&resp);
        assert!(claimed.packages.is_empty(), "{claimed:?}");
    }

    #[tokio::test]
    async fn key_packages_are_claimed_once_then_the_last_resort() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let suite = key_package::CIPHERSUITE;
        let publish = pb::PublishKeyPackagesRequest {
            key_packages: vec![
                make_key_package(&alice, 1, suite),
                make_key_package(&alice, 2, suite),
            ],
            last_resort: make_key_package(&alice, 9, suite),
        };
        let resp = env
            .call_as(&alice, 1, Method::PublishKeyPackages, &publish)
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        assert_eq!(
            TestEnv::body::<pb::PublishKeyPackagesResponse>(&resp).stored,
            2
        );
        let claim = pb::ClaimKeyPackagesRequest {
            box_id: alice.box_id.as_bytes().to_vec(),
        };
        let mut seen = Vec::new();
        for _ in 0..3 {
            let resp = env.call_as(&bob, 1, Method::ClaimKeyPackages, &claim).await;
            assert_eq!(status_of(&resp), Status::Ok);
            let claimed: pb::ClaimKeyPackagesResponse = TestEnv::body(&resp);
            assert_eq!(claimed.packages.len(), 1);
            let package = &claimed.packages[0];
            let init_key = key_package::parse_key_package(&package.key_package)
                .unwrap()
                .signature_key
                .to_vec();
            let tag = [1u8, 2, 9]
                .into_iter()
                .find(|t| {
                    init_key
                        == ed25519_dalek::SigningKey::from_bytes(&[*t; 32])
                            .verifying_key()
                            .to_bytes()
                })
                .unwrap();
            seen.push((tag, package.last_resort));
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![(1, false), (2, false), (9, true)]);
        // An unknown box.
        let claim = pb::ClaimKeyPackagesRequest {
            box_id: vec![0; 16],
        };
        let resp = env.call_as(&bob, 1, Method::ClaimKeyPackages, &claim).await;
        assert_eq!(status_of(&resp), Status::NotFound);
    }
}
