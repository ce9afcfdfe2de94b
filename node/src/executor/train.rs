//! `train` jobs (ADR 0009): build the round's start model from the job's base and the previous
//! round's agreed updates (the outer step), evaluate it on the validation split, train it on
//! the job's segment, and report the update and the start model as blobs (artifacts: update,
//! then start model). The final evaluation reports the final model's test accuracy and names
//! it (its one artifact).
//!
//! Extras (millionths): `train_loss_micro`, the segment's last training loss;
//! `update_log_norm_micro` and `update_sketch0_micro` … `update_sketch7_micro`, the update's
//! sketch ([`sketch`]), which tolerance mode compares instead of the update's bytes.

use std::collections::BTreeMap;

use hivemesh_evolve::arch::Architecture;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::{Aggregate, OuterStep, TrainJob, TrainParams, UpdateEncoding};
use hivemesh_trainer::TrainError;
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::rounds::{
    Aggregator, Combine, Encoding, Outer, SegmentJob, TrainState, Update, initial_weights,
    outer_step_bytes, segment_samples, sketch, state_values, with_feedback,
};
use hivemesh_trainer::train::{Budget, Limits, check_fit, sub_seed};

use super::{BlobSource, ExecError, Executed, JobRun, Ran, failure, fetch, train_failure};

/// The blobs every job of the campaign needs: the model.
pub fn needed_blobs(p: &TrainParams) -> Vec<(BlobId, &'static str)> {
    vec![(p.model, "model")]
}

/// The blobs this job needs besides: its base model (after round 0) and the updates to apply.
pub fn job_blobs(p: &TrainParams, job: &TrainJob) -> Vec<(BlobId, &'static str)> {
    let base = (job.base != p.model).then_some((job.base, "round's base model"));
    base.into_iter()
        .chain(job.updates.iter().map(|u| (*u, "agreed update")))
        .chain(job.residual.map(|r| (r, "segment's residual")))
        .collect()
}

/// The values (weights and statistics) of a campaign's `model`, when its blob is held here.
pub fn held_model_values(model: BlobId, blobs: &dyn BlobSource) -> Option<u64> {
    state_values(&model_arch(&blobs.blob(&model)?)?).ok()
}

/// The most bytes one of a campaign's job blobs may hold for a model of `values` values: a
/// state (weights and outer momentum, 4 bytes a value each), with a MiB for names and shapes.
pub fn blob_limit(values: u64) -> u64 {
    values.saturating_mul(8).saturating_add(1 << 20)
}

/// Decodes `bytes` as exactly one `T` (no bytes left over).
fn exactly<T: for<'a> serde::Deserialize<'a>>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

/// A campaign's model blob, decoded: a weights file, or an architecture.
pub(super) enum ModelBlob {
    /// Architecture and initial weights.
    Weights(WeightsFile),
    /// An architecture; round 0 draws its weights from the campaign's seed.
    Arch(Architecture),
}

impl ModelBlob {
    /// The blob as one or the other, exactly (no bytes left over), or `None`.
    pub(super) fn decode(bytes: &[u8]) -> Option<ModelBlob> {
        match exactly::<WeightsFile>(bytes).filter(|w| w.version == 1) {
            Some(w) => Some(ModelBlob::Weights(w)),
            None => exactly::<Architecture>(bytes).map(ModelBlob::Arch),
        }
    }

    pub(super) fn arch(&self) -> &Architecture {
        match self {
            ModelBlob::Weights(w) => &w.arch,
            ModelBlob::Arch(a) => a,
        }
    }

