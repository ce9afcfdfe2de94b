//! Loss jobs: a GP expression (evolve's [`Expr`]) compiled to burn tensor ops and used as the
//! training loss of a fixed reference model.
//!
//! [`gp_loss`] follows [`Expr::evaluate`]'s semantics exactly (protected operations, constant
//! broadcasting, sum over classes, mean over the batch), with autodiff through every operation;
//! a test checks both agree on random expressions.
//!
//! # Tuning the constants by gradient descent
//! An expression's constants are tuned before the main run, on the validation split, by
//! descending the gradient of the validation cross-entropy *after one training step* with
//! respect to the constants (the one-step-unrolled hypergradient of DARTS, Liu et al. 2019,
//! <https://arxiv.org/abs/1806.09055>, eq. 7-8). For training step `θ' = θ − η∇θ L(θ, c)`,
//! `d CE_val(θ') / dc = −η ∂²L/∂c∂θ · ∇θ' CE_val(θ')`, and the mixed second derivative is
//! taken by a central difference along `v = ∇θ' CE_val(θ')`:
//! `≈ −η (∂L(θ + εv, c)/∂c − ∂L(θ − εv, c)/∂c) / 2ε`, `ε = 0.01 / ‖v‖`. Only first-order
//! autodiff is needed (burn has no double backward). Each tuning step also advances a throwaway
//! copy of the model, so the constants are tuned along a training trajectory; the main run then
//! starts again from the job's initial weights with the tuned constants held fixed.
//! Non-finite values anywhere end the job as [`TrainError::Diverged`].

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::Backend;
use burn::tensor::activation::{relu, sigmoid, softmax, tanh};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use hivemesh_evolve::arch::Architecture;
use hivemesh_evolve::gp::{EPS, Expr, Op};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::data::{Dataset, Splits, shuffle};
use crate::error::TrainError;
use crate::model::Model;
use crate::ops::TrainBackend;
use crate::train::{
    Budget, FitStats, Limits, NasJob, Progress, cross_entropy, input_batch, one_hot, sub_seed,
    train_and_test,
};

/// A value on the evaluation stack.
enum Val<B: Backend> {
    /// batch × classes.
    Elem(Tensor<B, 2>),
    /// batch.
    Sample(Tensor<B, 1>),
    /// one value, `[1]`.
    Scalar(Tensor<B, 1>),
    /// A constant-only subtree, `[1]`, broadcast where used.
    Const(Tensor<B, 1>),
}

impl<B: Backend> Val<B> {
    fn map(self, f: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>) -> Val<B> {
        // Element-wise maps work on any rank; lift rank-1 values to rank 2 and back.
        match self {
            Val::Elem(t) => Val::Elem(f(t)),
            Val::Sample(t) => Val::Sample(f(t.unsqueeze_dim(1)).squeeze_dim(1)),
            Val::Scalar(t) => Val::Scalar(f(t.unsqueeze_dim(1)).squeeze_dim(1)),
            Val::Const(t) => Val::Const(f(t.unsqueeze_dim(1)).squeeze_dim(1)),
        }
    }
}

fn unary<B: Backend>(op: Op, x: Tensor<B, 2>) -> Tensor<B, 2> {
    match op {
        Op::Neg => x.neg(),
        Op::Log => x.abs().add_scalar(EPS).log(),
        Op::Exp => x.clamp_max(20.0).exp(),
        Op::Sqrt => x.abs().sqrt(),
        Op::Square => x.clone() * x,
        Op::Sigmoid => sigmoid(x),
        Op::Tanh => tanh(x),
        Op::Relu => relu(x),
        Op::Sin => x.sin(),
        Op::Cos => x.cos(),
        _ => x,
    }
}

fn binary<B: Backend>(op: Op, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => {
            // b + ε for b ≥ 0, b − ε otherwise.
            let sign = b
                .clone()
                .greater_equal_elem(0.0)
                .float()
                .mul_scalar(2.0)
                .sub_scalar(1.0);
            a / (b + sign.mul_scalar(EPS))
        }
        Op::Min => a.min_pair(b),
        Op::Max => a.max_pair(b),
        _ => a,
    }
}

