//! Several identifiers per account, end to end through a real gateway on loopback
//! (fjall in a temporary directory, codes read from the `file:` verifier) with
//! the client SDK and the `rossby` CLI: adding, confirming, finding the box by
//! the new identifier, per-identifier discoverability, removal and the last
//! identifier, identifiers of other accounts, wrong codes, recovery through a
//! second identifier.

mod support;

use rossby_client::{Client, Error};
use rossby_protocol::pb::Status;
use std::path::Path;
use support::{
    bounded, client, codes_file, codes_for, last_code, register, rossby, start_gateway, wrong_code,
};

const ALICE: &str = "alice@example.com";
const ALICE_PHONE: &str = "+14155550100";
const BOB: &str = "bob@example.com";

fn status(err: &Error) -> Option<Status> {
    err.status()
}

/// Adds `identifier` to `client`'s account and confirms it with the code sent.
async fn add_and_confirm(client: &Client, identifier: &str, discoverable: bool, codes: &Path) {
    bounded("add", client.add_identifier(identifier, discoverable))
        .await
        .expect("add identifier");
    let code = last_code(codes, identifier);
    let info = bounded("confirm", client.confirm_identifier(identifier, &code))
        .await
        .expect("confirm identifier");
    assert_eq!(info.discoverable, discoverable);
}

/// The account's identifiers as (identifier, discoverable).
async fn listed(client: &Client) -> Vec<(String, bool)> {
    bounded("list", client.list_identifiers())
        .await
        .expect("list identifiers")
        .into_iter()
        .map(|i| (i.identifier.expect("sealed"), i.discoverable))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identifier_finds_the_box_until_hidden_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    let alice_box = register(&alice, ALICE, &codes).await;
    register(&bob, BOB, &codes).await;

    // Before it is confirmed the new identifier finds nobody.
    let expires = alice
        .add_identifier("+1 (415) 555-0100", true)
        .await
        .unwrap();
    assert!(expires > 0);
    let err = bob.contact(ALICE_PHONE).await.unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient(_)), "{err}");
    let code = last_code(&codes, ALICE_PHONE);
    // A wrong code is refused (and counted); the right one binds it.
    let err = alice
        .confirm_identifier(ALICE_PHONE, &wrong_code(&code))
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(Status::InvalidCode), "{err}");
    let info = alice.confirm_identifier(ALICE_PHONE, &code).await.unwrap();
    assert_eq!(info.identifier.as_deref(), Some(ALICE_PHONE));
    assert!(info.discoverable);
    // The code is spent.
    let err = alice
        .confirm_identifier(ALICE_PHONE, &code)
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(Status::CodeExpired), "{err}");
    assert_eq!(
        listed(&alice).await,
        vec![(ALICE.to_string(), true), (ALICE_PHONE.to_string(), true)]
    );

    // Bob finds the same box by either identifier, and can write to it.
    let by_phone = bob.contact(ALICE_PHONE).await.unwrap();
    assert_eq!(by_phone.box_id, alice_box);
    assert_eq!(bob.contact(ALICE).await.unwrap().box_id, alice_box);
    bob.send_text(ALICE_PHONE, "hi via phone").await.unwrap();

    // Undiscoverable: exactly like an unknown identifier; the other still works.
    let info = alice
        .set_identifier_discoverable(ALICE_PHONE, false)
        .await
        .unwrap();
    assert!(!info.discoverable);
    let hidden = bob.contact(ALICE_PHONE).await.unwrap_err();
    let unknown = bob.contact("+14155550999").await.unwrap_err();
    assert!(matches!(hidden, Error::UnknownRecipient(_)), "{hidden}");
    assert_eq!(
        hidden.to_string().replace(ALICE_PHONE, "X"),
        unknown.to_string().replace("+14155550999", "X")
    );
    assert_eq!(bob.contact(ALICE).await.unwrap().box_id, alice_box);
    assert_eq!(
        listed(&alice).await,
        vec![(ALICE.to_string(), true), (ALICE_PHONE.to_string(), false)]
    );
    alice
        .set_identifier_discoverable(ALICE_PHONE, true)
        .await
        .unwrap();
    assert_eq!(bob.contact(ALICE_PHONE).await.unwrap().box_id, alice_box);

    // Removed: unknown again; the last identifier stays.
    assert_eq!(alice.remove_identifier(ALICE_PHONE).await.unwrap(), 1);
    let err = bob.contact(ALICE_PHONE).await.unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient(_)), "{err}");
    let err = alice.remove_identifier(ALICE).await.unwrap_err();
    assert_eq!(status(&err), Some(Status::LastIdentifier), "{err}");
    assert_eq!(listed(&alice).await, vec![(ALICE.to_string(), true)]);
    // Removing or re-flagging what is not the account's is NOT_FOUND.
    let err = alice.remove_identifier(BOB).await.unwrap_err();
    assert_eq!(status(&err), Some(Status::NotFound), "{err}");
    let err = alice
        .set_identifier_discoverable(BOB, false)
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(Status::NotFound), "{err}");
    // Bad input fails locally, before the network.
    let err = alice
        .add_identifier("not an identifier", true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_identifier_is_answered_like_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    register(&alice, ALICE, &codes).await;
    register(&bob, BOB, &codes).await;
    let sent = |id: &str| codes_for(&codes, id).len();
    // Another account's identifier, in any spelling: the answer is the one a
    // free identifier gets, and the code goes to its owner, so asking tells
    // nothing about who is registered.
    let taken = alice.add_identifier("Bob@Example.com", true).await.unwrap();
    let free = alice
        .add_identifier("dave@example.com", true)
        .await
        .unwrap();
    assert!(taken > 0 && free > 0);
    assert_eq!(sent(BOB), 2, "Bob's registration code and the addition's");
    // Only the code's holder learns that it is taken.
    let code = last_code(&codes, BOB);
    let err = alice.confirm_identifier(BOB, &code).await.unwrap_err();
    assert_eq!(status(&err), Some(Status::AlreadyRegistered), "{err}");
    assert!(err.to_string().contains("another account"), "{err}");
    // The caller's own identifier: refused at once, no code.
    let err = alice.add_identifier(ALICE, true).await.unwrap_err();
    assert_eq!(status(&err), Some(Status::AlreadyRegistered), "{err}");
    assert!(err.to_string().contains("your account"), "{err}");
    assert_eq!(sent(ALICE), 1, "only Alice's registration code");

    // Bound by someone else between the code and the confirmation.
    let carol_id = "carol@example.com";
    alice.add_identifier(carol_id, true).await.unwrap();
    let code = last_code(&codes, carol_id);
    let carol = client(&gateway, dir.path().join("carol.state")).await;
    register(&carol, carol_id, &codes).await;
    let err = alice.confirm_identifier(carol_id, &code).await.unwrap_err();
    assert_eq!(status(&err), Some(Status::AlreadyRegistered), "{err}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_are_counted_until_the_addition_is_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    register(&alice, ALICE, &codes).await;
    alice.add_identifier(ALICE_PHONE, true).await.unwrap();
    let code = last_code(&codes, ALICE_PHONE);
    let wrong = wrong_code(&code);
    // Five attempts by default: four are refused as wrong, the fifth ends it.
    for _ in 0..4 {
        let err = alice
            .confirm_identifier(ALICE_PHONE, &wrong)
            .await
            .unwrap_err();
        assert_eq!(status(&err), Some(Status::InvalidCode), "{err}");
    }
    let err = alice
        .confirm_identifier(ALICE_PHONE, &wrong)
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(Status::CodeAttemptsExhausted), "{err}");
    let err = alice
        .confirm_identifier(ALICE_PHONE, &code)
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(Status::CodeExpired), "{err}");
    assert_eq!(listed(&alice).await, vec![(ALICE.to_string(), true)]);
    // Adding it again sends a new code that works.
    add_and_confirm(&alice, ALICE_PHONE, false, &codes).await;
    assert_eq!(
        listed(&alice).await,
        vec![(ALICE.to_string(), true), (ALICE_PHONE.to_string(), false)]
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_works_through_a_second_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let alice_box = register(&alice, ALICE, &codes).await;
    add_and_confirm(&alice, ALICE_PHONE, true, &codes).await;

    // A new phone recovers the account by the phone number.
    let new_phone = client(&gateway, dir.path().join("new.state")).await;
    new_phone.register(ALICE_PHONE, true).await.unwrap();
    let code = last_code(&codes, ALICE_PHONE);
    let recovered = new_phone.authorize(&code).await.unwrap();
    assert_eq!(recovered, alice_box);
    // The old device is gone; both identifiers stay with the box.
    let err = alice.list_identifiers().await.unwrap_err();
    assert_eq!(status(&err), Some(Status::Unauthenticated), "{err}");
    assert_eq!(
        listed(&new_phone).await,
        vec![(ALICE.to_string(), true), (ALICE_PHONE.to_string(), true)]
    );
    gateway.shutdown().await;
}

