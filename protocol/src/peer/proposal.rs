//! The peer's side of the closure vote ([`Env`]): the closure this peer would propose, built
//! from its ledger, and the check of another's proposal, which says what is wrong with it
//! ([`ProposalFault`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::agreement::settle_digested;
use crate::audit::{PendingAudit, Verdict, judge};
use crate::closure::{Closure, Entry, VoidReason, credited, lower_median, next_deadline};
use crate::consensus::Env;
use crate::id::{CampaignId, JobId};
use crate::identity::{Keypair, PeerKey};
use crate::ledger::Ledger;
use crate::spec::CampaignSpec;
use crate::time::Timestamp;

use super::generation::Generation;
use super::liveness::Liveness;
use super::reputation::Reputation;

/// Why a proposed closure is not valid at this peer (it then prevotes nil).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProposalFault {
    /// The closure is for another campaign.
    #[error("header: campaign {}", .found.short())]
    WrongCampaign {
        /// The closure's campaign.
        found: CampaignId,
    },
    /// The closure is for another generation than the one this peer is in.
    #[error("header: generation {found}, want {expected}")]
    WrongGeneration {
        /// The closure's generation.
        found: u32,
        /// This peer's.
        expected: u32,
    },
    /// The closure does not follow the previous closure this peer holds.
    #[error("header: previous root")]
    WrongPrevious,
    /// The closure has not one entry per job of the generation.
    #[error("header: {found} entries for {expected} jobs")]
    WrongEntryCount {
        /// Entries in the closure.
        found: usize,
        /// Jobs in the generation.
        expected: usize,
    },
    /// An entry is not for the job at its place (entries are in job-id order).
    #[error("job set: entry {position} is for {}", .found.short())]
    WrongJob {
        /// The entry's place.
        position: usize,
        /// The job it names.
        found: JobId,
    },
    /// A settled entry that the results it lists do not give here (no quorum among them, or
    /// another outcome, credit or wall time).
    #[error("job {}: the {listed} listed results do not give this entry here", .job.short())]
    UnsupportedSettlement {
        /// The job.
        job: JobId,
        /// How many results the entry lists.
        listed: usize,
    },
    /// A job left void before its void deadline, or one that settles here.
    #[error("void {}", .job.short())]
    PrematureVoid {
        /// The job.
        job: JobId,
    },
    /// The verdicts are not in strictly increasing job order.
    #[error("verdicts not in job order")]
    VerdictsOutOfOrder,
    /// A verdict on a job this peer does not hold as awaiting audit.
    #[error("verdict on {}, not awaiting audit", .job.short())]
    UnexpectedVerdict {
        /// The job.
        job: JobId,
    },
    /// A verdict other than the one this peer gives.
    #[error("verdict on {} differs here", .job.short())]
    VerdictDiffers {
        /// The job.
        job: JobId,
    },
    /// In the epilogue, a verdict this peer can give is missing (or the deadline to leave one
    /// out has not passed).
    #[error("no verdict on {}", .job.short())]
    MissingVerdict {
        /// The job.
        job: JobId,
    },
    /// More peers join than a generation admits.
    #[error("too many joins: {joined}, at most {max}")]
    TooManyJoins {
        /// Peers joining.
        joined: usize,
        /// The most admitted.
        max: usize,
    },
    /// A peer joins without a heartbeat (with capacity) held here.
    #[error("join of {} without a heartbeat here", .peer.short())]
    JoinWithoutHeartbeat {
        /// The joiner.
        peer: PeerKey,
    },
    /// A member is removed without a leave (heartbeat of capacity 0) or silence here.
    #[error("removal of {} without a leave or silence here", .peer.short())]
    RemovalWithoutCause {
        /// The member removed.
        peer: PeerKey,
    },
    /// A voter that a regenesis of this generation left out is still a member.
    #[error("{} was left out by a regenesis and must leave the members", .peer.short())]
    DismissedKept {
        /// The voter.
        peer: PeerKey,
    },
    /// More members are evicted for silence than a generation admits.
    #[error("too many evictions: {evicted}, at most {max}")]
    TooManyEvictions {
        /// Members evicted.
        evicted: usize,
        /// The most allowed.
        max: usize,
    },
    /// The next generation would have no members.
    #[error("no members left")]
    NoMembers,
    /// The next generation's deadline is not the one the entries give.
    #[error("deadline {found} want {want}")]
    WrongDeadline {
        /// The closure's.
        found: u64,
        /// The one computed here.
        want: u64,
    },
}