/// The loss value `[1]` of `expr` on `logits` and one-hot `targets` (`[batch, classes]`), with
/// the constants taken from `constants` (`[n]`, may require gradients).
pub fn gp_loss<B: Backend>(
    expr: &Expr,
    constants: &Tensor<B, 1>,
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
) -> Result<Tensor<B, 1>, TrainError> {
    expr.check().map_err(|e| TrainError::Loss(e.to_string()))?;
    let [b, c] = logits.dims();
    let probs = softmax(logits.clone(), 1);
    let malformed = || TrainError::Loss("malformed expression".into());
    let mut stack: Vec<Val<B>> = Vec::new();
    for op in expr.genes.iter().rev() {
        let v = match *op {
            Op::Target => Val::Elem(targets.clone()),
            Op::Logit => Val::Elem(logits.clone()),
            Op::Prob => Val::Elem(probs.clone()),
            Op::Const(s) => {
                let s = usize::from(s);
                Val::Const(constants.clone().narrow(0, s, 1))
            }
            Op::SumClasses => match stack.pop().ok_or_else(malformed)? {
                Val::Elem(t) => Val::Sample(t.sum_dim(1).squeeze_dim(1)),
                Val::Const(t) => Val::Sample(t.mul_scalar(c as f32).repeat_dim(0, b)),
                _ => return Err(malformed()),
            },
            Op::MeanBatch => match stack.pop().ok_or_else(malformed)? {
                Val::Sample(t) => Val::Scalar(t.mean()),
                // The mean of a constant broadcast over the batch is the constant.
                Val::Const(t) => Val::Scalar(t),
                _ => return Err(malformed()),
            },
            op if op.arity() == 1 => stack.pop().ok_or_else(malformed)?.map(|t| unary(op, t)),
            op => {
                let x = stack.pop().ok_or_else(malformed)?;
                let y = stack.pop().ok_or_else(malformed)?;
                combine(op, x, y, b, c)?
            }
        };
        stack.push(v);
    }
    match stack.pop() {
        Some(Val::Scalar(t) | Val::Const(t)) if stack.is_empty() => Ok(t),
        _ => Err(malformed()),
    }
}

/// A binary operation with constant broadcasting (`x` is the first operand).
fn combine<B: Backend>(
    op: Op,
    x: Val<B>,
    y: Val<B>,
    b: usize,
    c: usize,
) -> Result<Val<B>, TrainError> {
    let as2 = |t: Tensor<B, 1>| t.unsqueeze_dim::<2>(1);
    Ok(match (x, y) {
        (Val::Elem(p), Val::Elem(q)) => Val::Elem(binary(op, p, q)),
        (Val::Elem(p), Val::Const(k)) => Val::Elem(binary(op, p, as2(k).expand([b, c]))),
        (Val::Const(k), Val::Elem(q)) => Val::Elem(binary(op, as2(k).expand([b, c]), q)),
        (Val::Sample(p), Val::Sample(q)) => Val::Sample(binary(op, as2(p), as2(q)).squeeze_dim(1)),
        (Val::Sample(p), Val::Const(k)) => {
            Val::Sample(binary(op, as2(p), as2(k).expand([b, 1])).squeeze_dim(1))
        }
        (Val::Const(k), Val::Sample(q)) => {
            Val::Sample(binary(op, as2(k).expand([b, 1]), as2(q)).squeeze_dim(1))
        }
        (Val::Scalar(p), Val::Scalar(q) | Val::Const(q)) => {
            Val::Scalar(binary(op, as2(p), as2(q)).squeeze_dim(1))
        }
        (Val::Const(p), Val::Scalar(q)) => Val::Scalar(binary(op, as2(p), as2(q)).squeeze_dim(1)),
        (Val::Const(p), Val::Const(q)) => Val::Const(binary(op, as2(p), as2(q)).squeeze_dim(1)),
        _ => {
            return Err(TrainError::Loss(
                "operands of different kinds (the type check should have caught this)".into(),
            ));
        }
    })
}

/// A loss job: train the reference model with a candidate loss, report test accuracy.
#[derive(Debug, Clone)]
pub struct LossJob<'a> {
    /// The fixed reference model.
    pub arch: &'a Architecture,
    /// The candidate loss.
    pub expr: &'a Expr,
    /// The data.
    pub data: &'a Dataset,
    /// Splits: constants are tuned on validation, the model trained on train, test reported.
    pub splits: &'a Splits,
    /// The main run's budget.
    pub budget: &'a Budget,
    /// Hypergradient steps tuning the constants (0: keep them).
    pub tuning_steps: u32,
    /// The job's seed.
    pub seed: u64,
}

impl LossJob<'_> {
    /// The training run it shares with a NAS job (same model, data, budget and seed).
    fn run(&self) -> NasJob<'_> {
        NasJob {
            arch: self.arch,
            data: self.data,
            splits: self.splits,
            budget: self.budget,
            seed: self.seed,
        }
    }
}

