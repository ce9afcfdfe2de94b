//! Pinned jobs (federated clients' rounds, ADR 0010): only the client runs its job, its one
//! result settles it, no one else's counts; a swarm of peers runs a federated campaign to the
//! end with every client job run by its client alone.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::common;

use common::*;
use hivemesh_protocol::kinds::{FedJob, FederatedParams, SecureStep};
use hivemesh_protocol::ledger::IgnoreReason;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput, PeerOutput};
use hivemesh_protocol::spec::{Aggregate, OuterStep};
use hivemesh_protocol::*;

fn params() -> FederatedParams {
    FederatedParams {
        model: BlobId::of_bytes(b"model"),
        private_data: "wards".into(),
        rounds: 3,
        clients_per_round: 2,
        min_clients: 1,
        local_steps: 10,
        example_privacy: None,
        client_privacy: None,
        delta: 1e-5,
        epsilon_budget: None,
        norm_bound: 0.0,
        aggregate: Aggregate::Mean,
        outer: OuterStep::Average,
        secure: None,
        features: hivemesh_protocol::spec::Features::Values,
    }
}

fn federated_spec(roster: Vec<PeerKey>) -> CampaignSpec {
    let mut s = spec();
    s.search = Search::Federated(params());
    s.redundancy = 2;
    // A silent client's job goes void `max_extra + 1 + last_due` deadlines after its
    // generation starts; generation 0 has no measured times to shorten the first deadline.
    s.schedule.job_deadline_ms = 20_000;
    s.quorum = 2;
    s.audit_rate_ppm = 1_000_000;
    s.roster = roster;
    s
}

fn pinned_job(campaign: CampaignId, client: &Keypair) -> JobSpec {
    let mut j = job(campaign, 0);
    j.payload = JobPayload::Federated(FedJob {
        round: 0,
        client: Some(client.public()),
        population: 3,
        base: BlobId::of_bytes(b"model"),
        updates: Vec::new(),
        sums: None,
        step: SecureStep::Train,
        secure: None,
    });
    j
}

