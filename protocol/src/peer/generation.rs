//! The current generation (its members, jobs and deadlines), the closure vote with the closures
//! decided before it, and moving to the next generation when a closure is decided.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::assign::voters;
use crate::closure::{Closure, generation_seed};
use crate::consensus::Instance;
use crate::derive::{Derivation, DerivationCache};
use crate::envelope::AnySigned;
use crate::id::{CampaignId, JobId};
use crate::identity::PeerKey;
use crate::ledger::Ledger;
use crate::schedule::Plan;
use crate::spec::{CampaignSpec, JobSpec};
use crate::time::Timestamp;

use super::{Peer, PeerError, PeerOutput};

/// The state of the current generation that closure validation needs.
#[derive(Debug, Clone)]
pub(super) struct Generation {
    /// Its number (0 first).
    pub(super) number: u32,
    /// Its seed (ranks executors and voters): from the previous closure's root.
    pub(super) seed: [u8; 32],
    /// The previous closure's root (all zeros in generation 0).
    pub(super) previous: [u8; 32],
    /// When this peer entered it.
    pub(super) started_at: Timestamp,
    /// Its job deadline, set by the previous closure (the spec's in generation 0).
    pub(super) deadline_ms: u64,
    /// The wall times of its jobs settled so far (each the lower median of its agreeing
    /// executors'), sorted.
    pub(super) settled_walls: Vec<u64>,
    /// The deadline those times call for, once [`CALIBRATE_AFTER`] jobs settled (0 before):
    /// [`Generation::deadline`] never falls below `deadline_ms`, but a generation whose jobs
    /// turn out longer than the deadline assumed stretches its deadlines as it learns so.
    pub(super) calibrated_ms: u64,
    /// Its plan (ADR 0007): each member's queue, each job's owners and due round.
    pub(super) plan: Arc<Plan>,
    /// Its members.
    pub(super) members: Members,
    /// Its jobs. Shared with the derivation (and, in a simulator, with every peer).
    pub(super) jobs: Arc<BTreeMap<JobId, JobSpec>>,
}

/// Settled jobs a generation needs before it recalibrates its deadline (issue 23).
pub(super) const CALIBRATE_AFTER: usize = 3;

impl Generation {
    /// The job deadline in force: the agreed one, or longer if the jobs settled so far in the
    /// generation took longer than it allows (twice their 90th percentile).
    pub(super) fn deadline(&self) -> u64 {
        self.deadline_ms.max(self.calibrated_ms)
    }

    /// One more of its jobs settled here, with `wall_ms`; recalibrates the deadline.
    pub(super) fn settled_in(&mut self, wall_ms: u64, schedule: &crate::spec::Schedule) {
        if self.settled_walls.len() >= self.jobs.len() {
            return;
        }
        let at = self.settled_walls.partition_point(|w| *w <= wall_ms);
        self.settled_walls.insert(at, wall_ms);
        if self.settled_walls.len() >= CALIBRATE_AFTER.min(self.jobs.len()) {
            self.calibrated_ms = crate::closure::deadline_from_sorted(
                &self.settled_walls,
                self.deadline_ms,
                schedule,
            );
        }
    }
}

/// A generation's members (sorted): the spec's roster in generation 0, later the previous
/// closure's list, shared with the closure rather than copied (at 10,000 members a copy per
/// peer is 320 KB).
#[derive(Debug, Clone)]
pub(super) enum Members {
    /// Generation 0: the campaign's roster.
    Roster(Vec<PeerKey>),
    /// Later: the members listed by the previous closure.
    Closure(Arc<Closure>),
}

impl std::ops::Deref for Members {
    type Target = [PeerKey];
    fn deref(&self) -> &[PeerKey] {
        match self {
            Members::Roster(v) => v,
            Members::Closure(c) => &c.members,
        }
    }
}

