//! Signed envelopes: sign exact bytes, verify before decoding.
//!
//! # Wire layout (version 1)
//! ```text
//! version   u8          = 1
//! kind      u8          see `Kind`
//! body_len  varint u32  LEB128, minimal encoding, <= kind's limit
//! body      [u8]        postcard encoding of the message, canonical
//! signer    [u8; 32]    ed25519 public key
//! signature [u8; 64]    ed25519 over SIGNING_DOMAIN || version || kind || body_len || body
//! ```
//! This is exactly postcard's encoding of `(u8, u8, Vec<u8>, [u8; 32], [u8; 64])`, parsed by
//! hand so that each class of bad input gets its own [`DecodeError`] and nothing is decoded
//! before the signature checks. The signature covers every byte before it, so the envelope
//! cannot be re-framed, and the body must be canonical, so a message has exactly one encoding
//! and one [`MessageId`].
//!
//! Typestate: [`Envelope::parse`] checks the frame, [`Envelope::verify`] (or
//! [`verify_batch`]) checks the signature and yields a [`Verified`], and only a `Verified` can
//! be decoded into a [`Signed<T>`].

use core::time::Duration;
use std::collections::HashMap;
use std::sync::Arc;

use rand_core::SeedableRng;

use crate::error::{DecodeError, EncodeError};
use crate::id::{CampaignId, MessageId};
use crate::identity::{Keypair, PeerKey};
use crate::message::{
    AuditReport, Claim, Commitment, Heartbeat, Kind, Message, Proposal, Regenesis, Reveal, Vote,
};
use crate::spec::CampaignSpec;
use crate::time::Timestamp;

/// The envelope version this code speaks.
pub const VERSION: u8 = 1;
/// Prefix of every signed byte string, so a hivemesh signature can never be mistaken for a
/// signature in another protocol that uses the same key (libp2p's noise or identify).
pub const SIGNING_DOMAIN: &[u8] = b"hivemesh/v1/signed-message\0";
/// Bytes after the body: signer and signature.
const TRAILER_LEN: usize = 32 + 64;
/// The largest envelope of any kind: a closure proposal's (its entries grow with the
/// generation; it was once sized by the campaign's limit, which left generations of more than
/// about a hundred settled jobs unable to close).
pub const MAX_ENVELOPE_LEN: usize = 2 + 5 + largest_body() + TRAILER_LEN;
/// The largest campaign envelope.
pub const MAX_CAMPAIGN_ENVELOPE_LEN: usize = 2 + 5 + Kind::Campaign.max_body_len() + TRAILER_LEN;

const fn largest_body() -> usize {
    let mut max = 0;
    let mut i = 0;
    while i < Kind::ALL.len() {
        let len = Kind::ALL[i].max_body_len();
        if len > max {
            max = len;
        }
        i += 1;
    }
    max
}
/// How old gossip may be by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// How far ahead of the receiver's clock a message may be dated by default.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(60);

/// What a receiver expects of the messages it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The campaign messages must be bound to (`None`: any, e.g. campaign announcements).
    pub campaign: Option<CampaignId>,
    /// The receiver's current time.
    pub now: Timestamp,
    /// The oldest message accepted (`None`: no limit, e.g. ledger sync).
    pub max_age: Option<Duration>,
    /// How far in the future a message may be dated (`None`: no limit).
    pub max_skew: Option<Duration>,
}

impl Context {
    /// Live gossip for one campaign: default age and skew limits.
    pub fn gossip(campaign: CampaignId, now: Timestamp) -> Self {
        Context {
            campaign: Some(campaign),
            now,
            max_age: Some(DEFAULT_MAX_AGE),
            max_skew: Some(DEFAULT_MAX_SKEW),
        }
    }

    /// Ledger sync for one campaign: history of any age is welcome.
    pub fn sync(campaign: CampaignId) -> Self {
        Context {
            campaign: Some(campaign),
            now: Timestamp::ZERO,
            max_age: None,
            max_skew: None,
        }
    }

    /// Announcements not yet bound to a known campaign (new campaign specs).
    pub fn announcement(now: Timestamp) -> Self {
        Context {
            campaign: None,
            now,
            max_age: Some(DEFAULT_MAX_AGE),
            max_skew: Some(DEFAULT_MAX_SKEW),
        }
    }

