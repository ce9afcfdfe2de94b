//! Scores and reputation, derived deterministically from the ledger's contents.
//!
//! Every node computes the same scores from the same settled jobs, in integer arithmetic:
//! * an executor in a job's agreeing set earns the job's `compute` in points;
//! * a dissenting executor loses `compute × dissent_penalty_pct / 100`;
//! * a claimer that never produced a valid result for a settled job loses
//!   `compute × missed_penalty_pct / 100`;
//! * in an audited job, dissenting executors *and* auditors whose report disagrees with the
//!   settlement have failed an audit and lose `compute × failed_audit_penalty_pct / 100`
//!   (instead of the dissent penalty); auditors earn nothing for agreeing, since the result
//!   they re-ran was already public;
//! * each equivocation (two conflicting signed statements on one job) costs
//!   `equivocation_penalty` points;
//! * reputation sums each generation's net points with exponential decay:
//!   `rep_g = rep_{g-1} × decay_ppm / 10⁶ + net_g`, so old merit fades and a peer must keep
//!   contributing;
//! * productivity is the share of a peer's executions that ended agreed, in parts per million.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::agreement::Settlement;
use crate::identity::PeerKey;

/// The weights of the scoring rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringRules {
    /// Penalty for a dissenting result, in percent of the job's compute.
    pub dissent_penalty_pct: u32,
    /// Penalty for a claim never followed by a valid result, in percent of the job's compute.
    pub missed_penalty_pct: u32,
    /// Penalty for a failed audit, in percent of the job's compute.
    pub failed_audit_penalty_pct: u32,
    /// Penalty per equivocation, in points.
    pub equivocation_penalty: u64,
    /// Reputation kept from one generation to the next, in parts per million.
    pub decay_ppm: u32,
}

impl Default for ScoringRules {
    fn default() -> Self {
        ScoringRules {
            dissent_penalty_pct: 100,
            missed_penalty_pct: 25,
            failed_audit_penalty_pct: 1000,
            equivocation_penalty: 10_000,
            decay_ppm: 900_000,
        }
    }
}

/// One settled job, as scoring sees it.
#[derive(Debug, Clone, Copy)]
pub struct JobRecord<'a> {
    /// Its generation.
    pub generation: u32,
    /// Its compute weight.
    pub compute: u64,
    /// Its settlement.
    pub settlement: &'a Settlement,
    /// Peers that claimed it.
    pub claimers: &'a BTreeSet<PeerKey>,
    /// Peers whose evidence was an audit report, not an execution.
    pub auditors: &'a BTreeSet<PeerKey>,
}

/// A peer's standing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerScore {
    /// Results in an agreeing set.
    pub agreed: u64,
    /// Results that dissented (unaudited jobs).
    pub dissented: u64,
    /// Claims on settled jobs never followed by a valid result.
    pub missed: u64,
    /// Failed audits (as executor or as auditor).
    pub failed_audits: u64,
    /// Equivocations.
    pub equivocations: u64,
    /// Net points over the whole campaign.
    pub points: i64,
    /// Agreed results ÷ all results and missed claims, in parts per million.
    pub productivity_ppm: u32,
    /// Decayed sum of per-generation net points.
    pub reputation: i64,
}

