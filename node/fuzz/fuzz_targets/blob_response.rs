//! A blob response frame's body from the peer a node is fetching a blob from, and what the
//! node does with it: the fetch (`node/src/fetch.rs`, fresh, asking this peer from offset 0)
//! takes the chunk; a chunk that asks for more is offered again (a peer repeating itself).
//! Nothing may panic, and a fetch may finish only with the blob's exact bytes.
#![no_main]

use hivemesh_node_fuzz::fetch::{BlobFetch, Step};
use hivemesh_node_fuzz::wire::{BlobResponse, decode_blob_response};
use hivemesh_node_fuzz::{BLOB, blob_id, provider};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = decode_blob_response(data) else {
        return;
    };
    let again = postcard::to_allocvec(&r).expect("a decoded response encodes");
    assert_eq!(decode_blob_response(&again).expect("and decodes"), r);
    let peer = provider();
    let mut fetch = BlobFetch::new(blob_id(), false);
    fetch.add_candidates([peer], true);
    assert_eq!(fetch.next_step(), Step::Request { peer, offset: 0 });
    match r {
        BlobResponse::Chunk {
            total,
            offset,
            data,
        } => {
            for _ in 0..2 {
                match fetch.on_chunk(peer, total, offset, data.clone()) {
                    Ok(Step::Done(bytes)) => assert_eq!(bytes, BLOB),
                    Ok(Step::Request { .. }) => continue,
                    Ok(_) | Err(_) => {}
                }
                break;
            }
        }
        BlobResponse::NotFound => {
            let _ = fetch.on_missing(peer, "not found");
        }
    }
});
