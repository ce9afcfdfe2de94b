//! Who runs which job: a ranking of the generation's members per job, seeded by the previous
//! closure and weighted by reputation (DESIGN §2.3).
//!
//! Each member gets the key `h(job, seed, peer) / weight(peer)` (`h` a 64-bit hash, widened so
//! the division keeps precision); members are ranked by ascending key, ties by key bytes. A
//! higher weight lowers the key, so reputable peers are ranked first more often, while every
//! member keeps a chance: this is weighted rendezvous hashing with integer arithmetic, so every
//! node computes exactly the same order. The seed comes from the previous closure, so no one
//! can grind an identity that ranks first for a job in advance.
//!
//! The top `r` (the job's *owners*) run a job. [`eligible`] widens the set over time — one more
//! rank each time the job deadline passes after the job's due round — never beyond
//! `r + max_extra`. Idle peers take work over earlier by stealing and replication
//! (`peer/scheduling.rs`, ADR 0007).

use crate::id::{JobId, context, keyed_hasher};
use crate::identity::PeerKey;
use crate::spec::MAX_ROSTER;

/// Weight of a peer with no agreed results (new peers).
pub const BASE_WEIGHT: u64 = 4;
/// Largest weight (a peer with many agreed results is at most this / `BASE_WEIGHT` times as
/// likely to rank first).
pub const MAX_WEIGHT: u64 = 16;

/// The assignment weight of a peer with `agreed` agreed results and `penalties` proven
/// offences (failed audits, equivocations): offenders drop to weight 1.
pub fn weight(agreed: u64, penalties: u64) -> u64 {
    if penalties > 0 {
        1
    } else {
        (BASE_WEIGHT + agreed / 4).min(MAX_WEIGHT)
    }
}

