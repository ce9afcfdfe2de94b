//! A sync request frame's body from any peer: the codec's decoder must never panic, and what
//! it accepts must survive a round trip.
#![no_main]

use hivemesh_node_fuzz::wire::decode_sync_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_sync_request(data) {
        let again = postcard::to_allocvec(&r).expect("a decoded request encodes");
        assert_eq!(decode_sync_request(&again).expect("and decodes"), r);
    }
});
