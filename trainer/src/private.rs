//! Differentially private training (ADR 0010).
//!
//! **Example level, DP-SGD** (Abadi et al. 2016, as Opacus does it): each step samples the
//! training records by Poisson sampling (each independently with probability `q`, so a step's
//! batch size varies), computes every sampled record's gradient on its own, scales it to L2
//! norm at most `C` (over all parameters together), sums them, adds Gaussian noise of standard
//! deviation `σC` to every coordinate, divides by the expected batch size `qN`, and hands that
//! to the optimiser. Each step is then the sampled Gaussian mechanism that
//! `hivemesh_protocol::privacy` accounts for; the optimiser (Adam or SGD) is post-processing.
//! Batch norm mixes records within a batch, so models with it are refused (as Opacus does).
//!
//! **Client level** ([`clip_and_noise`]): a whole update scaled to norm at most `C`, then
//! Gaussian noise added to every value.
//!
//! Randomness (sampling, noise) comes from the job's seed: the same job gives the same bytes.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use hivemesh_evolve::arch::{Architecture, Op};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::data::Dataset;
use crate::error::TrainError;
use crate::model::{DenseLayer, Model};
use crate::ops::TrainBackend;
use crate::rounds::Update;
use crate::train::{
    Budget, FitStats, Progress, Stop, WithOptimizer, cross_entropy, input_batch, one_hot,
    with_optimizer,
};

/// DP-SGD's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    /// Per-record gradient norm bound `C`.
    pub clip: f32,
    /// Noise standard deviation over `C` (`σ`).
    pub noise_multiplier: f32,
    /// Poisson sampling rate `q` of each step.
    pub sample_rate: f64,
    /// Steps.
    pub steps: u64,
    /// The seed of the sampling and the noise. It must be secret: whoever knows it can
    /// redraw the noise and subtract it (a node derives it from its own key and the job).
    pub secret: [u8; 32],
}

impl DpSgd {
    /// Checks the settings: `C > 0`, `σ ≥ 0`, `0 < q ≤ 1`, all finite.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Options(m));
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("DP clipping norm {} must be above 0", self.clip));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return bad(format!(
                "DP noise multiplier {} must be at least 0",
                self.noise_multiplier
            ));
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return bad(format!(
                "DP sampling rate {} must be in (0, 1]",
                self.sample_rate
            ));
        }
        Ok(())
    }
}

/// Refuses an architecture DP-SGD cannot train privately: batch norm's statistics mix the
/// records of a batch, so one record's gradient depends on the others.
pub fn check_private(arch: &Architecture) -> Result<(), TrainError> {
    match arch.nodes.iter().position(|n| n.op == Op::BatchNorm) {
        Some(i) => Err(TrainError::Arch(format!(
            "node {i} is a batch norm, which mixes the records of a batch: DP-SGD needs each \
             record's gradient on its own; use a model without batch norm"
        ))),
        None => Ok(()),
    }
}

/// Gathers each float parameter's gradient (zeros where it has none), in visiting order.
struct Gather<'a, B: TrainBackend> {
    /// The gradients.
    grads: &'a GradientsParams,
    /// One flat gradient per parameter.
    out: Vec<Vec<f32>>,
    /// The backend's marker.
    _b: std::marker::PhantomData<B>,
}

impl<B: TrainBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => g.into_data().convert::<f32>().to_vec().unwrap_or_default(),
            None => Vec::new(),
        };
        let n = param.val().dims().iter().product();
        self.out.push(if values.len() == n {
            values
        } else {
            vec![0.0; n]
        });
    }
}

/// Builds gradients from flat values, one per float parameter in visiting order.
struct Scatter<'a, B: TrainBackend> {
    /// The values.
    values: &'a [Vec<f32>],
    /// The next parameter's place.
    next: usize,
    /// The gradients built.
    grads: GradientsParams,
    /// Where the tensors live.
    device: &'a B::Device,
}

impl<B: TrainBackend> ModuleVisitor<B> for Scatter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let dims = param.val().dims();
        let v = self.values[self.next].clone();
        self.next += 1;
        let t = Tensor::<B::InnerBackend, D>::from_data(TensorData::new(v, dims), self.device);
        self.grads.register::<B::InnerBackend, D>(param.id, t);
    }
}

