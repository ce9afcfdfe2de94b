//! `federated` jobs (ADR 0010): a client's round on its private data, or the final evaluation.
//!
//! A client round builds the round's start model from the job's recipe (as `train` does, with
//! the campaign's norm bound on each agreed update), evaluates it on the campaign's public
//! validation split, trains it on this node's private dataset for `local_steps` (DP-SGD when
//! the campaign asks for example-level privacy), clips and noises the update when it asks for
//! client-level privacy, and reports the update and the start model as blobs.
//!
//! What leaves the node is the update (private by the campaign's settings) and numbers on
//! public data. Nothing computed from the private data without privacy is published: no
//! training loss, no update norm, no record count. The sampling and noise come from a secret
//! of this node (its key) and the job, never from the job's public seed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hivemesh_evolve::arch::Shape;

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::kinds::federated::flag_metrics;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::{Features, FedJob, FederatedParams, SecureStep};
use hivemesh_trainer::TrainError;
use hivemesh_trainer::attack::Attack;
use hivemesh_trainer::data::{Dataset, Splits};
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::private::{DpSgd, clip_and_noise, secret_seed};
use hivemesh_trainer::rounds::{Encoding, SegmentJob, Update, state_values};
use hivemesh_trainer::scatter::{ScatterSpec, Scattering};
use hivemesh_trainer::train::Budget;

use super::secure;
use super::train::{Recipe, build_start, combine, fitting_model};
use super::{ExecError, JobRun, Loaded, Ran, failure, train_failure};

/// A robust aggregate flags an update farther than this many times the median distance from
/// the combined update.
const OUTLIER_FACTOR: f64 = 3.0;

/// The job's secret: what seeds its private sampling and noise (from this node's secret and
/// the job's id, so a restarted node draws the same and no one else can).
fn job_secret(node_secret: &[u8; 32], job: &[u8; 32]) -> [u8; 32] {
    *blake3::Hasher::new_keyed(node_secret)
        .update(b"hivemesh 2026-12 federated job secret")
        .update(job)
        .finalize()
        .as_bytes()
}

/// What a federated job needs of the executor besides the job itself.
pub(super) struct Client<'a> {
    /// The private datasets this node offers, by name.
    pub private: &'a BTreeMap<String, Arc<Loaded>>,
    /// This node's secret for private randomness.
    pub secret: &'a [u8; 32],
    /// The job's id.
    pub job_id: [u8; 32],
    /// The campaign's id.
    pub campaign: [u8; 32],
    /// A malicious client's attack on its update, if any.
    pub attack: Option<Attack>,
    /// Features computed here before.
    pub features: &'a FeatureCache,
}

/// Feature datasets this node computed, newest last: a campaign's public split and each
/// private dataset are transformed once, not at every round.
#[derive(Debug, Default)]
pub(crate) struct FeatureCache(Mutex<Vec<([u8; 32], Arc<Dataset>)>>);

/// Feature datasets a [`FeatureCache`] keeps (the oldest goes first).
const FEATURE_SETS: usize = 4;

impl FeatureCache {
    /// The features `f` of `data`'s samples `indices`, computed once per (data, features,
    /// samples).
    ///
    /// Refused when the features would take more than `memory` bytes (the node's job
    /// memory limit): a campaign cannot make a node hold features without bound.
    pub(super) fn featured(
        &self,
        f: &Features,
        data: &Dataset,
        indices: &[u32],
        memory: Option<u64>,
    ) -> Result<Arc<Dataset>, String> {
        let mut h = blake3::Hasher::new();
        h.update(&data.id());
        h.update(&postcard::to_stdvec(f).map_err(|e| e.to_string())?);
        for i in indices {
            h.update(&i.to_le_bytes());
        }
        let key = *h.finalize().as_bytes();
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, d)) = lock().iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(d));
        }
        let Shape::Image { h, w, .. } = data.shape else {
            return Err(format!(
                "{} holds flat samples, and scattering needs images",
                data.name
            ));
        };
        let per = feature_shape(f, data.shape)?.numel();
        let bytes = (indices.len() as u64).saturating_mul(per).saturating_mul(4);
        if let Some(limit) = memory
            && bytes > limit
        {
            return Err(format!(
                "the features of {} samples take {} MB, over this node's job memory limit of \
                 {} MB",
                indices.len(),
                bytes >> 20,
                limit >> 20
            ));
        }
        let d = Scattering::new(scatter_spec(f)?, h, w)
            .and_then(|s| s.samples(data, indices))
            .map_err(|e| e.to_string())?;
        let d = Arc::new(d);
        let mut cache = lock();
        if cache.len() >= FEATURE_SETS {
            cache.remove(0);
        }
        cache.push((key, Arc::clone(&d)));
        Ok(d)
    }
}

