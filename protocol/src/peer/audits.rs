//! Audits at this peer: sampling a decided closure's settled jobs for audit, taking audits
//! (audit mode) and jury duties, and applying the verdicts later closures record.

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::{self, PendingAudit, Verdict};
use crate::closure::{Closure, Entry};
use crate::id::JobId;
use crate::identity::PeerKey;
use crate::ledger::Ledger;
use crate::outcome::Tolerance;
use crate::spec::{CampaignSpec, JobSpec};

use super::reputation::Reputation;
use super::{Peer, PeerOutput};

/// The audits this peer knows of and takes part in.
#[derive(Debug, Default)]
pub(super) struct Audits {
    /// Settled jobs sampled for audit that have no verdict yet.
    pub(super) pending: BTreeMap<JobId, PendingAudit>,
    /// Every settled job's audit rate and whether it was sampled.
    pub(super) draws: BTreeMap<JobId, (u32, bool)>,
    /// Audits and jury duties this peer took (running or reported).
    pub(super) taken: BTreeSet<JobId>,
    /// Audits and jury duties running.
    pub(super) running: BTreeSet<JobId>,
}

/// What sampling a closure for audit reads.
pub(super) struct Sampling<'a> {
    /// The campaign's rules (audit rate, jury size).
    pub(super) spec: &'a CampaignSpec,
    /// The jobs of the closure's generation.
    pub(super) jobs: &'a BTreeMap<JobId, JobSpec>,
    /// The next generation's seed (draws the sample and the juries).
    pub(super) seed: &'a [u8; 32],
    /// The next generation's members (juries are drawn from them).
    pub(super) members: &'a [PeerKey],
}

impl Audits {
    /// Samples the settled jobs of a just-decided closure for audit (seeded by the closure).
    pub(super) fn sample(&mut self, closure: &Closure, s: &Sampling<'_>, rep: &Reputation) {
        if s.spec.audit_rate_ppm == 0 {
            return;
        }
        let size =
            usize::from(s.spec.redundancy) + usize::from(s.spec.schedule.max_extra_executors);
        for e in &closure.entries {
            let Entry::Settled {
                job,
                settlement,
                credited,
                ..
            } = e
            else {
                continue;
            };
            let flagged = settlement.agreeing.iter().any(|p| rep.has_failed(p));
            let rate_ppm = audit::rate(s.spec.audit_rate_ppm, flagged);
            // A pinned job (a federated client's round) can be run by its executor only: no
            // jury could repeat it, so it is never drawn.
            let Some(spec) = s.jobs.get(job).filter(|j| j.payload.pinned().is_none()) else {
                continue;
            };
            let drawn = audit::sampled(s.seed, job, rate_ppm);
            self.draws.insert(*job, (rate_ppm, drawn));
            if !drawn {
                continue;
            }
            let mut executors: Vec<PeerKey> = settlement
                .agreeing
                .iter()
                .chain(&settlement.dissenting)
                .copied()
                .collect();
            executors.sort();
            let jury = audit::jury(job, s.seed, s.members, rep.weights(), &executors, size);
            self.pending.insert(
                *job,
                PendingAudit {
                    spec: spec.clone(),
                    generation: closure.generation,
                    original: settlement.clone(),
                    credited: credited.clone(),
                    executors,
                    jury,
                    rate_ppm,
                },
            );
        }
    }

    /// Takes the verdicts of a decided closure: each judged audit leaves the pending ones, its
    /// penalties and credits go to `rep`, and the ledger retires its evidence.
    fn judged(
        &mut self,
        verdicts: &[Verdict],
        rep: &mut Reputation,
        ledger: &mut Ledger,
        tolerance: &Tolerance,
    ) {
        for v in verdicts {
            if let Some(a) = self.pending.remove(&v.job) {
                apply_verdict(rep, &a, v, tolerance);
                ledger.retire([v.job]);
            }
        }
    }
}

/// Penalties and credits of a verdict (a function of the closure chain alone).
fn apply_verdict(rep: &mut Reputation, a: &PendingAudit, v: &Verdict, tolerance: &Tolerance) {
    for p in &v.contradicted {
        rep.failed_audit(p);
    }
    if v.overturned(&a.original, tolerance) {
        // The accusation stands: the agreeing executors lose their credit and fail.
        for p in &a.original.agreeing {
            rep.failed_audit(p);
        }
        for p in &a.credited {
            rep.uncredit(p);
        }
        for p in &v.upheld_by {
            rep.credit(p);
        }
        // Its dissenters disagreed with a wrong outcome: their dissent is no offence.
        for p in &a.original.dissenting {
            rep.pardon(p);
        }
    }
    if let Some(jury) = &v.jury {
        for p in &jury.agreeing {
            rep.credit(p);
        }
        for p in &jury.dissenting {
            rep.offence(p);
        }
    }
}

