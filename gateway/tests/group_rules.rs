//! What the gateway enforces of group membership (docs/protocol.md §9), through
//! real requests on loopback: a Commit that is not an MLS Commit of the group
//! and epoch, a member evicting the creator, a blocked user adding the box that
//! blocked it and an add of a contacts-only box by a stranger are each refused
//! with their status, and store nothing.

mod support;

use rossby_gateway::Gateway;
use rossby_keyspace::MessageId;
use rossby_protocol::pb::{self, Method, Status};
use support::{
    RawConn, RawDevice, assert_unchanged, codes_file, commit_envelope, expect_status, snapshot,
    start_gateway,
};

const GROUP_ID: [u8; 16] = [4; 16];

/// A Commit request of the group of `creator` made in `epoch`.
fn commit(
    creator: &RawDevice,
    epoch: u64,
    add: &[&RawDevice],
    remove: &[&RawDevice],
) -> pb::GroupCommitRequest {
    let boxes = |d: &[&RawDevice]| d.iter().map(|d| d.box_id.as_bytes().to_vec()).collect();
    pb::GroupCommitRequest {
        creator_box: creator.box_id.as_bytes().to_vec(),
        group_id: GROUP_ID.to_vec(),
        epoch,
        message_id: MessageId::new().as_bytes().to_vec(),
        add_boxes: boxes(add),
        remove_boxes: boxes(remove),
        envelope: commit_envelope(creator.box_id, GROUP_ID, epoch, b"commit", None),
        ..pb::GroupCommitRequest::default()
    }
}

struct Setup {
    gateway: Gateway,
    conn: RawConn,
    alice: RawDevice,
    bob: RawDevice,
    carol: RawDevice,
    dave: RawDevice,
}

/// Four users; Alice's group with Alice and Bob (epoch 1).
async fn setup(dir: &std::path::Path) -> Setup {
    let gateway = start_gateway(&dir.join("gw")).await;
    let codes = codes_file(&dir.join("gw"));
    let conn = RawConn::connect(&gateway).await;
    let alice = support::register_raw(&conn, &codes, "alice@example.com").await;
    let bob = support::register_raw(&conn, &codes, "bob@example.com").await;
    let carol = support::register_raw(&conn, &codes, "carol@example.com").await;
    let dave = support::register_raw(&conn, &codes, "dave@example.com").await;
    let create = pb::CreateGroupRequest {
        group_id: GROUP_ID.to_vec(),
    };
    let _: pb::CreateGroupResponse =
        support::ok(&conn.call(&alice, Method::CreateGroup, &create).await);
    let reply: pb::GroupCommitResponse = support::ok(
        &conn
            .call(
                &alice,
                Method::GroupCommit,
                &commit(&alice, 0, &[&bob], &[]),
            )
            .await,
    );
    assert_eq!(reply.state.unwrap().epoch, 1);
    Setup {
        gateway,
        conn,
        alice,
        bob,
        carol,
        dave,
    }
}

/// Sends `request` as `by`, expects `status`, and checks nothing was stored.
async fn refused(s: &Setup, by: &RawDevice, request: &pb::GroupCommitRequest, status: Status) {
    let before = snapshot(s.gateway.store()).await;
    let response = s.conn.call(by, Method::GroupCommit, request).await;
    expect_status(&response, status);
    assert_unchanged(
        "a refused Commit",
        &before,
        &snapshot(s.gateway.store()).await,
    );
}

