//! Scheduling a generation's jobs (issue 23, ADR 0007): the plan every node derives from the
//! ranking, and the estimates an idle peer uses to take over work that others would reach
//! late.
//!
//! The plan is agreed data: each member's *queue* (the jobs it is ranked among the first `r`
//! for, in rank-then-index order), each job's *owners* (those first `r`) and its *due round*
//! (when the last owner reaches it, one slot and one deadline per job each). Due rounds bound
//! how late a job may be before others take it and before it is void.
//!
//! What happens inside those bounds is each peer's own decision from what it has seen: claims
//! and commitments as they arrive here (local clock), and the slots and job time that peers
//! advertise in their heartbeats. None of it changes what a closure may contain, so peers need
//! not agree on it: an honest peer only uses it to start a job earlier than its owners would.

use std::collections::HashMap;

use crate::id::JobId;
use crate::identity::PeerKey;

/// The most job slots a peer's heartbeat may advertise: a larger number counts as this.
pub const MAX_SLOTS: u16 = 64;

/// Slots assumed for a peer that has advertised none.
pub const DEFAULT_SLOTS: u16 = 1;

/// A generation's plan, computed identically by every node from the ranking.
#[derive(Debug)]
pub struct Plan {
    /// Each job's due round: after how many job deadlines every one of its owners has had
    /// its turn at it (a job nobody owns is not listed: due after one).
    pub due: HashMap<JobId, u64>,
    /// The largest due round (1 without jobs).
    pub last_due: u64,
    /// Each member's queue: the jobs it owns, in the order it takes them.
    pub queues: HashMap<PeerKey, Vec<JobId>>,
    /// Each job's owners, with the job's place in each one's queue.
    pub owners: HashMap<JobId, Vec<(PeerKey, u32)>>,
    /// Each job's ranked members below the rank table's bound (the owners first): who may
    /// ever run it.
    pub ranked: HashMap<JobId, Vec<PeerKey>>,
}

impl Default for Plan {
    /// No jobs: nothing owned, everything due after one deadline.
    fn default() -> Plan {
        Plan {
            due: HashMap::new(),
            last_due: 1,
            queues: HashMap::new(),
            owners: HashMap::new(),
            ranked: HashMap::new(),
        }
    }
}

impl Plan {
    /// The plan from each member's ranked jobs `(position, index, job)`, sorted (a rank table
    /// of at least `r` places): the jobs at positions below `r` are its queue.
    pub fn new<'a>(
        ranked: impl IntoIterator<Item = (&'a PeerKey, &'a [(usize, u32, JobId)])>,
        r: usize,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut by_rank: HashMap<JobId, Vec<(usize, PeerKey)>> = HashMap::new();
        for (member, list) in ranked {
            for (pos, _, job) in list {
                by_rank.entry(*job).or_default().push((*pos, *member));
            }
            let queue: Vec<JobId> = list
                .iter()
                .filter(|(pos, _, _)| *pos < r)
                .map(|(_, _, j)| *j)
                .collect();
            for (i, job) in queue.iter().enumerate() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                plan.owners.entry(*job).or_default().push((*member, i));
                let d = plan.due.entry(*job).or_insert(0);
                *d = (*d).max(u64::from(i) + 1);
                plan.last_due = plan.last_due.max(u64::from(i) + 1);
            }
            if !queue.is_empty() {
                plan.queues.insert(*member, queue);
            }
        }
        for (job, mut list) in by_rank {
            list.sort_unstable();
            plan.ranked
                .insert(job, list.into_iter().map(|(_, p)| p).collect());
        }
        plan
    }

    /// The job's due round (1 if nobody owns it).
    pub fn due(&self, job: &JobId) -> u64 {
        self.due.get(job).copied().unwrap_or(1)
    }
}

/// How long a peer takes per job, as this node sees it: a smoothed measurement (claim to
/// commitment, here) if it has one, else what the peer advertised, else nothing.
/// `oldest_open_ms`, the age of its oldest unfinished claim, is a lower bound that grows while
/// the peer says nothing: a peer that advertised a fast time it does not deliver is soon
/// estimated as slow as it is.
pub fn job_time_estimate(
    measured_ms: Option<u64>,
    advertised_ms: Option<u64>,
    oldest_open_ms: Option<u64>,
) -> Option<u64> {
    let base = measured_ms.or(advertised_ms);
    match (base, oldest_open_ms) {
        (Some(b), Some(o)) => Some(b.max(o)),
        (b, o) => b.or(o),
    }
}

