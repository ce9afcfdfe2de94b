//! Agreement: when do two results count as the same, and which result does a job settle on.
//!
//! Rules are small pure functions (`agree`, `settle`) so every node, given the same evidence in
//! any order, reaches the same settlement.
//!
//! * Parameters, FLOPs and the evaluation-set size must match exactly; correct counts may
//!   differ by at most [`Tolerance::correct`]; named extra metrics must have the same names and
//!   differ by at most [`Tolerance::extra`]; artifacts must be identical when
//!   [`Tolerance::exact_artifacts`] (CPU backends are bit-exact, so weights hash alike).
//! * Failures agree when their [`FailureKind`](crate::FailureKind) is the same: a job that
//!   fails for every honest executor settles as a failure.
//! * Tolerance is not transitive, so `settle` picks an *anchor*: the result that the most
//!   executors agree with (ties broken by the lowest outcome digest, then signer). If another
//!   result has as much support but disagrees with the anchor, the job is *contested* and does
//!   not settle until more evidence arrives (a tie-breaker or audit). The canonical outcome is
//!   the lower median, by correct count then digest, of the anchor's supporters: an outlier
//!   inside the tolerance cannot pull it.

use serde::{Deserialize, Serialize};

use crate::identity::PeerKey;
use crate::outcome::Outcome;
pub use crate::outcome::Tolerance;

/// Whether two outcomes agree within `tol`.
pub fn agree(a: &Outcome, b: &Outcome, tol: &Tolerance) -> bool {
    match (a, b) {
        (Outcome::Success(a), Outcome::Success(b)) => {
            a.params == b.params
                && a.flops == b.flops
                && a.total == b.total
                && a.correct.abs_diff(b.correct) <= tol.correct
                && a.extra.len() == b.extra.len()
                && a.extra
                    .iter()
                    .zip(&b.extra)
                    .all(|((ka, va), (kb, vb))| ka == kb && va.abs_diff(*vb) <= tol.extra)
                && (!tol.exact_artifacts || a.artifacts == b.artifacts)
        }
        (Outcome::Failure(a), Outcome::Failure(b)) => a.kind == b.kind,
        _ => false,
    }
}

/// A job's agreed outcome and who agreed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Settlement {
    /// The agreed outcome.
    pub canonical: Outcome,
    /// Executors whose result agrees with the anchor (sorted).
    pub agreeing: Vec<PeerKey>,
    /// Executors whose result does not (sorted).
    pub dissenting: Vec<PeerKey>,
}

impl Settlement {
    /// A digest of the whole settlement, for comparing ledgers across nodes.
    pub fn digest(&self) -> [u8; 32] {
        crate::id::hash_canonical("hivemesh 2026-11 settlement digest v1", self)
    }
}

/// Settles a job from its results, one per executor.
///
/// Returns `None` when fewer than `q` executors agree, or when two disagreeing results have
/// equal, maximal support (contested). An executor listed twice with different outcomes is
/// treated as an equivocator and ignored; listed twice with the same outcome, once. The answer
/// depends only on the set of `(peer, outcome)` pairs, never on their order.
pub fn settle(results: &[(PeerKey, Outcome)], q: usize, tol: &Tolerance) -> Option<Settlement> {
    let entries: Vec<(PeerKey, [u8; 32], &Outcome)> =
        results.iter().map(|(p, o)| (*p, o.digest(), o)).collect();
    settle_digested(entries, q, tol)
}

