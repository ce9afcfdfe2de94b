//! `train` jobs (ADR 0009): build the round's start model from the job's base and the previous
//! round's agreed updates (the outer step), evaluate it on the validation split, train it on
//! the job's segment, and report the update and the start model as blobs (artifacts: update,
//! then start model). The final evaluation reports the final model's test accuracy and names
//! it (its one artifact).
//!
//! Extras: `train_loss_micro`, the segment's last training loss in millionths.

use std::collections::BTreeMap;

use hivemesh_evolve::arch::Architecture;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::{Aggregate, OuterStep, TrainJob, TrainParams, UpdateEncoding};
use hivemesh_trainer::TrainError;
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::rounds::{
    Combine, Encoding, Outer, SegmentJob, TrainState, Update, initial_weights, outer_step,
    segment_samples,
};
use hivemesh_trainer::train::{Budget, check_fit, sub_seed};

use super::{ExecError, JobRun, Ran, failure, fetch, train_failure};

/// The blobs every job of the campaign needs: the model.
pub fn needed_blobs(p: &TrainParams) -> Vec<(BlobId, &'static str)> {
    vec![(p.model, "model")]
}

/// The blobs this job needs besides: its base model (after round 0) and the updates to apply.
pub fn job_blobs(p: &TrainParams, job: &TrainJob) -> Vec<(BlobId, &'static str)> {
    let base = (job.base != p.model).then_some((job.base, "round's base model"));
    base.into_iter()
        .chain(job.updates.iter().map(|u| (*u, "agreed update")))
        .collect()
}

/// Decodes `bytes` as exactly one `T` (no bytes left over).
fn exactly<T: for<'a> serde::Deserialize<'a>>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

/// The architecture of a campaign's model blob (a weights file's, or the architecture itself).
pub fn model_arch(bytes: &[u8]) -> Option<Architecture> {
    match exactly::<WeightsFile>(bytes).filter(|w| w.version == 1) {
        Some(w) => Some(w.arch),
        None => exactly::<Architecture>(bytes),
    }
}

/// The campaign's model as round 0's state: a weights file as it is, or an architecture with
/// weights drawn from the campaign's seed.
fn initial_state(
    p: &TrainParams,
    campaign_seed: u64,
    job: &JobRun<'_>,
) -> Result<Result<TrainState, String>, ExecError> {
    let bytes = fetch(job.blobs, &p.model, "model")?;
    if let Some(w) = exactly::<WeightsFile>(&bytes).filter(|w| w.version == 1) {
        return Ok(Ok(TrainState::fresh(w)));
    }
    let Some(arch) = exactly::<Architecture>(&bytes) else {
        return Ok(Err(
            "the campaign's model is neither an architecture nor a weights file".into(),
        ));
    };
    Ok(
        initial_weights(&arch, sub_seed(campaign_seed, "train-init"))
            .map(TrainState::fresh)
            .map_err(|e| e.to_string()),
    )
}

/// The job's start state: its base moved by the updates that fit it (an update of another
/// layout or with a value that is not finite is left out, the same way on every node). The
/// inner error fails the job (every executor reads the same verified bytes).
fn start_state(
    p: &TrainParams,
    t: &TrainJob,
    campaign_seed: u64,
    job: &JobRun<'_>,
) -> Result<Result<TrainState, String>, ExecError> {
    let base = if t.base == p.model {
        match initial_state(p, campaign_seed, job)? {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        }
    } else {
        let bytes = fetch(job.blobs, &t.base, "round's base model")?;
        match TrainState::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("base model {}: {e}", t.base))),
        }
    };
    let mut updates = Vec::with_capacity(t.updates.len());
    for id in &t.updates {
        let bytes = fetch(job.blobs, id, "agreed update")?;
        match Update::decode(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                u.check(&base.weights)?;
                Ok(u)
            }) {
            Ok(u) => updates.push(u),
            Err(e) => tracing::warn!(update = %id, "agreed update left out: {e}"),
        }
    }
    let outer = match p.outer {
        OuterStep::Average => Outer::Average,
        OuterStep::Nesterov {
            learning_rate,
            momentum,
        } => Outer::Nesterov {
            lr: learning_rate,
            momentum,
        },
    };
    let how = match p.aggregate {
        Aggregate::Mean => Combine::Mean,
        Aggregate::TrimmedMean { trim } => Combine::Trimmed(trim as usize),
    };
    Ok(Ok(outer_step(&base, &updates, outer, how)))
}

