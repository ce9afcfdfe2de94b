//! Audits and disputes (DESIGN §2.7, ADR 0003): catching a colluding quorum after the fact.
//!
//! * **Sampling.** When generation `g` closes, each settled job is sampled for audit with
//!   probability `audit_rate_ppm / 10⁶`, from a hash of the job and the closure's seed — which
//!   is fixed only by the closure itself, after every result was revealed, so executors cannot
//!   know in advance which jobs will be checked. Jobs where an agreeing executor has already
//!   failed an audit are sampled at [`FLAGGED_AUDIT_FACTOR`] times the rate.
//! * **Auditing.** Audit-mode members re-execute sampled jobs they did not execute and gossip a
//!   signed [`AuditReport`](crate::AuditReport). Reports from peers who failed an audit before
//!   are ignored, which bounds how much jury work a slanderer can cause.
//! * **Disputes.** A report that disagrees with the closure opens a dispute. Its **jury** is
//!   fixed in advance: the first `r + max_extra_executors` members ranked for the dispute
//!   (by the same weighted ranking as jobs, seeded by the closure) who did not execute the job.
//!   Jurors re-execute and report; the jury's verdict is settled from all its members' reports
//!   held exactly as a job is settled from its executors' results: `q` agreeing and no
//!   disagreeing result with as much support. The accused executors do not vote. A jury is
//!   drawn like a job's executors, so capturing one is as hard as capturing a job, and a wrong
//!   verdict needs a captured job, a sampled audit and a captured jury at once.
//! * **Verdicts** enter a later closure ([`Verdict`]); every honest peer derives the same
//!   penalties from it: executors overturned and auditors contradicted have failed an audit
//!   (an offence: assignment weight 1, their later jobs audited at the higher rate); an auditor
//!   whose accusation is upheld earns a credit.

use serde::{Deserialize, Serialize};

use crate::agreement::{Settlement, agree, settle_digested};
use crate::assign::rank;
use crate::id::{JobId, context, hash_canonical};
use crate::identity::PeerKey;
use crate::outcome::Outcome;
use crate::outcome::Tolerance;
use crate::spec::JobSpec;

/// How much more often jobs with a convicted executor are audited.
pub const FLAGGED_AUDIT_FACTOR: u32 = 10;

const PPM: u64 = 1_000_000;

/// Whether `job`, settled in the closure whose next-generation seed is `seed`, is audited at
/// `rate_ppm` parts per million.
pub fn sampled(seed: &[u8; 32], job: &JobId, rate_ppm: u32) -> bool {
    let h = hash_canonical(context::AUDIT_SAMPLE, &(seed, job));
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_le_bytes(b) % PPM < u64::from(rate_ppm)
}

/// The sampling rate of a job: the campaign's, or [`FLAGGED_AUDIT_FACTOR`] times it (at most
/// every job) when an agreeing executor has failed an audit.
pub fn rate(campaign_rate_ppm: u32, flagged: bool) -> u32 {
    if flagged {
        campaign_rate_ppm
            .saturating_mul(FLAGGED_AUDIT_FACTOR)
            .min(PPM as u32)
    } else {
        campaign_rate_ppm
    }
}

/// The jury of a dispute on `job`: the first `size` of `members` ranked for the dispute who are
/// not among `executors` (sorted).
pub fn jury(
    job: &JobId,
    seed: &[u8; 32],
    members: &[PeerKey],
    weight_of: impl Fn(&PeerKey) -> u64,
    executors: &[PeerKey],
    size: usize,
) -> Vec<PeerKey> {
    let dispute = JobId(hash_canonical(context::DISPUTE, job));
    let mut j: Vec<PeerKey> = rank(&dispute, seed, members, weight_of)
        .into_iter()
        .filter(|p| executors.binary_search(p).is_err())
        .take(size)
        .collect();
    j.sort();
    j
}

/// A settled job awaiting audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAudit {
    /// The job.
    pub spec: JobSpec,
    /// The generation whose closure settled it.
    pub generation: u32,
    /// Its settlement in that closure.
    pub original: Settlement,
    /// The executors credited for it.
    pub credited: Vec<PeerKey>,
    /// Its executors, agreeing and dissenting (sorted).
    pub executors: Vec<PeerKey>,
    /// The dispute jury (sorted).
    pub jury: Vec<PeerKey>,
    /// The rate it was sampled at (parts per million).
    pub rate_ppm: u32,
}