/// Where this peer is in the campaign: the generation and the derivation of the next.
#[derive(Debug)]
pub(super) struct GenerationState {
    /// The generation being worked on.
    pub(super) cur: Generation,
    /// Derives each generation's jobs from the closures. Shared with other peers through a
    /// [`DerivationCache`] (copied on write).
    pub(super) derivation: Arc<Derivation>,
    /// Shared with other peers of the campaign in this process (simulators), if set.
    pub(super) derive_cache: Option<DerivationCache>,
    /// The current generation's jobs that are settled in the ledger, kept up to date from its
    /// outputs so that "is every job settled?" is not a scan of the generation per message.
    pub(super) settled_now: HashSet<JobId>,
    /// The job-less generation after the last one, in which outstanding audits are judged.
    pub(super) epilogue: bool,
    /// The last generation has closed.
    pub(super) finished: bool,
}

impl GenerationState {
    /// Generation 0 of the campaign `spec`, entered at `now`.
    pub(super) fn first(
        spec: &CampaignSpec,
        now: Timestamp,
        derive_cache: Option<DerivationCache>,
    ) -> Result<Self, PeerError> {
        let derivation = match &derive_cache {
            Some(cache) => {
                cache.validate(spec)?;
                cache.start(spec)?
            }
            None => {
                spec.validate()?;
                let mut d = Derivation::new(spec)?;
                d.generation_zero();
                Arc::new(d)
            }
        };
        let jobs = derivation.jobs_by_id();
        Ok(GenerationState {
            cur: Generation {
                number: 0,
                seed: generation_seed(&spec.id(), 0, &[0; 32]),
                previous: [0; 32],
                started_at: now,
                deadline_ms: spec.schedule.job_deadline_ms,
                settled_walls: Vec::new(),
                calibrated_ms: 0,
                plan: Arc::default(),
                members: Members::Roster(spec.roster.clone()),
                jobs,
            },
            derivation,
            derive_cache,
            settled_now: HashSet::new(),
            epilogue: false,
            finished: false,
        })
    }

    /// The closure vote of generation 0, as `me` takes part in it.
    pub(super) fn first_instance(&self, spec: &CampaignSpec, me: PeerKey) -> Instance {
        let cur = &self.cur;
        Instance::new(
            spec.id(),
            0,
            voters(&cur.members, &cur.seed),
            cur.seed,
            spec.schedule.round_timeout_ms,
            Some(me),
        )
    }

    /// The closure vote of the current generation (after the first), as `me` takes part in it.
    fn instance(&self, campaign: CampaignId, spec: &CampaignSpec, me: PeerKey) -> Instance {
        let cur = &self.cur;
        let voters = match &self.derive_cache {
            Some(cache) => cache.voters(&cur.members, &cur.seed),
            None => voters(&cur.members, &cur.seed),
        };
        Instance::new(
            campaign,
            cur.number,
            voters,
            cur.seed,
            spec.schedule.round_timeout_ms,
            Some(me),
        )
    }

    /// When jobs without a quorum are void: `max_extra + 1` job deadlines after the last job
    /// is due (ADR 0007).
    pub(super) fn void_deadline(&self, spec: &CampaignSpec) -> Timestamp {
        let k = u64::from(spec.schedule.max_extra_executors) + 1 + self.cur.plan.last_due;
        self.cur
            .started_at
            .saturating_add(Duration::from_millis(self.cur.deadline().saturating_mul(k)))
    }

    /// Recomputes `settled_now` from the ledger (when a generation starts).
    pub(super) fn recount_settled(&mut self, ledger: &Ledger) {
        self.settled_now = self
            .cur
            .jobs
            .keys()
            .filter(|j| ledger.settlement(j).is_some())
            .copied()
            .collect();
    }

    /// The jobs of the generation after the one `closure` (named `root`) decided: none after
    /// the epilogue, the last generation, or a derivation error.
    fn next_jobs(&mut self, closure: &Closure, root: [u8; 32]) -> Arc<BTreeMap<JobId, JobSpec>> {
        if self.epilogue {
            return Arc::default();
        }
        let derived = match &self.derive_cache {
            Some(cache) => cache.advance_shared(&mut self.derivation, closure, root),
            None => Arc::make_mut(&mut self.derivation)
                .advance(closure)
                .map(drop),
        };
        match derived {
            Ok(()) => self.derivation.jobs_by_id(),
            Err(_) => Arc::default(),
        }
    }