    /// Round 0's state: the weights file as it is, or the architecture with weights drawn
    /// from the campaign's seed.
    fn initial_state(self, campaign_seed: u64) -> Result<TrainState, String> {
        match self {
            ModelBlob::Weights(w) => Ok(TrainState::fresh(w)),
            ModelBlob::Arch(arch) => initial_weights(&arch, sub_seed(campaign_seed, "train-init"))
                .map(TrainState::fresh)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The architecture of a campaign's model blob (a weights file's, or the architecture itself).
pub fn model_arch(bytes: &[u8]) -> Option<Architecture> {
    ModelBlob::decode(bytes).map(|m| match m {
        ModelBlob::Weights(w) => w.arch,
        ModelBlob::Arch(a) => a,
    })
}

/// Blob `id` (`what` it is) as an update that fits `weights`: `None` when it does not decode,
/// does not fit, or holds a value that is not finite (left out the same way on every node:
/// they all read the same verified bytes).
pub(super) fn fitting_update(
    job: &JobRun<'_>,
    id: &BlobId,
    what: &'static str,
    weights: &WeightsFile,
) -> Result<Option<Update>, ExecError> {
    let bytes = fetch(job.blobs, id, what)?;
    match Update::decode(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|u| u.check(weights).map(|()| u))
    {
        Ok(u) => Ok(Some(u)),
        Err(e) => {
            tracing::warn!(blob = %id, "{what} left out: {e}");
            Ok(None)
        }
    }
}

/// How a round's start model is built: the campaign's model (or a base state), moved by the
/// agreed updates through the campaign's aggregate and outer step.
pub(super) struct Recipe<'a> {
    /// The campaign's model blob.
    pub model: BlobId,
    /// The base: the campaign's model, or an agreed start state.
    pub base: BlobId,
    /// The agreed updates to apply, in order.
    pub updates: &'a [BlobId],
    /// How they are combined.
    pub combine: Combine,
    /// How the combined update moves the model.
    pub outer: OuterStep,
    /// An update whose L2 norm is above this is left out and flagged, if any.
    pub norm_limit: Option<f64>,
    /// Updates farther from the combined update than this many times the median distance are
    /// flagged (a robust aggregate only; `INFINITY`: none).
    pub outlier_factor: f64,
    /// Updates to combine besides `updates`, computed from the base's weights (a federated
    /// round's unmasked group means), if any.
    pub sums: Option<&'a SumsOf<'a>>,
}

/// What computes a recipe's extra updates from the base's weights, and the positions of the
/// clients they found at fault.
pub(super) type SumsOf<'a> =
    dyn Fn(&WeightsFile) -> Result<(Vec<Update>, Vec<usize>), ExecError> + 'a;

/// A round's start state, and the updates that were flagged building it: by position in the
/// recipe's `updates` (refused, over the norm limit, or outliers), or the positions its `sums`
/// named.
pub(super) struct Start {
    /// The start state.
    pub state: TrainState,
    /// Flagged positions, sorted.
    pub flagged: Vec<usize>,
}

/// The job's start state: its base moved by the updates that fit it (an update of another
/// layout, with a value that is not finite or over the norm limit is left out and flagged,
/// the same way on every node). The inner error fails the job (every executor reads the same
/// verified bytes).
pub(super) fn build_start(
    r: &Recipe<'_>,
    (model, campaign_seed): (Option<ModelBlob>, u64),
    job: &JobRun<'_>,
) -> Result<Result<Start, String>, ExecError> {
    let base = if r.base == r.model {
        let Some(model) = model else {
            return Ok(Err(
                "the campaign's model is neither an architecture nor a weights file".into(),
            ));
        };
        match model.initial_state(campaign_seed) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        }
    } else {
        let bytes = fetch(job.blobs, &r.base, "round's base model")?;
        match TrainState::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("base model {}: {e}", r.base))),
        }
    };
    let values = base
        .weights
        .tensors
        .iter()
        .map(|t| t.data.len() as u64 / 4)
        .sum();
    outer_memory_fits(r.combine, r.updates.len(), values, job.limits)?;
    let mut gathered = Aggregator::new(r.combine);
    let (mut flagged, mut pushed) = (Vec::new(), Vec::new());
    for (i, id) in r.updates.iter().enumerate() {
        match fitting_update(job, id, "agreed update", &base.weights)? {
            Some(u) if r.norm_limit.is_none_or(|max| u.norm() <= max) => {
                gathered.push(&u);
                pushed.push(i);
            }
            _ => flagged.push(i),
        }
    }
    if let Some(sums) = r.sums {
        let (means, at_fault) = sums(&base.weights)?;
        for u in means {
            gathered.push(&u);
        }
        flagged.extend(at_fault);
    }
    let outer = match r.outer {
        OuterStep::Average => Outer::Average,
        OuterStep::Nesterov {
            learning_rate,
            momentum,
        } => Outer::Nesterov {
            lr: learning_rate,
            momentum,
        },
    };
    let (state, outliers) = gathered.step_flagging(&base, outer, r.outlier_factor);
    // Outliers by push order; group means (pushed after the updates) are not clients.
    flagged.extend(outliers.iter().filter_map(|k| pushed.get(*k).copied()));
    flagged.sort_unstable();
    flagged.dedup();
    Ok(Ok(Start { state, flagged }))
}

/// [`build_start`] for a `train` job.
fn start_state(
    p: &TrainParams,
    t: &TrainJob,
    model: (Option<ModelBlob>, u64),
    job: &JobRun<'_>,
) -> Result<Result<TrainState, String>, ExecError> {
    let recipe = Recipe {
        model: p.model,
        base: t.base,
        updates: &t.updates,
        combine: combine(&p.aggregate),
        outer: p.outer,
        norm_limit: None,
        outlier_factor: f64::INFINITY,
        sums: None,
    };
    build_start(&recipe, model, job).map(|r| r.map(|s| s.state))
}

