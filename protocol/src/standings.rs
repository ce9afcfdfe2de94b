//! What the closures decided: every job of a closed generation with its audit verdict, and
//! every peer's standing.
//!
//! The node's status API, the cluster report and the simulator's report all read settled jobs
//! and scores from here; none of them re-applies an audit or scoring rule of its own. Outcomes
//! come from the closures, which every honest node agrees on (not from a local ledger, whose
//! settlements may still gain late reveals), so the answers are the same on every honest node.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::agreement::Settlement;
use crate::audit::Verdict;
use crate::closure::{Closure, Entry, VoidReason};
use crate::id::JobId;
use crate::identity::PeerKey;
use crate::outcome::{Outcome, Tolerance};
use crate::scoring::{self, JobRecord, PeerScore, ScoringRules};

/// How a decided job ended. Serialised in lower case (`"success"`), as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Its executors agreed on metrics.
    Success,
    /// Its executors agreed that the job fails.
    Failure,
    /// No quorum by the deadline.
    Void,
}

impl JobStatus {
    /// `success`, `failure` or `void`, as reports and the API write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Success => "success",
            JobStatus::Failure => "failure",
            JobStatus::Void => "void",
        }
    }
}

impl core::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Display for AuditLabel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobStatus {
    /// The status a closure entry records (before any audit of it).
    pub fn of_entry(entry: &Entry) -> JobStatus {
        match entry {
            Entry::Settled { settlement, .. } => match settlement.canonical {
                Outcome::Success(_) => JobStatus::Success,
                Outcome::Failure(_) => JobStatus::Failure,
            },
            Entry::Void { .. } => JobStatus::Void,
        }
    }
}

/// How an audit of a settled job ended. Serialised in lower case (`"overturned"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLabel {
    /// Every auditor agreed with the executors: no dispute.
    Confirmed,
    /// An auditor disagreed, and the jury agreed with the executors.
    Upheld,
    /// The jury disagreed with the executors: its outcome stands instead.
    Overturned,
}

impl AuditLabel {
    /// How `verdict` judged the closure's `original` settlement.
    pub fn of(verdict: &Verdict, original: &Settlement, tolerance: &Tolerance) -> AuditLabel {
        match &verdict.jury {
            None => AuditLabel::Confirmed,
            Some(_) if verdict.overturned(original, tolerance) => AuditLabel::Overturned,
            Some(_) => AuditLabel::Upheld,
        }
    }

    /// `confirmed`, `upheld` or `overturned`, as reports, metrics and the API write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditLabel::Confirmed => "confirmed",
            AuditLabel::Upheld => "upheld",
            AuditLabel::Overturned => "overturned",
        }
    }
}

/// One job of a closed generation as the closures decided it.
#[derive(Debug, Clone, Copy)]
pub struct DecidedJob<'a> {
    /// The generation that closed it.
    pub generation: u32,
    /// The job.
    pub job: JobId,
    /// The settlement the closure recorded; `None` when the job went void.
    pub settled: Option<&'a Settlement>,
    /// Why the job went void, if it did.
    pub void_reason: Option<VoidReason>,
    /// The audit verdict on the job, if it was audited.
    pub verdict: Option<&'a Verdict>,
    /// How the audit ended, if it was audited.
    pub audit: Option<AuditLabel>,
}

impl<'a> DecidedJob<'a> {
    /// Whether the job succeeded, failed or went void, after audits.
    pub fn status(&self) -> JobStatus {
        match self.outcome() {
            Some(Outcome::Success(_)) => JobStatus::Success,
            Some(Outcome::Failure(_)) => JobStatus::Failure,
            None => JobStatus::Void,
        }
    }

