//! A protocol-core demonstration: stub executors, real signatures and ledgers.
//!
//! `peers` nodes share one campaign. Every job of generation 0 is assigned to the `r`
//! best-ranked peers by a hash of (job, peer); each executor signs a claim, a commitment and a
//! reveal. Honest executors report the job's seeded "true" metrics; Byzantine ones report a
//! wrong correct count. Every node then verifies and ingests all messages in its own shuffled
//! order (half of them with batch verification), and the demo checks that all ledgers agree and
//! that no wrong result settled. No training happens: there are no real jobs yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use hivemesh_protocol::{
    AnySigned, BackendClass, BlobId, CampaignSpec, Claim, Commitment, Context, DatasetRef,
    Envelope, Input, JobPayload, JobResult, JobSpec, Keypair, Ledger, LedgerConfig, LrSchedule,
    Metrics, NasParams, NasSpace, Optimizer, Outcome, PeerKey, PeerScore, Reveal, Search, Signed,
    Strategy, Timestamp, Tolerance, TrainingBudget, commitment_digest, verify_batch,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Simulated nodes.
    pub peers: usize,
    /// How many of them report wrong results.
    pub byzantine: usize,
    /// Jobs in the generation.
    pub jobs: usize,
    /// Executors per job.
    pub redundancy: u8,
    /// Agreeing executors needed.
    pub quorum: u8,
    /// Seed for keys, metrics and delivery orders.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            peers: 8,
            byzantine: 1,
            jobs: 24,
            redundancy: 3,
            quorum: 2,
            seed: 1,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The campaign id.
    pub campaign: String,
    /// Signed messages produced.
    pub messages: usize,
    /// Jobs that settled (on node 0).
    pub settled: usize,
    /// Settled jobs whose canonical result is not the true one.
    pub wrong_settled: usize,
    /// Distinct settlement roots across nodes (1 means all agree).
    pub distinct_roots: usize,
    /// Scores on node 0, with whether each peer is Byzantine.
    pub scores: Vec<(PeerKey, bool, PeerScore)>,
    /// Signatures verified per second across all nodes.
    pub verified_per_sec: f64,
}

fn key(seed: u64, i: usize) -> Keypair {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Keypair::from_secret_bytes(secret)
}

fn spec(cfg: &DemoConfig) -> CampaignSpec {
    CampaignSpec {
        name: "demo: stub NAS on digits-8x8".into(),
        created_at: Timestamp(0),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![16, 32, 64],
            },
            strategy: Strategy::Nsga2,
            population: cfg.jobs.max(2) as u32,
            generations: 1,
        }),
        dataset: DatasetRef {
            id: BlobId::of_bytes(b"demo: no dataset is read"),
            name: "digits-8x8".into(),
            sources: vec!["builtin:digits".into()],
            bytes: 1 << 20,
        },
        budget: TrainingBudget {
            epochs: 1,
            max_steps: None,
            batch_size: 32,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            schedule: LrSchedule::Constant,
        },
        seed: cfg.seed,
        redundancy: cfg.redundancy,
        quorum: cfg.quorum,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: "stub".into(),
        roster: vec![hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public()],
        schedule: hivemesh_protocol::spec::Schedule::default(),
    }
}

fn true_outcome(job: &JobSpec) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    Outcome::Success(Metrics {
        correct: 300 + rng.next_u64() % 60,
        total: 360,
        params: 1_000 + rng.next_u64() % 5_000,
        flops: 2_000 + rng.next_u64() % 10_000,
        extra: BTreeMap::new(),
        artifacts: vec![],
    })
}