/// The peer's side of [`Env`]: validity and proposals from its ledger.
pub(super) struct PeerEnv<'a> {
    /// This peer's key (the vote signs with it).
    pub(super) key: &'a Keypair,
    /// The evidence: results, audit reports, heartbeats.
    pub(super) ledger: &'a Ledger,
    /// The generation voted on.
    pub(super) cur: &'a Generation,
    /// The campaign's rules.
    pub(super) spec: &'a CampaignSpec,
    /// Settled jobs awaiting an audit verdict.
    pub(super) pending: &'a BTreeMap<JobId, PendingAudit>,
    /// Who failed audits (their reports do not count).
    pub(super) reputation: &'a Reputation,
    /// Whether this is the job-less generation that judges the last audits.
    pub(super) epilogue: bool,
    /// Who was heard from when (silent members may be evicted).
    pub(super) liveness: &'a Liveness,
    /// Most peers joining (and evicted) per generation.
    pub(super) max_joins: usize,
    /// Voters that this generation's regeneses left out (ADR 0006): dropped from the next
    /// members, beside the evictions for silence.
    pub(super) dismissed: &'a BTreeSet<PeerKey>,
    /// Now.
    pub(super) now: Timestamp,
    /// When jobs without a quorum are void.
    pub(super) void_at: Timestamp,
}

