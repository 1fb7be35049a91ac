//! AddIdentifier, ConfirmIdentifier, RemoveIdentifier, ListIdentifiers and
//! SetIdentifierDiscoverable: the several identifiers of one account.
//!
//! Adding an identifier works like Register, with the code machinery of
//! [`super::registration`]: the same normalisation, the same per-identifier
//! rate limit (one bucket per identifier shared with Register; per address and
//! per device as for every authenticated request), the same six-digit code
//! stored only as a keyed hash, and the same verifier. The pending addition is
//! stored under the caller's box ([`identifiers`]), and ConfirmIdentifier binds
//! the identifier ([`lookup::bind_with`]) in the transaction that deletes it.
//!
//! Answers to the caller's own identifiers: adding one that is already bound to
//! the caller's box answers `ALREADY_REGISTERED` with a message saying it is
//! already the caller's (nothing is sent); bound to another box, the same status
//! with Register's message. Removing or re-flagging an identifier that is not
//! bound to the caller's box answers `NOT_FOUND`.
//!
//! ListIdentifiers shows bindings made before sealed copies were stored (see
//! [`lookup`]) with an empty `identifier`: their owner knows them, and adding
//! one of them again (answered `ALREADY_REGISTERED`) or re-flagging it seals a
//! copy, after which it is listed.

use super::registration::{
    CodeCheck, PendingCode, WRONG_CODE_WINDOW_MS, check_code, code_failure, deliver_code,
    issue_code, wrong_code_check,
};
use super::{Failure, Shared, decode, now_ms, parse_identifier};
use crate::auth::Authenticated;
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::lookup::{self, BoundIdentifier};
use rossby_storage::tables::records::PendingIdentifier;
use rossby_storage::tables::{identifier_limits, identifiers};
use rossby_storage::transact;

/// What to do to get a new code.
const ADD_AGAIN: &str = "add the identifier again";

/// An identifier as the reply carries it.
fn info(bound: &BoundIdentifier) -> pb::IdentifierInfo {
    pb::IdentifierInfo {
        identifier: bound
            .identifier
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_default(),
        discoverable: bound.discoverable,
        bound_at_ms: bound.bound_at_ms,
    }
}