/// What a loss job reports.
#[derive(Debug, Clone, PartialEq)]
pub struct LossResult {
    /// Correct test predictions of the reference model trained with the loss.
    pub correct: u64,
    /// Test samples.
    pub total: u64,
    /// The constants after tuning.
    pub constants: Vec<f32>,
    /// Main-run statistics.
    pub fit: FitStats,
    /// blake3 of the trained weights.
    pub weights_hash: [u8; 32],
}

impl LossResult {
    /// Test accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Adds `scale · g` to every parameter that has a gradient in `grads`.
struct Perturb<'a> {
    grads: &'a GradientsParams,
    scale: f32,
}

impl<B: Backend> ModuleMapper<B> for Perturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.grads.get::<B, D>(id) {
            Some(g) => tensor + g.mul_scalar(self.scale),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Euclidean norm of all gradients in `grads` for `model`'s parameters.
fn grad_norm<B: TrainBackend>(model: &Model<B>, grads: &GradientsParams) -> f32 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Norm<'_> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if let Some(g) = self.grads.get::<B, D>(p.id) {
                let s: f32 = (g.clone() * g).sum().into_scalar().elem();
                self.sum += f64::from(s);
            }
            p
        }
    }
    let mut n = Norm { grads, sum: 0.0 };
    let _ = model.valid().map(&mut n);
    n.sum.sqrt() as f32
}

/// Tunes `constants` by the one-step hypergradient (see the module docs).
fn tune_constants<B: TrainBackend>(
    job: &LossJob<'_>,
    mut model: Model<B>,
    device: &B::Device,
) -> Result<Vec<f32>, TrainError> {
    let mut c: Vec<f32> = job.expr.constants.clone();
    if c.is_empty() || job.tuning_steps == 0 {
        return Ok(c);
    }
    let eta = f64::from(job.budget.learning_rate);
    let classes = job.data.classes as usize;
    let bs = job.budget.batch_size as usize;
    let mut rng = ChaCha8Rng::from_seed(sub_seed(job.seed, "tuning order"));
    let (mut train, mut val) = (job.splits.train.clone(), job.splits.validation.clone());
    if val.is_empty() {
        return Err(TrainError::Options(
            "constant tuning needs a validation split".into(),
        ));
    }
    shuffle(&mut train, &mut rng);
    shuffle(&mut val, &mut rng);
    let mut sgd = SgdConfig::new().init();
    // RMSprop on the constants (host side: a handful of numbers).
    let (alpha, decay) = (0.02f32, 0.9f32);
    let mut sq = vec![0f32; c.len()];
    for step in 0..job.tuning_steps as usize {
        let tb = cycle(&train, step, bs);
        let vb = cycle(&val, step, bs);
        let (xt, yt) = (
            input_batch::<B>(job.data, &tb, device),
            one_hot::<B>(&job.data.targets(&tb), classes, device),
        );
        let fixed = Tensor::<B, 1>::from_data(TensorData::new(c.clone(), [c.len()]), device);
        // θ' = θ − η ∇θ L(θ, c)
        let loss = gp_loss(job.expr, &fixed, model.forward(xt.clone()), yt.clone())?;
        check_finite(&loss, step)?;
        let g = GradientsParams::from_grads(loss.backward(), &model);
        let stepped = sgd.step(eta, model.clone(), g);
        // v = ∇θ' CE_val(θ')
        let xv = input_batch::<B>(job.data, &vb, device);
        let yv = one_hot::<B>(&job.data.targets(&vb), classes, device);
        let ce = cross_entropy(stepped.forward(xv), yv);
        check_finite(&ce, step)?;
        let v = GradientsParams::from_grads(ce.backward(), &stepped);
        let norm = grad_norm(&stepped, &v);
        if !norm.is_finite() {
            return Err(TrainError::Diverged {
                step: step as u64,
                loss: norm,
            });
        }
        if norm > 0.0 {
            let eps = 0.01 / norm;
            let inner = model.valid();
            let plus = inner.clone().map(&mut Perturb {
                grads: &v,
                scale: eps,
            });
            let minus = inner.map(&mut Perturb {
                grads: &v,
                scale: -eps,
            });
            let xi = xt.clone().inner();
            let lp = Tensor::<B, 2>::from_inner(plus.forward(xi.clone()));
            let lm = Tensor::<B, 2>::from_inner(minus.forward(xi));
            let consts = Tensor::<B, 1>::from_data(TensorData::new(c.clone(), [c.len()]), device)
                .require_grad();
            let diff =
                gp_loss(job.expr, &consts, lp, yt.clone())? - gp_loss(job.expr, &consts, lm, yt)?;
            let grads = diff.backward();
            let dc: Vec<f32> = consts
                .grad(&grads)
                .map(|t| t.into_data().to_vec().unwrap_or_default())
                .unwrap_or_else(|| vec![0.0; c.len()]);
            for (k, d) in dc.iter().enumerate() {
                let hyper = -(eta as f32) * d / (2.0 * eps);
                if !hyper.is_finite() {
                    return Err(TrainError::Diverged {
                        step: step as u64,
                        loss: hyper,
                    });
                }
                sq[k] = decay * sq[k] + (1.0 - decay) * hyper * hyper;
                c[k] -= alpha * hyper / (sq[k].sqrt() + 1e-8);
            }
        }
        model = stepped;
    }
    Ok(c)
}

