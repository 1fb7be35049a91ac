//! The attachment flow both object stores must pass (local directory and S3 via
//! moto): a 50 MiB file uploaded by one device, the upload interrupted (the
//! uploading process goes away mid-upload) and resumed by a new process, sent in
//! a message and downloaded intact by two devices of another account, sent to a
//! group and downloaded intact by its other member; a tampered stored part
//! fails the download naming the chunk; a blob id nobody was given answers
//! NOT_FOUND; the size limit and the quota answer their statuses; after the
//! retention the blob and its objects are gone, and so is an upload never
//! completed.

use crate::support::{
    RawConn, RawDevice, bounded, client, codes_file, credentials_of, expect_status, keys_of, link,
    ok, register, start_with,
};
use rossby_client::{Body, Client};
use rossby_gateway::Config;
use rossby_gateway::blobstore::{BlobStore, BlobStoreConfig};
use rossby_protocol::pb::{self, Method, Status};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ALICE: &str = "alice@example.com";
const BOB: &str = "+14155550123";
const CAROL: &str = "carol@example.com";
const MIB: u64 = 1024 * 1024;
/// The file: 50 MiB.
const FILE_SIZE: usize = 50 * 1024 * 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Deterministic pseudo-random bytes (xorshift), so the file does not compress.
fn file_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// How a test changes one stored part in place (the store's own way: a file on
/// disk, an object in the bucket).
pub type Tamper = Box<
    dyn Fn(
            &BlobStore,
            &[u8],
            u32,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

fn uploaded_bytes(gateway: &rossby_gateway::Gateway) -> u64 {
    gateway
        .metrics()
        .blob_bytes_total
        .with_label_values(&["uploaded"])
        .get()
}

async fn raw_device(client: &Client) -> RawDevice {
    let state = client.state().await;
    RawDevice {
        keys: keys_of(client).await,
        device_id: rossby_keyspace::DeviceId::from_bytes(
            state.device_id.as_slice().try_into().unwrap(),
        )
        .unwrap(),
        box_id: rossby_keyspace::BoxId::from_bytes(state.box_id.as_slice().try_into().unwrap())
            .unwrap(),
        creds: credentials_of(client).await,
    }
}

/// Runs the whole flow against a gateway storing blobs in `blob_store`;
/// `tamper` flips a byte of a stored part.
pub async fn run(dir: &Path, blob_store: BlobStoreConfig, tamper: Tamper) {
    let gw_dir = dir.join("gw");
    let mut config = Config::for_tests(&gw_dir);
    config.blob_store = blob_store.clone();
    // A short retention (the blob lives this long after the send that
    // referenced it); maintenance rounds are driven by hand.
    config.api.limits.retention_ms = 5_000;
    config.api.attachments.quota_bytes = 120 * MIB;
    config.maintenance_interval = Duration::from_secs(3600);
    config.maintenance_lease = Duration::from_secs(7200);
    let gateway = start_with(config).await;
    let codes = codes_file(&gw_dir);
    let objects = BlobStore::open(
        &blob_store,
        Arc::new(rossby_gateway::metrics::Metrics::new()),
    )
    .expect("the test's view of the object store");

    let alice_state = dir.join("alice.state");
    let alice = Arc::new(client(&gateway, alice_state.clone()).await);
    register(&alice, ALICE, &codes).await;
    let bob1 = client(&gateway, dir.join("bob1.state")).await;
    let bob2 = client(&gateway, dir.join("bob2.state")).await;
    let bob_box = register(&bob1, BOB, &codes).await;
    link(&bob1, &bob2).await;

    let started_at = std::time::Instant::now();
    let data = file_bytes(FILE_SIZE);
    let file = dir.join("holiday video.mp4");
    std::fs::write(&file, &data).unwrap();

    // The upload is interrupted: the uploading process goes away after about
    // ten parts arrived.
    let uploading = {
        let alice = alice.clone();
        let file = file.clone();
        tokio::spawn(async move { alice.upload_attachment(&file, None).await })
    };
    bounded("ten parts uploaded", async {
        while uploaded_bytes(&gateway) < 10 * MIB {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    uploading.abort();
    assert!(
        uploading.await.is_err(),
        "the upload was interrupted, not finished"
    );
    let alice = Arc::into_inner(alice).expect("the aborted upload let go of the client");
    alice.close().await;
    drop(alice);
    let before_resume = uploaded_bytes(&gateway);
    assert!(
        before_resume < FILE_SIZE as u64,
        "interrupted before the end"
    );

    // A new process finds the pending upload in the state file and finishes it,
    // sending only the missing parts.
    let alice = client(&gateway, alice_state).await;
    assert_eq!(alice.pending_uploads().await.len(), 1);
    let resumed = Duration::from_secs(240);
    let mut results = tokio::time::timeout(resumed, alice.resume_uploads())
        .await
        .expect("the resumed upload finishes")
        .expect("resume_uploads");
    assert_eq!(results.len(), 1);
    let (path, result) = results.remove(0);
    assert_eq!(path, file);
    let attachment = result.expect("the resumed upload completes");
    assert!(alice.pending_uploads().await.is_empty());
    eprintln!("upload resumed and done after {:?}", started_at.elapsed());
    let ciphertext =
        attachment.size + 16 * attachment.size.div_ceil(u64::from(attachment.chunk_size));
    let total_uploaded = uploaded_bytes(&gateway);
    assert!(
        total_uploaded < ciphertext + 8 * MIB,
        "the resumption sent only what was missing: {total_uploaded} bytes for {ciphertext}"
    );
    assert_eq!(attachment.size, FILE_SIZE as u64);
    assert_eq!(attachment.file_name, "holiday video.mp4");
    assert_eq!(attachment.media_type, "video/mp4");
    assert_eq!(attachment.blob_id.len(), 32);
    assert_eq!(
        objects.count_objects(&attachment.blob_id).await.unwrap(),
        51
    );

    // A connection lost in the middle of an upload: the SDK reconnects and
    // carries on by itself.
    let small = dir.join("voice note.ogg");
    std::fs::write(&small, file_bytes(6 * MIB as usize)).unwrap();
    let base = uploaded_bytes(&gateway);
    let (voice, ()) = tokio::join!(alice.upload_attachment(&small, None), async {
        bounded("a part of the voice note", async {
            while uploaded_bytes(&gateway) < base + 2 * MIB {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        alice.connection().reset().await;
    });
    let voice = voice.expect("the upload survives a lost connection");
    assert_eq!(voice.media_type, "audio/ogg");
    assert!(alice.pending_uploads().await.is_empty());

    // Alice sends it to Bob in a message: the reference travels end to end;
    // the gateway sees only the blob id, which keeps the blob for the retention.
    let conn = RawConn::connect(&gateway).await;
    let alice_raw = raw_device(&alice).await;
    let message = pb::RichMessage {
        text: "our holiday".into(),
        attachments: vec![attachment.clone()],
        location: None,
    };
    let sent = alice.send_message(BOB, message.clone()).await.unwrap();
    assert_eq!(sent.to_box, bob_box);

    // Both of Bob's devices find it in the message and download it intact.
    for (n, bob) in [&bob1, &bob2].into_iter().enumerate() {
        let batch = bob.fetch(Duration::ZERO).await.unwrap();
        let bodies: Vec<Body> = batch.messages.into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, vec![Body::Message(message.clone())]);
        let out = dir.join(format!("bob{n}-downloads"));
        std::fs::create_dir_all(&out).unwrap();
        let got = tokio::time::timeout(
            Duration::from_secs(240),
            bob.download_attachment(&message.attachments[0], &out),
        )
        .await
        .expect("the download finishes")
        .expect("the download succeeds");
        assert_eq!(got, out.join("holiday video.mp4"));
        assert!(
            std::fs::read(&got).unwrap() == data,
            "the download is the file"
        );
        // A second download does not overwrite the first.
        if n == 0 {
            let again = bob.download_attachment(&attachment, &out).await.unwrap();
            assert_eq!(again, out.join("holiday video (1).mp4"));
            std::fs::remove_file(again).unwrap();
        }
    }

    // And to a group: the MLS message carries the reference.
    let carol = client(&gateway, dir.join("carol.state")).await;
    register(&carol, CAROL, &codes).await;
    alice.create_group("trip").await.unwrap();
    alice.add_to_group("trip", CAROL).await.unwrap();
    let joined: Vec<Body> = carol
        .fetch(Duration::ZERO)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(joined, vec![Body::GroupJoined("trip".into())]);
    alice
        .send_message_to_group("trip", message.clone())
        .await
        .unwrap();
    let batch = carol.fetch(Duration::ZERO).await.unwrap();
    let bodies: Vec<Body> = batch.messages.into_iter().map(|m| m.body).collect();
    assert_eq!(
        bodies,
        vec![Body::GroupMessage {
            group: "trip".into(),
            message: message.clone(),
        }]
    );
    let out = dir.join("carol-downloads");
    std::fs::create_dir_all(&out).unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(240),
        carol.download_attachment(&message.attachments[0], &out),
    )
    .await
    .expect("the group member's download finishes")
    .expect("the group member's download succeeds");
    assert!(
        std::fs::read(&got).unwrap() == data,
        "the group member's download is the file"
    );

    // The raw connection idled through the downloads: a fresh one.
    conn.close().await;
    let conn = RawConn::connect(&gateway).await;
    eprintln!("downloads done after {:?}", started_at.elapsed());

    // A tampered stored part fails the download with an error naming the chunk
    // (part 3 starts at chunk 48 of 64 KiB chunks), and leaves no file.
    tamper(&objects, &attachment.blob_id, 3).await;
    let out = dir.join("tampered");
    std::fs::create_dir_all(&out).unwrap();
    let err = bob1
        .download_attachment(&attachment, &out)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("chunk 48 of 801"), "{message}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no partial file is left"
    );

    // Without the capability: NOT_FOUND, whatever the id looks like.
    let bob_raw = raw_device(&bob1).await;
    let mut guessed = attachment.blob_id.clone();
    guessed[31] ^= 1;
    for blob_id in [rand::random::<[u8; 32]>().to_vec(), guessed] {
        let reply = conn
            .call(
                &bob_raw,
                Method::DownloadPart,
                &pb::DownloadPartRequest { blob_id, index: 0 },
            )
            .await;
        expect_status(&reply, Status::NotFound);
    }
    // Another account cannot see or complete Alice's upload either.
    let reply = conn
        .call(
            &bob_raw,
            Method::UploadStatus,
            &pb::UploadStatusRequest {
                blob_id: attachment.blob_id.clone(),
            },
        )
        .await;
    expect_status(&reply, Status::NotFound);

    // Limits: too large for one attachment; over the account's quota (50 MiB
    // stored of 120).
    let reply = conn
        .call(
            &alice_raw,
            Method::CreateUpload,
            &pb::CreateUploadRequest {
                size: 100 * MIB + 1,
            },
        )
        .await;
    expect_status(&reply, Status::TooLarge);
    let reply = conn
        .call(
            &alice_raw,
            Method::CreateUpload,
            &pb::CreateUploadRequest { size: 80 * MIB },
        )
        .await;
    expect_status(&reply, Status::QuotaExceeded);

    // An upload that is never completed: one part of two stored.
    let started: pb::CreateUploadResponse = ok(&conn
        .call(
            &alice_raw,
            Method::CreateUpload,
            &pb::CreateUploadRequest { size: MIB + 10 },
        )
        .await);
    let part = pb::UploadPartRequest {
        blob_id: started.blob_id.clone(),
        index: 0,
        data: vec![1; MIB as usize],
    };
    ok::<pb::UploadPartResponse>(&conn.call(&alice_raw, Method::UploadPart, &part).await);
    let reply = conn
        .call(
            &alice_raw,
            Method::CompleteUpload,
            &pb::CompleteUploadRequest {
                blob_id: started.blob_id.clone(),
            },
        )
        .await;
    expect_status(&reply, Status::UploadIncomplete);
    let status: pb::UploadStatusResponse = ok(&conn
        .call(
            &alice_raw,
            Method::UploadStatus,
            &pb::UploadStatusRequest {
                blob_id: started.blob_id.clone(),
            },
        )
        .await);
    assert_eq!(status.missing, vec![1]);
    // A part of the wrong size changes nothing.
    let bad = pb::UploadPartRequest {
        blob_id: started.blob_id.clone(),
        index: 1,
        data: vec![1; 11],
    };
    expect_status(
        &conn.call(&alice_raw, Method::UploadPart, &bad).await,
        Status::BadRequest,
    );

    // Before the retention passed, the maintenance keeps everything.
    gateway.maintenance().round(now_ms()).await;
    assert_eq!(
        objects.count_objects(&attachment.blob_id).await.unwrap(),
        51
    );
    // After the retention (and the upload deadline), the blob, the unfinished
    // upload and all their objects are gone.
    let later = now_ms() + 2 * 86_400_000;
    gateway.maintenance().round(later).await;
    assert_eq!(objects.count_objects(&attachment.blob_id).await.unwrap(), 0);
    assert_eq!(objects.count_objects(&started.blob_id).await.unwrap(), 0);
    let reply = conn
        .call(
            &bob_raw,
            Method::DownloadPart,
            &pb::DownloadPartRequest {
                blob_id: attachment.blob_id.clone(),
                index: 0,
            },
        )
        .await;
    expect_status(&reply, Status::NotFound);
    // The quota is free again: the 80 MiB upload fits now.
    ok::<pb::CreateUploadResponse>(
        &conn
            .call(
                &alice_raw,
                Method::CreateUpload,
                &pb::CreateUploadRequest { size: 80 * MIB },
            )
            .await,
    );
    // A deleted account's attachments: unreachable at once, and their objects
    // go with the purge and the next sweep.
    let parting = dir.join("parting.txt");
    std::fs::write(&parting, b"goodbye").unwrap();
    let last = alice
        .upload_attachment(&parting, None)
        .await
        .expect("upload");
    assert_eq!(last.media_type, "text/plain");
    assert_eq!(objects.count_objects(&last.blob_id).await.unwrap(), 1);
    ok::<pb::DeleteAccountResponse>(
        &conn
            .call(
                &alice_raw,
                Method::DeleteAccount,
                &pb::DeleteAccountRequest {},
            )
            .await,
    );
    let reply = conn
        .call(
            &bob_raw,
            Method::DownloadPart,
            &pb::DownloadPartRequest {
                blob_id: last.blob_id.clone(),
                index: 0,
            },
        )
        .await;
    expect_status(&reply, Status::NotFound);
    // One round purges the account (filing its blobs as due), the next at the
    // latest deletes their objects.
    for _ in 0..2 {
        gateway.maintenance().round(now_ms()).await;
    }
    assert_eq!(objects.count_objects(&last.blob_id).await.unwrap(), 0);
    assert_eq!(
        gateway
            .metrics()
            .blob_store_errors_total
            .with_label_values(&["put"])
            .get(),
        0
    );
    conn.close().await;
    alice.close().await;
    bob1.close().await;
    bob2.close().await;
    gateway.shutdown().await;
}