    fn check<T: Message>(&self, message: &T) -> Result<(), DecodeError> {
        if let Some(expected) = self.campaign {
            let found = message.campaign();
            if found != expected {
                return Err(DecodeError::WrongCampaign { expected, found });
            }
        }
        let issued = message.issued_at();
        if let Some(max_age) = self.max_age {
            let age = self.now.saturating_since(issued);
            if age > max_age {
                return Err(DecodeError::Stale {
                    age_ms: millis(age),
                    max_age_ms: millis(max_age),
                });
            }
        }
        if let Some(max_skew) = self.max_skew {
            let ahead = issued.saturating_since(self.now);
            if ahead > max_skew {
                return Err(DecodeError::FromFuture {
                    ahead_ms: millis(ahead),
                    max_skew_ms: millis(max_skew),
                });
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A framed, not yet verified message. Borrowed from the input bytes.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    bytes: &'a [u8],
    kind: Kind,
    /// Offset where the body starts.
    body_start: usize,
    /// Offset where the body ends (and the signer starts).
    body_end: usize,
    signer: PeerKey,
    signature: [u8; 64],
}

impl<'a> Envelope<'a> {
    /// Checks the frame: size, version, kind, lengths. Nothing is decoded and no signature is
    /// checked yet.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::Oversized {
                kind: None,
                size: bytes.len(),
                limit: MAX_ENVELOPE_LEN,
            });
        }
        let version = *bytes.first().ok_or(DecodeError::Truncated { needed: 1 })?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion {
                version,
                supported: VERSION,
            });
        }
        let kind_byte = *bytes.get(1).ok_or(DecodeError::Truncated { needed: 1 })?;
        let kind = Kind::from_u8(kind_byte).ok_or(DecodeError::UnknownKind { kind: kind_byte })?;
        let (body_len, varint_len) = read_varint_u32(&bytes[2..], kind)?;
        let body_len = body_len as usize;
        if body_len > kind.max_body_len() {
            return Err(DecodeError::Oversized {
                kind: Some(kind),
                size: body_len,
                limit: kind.max_body_len(),
            });
        }
        let body_start = 2 + varint_len;
        let body_end = body_start + body_len;
        let expected = body_end + TRAILER_LEN;
        if bytes.len() < expected {
            return Err(DecodeError::Truncated {
                needed: expected - bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(DecodeError::TrailingBytes {
                extra: bytes.len() - expected,
            });
        }
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&bytes[body_end..body_end + 32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[body_end + 32..]);
        Ok(Envelope {
            bytes,
            kind,
            body_start,
            body_end,
            signer: PeerKey(signer),
            signature,
        })
    }

    /// The message kind named in the header.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The claimed signer (not yet verified).
    pub fn signer(&self) -> PeerKey {
        self.signer
    }

    /// The id of these exact bytes.
    pub fn id(&self) -> MessageId {
        MessageId::of_envelope(self.bytes)
    }

    /// The exact envelope bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&self.bytes[..self.body_end])
    }

    /// Checks the signature (ZIP-215 rules) over the exact bytes. To verify many messages,
    /// keep a [`Verifier`]: it remembers checked signer keys.
    pub fn verify(self) -> Result<Verified<'a>, DecodeError> {
        Verifier::new(0).verify(self)
    }
}

/// Verifies many envelopes at once with a throwaway [`Verifier`]; see
/// [`Verifier::verify_batch`].
pub fn verify_batch(envelopes: Vec<Envelope<'_>>) -> Vec<Result<Verified<'_>, DecodeError>> {
    Verifier::new(0).verify_batch(envelopes)
}

/// The default number of signer keys a [`Verifier`] remembers.
pub const DEFAULT_KEY_CACHE: usize = 4096;

/// Signature verification with a bounded cache of checked signer keys.
///
/// Checking that a signer key is a usable point (decompression and a small-order test) costs
/// about as much as an eighth of a verification; a swarm has a bounded set of signers, so the
/// verdict per key is remembered. The cache changes only speed, never a verdict: a key's
/// validity is a pure function of its bytes. When full, the cache is cleared.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<PeerKey, Option<ed25519_zebra::VerificationKey>>,
    capacity: usize,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier")
            .field("cached_keys", &self.keys.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new(DEFAULT_KEY_CACHE)
    }
}