impl PeerEnv<'_> {
    /// The quorum of `job` and the one executor whose results count, if the kind pins it
    /// (then the quorum is 1).
    fn job_rule(&self, job: &JobId) -> (usize, Option<PeerKey>) {
        match self.cur.jobs.get(job).and_then(|s| s.payload.pinned()) {
            Some(p) => (1, Some(*p)),
            None => (usize::from(self.spec.quorum), None),
        }
    }

    /// The closure entry for `job` from the executors' results listed in `only`, or, without
    /// a list, the one this peer would propose: from the results whose commitment arrived
    /// before any reveal (no copies) if those reach a quorum, else from all results.
    fn settle_job(&self, job: &JobId, only: Option<&BTreeSet<PeerKey>>) -> Option<Entry> {
        if only.is_none() {
            return self
                .settle_with(job, None, true)
                .or_else(|| self.settle_with(job, None, false));
        }
        self.settle_with(job, only, false)
    }

    fn settle_with(
        &self,
        job: &JobId,
        only: Option<&BTreeSet<PeerKey>>,
        punctual: bool,
    ) -> Option<Entry> {
        let results = self.ledger.executor_results(job);
        let (q, pinned) = self.job_rule(job);
        let chosen: Vec<_> = results
            .iter()
            .filter(|r| pinned.is_none_or(|p| p == r.peer))
            .filter(|r| match only {
                Some(set) => set.contains(&r.peer),
                None => !(punctual && r.late),
            })
            .collect();
        if only.is_some_and(|set| set.len() != chosen.len()) {
            return None;
        }
        let evidence = chosen
            .iter()
            .map(|r| (r.peer, r.digest, r.outcome))
            .collect();
        let settlement = settle_digested(evidence, q, &self.spec.tolerance)?;
        let agreeing: Vec<_> = chosen
            .iter()
            .filter(|r| settlement.agreeing.binary_search(&r.peer).is_ok())
            .collect();
        let wall_time_ms = lower_median(agreeing.iter().map(|r| r.wall_time_ms).collect());
        let credited = credited(&settlement.agreeing, |p| {
            agreeing
                .iter()
                .find(|r| r.peer == *p)
                .map_or(&[][..], |r| r.witnessed)
        });
        Some(Entry::Settled {
            job: *job,
            settlement,
            wall_time_ms,
            credited,
        })
    }

    /// The verdict this peer would give on `audit` (see [`judge`]).
    pub(super) fn verdict(&self, audit: &PendingAudit) -> Option<Verdict> {
        let reports = self.ledger.audit_results(&audit.spec.id());
        judge(
            audit,
            &reports,
            |p| self.reputation.may_report(&self.cur.members, p),
            usize::from(self.spec.quorum),
            &self.spec.tolerance,
        )
    }

    /// The members this peer would propose for the next generation: joiners with a heartbeat
    /// (at most `max_joins`), without leavers and members silent for two generations.
    fn next_members(&self) -> Vec<PeerKey> {
        let mut members: BTreeSet<PeerKey> = self.cur.members.iter().copied().collect();
        let mut joins = 0;
        for hb in self.ledger.heartbeats() {
            let p = hb.signer();
            if hb.message().capacity == 0 {
                members.remove(&p);
            } else if !members.contains(&p) && joins < self.max_joins {
                members.insert(p);
                joins += 1;
            }
        }
        // Evict members silent here for this generation and the one before (at most as many
        // as may join; never this peer, never the whole roster).
        let silent: Vec<PeerKey> = self
            .cur
            .members
            .iter()
            .filter(|p| **p != self.key.public() && self.silent_since(p, 1))
            .take(self.max_joins)
            .copied()
            .collect();
        if silent.len() < members.len() {
            for p in silent {
                members.remove(&p);
            }
        }
        for p in self.dismissed {
            members.remove(p);
        }
        members.into_iter().collect()
    }

    /// Whether no message from `p` reached this peer in the current generation nor in the
    /// `back` generations before it (never, before generation `back`).
    fn silent_since(&self, p: &PeerKey, back: u32) -> bool {
        self.liveness.silent_since(p, back, self.cur.number)
    }
}

