//! Grading a finished run from plain data: who cheated and was caught, missed or paid, which
//! honest nodes were penalised, how many wrong results stand, whether the running nodes
//! agree, and whether the run passes ([`ok`]). Pure functions, no nodes, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use hivemesh_protocol::{PeerKey, PeerScore};

use super::config::Role;
use super::outcome::{ShardView, Standing};
use hivemesh_node::fault::Fault;

/// What a run is graded on.
#[derive(Debug, Clone)]
pub(crate) struct GradeInput<'a> {
    /// Every node's role, by index.
    pub roles: &'a [Role],
    /// Every node's signing key, by index.
    pub keys: &'a [PeerKey],
    /// The standings of the agreed ledger (from a running honest node).
    pub scores: &'a [(PeerKey, PeerScore)],
    /// How the Byzantine nodes misbehaved.
    pub strategy: Fault,
    /// For each agreed settled job, the executors (hex keys) that stand behind its outcome.
    pub agreeing: Vec<&'a [String]>,
    /// The closures (generation, root) of each node running at the end.
    pub closures: Vec<&'a [(u32, String)]>,
}

/// The grade of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grade {
    /// Standings by node, with roles.
    pub standings: Vec<Standing>,
    /// Byzantine nodes the ledger shows misbehaving (dissent or failed audits).
    pub cheaters_detected: Vec<usize>,
    /// Byzantine nodes the ledger does not catch.
    pub cheaters_missed: Vec<usize>,
    /// Byzantine nodes with positive points.
    pub cheaters_paid: Vec<usize>,
    /// Honest nodes the ledger penalises.
    pub honest_penalised: Vec<usize>,
    /// Agreed jobs a Byzantine node stands behind (lying strategy only).
    pub wrong_results: usize,
    /// Whether every running node holds the same, non-empty closures.
    pub agreement: bool,
}

/// Whether the ledger shows a peer misbehaving.
fn caught(s: &PeerScore) -> bool {
    s.dissented > 0 || s.failed_audits > 0
}

/// The ledger's standings, each with its node's index and role (keys of no node are left out).
fn standings(input: &GradeInput<'_>) -> Vec<Standing> {
    let index_of: BTreeMap<PeerKey, usize> = input
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i))
        .collect();
    input
        .scores
        .iter()
        .filter_map(|(k, s)| {
            let i = *index_of.get(k)?;
            Some(Standing {
                index: i,
                role: input.roles[i],
                key: k.to_string(),
                score: s.clone(),
            })
        })
        .collect()
}

/// Whether every running node holds the same closures, and they are not empty.
pub(crate) fn agreement(closures: &[&[(u32, String)]]) -> bool {
    closures
        .first()
        .is_some_and(|f| !f.is_empty() && closures.iter().all(|c| c == f))
}

/// Grades a run.
pub(crate) fn grade(input: &GradeInput<'_>) -> Grade {
    let standings = standings(input);
    let byz: Vec<&Standing> = standings
        .iter()
        .filter(|s| s.role == Role::Byzantine)
        .collect();
    let cheaters_detected = byz
        .iter()
        .filter(|s| caught(&s.score))
        .map(|s| s.index)
        .collect();
    let cheaters_paid = byz
        .iter()
        .filter(|s| s.score.points > 0)
        .map(|s| s.index)
        .collect();
    let honest_penalised = standings
        .iter()
        .filter(|s| s.role != Role::Byzantine && caught(&s.score))
        .map(|s| s.index)
        .collect();
    // A liar that executed but is not in the standings (no settled job) is also missed.
    let cheaters_missed = match input.strategy {
        // Serving corrupt blobs is not a ledger offence: peers refuse the bytes and lower the
        // server's gossip score, which the ledger does not see. A federated client's attack
        // is on its own private round, which no one else can recompute: the aggregation rule
        // and the campaign's strikes answer it, not the ledger (the grade is the accuracy).
        f if !matches!(f, Fault::Lie | Fault::Noise) => Vec::new(),
        _ => (0..input.roles.len())
            .filter(|i| input.roles[*i] == Role::Byzantine)
            .filter(|i| !byz.iter().any(|s| s.index == *i && caught(&s.score)))
            .collect(),
    };
    let wrong_results = match input.strategy {
        f if !matches!(f, Fault::Lie | Fault::Noise) => 0,
        _ => {
            let byz_keys: BTreeSet<&str> = byz.iter().map(|s| s.key.as_str()).collect();
            input
                .agreeing
                .iter()
                .filter(|a| a.iter().any(|k| byz_keys.contains(k.as_str())))
                .count()
        }
    };
    Grade {
        agreement: agreement(&input.closures),
        standings,
        cheaters_detected,
        cheaters_missed,
        cheaters_paid,
        honest_penalised,
        wrong_results,
    }
}

