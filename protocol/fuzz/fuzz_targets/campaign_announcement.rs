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

use hivemesh_protocol_fuzz::announced_campaign;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = announced_campaign(data);
});