    /// The generation that `closure` (named `root`) opens, with `jobs`, entered at `now`.
    fn successor(
        &self,
        closure: &Arc<Closure>,
        root: [u8; 32],
        jobs: Arc<BTreeMap<JobId, JobSpec>>,
        now: Timestamp,
    ) -> Generation {
        Generation {
            number: self.cur.number + 1,
            seed: closure.seed_from(&root),
            previous: root,
            started_at: now,
            deadline_ms: closure.deadline_ms,
            settled_walls: Vec::new(),
            calibrated_ms: 0,
            plan: Arc::default(),
            members: Members::Closure(Arc::clone(closure)),
            jobs,
        }
    }
}

/// The closure vote of the current generation and what the votes before it left.
#[derive(Debug)]
pub(super) struct Voting {
    /// The current generation's vote.
    pub(super) instance: Instance,
    /// Every decided closure with its certificate, oldest first.
    pub(super) closures: Vec<(Arc<Closure>, Vec<PeerKey>)>,
    /// The proposals and votes of the decided generations (what a syncing peer needs).
    pub(super) history: Vec<AnySigned>,
    /// Voters proven to have signed two different proposals or votes for one slot in the
    /// closure votes of earlier generations (the current one's are in `instance`).
    pub(super) vote_equivocators: BTreeSet<PeerKey>,
    /// Consensus messages for generations this peer has not reached (at most
    /// `max_future_messages`), replayed when it reaches them.
    pub(super) future: VecDeque<AnySigned>,
}

impl Voting {
    /// The vote of the first generation, nothing decided yet.
    pub(super) fn new(instance: Instance) -> Self {
        Voting {
            instance,
            closures: Vec::new(),
            history: Vec::new(),
            vote_equivocators: BTreeSet::new(),
            future: VecDeque::new(),
        }
    }

    /// Voters seen to equivocate, in any generation so far.
    pub(super) fn equivocators(&self) -> BTreeSet<PeerKey> {
        let mut all = self.vote_equivocators.clone();
        all.extend(self.instance.equivocators().iter().copied());
        all
    }

    /// Records a decided closure and moves on to `instance`, the next generation's vote.
    fn decided(&mut self, closure: Arc<Closure>, certificate: Vec<PeerKey>, instance: Instance) {
        self.history
            .extend(self.instance.messages().iter().cloned());
        self.closures.push((closure, certificate));
        self.vote_equivocators
            .extend(self.instance.equivocators().iter().copied());
        self.instance = instance;
    }
}

impl Peer {
    /// Starts the closure vote once the generation is ready to close: every job settled (in
    /// the epilogue: every audit judged), or the void deadline passed.
    pub(super) fn start_vote_if_ready(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        if self.voting.instance.started() {
            return;
        }
        let ready = if self.chain.epilogue {
            let (_, env) = self.split(now);
            env.pending.values().all(|a| env.verdict(a).is_some())
        } else {
            self.chain.settled_now.len() == self.chain.cur.jobs.len()
        };
        if ready || now >= self.chain.void_deadline(&self.spec) {
            self.vote_with(now, out, |i, key, env| i.start(key, env, now));
        }
    }

    /// A closure was decided: record what it says, and enter the next generation.
    pub(super) fn on_decided(
        &mut self,
        closure: Arc<Closure>,
        certificate: Vec<PeerKey>,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        let root = Closure::root_shared(&closure);
        self.reputation.record_closure(&closure);
        self.apply_verdicts(&closure);
        out.push(PeerOutput::Closed {
            generation: closure.generation,
            root,
            jobs: Arc::clone(&self.chain.cur.jobs),
        });
        let jobs = self.chain.next_jobs(&closure, root);
        let next = self.chain.successor(&closure, root, jobs, now);
        self.sample_audits(&closure, &next.seed, &next.members);
        // The closure is final: the evidence on its jobs is no longer needed, except on jobs
        // sampled for audit (their verdict retires them).
        self.ledger
            .retire_generation(&self.chain.cur.jobs, self.audits.pending.keys().copied());
        self.liveness.shown_alive(&closure, &certificate);
        self.exec.clear();
        self.liveness.spoke = false;
        self.stall.clear();
        self.chain.cur = next;
        self.plan_generation();
        self.admission.members_changed(&self.chain.cur.members);
        let instance = self.chain.instance(self.campaign(), &self.spec, self.me);
        self.voting.decided(closure, certificate, instance);
        self.enter_generation(now, out);
    }

