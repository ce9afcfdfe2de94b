//! A blob response frame's body from the peer a node is fetching a blob from, and what the
//! node does with it (`node/src/fetch.rs`): taken once as the answer to the first request (the
//! size and outboard), and once as the answer to a part request after an honest outboard.
//! Nothing may panic, and a part may be accepted only with the blob's exact bytes.
#![no_main]

use hivemesh_node_fuzz::fetch::{BlobFetch, Want};
use hivemesh_node_fuzz::wire::{BlobResponse, decode_blob_response};
use hivemesh_node_fuzz::{BLOB, blob_id, provider};
use libfuzzer_sys::fuzz_target;

fn answer(fetch: &mut BlobFetch, r: &BlobResponse) -> bool {
    let peer = provider();
    match r.clone() {
        BlobResponse::Hashes { total, from, cvs } => {
            let _ = fetch.on_hashes(peer, total, from, cvs);
            false
        }
        BlobResponse::Part { index, data } => {
            let ok = fetch.on_part(peer, index, &data) == Ok(true);
            if ok {
                assert_eq!(data, BLOB, "only the blob's bytes verify");
            }
            ok
        }
        BlobResponse::NotFound => {
            fetch.on_missing(peer, "not found");
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(r) = decode_blob_response(data) else {
        return;
    };
    let again = postcard::to_allocvec(&r).expect("a decoded response encodes");
    assert_eq!(decode_blob_response(&again).expect("and decodes"), r);
    let peer = provider();
    // As the first answer.
    let mut fresh = BlobFetch::new(blob_id(), 1 << 20, false);
    fresh.add_candidates([peer], true);
    assert!(!fresh.poll().is_empty());
    answer(&mut fresh, &r);
    let _ = fresh.poll();
    let _ = fresh.state();
    // As the answer to a part request.
    let mut parts = BlobFetch::new(blob_id(), 1 << 20, false);
    parts.add_candidates([peer], true);
    parts.poll();
    assert_eq!(parts.on_hashes(peer, BLOB.len() as u64, 0, Vec::new()), Ok(true));
    let asks = parts.poll();
    assert!(asks.iter().any(|a| a.want == Want::Part(0)));
    if answer(&mut parts, &r) {
        assert_eq!(parts.have(), BLOB.len() as u64);
    }
    let _ = parts.state();
});