fn pct(compute: u64, pct: u32) -> i64 {
    let v = u128::from(compute) * u128::from(pct) / 100;
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn points(compute: u64) -> i64 {
    i64::try_from(compute).unwrap_or(i64::MAX)
}

/// Computes every peer's score. `equivocations` lists `(peer, generation)` once per
/// equivocation. The result depends only on the contents, not on their order.
pub fn score(
    jobs: &[JobRecord<'_>],
    equivocations: &[(PeerKey, u32)],
    rules: &ScoringRules,
) -> BTreeMap<PeerKey, PeerScore> {
    let mut scores: BTreeMap<PeerKey, PeerScore> = BTreeMap::new();
    // Net points per (generation, peer); BTreeMap keeps generations in order.
    let mut net: BTreeMap<u32, BTreeMap<PeerKey, i64>> = BTreeMap::new();
    let mut add =
        |peer: PeerKey, generation: u32, delta: i64, f: &mut dyn FnMut(&mut PeerScore)| {
            let s = scores.entry(peer).or_default();
            f(s);
            s.points = s.points.saturating_add(delta);
            let n = net.entry(generation).or_default().entry(peer).or_default();
            *n = n.saturating_add(delta);
        };
    for job in jobs {
        let audited = !job.auditors.is_empty();
        let g = job.generation;
        for p in &job.settlement.agreeing {
            if job.auditors.contains(p) {
                continue;
            }
            add(*p, g, points(job.compute), &mut |s| s.agreed += 1);
        }
        for p in &job.settlement.dissenting {
            if audited {
                let penalty = -pct(job.compute, rules.failed_audit_penalty_pct);
                add(*p, g, penalty, &mut |s| s.failed_audits += 1);
            } else {
                let penalty = -pct(job.compute, rules.dissent_penalty_pct);
                add(*p, g, penalty, &mut |s| s.dissented += 1);
            }
        }
        for p in job.claimers {
            let produced = job.settlement.agreeing.binary_search(p).is_ok()
                || job.settlement.dissenting.binary_search(p).is_ok();
            if !produced {
                let penalty = -pct(job.compute, rules.missed_penalty_pct);
                add(*p, g, penalty, &mut |s| s.missed += 1);
            }
        }
    }
    for (peer, g) in equivocations {
        let penalty = -i64::try_from(rules.equivocation_penalty).unwrap_or(i64::MAX);
        add(*peer, *g, penalty, &mut |s| s.equivocations += 1);
    }
    let last = net.keys().next_back().copied();
    let mut reputation: BTreeMap<PeerKey, i128> = BTreeMap::new();
    if let Some(last) = last {
        let first = net.keys().next().copied().unwrap_or(last);
        for g in first..=last {
            for rep in reputation.values_mut() {
                *rep = *rep * i128::from(rules.decay_ppm) / 1_000_000;
            }
            if let Some(deltas) = net.get(&g) {
                for (peer, d) in deltas {
                    *reputation.entry(*peer).or_default() += i128::from(*d);
                }
            }
        }
    }
    for (peer, s) in scores.iter_mut() {
        let executions = s.agreed + s.dissented + s.missed + s.failed_audits;
        s.productivity_ppm = if executions == 0 {
            0
        } else {
            u32::try_from(u128::from(s.agreed) * 1_000_000 / u128::from(executions))
                .unwrap_or(u32::MAX)
        };
        let rep = reputation.get(peer).copied().unwrap_or(0);
        s.reputation =
            i64::try_from(rep.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(0);
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::{metrics, peer};

    fn settlement(agreeing: &[u8], dissenting: &[u8]) -> Settlement {
        Settlement {
            canonical: metrics(900),
            agreeing: agreeing.iter().map(|i| peer(*i)).collect(),
            dissenting: dissenting.iter().map(|i| peer(*i)).collect(),
        }
    }

    #[test]
    fn points_penalties_and_productivity() {
        let s = settlement(&[1, 2], &[3]);
        let claimers: BTreeSet<PeerKey> = [1, 2, 3, 4].map(peer).into_iter().collect();
        let none = BTreeSet::new();
        let jobs = [JobRecord {
            generation: 0,
            compute: 100,
            settlement: &s,
            claimers: &claimers,
            auditors: &none,
        }];
        let scores = score(&jobs, &[(peer(5), 0)], &ScoringRules::default());
        assert_eq!(scores[&peer(1)].points, 100);
        assert_eq!(scores[&peer(1)].productivity_ppm, 1_000_000);
        assert_eq!(scores[&peer(3)].points, -100);
        assert_eq!(scores[&peer(3)].dissented, 1);
        assert_eq!(scores[&peer(4)].points, -25);
        assert_eq!(scores[&peer(4)].missed, 1);
        assert_eq!(scores[&peer(4)].productivity_ppm, 0);
        assert_eq!(scores[&peer(5)].points, -10_000);
        assert_eq!(scores[&peer(5)].equivocations, 1);
    }

    #[test]
    fn audits_turn_dissent_into_failed_audits_and_pay_auditors_nothing() {
        // Peers 1 and 2 colluded; auditor 9 and tie-breaker 3 outvote them.
        let s = settlement(&[3, 4, 9], &[1, 2]);
        let claimers: BTreeSet<PeerKey> = [1, 2, 3, 4].map(peer).into_iter().collect();
        let auditors: BTreeSet<PeerKey> = [peer(9)].into_iter().collect();
        let jobs = [JobRecord {
            generation: 0,
            compute: 10,
            settlement: &s,
            claimers: &claimers,
            auditors: &auditors,
        }];
        let scores = score(&jobs, &[], &ScoringRules::default());
        assert_eq!(scores[&peer(1)].failed_audits, 1);
        assert_eq!(scores[&peer(1)].points, -100);
        assert_eq!(scores[&peer(3)].points, 10);
        assert!(
            !scores.contains_key(&peer(9)),
            "auditors earn nothing for agreeing"
        );
    }

    #[test]
    fn reputation_decays_across_generations() {
        let s = settlement(&[1], &[]);
        let none = BTreeSet::new();
        let rec = |g| JobRecord {
            generation: g,
            compute: 1_000,
            settlement: &s,
            claimers: &none,
            auditors: &none,
        };
        let rules = ScoringRules {
            decay_ppm: 500_000,
            ..ScoringRules::default()
        };
        // Work in generation 0 only, but the campaign reached generation 2: 1000 -> 500 -> 250.
        let other = settlement(&[2], &[]);
        let jobs = [
            rec(0),
            JobRecord {
                generation: 2,
                compute: 1,
                settlement: &other,
                claimers: &none,
                auditors: &none,
            },
        ];
        let scores = score(&jobs, &[], &rules);
        assert_eq!(scores[&peer(1)].points, 1_000);
        assert_eq!(scores[&peer(1)].reputation, 250);
        assert_eq!(scores[&peer(2)].reputation, 1);
    }
}