/// The judgement of an audited job, recorded in a closure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verdict {
    /// The job.
    pub job: JobId,
    /// Auditors whose report agrees with the final outcome (sorted).
    pub upheld_by: Vec<PeerKey>,
    /// Auditors whose report does not (sorted): they failed the audit.
    pub contradicted: Vec<PeerKey>,
    /// The jury's settlement, when an auditor disagreed with the closure; `None` when every
    /// auditor confirmed it.
    pub jury: Option<Settlement>,
}

impl Verdict {
    /// The job's outcome after the audit.
    pub fn outcome<'a>(&'a self, original: &'a Settlement) -> &'a Outcome {
        self.jury
            .as_ref()
            .map_or(&original.canonical, |s| &s.canonical)
    }

    /// Whether the audit overturned the closure's outcome.
    pub fn overturned(&self, original: &Settlement, tol: &Tolerance) -> bool {
        self.jury
            .as_ref()
            .is_some_and(|s| !agree(&original.canonical, &s.canonical, tol))
    }
}

/// The reports one peer holds on an audited job: `(signer, outcome, outcome digest)`.
pub type Report<'a> = (PeerKey, &'a Outcome, [u8; 32]);

/// Whether a report held on `audit` disagrees with its closure: a report by a non-executor
/// (`eligible` says who may report: members who never failed an audit).
pub fn disputed(
    audit: &PendingAudit,
    reports: &[Report<'_>],
    eligible: impl Fn(&PeerKey) -> bool,
    tol: &Tolerance,
) -> bool {
    reports.iter().any(|(p, o, _)| {
        audit.executors.binary_search(p).is_err()
            && eligible(p)
            && !agree(&audit.original.canonical, o, tol)
    })
}

/// The verdict on `audit` from every report held, or `None` if none can be given yet (no report
/// by a non-executor; or one disagrees and the jurors' reports do not settle: fewer than `q`
/// agree, or they are contested).
///
/// `eligible` says who may report (members who never failed an audit). Jurors' reports are
/// votes; other reporters are the auditors the verdict upholds or contradicts. A proposal's
/// verdict is valid where the same reports give the same verdict, so a proposer cannot leave
/// out an inconvenient report that the validators hold.
pub fn judge(
    audit: &PendingAudit,
    reports: &[Report<'_>],
    eligible: impl Fn(&PeerKey) -> bool,
    q: usize,
    tol: &Tolerance,
) -> Option<Verdict> {
    let is_executor = |p: &PeerKey| audit.executors.binary_search(p).is_ok();
    let is_juror = |p: &PeerKey| audit.jury.binary_search(p).is_ok();
    let reporters: Vec<&Report<'_>> = reports
        .iter()
        .filter(|(p, _, _)| !is_executor(p) && eligible(p))
        .collect();
    if reporters.is_empty() {
        return None;
    }
    let jury = if disputed(audit, reports, &eligible, tol) {
        let votes: Vec<(PeerKey, [u8; 32], &Outcome)> = reporters
            .iter()
            .filter(|(p, _, _)| is_juror(p))
            .map(|(p, o, d)| (*p, *d, *o))
            .collect();
        Some(settle_digested(votes, q, tol)?)
    } else {
        None
    };
    let outcome = jury
        .as_ref()
        .map_or(&audit.original.canonical, |s| &s.canonical);
    let (mut upheld_by, mut contradicted) = (Vec::new(), Vec::new());
    for (p, o, _) in reporters.into_iter().filter(|(p, _, _)| !is_juror(p)) {
        if agree(outcome, o, tol) {
            upheld_by.push(*p);
        } else {
            contradicted.push(*p);
        }
    }
    upheld_by.sort();
    contradicted.sort();
    Some(Verdict {
        job: audit.spec.id(),
        upheld_by,
        contradicted,
        jury,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::{metrics, peer};
    use crate::spec::tests::sample_job;

    /// A job settled on a wrong result (correct count 500) by executors 1 and 2 over 3, with
    /// a jury of 10..=15.
    fn captured() -> PendingAudit {
        PendingAudit {
            spec: sample_job(),
            generation: 0,
            original: Settlement {
                canonical: metrics(500),
                agreeing: vec![peer(1), peer(2)],
                dissenting: vec![peer(3)],
            },
            credited: vec![peer(1), peer(2)],
            executors: vec![peer(1), peer(2), peer(3)],
            jury: (10..=15).map(peer).collect(),
            rate_ppm: 250_000,
        }
    }

    fn judged(a: &PendingAudit, reports: &[(u8, Outcome)]) -> Option<Verdict> {
        let held: Vec<(PeerKey, Outcome, [u8; 32])> = reports
            .iter()
            .map(|(p, o)| (peer(*p), o.clone(), o.digest()))
            .collect();
        let refs: Vec<Report<'_>> = held.iter().map(|(p, o, d)| (*p, o, *d)).collect();
        judge(a, &refs, |p| *p != peer(99), 2, &Tolerance::EXACT)
    }

    #[test]
    fn an_accusation_stands_only_when_the_jury_agrees_with_it() {
        let a = captured();
        let tol = Tolerance::EXACT;
        // No report by a non-executor: nothing to judge (an executor's report is no audit).
        assert_eq!(judged(&a, &[]), None);
        assert_eq!(judged(&a, &[(3, metrics(900))]), None);
        // An auditor confirms: upheld without a jury.
        let v = judged(&a, &[(5, metrics(500))]).expect("verdict");
        assert_eq!((v.upheld_by.clone(), v.jury.clone()), (vec![peer(5)], None));
        assert!(!v.overturned(&a.original, &tol));
        // An auditor accuses: no verdict until q jurors agree, and not while contested.
        let accused = [(5, metrics(900))];
        assert_eq!(judged(&a, &accused), None);
        assert_eq!(
            judged(
                &a,
                &[(5, metrics(900)), (10, metrics(900)), (11, metrics(500))]
            ),
            None
        );
        let v = judged(
            &a,
            &[
                (5, metrics(900)),
                (10, metrics(900)),
                (11, metrics(500)),
                (12, metrics(900)),
            ],
        )
        .expect("verdict");
        assert!(v.overturned(&a.original, &tol));
        assert_eq!(v.outcome(&a.original), &metrics(900));
        assert_eq!(v.upheld_by, vec![peer(5)]);
        let jury = v.jury.expect("jury");
        assert_eq!(jury.agreeing, vec![peer(10), peer(12)]);
        assert_eq!(jury.dissenting, vec![peer(11)]);
        // A false accusation: the jury upholds the closure and the accuser is contradicted.
        let v = judged(
            &a,
            &[(6, metrics(123)), (10, metrics(500)), (13, metrics(500))],
        )
        .expect("verdict");
        assert!(!v.overturned(&a.original, &tol));
        assert_eq!(v.contradicted, vec![peer(6)]);
        // Ineligible reporters (here 99: not a member, or a failed auditor) are ignored.
        assert_eq!(judged(&a, &[(99, metrics(900))]), None);
    }

    #[test]
    fn sampling_follows_the_rate_and_the_seed() {
        let n = 20_000u32;
        let jobs: Vec<JobId> = (0..n)
            .map(|i| JobId(hash_canonical(context::JOB, &i)))
            .collect();
        let seed = [7u8; 32];
        let count = |rate| jobs.iter().filter(|j| sampled(&seed, j, rate)).count();
        assert_eq!(count(0), 0);
        assert_eq!(count(1_000_000), n as usize);
        // 25 %: 5000 expected, sd ~61.
        let c = count(250_000);
        assert!((4_750..=5_250).contains(&c), "{c}");
        // Another seed picks other jobs.
        let other = jobs
            .iter()
            .filter(|j| sampled(&seed, j, 250_000) != sampled(&[8; 32], j, 250_000))
            .count();
        assert!(other > 1_000, "{other}");
        assert_eq!(rate(50_000, false), 50_000);
        assert_eq!(rate(50_000, true), 500_000);
        assert_eq!(rate(500_000, true), 1_000_000);
    }

    #[test]
    fn the_jury_excludes_the_executors() {
        let members: Vec<PeerKey> = (1..=20).map(peer).collect();
        let executors = vec![peer(1), peer(2), peer(3)];
        let job = JobId([5; 32]);
        let j = jury(&job, &[1; 32], &members, |_| 4, &executors, 6);
        assert_eq!(j.len(), 6);
        assert!(j.iter().all(|p| !executors.contains(p)));
        assert_eq!(j, jury(&job, &[1; 32], &members, |_| 4, &executors, 6));
        assert_ne!(j, jury(&job, &[2; 32], &members, |_| 4, &executors, 6));
    }
}
