//! Secure aggregation (ADR 0010; Bonawitz et al. 2017, "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning", with SecAgg+'s sparse neighbourhoods, Bell et al.
//! 2020): each client's input is hidden by masks that cancel in the sum, so whoever adds the
//! masked inputs learns the sum and nothing else about any one input, unless `threshold` or
//! more of that client's neighbours collude.
//!
//! A round, for the clients of a `roster` (public keys announced beforehand):
//! 1. **Deal.** Client `i` splits its self-mask seed `b_i` and its mask key `s_i` into
//!    `threshold`-of-`k` Shamir shares (bytewise over GF(2⁸)) and sends share `j` to neighbour
//!    `j`, sealed (ChaCha20-Poly1305 under a key from X25519 between their sealing keys).
//!    With the sealed shares the dealer publishes a hash of each share ([`Sealed::self_hash`],
//!    [`Sealed::mask_hash`]), so a share revealed later is checked on its own and a revealer
//!    that lies about one is ignored instead of failing the round.
//!    The clients whose deals arrived are the round's **active** clients
//!    ([`Round::record_deal`]); the rest take no further part.
//! 2. **Mask.** `y_i = x_i + PRG(b_i) + Σ_{j ∈ N(i), j > i} PRG(s_ij) − Σ_{j ∈ N(i), j < i}
//!    PRG(s_ij)` in `u32` arithmetic (wrapping), over the *active* neighbours `j`, `s_ij` from
//!    X25519 between mask keys: the pairwise masks cancel in any sum over both ends of every
//!    pair.
//! 3. **Reveal.** Once the survivors `S` (clients whose `y` arrived) are fixed, each survivor
//!    reveals, for each neighbour, the share of `b` if the neighbour survived, else the share of
//!    `s` — never both for one client, so no client's input is ever unmasked alone.
//! 4. **Unmask.** `Σ_{i ∈ S} y_i − Σ_{i ∈ S} PRG(b_i)` minus the pairwise masks between
//!    survivors and dropped clients (from the reconstructed `s_d`). A secret with fewer than
//!    `threshold` shares revealed fails the round ([`SecAggError::BelowThreshold`]); a
//!    reconstructed secret that does not match its owner's announced commitment fails it too
//!    ([`SecAggError::BadShares`]), so bad shares cannot silently corrupt the sum.
//!
//! Everything is a pure function of its inputs (randomness comes in as seeds); inputs are
//! fixed-point ([`FixedPoint`]) so the sum is exact and the same on every node.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use x25519_dalek::{X25519_BASEPOINT_BYTES, x25519};

/// The most clients in a round (Shamir shares are evaluated at `x = 1..=255`).
pub const MAX_CLIENTS: usize = 255;

/// Why a secure-aggregation step failed; each names the client at fault where one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecAggError {
    /// The round's parameters are impossible.
    #[error("secure aggregation: {0}")]
    Parameters(String),
    /// A client's announced key is a low-order point (its shared secrets would be known).
    #[error("client {client}'s announced key is a low-order point; it is left out")]
    LowOrderKey {
        /// Roster index.
        client: usize,
    },
    /// A sealed share did not open (wrong key, tampered, or not for this client).
    #[error("the shares client {from} sealed for client {to} do not open")]
    Unseal {
        /// Sender.
        from: usize,
        /// Recipient.
        to: usize,
    },
    /// Too few shares of a client's secret were revealed: the round cannot be unmasked.
    #[error(
        "only {have} of the {need} shares needed to recover client {client}'s masks were \
         revealed: too many clients dropped out; the round fails"
    )]
    BelowThreshold {
        /// Whose secret.
        client: usize,
        /// Shares revealed.
        have: usize,
        /// Threshold.
        need: usize,
    },
    /// A secret rebuilt from revealed shares does not match its owner's commitment.
    #[error("the shares revealed for client {client}'s mask are inconsistent; the round fails")]
    BadShares {
        /// Whose secret.
        client: usize,
    },
    /// A deal that is not one share for each of the dealer's neighbours.
    #[error("client {client}'s deal is not one sealed share for each of its neighbours")]
    BadDeal {
        /// Dealer.
        client: usize,
    },
    /// A masked input of the wrong length.
    #[error("client {client} sent {len} values where the round has {expected}")]
    Length {
        /// Sender.
        client: usize,
        /// Values sent.
        len: usize,
        /// Values expected.
        expected: usize,
    },
}