fn cycle(v: &[u32], step: usize, bs: usize) -> Vec<u32> {
    (0..bs.min(v.len()))
        .map(|k| v[(step * bs + k) % v.len()])
        .collect()
}

fn check_finite<B: Backend>(loss: &Tensor<B, 1>, step: usize) -> Result<(), TrainError> {
    let l: f32 = loss.clone().into_scalar().elem();
    if l.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Diverged {
            step: step as u64,
            loss: l,
        })
    }
}

/// Runs a loss job on backend `B`: tune constants, train the reference model from the job's
/// initial weights with the tuned loss, evaluate on the test split.
pub fn run_loss<B: TrainBackend>(
    job: &LossJob<'_>,
    limits: &Limits,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<LossResult, TrainError> {
    let run = job.run();
    run.check(limits)?;
    job.expr
        .check()
        .map_err(|e| TrainError::Loss(e.to_string()))?;
    let init = Model::<B>::new(job.arch, sub_seed(job.seed, "init"), device)?;
    let constants = tune_constants(job, init, device)?;
    let fixed = Tensor::<B, 1>::from_data(
        TensorData::new(constants.clone(), [constants.len()]),
        device,
    );
    let classes = job.data.classes as usize;
    let data = job.data;
    let mut failure = None;
    let mut loss = |logits: Tensor<B, 2>, batch: &[u32]| {
        let y = one_hot::<B>(&data.targets(batch), classes, device);
        match gp_loss(job.expr, &fixed, logits, y) {
            Ok(l) => l,
            Err(e) => {
                failure.get_or_insert(e);
                Tensor::from_data(TensorData::new(vec![f32::NAN], [1]), device)
            }
        }
    };
    let tested = train_and_test(&run, &limits.stop, device, &mut loss, progress);
    if let Some(e) = failure {
        return Err(e);
    }
    let t = tested?;
    Ok(LossResult {
        correct: t.correct,
        total: t.total,
        constants,
        fit: t.fit,
        weights_hash: t.model.weights_hash(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use hivemesh_evolve::gp::{Batch, GpConfig, ramped_half_and_half};

    #[test]
    fn compiled_losses_equal_evolves_reference_evaluator() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let d = Default::default();
        let (b, c) = (5usize, 4usize);
        let logits: Vec<f32> = (0..b * c)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let mut target = vec![0f32; b * c];
        for i in 0..b {
            target[i * c + (i * 3) % c] = 1.0;
        }
        let exprs = ramped_half_and_half(300, &GpConfig::default(), &mut rng);
        let mut compared = 0;
        for e in exprs.iter().chain([&Expr::cross_entropy(), &Expr::mse()]) {
            let want = e
                .evaluate(Batch {
                    target: &target,
                    logits: &logits,
                    classes: c,
                })
                .expect("valid");
            let consts = Tensor::<Cpu, 1>::from_data(
                TensorData::new(e.constants.clone(), [e.constants.len()]),
                &d,
            );
            let got: f32 = gp_loss(
                e,
                &consts,
                Tensor::from_data(TensorData::new(logits.clone(), [b, c]), &d),
                Tensor::from_data(TensorData::new(target.clone(), [b, c]), &d),
            )
            .expect("compiles")
            .into_scalar()
            .elem();
            if want.is_finite() && want.abs() < 1e6 {
                let tol = 1e-4 * want.abs().max(1.0);
                assert!(
                    (got - want).abs() <= tol,
                    "{e:?}: burn {got} vs reference {want}"
                );
                compared += 1;
            } else {
                assert!(
                    !got.is_finite() || got.abs() >= 1e5,
                    "{e:?}: {got} vs {want}"
                );
            }
        }
        assert!(
            compared > 250,
            "only {compared} finite expressions compared"
        );
    }
}
