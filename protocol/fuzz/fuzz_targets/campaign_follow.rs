//! Campaign announcements, followed: what `campaign_announcement` does, and then what a node
//! does with an accepted one. The first byte picks the attacker:
//! - even: arbitrary bytes from the network, decoded as the node does (`decode_campaign`: verify
//!   and decode with the announcement context, then the kind must be `Campaign`);
//! - odd: a malicious *submitter*, the rest of the input a campaign body correctly sealed, so
//!   the fuzzer reaches the spec decoder and its validation behind the signature.
//!
//! An accepted spec must validate, and the node follows it: a `Peer` is built for it (with its
//! signer as the creator) and ticked once (generation 0 is derived, up to 20,000 jobs), which
//! must not panic either.
#![no_main]

use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput};
use hivemesh_protocol::{AnySigned, CampaignId, Context, Kind, Timestamp};
use hivemesh_protocol_fuzz::{CREATED_AT, receiver, signer};
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
    let now = Timestamp(spec.created_at.0.saturating_add(1));
    if let Ok(peer) = Peer::new(spec, receiver(), PeerConfig::default(), now) {
        let mut peer = peer.with_creator(signed.signer());
        let _ = peer.handle(PeerInput::Tick, now);
    }
});