/// What a client announces before a round: its public keys and a commitment to its self-mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientKeys {
    /// X25519 public key for the pairwise masks.
    pub mask: [u8; 32],
    /// X25519 public key for sealing shares.
    pub seal: [u8; 32],
    /// blake3 of the self-mask seed (checked when it is rebuilt from shares).
    pub self_commitment: [u8; 32],
}

impl ClientKeys {
    /// Whether both keys are usable: not low-order points (whose shared secrets anyone
    /// knows). A clamped scalar is a multiple of 8, so it maps exactly the low-order points
    /// to zero.
    pub fn usable(&self) -> bool {
        let probe = [0x55u8; 32];
        x25519(probe, self.mask) != [0; 32] && x25519(probe, self.seal) != [0; 32]
    }
}

/// A client's secrets for one round, derived from one seed.
#[derive(Clone)]
pub struct ClientSecrets {
    /// X25519 secret for the pairwise masks.
    mask: [u8; 32],
    /// X25519 secret for sealing shares.
    seal: [u8; 32],
    /// The self-mask seed `b`.
    self_seed: [u8; 32],
}

impl std::fmt::Debug for ClientSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecrets(..)")
    }
}

fn derive(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

impl ClientSecrets {
    /// The secrets drawn from `seed` (fresh and secret for every round).
    pub fn from_seed(seed: [u8; 32]) -> ClientSecrets {
        ClientSecrets {
            mask: derive("hivemesh 2026-12 secagg mask key", &[&seed]),
            seal: derive("hivemesh 2026-12 secagg seal key", &[&seed]),
            self_seed: derive("hivemesh 2026-12 secagg self mask", &[&seed]),
        }
    }

    /// What to announce.
    pub fn public(&self) -> ClientKeys {
        ClientKeys {
            mask: x25519(self.mask, X25519_BASEPOINT_BYTES),
            seal: x25519(self.seal, X25519_BASEPOINT_BYTES),
            self_commitment: commitment(&self.self_seed),
        }
    }
}

fn commitment(seed: &[u8; 32]) -> [u8; 32] {
    derive("hivemesh 2026-12 secagg self-mask commitment", &[seed])
}

/// X25519 of `secret` with `client`'s `public`, refusing an all-zero (low-order) result.
fn shared(secret: [u8; 32], public: [u8; 32], client: usize) -> Result<[u8; 32], SecAggError> {
    let s = x25519(secret, public);
    if s == [0; 32] {
        return Err(SecAggError::LowOrderKey { client });
    }
    Ok(s)
}

/// The hashes of the two shares a dealer sealed for one recipient: `(recipient, self-mask
/// share hash, mask-key share hash)`.
type DealtHashes = (u16, [u8; 32], [u8; 32]);

/// One round's public setup, the same at every participant.
#[derive(Debug, Clone)]
pub struct Round {
    /// Domain separation: the campaign and round (every key and mask is bound to it).
    pub context: [u8; 32],
    /// The clients' announced keys, in roster order (index = client number).
    pub roster: Vec<ClientKeys>,
    /// Shares needed to rebuild a client's secret.
    pub threshold: usize,
    /// Each client's neighbours, sorted (symmetric; all others when the round is small).
    neighbours: Vec<Vec<usize>>,
    /// Per client, once its deal is recorded: the hashes of the shares it dealt, by
    /// recipient (`None`: it did not deal, so it is not active).
    dealt: Vec<Option<Vec<DealtHashes>>>,
}

impl Round {
    /// A round for `roster` in which each client pairs with `k` neighbours (all others when
    /// `k ≥ n − 1`; else a circulant graph over an order drawn from `context`, `k` rounded up
    /// to even), and `threshold` of a client's neighbours can rebuild its secrets.
    pub fn new(
        context: [u8; 32],
        roster: Vec<ClientKeys>,
        k: usize,
        threshold: usize,
    ) -> Result<Round, SecAggError> {
        let n = roster.len();
        if !(2..=MAX_CLIENTS).contains(&n) {
            return Err(SecAggError::Parameters(format!(
                "{n} clients: a round needs 2 to {MAX_CLIENTS}"
            )));
        }
        let neighbours = graph(n, k, &context);
        let degree = neighbours.iter().map(Vec::len).min().unwrap_or(0);
        if threshold == 0 || threshold > degree {
            return Err(SecAggError::Parameters(format!(
                "threshold {threshold} must be 1 to {degree} (each client's neighbours)"
            )));
        }
        Ok(Round {
            context,
            roster,
            threshold,
            neighbours,
            dealt: vec![None; n],
        })
    }

    /// Records client `dealer`'s deal (as published: every share it sealed): it becomes
    /// active, and the hashes of its shares check what is revealed of them. A deal that is not
    /// exactly one share for each of the dealer's neighbours is refused, naming the dealer.
    pub fn record_deal(&mut self, dealer: usize, sealed: &[Sealed]) -> Result<(), SecAggError> {
        let bad = SecAggError::BadDeal { client: dealer };
        let Some(expected) = self.neighbours.get(dealer) else {
            return Err(bad);
        };
        let mut to: Vec<u16> = sealed.iter().map(|s| s.to).collect();
        to.sort_unstable();
        let fits = to.len() == expected.len()
            && to.iter().zip(expected).all(|(a, b)| usize::from(*a) == *b)
            && sealed.iter().all(|s| usize::from(s.from) == dealer);
        if !fits {
            return Err(bad);
        }
        let mut hashes: Vec<DealtHashes> = sealed
            .iter()
            .map(|s| (s.to, s.self_hash, s.mask_hash))
            .collect();
        hashes.sort_unstable();
        self.dealt[dealer] = Some(hashes);
        Ok(())
    }

    /// Whether client `i` dealt (is active).
    pub fn is_active(&self, i: usize) -> bool {
        self.dealt.get(i).is_some_and(Option::is_some)
    }

    /// Whether `share` is the share of `owner`'s self-mask seed (or, with `mask`, of its mask
    /// key) that `owner` dealt to `holder` (its neighbour), by the hash it published.
    fn share_matches(&self, owner: usize, holder: usize, mask: bool, share: &[u8; 32]) -> bool {
        let Some((self_hash, mask_hash)) = self.share_hashes(owner, holder) else {
            return false;
        };
        let want = if mask { mask_hash } else { self_hash };
        share_hash(&self.context, owner as u16, holder as u16, mask, share) == want
    }

    /// The hashes `owner` published for its shares held by `holder`.
    fn share_hashes(&self, owner: usize, holder: usize) -> Option<([u8; 32], [u8; 32])> {
        let dealt = self.dealt.get(owner)?.as_ref()?;
        let i = dealt.binary_search_by_key(&(holder as u16), |d| d.0).ok()?;
        Some((dealt[i].1, dealt[i].2))
    }

    /// Client `i`'s neighbours.
    pub fn neighbours(&self, i: usize) -> &[usize] {
        &self.neighbours[i]
    }

    /// The seed of the pairwise mask between `i` and `j`, as `i` computes it.
    fn pair_seed(&self, secret: [u8; 32], i: usize, j: usize) -> Result<[u8; 32], SecAggError> {
        let s = shared(secret, self.roster[j].mask, j)?;
        let (lo, hi) = (
            (i.min(j) as u16).to_le_bytes(),
            (i.max(j) as u16).to_le_bytes(),
        );
        Ok(derive(
            "hivemesh 2026-12 secagg pair mask",
            &[&self.context, &lo, &hi, &s],
        ))
    }

    /// The AEAD key for shares from `from` to `to`.
    fn seal_key(
        &self,
        secret: [u8; 32],
        from: usize,
        to: usize,
        other: usize,
    ) -> Result<Key, SecAggError> {
        let s = shared(secret, self.roster[other].seal, other)?;
        let k = derive(
            "hivemesh 2026-12 secagg seal",
            &[
                &self.context,
                &(from as u16).to_le_bytes(),
                &(to as u16).to_le_bytes(),
                &s,
            ],
        );
        Ok(Key::from(k))
    }
}

/// The neighbour graph: complete when `k ≥ n − 1`, else circulant (each client linked to the
/// `k/2` before and after it in an order drawn from `context`).
fn graph(n: usize, k: usize, context: &[u8; 32]) -> Vec<Vec<usize>> {
    if k >= n - 1 {
        return (0..n)
            .map(|i| (0..n).filter(|j| *j != i).collect())
            .collect();
    }
    let half = k.div_ceil(2).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha20Rng::from_seed(derive("hivemesh 2026-12 secagg graph", &[context]));
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut place = vec![0; n];
    for (p, c) in order.iter().enumerate() {
        place[*c] = p;
    }
    (0..n)
        .map(|i| {
            let mut v: Vec<usize> = (1..=half)
                .flat_map(|d| [order[(place[i] + d) % n], order[(place[i] + n - d) % n]])
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect()
}

/// GF(2⁸) multiplication (AES polynomial).
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80;
        a <<= 1;
        if carry != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// GF(2⁸) inverse (`a^254`; `a` not 0).
fn gf_inv(a: u8) -> u8 {
    let mut r = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e != 0 {
        if e & 1 != 0 {
            r = gf_mul(r, base);
        }
        base = gf_mul(base, base);
        e >>= 1;
    }
    r
}

/// Shamir shares of `secret` at each of `xs` (distinct, not 0), any `threshold` of which
/// rebuild it: per byte, a polynomial of degree `threshold − 1` with random coefficients.
fn split(secret: &[u8; 32], threshold: usize, xs: &[u8], rng: &mut ChaCha20Rng) -> Vec<[u8; 32]> {
    let mut shares = vec![[0u8; 32]; xs.len()];
    for (b, byte) in secret.iter().enumerate() {
        let mut coef = vec![*byte; threshold];
        for c in coef.iter_mut().skip(1) {
            *c = (rng.next_u32() & 0xff) as u8;
        }
        for (share, x) in shares.iter_mut().zip(xs) {
            // Horner, from the highest coefficient.
            share[b] = coef.iter().rev().fold(0u8, |acc, c| gf_mul(acc, *x) ^ c);
        }
    }
    shares
}

/// The secret from `threshold` or more shares `(x, share)` with distinct `x` (the first
/// `threshold` are used): Lagrange interpolation at 0.
fn combine(shares: &[(u8, [u8; 32])], threshold: usize) -> [u8; 32] {
    let used = &shares[..threshold];
    let mut secret = [0u8; 32];
    for (i, (xi, yi)) in used.iter().enumerate() {
        // l_i(0) = Π_{j≠i} x_j / (x_j − x_i); subtraction is XOR.
        let mut l = 1u8;
        for (j, (xj, _)) in used.iter().enumerate() {
            if i != j {
                l = gf_mul(l, gf_mul(*xj, gf_inv(xj ^ xi)));
            }
        }
        for (s, y) in secret.iter_mut().zip(yi) {
            *s ^= gf_mul(l, *y);
        }
    }
    secret
}

/// The `x` at which client `i`'s share is evaluated.
fn x_of(i: usize) -> u8 {
    (i + 1) as u8
}

/// Shares one client sealed for one neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Dealer.
    pub from: u16,
    /// Recipient.
    pub to: u16,
    /// ChaCha20-Poly1305 of the share of `b` then the share of `s` (64 bytes, plus the tag).
    pub bytes: Vec<u8>,
    /// [`share_hash`] of the share of `b` (public: a share of a threshold of 2 or more is
    /// uniformly random, and its hash tells nothing of the secret).
    pub self_hash: [u8; 32],
    /// [`share_hash`] of the share of `s`.
    pub mask_hash: [u8; 32],
}

/// What checks a revealed share: a hash bound to the round, the dealer, the holder and the
/// kind of secret.
pub fn share_hash(
    context: &[u8; 32],
    from: u16,
    to: u16,
    mask: bool,
    share: &[u8; 32],
) -> [u8; 32] {
    derive(
        "hivemesh 2026-12 secagg share hash",
        &[
            context,
            &from.to_le_bytes(),
            &to.to_le_bytes(),
            &[u8::from(mask)],
            share,
        ],
    )
}

/// The shares a client holds of one neighbour's secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Whose secrets.
    pub owner: usize,
    /// Share of the owner's self-mask seed.
    self_share: [u8; 32],
    /// Share of the owner's mask key.
    mask_share: [u8; 32],
}

/// Client `me`'s deal: its secrets' shares for each neighbour, sealed. `rng_seed` draws the
/// polynomials (secret, fresh).
pub fn deal(
    round: &Round,
    me: usize,
    secrets: &ClientSecrets,
    rng_seed: [u8; 32],
) -> Result<Vec<Sealed>, SecAggError> {
    let to = round.neighbours(me);
    let xs: Vec<u8> = to.iter().map(|j| x_of(*j)).collect();
    let mut rng = ChaCha20Rng::from_seed(rng_seed);
    let b = split(&secrets.self_seed, round.threshold, &xs, &mut rng);
    let s = split(&secrets.mask, round.threshold, &xs, &mut rng);
    to.iter()
        .enumerate()
        .map(|(n, j)| {
            let key = round.seal_key(secrets.seal, me, *j, *j)?;
            let mut plain = b[n].to_vec();
            plain.extend_from_slice(&s[n]);
            let bytes = ChaCha20Poly1305::new(&key)
                .encrypt(&Nonce::default(), plain.as_slice())
                .map_err(|_| SecAggError::Unseal { from: me, to: *j })?;
            Ok(Sealed {
                from: me as u16,
                to: *j as u16,
                bytes,
                self_hash: share_hash(&round.context, me as u16, *j as u16, false, &b[n]),
                mask_hash: share_hash(&round.context, me as u16, *j as u16, true, &s[n]),
            })
        })
        .collect()
}

/// Client `me` opens shares a neighbour sealed for it.
pub fn open(
    round: &Round,
    me: usize,
    secrets: &ClientSecrets,
    sealed: &Sealed,
) -> Result<Held, SecAggError> {
    let from = usize::from(sealed.from);
    let bad = SecAggError::Unseal { from, to: me };
    if usize::from(sealed.to) != me || !round.neighbours(me).contains(&from) {
        return Err(bad);
    }
    let key = round.seal_key(secrets.seal, from, me, from)?;
    let plain = ChaCha20Poly1305::new(&key)
        .decrypt(&Nonce::default(), sealed.bytes.as_slice())
        .map_err(|_| bad.clone())?;
    let (b, s) = plain.split_at_checked(32).ok_or(bad.clone())?;
    Ok(Held {
        owner: from,
        self_share: b.try_into().map_err(|_| bad.clone())?,
        mask_share: s.try_into().map_err(|_| bad)?,
    })
}

/// `out[k] += sign · PRG(seed)[k]` (wrapping), the PRG being blake3's XOF keyed by `seed`.
fn add_prg(out: &mut [u32], seed: &[u8; 32], negative: bool) {
    let mut xof = blake3::Hasher::new_keyed(seed).finalize_xof();
    let mut buf = [0u8; 4096];
    for chunk in out.chunks_mut(1024) {
        let bytes = &mut buf[..chunk.len() * 4];
        xof.fill(bytes);
        for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            *v = if negative {
                v.wrapping_sub(m)
            } else {
                v.wrapping_add(m)
            };
        }
    }
}

