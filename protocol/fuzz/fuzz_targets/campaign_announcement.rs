//! Campaign announcements (gossip topic `hivemesh/campaigns/1`, and sync's campaign lists): what
//! a node does with one before following it. The first byte picks the attacker:
//! - even: arbitrary bytes from the network, decoded as the node does (`decode_campaign`: verify
//!   and decode with the announcement context, then the kind must be `Campaign`);
//! - odd: a malicious *submitter*, the rest of the input a campaign body correctly sealed, so
//!   the fuzzer reaches the spec decoder and its validation behind the signature.
//!
//! An accepted spec must validate and have an id. Following it (a `Peer` built and ticked) is
//! `campaign_follow`'s business: it costs up to a generation-0 derivation per input, and
//! this target keeps to the decoder so that it can run its ten million inputs.
#![no_main]

use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::{AnySigned, CampaignId, Context, Kind};
use hivemesh_protocol_fuzz::{CREATED_AT, signer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (bytes, ctx) = if mode % 2 == 0 {
        (rest.to_vec(), Context::announcement(CREATED_AT))
    } else {
        let ctx = Context {
            campaign: None,
            ..Context::sync(CampaignId([0; 32]))
        };
        (seal(Kind::Campaign as u8, rest, &signer()), ctx)
    };
    let Ok(any) = AnySigned::verify_and_decode(&bytes, &ctx) else {
        return;
    };
    assert_eq!(any.bytes(), &bytes[..]);
    let AnySigned::Campaign(signed) = any else {
        return;
    };
    let spec = signed.message().clone();
    spec.validate()
        .expect("an accepted campaign spec validates");
    let _ = spec.id();
});
