//! A malicious *signer*: a correctly framed and signed envelope around an arbitrary body, so
//! the fuzzer reaches the body decoder and the semantic checks behind the signature.
#![no_main]

use hivemesh_protocol::envelope::{SIGNING_DOMAIN, VERSION};
use hivemesh_protocol::{AnySigned, Context, Keypair, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if body.len() > 20_000 {
        return;
    }
    let key = Keypair::from_secret_bytes([7; 32]);
    let mut b = vec![VERSION, kind % 8];
    let mut n = body.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            b.push(byte);
            break;
        }
        b.push(byte | 0x80);
    }
    b.extend_from_slice(body);
    let sig = key.sign(&[SIGNING_DOMAIN, &b].concat());
    b.extend_from_slice(key.public().as_bytes());
    b.extend_from_slice(&sig);
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