impl Verifier {
    /// A verifier remembering up to `capacity` signer keys (0: none).
    pub fn new(capacity: usize) -> Self {
        Verifier {
            keys: HashMap::new(),
            capacity,
        }
    }

    fn key(&mut self, signer: PeerKey) -> Option<ed25519_zebra::VerificationKey> {
        if let Some(k) = self.keys.get(&signer) {
            return *k;
        }
        let key = signer
            .is_valid_signer()
            .then(|| ed25519_zebra::VerificationKey::try_from(signer.0).ok())
            .flatten();
        if self.capacity > 0 {
            if self.keys.len() >= self.capacity {
                self.keys.clear();
            }
            self.keys.insert(signer, key);
        }
        key
    }

    /// Checks one envelope's signature (ZIP-215 rules) over its exact bytes.
    pub fn verify<'a>(&mut self, env: Envelope<'a>) -> Result<Verified<'a>, DecodeError> {
        let vk = self.key(env.signer).ok_or(DecodeError::BadSigner)?;
        let sig = ed25519_zebra::Signature::from_bytes(&env.signature);
        vk.verify(&sig, &env.signed_bytes())
            .map_err(|_| DecodeError::BadSignature)?;
        Ok(Verified(env))
    }

    /// Verifies many envelopes at once. The verdict on each is exactly what
    /// [`Verifier::verify`] would give (ZIP-215 makes batch and single verification agree).
    /// Envelopes with an unusable signer key are answered `BadSigner` without joining the
    /// batch; if the batch fails, each of its envelopes is checked alone.
    pub fn verify_batch<'a>(
        &mut self,
        envelopes: Vec<Envelope<'a>>,
    ) -> Vec<Result<Verified<'a>, DecodeError>> {
        let mut batch = ed25519_zebra::batch::Verifier::new();
        let mut transcript =
            blake3::Hasher::new_derive_key("hivemesh 2026-11 batch verify seed v1");
        let usable: Vec<bool> = envelopes
            .iter()
            .map(|env| self.key(env.signer).is_some())
            .collect();
        for (env, _) in envelopes.iter().zip(&usable).filter(|(_, ok)| **ok) {
            let sig = ed25519_zebra::Signature::from_bytes(&env.signature);
            let vk = ed25519_zebra::VerificationKeyBytes::from(env.signer.0);
            batch.queue((vk, sig, &env.signed_bytes()[..]));
            transcript.update(&env.signature);
        }
        // The batch's random coefficients must be unpredictable to a signer who does not
        // control every message in it; deriving them from all the signatures achieves that
        // without a source of randomness (as ed25519-dalek does), so the verdict is
        // reproducible.
        let rng = rand_chacha::ChaCha20Rng::from_seed(*transcript.finalize().as_bytes());
        let batch_ok = batch.verify(rng).is_ok();
        envelopes
            .into_iter()
            .zip(usable)
            .map(|(env, usable)| match (usable, batch_ok) {
                (false, _) => Err(DecodeError::BadSigner),
                (true, true) => Ok(Verified(env)),
                (true, false) => self.verify(env),
            })
            .collect()
    }
}

/// An envelope whose signature has been checked. Only these can be decoded.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a>(Envelope<'a>);

