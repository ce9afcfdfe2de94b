//! The closure of a generation: the frozen, agreed record of its jobs' results (ADR 0003).
//!
//! Every honest peer adopts the same closure for generation `g` (by the voting in
//! [`crate::consensus`]) before deriving generation `g + 1` from it. A closure lists one
//! [`Entry`] per job, the members of the next generation, and the next job deadline; its
//! [`root`](Closure::root) names it and its [`seed`](Closure::seed) seeds everything random
//! about the next generation (job derivation, assignment, proposer order, audit sampling), so
//! none of that can be predicted or ground before the closure is final.

use serde::{Deserialize, Serialize};

use crate::agreement::Settlement;
use crate::audit::Verdict;
use crate::id::{CampaignId, JobId, context, hash_canonical};
use crate::identity::PeerKey;
use crate::outcome::Outcome;
use crate::spec::Schedule;

/// What a closure records for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// `settlement.agreeing` (at least `q` peers) committed and revealed results that agree
    /// with `settlement.canonical`; `settlement.dissenting` revealed others.
    Settled {
        /// The job.
        job: JobId,
        /// The agreed outcome and who agreed and dissented.
        settlement: Settlement,
        /// The lower median of the agreeing executors' reported wall times.
        wall_time_ms: u64,
        /// The agreeing executors that earn credit ([`credited`]): not copiers.
        credited: Vec<PeerKey>,
    },
    /// No quorum by the deadline: the job is run again in the next generation (a repair
    /// generation, see [`crate::derive::Derivation::advance`]); void again there, the search
    /// treats it as failed.
    Void {
        /// The job.
        job: JobId,
        /// Why, as the proposer's evidence showed it.
        reason: VoidReason,
    },
}

/// Why a job went void: the proposer's reading of its evidence at the deadline. Informative
/// only: a validator checks that the job has no quorum and that the deadline passed, not the
/// reason (its own evidence may differ, and a closure must not wait on that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoidReason {
    /// No member claimed it.
    NoClaim,
    /// Claimed, but fewer than a quorum of executors revealed results by the deadline.
    NoQuorum,
    /// A quorum revealed results, but no quorum of them agree: a dispute left unresolved.
    Disputed,
}

impl VoidReason {
    /// The reason in words (the API and CLI).
    pub fn as_str(&self) -> &'static str {
        match self {
            VoidReason::NoClaim => "no claim",
            VoidReason::NoQuorum => "no quorum by the deadline",
            VoidReason::Disputed => "dispute unresolved",
        }
    }
}

impl Entry {
    /// The job.
    pub fn job(&self) -> JobId {
        match self {
            Entry::Settled { job, .. } | Entry::Void { job, .. } => *job,
        }
    }

    /// The agreed outcome, if the job settled.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            Entry::Settled { settlement, .. } => Some(&settlement.canonical),
            Entry::Void { .. } => None,
        }
    }
}

/// The agreed record of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// The campaign.
    pub campaign: CampaignId,
    /// The generation closed.
    pub generation: u32,
    /// The root of the previous generation's closure (all zeros for generation 0).
    pub previous: [u8; 32],
    /// One entry per job of the generation, in job-id order.
    pub entries: Vec<Entry>,
    /// Verdicts on jobs of earlier generations audited since (in job-id order).
    pub verdicts: Vec<Verdict>,
    /// The members of the next generation (sorted): who executes and from whom its voters are
    /// drawn.
    pub members: Vec<PeerKey>,
    /// The next generation's job deadline ([`next_deadline`]).
    pub deadline_ms: u64,
}

impl Closure {
    /// The closure's name: the hash of its canonical encoding.
    pub fn root(&self) -> [u8; 32] {
        hash_canonical(context::CLOSURE, self)
    }

    /// The next generation's seed.
    pub fn seed(&self) -> [u8; 32] {
        self.seed_from(&self.root())
    }

    /// The next generation's seed, given this closure's `root` (computed already).
    pub fn seed_from(&self, root: &[u8; 32]) -> [u8; 32] {
        generation_seed(&self.campaign, self.generation + 1, root)
    }

    /// [`Closure::root`] of a shared closure, remembered for the last few closures hashed on
    /// this thread. A proposal's closure (thousands of entries) reaches a peer as one `Arc`
    /// shared by every copy of the message, and every peer in a process (a simulator, a
    /// cluster) hashes it several times; the cache holds a clone of each `Arc` it remembers,
    /// so a remembered allocation can be neither freed and reused nor mutated (`Arc::make_mut`
    /// copies a shared value).
    pub fn root_shared(closure: &std::sync::Arc<Closure>) -> [u8; 32] {
        use std::cell::RefCell;
        use std::sync::Arc;
        const KEEP: usize = 4;
        thread_local! {
            static ROOTS: RefCell<Vec<(Arc<Closure>, [u8; 32])>> = const { RefCell::new(Vec::new()) };
        }
        if let Some(root) = ROOTS.with_borrow(|roots| {
            roots
                .iter()
                .find(|(c, _)| Arc::ptr_eq(c, closure))
                .map(|(_, r)| *r)
        }) {
            return root;
        }
        let root = closure.root();
        ROOTS.with_borrow_mut(|roots| {
            if roots.len() == KEEP {
                roots.remove(0);
            }
            roots.push((Arc::clone(closure), root));
        });
        root
    }
}

/// The seed of generation `generation`: from the campaign alone for generation 0 (`previous`
/// all zeros), else from the previous closure's root.
pub fn generation_seed(campaign: &CampaignId, generation: u32, previous: &[u8; 32]) -> [u8; 32] {
    hash_canonical(context::SEED, &(campaign, generation, previous))
}