/// `members` ranked for `job` (best first).
pub fn rank(
    job: &JobId,
    seed: &[u8; 32],
    members: &[PeerKey],
    weight_of: impl Fn(&PeerKey) -> u64,
) -> Vec<PeerKey> {
    let prefix = rank_prefix(job, seed);
    let mut keyed: Vec<(u128, PeerKey)> = members
        .iter()
        .map(|p| (rank_key_from(&prefix, p, weight_of(p)), *p))
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// `me`'s place in [`rank`]'s order (0 = first), without sorting; `None` if not a member.
pub fn position(
    job: &JobId,
    seed: &[u8; 32],
    members: &[PeerKey],
    weight_of: impl Fn(&PeerKey) -> u64,
    me: &PeerKey,
) -> Option<usize> {
    position_below(job, seed, members, weight_of, me, usize::MAX)
}

/// `me`'s place in [`rank`]'s order if it is below `bound`; `None` if it is not (or `me` is
/// not a member). Stops counting as soon as `bound` members rank before `me`, so a peer that
/// lists the jobs it may ever run (`bound = r + max_extra`) hashes a few dozen members per job
/// instead of all of them: a member at place `p` is passed after about `bound · n / p` of the
/// `n` members, `bound · (1 + ln(n / bound))` on average.
pub fn position_below(
    job: &JobId,
    seed: &[u8; 32],
    members: &[PeerKey],
    weight_of: impl Fn(&PeerKey) -> u64,
    me: &PeerKey,
    bound: usize,
) -> Option<usize> {
    members.binary_search(me).ok()?;
    let prefix = rank_prefix(job, seed);
    let mine = (rank_key_from(&prefix, me, weight_of(me)), *me);
    let mut before = 0;
    for p in members {
        if (rank_key_from(&prefix, p, weight_of(p)), *p) < mine {
            before += 1;
            if before >= bound {
                return None;
            }
        }
    }
    Some(before)
}

/// A member's ranking key for a job: `h(job, seed, peer) / weight`, widened so the division
/// keeps precision. `h` is the first 8 bytes of the keyed hash of the three 32-byte values
/// (their canonical encoding is their concatenation).
/// Voters of a generation: all members when they fit the roster cap, else the `MAX_ROSTER`
/// members ranked first by the generation's seed.
pub fn voters(members: &[PeerKey], seed: &[u8; 32]) -> Vec<PeerKey> {
    if members.len() <= MAX_ROSTER {
        return members.to_vec();
    }
    let mut v = rank(&JobId(*seed), seed, members, |_| 1);
    v.truncate(MAX_ROSTER);
    v.sort();
    v
}

#[cfg(test)]
fn rank_key(job: &JobId, seed: &[u8; 32], p: &PeerKey, weight: u64) -> u128 {
    rank_key_from(&rank_prefix(job, seed), p, weight)
}

/// The keyed hasher with the job and seed already fed: the part of [`rank_key`] shared by
/// every member ranked for one job.
fn rank_prefix(job: &JobId, seed: &[u8; 32]) -> blake3::Hasher {
    let mut h = keyed_hasher(context::RANK);
    h.update(job.as_bytes());
    h.update(seed);
    h
}

fn rank_key_from(prefix: &blake3::Hasher, p: &PeerKey, weight: u64) -> u128 {
    let mut h = prefix.clone();
    h.update(p.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u128::from(u64::from_le_bytes(b)) << 32) / u128::from(weight.max(1))
}

/// How many of the ranked members may run a job `elapsed_ms` after its generation started,
/// when the job is due after `due_round` deadlines: `r`, plus one per deadline passed since
/// it was due — at most `r + max_extra` (and at most the number of members).
pub fn eligible(
    r: usize,
    max_extra: usize,
    elapsed_ms: u64,
    deadline_ms: u64,
    due_round: u64,
    members: usize,
) -> usize {
    let rounds = (elapsed_ms / deadline_ms.max(1)).saturating_sub(due_round.max(1) - 1);
    let passed = usize::try_from(rounds).unwrap_or(usize::MAX);
    (r + passed.min(max_extra)).min(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::hash_canonical;

    #[test]
    fn rank_key_hashes_the_canonical_encoding_and_position_matches_rank() {
        let members = {
            let mut m = peers(30);
            m.sort();
            m
        };
        let (job, seed) = (JobId([3; 32]), [4u8; 32]);
        let h = hash_canonical(context::RANK, &(job, seed, members[0]));
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        assert_eq!(
            rank_key(&job, &seed, &members[0], 4),
            (u128::from(u64::from_le_bytes(b)) << 32) / 4
        );
        let w = |p: &PeerKey| u64::from(p.0[0] % 16) + 1;
        let ranked = rank(&job, &seed, &members, w);
        for p in &members {
            let at = ranked.iter().position(|x| x == p);
            assert_eq!(position(&job, &seed, &members, w, p), at);
            for bound in [1, 3, 6, 30] {
                assert_eq!(
                    position_below(&job, &seed, &members, w, p, bound),
                    at.filter(|&a| a < bound)
                );
            }
        }
        let outsider = Keypair::from_secret_bytes([99; 32]).public();
        assert_eq!(position(&job, &seed, &members, w, &outsider), None);
    }
    use crate::identity::Keypair;

    fn peers(n: u8) -> Vec<PeerKey> {
        (0..n)
            .map(|i| Keypair::from_secret_bytes([i; 32]).public())
            .collect()
    }

    #[test]
    fn ranking_is_a_deterministic_permutation() {
        let m = peers(20);
        let job = JobId([7; 32]);
        let a = rank(&job, &[1; 32], &m, |_| BASE_WEIGHT);
        let mut shuffled = m.clone();
        shuffled.reverse();
        assert_eq!(a, rank(&job, &[1; 32], &shuffled, |_| BASE_WEIGHT));
        let mut sorted = a.clone();
        sorted.sort();
        let mut ms = m.clone();
        ms.sort();
        assert_eq!(sorted, ms);
        assert_ne!(a, rank(&job, &[2; 32], &m, |_| BASE_WEIGHT));
    }

    #[test]
    fn weight_shifts_first_places() {
        let m = peers(10);
        let heavy = m[3];
        let w = |p: &PeerKey| if *p == heavy { MAX_WEIGHT } else { BASE_WEIGHT };
        let firsts = (0..2000u32)
            .filter(|i| {
                let mut j = [0u8; 32];
                j[..4].copy_from_slice(&i.to_le_bytes());
                rank(&JobId(j), &[0; 32], &m, w)[0] == heavy
            })
            .count();
        // Uniform would give 200 of 2000; weight 4x should give clearly more.
        assert!(firsts > 400, "{firsts}");
        assert_eq!(weight(0, 0), BASE_WEIGHT);
        assert_eq!(weight(1000, 0), MAX_WEIGHT);
        assert_eq!(weight(1000, 1), 1);
    }

    #[test]
    fn eligibility_grows_with_deadlines_past_the_due_round_up_to_the_bound() {
        assert_eq!(eligible(3, 2, 0, 100, 1, 10), 3);
        assert_eq!(eligible(3, 2, 150, 100, 1, 10), 4);
        assert_eq!(eligible(3, 2, 10_000, 100, 1, 10), 5);
        assert_eq!(eligible(3, 2, 10_000, 100, 1, 4), 4, "at most the members");
        // Due after 5 deadlines: no one else before the 5th has passed.
        assert_eq!(eligible(3, 2, 450, 100, 5, 10), 3);
        assert_eq!(eligible(3, 2, 500, 100, 5, 10), 4);
        assert_eq!(eligible(3, 2, 650, 100, 5, 10), 5);
    }
}