/// The scattering settings `f` asks for.
fn scatter_spec(f: &Features) -> Result<ScatterSpec, String> {
    match *f {
        Features::Scattering {
            scales,
            angles,
            groups,
        } => Ok(ScatterSpec {
            scales: u32::from(scales),
            angles: u32::from(angles),
            groups: u32::from(groups),
        }),
        Features::Values => Err("no features asked for".into()),
    }
}

/// The shape a model sees for records of shape `data` under `f`.
pub fn feature_shape(f: &Features, data: Shape) -> Result<Shape, String> {
    match f {
        Features::Values => Ok(data),
        Features::Scattering { .. } => scatter_spec(f)?.output(data).map_err(|e| e.to_string()),
    }
}

/// Runs a `federated` job.
pub(super) fn run(
    p: &FederatedParams,
    f: &FedJob,
    campaign_seed: u64,
    job: &mut JobRun<'_>,
    client: &Client<'_>,
) -> Result<Ran, ExecError> {
    if matches!(
        f.step,
        SecureStep::Keys | SecureStep::Deal | SecureStep::Reveal
    ) {
        return secure::run_step(p, f, client.secret, &client.campaign, job);
    }
    if p.features == Features::Values {
        return run_on(p, f, campaign_seed, job, client);
    }
    // The public split this job measures on, as features: the job then sees a dataset of
    // just those samples (both splits name all of them).
    let public = if f.client.is_none() {
        &job.splits.test
    } else {
        &job.splits.validation
    };
    let memory = job.limits.memory_budget;
    let featured = match client
        .features
        .featured(&p.features, job.data, public, memory)
    {
        Ok(d) => d,
        Err(e) => return Ok(Ran::nothing(failure(FailureKind::InvalidJob, e))),
    };
    let all: Vec<u32> = (0..featured.len() as u32).collect();
    let splits = Splits {
        train: Vec::new(),
        validation: all.clone(),
        test: all,
    };
    let mut view = JobRun {
        data: &featured,
        splits: &splits,
        progress: &mut *job.progress,
        ..*job
    };
    run_on(p, f, campaign_seed, &mut view, client)
}

/// Runs a training or evaluation job on `job`'s data (the features when the campaign asks).
fn run_on(
    p: &FederatedParams,
    f: &FedJob,
    campaign_seed: u64,
    job: &mut JobRun<'_>,
    client: &Client<'_>,
) -> Result<Ran, ExecError> {
    let model = match fitting_model(p.model, job)? {
        Ok(m) => m,
        Err(ran) => return Ok(ran),
    };
    let view: &JobRun<'_> = job;
    let sums = |w: &WeightsFile| match &f.sums {
        Some(r) => secure::group_means(p, &client.campaign, r, w, view),
        None => Ok((Vec::new(), Vec::new())),
    };
    let values = model
        .as_ref()
        .and_then(|m| state_values(m.arch()).ok())
        .unwrap_or(0);
    let recipe = Recipe {
        model: p.model,
        base: f.base,
        updates: &f.updates,
        combine: combine(&p.aggregate),
        outer: p.outer,
        norm_limit: p.norm_limit(values),
        outlier_factor: OUTLIER_FACTOR,
        sums: Some(&sums),
    };
    let (start, flagged) = match build_start(&recipe, (model, campaign_seed), view)? {
        Ok(s) => (s.state, s.flagged),
        Err(e) => return Ok(Ran::nothing(failure(FailureKind::InvalidJob, e))),
    };
    let start_bytes = start.to_bytes();
    let start_id = BlobId::of_bytes(&start_bytes);
    let arch = &start.weights.arch;
    let (params, flops) = (arch.params().unwrap_or(0), arch.flops().unwrap_or(0));
    let metrics = |correct, total, artifacts| Metrics {
        correct,
        total,
        params,
        flops,
        extra: flag_metrics(&flagged),
        artifacts,
    };
    // The start model on public data: the final model on the test split, a round's start
    // model on the validation split.
    let public = if f.client.is_none() {
        &job.splits.test
    } else {
        &job.splits.validation
    };
    let (correct, total) = match job.runner.evaluate(&start.weights, job.data, public) {
        Ok(c) => c,
        Err(e) => return Ok(Ran::nothing(train_failure(e)?)),
    };
    if f.client.is_none() {
        return Ok(Ran {
            outcome: Outcome::Success(metrics(correct, total, vec![start_id])),
            blobs: vec![(start_id, start_bytes)],
        });
    }
    let mine = client
        .private
        .get(&p.private_data)
        .ok_or_else(|| ExecError::NoPrivateData(p.private_data.clone()))?;
    let secret = job_secret(client.secret, &client.job_id);
    let featured = match private_features(p, &mine.data, client, job.limits.memory_budget) {
        Ok(f) => f,
        Err(e) => {
            let detail = format!("this client's private data: {e}");
            return Ok(Ran::nothing(failure(FailureKind::InvalidJob, detail)));
        }
    };
    let private = featured.as_deref().unwrap_or(&mine.data);
    let update = match train_locally(p, &start.weights, private, job, secret)? {
        Ok(u) => match client.attack {
            // After the honest clipping and noise: what the attacker sends instead.
            Some(a) => a.apply(&u, u64::from(f.round)),
            None => u,
        },
        Err(outcome) => return Ok(Ran::nothing(outcome)),
    };
    let update_bytes = if f.step == SecureStep::Mask {
        match secure::masked_update(p, f, &update, (client.secret, &client.campaign), job)? {
            Ok(b) => b,
            Err(e) => return Ok(Ran::nothing(failure(FailureKind::InvalidJob, e))),
        }
    } else {
        update.encode(Encoding::F32)
    };
    let update_id = BlobId::of_bytes(&update_bytes);
    Ok(Ran {
        outcome: Outcome::Success(metrics(correct, total, vec![update_id, start_id])),
        blobs: vec![(update_id, update_bytes), (start_id, start_bytes)],
    })
}