impl Peer {
    /// Samples the settled jobs of a just-decided closure for audit, with the next
    /// generation's `seed` and `members`.
    pub(super) fn sample_audits(
        &mut self,
        closure: &Closure,
        seed: &[u8; 32],
        members: &[PeerKey],
    ) {
        let sampling = Sampling {
            spec: &self.spec,
            jobs: &self.chain.cur.jobs,
            seed,
            members,
        };
        self.audits.sample(closure, &sampling, &self.reputation);
    }

    /// Applies the verdicts of a decided closure.
    pub(super) fn apply_verdicts(&mut self, closure: &Closure) {
        self.audits.judged(
            &closure.verdicts,
            &mut self.reputation,
            &mut self.ledger,
            &self.spec.tolerance,
        );
    }

    /// Phase 3 of a step: jury duty first (a dispute blocks a verdict); then, in audit mode,
    /// audits.
    pub(super) fn take_audits_phase(&mut self, out: &mut Vec<PeerOutput>) {
        self.take_audits(true, out);
        if self.config.audit {
            self.take_audits(false, out);
        }
    }

    /// Starts jury duties (`jury` true: disputed jobs whose jury includes this peer) or, in
    /// audit mode, audits (every sampled job this peer did not execute), within capacity.
    fn take_audits(&mut self, jury: bool, out: &mut Vec<PeerOutput>) {
        let capacity = usize::from(self.config.capacity);
        if self.running() >= capacity || self.audits.pending.is_empty() {
            return;
        }
        let todo: Vec<JobId> = self
            .audits
            .pending
            .iter()
            .filter(|(j, a)| {
                !self.audits.taken.contains(j)
                    && a.executors.binary_search(&self.me).is_err()
                    && !self.ledger.has_committed(j, &self.me)
                    && (!jury || a.jury.binary_search(&self.me).is_ok() && self.disputed(a))
            })
            .map(|(j, _)| *j)
            .collect();
        for job in todo {
            if self.running() >= capacity {
                break;
            }
            let Some(a) = self.audits.pending.get(&job) else {
                continue;
            };
            out.push(PeerOutput::Execute(a.spec.clone()));
            self.audits.taken.insert(job);
            self.audits.running.insert(job);
        }
    }

