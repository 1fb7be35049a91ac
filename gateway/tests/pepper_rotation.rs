//! Lookup pepper rotation through the pepper file and `pepper_version`: users
//! registered under the generated (version 1) pepper are still found after the
//! gateway restarts with versions 1 and 2 and version 2 current, and their lookup
//! bindings move to version 2 when they are looked up; new users are bound under
//! version 2; once version 1 is removed, only the users that were looked up
//! (migrated) are still found.

mod support;

use rossby_gateway::{Config, Gateway};
use rossby_keyspace::{BoxId, Identifier, LookupHasher, Pepper};
use std::path::Path;
use support::{client, codes_file, register, start_gateway, start_with};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const DAVE: &str = "dave@example.com";
/// The new pepper (version 2).
const NEW_PEPPER: [u8; 32] = [0x5a; 32];

/// Which pepper versions hold a lookup binding of `identifier` in the store.
async fn bound_versions(gateway: &Gateway, hasher: &LookupHasher, identifier: &str) -> Vec<u32> {
    let id = Identifier::parse(identifier).unwrap();
    let mut txn = gateway.store().kv.begin().await.unwrap();
    let mut versions = Vec::new();
    for version in [1, 2] {
        let key = hasher.digest(version, &id).unwrap().key().encode();
        if txn.get(&key).await.unwrap().is_some() {
            versions.push(version);
        }
    }
    txn.rollback().await.unwrap();
    versions
}

fn restart_config(gw_dir: &Path, pepper_file: &str, current: Option<u32>) -> Config {
    std::fs::write(gw_dir.join("pepper"), pepper_file).unwrap();
    let mut config = Config::for_tests(gw_dir);
    config.pepper_version = current;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_registered_under_the_old_pepper_are_found_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gw");
    let codes = codes_file(&gw_dir);

    // Version 1: the pepper the gateway generates on its first start.
    let gateway = start_gateway(&gw_dir).await;
    let mut boxes: Vec<(&str, BoxId)> = Vec::new();
    for (name, who) in [("alice", ALICE), ("bob", BOB), ("dave", DAVE)] {
        let c = client(&gateway, dir.path().join(format!("{name}.state"))).await;
        boxes.push((who, register(&c, who, &codes).await));
        c.close().await;
    }
    gateway.shutdown().await;
    let generated = std::fs::read_to_string(gw_dir.join("pepper")).unwrap();
    let old = generated.trim().to_string();
    assert_eq!(hex::decode(&old).unwrap().len(), 32, "one hex value");
    let hasher = LookupHasher::new(
        vec![
            Pepper {
                version: 1,
                secret: hex::decode(&old).unwrap(),
            },
            Pepper {
                version: 2,
                secret: NEW_PEPPER.to_vec(),
            },
        ],
        2,
    )
    .unwrap();
    let both = format!("# rotation\n1 {old}\n2 {}\n", hex::encode(NEW_PEPPER));

    // Versions 1 and 2, version 2 current.
    let gateway = start_with(restart_config(&gw_dir, &both, Some(2))).await;
    assert_eq!(gateway.store().hasher.current_version(), 2);
    for who in [ALICE, BOB, DAVE] {
        assert_eq!(
            bound_versions(&gateway, &hasher, who).await,
            vec![1],
            "{who}"
        );
    }
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    let found = bob.contact(ALICE).await.expect("alice is found");
    assert_eq!(found.box_id, boxes[0].1);
    assert_eq!(
        bound_versions(&gateway, &hasher, ALICE).await,
        vec![2],
        "the lookup moved alice's binding to the current version"
    );
    bob.send_text(ALICE, "still here?").await.unwrap();
    let carol = client(&gateway, dir.path().join("carol.state")).await;
    register(&carol, CAROL, &codes).await;
    assert_eq!(bound_versions(&gateway, &hasher, CAROL).await, vec![2]);
    assert_eq!(
        bound_versions(&gateway, &hasher, DAVE).await,
        vec![1],
        "nobody looked dave up"
    );
    let alice = client(&gateway, dir.path().join("alice.state")).await;
    let batch = alice.fetch(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    for c in [&bob, &carol, &alice] {
        c.close().await;
    }
    gateway.shutdown().await;

    // Version 1 removed too early: migrated users are found, dave is not.
    let only_new = format!("2 {}\n", hex::encode(NEW_PEPPER));
    let gateway = start_with(restart_config(&gw_dir, &only_new, None)).await;
    assert_eq!(gateway.store().hasher.current_version(), 2);
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    assert_eq!(bob.contact(ALICE).await.unwrap().box_id, boxes[0].1);
    bob.contact(CAROL).await.expect("carol is found");
    assert!(bob.contact(DAVE).await.is_err(), "dave was never migrated");
    bob.close().await;
    gateway.shutdown().await;

    // With version 1 back, dave is found again, and moves on this lookup.
    let gateway = start_with(restart_config(&gw_dir, &both, None)).await;
    let bob = client(&gateway, dir.path().join("bob.state")).await;
    assert_eq!(bob.contact(DAVE).await.unwrap().box_id, boxes[2].1);
    assert_eq!(bound_versions(&gateway, &hasher, DAVE).await, vec![2]);
    bob.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_current_version_missing_from_the_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = restart_config(
        dir.path(),
        &format!("1 {}\n", hex::encode([1u8; 32])),
        Some(2),
    );
    let message = Gateway::start(config).await.unwrap_err().to_string();
    assert!(message.contains("--pepper-version 2"), "{message}");
}
