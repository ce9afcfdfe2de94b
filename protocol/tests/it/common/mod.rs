//! Builders shared by the protocol's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use hivemesh_protocol::*;

pub(crate) fn key(i: u64) -> Keypair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[31] = 0xa5;
    Keypair::from_secret_bytes(s)
}

pub(crate) fn spec() -> CampaignSpec {
    CampaignSpec {
        name: "test campaign".into(),
        created_at: Timestamp(1_000_000),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![8, 16],
            },
            strategy: Strategy::Nsga2,
            population: 8,
            generations: 3,
        }),
        dataset: DatasetRef {
            id: BlobId::of_bytes(b"data"),
            name: "digits-8x8".into(),
            sources: vec!["builtin:digits".into()],
            bytes: 1 << 20,
        },
        budget: TrainingBudget {
            epochs: 1,
            max_steps: Some(100),
            batch_size: 16,
            optimizer: Optimizer::Sgd { momentum: 0.9 },
            learning_rate: 0.05,
            schedule: LrSchedule::Cosine,
        },
        seed: 7,
        redundancy: 3,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 100_000,
        backend: BackendClass::CpuNdarray,
        code_version: "test".into(),
        roster: vec![hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public()],
        schedule: hivemesh_protocol::spec::Schedule::default(),
    }
}

pub(crate) fn job(campaign: CampaignId, index: u32) -> JobSpec {
    JobSpec {
        campaign,
        generation: index / 4,
        index,
        payload: JobPayload::Nas {
            genome: vec![index as u8; 4],
        },
        seed: u64::from(index) * 31,
        code_version: "test".into(),
        backend: BackendClass::CpuNdarray,
        compute: 10 + u64::from(index),
    }
}

pub(crate) fn metrics(correct: u64) -> Outcome {
    Outcome::Success(Metrics {
        correct,
        total: 100,
        params: 1234,
        flops: 5678,
        extra: BTreeMap::from([("val_loss_micro".to_string(), 250_000)]),
        artifacts: vec![BlobId::of_bytes(b"weights")],
    })
}

pub(crate) fn result(correct: u64) -> JobResult {
    JobResult {
        outcome: metrics(correct),
        wall_time_ms: 1234,
    }
}

pub(crate) fn salt(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

/// A heartbeat of `k` for `campaign` at `t` ms, offering `capacity` slots.
pub(crate) fn heartbeat(k: &Keypair, campaign: CampaignId, t: u64, capacity: u16) -> AnySigned {
    AnySigned::Heartbeat(
        Signed::sign_and_encode(
            Heartbeat {
                campaign,
                generation: 0,
                running: 0,
                capacity,
                job_ms: 0,
                issued_at: Timestamp(t),
            },
            k,
        )
        .unwrap(),
    )
}

pub(crate) fn claim(k: &Keypair, campaign: CampaignId, job: JobId, t: u64) -> AnySigned {
    AnySigned::Claim(
        Signed::sign_and_encode(
            Claim {
                campaign,
                job,
                slots: 1,
                job_ms: 0,
                issued_at: Timestamp(t),
            },
            k,
        )
        .unwrap(),
    )
}

pub(crate) fn commitment(
    k: &Keypair,
    campaign: CampaignId,
    job: JobId,
    r: &JobResult,
    salt: [u8; 32],
    t: u64,
) -> AnySigned {
    AnySigned::Commitment(
        Signed::sign_and_encode(
            Commitment {
                campaign,
                job,
                digest: commitment_digest(&job, &k.public(), r, &salt),
                issued_at: Timestamp(t),
            },
            k,
        )
        .unwrap(),
    )
}

pub(crate) fn reveal(
    k: &Keypair,
    campaign: CampaignId,
    job: JobId,
    r: &JobResult,
    salt: [u8; 32],
    t: u64,
) -> AnySigned {
    AnySigned::Reveal(
        Signed::sign_and_encode(
            Reveal {
                campaign,
                job,
                result: r.clone(),
                salt,
                witnessed: Vec::new(),
                issued_at: Timestamp(t),
            },
            k,
        )
        .unwrap(),
    )
}

pub(crate) fn audit(
    k: &Keypair,
    campaign: CampaignId,
    job: JobId,
    r: &JobResult,
    t: u64,
) -> AnySigned {
    AnySigned::AuditReport(
        Signed::sign_and_encode(
            AuditReport {
                campaign,
                job,
                result: r.clone(),
                issued_at: Timestamp(t),
            },
            k,
        )
        .unwrap(),
    )
}

/// Claim, commitment and reveal of `r` by `k`.
pub(crate) fn execution(
    k: &Keypair,
    campaign: CampaignId,
    job: JobId,
    r: &JobResult,
    i: u64,
) -> Vec<AnySigned> {
    let s = salt(i);
    vec![
        claim(k, campaign, job, 1_000_100),
        commitment(k, campaign, job, r, s, 1_000_200),
        reveal(k, campaign, job, r, s, 1_000_300),
    ]
}

pub(crate) fn feed(ledger: &mut Ledger, msgs: impl IntoIterator<Item = AnySigned>) -> Vec<Output> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend(ledger.handle(Input::Message(m), Timestamp(2_000_000)));
    }
    out
}