/// Client `me`'s masked input (pairwise masks with its active neighbours only: a neighbour
/// that did not deal could not have its masks removed were it to drop).
pub fn mask(
    round: &Round,
    me: usize,
    secrets: &ClientSecrets,
    input: &[u32],
) -> Result<Vec<u32>, SecAggError> {
    let mut y = input.to_vec();
    add_prg(&mut y, &secrets.self_seed, false);
    for j in round.neighbours(me).iter().filter(|j| round.is_active(**j)) {
        let seed = round.pair_seed(secrets.mask, me, *j)?;
        add_prg(&mut y, &seed, *j < me);
    }
    Ok(y)
}

/// What a surviving client reveals once the survivors are fixed: for each neighbour whose
/// shares it holds, the share of its self-mask if it survived, else of its mask key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    /// Revealing client.
    pub from: u16,
    /// `(owner, share of b_owner)` for surviving owners.
    pub self_shares: Vec<(u16, [u8; 32])>,
    /// `(owner, share of s_owner)` for dropped owners.
    pub mask_shares: Vec<(u16, [u8; 32])>,
}

/// Client `me`'s reveal for the survivors `survivors` (sorted), from the shares it holds.
pub fn reveal(me: usize, held: &[Held], survivors: &[usize]) -> Reveal {
    let mut r = Reveal {
        from: me as u16,
        self_shares: Vec::new(),
        mask_shares: Vec::new(),
    };
    for h in held {
        if survivors.binary_search(&h.owner).is_ok() {
            r.self_shares.push((h.owner as u16, h.self_share));
        } else {
            r.mask_shares.push((h.owner as u16, h.mask_share));
        }
    }
    r
}

