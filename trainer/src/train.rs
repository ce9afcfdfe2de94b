//! The training loop and the NAS job.
//!
//! Everything random in a job comes from its seed through named sub-seeds (weight init, batch
//! order), never from burn's global RNG, so a job gives bit-identical weights and metrics on
//! the CPU backend whether it runs alone or beside other jobs in the same process.
//!
//! The loop: each epoch shuffles the training indices with the job's ChaCha RNG and walks them
//! in batches (the last one may be short); every step computes the loss, backpropagates and
//! takes an optimiser step at the scheduled learning rate; the run ends after `epochs` passes or
//! `max_steps` steps, whichever comes first. A non-finite loss ends the job with
//! [`TrainError::Diverged`], never a panic.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::Backend;
use burn::tensor::activation::log_softmax;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use hivemesh_evolve::arch::Architecture;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::data::{Dataset, Splits, shuffle};
use crate::error::{StopReason, TrainError};
use crate::model::{Model, WeightsFile};
use crate::ops::{ModelBackend, TrainBackend};
use crate::optim::FusedAdam;

/// How the learning rate changes over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Cosine decay from the peak to zero over the run.
    Cosine,
}

/// An optimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// SGD with (PyTorch-style, undampened) momentum.
    Sgd {
        /// Momentum coefficient in `[0, 1)`.
        momentum: f32,
    },
    /// Adam (β = 0.9, 0.999; ε = 1e-8 as in PyTorch).
    Adam,
}

/// How much training a job gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Passes over the training split.
    pub epochs: u32,
    /// Optional cap on optimiser steps.
    pub max_steps: Option<u64>,
    /// Samples per step.
    pub batch_size: u32,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            epochs: 1,
            max_steps: None,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
        }
    }
}

impl Budget {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Options(m.to_string()));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be a positive number");
        }
        if let OptimizerKind::Sgd { momentum } = self.optimizer
            && !(0.0..1.0).contains(&momentum)
        {
            return bad("momentum must be in [0, 1)");
        }
        Ok(())
    }

    /// Optimiser steps a training split of `n` samples gets.
    pub fn total_steps(&self, n: usize) -> u64 {
        let per_epoch = n.div_ceil(self.batch_size.max(1) as usize) as u64;
        let by_epochs = per_epoch * u64::from(self.epochs);
        self.max_steps.map_or(by_epochs, |m| m.min(by_epochs))
    }

    /// The learning rate at `step` of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let peak = f64::from(self.learning_rate);
        match self.schedule {
            Schedule::Constant => peak,
            Schedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Progress of a training run, reported after every optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps in the whole run.
    pub total_steps: u64,
    /// Current epoch (from 0).
    pub epoch: u32,
    /// The latest loss read back (read every [`LOSS_EVERY`] steps and at the end).
    pub loss: Option<f32>,
}

/// The loss is read back (a device sync) every this many steps, and checked for NaN/inf.
pub const LOSS_EVERY: u64 = 10;

/// Limits a node puts on the jobs it runs.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Refuse jobs whose estimated peak memory exceeds this many bytes.
    pub memory_budget: Option<u64>,
    /// Refuse jobs whose estimated training compute ([`NasJob::cost_flops`]) exceeds this many
    /// FLOPs.
    pub flops_budget: Option<u64>,
    /// When a running job must stop.
    pub stop: Stop,
}

/// When a running job must stop early: at a wall-clock deadline, or when another thread raises
/// a flag (the node shutting down). Checked after every optimiser step (cooperative
/// cancellation), so a job ends within one step of either.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop once this instant has passed, and the limit it came from (for the error).
    pub deadline: Option<(Instant, Duration)>,
    /// Stop once this is true.
    pub flag: Option<Arc<AtomicBool>>,
}

impl Stop {
    /// Stops `limit` from now, or when `flag` is raised.
    pub fn after(limit: Duration, flag: Option<Arc<AtomicBool>>) -> Stop {
        Stop {
            deadline: Some((Instant::now() + limit, limit)),
            flag,
        }
    }

    /// `Err` when the run must stop now, after `step` steps.
    pub fn check(&self, step: u64) -> Result<(), TrainError> {
        let reason = if self
            .flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            StopReason::Shutdown
        } else if let Some((at, limit)) = self.deadline
            && Instant::now() >= at
        {
            StopReason::TimeLimit {
                limit_s: limit.as_secs(),
            }
        } else {
            return Ok(());
        };
        Err(TrainError::Stopped { step, reason })
    }
}

