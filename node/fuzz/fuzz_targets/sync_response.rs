//! A sync response frame's body from any peer, and what the node does with it before its
//! ledger sees anything: every listed campaign is verified and decoded as a campaign
//! announcement (history of any age; the kind must be `Campaign`), every listed message is
//! verified and decoded bound to the named campaign. Nothing may panic; anything accepted
//! keeps its exact bytes.
#![no_main]

use hivemesh_node_fuzz::wire::{SyncResponse, decode_sync_response};
use hivemesh_protocol::{AnySigned, CampaignId, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = decode_sync_response(data) else {
        return;
    };
    let again = postcard::to_allocvec(&r).expect("a decoded response encodes");
    assert_eq!(decode_sync_response(&again).expect("and decodes"), r);
    match r {
        SyncResponse::Campaigns(list) => {
            let ctx = Context {
                campaign: None,
                ..Context::sync(CampaignId([0; 32]))
            };
            for bytes in list {
                if let Ok(AnySigned::Campaign(s)) = AnySigned::verify_and_decode(&bytes, &ctx) {
                    assert_eq!(s.bytes(), &bytes[..]);
                    s.message().validate().expect("an accepted spec validates");
                }
            }
        }
        SyncResponse::Messages {
            campaign, messages, ..
        } => {
            for bytes in messages {
                if let Ok(m) = AnySigned::verify_and_decode(&bytes, &Context::sync(campaign)) {
                    assert_eq!(m.bytes(), &bytes[..]);
                }
            }
        }
        SyncResponse::Unknown => {}
    }
});