impl<'a> Verified<'a> {
    /// The envelope.
    pub fn envelope(&self) -> &Envelope<'a> {
        &self.0
    }

    /// Decodes the body as `T` and checks it against `ctx`.
    pub fn decode<T: Message>(&self, ctx: &Context) -> Result<Signed<T>, DecodeError> {
        let env = &self.0;
        if env.kind != T::KIND {
            return Err(DecodeError::KindMismatch {
                expected: T::KIND,
                found: env.kind,
            });
        }
        let body = &env.bytes[env.body_start..env.body_end];
        let (message, rest) =
            postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
                kind: T::KIND,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        match postcard::to_stdvec(&message) {
            Ok(canonical) if canonical == body => {}
            _ => return Err(DecodeError::NonCanonical { kind: T::KIND }),
        }
        message.validate().map_err(|reason| DecodeError::Invalid {
            kind: T::KIND,
            reason,
        })?;
        ctx.check(&message)?;
        Ok(Signed {
            message: Arc::new(message),
            signer: env.signer,
            id: env.id(),
            bytes: Arc::from(env.bytes),
        })
    }

    /// Decodes the body as whatever kind the header names.
    pub fn decode_any(&self, ctx: &Context) -> Result<AnySigned, DecodeError> {
        Ok(match self.0.kind {
            Kind::Campaign => AnySigned::Campaign(self.decode(ctx)?),
            Kind::Claim => AnySigned::Claim(self.decode(ctx)?),
            Kind::Commitment => AnySigned::Commitment(self.decode(ctx)?),
            Kind::Reveal => AnySigned::Reveal(self.decode(ctx)?),
            Kind::AuditReport => AnySigned::AuditReport(self.decode(ctx)?),
            Kind::Heartbeat => AnySigned::Heartbeat(self.decode(ctx)?),
            Kind::Proposal => AnySigned::Proposal(self.decode(ctx)?),
            Kind::Vote => AnySigned::Vote(self.decode(ctx)?),
            Kind::Regenesis => AnySigned::Regenesis(self.decode(ctx)?),
        })
    }
}

fn signed_bytes(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + prefix.len());
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(prefix);
    out
}

/// Reads a minimal LEB128 varint of at most 5 bytes (a u32).
fn read_varint_u32(input: &[u8], kind: Kind) -> Result<(u32, usize), DecodeError> {
    let mut value: u64 = 0;
    for i in 0..5 {
        let byte = *input.get(i).ok_or(DecodeError::Truncated { needed: 1 })?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                // A zero last byte means a shorter encoding existed.
                return Err(DecodeError::NonCanonical { kind });
            }
            return u32::try_from(value)
                .map(|v| (v, i + 1))
                .map_err(|_| DecodeError::Oversized {
                    kind: Some(kind),
                    size: usize::MAX,
                    limit: kind.max_body_len(),
                });
        }
    }
    Err(DecodeError::Oversized {
        kind: Some(kind),
        size: usize::MAX,
        limit: kind.max_body_len(),
    })
}

fn write_varint_u32(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Frames `body` as a version-1 envelope of kind byte `kind` and signs it with `key`,
/// **without checking** the kind, the body or its size: peers may reject the result.
///
/// [`Signed::sign_and_encode`] is the checked way to make a message; this exists for it, and
/// for tests, fuzzers and tools that must produce what a malicious signer could.
pub fn seal(kind: u8, body: &[u8], key: &Keypair) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(2 + 5 + body.len() + TRAILER_LEN);
    bytes.push(VERSION);
    bytes.push(kind);
    write_varint_u32(len, &mut bytes);
    bytes.extend_from_slice(body);
    let signature = key.sign(&signed_bytes(&bytes));
    bytes.extend_from_slice(key.public().as_bytes());
    bytes.extend_from_slice(&signature);
    bytes
}

/// A message whose signature has been verified (or that this node signed), with its exact
/// bytes kept for re-gossip, storage and evidence. Cloning is cheap: the decoded message and
/// the bytes are shared, so a ledger, a gossip queue and a store can all hold one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    message: Arc<T>,
    signer: PeerKey,
    id: MessageId,
    bytes: Arc<[u8]>,
}

impl<T: Message> Signed<T> {
    /// Encodes `message`, signs the exact bytes with `key`, and returns the signed message
    /// (its bytes are [`Signed::bytes`]).
    pub fn sign_and_encode(message: T, key: &Keypair) -> Result<Self, EncodeError> {
        message.validate().map_err(|reason| EncodeError::Invalid {
            kind: T::KIND,
            reason,
        })?;
        let body = postcard::to_stdvec(&message).map_err(|e| EncodeError::Codec {
            kind: T::KIND,
            reason: e.to_string(),
        })?;
        let limit = T::KIND.max_body_len();
        if body.len() > limit {
            return Err(EncodeError::Oversized {
                kind: T::KIND,
                size: body.len(),
                limit,
            });
        }
        let bytes = seal(T::KIND as u8, &body, key);
        Ok(Signed {
            id: MessageId::of_envelope(&bytes),
            message: Arc::new(message),
            signer: key.public(),
            bytes: Arc::from(bytes),
        })
    }

