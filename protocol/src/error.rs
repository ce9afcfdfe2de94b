//! What can be wrong with a message, and what to do about the peer that sent it.

use crate::id::CampaignId;
use crate::message::Kind;

/// What the network layer should do with a message and the peer that forwarded it.
///
/// Maps one-to-one onto gossipsub's validation result: `Reject` also lowers the forwarder's
/// peer score; `Ignore` drops the message without blame (it may be a newer peer, a late
/// duplicate, or stale gossip from an honest relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAction {
    /// Drop the message and penalise the peer that sent it: no honest node forwards this.
    Reject,
    /// Drop the message without penalty.
    Ignore,
}

/// Why bytes from the network were not accepted as a signed message.
///
/// Each class of bad input has its own variant, so metrics and logs can say which, and each
/// maps to a [`PeerAction`] via [`DecodeError::peer_action`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the envelope does.
    #[error("message truncated: {needed} more bytes expected")]
    Truncated {
        /// How many more bytes the envelope header said would follow (at least).
        needed: usize,
    },
    /// Bytes follow the end of the envelope or of its body.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes are left over.
        extra: usize,
    },
    /// The envelope's version is not one this node speaks.
    #[error(
        "unknown protocol version {version} (this node speaks version {supported}); upgrade hivemesh if peers use a newer one"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
        /// The version this node speaks.
        supported: u8,
    },
    /// The envelope names a message kind that does not exist in this version.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
    /// A message of one kind arrived where another was expected (e.g. on a typed topic).
    #[error("expected a {expected:?} message, got {found:?}")]
    KindMismatch {
        /// What the receiver asked for.
        expected: Kind,
        /// What the envelope holds.
        found: Kind,
    },
    /// The input, or the body for its kind, exceeds the size limit.
    #[error("message too large: {size} bytes, the limit for {kind:?} is {limit}")]
    Oversized {
        /// The kind whose limit applied (`None`: the limit on whole envelopes).
        kind: Option<Kind>,
        /// The size found.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The signer's public key is not a usable ed25519 key (not a point, or of small order).
    #[error("signer key is not a valid ed25519 public key")]
    BadSigner,
    /// The signature does not verify over the message bytes.
    #[error("signature does not verify")]
    BadSignature,
    /// The body is not a valid encoding of its kind.
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        /// The kind being decoded.
        kind: Kind,
        /// The codec's explanation.
        reason: String,
    },
    /// The body decodes, but is not in canonical form (so its bytes could be re-encoded to
    /// make a second message id for the same content).
    #[error("{kind:?} body is not canonically encoded")]
    NonCanonical {
        /// The kind being decoded.
        kind: Kind,
    },
    /// The message is signed for another campaign: a replay across campaigns.
    #[error("message belongs to campaign {found}, expected {expected}")]
    WrongCampaign {
        /// The campaign this receiver is processing.
        expected: CampaignId,
        /// The campaign the message is bound to.
        found: CampaignId,
    },
    /// The message is older than the receiver accepts from gossip.
    #[error("stale message: issued {age_ms} ms ago, gossip accepts at most {max_age_ms} ms")]
    Stale {
        /// How old it is.
        age_ms: u64,
        /// The limit.
        max_age_ms: u64,
    },
    /// The message claims to be issued further in the future than clock skew explains.
    #[error("message dated {ahead_ms} ms in the future (allowed skew {max_skew_ms} ms)")]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
        /// The allowed skew.
        max_skew_ms: u64,
    },
    /// The message is well formed and signed but breaks a rule of its kind.
    #[error("invalid {kind:?}: {reason}")]
    Invalid {
        /// The kind.
        kind: Kind,
        /// The rule broken.
        reason: String,
    },
    /// The message is valid but the campaign does not keep it (its signer is no member and no
    /// joiner it has room for, or the campaign has finished and does not need it).
    #[error("{kind:?} not kept: {reason}")]
    Unwanted {
        /// The kind.
        kind: Kind,
        /// Why not.
        reason: Unwanted,
    },
}

/// Why a campaign does not keep a valid message (see `peer::admission`). Never the sender's
/// fault for certain: another node's view of the members may be a generation ahead or behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Unwanted {
    /// The signer is not a member of any generation so far, nor a pending joiner held here.
    #[error("the signer is neither a member nor a pending joiner")]
    UnknownSigner,
    /// The signer would join, but the pool of pending joiners has no room for it (full of lower
    /// keys, or as many joined it this generation as it holds).
    #[error("no room for another pending joiner")]
    JoinersFull,
    /// The campaign has finished and needs no more messages of this kind.
    #[error("the campaign has finished")]
    Finished,
    /// The campaign takes nothing from it: a copy of what it keeps (another timestamp),
    /// evidence beyond a job's or a signer's limits or on a closed generation, a vote for a
    /// decided generation or an earlier epoch, one from a peer that does not vote. Kept, such
    /// messages would let a member grow every node's store without bound.
    #[error("it adds nothing to what the campaign keeps")]
    Unused,
}

impl DecodeError {
    /// What to do with the peer that sent this.
    pub fn peer_action(&self) -> PeerAction {
        match self {
            // A newer peer may speak a version we do not; honest relays forward old gossip.
            DecodeError::UnknownVersion { .. }
            | DecodeError::Stale { .. }
            | DecodeError::FromFuture { .. }
            | DecodeError::Unwanted { .. } => PeerAction::Ignore,
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::UnknownKind { .. }
            | DecodeError::KindMismatch { .. }
            | DecodeError::Oversized { .. }
            | DecodeError::BadSigner
            | DecodeError::BadSignature
            | DecodeError::Malformed { .. }
            | DecodeError::NonCanonical { .. }
            | DecodeError::WrongCampaign { .. }
            | DecodeError::Invalid { .. } => PeerAction::Reject,
        }
    }

    /// A short stable label for metrics (bounded label set).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::KindMismatch { .. } => "kind_mismatch",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::BadSigner => "bad_signer",
            DecodeError::BadSignature => "bad_signature",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::NonCanonical { .. } => "non_canonical",
            DecodeError::WrongCampaign { .. } => "wrong_campaign",
            DecodeError::Stale { .. } => "stale",
            DecodeError::FromFuture { .. } => "from_future",
            DecodeError::Invalid { .. } => "invalid",
            DecodeError::Unwanted { .. } => "unwanted",
        }
    }
}

/// Why a message could not be signed and encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded body exceeds its kind's limit; peers would reject it.
    #[error("{kind:?} body is {size} bytes, over the {limit}-byte limit for its kind")]
    Oversized {
        /// The kind.
        kind: Kind,
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message breaks a rule of its kind; peers would reject it.
    #[error("invalid {kind:?}: {reason}")]
    Invalid {
        /// The kind.
        kind: Kind,
        /// The rule broken.
        reason: String,
    },
    /// The codec failed (a programming error: protocol types always encode).
    #[error("cannot encode {kind:?}: {reason}")]
    Codec {
        /// The kind.
        kind: Kind,
        /// The codec's explanation.
        reason: String,
    },
}