/// Sub-seeds of a job seed, one per purpose, so adding a new use never shifts another's draws.
pub fn sub_seed(seed: u64, purpose: &str) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("hivemesh 2026-11 trainer sub-seed v1")
        .update(&seed.to_le_bytes())
        .update(purpose.as_bytes())
        .finalize()
        .as_bytes()
}

/// Bytes of working space a training job needs whatever its size: the GEMM's packing
/// buffers, the autodiff graph, the step's index and label vectors (measured: a 784-128-10
/// MLP peaked 6.5 MB above its starting heap, BENCHMARKS.md, issue 28).
const WORKSPACE_BYTES: u64 = 4 << 20;

/// Estimated peak bytes of training `arch` with `batch` samples per step: weights, gradients,
/// two optimiser moments and one more parameter-sized buffer in flight (24 bytes per
/// parameter), plus every node's activations kept for the backward pass and their gradients
/// (3 `f32` copies of each), plus the input batch and [`WORKSPACE_BYTES`]. Measured against
/// the heap peak of real jobs (the `mnist bench` example prints both): 6.5 / 8.2 MB for the
/// MLP, 29.4 / 82.8 MB for the small CNN, 165 / 351 MB for a 32-channel macro genome: an
/// upper bound, by up to 2.8x.
pub fn estimate_bytes(arch: &Architecture, batch: usize) -> Result<u64, TrainError> {
    let shapes = arch.shapes().map_err(|e| TrainError::Arch(e.to_string()))?;
    let params = arch.params().map_err(|e| TrainError::Arch(e.to_string()))?;
    let activations: u64 = shapes.iter().map(|s| s.numel()).sum();
    Ok(24 * params
        + 12 * activations * batch as u64
        + 4 * shapes[0].numel() * batch as u64
        + WORKSPACE_BYTES)
}

/// The one-hot matrix of `labels` as a tensor `[batch, classes]`.
pub fn one_hot<B: Backend>(labels: &[i64], classes: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

/// Mean cross-entropy of logits against one-hot (or soft) targets.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    (targets * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}

/// An input batch `[n, sample numel]` for the given indices.
pub fn input_batch<B: Backend>(data: &Dataset, idx: &[u32], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(data.inputs(idx), [idx.len(), data.sample_len()]),
        device,
    )
}

/// Statistics of a finished training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitStats {
    /// Optimiser steps taken.
    pub steps: u64,
    /// The loss of the last step.
    pub final_loss: f32,
}

/// The loss of one step: the model's logits and the batch's sample indices in, a scalar out.
pub type StepLoss<'a, B> = dyn FnMut(Tensor<B, 2>, &[u32]) -> Tensor<B, 1> + 'a;

/// What a training run walks over: the samples, which of them to train on, the budget and the
/// seed of the batch order.
#[derive(Debug, Clone, Copy)]
pub struct FitPlan<'a> {
    /// The data.
    pub data: &'a Dataset,
    /// Indices of the training samples.
    pub train: &'a [u32],
    /// The budget.
    pub budget: &'a Budget,
    /// Seed of the per-epoch shuffles.
    pub order_seed: [u8; 32],
    /// When to stop early.
    pub stop: &'a Stop,
}

/// Trains `model` under `plan` with `loss`.
pub fn fit<B: TrainBackend>(
    model: Model<B>,
    plan: &FitPlan<'_>,
    device: &B::Device,
    loss: &mut StepLoss<'_, B>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Model<B>, FitStats), TrainError> {
    plan.budget.validate()?;
    if plan.train.is_empty() {
        return Err(TrainError::Options("the training split is empty".into()));
    }
    struct Fit<'a, 'b, B: TrainBackend> {
        model: Model<B>,
        plan: &'a FitPlan<'b>,
        device: &'a B::Device,
        loss: &'a mut StepLoss<'b, B>,
        progress: &'a mut dyn FnMut(&Progress),
    }
    impl<B: TrainBackend> WithOptimizer<B> for Fit<'_, '_, B> {
        type Output = Result<(Model<B>, FitStats), TrainError>;
        fn run<O: Optimizer<Model<B>, B>>(self, opt: O) -> Self::Output {
            fit_with(
                self.model,
                opt,
                self.plan,
                self.device,
                self.loss,
                self.progress,
            )
        }
    }
    with_optimizer(
        plan.budget.optimizer,
        Fit {
            model,
            plan,
            device,
            loss,
            progress,
        },
    )
}

/// A training loop to run with whichever optimiser the budget names (generic over its type).
pub(crate) trait WithOptimizer<B: TrainBackend> {
    /// What the loop returns.
    type Output;
    /// Runs the loop with `opt`.
    fn run<O: Optimizer<Model<B>, B>>(self, opt: O) -> Self::Output;
}

