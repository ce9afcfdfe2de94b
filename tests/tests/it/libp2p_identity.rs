//! The protocol's signing key *is* the node's libp2p identity (see `protocol::identity`):
//! same secret bytes, same public key, same PeerId bytes, same signatures.

use hivemesh_tests::test_key;

#[test]
fn protocol_key_maps_onto_the_libp2p_identity() {
    for i in 0..16 {
        let ours = test_key(i);
        let mut secret = ours.secret_bytes();
        let theirs = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret)
            .expect("32 secret bytes are a valid libp2p ed25519 key");
        assert_eq!(secret, [0u8; 32], "libp2p zeroises the input secret");

        let ed = theirs.clone().try_into_ed25519().expect("ed25519 key");
        assert_eq!(ed.public().to_bytes(), *ours.public().as_bytes());

        let peer_id = theirs.public().to_peer_id();
        assert_eq!(peer_id.to_bytes(), ours.public().libp2p_peer_id_bytes());
        assert!(peer_id.to_base58().starts_with("12D3KooW"));

        // Ed25519 signing is deterministic (RFC 8032): both sign identically.
        let msg = format!("message {i}");
        assert_eq!(
            theirs.sign(msg.as_bytes()).expect("ed25519 signs"),
            ours.sign(msg.as_bytes()).to_vec()
        );
    }
}