/// The next job deadline: twice the 90th percentile of the settled jobs' wall times, clamped
/// to the schedule's bounds; the previous deadline when nothing settled. It is one job's time:
/// how many jobs an executor has before a given one is its due round (ADR 0007), not part of
/// the deadline (until issue 23 it was multiplied by `⌈jobs · r / members⌉`).
pub fn next_deadline(entries: &[Entry], previous_ms: u64, schedule: &Schedule) -> u64 {
    let times: Vec<u64> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Settled { wall_time_ms, .. } => Some(*wall_time_ms),
            Entry::Void { .. } => None,
        })
        .collect();
    deadline_from_times(times, previous_ms, schedule)
}

/// Twice the 90th percentile of settled jobs' wall `times`, clamped to the schedule's bounds;
/// `previous_ms` (clamped) when there are none.
pub fn deadline_from_times(mut times: Vec<u64>, previous_ms: u64, schedule: &Schedule) -> u64 {
    times.sort_unstable();
    deadline_from_sorted(&times, previous_ms, schedule)
}

/// [`deadline_from_times`] of times already sorted (ascending).
pub fn deadline_from_sorted(times: &[u64], previous_ms: u64, schedule: &Schedule) -> u64 {
    let Some(p90) = times.get((times.len() * 9).div_ceil(10).saturating_sub(1)) else {
        return previous_ms.clamp(schedule.min_deadline_ms, schedule.max_deadline_ms);
    };
    p90.saturating_mul(2)
        .clamp(schedule.min_deadline_ms, schedule.max_deadline_ms)
}

/// Which agreeing executors earn credit for a job: those whose commitment most of the other
/// agreeing executors witnessed (held before any result was public), per their reveals'
/// `witnessed` lists; a lone agreeing executor always. A lazy copier can only commit after
/// seeing a reveal, so the executors it copied never witness it. `agreeing` is sorted.
pub fn credited<'a>(
    agreeing: &[PeerKey],
    witnessed: impl Fn(&PeerKey) -> &'a [PeerKey],
) -> Vec<PeerKey> {
    let others = agreeing.len().saturating_sub(1);
    agreeing
        .iter()
        .filter(|p| {
            let by = agreeing
                .iter()
                .filter(|a| *a != *p && witnessed(a).binary_search(p).is_ok())
                .count();
            others == 0 || 2 * by > others
        })
        .copied()
        .collect()
}

/// The lower median of some wall times (0 for none).
pub fn lower_median(mut times: Vec<u64>) -> u64 {
    times.sort_unstable();
    times
        .get(times.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn deadline_adapts_and_is_clamped() {
        let s = Schedule {
            job_deadline_ms: 1000,
            min_deadline_ms: 100,
            max_deadline_ms: 5000,
            max_extra_executors: 1,
            round_timeout_ms: 10,
        };
        let job = JobId([0; 32]);
        let settled = |t| Entry::Settled {
            job,
            settlement: Settlement {
                canonical: Outcome::Failure(crate::outcome::Failure {
                    kind: crate::outcome::FailureKind::NonFinite,
                    detail: String::new(),
                }),
                agreeing: vec![],
                dissenting: vec![],
            },
            wall_time_ms: t,
            credited: vec![],
        };
        let e: Vec<Entry> = (1..=10).map(|i| settled(i * 100)).collect();
        assert_eq!(next_deadline(&e, 1000, &s), 1800);
        assert_eq!(next_deadline(&[settled(10)], 1000, &s), 100);
        assert_eq!(next_deadline(&[settled(10_000)], 1000, &s), 5000);
        assert_eq!(
            next_deadline(
                &[Entry::Void {
                    job,
                    reason: VoidReason::NoClaim
                }],
                1000,
                &s
            ),
            1000
        );
        assert_eq!(lower_median(vec![5, 1, 3, 2]), 2);
    }

    #[test]
    fn credit_needs_witnesses_from_most_fellow_executors() {
        let k = |b: u8| PeerKey([b; 32]);
        let (h1, h2, c1, c2) = (k(1), k(2), k(3), k(4));
        let lists: BTreeMap<PeerKey, Vec<PeerKey>> = [
            (h1, vec![h2]),
            (h2, vec![h1]),
            // Copiers list everyone, each other included.
            (c1, vec![h1, h2, c2]),
            (c2, vec![h1, h2, c1]),
        ]
        .into_iter()
        .collect();
        let w = |p: &PeerKey| lists.get(p).map_or(&[][..], Vec::as_slice);
        let mut all = vec![h1, h2, c1, c2];
        all.sort();
        assert_eq!(credited(&all, w), vec![h1, h2]);
        assert_eq!(credited(&[h1], w), vec![h1]);
        // A copier beside one honest executor: only the honest one is credited.
        let mut pair = vec![h1, c1];
        pair.sort();
        assert_eq!(credited(&pair, w), vec![h1]);
        // Two copiers beside one honest executor each have only one of two witnesses.
        let mut three = vec![h1, c1, c2];
        three.sort();
        assert_eq!(credited(&three, w), vec![h1]);
        // Copiers that out-number the honest executors two to one credit each other: that is
        // collusion, which audits address.
        let c3 = k(5);
        let lists3: BTreeMap<PeerKey, Vec<PeerKey>> = [
            (h1, vec![]),
            (c1, vec![h1, c2, c3]),
            (c2, vec![h1, c1, c3]),
            (c3, vec![h1, c1, c2]),
        ]
        .into_iter()
        .collect();
        let w3 = |p: &PeerKey| lists3.get(p).map_or(&[][..], Vec::as_slice);
        let mut four = vec![h1, c1, c2, c3];
        four.sort();
        assert_eq!(credited(&four, w3), four);
    }
}