/// Runs `w` with the optimiser `kind` names: Adam (ε = 1e-8, as PyTorch) or SGD with
/// PyTorch-style momentum.
pub(crate) fn with_optimizer<B: TrainBackend, W: WithOptimizer<B>>(
    kind: OptimizerKind,
    w: W,
) -> W::Output {
    match kind {
        OptimizerKind::Adam => w.run(OptimizerAdaptor::from(FusedAdam::default())),
        OptimizerKind::Sgd { momentum } => {
            let m = (momentum > 0.0).then(|| MomentumConfig {
                momentum: f64::from(momentum),
                dampening: 0.0,
                nesterov: false,
            });
            w.run(SgdConfig::new().with_momentum(m).init())
        }
    }
}

fn fit_with<B: TrainBackend, O: Optimizer<Model<B>, B>>(
    mut model: Model<B>,
    mut opt: O,
    plan: &FitPlan<'_>,
    device: &B::Device,
    loss_fn: &mut StepLoss<'_, B>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Model<B>, FitStats), TrainError> {
    let FitPlan {
        data,
        train,
        budget,
        order_seed,
        stop,
    } = *plan;
    let total = budget.total_steps(train.len());
    let mut rng = ChaCha8Rng::from_seed(order_seed);
    let mut order = train.to_vec();
    let bs = budget.batch_size as usize;
    let mut step = 0u64;
    let mut last = f32::NAN;
    let mut epoch = 0u32;
    while step < total {
        shuffle(&mut order, &mut rng);
        for batch in order.chunks(bs) {
            if step >= total {
                break;
            }
            stop.check(step)?;
            let x = input_batch::<B>(data, batch, device);
            let logits = model.forward(x);
            let loss = loss_fn(logits, batch);
            let read = (step + 1).is_multiple_of(LOSS_EVERY) || step + 1 == total;
            let loss_value: Option<f32> = read.then(|| loss.clone().into_scalar().elem());
            if let Some(l) = loss_value {
                if !l.is_finite() {
                    return Err(TrainError::Diverged { step, loss: l });
                }
                last = l;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(budget.lr_at(step, total), model, grads);
            step += 1;
            progress(&Progress {
                step,
                total_steps: total,
                epoch,
                loss: loss_value,
            });
        }
        epoch += 1;
    }
    if !model.is_finite() {
        return Err(TrainError::Diverged { step, loss: last });
    }
    Ok((
        model,
        FitStats {
            steps: step,
            final_loss: last,
        },
    ))
}

/// Correct predictions and total over `idx`, in batches of `batch`.
pub fn evaluate<B: ModelBackend>(
    model: &Model<B>,
    data: &Dataset,
    idx: &[u32],
    batch: usize,
    device: &B::Device,
) -> (u64, u64) {
    let mut correct = 0u64;
    for chunk in idx.chunks(batch.max(1)) {
        let logits = model.forward(input_batch::<B>(data, chunk, device));
        let pred = logits.argmax(1).into_data();
        let pred: Vec<i64> = pred.convert::<i64>().to_vec().unwrap_or_default();
        correct += pred
            .iter()
            .zip(data.targets(chunk))
            .filter(|(p, t)| **p == *t)
            .count() as u64;
    }
    (correct, idx.len() as u64)
}

/// A NAS job: train an architecture on a dataset's training split, report test accuracy.
#[derive(Debug, Clone)]
pub struct NasJob<'a> {
    /// The network.
    pub arch: &'a Architecture,
    /// The data.
    pub data: &'a Dataset,
    /// Its splits (train is trained on, test is reported).
    pub splits: &'a Splits,
    /// The budget.
    pub budget: &'a Budget,
    /// The job's seed.
    pub seed: u64,
}

/// A NAS job's metrics and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct NasResult {
    /// Correct test predictions.
    pub correct: u64,
    /// Test samples.
    pub total: u64,
    /// Trainable parameters (from the IR; equal to the burn module's).
    pub params: u64,
    /// FLOPs per sample (from the IR).
    pub flops: u64,
    /// Optimiser steps and final loss.
    pub fit: FitStats,
    /// blake3 of the trained weights.
    pub weights_hash: [u8; 32],
    /// The trained weights (content-addressed artifact).
    pub weights: WeightsFile,
}

