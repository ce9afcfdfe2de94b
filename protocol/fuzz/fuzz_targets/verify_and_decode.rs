//! Arbitrary bytes from the network: parsing, verification and decoding must never panic,
//! and anything accepted must re-encode to exactly the input.
#![no_main]

use hivemesh_protocol::{AnySigned, CampaignId, Context, Envelope, Timestamp, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ctx = Context::sync(CampaignId([0; 32]));
    let any = Context {
        campaign: None,
        now: Timestamp(0),
        max_age: None,
        max_skew: None,
    };
    if let Ok(m) = AnySigned::verify_and_decode(data, &any) {
        assert_eq!(m.bytes(), data);
    }
    let _ = AnySigned::verify_and_decode(data, &ctx);
    if let Ok(env) = Envelope::parse(data) {
        let mut v = Verifier::default();
        let _ = v.verify(env);
        let _ = v.verify_batch(vec![env, env]);
    }
});