/// AddIdentifier: stores a pending addition and sends a code to the identifier.
pub(crate) async fn add(
    shared: &Shared,
    origin: &super::Origin<'_>,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::AddIdentifierResponse, Failure> {
    let req: pb::AddIdentifierRequest = decode(body, "AddIdentifierRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let store = &shared.store;
    let digest = store.hasher.current(&id);
    let box_id = caller.box_id;
    let limits = &store.limits;
    // The caller's own identifier sends no code, so it spends none of the
    // identifier's budgets either.
    let now = now_ms();
    let own = transact!(store, |txn| async {
        if lookup::resolve(txn, &store.hasher, &id, now).await? != Some(box_id) {
            return Ok(false);
        }
        // Changes nothing, except that a binding from before sealed copies
        // gets one (the identifier is here in clear), so it is listed from
        // now on.
        let max = limits.max_identifiers_per_box;
        lookup::bind_with(txn, &store.hasher, &id, box_id, true, max, now).await?;
        Ok(true)
    }
    .await)?;
    if own {
        return Err(Failure::new(
            Status::AlreadyRegistered,
            "this identifier is already one of your account's identifiers",
        ));
    }
    // Another account's identifier is answered like a free one (the code goes
    // to its owner): only the code's holder learns, at ConfirmIdentifier, that
    // it is taken.
    super::registration::spend_code_budgets(shared, &id, origin.remote.ip()).await?;
    let issued = issue_code(shared, &digest).await?;
    let now = issued.now_ms;
    let record = PendingIdentifier {
        code_mac: issued.code_mac.clone(),
        expires_at_ms: issued.expires_at_ms,
        attempts: 0,
        discoverable: req.discoverable,
        device_id: caller.device_id.as_bytes().to_vec(),
        created_at_ms: now,
    };
    transact!(store, |txn| identifiers::store_pending(
        txn, limits, box_id, &digest, &record, now
    )
    .await)?;
    let expires_at_ms = issued.expires_at_ms;
    deliver_code(shared, id, issued).await?;
    Ok(pb::AddIdentifierResponse {
        code_expires_at_ms: expires_at_ms,
    })
}

/// What the ConfirmIdentifier transaction decided.
enum Confirmed {
    Refused(CodeCheck),
    Taken,
    Bound(BoundIdentifier),
}

/// ConfirmIdentifier: checks the code and binds the identifier to the caller's
/// box.
pub(crate) async fn confirm(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::ConfirmIdentifierResponse, Failure> {
    let req: pb::ConfirmIdentifierRequest = decode(body, "ConfirmIdentifierRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let store = &shared.store;
    let digest = store.hasher.current(&id);
    let box_id = caller.box_id;
    let max = store.limits.max_identifiers_per_box;
    let max_wrong = shared.settings.wrong_codes_per_identifier_per_day;
    let now = now_ms();
    let outcome = transact!(store, |txn| async {
        let Some(pending) = identifiers::pending(txn, box_id, &digest).await? else {
            return Ok(Confirmed::Refused(CodeCheck::Expired));
        };
        // Wrong codes for the identifier count together with those of its
        // registrations (Authorize), across accounts and gateways.
        let wrong =
            identifier_limits::wrong_codes(txn, &digest.digest, now, WRONG_CODE_WINDOW_MS).await?;
        if wrong >= max_wrong {
            identifiers::remove_pending(txn, box_id, &digest).await?;
            return Ok(Confirmed::Refused(CodeCheck::Exhausted));
        }
        let stored = PendingCode {
            code_mac: &pending.code_mac,
            expires_at_ms: pending.expires_at_ms,
            attempts: pending.attempts,
        };
        match check_code(shared, &digest, &req.code, stored, now) {
            CodeCheck::Valid => {}
            CodeCheck::Wrong => {
                let attempts = identifiers::record_wrong_attempt(txn, box_id, &digest).await?;
                let check = wrong_code_check(shared, txn, &digest.digest, attempts, now).await?;
                if check == CodeCheck::Exhausted {
                    identifiers::remove_pending(txn, box_id, &digest).await?;
                }
                return Ok(Confirmed::Refused(check));
            }
            check => {
                identifiers::remove_pending(txn, box_id, &digest).await?;
                return Ok(Confirmed::Refused(check));
            }
        }
        identifiers::remove_pending(txn, box_id, &digest).await?;
        if let Some(owner) = lookup::resolve(txn, &store.hasher, &id, now).await?
            && owner != box_id
        {
            // Another box bound it since the code was sent; the code is spent.
            return Ok(Confirmed::Taken);
        }
        let bound = lookup::bind_with(
            txn,
            &store.hasher,
            &id,
            box_id,
            pending.discoverable,
            max,
            now,
        )
        .await?;
        Ok(Confirmed::Bound(bound))
    }
    .await)?;
    match outcome {
        Confirmed::Refused(check) => Err(code_failure(check, ADD_AGAIN)),
        Confirmed::Taken => Err(Failure::new(
            Status::AlreadyRegistered,
            "this identifier is registered to another account",
        )),
        Confirmed::Bound(bound) => Ok(pb::ConfirmIdentifierResponse {
            identifier: Some(info(&bound)),
        }),
    }
}

/// RemoveIdentifier: unbinds one of the caller's identifiers, never the last.
pub(crate) async fn remove(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::RemoveIdentifierResponse, Failure> {
    let req: pb::RemoveIdentifierRequest = decode(body, "RemoveIdentifierRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let store = &shared.store;
    let box_id = caller.box_id;
    let remaining = transact!(store, |txn| lookup::remove(txn, &store.hasher, &id, box_id)
        .await)?;
    Ok(pb::RemoveIdentifierResponse {
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
    })
}

/// ListIdentifiers: the caller's identifiers in clear.
pub(crate) async fn list(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::ListIdentifiersResponse, Failure> {
    let _: pb::ListIdentifiersRequest = decode(body, "ListIdentifiersRequest")?;
    let store = &shared.store;
    let box_id = caller.box_id;
    let bound = transact!(store, |txn| lookup::list(txn, &store.hasher, box_id).await)?;
    Ok(pb::ListIdentifiersResponse {
        identifiers: bound.iter().map(info).collect(),
    })
}

/// SetIdentifierDiscoverable: whether contacts find the caller's box by one of
/// its identifiers.
pub(crate) async fn set_discoverable(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::SetIdentifierDiscoverableResponse, Failure> {
    let req: pb::SetIdentifierDiscoverableRequest =
        decode(body, "SetIdentifierDiscoverableRequest")?;
    let id = parse_identifier(&req.identifier)?;
    let store = &shared.store;
    let box_id = caller.box_id;
    let now = now_ms();
    let bound = transact!(store, |txn| lookup::set_discoverable(
        txn,
        &store.hasher,
        &id,
        box_id,
        req.discoverable,
        now
    )
    .await)?;
    Ok(pb::SetIdentifierDiscoverableResponse {
        identifier: Some(info(&bound)),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{TestEnv, TestSettings};
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;

    fn add(identifier: &str) -> pb::AddIdentifierRequest {
        pb::AddIdentifierRequest {
            identifier: identifier.into(),
            discoverable: true,
        }
    }

    #[tokio::test]
    async fn register_and_add_identifier_share_the_per_identifier_limit() {
        let env = TestEnv::with(TestSettings {
            registrations: Some((0.0, 2.0)),
            ..TestSettings::default()
        });
        let alice = env.register("alice@example.com").await;
        let device = TestEnv::new_device();
        let resp = env
            .register_request("frank@example.com", &device, false)
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let resp = env
            .call_as(&alice, 1, Method::AddIdentifier, &add("Frank@Example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let resp = env
            .call_as(&alice, 1, Method::AddIdentifier, &add("frank@example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.retry_after_ms > 0);
        assert_eq!(
            env.code_lines().len(),
            3,
            "alice's, frank's and one addition"
        );
    }

    #[tokio::test]
    async fn bindings_from_before_sealing_are_listed_empty_until_added_again() {
        use rossby_keyspace::{Identifier, Key};
        use rossby_storage::tables::Record;
        use rossby_storage::tables::records::Marker;
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        // Rewrite the box's entry as it was stored before sealed copies.
        let store = &env.shared().store;
        let id = Identifier::parse("alice@example.com").unwrap();
        let digest = store.hasher.current(&id);
        let key = Key::Ident(alice.box_id, digest.version, digest.digest).encode();
        let old = Marker { at_ms: 42 }.to_stored();
        rossby_storage::kv::transact!(store.kv, &store.retry, |txn| txn
            .put(key.clone(), old.clone())
            .await)
        .unwrap();
        let list = async || {
            let resp = env
                .call_as(
                    &alice,
                    1,
                    Method::ListIdentifiers,
                    &pb::ListIdentifiersRequest {},
                )
                .await;
            assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
            TestEnv::body::<pb::ListIdentifiersResponse>(&resp).identifiers
        };
        let before = list().await;
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].identifier, "");
        assert!(before[0].discoverable);
        assert_eq!(before[0].bound_at_ms, 42);
        let resp = env
            .call_as(&alice, 1, Method::AddIdentifier, &add("Alice@Example.com"))
            .await;
        assert_eq!(status_of(&resp), Status::AlreadyRegistered);
        let after = list().await;
        assert_eq!(after[0].identifier, "alice@example.com");
        assert_eq!(after[0].bound_at_ms, 42);
    }

    #[tokio::test]
    async fn adding_ones_own_identifier_spends_no_code() {
        let env = TestEnv::with(TestSettings {
            registrations: Some((0.0, 1.0)),
            ..TestSettings::default()
        });
        // The registration took the identifier's only code.
        let alice = env.register("alice@example.com").await;
        for _ in 0..3 {
            let resp = env
                .call_as(&alice, 1, Method::AddIdentifier, &add("alice@example.com"))
                .await;
            assert_eq!(
                status_of(&resp),
                Status::AlreadyRegistered,
                "{}",
                resp.message
            );
        }
        assert_eq!(env.code_lines().len(), 1);
    }

    #[tokio::test]
    async fn bad_requests_are_refused_and_send_nothing() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let resp = env
            .call_as(&alice, 1, Method::AddIdentifier, &add("not an identifier"))
            .await;
        assert_eq!(status_of(&resp), Status::BadRequest);
        for method in [
            Method::AddIdentifier,
            Method::ConfirmIdentifier,
            Method::RemoveIdentifier,
            Method::ListIdentifiers,
            Method::SetIdentifierDiscoverable,
        ] {
            let resp = env
                .call_as(&alice, 1, method, &pb::PingRequest::default())
                .await;
            // An empty body decodes, with an empty identifier, except for
            // ListIdentifiers, which needs none.
            let expected = if method == Method::ListIdentifiers {
                Status::Ok
            } else {
                Status::BadRequest
            };
            assert_eq!(status_of(&resp), expected, "{method:?}: {}", resp.message);
        }
        // Unauthenticated callers get nothing.
        let resp = env
            .call(1, Method::ListIdentifiers, &pb::ListIdentifiersRequest {})
            .await;
        assert_eq!(status_of(&resp), Status::Unauthenticated);
        assert_eq!(env.code_lines().len(), 1, "only the registration's code");
    }
}