/// One record's loss and gradient (flat, per parameter).
fn record_gradient<B: TrainBackend>(
    model: &Model<B>,
    data: &Dataset,
    record: u32,
    device: &B::Device,
) -> (f32, Vec<Vec<f32>>) {
    let x = input_batch::<B>(data, &[record], device);
    let y = one_hot::<B>(&data.targets(&[record]), data.classes as usize, device);
    let loss = cross_entropy(model.forward(x), y);
    let value: f32 = loss.clone().into_scalar().elem();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut g = Gather::<B> {
        grads: &grads,
        out: Vec::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut g);
    (value, g.out)
}

/// A standard normal value (Box–Muller on two uniform draws).
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Each float parameter's values, in visiting order.
fn param_values<B: TrainBackend>(model: &Model<B>) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl<B: TrainBackend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val().into_data().convert::<f32>().to_vec();
            self.0.push(v.unwrap_or_default());
        }
    }
    let mut v = Values(Vec::new());
    model.visit(&mut v);
    v.0
}

/// The private gradient of one step over `batch`: per-record gradients clipped to `C`,
/// summed, noised (`σC` per coordinate, from `noise`), over `expected` records; and the mean
/// loss of the batch (NaN when it is empty). With `chain` (the model's
/// [`Model::dense_chain`]) the clipped sum comes from one pass over the batch
/// ([`dense::clipped_sum`]), else from one backward pass per record.
#[allow(clippy::too_many_arguments)]
pub fn private_gradient<B: TrainBackend>(
    model: &Model<B>,
    chain: Option<&[DenseLayer]>,
    data: &Dataset,
    batch: &[u32],
    dp: &DpSgd,
    expected: f64,
    noise: &mut ChaCha8Rng,
    device: &B::Device,
) -> (Vec<Vec<f32>>, f32) {
    let (mut sum, loss) = match chain {
        Some(layers) if !batch.is_empty() => {
            dense::clipped_sum(layers, &param_values(model), data, batch, dp.clip)
        }
        _ => per_record_sum(model, data, batch, dp, device),
    };
    if sum.is_empty() {
        // No record sampled: the step is noise alone (the shapes from one record's pass).
        sum = param_sizes(model)
            .into_iter()
            .map(|n| vec![0.0; n])
            .collect();
    }
    let std = f64::from(dp.noise_multiplier) * f64::from(dp.clip);
    let grads = sum
        .into_iter()
        .map(|t| {
            t.into_iter()
                .map(|v| ((v + std * gaussian(noise)) / expected) as f32)
                .collect()
        })
        .collect();
    let mean = if batch.is_empty() {
        f32::NAN
    } else {
        (loss / batch.len() as f64) as f32
    };
    (grads, mean)
}

/// The sum of the records' gradients, each clipped to `C`, by one backward pass per record;
/// and the sum of their losses.
fn per_record_sum<B: TrainBackend>(
    model: &Model<B>,
    data: &Dataset,
    batch: &[u32],
    dp: &DpSgd,
    device: &B::Device,
) -> (Vec<Vec<f64>>, f64) {
    let mut sum: Vec<Vec<f64>> = Vec::new();
    let mut loss = 0.0f64;
    for r in batch {
        let (l, g) = record_gradient(model, data, *r, device);
        loss += f64::from(l);
        let norm: f64 = g
            .iter()
            .flatten()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        let scale = (f64::from(dp.clip) / norm.max(1e-12)).min(1.0);
        if sum.is_empty() {
            sum = g.iter().map(|t| vec![0.0; t.len()]).collect();
        }
        for (s, t) in sum.iter_mut().zip(&g) {
            s.iter_mut()
                .zip(t)
                .for_each(|(a, b)| *a += f64::from(*b) * scale);
        }
    }
    (sum, loss)
}

/// Each float parameter's number of values, in visiting order.
fn param_sizes<B: TrainBackend>(model: &Model<B>) -> Vec<usize> {
    struct Sizes(Vec<usize>);
    impl<B: TrainBackend> ModuleVisitor<B> for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().iter().product());
        }
    }
    let mut s = Sizes(Vec::new());
    model.visit(&mut s);
    s.0
}

/// A generator seed for `purpose` from a secret seed.
pub fn secret_seed(secret: &[u8; 32], purpose: &str) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("hivemesh 2026-12 private training seed")
        .update(secret)
        .update(purpose.as_bytes())
        .finalize()
        .as_bytes()
}

