//! A blob request frame's body from any peer: the codec's decoder must never panic, and what
//! it accepts must survive a round trip. (Serving it reads the blob store, which bounds the
//! part index and the page: `BlobStore::part` and `hashes`, tested in the node.)
#![no_main]

use hivemesh_node_fuzz::wire::decode_blob_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_blob_request(data) {
        let again = postcard::to_allocvec(&r).expect("a decoded request encodes");
        assert_eq!(decode_blob_request(&again).expect("and decodes"), r);
    }
});