async fn epoch(s: &Setup) -> (u64, usize) {
    let info = pb::GroupInfoRequest {
        creator_box: s.alice.box_id.as_bytes().to_vec(),
        group_id: GROUP_ID.to_vec(),
    };
    let reply: pb::GroupInfoResponse =
        support::ok(&s.conn.call(&s.alice, Method::GroupInfo, &info).await);
    let state = reply.state.unwrap();
    (state.epoch, state.members.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_commit_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    // The attack: a member "commits" bytes that are no MLS Commit at all.
    let mut garbage = commit(&s.alice, 1, &[], &[]);
    garbage.envelope = b"garbage".to_vec();
    refused(&s, &s.bob, &garbage, Status::BadRequest).await;
    // An MLS Commit of another epoch than the request's.
    let mut other_epoch = commit(&s.alice, 1, &[], &[]);
    other_epoch.envelope = commit_envelope(s.alice.box_id, GROUP_ID, 7, b"x", None);
    refused(&s, &s.bob, &other_epoch, Status::BadRequest).await;
    // An MLS Commit of another group.
    let mut other_group = commit(&s.alice, 1, &[], &[]);
    other_group.envelope = commit_envelope(s.bob.box_id, GROUP_ID, 1, b"x", None);
    refused(&s, &s.bob, &other_group, Status::BadRequest).await;
    assert_eq!(epoch(&s).await, (1, 2));
    s.conn.close().await;
    s.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_creator_removes_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    // The attack: a member evicts the creator with a well-formed Commit.
    refused(
        &s,
        &s.bob,
        &commit(&s.alice, 1, &[], &[&s.alice]),
        Status::Forbidden,
    )
    .await;
    assert_eq!(epoch(&s).await, (1, 2));
    // The creator may remove; the removed box may no longer commit.
    let _: pb::GroupCommitResponse = support::ok(
        &s.conn
            .call(
                &s.alice,
                Method::GroupCommit,
                &commit(&s.alice, 1, &[], &[&s.bob]),
            )
            .await,
    );
    assert_eq!(epoch(&s).await, (2, 1));
    refused(
        &s,
        &s.bob,
        &commit(&s.alice, 2, &[], &[]),
        Status::NotGroupMember,
    )
    .await;
    s.conn.close().await;
    s.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_respect_blocks_and_contacts_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path()).await;
    // Carol blocked Bob: Bob cannot pull her into the group.
    let block = pb::BlockRequest {
        box_id: s.bob.box_id.as_bytes().to_vec(),
        ..pb::BlockRequest::default()
    };
    let _: pb::BlockResponse = support::ok(&s.conn.call(&s.carol, Method::Block, &block).await);
    refused(
        &s,
        &s.bob,
        &commit(&s.alice, 1, &[&s.carol], &[]),
        Status::NotFound,
    )
    .await;
    // Alice, whom she did not block, can.
    let _: pb::GroupCommitResponse = support::ok(
        &s.conn
            .call(
                &s.alice,
                Method::GroupCommit,
                &commit(&s.alice, 1, &[&s.carol], &[]),
            )
            .await,
    );
    assert_eq!(epoch(&s).await, (2, 3));

    // Dave takes messages from contacts only: nobody else can add him...
    let settings = pb::UpdateSettingsRequest {
        contacts_only: Some(true),
        ..pb::UpdateSettingsRequest::default()
    };
    let _: pb::UpdateSettingsResponse = support::ok(
        &s.conn
            .call(&s.dave, Method::UpdateSettings, &settings)
            .await,
    );
    refused(
        &s,
        &s.alice,
        &commit(&s.alice, 2, &[&s.dave], &[]),
        Status::NotFound,
    )
    .await;
    // ...until he adds Alice to his contacts.
    let contact = pb::RequestKeyRequest {
        box_id: s.alice.box_id.as_bytes().to_vec(),
        add_contact: true,
        ..pb::RequestKeyRequest::default()
    };
    let _: pb::RequestKeyResponse =
        support::ok(&s.conn.call(&s.dave, Method::RequestKey, &contact).await);
    let _: pb::GroupCommitResponse = support::ok(
        &s.conn
            .call(
                &s.alice,
                Method::GroupCommit,
                &commit(&s.alice, 2, &[&s.dave], &[]),
            )
            .await,
    );
    assert_eq!(epoch(&s).await, (3, 4));
    s.conn.close().await;
    s.gateway.shutdown().await;
}