/// Why the demonstration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The flags make an invalid campaign.
    #[error("the demo campaign is invalid: {0}")]
    Spec(#[from] hivemesh_protocol::SpecError),
    /// Fewer peers than executors per job.
    #[error(
        "{peers} peers cannot give each job {redundancy} executors: pass more --peers or a lower --redundancy"
    )]
    TooFewPeers {
        /// Peers asked for.
        peers: usize,
        /// Executors per job asked for.
        redundancy: u8,
    },
    /// A message could not be signed.
    #[error("cannot sign a message: {0}")]
    Sign(#[from] hivemesh_protocol::EncodeError),
    /// A signed message did not verify or decode (a bug: the demo signs them itself).
    #[error("a signed message does not verify: {0}")]
    Decode(#[from] hivemesh_protocol::DecodeError),
}

/// Runs the demonstration.
pub fn run(cfg: &DemoConfig) -> Result<DemoReport, DemoError> {
    let spec = spec(cfg);
    spec.validate()?;
    if cfg.peers < usize::from(cfg.redundancy) {
        return Err(DemoError::TooFewPeers {
            peers: cfg.peers,
            redundancy: cfg.redundancy,
        });
    }
    let campaign = spec.id();
    let keys: Vec<Keypair> = (0..cfg.peers).map(|i| key(cfg.seed, i)).collect();
    let byzantine: BTreeSet<PeerKey> = keys
        .iter()
        .take(cfg.byzantine)
        .map(|k| k.public())
        .collect();
    let jobs: Vec<JobSpec> = (0..cfg.jobs)
        .map(|i| JobSpec {
            campaign,
            generation: 0,
            index: i as u32,
            payload: JobPayload::Nas {
                genome: vec![i as u8],
            },
            seed: cfg.seed.wrapping_add(i as u64),
            code_version: "stub".into(),
            backend: BackendClass::CpuNdarray,
            compute: 100,
        })
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let wire = sign_all(cfg, &keys, &byzantine, &jobs, &mut rng)?;
    let start = Instant::now();
    let ledgers = ingest_all(cfg, &spec, &jobs, &wire, &mut rng)?;
    let elapsed = start.elapsed().as_secs_f64();

    let roots: BTreeSet<[u8; 32]> = ledgers.iter().map(Ledger::settlement_root).collect();
    let node0 = &ledgers[0];
    let truth: BTreeMap<_, _> = jobs.iter().map(|j| (j.id(), true_outcome(j))).collect();
    let settled = node0.settlements().count();
    let wrong_settled = node0
        .settlements()
        .filter(|(id, s)| truth.get(id) != Some(&s.canonical))
        .count();
    let scores = node0
        .scores()
        .into_iter()
        .map(|(p, s)| (p, byzantine.contains(&p), s))
        .collect();
    Ok(DemoReport {
        campaign: campaign.to_string(),
        messages: wire.len(),
        settled,
        wrong_settled,
        distinct_roots: roots.len(),
        scores,
        verified_per_sec: (wire.len() * cfg.peers) as f64 / elapsed.max(1e-9),
    })
}

/// Every executor's signed claim, commitment and reveal for every job, as wire bytes.
fn sign_all(
    cfg: &DemoConfig,
    keys: &[Keypair],
    byzantine: &BTreeSet<PeerKey>,
    jobs: &[JobSpec],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u8>>, DemoError> {
    let mut wire: Vec<Vec<u8>> = Vec::new();
    for job in jobs {
        let id = job.id();
        let mut ranked: Vec<&Keypair> = keys.iter().collect();
        ranked.sort_by_key(|k| {
            let mut h = blake3::Hasher::new();
            h.update(id.as_bytes());
            h.update(k.public().as_bytes());
            *h.finalize().as_bytes()
        });
        for k in ranked.into_iter().take(usize::from(cfg.redundancy)) {
            let t = Timestamp(1_000);
            let mut outcome = true_outcome(job);
            if byzantine.contains(&k.public())
                && let Outcome::Success(m) = &mut outcome
            {
                m.correct = m.total;
            }
            let result = JobResult {
                outcome,
                wall_time_ms: 10,
            };
            let mut salt = [0u8; 32];
            rng.fill_bytes(&mut salt);
            let claim = Claim {
                campaign: job.campaign,
                job: id,
                slots: 1,
                job_ms: 0,
                issued_at: t,
            };
            let commitment = Commitment {
                campaign: job.campaign,
                job: id,
                digest: commitment_digest(&id, &k.public(), &result, &salt),
                issued_at: t,
            };
            let reveal = Reveal {
                campaign: job.campaign,
                job: id,
                result,
                salt,
                witnessed: Vec::new(),
                issued_at: t,
            };
            wire.push(Signed::sign_and_encode(claim, k)?.bytes().to_vec());
            wire.push(Signed::sign_and_encode(commitment, k)?.bytes().to_vec());
            wire.push(Signed::sign_and_encode(reveal, k)?.bytes().to_vec());
        }
    }

    Ok(wire)
}

/// Every node's ledger after verifying and ingesting everything, each in its own order.
fn ingest_all(
    cfg: &DemoConfig,
    spec: &CampaignSpec,
    jobs: &[JobSpec],
    wire: &[Vec<u8>],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Ledger>, DemoError> {
    let ctx = Context::sync(spec.id());
    let mut ledgers = Vec::new();
    for node in 0..cfg.peers {
        let mut order: Vec<&Vec<u8>> = wire.iter().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let envelopes = order
            .iter()
            .map(|b| Envelope::parse(b))
            .collect::<Result<Vec<_>, _>>()?;
        let verified: Vec<_> = if node % 2 == 0 {
            verify_batch(envelopes)
        } else {
            envelopes.into_iter().map(Envelope::verify).collect()
        };
        let mut ledger = Ledger::new(spec.clone(), LedgerConfig::default());
        for job in jobs {
            ledger
                .handle(Input::RegisterJob(job.clone()), Timestamp(0))
                .for_each(drop);
        }
        for v in verified {
            let msg: AnySigned = v.and_then(|v| v.decode_any(&ctx))?;
            ledger
                .handle(Input::Message(msg), Timestamp(2_000))
                .for_each(drop);
        }
        ledgers.push(ledger);
    }
    Ok(ledgers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_majority_settles_everything_correctly_and_all_nodes_agree() {
        let r = run(&DemoConfig::default()).unwrap();
        assert_eq!(r.distinct_roots, 1);
        assert_eq!(r.wrong_settled, 0);
        assert_eq!(
            r.settled, 24,
            "one Byzantine of 8 cannot block a 2-of-3 quorum"
        );
        for (_, byz, s) in &r.scores {
            if *byz {
                assert!(s.points <= 0, "a Byzantine executor earns nothing: {s:?}");
            } else {
                assert_eq!(s.dissented, 0);
            }
        }
    }

    #[test]
    fn byzantine_majority_on_a_job_blocks_or_corrupts_it() {
        // With 3 liars among 4 peers, some jobs get two liars: those settle on the wrong value.
        // This is exactly what audits (consensus issue) are for; the demo must not hide it.
        let cfg = DemoConfig {
            peers: 4,
            byzantine: 3,
            ..DemoConfig::default()
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.distinct_roots, 1);
        assert!(r.wrong_settled > 0);
    }
}
