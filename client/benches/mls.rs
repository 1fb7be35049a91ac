//! Cost of MLS groups as Rossby configures them, in process (no gateway): the
//! time and bytes to add the 100th member to a group, and to send a message in a
//! 100-member group, with Rossby's hybrid post-quantum ciphersuite and, for
//! comparison, MLS' classical mandatory one.
//!
//! ```text
//! cargo bench -p rossby-client --bench mls
//! ROSSBY_MLS_BENCH_MEMBERS=10 ROSSBY_MLS_BENCH_ITERS=2 cargo bench -p rossby-client --bench mls   # smoke run
//! ```
//!
//! One member per user (one device each). Per iteration: the creator commits the
//! addition of a fresh member to a group of `MEMBERS - 1`; an existing member
//! processes the Commit; the newcomer joins from the Welcome; then the newcomer
//! is removed again (not timed). Sending: the creator encrypts a 100-byte text,
//! an existing member decrypts it. Bytes are the MLS messages and the Rossby
//! envelope that carries them (stored once per member box). Each suite ends
//! with a JSON line.

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use prost::Message as _;
use rossby_client::groups::mls::{self, MlsProvider};
use rossby_client::groups::state::GroupContent;
use rossby_protocol::crypto::DeviceKeys;
use rossby_protocol::pb;
use std::time::{Duration, Instant};

struct Member {
    provider: MlsProvider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

/// MLS' mandatory (classical) ciphersuite, measured next to Rossby's.
const CLASSICAL: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn member(suite: Ciphersuite, n: u32) -> Member {
    let provider = MlsProvider::default();
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("signer");
    signer.store(provider.storage()).expect("store signer");
    let mut box_id = [0u8; 16];
    box_id[..4].copy_from_slice(&n.to_be_bytes());
    let keys = DeviceKeys::generate();
    let credential = mls::own_credential(&keys, &box_id, &[7; 16], &signer);
    Member {
        provider,
        signer,
        credential,
    }
}

fn key_package(suite: Ciphersuite, m: &Member) -> KeyPackage {
    KeyPackage::builder()
        .leaf_node_capabilities(mls::capabilities())
        .build(suite, &m.provider, &m.signer, m.credential.clone())
        .expect("key package")
        .key_package()
        .clone()
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    mls::to_bytes(m).expect("encode")
}

fn protocol(b: &[u8]) -> ProtocolMessage {
    mls::from_bytes(b)
        .expect("decode")
        .try_into_protocol_message()
        .expect("protocol message")
}

/// The Rossby envelope around a group message (what each member box stores).
fn envelope_len(mls: Vec<u8>, welcome: Vec<u8>) -> usize {
    pb::Envelope {
        version: 1,
        sender_box: vec![1; 16],
        sender_device: vec![2; 16],
        message_id: vec![3; 16],
        group: Some(pb::GroupMessage {
            creator_box: vec![1; 16],
            group_id: vec![4; 16],
            mls,
            welcome,
            proposals: Vec::new(),
        }),
        ..pb::Envelope::default()
    }
    .encoded_len()
}

fn join(m: &Member, welcome: &[u8]) -> MlsGroup {
    let MlsMessageBodyIn::Welcome(w) = mls::from_bytes(welcome).expect("welcome").extract() else {
        panic!("not a welcome");
    };
    StagedWelcome::new_from_welcome(&m.provider, &mls::join_config(), w, None)
        .expect("staged welcome")
        .into_group(&m.provider)
        .expect("join")
}

fn process_commit(group: &mut MlsGroup, provider: &MlsProvider, commit: &[u8]) {
    let processed = group
        .process_message(provider, protocol(commit))
        .expect("process commit");
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!("not a commit");
    };
    group
        .merge_staged_commit(provider, *staged)
        .expect("merge commit");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let members = env_usize("ROSSBY_MLS_BENCH_MEMBERS", 100).max(3);
    let iters = env_usize("ROSSBY_MLS_BENCH_ITERS", 20).max(1);
    for suite in [mls::CIPHERSUITE, CLASSICAL] {
        run(suite, members, iters);
    }
}