/// The next value of a smoothed job time after a new measurement (an exponential average
/// weighting the new sample 1/4; the first sample is taken as is).
pub fn smoothed(previous: Option<u64>, sample_ms: u64) -> u64 {
    match previous {
        None => sample_ms,
        Some(p) => (p.saturating_mul(3).saturating_add(sample_ms)) / 4,
    }
}

/// When an owner of a job would finish it, counted from now: it has `ahead` unfinished jobs
/// of its queue before this one and `slots` slots, `per_job_ms` each.
pub fn owner_finish_ms(ahead: u64, slots: u16, per_job_ms: u64) -> u64 {
    let slots = u64::from(slots.clamp(1, MAX_SLOTS));
    (ahead / slots + 1).saturating_mul(per_job_ms)
}

/// Whether a peer that would finish a job in `mine_ms` should take it from owners that would
/// finish it in `theirs_ms`: only when it is clearly sooner (by a quarter of its own time), so
/// that two peers of equal speed do not trade jobs back and forth.
pub fn sooner(mine_ms: u64, theirs_ms: u64) -> bool {
    mine_ms.saturating_add(mine_ms / 4) < theirs_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn peers(n: u8) -> Vec<PeerKey> {
        (0..n)
            .map(|i| Keypair::from_secret_bytes([i; 32]).public())
            .collect()
    }

    #[test]
    fn a_job_is_due_when_the_last_of_its_owners_reaches_it() {
        let (a, b) = (peers(2)[0], peers(2)[1]);
        let j = |i: u8| JobId([i; 32]);
        // a's queue: j1 j2 j3 (places 0, 0, 1); b's: j3 j1 (0, 1); j4 is a's place 5 (beyond r).
        let qa = [(0, 1, j(1)), (0, 2, j(2)), (1, 3, j(3)), (5, 4, j(4))];
        let qb = [(0, 3, j(3)), (1, 1, j(1))];
        let plan = Plan::new([(&a, &qa[..]), (&b, &qb[..])], 2);
        assert_eq!(plan.due(&j(1)), 2, "b reaches it second");
        assert_eq!(plan.due(&j(2)), 2);
        assert_eq!(plan.due(&j(3)), 3, "a reaches it third");
        assert_eq!(plan.due(&j(4)), 1, "nobody's among the first r");
        assert!(!plan.owners.contains_key(&j(4)));
        assert_eq!(plan.last_due, 3);
        assert_eq!(plan.queues[&a], vec![j(1), j(2), j(3)]);
        assert_eq!(plan.owners[&j(1)], vec![(a, 0), (b, 1)]);
        assert_eq!(plan.ranked[&j(1)], vec![a, b], "by place");
        assert_eq!(plan.ranked[&j(3)], vec![b, a]);
        assert_eq!(plan.ranked[&j(4)], vec![a], "ranked, though not an owner");
    }

    #[test]
    fn estimates_prefer_measurement_and_grow_with_silence() {
        assert_eq!(job_time_estimate(None, None, None), None);
        assert_eq!(job_time_estimate(Some(10), Some(1), None), Some(10));
        assert_eq!(job_time_estimate(None, Some(1), None), Some(1));
        // An advertised 1 ms with a claim open for 500 ms is 500 ms.
        assert_eq!(job_time_estimate(None, Some(1), Some(500)), Some(500));
        assert_eq!(job_time_estimate(None, None, Some(7)), Some(7));
        assert_eq!(smoothed(None, 100), 100);
        assert_eq!(smoothed(Some(100), 500), 200);
    }

    #[test]
    fn owners_finish_after_their_queue_and_only_clearly_sooner_takes_over() {
        assert_eq!(owner_finish_ms(0, 1, 100), 100);
        assert_eq!(owner_finish_ms(3, 1, 100), 400);
        assert_eq!(owner_finish_ms(3, 4, 100), 100);
        assert_eq!(
            owner_finish_ms(3, u16::MAX, 100),
            100,
            "slots are capped, not trusted"
        );
        assert!(!sooner(100, 100));
        assert!(!sooner(100, 125));
        assert!(sooner(100, 126));
        assert!(sooner(0, 1));
    }
}