/// The trainer's encoding for the campaign's.
fn encoding(p: &TrainParams) -> Encoding {
    match p.encoding {
        UpdateEncoding::F32 => Encoding::F32,
        UpdateEncoding::F16 => Encoding::F16,
        UpdateEncoding::TopK { per_mille } => Encoding::TopK { per_mille },
    }
}

/// Runs a `train` job.
pub(super) fn run(
    p: &TrainParams,
    t: &TrainJob,
    campaign_seed: u64,
    job: &mut JobRun<'_>,
) -> Result<Ran, ExecError> {
    // Every round trains the campaign model's architecture: a model over this node's limits
    // is refused before any state or update is decoded.
    let arch = model_arch(&fetch(job.blobs, &p.model, "model")?);
    if let Some(arch) = &arch
        && let Err(e) = check_fit(arch, job.data, job.budget.batch_size as usize, job.limits)
    {
        return match e {
            TrainError::MemoryBudget { .. } => Err(ExecError::OverLimit(e)),
            e => Ok(Ran::nothing(failure(
                FailureKind::InvalidJob,
                e.to_string(),
            ))),
        };
    }
    let start = match start_state(p, t, campaign_seed, job)? {
        Ok(s) => s,
        Err(e) => return Ok(Ran::nothing(failure(FailureKind::InvalidJob, e))),
    };
    let start_bytes = start.to_bytes();
    let start_id = BlobId::of_bytes(&start_bytes);
    let arch = &start.weights.arch;
    let (params, flops) = (arch.params().unwrap_or(0), arch.flops().unwrap_or(0));
    let metrics = |correct, total, extra, artifacts| Metrics {
        correct,
        total,
        params,
        flops,
        extra,
        artifacts,
    };
    if t.is_final(p) {
        return match job
            .runner
            .evaluate(&start.weights, job.data, &job.splits.test)
        {
            Ok((correct, total)) => Ok(Ran {
                outcome: Outcome::Success(metrics(correct, total, BTreeMap::new(), vec![start_id])),
                blobs: vec![(start_id, start_bytes)],
            }),
            Err(e) => Ok(Ran::nothing(train_failure(e)?)),
        };
    }
    let budget = Budget {
        epochs: u32::MAX,
        max_steps: Some(u64::from(p.inner_steps)),
        ..job.budget.clone()
    };
    let samples = segment_samples(&job.splits.train, t.shuffle, t.segment, p.segment_size);
    let seg = SegmentJob {
        start: &start.weights,
        data: job.data,
        samples: &samples,
        evaluate_on: &job.splits.validation,
        budget: &budget,
        seed: job.seed,
    };
    let r = match job.runner.segment(&seg, job.limits, job.progress) {
        Ok(r) => r,
        Err(e) => return Ok(Ran::nothing(train_failure(e)?)),
    };
    // What the swarm will apply is the update as it travels: it must fit and be finite.
    let update_bytes = Update::between(&start.weights, &r.trained).encode(encoding(p));
    let sent = Update::decode(&update_bytes)
        .map_err(|e| e.to_string())
        .and_then(|u| u.check(&start.weights));
    if let Err(e) = sent {
        return Ok(Ran::nothing(failure(FailureKind::NonFinite, e)));
    }
    let update_id = BlobId::of_bytes(&update_bytes);
    let loss = (f64::from(r.fit.final_loss) * 1e6).round() as i64;
    let extra = BTreeMap::from([("train_loss_micro".to_string(), loss)]);
    Ok(Ran {
        outcome: Outcome::Success(metrics(
            r.correct,
            r.total,
            extra,
            vec![update_id, start_id],
        )),
        blobs: vec![(update_id, update_bytes), (start_id, start_bytes)],
    })
}