/// The trainer's combine for the campaign's aggregate.
pub(super) fn combine(aggregate: &Aggregate) -> Combine {
    match *aggregate {
        Aggregate::Mean => Combine::Mean,
        Aggregate::TrimmedMean { trim } => Combine::Trimmed(trim as usize),
        Aggregate::CenteredClip { radius, iterations } => Combine::CenteredClip {
            radius,
            iterations: u32::from(iterations),
        },
        Aggregate::Median => Combine::Median,
        Aggregate::MultiKrum { byzantine, keep } => Combine::MultiKrum {
            byzantine: usize::from(byzantine),
            keep: usize::from(keep),
        },
    }
}

/// Refuses a job whose outer step would hold more than this node's job memory: a model of
/// `values` values (weights and statistics) moved by the job's agreed updates (the robust
/// aggregates hold them all; the mean reads them one at a time).
pub fn check_outer_memory(
    p: &TrainParams,
    t: &TrainJob,
    values: u64,
    limits: &Limits,
) -> Result<(), ExecError> {
    outer_memory_fits(combine(&p.aggregate), t.updates.len(), values, limits)
}

/// [`check_outer_memory`] for `updates` updates combined by `how`.
pub(super) fn outer_memory_fits(
    how: Combine,
    updates: usize,
    values: u64,
    limits: &Limits,
) -> Result<(), ExecError> {
    let needed = outer_step_bytes(values, updates, how);
    match limits.memory_budget {
        Some(budget) if needed > budget => Err(ExecError::OverLimit(TrainError::MemoryBudget {
            needed,
            budget,
        })),
        _ => Ok(()),
    }
}

/// Millionths, rounded (saturating).
fn micro(x: f64) -> i64 {
    (x * 1e6).round() as i64
}

/// A segment's extras: its last training loss, and its update's sketch (log norm and
/// normalised projections, seeded by the job), which tolerance mode compares instead of the
/// update's bytes (ADR 0009).
fn extras(loss: f32, sent: &Update, seed: u64) -> BTreeMap<String, i64> {
    let (log_norm, projections) = sketch(sent, seed);
    let mut extra = BTreeMap::from([
        ("train_loss_micro".to_string(), micro(f64::from(loss))),
        ("update_log_norm_micro".to_string(), micro(log_norm)),
    ]);
    for (j, p) in projections.iter().enumerate() {
        extra.insert(format!("update_sketch{j}_micro"), micro(*p));
    }
    extra
}

/// The trainer's encoding for the campaign's.
pub(super) fn encoding(p: &TrainParams) -> Encoding {
    match p.encoding {
        UpdateEncoding::F32 => Encoding::F32,
        UpdateEncoding::F16 => Encoding::F16,
        UpdateEncoding::TopK { per_mille } => Encoding::TopK { per_mille },
    }
}

/// The campaign's model blob, decoded (`None`: neither an architecture nor a weights file;
/// the recipe then fails the job), once it is known to fit the data and this node's limits:
/// every round trains its architecture, so a model over the limits is refused (an error) and
/// one that does not fit the data fails the job (the inner `Err`) before any state or update
/// is decoded.
pub(super) fn fitting_model(
    model: BlobId,
    job: &JobRun<'_>,
) -> Result<Result<Option<ModelBlob>, Ran>, ExecError> {
    let decoded = ModelBlob::decode(&fetch(job.blobs, &model, "model")?);
    if let Some(m) = &decoded
        && let Err(e) = check_fit(
            m.arch(),
            job.data,
            job.budget.batch_size as usize,
            job.limits,
        )
    {
        return match e {
            TrainError::MemoryBudget { .. } => Err(ExecError::OverLimit(e)),
            e => Ok(Err(Ran::nothing(failure(
                FailureKind::InvalidJob,
                e.to_string(),
            )))),
        };
    }
    Ok(Ok(decoded))
}

