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

use hivemesh_protocol::Timestamp;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput};
use hivemesh_protocol_fuzz::{announced_campaign, receiver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(signed) = announced_campaign(data) else {
        return;
    };
    let spec = signed.message().clone();
    let now = Timestamp(spec.created_at.0.saturating_add(1));
    if let Ok(peer) = Peer::new(spec, receiver(), PeerConfig::default(), now) {
        let mut peer = peer.with_creator(signed.signer());
        let _ = peer.handle(PeerInput::Tick, now);
    }
});
