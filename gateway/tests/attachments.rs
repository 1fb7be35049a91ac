//! Attachments through a real gateway on loopback, blobs in a local directory
//! (the default object store): see `attachment_flow` for the flow.

mod attachment_flow;
mod support;

use rossby_gateway::blobstore::{BlobStore, BlobStoreConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_on_the_local_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("gw").join("blobs");
    let root = blobs.clone();
    let tamper: attachment_flow::Tamper =
        Box::new(move |objects: &BlobStore, blob_id: &[u8], index: u32| {
            // Modify the object's file on disk, in place.
            let name = objects.part_path(blob_id, index);
            assert!(
                !name.as_ref().contains(&hex::encode(blob_id)),
                "objects are named by a hash of the blob id: {name}"
            );
            let path = root.join(name.as_ref());
            Box::pin(async move {
                let mut bytes = std::fs::read(&path).expect("the part's file exists");
                bytes[100] ^= 0x01;
                std::fs::write(&path, bytes).expect("the part's file is writable");
            })
        });
    attachment_flow::run(dir.path(), BlobStoreConfig::Local(blobs), tamper).await;
}
