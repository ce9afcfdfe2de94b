//! Node identity: one ed25519 key signs every message and is the node's libp2p identity.
//!
//! # Mapping to libp2p
//! A [`Keypair`] is a standard ed25519 key. Its 32 secret bytes ([`Keypair::secret_bytes`])
//! give the same key in libp2p through `libp2p::identity::Keypair::ed25519_from_bytes`, and
//! the libp2p `PeerId` of that key is the identity multihash of the protobuf-encoded public key,
//! i.e. the bytes `00 24 08 01 12 20` followed by the 32 public-key bytes
//! ([`PeerKey::libp2p_peer_id_bytes`]); base58 of those bytes is the familiar `12D3KooW…`
//! string. So a node's peer id and its result-signing key are one and the same, and a peer
//! cannot gossip results under a key other than the one its connection authenticated.
//! `tests/tests/it/libp2p_identity.rs` checks this mapping against `libp2p-identity` 0.3.1 (the
//! version libp2p 0.57.1 uses).
//!
//! # Verification rules
//! Signatures are made with `ed25519-dalek` and verified with `ed25519-zebra` under the
//! [ZIP-215](https://zips.z.cash/zip-0215) rules, because there single and batch verification
//! provably accept exactly the same signatures: every honest node reaches the same verdict on a
//! message whether it verified it alone or in a batch. Public keys of small order ("weak" keys,
//! for which anyone can forge signatures) are refused as signers. See
//! `docs/decisions/0001-zip215-signatures.md`.

use serde::{Deserialize, Serialize};

use crate::id::{parse_hex32, write_hex};

/// A node's signing key. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct Keypair {
    signing: ed25519_dalek::SigningKey,
}

impl Keypair {
    /// The key whose ed25519 secret ("seed") is these 32 bytes.
    ///
    /// Get the bytes from the operating system's random source for a real identity; derive
    /// them from a seeded RNG in simulations and tests.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Keypair {
            signing: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    /// The 32 secret bytes, for storage in the node's key file (mode 0600).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half: how peers name this node.
    pub fn public(&self) -> PeerKey {
        PeerKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signing.sign(message).to_bytes()
    }
}

impl core::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A peer's public ed25519 key: 32 bytes, printed as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerKey(pub [u8; 32]);

impl Ord for PeerKey {
    #[inline]
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        crate::id::cmp32(&self.0, &other.0)
    }
}

impl PartialOrd for PeerKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PeerKey {
    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }

    /// The bytes of this key's libp2p `PeerId` (identity multihash of the protobuf-encoded
    /// ed25519 public key).
    pub fn libp2p_peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        // multihash: code 0x00 (identity), length 36; protobuf: field 1 (KeyType) = 1
        // (Ed25519), field 2 (Data) = 32 bytes.
        out[..6].copy_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// Whether this key may sign: it must be a valid curve point outside the small-order
    /// subgroup (for a small-order key anyone can forge signatures).
    pub fn is_valid_signer(&self) -> bool {
        curve25519_dalek::edwards::CompressedEdwardsY(self.0)
            .decompress()
            .is_some_and(|p| !p.is_small_order())
    }
}

impl core::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write_hex(f, &self.0)
    }
}

impl core::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PeerKey({})", self.short())
    }
}

impl core::str::FromStr for PeerKey {
    type Err = crate::id::IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s, "peer key").map(PeerKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip_gives_same_identity() {
        let k = Keypair::from_secret_bytes([7; 32]);
        let k2 = Keypair::from_secret_bytes(k.secret_bytes());
        assert_eq!(k.public(), k2.public());
        assert_eq!(k.sign(b"m"), k2.sign(b"m"));
        assert!(k.public().is_valid_signer());
        assert!(!format!("{k:?}").contains(&format!("{:?}", [7u8; 32])));
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1: empty message.
        let secret: [u8; 32] = parse_hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "secret",
        )
        .unwrap();
        let k = Keypair::from_secret_bytes(secret);
        assert_eq!(
            k.public().to_string(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = k.sign(b"");
        let mut hex = String::new();
        for b in sig {
            hex.push_str(&format!("{b:02x}"));
        }
        assert_eq!(
            hex,
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn small_order_keys_cannot_sign() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!PeerKey(identity).is_valid_signer());
        // Not a point at all (y = 2 is not on the curve).
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(!PeerKey(bad).is_valid_signer());
    }

    #[test]
    fn libp2p_peer_id_layout() {
        let k = Keypair::from_secret_bytes([1; 32]).public();
        let b = k.libp2p_peer_id_bytes();
        assert_eq!(&b[..6], &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        assert_eq!(&b[6..], k.as_bytes());
    }
}
