//! The node's network-input code, compiled here from the node's own source files so that the
//! fuzz targets run exactly that code: `wire` (the request–response decoders the codec runs on
//! every frame) and `fetch` (what a node does with a blob's outboard and parts, checked with
//! `blobtree`). None imports anything from the rest of the node crate.

#![allow(dead_code)]

#[path = "../../src/net/wire.rs"]
pub mod wire;

#[path = "../../src/blobtree.rs"]
pub mod blobtree;

#[path = "../../src/fetch.rs"]
pub mod fetch;

use hivemesh_protocol::BlobId;
use libp2p_identity::PeerId;

/// The blob the `blob_response` target fetches.
pub const BLOB: &[u8] = b"a blob that the fuzzer's chunks are checked against, hashed whole";

/// The blob's id.
pub fn blob_id() -> BlobId {
    BlobId::of_bytes(BLOB)
}

/// The peer a fetch asks (a fixed id, so runs are reproducible).
pub fn provider() -> PeerId {
    PeerId::from_public_key(
        &libp2p_identity::Keypair::ed25519_from_bytes([5; 32])
            .expect("32 bytes make an ed25519 key")
            .public(),
    )
}