/// Runs a `train` job.
pub(super) fn run(
    p: &TrainParams,
    t: &TrainJob,
    campaign_seed: u64,
    job: &mut JobRun<'_>,
) -> Result<Ran, ExecError> {
    let model = match fitting_model(p.model, job)? {
        Ok(m) => m,
        Err(ran) => return Ok(ran),
    };
    let start = match start_state(p, t, (model, campaign_seed), job)? {
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
        private: None,
    };
    let r = match job.runner.segment(&seg, job.limits, job.progress) {
        Ok(r) => r,
        Err(e) => return Ok(Ran::nothing(train_failure(e)?)),
    };
    // What the swarm will apply is the update as it travels: it must fit and be finite.
    let delta = Update::between(&start.weights, &r.trained);
    let (update_bytes, residual) = match encoding(p) {
        enc @ Encoding::TopK { .. } => {
            let previous = match &t.residual {
                Some(id) => fitting_update(job, id, "segment's residual", &start.weights)?,
                None => None,
            };
            match with_feedback(&delta, previous.as_ref(), enc) {
                Ok((bytes, residual)) => (bytes, Some(residual.encode(Encoding::F16))),
                Err(e) => return Ok(Ran::nothing(failure(FailureKind::NonFinite, e.to_string()))),
            }
        }
        enc => (delta.encode(enc), None),
    };
    let sent = Update::decode(&update_bytes)
        .map_err(|e| e.to_string())
        .and_then(|u| u.check(&start.weights).map(|()| u));
    let sent = match sent {
        Ok(u) => u,
        Err(e) => return Ok(Ran::nothing(failure(FailureKind::NonFinite, e))),
    };
    let update_id = BlobId::of_bytes(&update_bytes);
    let extra = extras(r.fit.final_loss, &sent, job.seed);
    let mut artifacts = vec![update_id, start_id];
    let mut blobs = vec![(update_id, update_bytes), (start_id, start_bytes)];
    if let Some(bytes) = residual {
        let id = BlobId::of_bytes(&bytes);
        artifacts.push(id);
        blobs.push((id, bytes));
    }
    Ok(Ran {
        outcome: Outcome::Success(metrics(r.correct, r.total, extra, artifacts)),
        blobs,
    })
}