/// Whether a run shows what a cluster must: the campaign finished, every running node agrees,
/// no wrong result stands, and every distillation shard was verified.
pub(crate) fn ok(
    finished: bool,
    agreement: bool,
    wrong_results: usize,
    shards: &[ShardView],
) -> bool {
    finished && agreement && wrong_results == 0 && shards.iter().all(|s| s.verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hivemesh_protocol::Keypair;
    use hivemesh_protocol::standings::JobStatus;

    fn key(i: u8) -> PeerKey {
        Keypair::from_secret_bytes([i + 1; 32]).public()
    }

    fn honest_score() -> PeerScore {
        PeerScore {
            agreed: 4,
            points: 40,
            ..PeerScore::default()
        }
    }

    /// Four nodes, the last one Byzantine when `liar` is set.
    struct Run {
        roles: Vec<Role>,
        keys: Vec<PeerKey>,
        scores: Vec<(PeerKey, PeerScore)>,
        agreeing: Vec<Vec<String>>,
        closures: Vec<Vec<(u32, String)>>,
        strategy: Fault,
    }

    impl Run {
        fn new(liar: bool) -> Run {
            let mut roles = vec![Role::Honest; 4];
            if liar {
                roles[3] = Role::Byzantine;
            }
            let keys: Vec<PeerKey> = (0..4).map(key).collect();
            let scores = keys.iter().map(|k| (*k, honest_score())).collect();
            let honest: Vec<String> = keys[..3].iter().map(ToString::to_string).collect();
            let closures = vec![(0, "aa".to_string()), (1, "bb".to_string())];
            Run {
                roles,
                keys,
                scores,
                agreeing: vec![honest.clone(), honest],
                closures: vec![closures; 4],
                strategy: Fault::Lie,
            }
        }

        fn grade(&self) -> Grade {
            grade(&GradeInput {
                roles: &self.roles,
                keys: &self.keys,
                scores: &self.scores,
                strategy: self.strategy,
                agreeing: self.agreeing.iter().map(Vec::as_slice).collect(),
                closures: self.closures.iter().map(Vec::as_slice).collect(),
            })
        }
    }

    fn passes(g: &Grade) -> bool {
        ok(true, g.agreement, g.wrong_results, &[])
    }

    #[test]
    fn an_honest_run_grades_ok() {
        let g = Run::new(false).grade();
        assert!(g.agreement);
        assert_eq!(g.wrong_results, 0);
        assert!(g.cheaters_detected.is_empty() && g.cheaters_missed.is_empty());
        assert!(g.cheaters_paid.is_empty() && g.honest_penalised.is_empty());
        assert_eq!(g.standings.len(), 4);
        assert!(g.standings.iter().all(|s| s.role == Role::Honest));
        assert!(passes(&g));
    }

    #[test]
    fn a_liar_that_dissented_is_detected_and_not_paid() {
        let mut run = Run::new(true);
        run.scores[3].1 = PeerScore {
            dissented: 4,
            points: -8,
            ..PeerScore::default()
        };
        let g = run.grade();
        assert_eq!(g.cheaters_detected, vec![3]);
        assert!(g.cheaters_missed.is_empty() && g.cheaters_paid.is_empty());
        assert!(g.honest_penalised.is_empty());
        assert!(passes(&g));
    }

    #[test]
    fn a_byzantine_node_with_points_counts_as_paid() {
        let mut run = Run::new(true);
        run.scores[3].1 = PeerScore {
            agreed: 1,
            dissented: 1,
            points: 3,
            ..PeerScore::default()
        };
        let g = run.grade();
        assert_eq!(g.cheaters_paid, vec![3]);
        assert_eq!(g.cheaters_detected, vec![3]);
    }

    #[test]
    fn a_liar_the_ledger_does_not_catch_is_missed() {
        let mut run = Run::new(true);
        // Not in the standings at all: it never had a settled job.
        run.scores.pop();
        let g = run.grade();
        assert_eq!(g.cheaters_missed, vec![3]);
        assert!(g.cheaters_detected.is_empty());
        // Corrupt blobs are not a ledger offence: nobody counts as missed.
        run.strategy = Fault::CorruptBlobs;
        assert!(run.grade().cheaters_missed.is_empty());
    }

    #[test]
    fn an_honest_node_that_failed_an_audit_is_penalised() {
        let mut run = Run::new(false);
        run.scores[1].1.failed_audits = 1;
        assert_eq!(run.grade().honest_penalised, vec![1]);
    }

    #[test]
    fn nodes_with_different_closures_fail_agreement() {
        let mut run = Run::new(false);
        run.closures[2][1].1 = "cc".into();
        let g = run.grade();
        assert!(!g.agreement);
        assert!(!passes(&g));
        // No closures at all is no agreement either.
        assert!(!agreement(&[&[], &[]]));
        assert!(!agreement(&[]));
    }

    #[test]
    fn a_wrong_result_standing_fails() {
        let mut run = Run::new(true);
        run.scores[3].1.dissented = 1;
        run.agreeing[1] = vec![run.keys[3].to_string(), run.keys[0].to_string()];
        let g = run.grade();
        assert_eq!(g.wrong_results, 1);
        assert!(!passes(&g));
        // A corrupt-blob server is not a liar: its agreement is not a wrong result.
        run.strategy = Fault::CorruptBlobs;
        assert_eq!(run.grade().wrong_results, 0);
    }

    #[test]
    fn an_unverified_shard_or_an_unfinished_run_fails() {
        let shard = ShardView {
            job: "j".into(),
            start: 0,
            end: 10,
            status: JobStatus::Success,
            blob: None,
            agreeing: 2,
            teacher_accuracy: 0.5,
            verified: false,
            file: None,
        };
        assert!(!ok(true, true, 0, std::slice::from_ref(&shard)));
        assert!(ok(
            true,
            true,
            0,
            &[ShardView {
                verified: true,
                ..shard
            }]
        ));
        assert!(!ok(false, true, 0, &[]));
    }
}
