//! Consensus messages of a known campaign, in sequence: proposals, votes (stalls included) and
//! regeneses (ADR 0006), each sealed by the campaign's creator, who is also a roster member,
//! and handed one after the other to a started peer that knows the creator. Two voters: one
//! stall ends an epoch, so the fuzzer can reach the adoption of a regenesis, the next epoch's
//! votes and the votes held for it.
//!
//! Input: repeated `[selector][len: u16 LE][body]`; the selector picks the kind (proposal, vote,
//! regenesis, by `selector % 3`) and the body follows the campaign id (the harness puts the
//! fixture campaign's id in front). At most 16 messages per input. Nothing may panic.
#![no_main]

use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput};
use hivemesh_protocol::{AnySigned, Context, Kind, Timestamp};
use hivemesh_protocol_fuzz::{CREATED_AT, campaign, derivations, receiver, signer, spec};
use libfuzzer_sys::fuzz_target;

const KINDS: [Kind; 3] = [Kind::Proposal, Kind::Vote, Kind::Regenesis];

fuzz_target!(|data: &[u8]| {
    let id = campaign();
    let mut now = Timestamp(CREATED_AT.0 + 2_000);
    let mut peer = Peer::with_derivation_cache(
        spec(),
        receiver(),
        PeerConfig::default(),
        now,
        derivations(),
    )
    .expect("the fixture campaign starts")
    .with_creator(signer().public());
    let _ = peer.handle(PeerInput::Tick, now);
    let mut rest = data;
    for _ in 0..16 {
        let [selector, lo, hi, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let kind = KINDS[usize::from(*selector) % KINDS.len()];
        let mut body = id.0.to_vec();
        body.extend_from_slice(chunk);
        let bytes = seal(kind as u8, &body, &signer());
        let Ok(any) = AnySigned::verify_and_decode(&bytes, &Context::sync(id)) else {
            continue;
        };
        assert_eq!(any.kind(), kind, "decoded as another kind");
        // Time moves on a little with each message (timeouts and stalls fall due).
        now = Timestamp(now.0 + u64::from(*selector) * 1_000);
        let _ = peer.handle(PeerInput::Message(any), now);
        let _ = peer.handle(PeerInput::Tick, now);
    }
});
