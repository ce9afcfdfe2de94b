//! Throughput of the protocol core on one core: signed results verified, ingested and settled.
//!
//! A *result* is what an executor must publish for its work to count: a signed commitment and
//! a signed reveal (two signatures). The workload is `JOBS` jobs × 3 executors, all honest, so
//! every job settles (2 of 3) and then records its third agreeing result.
//!
//! Run: `cargo bench -p hivemesh-protocol --bench ingest`

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hivemesh_protocol::*;

const JOBS: u32 = 400;
const R: u64 = 3;

fn key(i: u64) -> Keypair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[31] = 1;
    Keypair::from_secret_bytes(s)
}

fn spec() -> CampaignSpec {
    CampaignSpec {
        name: "bench".into(),
        created_at: Timestamp(0),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![32],
            },
            strategy: Strategy::Nsga2,
            population: 100,
            generations: 10,
        }),
        dataset: DatasetRef {
            id: BlobId::of_bytes(b"d"),
            name: "digits-8x8".into(),
            sources: vec![],
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
        seed: 1,
        redundancy: 3,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: "bench".into(),
        roster: vec![hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public()],
        schedule: hivemesh_protocol::spec::Schedule::default(),
    }
}

struct Workload {
    spec: CampaignSpec,
    jobs: Vec<JobSpec>,
    wire: Vec<Vec<u8>>,
}

fn workload() -> Workload {
    let spec = spec();
    let c = spec.id();
    let keys: Vec<Keypair> = (0..16).map(key).collect();
    let jobs: Vec<JobSpec> = (0..JOBS)
        .map(|i| JobSpec {
            campaign: c,
            generation: 0,
            index: i,
            payload: JobPayload::Nas {
                genome: vec![0; 16],
            },
            seed: u64::from(i),
            code_version: "bench".into(),
            backend: BackendClass::CpuNdarray,
            compute: 100,
        })
        .collect();
    let mut wire = Vec::new();
    for (n, job) in jobs.iter().enumerate() {
        let id = job.id();
        let result = JobResult {
            outcome: Outcome::Success(Metrics {
                correct: 300 + n as u64 % 50,
                total: 360,
                params: 10_000,
                flops: 20_000,
                extra: BTreeMap::from([("val_loss_micro".to_string(), 123_456)]),
                artifacts: vec![BlobId::of_bytes(&(n as u64).to_le_bytes())],
            }),
            wall_time_ms: 5_000,
        };
        for e in 0..R {
            let k = &keys[(n as u64 * R + e) as usize % keys.len()];
            let salt = *blake3::hash(&[n as u8, e as u8]).as_bytes();
            let commitment = Commitment {
                campaign: c,
                job: id,
                digest: commitment_digest(&id, &k.public(), &result, &salt),
                issued_at: Timestamp(10),
            };
            let reveal = Reveal {
                campaign: c,
                job: id,
                result: result.clone(),
                salt,
                witnessed: Vec::new(),
                issued_at: Timestamp(20),
            };
            wire.push(
                Signed::sign_and_encode(commitment, k)
                    .unwrap()
                    .bytes()
                    .to_vec(),
            );
            wire.push(Signed::sign_and_encode(reveal, k).unwrap().bytes().to_vec());
        }
    }
    Workload { spec, jobs, wire }
}

fn fresh_ledger(w: &Workload) -> Ledger {
    let mut l = Ledger::new(w.spec.clone(), LedgerConfig::default());
    for j in &w.jobs {
        l.handle(Input::RegisterJob(j.clone()), Timestamp(0))
            .for_each(drop);
    }
    l
}

fn check(l: &Ledger) {
    assert_eq!(l.settlements().count(), JOBS as usize);
}

fn benches(c: &mut Criterion) {
    let w = workload();
    let ctx = Context::sync(w.spec.id());
    let results = u64::from(JOBS) * R;
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(results));
    g.sample_size(10);

    g.bench_function("results/verify_single+ingest+settle", |b| {
        b.iter_batched(
            || (fresh_ledger(&w), Verifier::default()),
            |(mut l, mut verifier)| {
                for bytes in &w.wire {
                    let v = verifier.verify(Envelope::parse(bytes).unwrap()).unwrap();
                    let m = v.decode_any(&ctx).unwrap();
                    l.handle(Input::Message(m), Timestamp(30)).for_each(drop);
                }
                check(&l);
                black_box(l)
            },
            BatchSize::LargeInput,
        )
    });

    for batch in [64, 256] {
        g.bench_function(format!("results/verify_batch{batch}+ingest+settle"), |b| {
            b.iter_batched(
                || (fresh_ledger(&w), Verifier::default()),
                |(mut l, mut verifier)| {
                    for chunk in w.wire.chunks(batch) {
                        let envs = chunk.iter().map(|b| Envelope::parse(b).unwrap()).collect();
                        for v in verifier.verify_batch(envs) {
                            let m = v.unwrap().decode_any(&ctx).unwrap();
                            l.handle(Input::Message(m), Timestamp(30)).for_each(drop);
                        }
                    }
                    check(&l);
                    black_box(l)
                },
                BatchSize::LargeInput,
            )
        });
    }

    // The ledger alone, on pre-verified messages.
    let decoded: Vec<AnySigned> = w
        .wire
        .iter()
        .map(|b| AnySigned::verify_and_decode(b, &ctx).unwrap())
        .collect();
    g.bench_function("results/ingest+settle (pre-verified)", |b| {
        b.iter_batched(
            || (fresh_ledger(&w), decoded.clone()),
            |(mut l, msgs)| {
                for m in msgs {
                    l.handle(Input::Message(m), Timestamp(30)).for_each(drop);
                }
                check(&l);
                black_box(l)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // Raw signature checks, per message, for reference.
    let mut g = c.benchmark_group("signatures");
    g.throughput(Throughput::Elements(w.wire.len() as u64));
    g.sample_size(10);
    g.bench_function("single", |b| {
        let mut verifier = Verifier::default();
        b.iter(|| {
            for bytes in &w.wire {
                black_box(verifier.verify(Envelope::parse(bytes).unwrap()).unwrap());
            }
        })
    });
    for batch in [64, 256] {
        g.bench_function(format!("batch{batch}"), |b| {
            let mut verifier = Verifier::default();
            b.iter(|| {
                for chunk in w.wire.chunks(batch) {
                    let envs = chunk.iter().map(|b| Envelope::parse(b).unwrap()).collect();
                    black_box(verifier.verify_batch(envs));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(protocol, benches);
criterion_main!(protocol);