/// The features the campaign asks for of every record of `data` (this client's private
/// dataset), or `None` when the model sees the records themselves.
fn private_features(
    p: &FederatedParams,
    data: &Dataset,
    client: &Client<'_>,
    memory: Option<u64>,
) -> Result<Option<Arc<Dataset>>, String> {
    if p.features == Features::Values {
        return Ok(None);
    }
    let all: Vec<u32> = (0..data.len() as u32).collect();
    client
        .features
        .featured(&p.features, data, &all, memory)
        .map(Some)
}

/// Trains the start weights on this node's private data (DP-SGD when the campaign asks), and
/// returns the update with client-level clipping and noise applied (when it asks), or the
/// failure to publish (the private data does not fit the model; training diverged).
fn train_locally(
    p: &FederatedParams,
    start: &hivemesh_trainer::model::WeightsFile,
    private: &Dataset,
    job: &mut JobRun<'_>,
    secret: [u8; 32],
) -> Result<Result<Update, Outcome>, ExecError> {
    let dp = p.example_privacy.map(|e| DpSgd {
        clip: e.clip,
        noise_multiplier: e.noise_multiplier,
        sample_rate: e.sample_rate,
        steps: u64::from(p.local_steps),
        secret: secret_seed(&secret, "dp-sgd"),
    });
    let budget = Budget {
        epochs: u32::MAX,
        max_steps: Some(u64::from(p.local_steps)),
        ..job.budget.clone()
    };
    // Every record the client offers: no split of its data is held out here (the public data
    // measures the model).
    let records: Vec<u32> = (0..private.len() as u32).collect();
    let seg = SegmentJob {
        start,
        data: private,
        samples: &records,
        evaluate_on: &[],
        budget: &budget,
        // The batch order of non-private training: from the secret too (it is this node's
        // business, and a public order would say which records went together).
        seed: u64::from_le_bytes(
            secret_seed(&secret, "order")[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ),
        private: dp.as_ref(),
    };
    let r = match job.runner.segment(&seg, job.limits, job.progress) {
        Ok(r) => r,
        Err(TrainError::Arch(e)) => {
            let detail = format!("this client's private data does not fit the model: {e}");
            return Ok(Err(failure(FailureKind::InvalidJob, detail)));
        }
        Err(e) => return Ok(Err(train_failure(e)?)),
    };
    let mut update = Update::between(start, &r.trained);
    if let Some(c) = p.client_privacy {
        // Under secure aggregation each client adds its share of the noise: every revealed
        // sum has at least `group_min` clients, so it carries all of it.
        let share = p
            .secure
            .map_or(1.0, |s| f64::from(s.group_min(p.min_clients)).sqrt());
        let std = f64::from(c.noise_multiplier) * f64::from(c.clip) / share;
        clip_and_noise(
            &mut update,
            c.clip,
            std,
            secret_seed(&secret, "client-noise"),
        );
    }
    if p.client_privacy.is_none() && p.norm_bound > 0.0 {
        // An honest client bounds its own update (no one can bound a masked one, and one
        // above the bound is dropped and its client flagged).
        update.bound_norm(f64::from(p.norm_bound));
    }
    match update.check(start) {
        Ok(()) => Ok(Ok(update)),
        Err(e) => Ok(Err(failure(FailureKind::NonFinite, e))),
    }
}