/// [`settle`] on results whose [`Outcome::digest`]s are already known (the ledger caches
/// them). `entries` are `(peer, digest of outcome, outcome)`.
pub(crate) fn settle_digested(
    mut entries: Vec<(PeerKey, [u8; 32], &Outcome)>,
    q: usize,
    tol: &Tolerance,
) -> Option<Settlement> {
    entries.sort_by_key(|e| (e.0, e.1));
    entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    // Drop peers that still appear twice (two different outcomes).
    let mut unique: Vec<(PeerKey, [u8; 32], &Outcome)> = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let mut j = i + 1;
        while j < entries.len() && entries[j].0 == entries[i].0 {
            j += 1;
        }
        if j == i + 1 {
            unique.push(entries[i]);
        }
        i = j;
    }
    // Order key for deterministic choices: (digest, peer).
    unique.sort_by_key(|e| (e.1, e.0));
    let n = unique.len();
    if q == 0 || n < q {
        return None;
    }
    let support: Vec<usize> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| agree(unique[i].2, unique[j].2, tol))
                .count()
        })
        .collect();
    let best_support = *support.iter().max()?;
    if best_support < q {
        return None;
    }
    // The first (lowest digest) result with maximal support is the anchor.
    let anchor = (0..n).find(|&i| support[i] == best_support)?;
    let contested =
        (0..n).any(|i| support[i] == best_support && !agree(unique[anchor].2, unique[i].2, tol));
    if contested {
        return None;
    }
    let mut agreeing: Vec<&(PeerKey, [u8; 32], &Outcome)> = unique
        .iter()
        .filter(|e| agree(unique[anchor].2, e.2, tol))
        .collect();
    agreeing.sort_by_key(|e| (correct_of(e.2), e.1));
    let canonical = agreeing[(agreeing.len() - 1) / 2].2.clone();
    let mut agreeing_peers: Vec<PeerKey> = agreeing.iter().map(|e| e.0).collect();
    agreeing_peers.sort();
    let mut dissenting: Vec<PeerKey> = unique
        .iter()
        .map(|e| e.0)
        .filter(|p| agreeing_peers.binary_search(p).is_err())
        .collect();
    dissenting.sort();
    Some(Settlement {
        canonical,
        agreeing: agreeing_peers,
        dissenting,
    })
}

fn correct_of(o: &Outcome) -> u64 {
    match o {
        Outcome::Success(m) => m.correct,
        Outcome::Failure(_) => 0,
    }
}

