//! Writes seed corpora of valid encodings: `cargo run --example seeds` (in `node/fuzz`) fills
//! `corpus/<target>/`. The sync response seeds carry the protocol fuzz crate's signed seeds
//! (`protocol/fuzz/corpus/verify_and_decode/`, written by its own `seeds` example) when they
//! are there.

use std::fs;
use std::path::Path;

use hivemesh_node_fuzz::wire::{BlobRequest, BlobResponse, SyncRequest, SyncResponse};
use hivemesh_node_fuzz::{BLOB, blob_id};
use hivemesh_protocol::{AnySigned, CampaignId, Context};
use serde::Serialize;

fn write<M: Serialize>(target: &str, name: &str, m: &M) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus folder");
    let bytes = postcard::to_allocvec(m).expect("a seed encodes");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn signed_seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let dir = Path::new("../../protocol/fuzz/corpus/verify_and_decode");
    let read = |name: &str| fs::read(dir.join(name)).ok();
    let campaigns = read("campaign").into_iter().collect();
    let messages = (0..6)
        .filter_map(|i| read(&format!("proposal{i}")))
        .collect();
    (campaigns, messages)
}

fn main() {
    let campaign = CampaignId([0x42; 32]);
    write("sync_request", "campaigns", &SyncRequest::Campaigns);
    write(
        "sync_request",
        "messages",
        &SyncRequest::Messages {
            campaign,
            from: 300,
        },
    );
    let (campaigns, messages) = signed_seeds();
    // The proposals' campaign is the spec's: its id is what sync binds them to.
    let any = Context {
        campaign: None,
        ..Context::sync(campaign)
    };
    let spec_campaign = match campaigns
        .first()
        .map(|c| AnySigned::verify_and_decode(c, &any))
    {
        Some(Ok(AnySigned::Campaign(s))) => s.message().id(),
        _ => campaign,
    };
    write(
        "sync_response",
        "campaigns",
        &SyncResponse::Campaigns(campaigns),
    );
    write(
        "sync_response",
        "messages",
        &SyncResponse::Messages {
            campaign: spec_campaign,
            messages,
            next: 7,
        },
    );
    write("sync_response", "unknown", &SyncResponse::Unknown);
    write(
        "blob_request",
        "hashes",
        &BlobRequest::Hashes {
            id: blob_id(),
            from: 0,
            max: 8192,
        },
    );
    write(
        "blob_request",
        "part",
        &BlobRequest::Part {
            id: blob_id(),
            index: 1,
        },
    );
    let total = BLOB.len() as u64;
    write(
        "blob_response",
        "hashes",
        &BlobResponse::Hashes {
            total,
            from: 0,
            cvs: Vec::new(),
        },
    );
    write(
        "blob_response",
        "part",
        &BlobResponse::Part {
            index: 0,
            data: BLOB.to_vec(),
        },
    );
    write("blob_response", "missing", &BlobResponse::NotFound);
    println!("seeds written under corpus/");
}