    /// Parses, verifies the signature over the exact bytes, then decodes and checks against
    /// `ctx`. The body is not touched until the signature has verified.
    pub fn verify_and_decode(bytes: &[u8], ctx: &Context) -> Result<Self, DecodeError> {
        Envelope::parse(bytes)?.verify()?.decode(ctx)
    }
}

impl<T> Signed<T> {
    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Who signed it.
    pub fn signer(&self) -> PeerKey {
        self.signer
    }

    /// The id of its bytes.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The exact envelope bytes (what was signed, plus signer and signature).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A verified message of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum AnySigned {
    /// A campaign spec.
    Campaign(Signed<CampaignSpec>),
    /// A claim.
    Claim(Signed<Claim>),
    /// A commitment.
    Commitment(Signed<Commitment>),
    /// A reveal.
    Reveal(Signed<Reveal>),
    /// An audit report.
    AuditReport(Signed<AuditReport>),
    /// A heartbeat.
    Heartbeat(Signed<Heartbeat>),
    /// A closure proposal.
    Proposal(Signed<Proposal>),
    /// A closure vote.
    Vote(Signed<Vote>),
    /// A creator's new voter set for a stalled closure vote.
    Regenesis(Signed<Regenesis>),
}

impl AnySigned {
    /// Parses, verifies and decodes a message of any kind.
    pub fn verify_and_decode(bytes: &[u8], ctx: &Context) -> Result<Self, DecodeError> {
        Envelope::parse(bytes)?.verify()?.decode_any(ctx)
    }

    /// Its id.
    pub fn id(&self) -> MessageId {
        match self {
            AnySigned::Campaign(s) => s.id(),
            AnySigned::Claim(s) => s.id(),
            AnySigned::Commitment(s) => s.id(),
            AnySigned::Reveal(s) => s.id(),
            AnySigned::AuditReport(s) => s.id(),
            AnySigned::Heartbeat(s) => s.id(),
            AnySigned::Proposal(s) => s.id(),
            AnySigned::Vote(s) => s.id(),
            AnySigned::Regenesis(s) => s.id(),
        }
    }

    /// Who signed it.
    pub fn signer(&self) -> PeerKey {
        match self {
            AnySigned::Campaign(s) => s.signer(),
            AnySigned::Claim(s) => s.signer(),
            AnySigned::Commitment(s) => s.signer(),
            AnySigned::Reveal(s) => s.signer(),
            AnySigned::AuditReport(s) => s.signer(),
            AnySigned::Heartbeat(s) => s.signer(),
            AnySigned::Proposal(s) => s.signer(),
            AnySigned::Vote(s) => s.signer(),
            AnySigned::Regenesis(s) => s.signer(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnySigned::Campaign(_) => Kind::Campaign,
            AnySigned::Claim(_) => Kind::Claim,
            AnySigned::Commitment(_) => Kind::Commitment,
            AnySigned::Reveal(_) => Kind::Reveal,
            AnySigned::AuditReport(_) => Kind::AuditReport,
            AnySigned::Heartbeat(_) => Kind::Heartbeat,
            AnySigned::Proposal(_) => Kind::Proposal,
            AnySigned::Vote(_) => Kind::Vote,
            AnySigned::Regenesis(_) => Kind::Regenesis,
        }
    }

    /// Its exact bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            AnySigned::Campaign(s) => s.bytes(),
            AnySigned::Claim(s) => s.bytes(),
            AnySigned::Commitment(s) => s.bytes(),
            AnySigned::Reveal(s) => s.bytes(),
            AnySigned::AuditReport(s) => s.bytes(),
            AnySigned::Heartbeat(s) => s.bytes(),
            AnySigned::Proposal(s) => s.bytes(),
            AnySigned::Vote(s) => s.bytes(),
            AnySigned::Regenesis(s) => s.bytes(),
        }
    }
}