    /// Enters the generation now in `gen.cur` (or finishes the campaign): registers its jobs
    /// and replays the consensus messages that arrived for it early.
    fn enter_generation(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        let next = Arc::clone(&self.chain.cur.jobs);
        if next.is_empty() {
            if self.chain.epilogue || self.audits.pending.is_empty() {
                self.chain.finished = true;
                out.push(PeerOutput::Finished);
                return;
            }
            // One more, job-less generation to judge the last generations' audits.
            self.chain.epilogue = true;
        }
        self.ledger.register_generation(next, now).for_each(drop);
        self.chain.recount_settled(&self.ledger);
        // Replay consensus messages that arrived early.
        let future: Vec<AnySigned> = self.voting.future.drain(..).collect();
        for m in future {
            if self.chain.finished {
                break;
            }
            self.on_message(m, now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::metrics;
    use crate::closure::{Entry, VoidReason};
    use crate::message::JobResult;
    use crate::peer::PeerInput;
    use crate::peer::tests::{executed, solo};

    fn closed(out: &[PeerOutput]) -> Vec<(u32, [u8; 32])> {
        out.iter()
            .filter_map(|o| match o {
                PeerOutput::Closed {
                    generation, root, ..
                } => Some((*generation, *root)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn deciding_a_closure_enters_the_next_generation_with_its_jobs() {
        // One peer, r = q = 1, room for every job: it runs them all, settles them, and is
        // the only voter.
        let (mut peer, now) = solo(1, 1, 1_000);
        let jobs = executed(&peer.handle(PeerInput::Tick, now));
        assert_eq!(jobs.len(), peer.chain.cur.jobs.len());
        let mut out = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            assert!(
                closed(&out).is_empty(),
                "closed before the last job settled"
            );
            let result = JobResult {
                outcome: metrics(900 + i as u64),
                wall_time_ms: 5,
            };
            out = peer.handle(PeerInput::JobDone { job: *job, result }, now);
        }
        let (closure, _) = peer.closures().last().expect("decided").clone();
        let root = closure.root();
        assert_eq!(closed(&out), vec![(0, root)]);
        assert!(
            closure
                .entries
                .iter()
                .all(|e| matches!(e, Entry::Settled { .. }))
        );
        // The next generation: derived from the closure, run at once.
        let mut derivation = Derivation::new(&peer.spec).expect("derivable");
        derivation.generation_zero();
        let want: BTreeSet<JobId> = derivation
            .advance(&closure)
            .expect("a next generation")
            .iter()
            .map(JobSpec::id)
            .collect();
        assert_eq!(peer.generation(), 1);
        let cur = &peer.chain.cur;
        assert_eq!(cur.jobs.keys().copied().collect::<BTreeSet<_>>(), want);
        assert_eq!(cur.previous, root);
        assert_eq!(cur.seed, closure.seed_from(&root));
        assert_eq!(cur.deadline_ms, closure.deadline_ms);
        assert_eq!(&*cur.members, &closure.members[..]);
        assert_eq!(peer.voting.instance.generation(), 1);
        assert!(peer.chain.settled_now.is_empty());
        // The decision came last in its step: the next input takes the new jobs.
        assert!(executed(&out).is_empty());
        let next = executed(&peer.handle(PeerInput::Tick, now));
        assert_eq!(next.into_iter().collect::<BTreeSet<_>>(), want);
    }

    #[test]
    fn without_results_a_generation_closes_void_at_its_void_deadline() {
        let (mut peer, now) = solo(1, 1, 1);
        assert_eq!(executed(&peer.handle(PeerInput::Tick, now)).len(), 1);
        let void_at = peer.chain.void_deadline(&peer.spec);
        let early = Timestamp(void_at.0 - 1);
        assert!(closed(&peer.handle(PeerInput::Tick, early)).is_empty());
        let out = peer.handle(PeerInput::Tick, void_at);
        assert_eq!(closed(&out).len(), 1);
        let (closure, _) = peer.closures().last().expect("decided");
        assert!(
            closure
                .entries
                .iter()
                .all(|e| matches!(e, Entry::Void { .. }))
        );
        // The job taken was claimed but never committed; the others nobody claimed.
        let reasons: Vec<VoidReason> = closure
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Void { reason, .. } => Some(*reason),
                Entry::Settled { .. } => None,
            })
            .collect();
        let no_quorum = reasons
            .iter()
            .filter(|r| **r == VoidReason::NoQuorum)
            .count();
        assert_eq!(no_quorum, 1, "{reasons:?}");
        assert!(reasons.iter().all(|r| *r != VoidReason::Disputed));
        assert_eq!(peer.generation(), 1);
        assert_eq!(peer.running(), 0, "the old job is forgotten");
        assert_eq!(executed(&peer.handle(PeerInput::Tick, void_at)).len(), 1);
    }

    #[test]
    fn a_generation_whose_jobs_outlast_its_deadline_stretches_it_after_three_settle() {
        let (mut peer, now) = solo(1, 1, 1);
        let agreed = peer.chain.cur.deadline_ms;
        let void_before = peer.chain.void_deadline(&peer.spec);
        let long = agreed * 3;
        let mut t = now;
        let mut pending = executed(&peer.handle(PeerInput::Tick, t));
        for i in 0..3 {
            assert_eq!(peer.chain.cur.deadline(), agreed, "{i} settled: not yet");
            let job = pending.pop().expect("a job running");
            t = Timestamp(t.0 + long);
            let result = crate::message::JobResult {
                outcome: crate::agreement::tests::metrics(900),
                wall_time_ms: long,
            };
            pending.extend(executed(
                &peer.handle(PeerInput::JobDone { job, result }, t),
            ));
        }
        let want = (2 * long).clamp(
            peer.spec.schedule.min_deadline_ms,
            peer.spec.schedule.max_deadline_ms,
        );
        assert_eq!(peer.chain.cur.deadline(), want.max(agreed));
        assert!(peer.chain.cur.deadline() > agreed);
        assert!(peer.chain.void_deadline(&peer.spec) > void_before);
        // The agreed deadline, which the closure's next deadline starts from, is unchanged.
        assert_eq!(peer.chain.cur.deadline_ms, agreed);
    }

    #[test]
    fn the_last_generation_closing_finishes_the_campaign() {
        // Every job goes void: each search generation is run again once (a repair
        // generation of its voided jobs), then told void, so the campaign takes two closures
        // per search generation and still finishes.
        let (mut peer, _) = solo(1, 1, 1);
        let generations = peer.chain.derivation.generations();
        let jobs = peer.chain.cur.jobs.len();
        let mut outs = Vec::new();
        for g in 0..2 * generations {
            assert!(!peer.finished(), "generation {g} open");
            let at = peer.chain.void_deadline(&peer.spec);
            outs = peer.handle(PeerInput::Tick, at);
            assert_eq!(closed(&outs).first().map(|c| c.0), Some(g));
            if g % 2 == 0 && g + 1 < 2 * generations {
                assert_eq!(
                    peer.chain.cur.jobs.len(),
                    jobs,
                    "the repair reruns every job"
                );
            }
        }
        assert!(peer.finished());
        assert!(outs.iter().any(|o| matches!(o, PeerOutput::Finished)));
        assert_eq!(peer.next_wakeup(), None);
        assert_eq!(peer.closures().len(), 2 * generations as usize);
    }
}
