//! Writes seed corpora of valid encodings: `cargo run --example seeds` (in `protocol/fuzz`)
//! fills `corpus/<target>/`.

use std::fs;
use std::path::Path;

use hivemesh_protocol::Kind;
use hivemesh_protocol::consensus::EPOCH_ROUNDS;
use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::{Regenesis, Step, Timestamp, Vote};
use hivemesh_protocol_fuzz::{
    CREATED_AT, campaign, proposals, receiver, signer, spec_body, spec_envelope,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus folder");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

/// One `consensus` input message: selector, length, the body after the campaign id.
fn framed(selector: u8, body: &[u8]) -> Vec<u8> {
    let rest = &body[32..];
    let len = u16::try_from(rest.len()).expect("a small body");
    [[selector].as_slice(), &len.to_le_bytes(), rest].concat()
}

/// The creator stalls generation 0's vote, hands it to itself, and prevotes in epoch 1.
fn stall_then_regenesis() -> Vec<u8> {
    let regenesis = regenesis_to_signer();
    let enc = |v: &Vote| postcard::to_allocvec(v).expect("a vote encodes");
    [
        framed(1, &enc(&vote(0, Step::Stall))),
        framed(2, &postcard::to_allocvec(&regenesis).expect("encodes")),
        framed(1, &enc(&vote(EPOCH_ROUNDS, Step::Prevote))),
    ]
    .concat()
}

/// A nil vote of the creator ([`signer`]) in generation 0 of the fixture campaign.
fn vote(round: u32, step: Step) -> Vote {
    Vote {
        campaign: campaign(),
        generation: 0,
        round,
        step,
        root: None,
        issued_at: Timestamp(CREATED_AT.0 + 1_000),
    }
}

/// The creator hands generation 0's vote to itself alone, in epoch 1.
fn regenesis_to_signer() -> Regenesis {
    Regenesis {
        campaign: campaign(),
        generation: 0,
        epoch: 1,
        voters: vec![signer().public()],
        issued_at: Timestamp(CREATED_AT.0 + 1_000),
    }
}

fn main() {
    let envelope = spec_envelope();
    let body = spec_body();
    for target in ["campaign_announcement", "campaign_follow"] {
        write(target, "raw", &[[0].as_slice(), &envelope].concat());
        write(target, "sealed", &[[1].as_slice(), &body].concat());
    }
    write("consensus", "stall_then_regenesis", &stall_then_regenesis());
    write("verify_and_decode", "campaign", &envelope);
    write(
        "signed_body",
        "campaign",
        &[[Kind::Campaign as u8].as_slice(), &body].concat(),
    );
    for (i, p) in proposals().iter().enumerate() {
        let body = postcard::to_allocvec(p).expect("a proposal encodes");
        write("proposal", &format!("p{i}"), &body[32..]);
        write(
            "signed_body",
            &format!("proposal{i}"),
            &[[Kind::Proposal as u8].as_slice(), &body].concat(),
        );
        let env = seal(Kind::Proposal as u8, &body, &receiver());
        write("verify_and_decode", &format!("proposal{i}"), &env);
    }
    // The stall and regenesis of `consensus`'s seed, as whole bodies and sealed envelopes.
    let stall = vote(0, Step::Stall);
    let regenesis = regenesis_to_signer();
    for (name, kind, body) in [
        (
            "stall",
            Kind::Vote,
            postcard::to_allocvec(&stall).expect("encodes"),
        ),
        (
            "regenesis",
            Kind::Regenesis,
            postcard::to_allocvec(&regenesis).expect("encodes"),
        ),
    ] {
        write(
            "signed_body",
            name,
            &[[kind as u8].as_slice(), &body].concat(),
        );
        write(
            "verify_and_decode",
            name,
            &seal(kind as u8, &body, &signer()),
        );
    }
    println!("seeds written under corpus/");
}