/// What a private training run needs besides the model.
#[derive(Debug, Clone, Copy)]
pub struct PrivatePlan<'a> {
    /// The data.
    pub data: &'a Dataset,
    /// The records this client trains on.
    pub train: &'a [u32],
    /// The privacy settings (steps included).
    pub dp: &'a DpSgd,
    /// The optimiser, learning rate and schedule (its epochs and step cap are not used).
    pub budget: &'a Budget,
    /// When to stop early.
    pub stop: &'a Stop,
}

/// Trains `model` by DP-SGD under `plan`.
pub fn fit_private<B: TrainBackend>(
    model: Model<B>,
    plan: &PrivatePlan<'_>,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Model<B>, FitStats), TrainError> {
    plan.dp.validate()?;
    plan.budget.validate()?;
    if plan.train.is_empty() {
        return Err(TrainError::Options("the training split is empty".into()));
    }
    struct Private<'a, 'b, B: TrainBackend> {
        model: Model<B>,
        plan: &'a PrivatePlan<'b>,
        device: &'a B::Device,
        progress: &'a mut dyn FnMut(&Progress),
    }
    impl<B: TrainBackend> WithOptimizer<B> for Private<'_, '_, B> {
        type Output = Result<(Model<B>, FitStats), TrainError>;
        fn run<O: Optimizer<Model<B>, B>>(self, opt: O) -> Self::Output {
            private_loop(self.model, opt, self.plan, self.device, self.progress)
        }
    }
    with_optimizer(
        plan.budget.optimizer,
        Private {
            model,
            plan,
            device,
            progress,
        },
    )
}

fn private_loop<B: TrainBackend, O: Optimizer<Model<B>, B>>(
    mut model: Model<B>,
    mut opt: O,
    plan: &PrivatePlan<'_>,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(Model<B>, FitStats), TrainError> {
    let dp = plan.dp;
    let mut sampling = ChaCha8Rng::from_seed(secret_seed(&dp.secret, "dp-sample"));
    let mut noise = ChaCha8Rng::from_seed(secret_seed(&dp.secret, "dp-noise"));
    let expected = dp.sample_rate * plan.train.len() as f64;
    // Poisson sampling: a record is in when a uniform 53-bit draw falls below q.
    let threshold = (dp.sample_rate * (1u64 << 53) as f64) as u64;
    let mut last = f32::NAN;
    // A chain of dense layers: each record's norm without its own backward pass.
    let chain = model.dense_chain();
    for step in 0..dp.steps {
        plan.stop.check(step)?;
        let batch: Vec<u32> = plan
            .train
            .iter()
            .copied()
            .filter(|_| (sampling.next_u64() >> 11) < threshold)
            .collect();
        let (values, loss) = private_gradient(
            &model,
            chain.as_deref(),
            plan.data,
            &batch,
            dp,
            expected,
            &mut noise,
            device,
        );
        if loss.is_finite() {
            last = loss;
        } else if !batch.is_empty() {
            return Err(TrainError::Diverged { step, loss });
        }
        let mut scatter = Scatter::<B> {
            values: &values,
            next: 0,
            grads: GradientsParams::new(),
            device,
        };
        model.visit(&mut scatter);
        model = opt.step(plan.budget.lr_at(step, dp.steps), model, scatter.grads);
        progress(&Progress {
            step: step + 1,
            total_steps: dp.steps,
            epoch: 0,
            loss: loss.is_finite().then_some(loss),
        });
    }
    if !model.is_finite() {
        return Err(TrainError::Diverged {
            step: dp.steps,
            loss: last,
        });
    }
    Ok((
        model,
        FitStats {
            steps: dp.steps,
            final_loss: last,
        },
    ))
}

/// Client-level privacy for a whole update: scaled to L2 norm at most `clip` (over every
/// value), then `N(0, std²)` added to every value (drawn from `seed`). Returns the norm before
/// clipping.
pub fn clip_and_noise(update: &mut Update, clip: f32, std: f64, seed: [u8; 32]) -> f64 {
    let mut rng = ChaCha8Rng::from_seed(seed);
    let values = |t: &crate::model::SavedTensor| -> Vec<f32> {
        t.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let norm = update.norm();
    let scale = (f64::from(clip) / norm.max(1e-12)).min(1.0);
    for t in &mut update.tensors {
        let noisy: Vec<u8> = values(t)
            .into_iter()
            .flat_map(|v| ((f64::from(v) * scale + std * gaussian(&mut rng)) as f32).to_le_bytes())
            .collect();
        t.data = noisy;
    }
    norm
}

mod dense;

#[cfg(test)]
mod tests;