/// A pinned job settles on its client's single result though the campaign's quorum is 2;
/// another member's claim and results on it are ignored, not counted.
#[test]
fn a_pinned_job_settles_on_its_clients_result_alone() {
    let s = federated_spec(vec![key(1).public()]);
    let c = s.id();
    let mut l = Ledger::new(s, LedgerConfig::default());
    let j = pinned_job(c, &key(1));
    let id = j.id();
    let _ = l.handle(Input::RegisterJob(j), Timestamp(0)).count();
    let out = feed(&mut l, execution(&key(2), c, id, &result(10), 2));
    let ignored: Vec<IgnoreReason> = out
        .iter()
        .filter_map(|o| match o {
            Output::Ignored { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(ignored, vec![IgnoreReason::NotTheExecutor; 3], "{out:?}");
    assert!(l.settlement(&id).is_none());
    let out = feed(&mut l, execution(&key(1), c, id, &result(90), 1));
    assert!(
        out.iter().any(|o| matches!(o, Output::Settled { .. })),
        "{out:?}"
    );
    let settled = l.settlement(&id).expect("settled");
    assert_eq!(settled.agreeing, vec![key(1).public()]);
    assert_eq!(settled.canonical, metrics(90));
}

/// What the simulated executor reports for a job: deterministic, so the final evaluation's
/// two executors agree; a client's round names an update and a start model.
fn outcome_for(job: &JobSpec) -> JobResult {
    let h = |tag: &[u8]| BlobId::of_bytes(&[job.id().as_bytes().as_slice(), tag].concat());
    let artifacts = match &job.payload {
        JobPayload::Federated(FedJob {
            client: Some(_),
            base,
            updates,
            ..
        }) => {
            let start = BlobId::of_bytes(
                &[base.as_bytes().as_slice(), &updates.len().to_le_bytes()].concat(),
            );
            vec![h(b"update"), start]
        }
        _ => vec![h(b"final model")],
    };
    JobResult {
        outcome: Outcome::Success(Metrics {
            correct: 90,
            total: 100,
            params: 10,
            flops: 10,
            extra: BTreeMap::new(),
            artifacts,
        }),
        wall_time_ms: 5,
    }
}

/// A job and the peer that ran it.
type Ran = (PeerKey, JobSpec);

/// Runs a federated campaign on four peers; peer `silent` (if any) never finishes a job.
/// Returns what each peer ran and the closures' roots (the same at every peer).
fn run_swarm(silent: Option<usize>) -> (Vec<Ran>, BTreeMap<u32, [u8; 32]>) {
    let keys: Vec<Keypair> = (1..=4).map(key).collect();
    let mut roster: Vec<PeerKey> = keys.iter().map(Keypair::public).collect();
    roster.sort();
    let spec = federated_spec(roster);
    let mut now = Timestamp(spec.created_at.0 + 1);
    let mut peers: Vec<Peer> = keys
        .iter()
        .map(|k| {
            let config = PeerConfig {
                capacity: 2,
                ..PeerConfig::default()
            };
            Peer::new(spec.clone(), k.clone(), config, now).unwrap()
        })
        .collect();
    let mut ran: Vec<Ran> = Vec::new();
    let mut roots: Vec<BTreeMap<u32, [u8; 32]>> = vec![BTreeMap::new(); peers.len()];
    let mut finished = BTreeSet::new();
    let mut inbox: VecDeque<(usize, PeerInput)> = VecDeque::new();
    for step in 0..20_000 {
        if finished.len() == peers.len() {
            break;
        }
        if inbox.is_empty() {
            now = Timestamp(now.0 + 50);
            inbox.extend((0..peers.len()).map(|i| (i, PeerInput::Tick)));
        }
        let Some((i, input)) = inbox.pop_front() else {
            continue;
        };
        for o in peers[i].handle(input, now) {
            match o {
                PeerOutput::Broadcast(m) => {
                    for j in (0..peers.len()).filter(|j| *j != i) {
                        inbox.push_back((j, PeerInput::Message(m.clone())));
                    }
                }
                PeerOutput::Execute(job) => {
                    ran.push((keys[i].public(), job.clone()));
                    if silent == Some(i) {
                        continue;
                    }
                    inbox.push_back((
                        i,
                        PeerInput::JobDone {
                            job: job.id(),
                            result: outcome_for(&job),
                        },
                    ));
                }
                PeerOutput::Closed {
                    generation, root, ..
                } => {
                    roots[i].insert(generation, root);
                }
                PeerOutput::Finished => {
                    finished.insert(i);
                }
                PeerOutput::Rejected { .. } => {}
            }
        }
        assert!(step < 19_999, "the campaign did not finish");
    }
    assert_eq!(finished.len(), 4, "every peer finished");
    assert!(roots.iter().all(|r| *r == roots[0]), "the same closures");
    (ran, roots.swap_remove(0))
}

/// Four peers run a federated campaign to its end: each round's jobs are pinned to distinct
/// clients sampled among the members, run by those clients only and settled by their one
/// result; the final evaluation is run by two; every peer holds the same closures.
#[test]
fn a_swarm_runs_a_federated_campaign_with_each_client_job_run_by_its_client_only() {
    let (ran, roots) = run_swarm(None);
    // Three rounds, the evaluation, and the epilogue that judges the evaluation's audit (every
    // settled job is drawn at this audit rate, but pinned jobs never are).
    assert_eq!(roots.len(), 5, "{:?}", roots.keys());
    // Client jobs: run by their client only; two distinct clients a round.
    let mut by_round: BTreeMap<u32, BTreeSet<PeerKey>> = BTreeMap::new();
    let mut finals = 0;
    for (executor, job) in &ran {
        let JobPayload::Federated(f) = &job.payload else {
            panic!("a federated job")
        };
        match f.client {
            Some(c) => {
                assert_eq!(*executor, c, "only the client runs its round");
                by_round.entry(f.round).or_default().insert(c);
            }
            None => finals += 1,
        }
    }
    assert_eq!(by_round.len(), 3);
    assert!(by_round.values().all(|c| c.len() == 2), "{by_round:?}");
    assert!(
        finals >= 3,
        "two executors and the audit's jurors: {finals}"
    );
    // Every client job settled on one result: no client job was run twice.
    let client_runs = ran
        .iter()
        .filter(|(_, j)| j.payload.pinned().is_some())
        .count();
    assert_eq!(client_runs, 6);
}

/// A client that never delivers voids its own job only: the round goes on with the others,
/// the void pinned job is not repaired (asking the same client again would only wait again),
/// and the campaign finishes.
#[test]
fn a_silent_client_voids_its_job_and_no_repair_waits_for_it() {
    let silent = 3;
    let (ran, roots) = run_swarm(Some(silent));
    let silent_key = key(silent as u64 + 1).public();
    let mut its_jobs = 0;
    for (_, job) in &ran {
        let JobPayload::Federated(f) = &job.payload else {
            panic!("a federated job")
        };
        if f.client.is_some() {
            assert_eq!(
                job.generation, f.round,
                "round {} was not repaired",
                f.round
            );
        }
        its_jobs += usize::from(f.client == Some(silent_key));
    }
    assert!(
        its_jobs > 0,
        "the silent client was sampled (else the test shows nothing)"
    );
    assert!(roots.len() >= 4, "{:?}", roots.keys());
}