impl NasResult {
    /// Test accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Checks that the architecture fits the data and the job fits the memory limit.
pub fn check_fit(
    arch: &Architecture,
    data: &Dataset,
    batch: usize,
    limits: &Limits,
) -> Result<(), TrainError> {
    if arch.input != data.shape {
        return Err(TrainError::Arch(format!(
            "node 0 (input) expects {:?} but the dataset {} has samples of {:?}",
            arch.input, data.name, data.shape
        )));
    }
    if arch.classes != data.classes {
        let last = arch.nodes.len().saturating_sub(1);
        return Err(TrainError::Arch(format!(
            "node {last} (output) has {} classes but the dataset {} has {}",
            arch.classes, data.name, data.classes
        )));
    }
    arch.shapes().map_err(|e| TrainError::Arch(e.to_string()))?;
    if let Some(budget) = limits.memory_budget {
        let needed = estimate_bytes(arch, batch)? + data.values.byte_len();
        if needed > budget {
            return Err(TrainError::MemoryBudget { needed, budget });
        }
    }
    Ok(())
}

impl NasJob<'_> {
    /// Checks the budget, that the architecture fits the data and the job fits `limits`
    /// (memory and compute), before anything is allocated.
    pub fn check(&self, limits: &Limits) -> Result<(), TrainError> {
        self.budget.validate()?;
        check_fit(
            self.arch,
            self.data,
            self.budget.batch_size as usize,
            limits,
        )?;
        if let Some(budget) = limits.flops_budget {
            let needed = self.cost_flops()?;
            if needed > budget {
                return Err(TrainError::CostBudget { needed, budget });
            }
        }
        Ok(())
    }

    /// Estimated FLOPs of the whole job: each training sample seen costs a forward and a
    /// backward pass (about 3 forward passes), and each test sample one forward pass. Samples
    /// seen = steps × batch size, from the budget and the size of the training split
    /// (saturating: an absurd budget gives `u64::MAX`, never an overflow).
    pub fn cost_flops(&self) -> Result<u64, TrainError> {
        let forward = self
            .arch
            .flops()
            .map_err(|e| TrainError::Arch(e.to_string()))?;
        let steps = self.budget.total_steps(self.splits.train.len());
        let seen = steps.saturating_mul(u64::from(self.budget.batch_size));
        let train = seen.saturating_mul(forward.saturating_mul(3));
        let test = (self.splits.test.len() as u64).saturating_mul(forward);
        Ok(train.saturating_add(test))
    }
}

/// A model trained and tested by [`train_and_test`].
pub(crate) struct Tested<B: ModelBackend> {
    pub(crate) model: Model<B>,
    pub(crate) fit: FitStats,
    pub(crate) correct: u64,
    pub(crate) total: u64,
}

/// The run every job kind shares: a fresh model from the job's `"init"` sub-seed, trained with
/// `loss` on the training split in the order of the `"order"` sub-seed, then evaluated on the
/// test split. Callers check the job first ([`NasJob::check`]).
pub(crate) fn train_and_test<B: TrainBackend>(
    run: &NasJob<'_>,
    stop: &Stop,
    device: &B::Device,
    loss: &mut StepLoss<'_, B>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Tested<B::InnerBackend>, TrainError> {
    let model = Model::<B>::new(run.arch, sub_seed(run.seed, "init"), device)?;
    let plan = FitPlan {
        data: run.data,
        train: &run.splits.train,
        budget: run.budget,
        order_seed: sub_seed(run.seed, "order"),
        stop,
    };
    let (model, fit) = fit(model, &plan, device, loss, progress)?;
    let model = model.valid();
    let (correct, total) = evaluate(&model, run.data, &run.splits.test, 1000, device);
    Ok(Tested {
        model,
        fit,
        correct,
        total,
    })
}

/// Runs a NAS job on backend `B`.
pub fn run_nas<B: TrainBackend>(
    job: &NasJob<'_>,
    limits: &Limits,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<NasResult, TrainError> {
    job.check(limits)?;
    let classes = job.data.classes as usize;
    let data = job.data;
    let mut loss = |logits: Tensor<B, 2>, batch: &[u32]| {
        let y = one_hot::<B>(&data.targets(batch), classes, device);
        cross_entropy(logits, y)
    };
    let t = train_and_test(job, &limits.stop, device, &mut loss, progress)?;
    let weights = t.model.weights_file(job.arch);
    Ok(NasResult {
        correct: t.correct,
        total: t.total,
        params: job
            .arch
            .params()
            .map_err(|e| TrainError::Arch(e.to_string()))?,
        flops: job
            .arch
            .flops()
            .map_err(|e| TrainError::Arch(e.to_string()))?,
        fit: t.fit,
        weights_hash: weights.weights_hash(),
        weights,
    })
}