    /// The outcome that stands after audits: the jury's when the audit overturned the
    /// closure, else the closure's; `None` for a void job.
    pub fn outcome(&self) -> Option<&'a Outcome> {
        self.shown().map(|s| &s.canonical)
    }

    /// The settlement to show: the jury's (its outcome, jurors and their dissenters) when the
    /// audit overturned the closure, else the closure's; `None` for a void job.
    pub fn shown(&self) -> Option<&'a Settlement> {
        match (self.audit, self.verdict.and_then(|v| v.jury.as_ref())) {
            (Some(AuditLabel::Overturned), Some(jury)) => Some(jury),
            _ => self.settled,
        }
    }

    /// When the audit overturned the closure: the executors who had agreed on the wrong
    /// outcome (sorted); otherwise empty.
    pub fn overturned(&self) -> &'a [PeerKey] {
        match (self.audit, self.settled) {
            (Some(AuditLabel::Overturned), Some(s)) => &s.agreeing,
            _ => &[],
        }
    }

    /// The settlement scoring credits, and the peers whose evidence in it was an audit
    /// report. An overturned job counts as the jury settled it: its jurors' outcome stands
    /// and they are its auditors, the executors who had agreed on the overturned outcome
    /// dissent (penalised as such, credited nothing), and its original dissenters are neither
    /// credited nor penalised (they disagreed with a wrong outcome).
    pub fn scored(&self) -> Option<(Cow<'a, Settlement>, BTreeSet<PeerKey>)> {
        let settled = self.settled?;
        match (self.audit, self.verdict.and_then(|v| v.jury.as_ref())) {
            (Some(AuditLabel::Overturned), Some(jury)) => Some((
                Cow::Owned(Settlement {
                    canonical: jury.canonical.clone(),
                    agreeing: jury.agreeing.clone(),
                    dissenting: settled.agreeing.clone(),
                }),
                jury.agreeing.iter().copied().collect(),
            )),
            _ => Some((Cow::Borrowed(settled), BTreeSet::new())),
        }
    }
}

/// Every job of `closures` (in closure order, then the closure's job-id order) with its audit
/// verdict. A verdict may sit in a later closure than the job it judges.
pub fn decided<'a>(closures: &[&'a Closure], tolerance: &Tolerance) -> Vec<DecidedJob<'a>> {
    let verdicts: BTreeMap<JobId, &Verdict> = closures
        .iter()
        .flat_map(|c| &c.verdicts)
        .map(|v| (v.job, v))
        .collect();
    let mut out = Vec::new();
    for closure in closures {
        for entry in &closure.entries {
            let job = entry.job();
            let (settled, void_reason) = match entry {
                Entry::Settled { settlement, .. } => (Some(settlement), None),
                Entry::Void { reason, .. } => (None, Some(*reason)),
            };
            let verdict = settled.and(verdicts.get(&job).copied());
            out.push(DecidedJob {
                generation: closure.generation,
                job,
                settled,
                void_reason,
                verdict,
                audit: verdict
                    .zip(settled)
                    .map(|(v, s)| AuditLabel::of(v, s, tolerance)),
            });
        }
    }
    out
}

/// The audit verdicts `closure` carries, labelled against the settlements of `closures` (the
/// campaign's closures so far, `closure` among them); verdicts on jobs none of them settled
/// are left out.
pub fn verdict_labels(
    closure: &Closure,
    closures: &[&Closure],
    tolerance: &Tolerance,
) -> Vec<AuditLabel> {
    let settled: BTreeMap<JobId, &Settlement> = closures
        .iter()
        .flat_map(|c| &c.entries)
        .filter_map(|e| match e {
            Entry::Settled {
                job, settlement, ..
            } => Some((*job, settlement)),
            Entry::Void { .. } => None,
        })
        .collect();
    closure
        .verdicts
        .iter()
        .filter_map(|v| settled.get(&v.job).map(|s| AuditLabel::of(v, s, tolerance)))
        .collect()
}