/// [`Fault::Noise`](crate::fault::Fault::Noise) for a round's result: its update replaced by
/// uniform noise of ten times each tensor's root mean square (drawn from `seed`), encoded as
/// the campaign says and sketched anew, so it looks like a real update. `None` when `done` is
/// not a trained segment's success (the final evaluation, a failure).
pub fn with_noisy_update(p: &TrainParams, done: &mut Executed, seed: u64) -> Option<()> {
    let Outcome::Success(m) = &mut done.result.outcome else {
        return None;
    };
    let update_id = *m.artifacts.first().filter(|_| m.artifacts.len() >= 2)?;
    let slot = done.blobs.iter_mut().find(|(id, _)| *id == update_id)?;
    let mut u = Update::decode(&slot.1).ok()?;
    let mut xof = blake3::Hasher::new_derive_key("hivemesh 2026-12 noisy update fault")
        .update(&seed.to_le_bytes())
        .finalize_xof();
    for t in &mut u.tensors {
        let values: Vec<f32> = t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rms = (values.iter().map(|v| v * v).sum::<f32>() / values.len().max(1) as f32).sqrt();
        let amplitude = 10.0 * rms.max(1e-4);
        let mut noisy = Vec::with_capacity(t.data.len());
        for _ in &values {
            let mut b = [0u8; 4];
            xof.fill(&mut b);
            let unit = u32::from_le_bytes(b) as f32 / u32::MAX as f32;
            noisy.extend_from_slice(&((2.0 * unit - 1.0) * amplitude).to_le_bytes());
        }
        t.data = noisy;
    }
    let bytes = u.encode(encoding(p));
    let sent = Update::decode(&bytes).ok()?;
    let loss = m.extra.get("train_loss_micro").copied().unwrap_or(0) as f32 / 1e6;
    m.extra = extras(loss, &sent, seed);
    let id = BlobId::of_bytes(&bytes);
    m.artifacts[0] = id;
    *slot = (id, bytes);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hivemesh_protocol::{Tolerance, agree};
    use hivemesh_trainer::model::SavedTensor;

    /// An update of `n` values, value `i` being `f(i)`.
    fn update(n: usize, f: impl Fn(usize) -> f32) -> Update {
        let data = (0..n).flat_map(|i| f(i).to_le_bytes()).collect();
        Update {
            tensors: vec![SavedTensor {
                name: "n1.dense.weight".into(),
                shape: vec![n as u32],
                data,
            }],
        }
    }

    fn outcome(loss: f32, u: &Update) -> Outcome {
        let bytes = u.encode(Encoding::F32);
        Outcome::Success(Metrics {
            correct: 150,
            total: 300,
            params: 1,
            flops: 1,
            extra: extras(loss, u, 42),
            artifacts: vec![BlobId::of_bytes(&bytes), BlobId::of_bytes(b"start")],
        })
    }

    /// Tolerance mode (ADR 0009): updates within the stated relative distance agree on their
    /// sketch though their bytes differ; a scaled, a reversed or a redirected update does not.
    #[test]
    fn tolerance_mode_agrees_on_nearby_updates_and_not_on_others() {
        let n = 10_000;
        let base = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
        let honest = outcome(0.5, &update(n, base));
        // Another GPU: relative noise of 1e-4 on every value, a slightly different loss.
        let gpu = outcome(
            0.500_01,
            &update(n, |i| {
                base(i) * (1.0 + if i % 3 == 0 { 1e-4 } else { -1e-4 })
            }),
        );
        let file: crate::campaign_file::TrainFile =
            toml::from_str("model = \"x\"\nrounds = 1\nupdate_tolerance = 0.01\n")
                .expect("a [train] table");
        let tol = file
            .tolerance(Tolerance {
                correct: 2,
                ..Tolerance::EXACT
            })
            .expect("valid");
        assert!(!tol.exact_artifacts && tol.extra == 40_000, "{tol:?}");
        assert!(agree(&honest, &gpu, &tol));
        assert!(!agree(&honest, &gpu, &Tolerance::EXACT), "bytes differ");
        let half = outcome(0.5, &update(n, |i| base(i) * 0.5));
        assert!(!agree(&honest, &half, &tol), "half the norm");
        let reversed = outcome(0.5, &update(n, |i| base(n - 1 - i)));
        assert!(
            !agree(&honest, &reversed, &tol),
            "same norm, other direction"
        );
        // 5 % of the norm redirected: the projections move by about that much.
        let bent = outcome(
            0.5,
            &update(n, |i| base(i) + if i % 2 == 0 { 0.015 } else { -0.015 }),
        );
        assert!(!agree(&honest, &bent, &tol));
        let bad: crate::campaign_file::TrainFile =
            toml::from_str("model = \"x\"\nrounds = 1\nupdate_tolerance = 0.9\n").expect("toml");
        assert!(bad.tolerance(Tolerance::EXACT).is_err());
    }

    /// The noise fault's update is a real-looking update of the same layout (it decodes and
    /// fits), far from the honest one, sketched anew: tolerance mode cannot agree with it.
    #[test]
    fn a_noisy_update_fits_but_agrees_with_no_honest_one() {
        let honest = update(1000, |i| ((i % 17) as f32 - 8.0) * 1e-3);
        let out = outcome(0.5, &honest);
        let Outcome::Success(m) = &out else {
            unreachable!()
        };
        let mut done = Executed {
            result: hivemesh_protocol::message::JobResult {
                outcome: out.clone(),
                wall_time_ms: 1,
            },
            blobs: vec![
                (m.artifacts[0], honest.encode(Encoding::F32)),
                (m.artifacts[1], b"start".to_vec()),
            ],
        };
        let file: crate::campaign_file::TrainFile = toml::from_str(&format!(
            "model = \"{}\"\nrounds = 1\nencoding = \"f16\"\n",
            BlobId::of_bytes(b"m")
        ))
        .expect("a [train] table");
        let Ok(hivemesh_protocol::spec::Search::Train(p)) = file.to_search() else {
            panic!("a train search")
        };
        assert_eq!(with_noisy_update(&p, &mut done, 7), Some(()));
        let Outcome::Success(noisy) = &done.result.outcome else {
            panic!("still a success")
        };
        assert_ne!(noisy.artifacts[0], m.artifacts[0]);
        assert_eq!(noisy.artifacts[1], m.artifacts[1]);
        let (id, bytes) = &done.blobs[0];
        assert_eq!(
            *id,
            BlobId::of_bytes(bytes),
            "the blob is what the result names"
        );
        assert_eq!(*id, noisy.artifacts[0]);
        assert_eq!(
            bytes.len(),
            honest.encode(Encoding::F16).len(),
            "sent as f16"
        );
        let u = Update::decode(bytes).expect("decodes");
        assert_eq!(u.tensors[0].shape, honest.tensors[0].shape);
        assert_eq!(
            noisy.extra.get("train_loss_micro"),
            m.extra.get("train_loss_micro")
        );
        let tol = Tolerance {
            extra: 40_000,
            exact_artifacts: false,
            ..Tolerance::EXACT
        };
        assert!(agree(&out, &out, &tol));
        assert!(!agree(&out, &done.result.outcome, &tol));
        // The final evaluation (one artifact) is left to the lie.
        let mut last = done;
        if let Outcome::Success(m) = &mut last.result.outcome {
            m.artifacts.truncate(1);
        }
        assert_eq!(with_noisy_update(&p, &mut last, 7), None);
    }
}