/// The sum of the survivors' inputs from their masked inputs `(client, y)` (`len` values
/// each) and the survivors' reveals; the survivors are the active clients (see
/// [`Round::record_deal`]) whose masked input is given, the dropped ones the other active
/// clients. Shares from a non-survivor, for a client that is not the revealer's neighbour, of
/// the wrong kind (a self-mask share of a dropped client, a mask share of a survivor) or that
/// do not match the hash their dealer published are ignored (see [`bad_revealers`]); a
/// masked input of a client that is not active is left out.
pub fn unmask(
    round: &Round,
    masked: &[(usize, Vec<u32>)],
    reveals: &[Reveal],
    len: usize,
) -> Result<Vec<u32>, SecAggError> {
    let n = round.roster.len();
    let mut survived = vec![false; n];
    let mut sum = vec![0u32; len];
    for (i, y) in masked {
        if y.len() != len {
            return Err(SecAggError::Length {
                client: *i,
                len: y.len(),
                expected: len,
            });
        }
        if *i < n && round.is_active(*i) && !survived[*i] {
            survived[*i] = true;
            sum.iter_mut()
                .zip(y)
                .for_each(|(s, v)| *s = s.wrapping_add(*v));
        }
    }
    // Shares per owner, from surviving neighbours only, one per revealer.
    let mut self_shares: Vec<Vec<(u8, [u8; 32])>> = vec![Vec::new(); n];
    let mut mask_shares: Vec<Vec<(u8, [u8; 32])>> = vec![Vec::new(); n];
    for r in reveals {
        let from = usize::from(r.from);
        if from >= n || !survived[from] {
            continue;
        }
        for (o, s) in &r.self_shares {
            let o = usize::from(*o);
            if o < n
                && survived[o]
                && round.share_matches(o, from, false, s)
                && !self_shares[o].iter().any(|(x, _)| *x == x_of(from))
            {
                self_shares[o].push((x_of(from), *s));
            }
        }
        for (o, s) in &r.mask_shares {
            let o = usize::from(*o);
            if o < n
                && round.is_active(o)
                && !survived[o]
                && round.share_matches(o, from, true, s)
                && !mask_shares[o].iter().any(|(x, _)| *x == x_of(from))
            {
                mask_shares[o].push((x_of(from), *s));
            }
        }
    }
    let rebuild = |shares: &mut Vec<(u8, [u8; 32])>, client| {
        if shares.len() < round.threshold {
            return Err(SecAggError::BelowThreshold {
                client,
                have: shares.len(),
                need: round.threshold,
            });
        }
        shares.sort();
        Ok(combine(shares, round.threshold))
    };
    for i in (0..n).filter(|i| survived[*i]) {
        let b = rebuild(&mut self_shares[i], i)?;
        if commitment(&b) != round.roster[i].self_commitment {
            return Err(SecAggError::BadShares { client: i });
        }
        add_prg(&mut sum, &b, true);
    }
    for d in (0..n).filter(|d| round.is_active(*d) && !survived[*d]) {
        let live: Vec<usize> = round
            .neighbours(d)
            .iter()
            .copied()
            .filter(|i| survived[*i])
            .collect();
        if live.is_empty() {
            continue;
        }
        let s = rebuild(&mut mask_shares[d], d)?;
        if x25519(s, X25519_BASEPOINT_BYTES) != round.roster[d].mask {
            return Err(SecAggError::BadShares { client: d });
        }
        for i in live {
            // Survivor i added +PRG when d > i, −PRG when d < i: take it away.
            let seed = round.pair_seed(s, d, i)?;
            add_prg(&mut sum, &seed, d > i);
        }
    }
    Ok(sum)
}