    /// Whether a report on `a` held here disagrees with its closure.
    fn disputed(&self, a: &PendingAudit) -> bool {
        let reports = self.ledger.audit_results(&a.spec.id());
        audit::disputed(
            a,
            &reports,
            |p| self.reputation.may_report(&self.chain.cur.members, p),
            &self.spec.tolerance,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::Settlement;
    use crate::agreement::tests::{metrics, peer};
    use crate::id::CampaignId;
    use crate::peer::reputation::tests::settled;
    use crate::spec::tests::{sample_job, sample_spec};

    /// A closure settling 200 jobs, each by peers 1 and 2 (peer 3 dissenting), and those jobs.
    fn fixture() -> (Closure, BTreeMap<JobId, JobSpec>) {
        let entries: Vec<Entry> = (0..200u8)
            .map(|j| settled(j, &[1, 2], &[1, 2], &[3]))
            .collect();
        let jobs = entries.iter().map(|e| (e.job(), sample_job())).collect();
        let closure = Closure {
            campaign: CampaignId([7; 32]),
            generation: 2,
            previous: [0; 32],
            entries,
            verdicts: Vec::new(),
            members: Vec::new(),
            deadline_ms: 1,
        };
        (closure, jobs)
    }

    fn sample(spec: &CampaignSpec, seed: [u8; 32], rep: &Reputation) -> Audits {
        let (closure, jobs) = fixture();
        let members: Vec<PeerKey> = (1..=10).map(peer).collect();
        let mut audits = Audits::default();
        let s = Sampling {
            spec,
            jobs: &jobs,
            seed: &seed,
            members: &members,
        };
        audits.sample(&closure, &s, rep);
        audits
    }

    #[test]
    fn sampling_is_a_function_of_the_seed() {
        let spec = sample_spec();
        let rep = Reputation::default();
        let a = sample(&spec, [1; 32], &rep);
        let b = sample(&spec, [1; 32], &rep);
        assert_eq!(a.pending, b.pending);
        assert_eq!(a.draws, b.draws);
        assert_eq!(a.draws.len(), 200, "every settled job is drawn for");
        // 5% of 200: some, not all.
        assert!(
            !a.pending.is_empty() && a.pending.len() < 50,
            "{}",
            a.pending.len()
        );
        assert!(
            a.draws
                .values()
                .all(|(rate, _)| *rate == spec.audit_rate_ppm)
        );
        let c = sample(&spec, [2; 32], &rep);
        assert_ne!(
            a.pending.keys().collect::<Vec<_>>(),
            c.pending.keys().collect::<Vec<_>>(),
            "another seed, another sample"
        );
    }

    #[test]
    fn a_sampled_job_gets_a_jury_without_its_executors() {
        let mut spec = sample_spec();
        spec.audit_rate_ppm = 1_000_000;
        let audits = sample(&spec, [1; 32], &Reputation::default());
        assert_eq!(audits.pending.len(), 200, "rate 1: every job");
        let size = usize::from(spec.redundancy) + usize::from(spec.schedule.max_extra_executors);
        for a in audits.pending.values() {
            assert_eq!(a.executors, vec![peer(1), peer(2), peer(3)]);
            assert_eq!(a.jury.len(), size);
            assert!(a.jury.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert!(a.jury.iter().all(|p| a.executors.binary_search(p).is_err()));
            assert_eq!(a.generation, 2);
        }
        spec.audit_rate_ppm = 0;
        let none = sample(&spec, [1; 32], &Reputation::default());
        assert!(none.pending.is_empty() && none.draws.is_empty());
    }

    #[test]
    fn jobs_of_a_convicted_executor_are_sampled_more_often() {
        let spec = sample_spec();
        let mut rep = Reputation::default();
        rep.failed_audit(&peer(2));
        let flagged = sample(&spec, [1; 32], &rep);
        let want = audit::rate(spec.audit_rate_ppm, true);
        assert!(want > spec.audit_rate_ppm);
        assert!(flagged.draws.values().all(|(rate, _)| *rate == want));
        let plain = sample(&spec, [1; 32], &Reputation::default());
        assert!(flagged.pending.len() > plain.pending.len());
    }

    fn pending(original: Settlement) -> PendingAudit {
        PendingAudit {
            spec: sample_job(),
            generation: 0,
            original,
            credited: vec![peer(1), peer(2)],
            executors: vec![peer(1), peer(2), peer(3)],
            jury: vec![peer(7), peer(8), peer(9)],
            rate_ppm: 50_000,
        }
    }

    #[test]
    fn an_overturning_verdict_fails_the_executors_and_credits_the_accuser() {
        let original = Settlement {
            canonical: metrics(900),
            agreeing: vec![peer(1), peer(2)],
            dissenting: vec![peer(3)],
        };
        let a = pending(original);
        let mut rep = Reputation::default();
        for p in [1, 2] {
            rep.credit(&peer(p));
        }
        rep.offence(&peer(3));
        let v = Verdict {
            job: a.spec.id(),
            upheld_by: vec![peer(5)],
            contradicted: vec![peer(6)],
            jury: Some(Settlement {
                canonical: metrics(800),
                agreeing: vec![peer(7), peer(8)],
                dissenting: vec![peer(9)],
            }),
        };
        apply_verdict(&mut rep, &a, &v, &Tolerance::EXACT);
        for p in [1, 2, 6] {
            assert!(rep.has_failed(&peer(p)), "peer {p} failed");
        }
        assert_eq!(rep.agreed.get(&peer(1)), Some(&0), "credit taken back");
        assert_eq!(
            rep.offences.get(&peer(3)),
            Some(&0),
            "the dissent was right"
        );
        assert_eq!(rep.agreed.get(&peer(5)), Some(&1), "the accuser");
        assert_eq!(rep.agreed.get(&peer(7)), Some(&1), "the jury's majority");
        assert_eq!(rep.offences.get(&peer(9)), Some(&1), "the jury's dissenter");
    }

    #[test]
    fn a_confirming_verdict_only_fails_the_contradicted_auditors() {
        let original = Settlement {
            canonical: metrics(900),
            agreeing: vec![peer(1), peer(2)],
            dissenting: vec![peer(3)],
        };
        let a = pending(original);
        let mut rep = Reputation::default();
        rep.credit(&peer(1));
        rep.offence(&peer(3));
        let v = Verdict {
            job: a.spec.id(),
            upheld_by: vec![peer(5)],
            contradicted: vec![peer(6)],
            jury: None,
        };
        apply_verdict(&mut rep, &a, &v, &Tolerance::EXACT);
        assert_eq!(rep.failed_audits.keys().collect::<Vec<_>>(), vec![&peer(6)]);
        assert_eq!(rep.agreed.get(&peer(1)), Some(&1));
        assert_eq!(rep.agreed.get(&peer(5)), None, "confirming earns nothing");
        assert_eq!(rep.offences.get(&peer(3)), Some(&1));
    }
}