/// Every peer's standing from the decided jobs: points, penalties and reputation by the
/// default [`ScoringRules`], with `failed_audits` (the peer state machine's count) filled in.
/// `compute_of` gives a job's compute weight; jobs it does not know are left out.
pub fn scores(
    decided: &[DecidedJob<'_>],
    compute_of: impl Fn(&JobId) -> Option<u64>,
    failed_audits: &BTreeMap<PeerKey, u64>,
) -> BTreeMap<PeerKey, PeerScore> {
    let scored: Vec<(u32, u64, Cow<'_, Settlement>, BTreeSet<PeerKey>)> = decided
        .iter()
        .filter_map(|d| {
            let compute = compute_of(&d.job)?;
            let (settlement, auditors) = d.scored()?;
            Some((d.generation, compute, settlement, auditors))
        })
        .collect();
    let none = BTreeSet::new();
    let records: Vec<JobRecord<'_>> = scored
        .iter()
        .map(|(generation, compute, settlement, auditors)| JobRecord {
            generation: *generation,
            compute: *compute,
            settlement,
            claimers: &none,
            auditors,
        })
        .collect();
    let mut scores = scoring::score(&records, &[], &ScoringRules::default());
    for (peer, n) in failed_audits {
        scores.entry(*peer).or_default().failed_audits = *n;
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::{metrics, peer};
    use crate::id::CampaignId;
    use crate::outcome::{Failure, FailureKind};

    fn job(i: u8) -> JobId {
        JobId([i; 32])
    }

    fn settled(i: u8, outcome: Outcome, agreeing: &[u8], dissenting: &[u8]) -> Entry {
        Entry::Settled {
            job: job(i),
            settlement: Settlement {
                canonical: outcome,
                agreeing: agreeing.iter().map(|&p| peer(p)).collect(),
                dissenting: dissenting.iter().map(|&p| peer(p)).collect(),
            },
            wall_time_ms: 10,
            credited: agreeing.iter().map(|&p| peer(p)).collect(),
        }
    }

    fn verdict(i: u8, jury: Option<(Outcome, &[u8])>) -> Verdict {
        Verdict {
            job: job(i),
            upheld_by: vec![peer(9)],
            contradicted: vec![],
            jury: jury.map(|(canonical, agreeing)| Settlement {
                canonical,
                agreeing: agreeing.iter().map(|&p| peer(p)).collect(),
                dissenting: vec![peer(8)],
            }),
        }
    }

    fn closure(generation: u32, entries: Vec<Entry>, verdicts: Vec<Verdict>) -> Closure {
        Closure {
            campaign: CampaignId([0; 32]),
            generation,
            previous: [0; 32],
            entries,
            verdicts,
            members: vec![],
            deadline_ms: 1000,
        }
    }

    /// Generation 0: job 1 confirmed, job 2 upheld, job 3 overturned (its executors 1 and 2
    /// agreed on 500 correct, the jury 4 and 5 on 900), job 4 void, job 5 a failure; the
    /// verdicts arrive with generation 1's closure.
    fn campaign() -> (Closure, Closure) {
        let failure = Outcome::Failure(Failure {
            kind: FailureKind::NonFinite,
            detail: String::new(),
        });
        let g0 = closure(
            0,
            vec![
                settled(1, metrics(900), &[1, 2], &[3]),
                settled(2, metrics(900), &[1, 3], &[]),
                settled(3, metrics(500), &[1, 2], &[3]),
                Entry::Void {
                    job: job(4),
                    reason: crate::closure::VoidReason::NoQuorum,
                },
                settled(5, failure, &[2, 3], &[]),
            ],
            vec![],
        );
        let g1 = closure(
            1,
            vec![settled(6, metrics(800), &[2, 3], &[1])],
            vec![
                verdict(1, None),
                verdict(2, Some((metrics(900), &[4, 5]))),
                verdict(3, Some((metrics(900), &[4, 5]))),
            ],
        );
        (g0, g1)
    }

    #[test]
    fn every_job_is_decided_with_its_status_and_audit() {
        let (g0, g1) = campaign();
        let d = decided(&[&g0, &g1], &Tolerance::EXACT);
        let seen: Vec<(u8, u32, JobStatus, Option<AuditLabel>)> = d
            .iter()
            .map(|d| (d.job.0[0], d.generation, d.status(), d.audit))
            .collect();
        use AuditLabel::*;
        use JobStatus::*;
        assert_eq!(
            seen,
            vec![
                (1, 0, Success, Some(Confirmed)),
                (2, 0, Success, Some(Upheld)),
                (3, 0, Success, Some(Overturned)),
                (4, 0, Void, None),
                (5, 0, Failure, None),
                (6, 1, Success, None),
            ]
        );
        // The overturned job shows the jury's outcome and names the overturned executors.
        let j3 = &d[2];
        assert_eq!(j3.outcome(), Some(&metrics(900)));
        assert_eq!(
            j3.shown().map(|s| s.agreeing.clone()),
            Some(vec![peer(4), peer(5)])
        );
        assert_eq!(j3.overturned(), &[peer(1), peer(2)]);
        // The upheld one keeps its own settlement and overturns no one.
        assert_eq!(
            d[1].shown().map(|s| s.agreeing.clone()),
            Some(vec![peer(1), peer(3)])
        );
        assert!(d[1].overturned().is_empty());
        assert_eq!(d[3].outcome(), None);
        // A looser tolerance that makes 500 and 900 agree turns the overturn into an uphold.
        let loose = Tolerance {
            correct: 1000,
            ..Tolerance::EXACT
        };
        assert_eq!(decided(&[&g0, &g1], &loose)[2].audit, Some(Upheld));
    }

    #[test]
    fn verdicts_are_labelled_against_earlier_closures() {
        let (g0, g1) = campaign();
        let labels = verdict_labels(&g1, &[&g0, &g1], &Tolerance::EXACT);
        assert_eq!(
            labels,
            vec![
                AuditLabel::Confirmed,
                AuditLabel::Upheld,
                AuditLabel::Overturned
            ]
        );
        // Without the closure that settled the jobs, there is nothing to label.
        assert!(verdict_labels(&g1, &[&g1], &Tolerance::EXACT).is_empty());
        assert_eq!(AuditLabel::Overturned.as_str(), "overturned");
        assert_eq!(JobStatus::Void.as_str(), "void");
        // Serialised as shown.
        for l in [
            AuditLabel::Confirmed,
            AuditLabel::Upheld,
            AuditLabel::Overturned,
        ] {
            let json = serde_json::to_string(&l).expect("serialises");
            assert_eq!(json, format!("\"{}\"", l.as_str()));
        }
        for st in [JobStatus::Success, JobStatus::Failure, JobStatus::Void] {
            let json = serde_json::to_string(&st).expect("serialises");
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        let statuses: Vec<JobStatus> = g0.entries.iter().map(JobStatus::of_entry).collect();
        use JobStatus::*;
        assert_eq!(statuses, vec![Success, Success, Success, Void, Failure]);
    }

    #[test]
    fn scores_credit_the_jury_of_an_overturned_job_and_penalise_its_executors() {
        let (g0, g1) = campaign();
        let d = decided(&[&g0, &g1], &Tolerance::EXACT);
        let failed: BTreeMap<PeerKey, u64> = [(peer(2), 7)].into_iter().collect();
        let s = scores(&d, |_| Some(1), &failed);
        let plain = scores(&d, |_| Some(1), &BTreeMap::new());
        // The overturned job's executors (1, 2) fail the audit instead of being credited;
        // its jurors (4, 5) gave audit reports, not executions: no credit either.
        let p1 = &plain[&peer(1)];
        assert_eq!((p1.agreed, p1.failed_audits, p1.dissented), (2, 1, 1));
        assert!(
            plain
                .get(&peer(4))
                .is_none_or(|p| p.agreed == 0 && p.points == 0)
        );
        // Peer 3 dissented from job 1 (penalised) and from the overturned job's wrong
        // outcome (not penalised: it was right).
        let p3 = &plain[&peer(3)];
        assert_eq!((p3.agreed, p3.dissented, p3.failed_audits), (3, 1, 0));
        assert!(p3.points > p1.points);
        assert_eq!(
            s[&peer(2)].failed_audits,
            7,
            "the peer's count is filled in"
        );
        // Jobs whose compute is unknown are left out.
        let none = scores(&d, |_| None, &BTreeMap::new());
        assert!(none.values().all(|p| p.agreed == 0 && p.dissented == 0));
    }
}