/// The quorum for `n` executors by simple majority: `floor(n / 2) + 1`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outcome::{Failure, FailureKind, Metrics};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    pub(crate) fn metrics(correct: u64) -> Outcome {
        Outcome::Success(Metrics {
            correct,
            total: 1000,
            params: 5000,
            flops: 10_000,
            extra: BTreeMap::new(),
            artifacts: vec![],
        })
    }

    pub(crate) fn peer(i: u8) -> PeerKey {
        PeerKey([i; 32])
    }

    fn fail(kind: FailureKind, detail: &str) -> Outcome {
        Outcome::Failure(Failure {
            kind,
            detail: detail.into(),
        })
    }

    const TOL2: Tolerance = Tolerance {
        correct: 2,
        extra: 0,
        exact_artifacts: false,
    };

    #[test]
    fn agree_rules() {
        let a = metrics(900);
        assert!(agree(&a, &metrics(902), &TOL2));
        assert!(!agree(&a, &metrics(903), &TOL2));
        assert!(!agree(&a, &metrics(901), &Tolerance::EXACT));
        let Outcome::Success(mut m) = metrics(900) else {
            unreachable!()
        };
        m.params += 1;
        assert!(
            !agree(&a, &Outcome::Success(m.clone()), &TOL2),
            "params exact"
        );
        m.params -= 1;
        m.flops += 1;
        assert!(
            !agree(&a, &Outcome::Success(m.clone()), &TOL2),
            "flops exact"
        );
        m.flops -= 1;
        m.extra.insert("loss".into(), 5);
        assert!(
            !agree(&a, &Outcome::Success(m.clone()), &TOL2),
            "same names"
        );
        m.artifacts.push(crate::BlobId([1; 32]));
        m.extra.clear();
        assert!(agree(&a, &Outcome::Success(m.clone()), &TOL2));
        assert!(!agree(&a, &Outcome::Success(m), &Tolerance::EXACT));
        // Failures agree by kind only.
        assert!(agree(
            &fail(FailureKind::NonFinite, "x"),
            &fail(FailureKind::NonFinite, "y"),
            &Tolerance::EXACT
        ));
        assert!(!agree(
            &fail(FailureKind::NonFinite, "x"),
            &fail(FailureKind::OutOfMemory, "x"),
            &Tolerance::EXACT
        ));
        assert!(!agree(&a, &fail(FailureKind::NonFinite, ""), &TOL2));
    }

    #[test]
    fn two_of_three_settles_and_names_dissenter() {
        let r = [
            (peer(1), metrics(900)),
            (peer(2), metrics(900)),
            (peer(3), metrics(500)),
        ];
        let s = settle(&r, 2, &Tolerance::EXACT).unwrap();
        assert_eq!(s.canonical, metrics(900));
        assert_eq!(s.agreeing, vec![peer(1), peer(2)]);
        assert_eq!(s.dissenting, vec![peer(3)]);
        assert!(settle(&r[..1], 2, &Tolerance::EXACT).is_none());
        assert!(settle(&r, 3, &Tolerance::EXACT).is_none());
    }

    #[test]
    fn contested_ties_do_not_settle() {
        let r = [
            (peer(1), metrics(900)),
            (peer(2), metrics(900)),
            (peer(3), metrics(500)),
            (peer(4), metrics(500)),
        ];
        assert!(settle(&r, 2, &Tolerance::EXACT).is_none());
        // A fifth vote breaks the tie.
        let mut r5 = r.to_vec();
        r5.push((peer(5), metrics(500)));
        let s = settle(&r5, 2, &Tolerance::EXACT).unwrap();
        assert_eq!(s.canonical, metrics(500));
        assert_eq!(s.dissenting, vec![peer(1), peer(2)]);
    }

    #[test]
    fn canonical_is_median_of_supporters() {
        // 900, 901, 902 all within 2 of 901 (the anchor with the most support).
        let r = [
            (peer(1), metrics(902)),
            (peer(2), metrics(900)),
            (peer(3), metrics(901)),
        ];
        let s = settle(&r, 2, &TOL2).unwrap();
        assert_eq!(s.canonical, metrics(901));
        assert_eq!(s.agreeing.len(), 3);
    }

    #[test]
    fn equivocating_peer_is_ignored() {
        let r = [
            (peer(1), metrics(900)),
            (peer(1), metrics(500)),
            (peer(2), metrics(500)),
        ];
        assert!(settle(&r, 2, &Tolerance::EXACT).is_none());
        // The same outcome twice counts once.
        let r = [
            (peer(1), metrics(900)),
            (peer(1), metrics(900)),
            (peer(2), metrics(900)),
        ];
        assert_eq!(settle(&r, 2, &Tolerance::EXACT).unwrap().agreeing.len(), 2);
    }

    #[test]
    fn failures_settle_as_failures() {
        let r = [
            (peer(1), fail(FailureKind::NonFinite, "nan at step 3")),
            (peer(2), fail(FailureKind::NonFinite, "nan at step 4")),
            (peer(3), metrics(10)),
        ];
        let s = settle(&r, 2, &Tolerance::EXACT).unwrap();
        assert!(matches!(s.canonical, Outcome::Failure(_)));
        assert_eq!(s.dissenting, vec![peer(3)]);
    }

    #[test]
    fn majority_quorum() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
    }

    proptest! {
        #[test]
        fn settle_ignores_order(
            votes in proptest::collection::vec((0u8..8, 895u64..905), 0..10),
            q in 1usize..5,
            tol in 0u64..4,
            seed in any::<u64>(),
        ) {
            let tol = Tolerance { correct: tol, extra: 0, exact_artifacts: false };
            let results: Vec<(PeerKey, Outcome)> =
                votes.iter().map(|(p, c)| (peer(*p), metrics(*c))).collect();
            let mut shuffled = results.clone();
            // Deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let a = settle(&results, q, &tol);
            let b = settle(&shuffled, q, &tol);
            prop_assert_eq!(&a, &b);
            if let Some(s) = a {
                prop_assert!(s.agreeing.len() >= q);
                prop_assert!(s.agreeing.iter().all(|p| !s.dissenting.contains(p)));
            }
        }
    }
}