impl PeerEnv<'_> {
    /// What is wrong with `c` here, if anything.
    pub(super) fn check(&self, c: &Closure) -> Result<(), ProposalFault> {
        self.check_header(c)?;
        self.check_entries(c)?;
        self.check_verdicts(c)?;
        self.check_members(c)?;
        self.check_deadline(c)
    }

    /// Campaign, generation, previous root and the number of entries.
    fn check_header(&self, c: &Closure) -> Result<(), ProposalFault> {
        if c.campaign != self.ledger.campaign() {
            return Err(ProposalFault::WrongCampaign { found: c.campaign });
        }
        if c.generation != self.cur.number {
            return Err(ProposalFault::WrongGeneration {
                found: c.generation,
                expected: self.cur.number,
            });
        }
        if c.previous != self.cur.previous {
            return Err(ProposalFault::WrongPrevious);
        }
        if c.entries.len() != self.cur.jobs.len() {
            return Err(ProposalFault::WrongEntryCount {
                found: c.entries.len(),
                expected: self.cur.jobs.len(),
            });
        }
        Ok(())
    }

    /// Each entry: the job at its place, settled as its listed results give it here, or void
    /// only past the void deadline and when it cannot settle here.
    fn check_entries(&self, c: &Closure) -> Result<(), ProposalFault> {
        for (position, (e, job)) in c.entries.iter().zip(self.cur.jobs.keys()).enumerate() {
            if e.job() != *job {
                return Err(ProposalFault::WrongJob {
                    position,
                    found: e.job(),
                });
            }
            match e {
                Entry::Settled { settlement, .. } => {
                    let listed: BTreeSet<PeerKey> = settlement
                        .agreeing
                        .iter()
                        .chain(&settlement.dissenting)
                        .copied()
                        .collect();
                    if self.settle_job(job, Some(&listed)).as_ref() != Some(e) {
                        return Err(ProposalFault::UnsupportedSettlement {
                            job: *job,
                            listed: listed.len(),
                        });
                    }
                }
                Entry::Void { .. } => {
                    if self.now < self.void_at || self.settle_job(job, None).is_some() {
                        return Err(ProposalFault::PrematureVoid { job: *job });
                    }
                }
            }
        }
        Ok(())
    }

    /// The verdicts: in job order, each on a job awaiting audit and as this peer judges it;
    /// in the epilogue, none left out that this peer can give (before the deadline, none).
    fn check_verdicts(&self, c: &Closure) -> Result<(), ProposalFault> {
        if c.verdicts.windows(2).any(|w| w[0].job >= w[1].job) {
            return Err(ProposalFault::VerdictsOutOfOrder);
        }
        for v in &c.verdicts {
            let Some(a) = self.pending.get(&v.job) else {
                return Err(ProposalFault::UnexpectedVerdict { job: v.job });
            };
            if self.verdict(a).as_ref() != Some(v) {
                return Err(ProposalFault::VerdictDiffers { job: v.job });
            }
        }
        // The epilogue exists to judge audits: it may leave one out only after its deadline,
        // and only one this peer cannot judge either (like a void job).
        if self.epilogue {
            for (job, a) in self.pending {
                if c.verdicts.binary_search_by(|v| v.job.cmp(job)).is_err()
                    && (self.now < self.void_at || self.verdict(a).is_some())
                {
                    return Err(ProposalFault::MissingVerdict { job: *job });
                }
            }
        }
        Ok(())
    }

    /// Membership changes must be backed by heartbeats (or silence) this peer holds.
    fn check_members(&self, c: &Closure) -> Result<(), ProposalFault> {
        let current: BTreeSet<&PeerKey> = self.cur.members.iter().collect();
        let next: BTreeSet<&PeerKey> = c.members.iter().collect();
        let beats: BTreeMap<PeerKey, u16> = self
            .ledger
            .heartbeats()
            .map(|h| (h.signer(), h.message().capacity))
            .collect();
        let joined = next.difference(&current).count();
        if joined > self.max_joins {
            return Err(ProposalFault::TooManyJoins {
                joined,
                max: self.max_joins,
            });
        }
        for p in next.difference(&current) {
            if beats.get(*p).is_none_or(|c| *c == 0) {
                return Err(ProposalFault::JoinWithoutHeartbeat { peer: **p });
            }
        }
        for p in current.difference(&next) {
            // A leave, a regenesis, or silence here for this whole generation (the proposer
            // waits for two).
            if beats.get(*p) != Some(&0) && !self.dismissed.contains(*p) && !self.silent_since(p, 0)
            {
                return Err(ProposalFault::RemovalWithoutCause { peer: **p });
            }
        }
        for p in self.dismissed {
            if next.contains(p) {
                return Err(ProposalFault::DismissedKept { peer: *p });
            }
        }
        let evicted = current
            .difference(&next)
            .filter(|p| beats.get(**p) != Some(&0) && !self.dismissed.contains(*p))
            .count();
        if evicted > self.max_joins {
            return Err(ProposalFault::TooManyEvictions {
                evicted,
                max: self.max_joins,
            });
        }
        if next.is_empty() {
            return Err(ProposalFault::NoMembers);
        }
        Ok(())
    }

    /// The next generation's deadline, as the entries give it.
    fn check_deadline(&self, c: &Closure) -> Result<(), ProposalFault> {
        let want = next_deadline(&c.entries, self.cur.deadline_ms, &self.spec.schedule);
        if c.deadline_ms != want {
            return Err(ProposalFault::WrongDeadline {
                found: c.deadline_ms,
                want,
            });
        }
        Ok(())
    }
}

