//! Proposals from a roster member of a known campaign: the input is a proposal's postcard
//! body after its campaign id (the harness puts the fixture campaign's id in front, so every
//! input is a proposal *for this campaign*), sealed by a roster member. What a node does with
//! it: verify and decode (the proposal's structural checks run in the decoder), then hand it
//! to a freshly started peer of the campaign, whose consensus checks the closure against what
//! the peer knows (the proposal environment of `peer/proposal.rs`). Nothing may panic.
#![no_main]

use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput};
use hivemesh_protocol::{AnySigned, Context, Kind, Message, Timestamp};
use hivemesh_protocol_fuzz::{CREATED_AT, campaign, derivations, receiver, signer, spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = campaign();
    let mut body = id.0.to_vec();
    body.extend_from_slice(data);
    let bytes = seal(Kind::Proposal as u8, &body, &signer());
    let Ok(any) = AnySigned::verify_and_decode(&bytes, &Context::sync(id)) else {
        return;
    };
    let AnySigned::Proposal(p) = &any else {
        panic!("a proposal envelope decoded as {:?}", any.kind());
    };
    p.message()
        .validate()
        .expect("a decoded proposal passes its own checks");
    let _ = p.message().closure.root();
    let now = Timestamp(CREATED_AT.0 + 2_000);
    let mut peer = Peer::with_derivation_cache(
        spec(),
        receiver(),
        PeerConfig::default(),
        now,
        derivations(),
    )
    .expect("the fixture campaign starts");
    let _ = peer.handle(PeerInput::Tick, now);
    let _ = peer.handle(PeerInput::Message(any), now);
});