// ----- the CLI -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_hides_and_removes_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let state = dir.path().join("alice.state");
    {
        // Registered through the SDK; the CLI reuses its state (and its pinned
        // gateway settings) once the SDK client let go of it.
        let alice = client(&gateway, state.clone()).await;
        register(&alice, ALICE, &codes).await;
    }
    let (code, out, err) = rossby(&state, &["identifier", "add", ALICE_PHONE, "--hidden"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("verification code sent to"), "{out}");
    let sent = last_code(&codes, ALICE_PHONE);
    let (code, out, err) = rossby(&state, &["identifier", "confirm", ALICE_PHONE, &sent]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = rossby(&state, &["identifier", "list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{ALICE}\n{ALICE_PHONE} (hidden)\n"));
    let (code, out, err) = rossby(&state, &["identifier", "discoverable", ALICE_PHONE, "on"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{ALICE_PHONE} is discoverable\n"));
    let (code, out, err) = rossby(&state, &["identifier", "remove", ALICE]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    // The device now knows the account by the remaining identifier.
    let (code, out, err) = rossby(&state, &["whoami"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with(&format!("{ALICE_PHONE} box ")), "{out}");
    let (code, out, _) = rossby(&state, &["identifier", "list"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("{ALICE_PHONE}\n"));
    // The last one cannot go: one line on stderr, exit status 1.
    let (code, out, err) = rossby(&state, &["identifier", "remove", ALICE_PHONE]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.starts_with("rossby: ") && err.contains("LAST_IDENTIFIER"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_service_name_is_named_as_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&dir.path().join("gw")).await;
    let codes = codes_file(&dir.path().join("gw"));
    let state = dir.path().join("alice.state");
    {
        let alice = client(&gateway, state.clone()).await;
        register(&alice, ALICE, &codes).await;
    }
    // Ping tells the gateway's service name.
    let (code, out, err) = rossby(&state, &["ping"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(" service rossby:7400"), "{out}");
    // Signing for another one is refused, and the answer says why.
    let (code, out, err) = rossby(
        &state,
        &["--service-name", "elsewhere:7400", "identifier", "list"],
    )
    .await;
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(
            "the gateway's service name is rossby:7400, this device signs for elsewhere:7400"
        ),
        "{err}"
    );
    // The mistyped option was not remembered.
    let (code, out, err) = rossby(&state, &["identifier", "list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    gateway.shutdown().await;
}