impl PeerEnv<'_> {
    /// Why `job`, without a quorum at the deadline, goes void as this peer's evidence shows.
    fn void_reason(&self, job: &JobId) -> VoidReason {
        let (q, _) = self.job_rule(job);
        if self.ledger.claim_count(job) == 0 && self.ledger.commitment_count(job) == 0 {
            VoidReason::NoClaim
        } else if self.ledger.executor_results(job).len() >= q {
            VoidReason::Disputed
        } else {
            VoidReason::NoQuorum
        }
    }
}

impl Env for PeerEnv<'_> {
    fn valid(&mut self, c: &Closure) -> bool {
        self.check(c).is_ok()
    }

    fn build(&mut self) -> Option<Closure> {
        let mut entries = Vec::with_capacity(self.cur.jobs.len());
        for job in self.cur.jobs.keys() {
            match self.settle_job(job, None) {
                Some(e) => entries.push(e),
                None if self.now >= self.void_at => entries.push(Entry::Void {
                    job: *job,
                    reason: self.void_reason(job),
                }),
                None => return None,
            }
        }
        let verdicts: Vec<Verdict> = self
            .pending
            .values()
            .filter_map(|a| self.verdict(a))
            .collect();
        if self.epilogue && self.now < self.void_at && verdicts.len() < self.pending.len() {
            return None;
        }
        let deadline_ms = next_deadline(&entries, self.cur.deadline_ms, &self.spec.schedule);
        Some(Closure {
            campaign: self.ledger.campaign(),
            generation: self.cur.number,
            previous: self.cur.previous,
            entries,
            verdicts,
            members: self.next_members(),
            deadline_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::agreement::Settlement;
    use crate::agreement::tests::metrics;
    use crate::envelope::{AnySigned, Signed};
    use crate::ledger::{Input, LedgerConfig};
    use crate::message::{Commitment, Heartbeat, JobResult, Reveal, commitment_digest};
    use crate::peer::generation::Members;
    use crate::spec::JobSpec;
    use crate::spec::tests::{sample_job, sample_spec};

    fn key(i: u8) -> Keypair {
        Keypair::from_secret_bytes([i; 32])
    }

    /// What a [`PeerEnv`] borrows, owned: peer 1's view of `generation`, whose members are
    /// peers 1 and 2, with `jobs` jobs; no evidence yet, past the void deadline.
    struct Fixture {
        key: Keypair,
        spec: CampaignSpec,
        ledger: Ledger,
        cur: Generation,
        pending: BTreeMap<JobId, PendingAudit>,
        reputation: Reputation,
        epilogue: bool,
        liveness: Liveness,
        max_joins: usize,
        dismissed: BTreeSet<PeerKey>,
        now: Timestamp,
        void_at: Timestamp,
    }

    impl Fixture {
        fn new(generation: u32, jobs: u32) -> Self {
            let mut spec = sample_spec();
            let mut members = vec![key(1).public(), key(2).public()];
            members.sort();
            spec.roster = members.clone();
            let jobs: BTreeMap<JobId, JobSpec> = (0..jobs)
                .map(|index| {
                    let mut j = sample_job();
                    j.campaign = spec.id();
                    j.index = index;
                    (j.id(), j)
                })
                .collect();
            let jobs = Arc::new(jobs);
            let now = Timestamp(spec.created_at.0 + 1_000);
            let mut ledger = Ledger::new(spec.clone(), LedgerConfig::default());
            ledger
                .register_generation(Arc::clone(&jobs), now)
                .for_each(drop);
            Fixture {
                key: key(1),
                cur: Generation {
                    number: generation,
                    seed: [5; 32],
                    previous: [6; 32],
                    started_at: spec.created_at,
                    deadline_ms: spec.schedule.job_deadline_ms,
                    settled_walls: Vec::new(),
                    calibrated_ms: 0,
                    plan: Arc::default(),
                    members: Members::Roster(members),
                    jobs,
                },
                spec,
                ledger,
                pending: BTreeMap::new(),
                reputation: Reputation::default(),
                epilogue: false,
                liveness: Liveness::default(),
                max_joins: 64,
                dismissed: BTreeSet::new(),
                now,
                void_at: now,
            }
        }

        fn env(&self) -> PeerEnv<'_> {
            PeerEnv {
                key: &self.key,
                ledger: &self.ledger,
                cur: &self.cur,
                spec: &self.spec,
                pending: &self.pending,
                reputation: &self.reputation,
                epilogue: self.epilogue,
                liveness: &self.liveness,
                max_joins: self.max_joins,
                dismissed: &self.dismissed,
                now: self.now,
                void_at: self.void_at,
            }
        }

        fn job(&self, index: usize) -> JobId {
            *self.cur.jobs.keys().nth(index).expect("a job")
        }

        /// Executor `i` commits to and reveals a result on job `index`.
        fn result(&mut self, index: usize, i: u8, correct: u64) {
            let (job, k) = (self.job(index), key(i));
            let campaign = self.spec.id();
            let result = JobResult {
                outcome: metrics(correct),
                wall_time_ms: 10,
            };
            let salt = [i; 32];
            let digest = commitment_digest(&job, &k.public(), &result, &salt);
            let c = Commitment {
                campaign,
                job,
                digest,
                issued_at: self.now,
            };
            let r = Reveal {
                campaign,
                job,
                result,
                salt,
                witnessed: Vec::new(),
                issued_at: self.now,
            };
            let c = AnySigned::Commitment(Signed::sign_and_encode(c, &k).expect("valid"));
            let r = AnySigned::Reveal(Signed::sign_and_encode(r, &k).expect("valid"));
            for m in [c, r] {
                self.ledger
                    .handle(Input::Message(m), self.now)
                    .for_each(drop);
            }
        }

        /// The closure this peer would propose.
        fn build(&self) -> Closure {
            self.env().build().expect("ready to close")
        }

        fn check(&self, c: &Closure) -> Result<(), ProposalFault> {
            self.env().check(c)
        }
    }

    /// Two jobs: the first settled by peers 2 and 3, the second without results.
    fn settled_and_void() -> (Fixture, Closure) {
        let mut f = Fixture::new(0, 2);
        f.result(0, 2, 900);
        f.result(0, 3, 900);
        let c = f.build();
        assert!(matches!(c.entries[0], Entry::Settled { .. }));
        assert!(matches!(c.entries[1], Entry::Void { .. }));
        (f, c)
    }

    #[test]
    fn the_closure_this_peer_builds_is_valid_here() {
        let (f, c) = settled_and_void();
        assert_eq!(f.check(&c), Ok(()));
        assert!(f.env().valid(&c));
        let empty = Fixture::new(3, 0);
        assert_eq!(empty.check(&empty.build()), Ok(()));
    }

    #[test]
    fn a_closure_for_another_slot_is_refused_by_its_header() {
        let (f, c) = settled_and_void();
        let mut bad = c.clone();
        bad.campaign = CampaignId([9; 32]);
        assert_eq!(
            f.check(&bad),
            Err(ProposalFault::WrongCampaign {
                found: bad.campaign
            })
        );
        let mut bad = c.clone();
        bad.generation = 1;
        let want = ProposalFault::WrongGeneration {
            found: 1,
            expected: 0,
        };
        assert_eq!(f.check(&bad), Err(want));
        assert!(!f.env().valid(&bad), "a fault makes the proposal invalid");
        let mut bad = c.clone();
        bad.previous = [0; 32];
        assert_eq!(f.check(&bad), Err(ProposalFault::WrongPrevious));
        let mut bad = c;
        bad.entries.pop();
        let want = ProposalFault::WrongEntryCount {
            found: 1,
            expected: 2,
        };
        assert_eq!(f.check(&bad), Err(want));
    }

    #[test]
    fn entries_must_name_the_generations_jobs_in_order() {
        let (f, mut c) = settled_and_void();
        c.entries.swap(0, 1);
        let want = ProposalFault::WrongJob {
            position: 0,
            found: f.job(1),
        };
        assert_eq!(f.check(&c), Err(want));
    }

    #[test]
    fn a_settled_entry_needs_a_quorum_of_the_results_it_lists() {
        let (f, mut c) = settled_and_void();
        let Entry::Settled {
            settlement,
            credited,
            ..
        } = &mut c.entries[0]
        else {
            unreachable!()
        };
        // One of the two agreeing results dropped: no quorum of 2.
        settlement.agreeing.pop();
        credited.pop();
        let want = ProposalFault::UnsupportedSettlement {
            job: f.job(0),
            listed: 1,
        };
        assert_eq!(f.check(&c), Err(want));
        // Another outcome than the results give.
        let (f, mut c) = settled_and_void();
        if let Entry::Settled { settlement, .. } = &mut c.entries[0] {
            *settlement = Settlement {
                canonical: metrics(1),
                ..settlement.clone()
            };
        }
        assert!(matches!(
            f.check(&c),
            Err(ProposalFault::UnsupportedSettlement { listed: 2, .. })
        ));
    }

    #[test]
    fn a_job_is_void_only_past_the_deadline_and_without_a_quorum() {
        let (mut f, c) = settled_and_void();
        let mut bad = c.clone();
        bad.entries[0] = Entry::Void {
            job: f.job(0),
            reason: crate::closure::VoidReason::NoClaim,
        };
        // (The deadline follows the entries: keep the closure otherwise right.)
        bad.deadline_ms = f.build().deadline_ms;
        assert_eq!(
            f.check(&bad),
            Err(ProposalFault::PrematureVoid { job: f.job(0) })
        );
        f.now = Timestamp(f.void_at.0 - 1);
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::PrematureVoid { job: f.job(1) })
        );
    }

    /// A pending audit of job `index` of `f`.
    fn pending(f: &Fixture, index: usize) -> PendingAudit {
        PendingAudit {
            spec: f.cur.jobs[&f.job(index)].clone(),
            generation: 0,
            original: Settlement {
                canonical: metrics(900),
                agreeing: vec![key(2).public(), key(3).public()],
                dissenting: Vec::new(),
            },
            credited: Vec::new(),
            executors: vec![key(2).public(), key(3).public()],
            jury: Vec::new(),
            rate_ppm: 50_000,
        }
    }

    fn verdict(job: JobId) -> Verdict {
        Verdict {
            job,
            upheld_by: vec![key(4).public()],
            contradicted: Vec::new(),
            jury: None,
        }
    }

    #[test]
    fn verdicts_must_be_in_order_awaited_and_as_judged_here() {
        let mut f = Fixture::new(1, 0);
        let earlier = Fixture::new(0, 2);
        let (a, b) = (earlier.job(0), earlier.job(1));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let c = f.build();
        let mut bad = c.clone();
        bad.verdicts = vec![verdict(hi), verdict(lo)];
        assert_eq!(f.check(&bad), Err(ProposalFault::VerdictsOutOfOrder));
        let mut bad = c.clone();
        bad.verdicts = vec![verdict(lo)];
        assert_eq!(
            f.check(&bad),
            Err(ProposalFault::UnexpectedVerdict { job: lo })
        );
        // Awaited, but this peer holds no report: it gives no verdict, so none can match.
        f.pending.insert(a, pending(&earlier, 0));
        let mut bad = c;
        bad.verdicts = vec![verdict(a)];
        assert_eq!(f.check(&bad), Err(ProposalFault::VerdictDiffers { job: a }));
    }

    #[test]
    fn the_epilogue_leaves_out_a_verdict_only_past_its_deadline() {
        let mut f = Fixture::new(5, 0);
        let earlier = Fixture::new(0, 1);
        let job = earlier.job(0);
        f.pending.insert(job, pending(&earlier, 0));
        f.epilogue = true;
        let c = f.build();
        assert!(c.verdicts.is_empty(), "no reports, no verdict");
        assert_eq!(f.check(&c), Ok(()), "past the deadline");
        f.now = Timestamp(f.void_at.0 - 1);
        assert_eq!(f.check(&c), Err(ProposalFault::MissingVerdict { job }));
    }

    #[test]
    fn joins_need_a_heartbeat_here_and_room() {
        let mut f = Fixture::new(0, 0);
        let mut c = f.build();
        let joiner = key(7).public();
        c.members.push(joiner);
        c.members.sort();
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::JoinWithoutHeartbeat { peer: joiner })
        );
        f.max_joins = 0;
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::TooManyJoins { joined: 1, max: 0 })
        );
        // With the joiner's heartbeat held here, and room, the join stands.
        f.max_joins = 64;
        let hb = Heartbeat {
            campaign: f.spec.id(),
            generation: 0,
            running: 0,
            capacity: 1,
            job_ms: 0,
            issued_at: f.now,
        };
        let hb = AnySigned::Heartbeat(Signed::sign_and_encode(hb, &key(7)).expect("valid"));
        f.ledger.handle(Input::Message(hb), f.now).for_each(drop);
        assert_eq!(f.check(&c), Ok(()));
        assert_eq!(
            f.build().members,
            c.members,
            "and this peer proposes it too"
        );
    }

    #[test]
    fn removals_need_a_leave_or_silence_within_limits() {
        let two = |p: &Fixture| p.cur.members.to_vec();
        // Generation 0: nobody can have been silent yet.
        let f = Fixture::new(0, 0);
        let mut c = f.build();
        assert_eq!(c.members, two(&f));
        let gone = c.members.pop().expect("two members");
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::RemovalWithoutCause { peer: gone })
        );
        // Generation 1, nobody heard from: removals are silence, within `max_joins`.
        let mut f = Fixture::new(1, 0);
        let mut c = f.build();
        assert_eq!(
            c.members,
            two(&f),
            "the proposer waits for two silent generations"
        );
        c.members.pop();
        assert_eq!(f.check(&c), Ok(()));
        f.max_joins = 0;
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::TooManyEvictions { evicted: 1, max: 0 })
        );
        f.max_joins = 64;
        c.members.clear();
        assert_eq!(f.check(&c), Err(ProposalFault::NoMembers));
    }

    #[test]
    fn voters_a_regenesis_left_out_leave_the_members_at_once() {
        // Generation 0, nobody silent yet: only the regenesis can remove peer 2.
        let mut f = Fixture::new(0, 0);
        let gone = key(2).public();
        f.dismissed.insert(gone);
        let c = f.build();
        assert_eq!(c.members, vec![key(1).public()]);
        assert_eq!(f.check(&c), Ok(()));
        let mut kept = c.clone();
        kept.members = f.cur.members.to_vec();
        assert_eq!(
            f.check(&kept),
            Err(ProposalFault::DismissedKept { peer: gone })
        );
        // Not counted against the evictions for silence.
        f.max_joins = 0;
        assert_eq!(f.check(&c), Ok(()));
    }

    #[test]
    fn the_deadline_must_follow_from_the_entries() {
        let (f, mut c) = settled_and_void();
        let want = c.deadline_ms;
        c.deadline_ms += 1;
        assert_eq!(
            f.check(&c),
            Err(ProposalFault::WrongDeadline {
                found: want + 1,
                want
            })
        );
    }

    #[test]
    fn faults_read_as_the_old_diagnostics() {
        let job = JobId([0xab; 32]);
        let fault = ProposalFault::UnsupportedSettlement { job, listed: 2 };
        assert_eq!(
            fault.to_string(),
            format!(
                "job {}: the 2 listed results do not give this entry here",
                job.short()
            )
        );
        let fault = ProposalFault::WrongDeadline { found: 1, want: 2 };
        assert_eq!(fault.to_string(), "deadline 1 want 2");
    }
}