fn run(suite: Ciphersuite, members: usize, iters: usize) {
    // A group of `members - 1`: the creator, one observer, and the rest.
    let creator = member(suite, 0);
    let mut group = MlsGroup::builder()
        .with_group_id(mls::mls_group_id(&[0; 16], &[9; 16]))
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(mls::MAX_PAST_EPOCHS)
        .with_capabilities(mls::capabilities())
        .with_group_context_extensions(mls::meta_extensions("bench", false).expect("ext"))
        .build(
            &creator.provider,
            &creator.signer,
            creator.credential.clone(),
        )
        .expect("group");
    let observer = member(suite, 1);
    let mut others: Vec<KeyPackage> = vec![key_package(suite, &observer)];
    for n in 2..(members as u32 - 1) {
        others.push(key_package(suite, &member(suite, n)));
    }
    let (_, welcome, _) = group
        .add_members(&creator.provider, &creator.signer, &others)
        .expect("initial add");
    group
        .merge_pending_commit(&creator.provider)
        .expect("merge initial add");
    let mut observed = join(&observer, &bytes(&welcome));
    assert_eq!(group.members().count(), members - 1);

    let mut commit_time = Vec::new();
    let mut process_time = Vec::new();
    let mut join_time = Vec::new();
    let (mut commit_bytes, mut welcome_bytes, mut commit_env, mut welcome_env) = (0, 0, 0, 0);
    for i in 0..iters {
        let newcomer = member(suite, 10_000 + i as u32);
        let kp = key_package(suite, &newcomer);
        let start = Instant::now();
        let (commit, welcome, _) = group
            .add_members(&creator.provider, &creator.signer, &[kp])
            .expect("add");
        group
            .merge_pending_commit(&creator.provider)
            .expect("merge add");
        let (commit, welcome) = (bytes(&commit), bytes(&welcome));
        commit_time.push(start.elapsed());
        commit_bytes = commit.len();
        welcome_bytes = welcome.len();
        commit_env = envelope_len(commit.clone(), Vec::new());
        welcome_env = envelope_len(commit.clone(), welcome.clone());
        assert_eq!(group.members().count(), members);

        let start = Instant::now();
        process_commit(&mut observed, &observer.provider, &commit);
        process_time.push(start.elapsed());

        let start = Instant::now();
        let joined = join(&newcomer, &welcome);
        join_time.push(start.elapsed());
        assert_eq!(joined.epoch(), group.epoch());

        // Back to `members - 1` for the next round.
        let leaf = group
            .members()
            .last()
            .map(|m| m.index)
            .expect("a last member");
        let (remove, _, _) = group
            .remove_members(&creator.provider, &creator.signer, &[leaf])
            .expect("remove");
        group
            .merge_pending_commit(&creator.provider)
            .expect("merge remove");
        process_commit(&mut observed, &observer.provider, &bytes(&remove));
    }

    // Sending in a group of `members`.
    let last = member(suite, 20_000);
    let (commit, _, _) = group
        .add_members(
            &creator.provider,
            &creator.signer,
            &[key_package(suite, &last)],
        )
        .expect("add last");
    group
        .merge_pending_commit(&creator.provider)
        .expect("merge last");
    process_commit(&mut observed, &observer.provider, &bytes(&commit));
    let text = GroupContent {
        sent_at_ms: 1,
        text: "x".repeat(100),
        ..GroupContent::default()
    }
    .encode_to_vec();
    let mut encrypt_time = Vec::new();
    let mut decrypt_time = Vec::new();
    let (mut message_bytes, mut message_env) = (0, 0);
    for _ in 0..iters {
        let start = Instant::now();
        let message = bytes(
            &group
                .create_message(&creator.provider, &creator.signer, &text)
                .expect("encrypt"),
        );
        encrypt_time.push(start.elapsed());
        message_bytes = message.len();
        message_env = envelope_len(message.clone(), Vec::new());
        let start = Instant::now();
        let processed = observed
            .process_message(&observer.provider, protocol(&message))
            .expect("decrypt");
        decrypt_time.push(start.elapsed());
        assert!(matches!(
            processed.into_content(),
            ProcessedMessageContent::ApplicationMessage(_)
        ));
    }
    let state_bytes = observer
        .provider
        .entries()
        .iter()
        .map(|e| e.key.len() + e.value.len())
        .sum::<usize>();

    let (ct, pt, jt) = (median(commit_time), median(process_time), median(join_time));
    let (et, dt) = (median(encrypt_time), median(decrypt_time));
    println!(
        "MLS groups, {suite}, {members} members, one device each, {iters} iterations (medians)"
    );
    println!(
        "add member {members}: commit {} us, commit {commit_bytes} B, welcome {welcome_bytes} B",
        us(ct)
    );
    println!(
        "  existing member processes the commit: {} us; newcomer joins: {} us",
        us(pt),
        us(jt)
    );
    println!(
        "  envelopes: {commit_env} B per existing member box, {welcome_env} B for the newcomer; {} B stored in all",
        commit_env * (members - 1) + welcome_env
    );
    println!(
        "send in {members} members: encrypt {} us, decrypt {} us, message {message_bytes} B, envelope {message_env} B, {} B stored in all",
        us(et),
        us(dt),
        message_env * members
    );
    println!("  a member's MLS state: {state_bytes} B");
    println!(
        "{{\"bench\":\"mls\",\"suite\":\"{suite}\",\"members\":{members},\"iterations\":{iters},\"add_commit_us\":{},\"add_process_us\":{},\"add_join_us\":{},\"add_commit_bytes\":{commit_bytes},\"add_welcome_bytes\":{welcome_bytes},\"add_stored_bytes\":{},\"send_encrypt_us\":{},\"send_decrypt_us\":{},\"send_message_bytes\":{message_bytes},\"send_envelope_bytes\":{message_env},\"send_stored_bytes\":{},\"member_state_bytes\":{state_bytes}}}",
        us(ct),
        us(pt),
        us(jt),
        commit_env * (members - 1) + welcome_env,
        us(et),
        us(dt),
        message_env * members
    );
}
