//! Writes seed corpora of valid encodings: `cargo run --example seeds` (in `protocol/fuzz`)
//! fills `corpus/<target>/`.

use std::fs;
use std::path::Path;

use hivemesh_protocol::Kind;
use hivemesh_protocol::envelope::seal;
use hivemesh_protocol_fuzz::{proposals, receiver, spec_body, spec_envelope};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus folder");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let envelope = spec_envelope();
    let body = spec_body();
    write(
        "campaign_announcement",
        "raw",
        &[[0].as_slice(), &envelope].concat(),
    );
    write(
        "campaign_announcement",
        "sealed",
        &[[1].as_slice(), &body].concat(),
    );
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
    println!("seeds written under corpus/");
}