/// The revealers in `reveals` that revealed a share its dealer's hash refutes (to be
/// penalised; [`unmask`] ignores those shares).
pub fn bad_revealers(round: &Round, reveals: &[Reveal]) -> Vec<usize> {
    let mut bad: Vec<usize> = reveals
        .iter()
        .filter(|r| {
            let from = usize::from(r.from);
            let wrong = |shares: &[(u16, [u8; 32])], mask: bool| {
                shares.iter().any(|(o, s)| {
                    let o = usize::from(*o);
                    round.share_hashes(o, from).is_some() && !round.share_matches(o, from, mask, s)
                })
            };
            wrong(&r.self_shares, false) || wrong(&r.mask_shares, true)
        })
        .map(|r| usize::from(r.from))
        .collect();
    bad.sort_unstable();
    bad.dedup();
    bad
}

/// Fixed-point encoding of bounded values for exact sums in `u32` arithmetic: `v ↦
/// round(v · scale)` as a two's-complement `i32`, with `scale` chosen so the sum of `clients`
/// values of magnitude at most `bound` cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    /// Units per 1.0.
    pub scale: f64,
    /// The largest magnitude encoded (larger values are clamped).
    pub bound: f64,
}

impl FixedPoint {
    /// The finest scale for `clients` values of magnitude at most `bound`.
    pub fn new(bound: f64, clients: usize) -> Result<FixedPoint, SecAggError> {
        if !(bound.is_finite() && bound > 0.0) || clients == 0 {
            return Err(SecAggError::Parameters(format!(
                "fixed point needs a positive finite bound and clients (got {bound}, {clients})"
            )));
        }
        Ok(FixedPoint {
            scale: (f64::from(i32::MAX) / (bound * clients as f64))
                .floor()
                .max(1.0),
            bound,
        })
    }

    /// `values`, clamped to `±bound`, encoded (NaN as 0).
    pub fn encode(&self, values: &[f32]) -> Vec<u32> {
        values
            .iter()
            .map(|v| {
                let v = f64::from(*v);
                let v = if v.is_nan() {
                    0.0
                } else {
                    v.clamp(-self.bound, self.bound)
                };
                ((v * self.scale).round() as i32) as u32
            })
            .collect()
    }

    /// A sum of encoded values, decoded.
    pub fn decode(&self, sum: &[u32]) -> Vec<f32> {
        sum.iter()
            .map(|s| (f64::from(*s as i32) / self.scale) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests;
