//! A malicious *signer*: a correctly framed and signed envelope around an arbitrary body, so
//! the fuzzer reaches the body decoder and the semantic checks behind the signature.
#![no_main]

use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::{AnySigned, Context, Timestamp};
use hivemesh_protocol_fuzz::signer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if body.len() > 20_000 {
        return;
    }
    let b = seal(kind % 8, body, &signer());
    let ctx = Context {
        campaign: None,
        now: Timestamp(0),
        max_age: None,
        max_skew: None,
    };
    if let Ok(m) = AnySigned::verify_and_decode(&b, &ctx) {
        assert_eq!(m.bytes(), &b[..]);
    }
});
