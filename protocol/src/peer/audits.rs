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
            let Some(spec) = s.jobs.get(job) else {
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
