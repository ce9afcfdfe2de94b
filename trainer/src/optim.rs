//! Adam with one pass over each parameter tensor.
//!
//! burn's `Adam` updates a parameter with about ten tensor operations, each a full pass over
//! the tensor and each single-threaded on the CPU backend; on the small models jobs train
//! that was a fifth of a step. [`FusedAdam`] does the same arithmetic, in the same order and
//! in `f32`, per element in one pass, in fixed pieces spread over the rayon pool: its results
//! are bit-identical to burn's `Adam` (ε = 1e-8, no weight decay) — tested — on every
//! backend, and the backend decides how ([`ModelBackend::adam_update`]).

use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::Tensor;

use crate::ops::ModelBackend;

/// The constants of one Adam update of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// `√(1 − β₂ᵗ) / (1 − β₁ᵗ)`: the bias corrections folded into one factor.
    pub combined: f32,
    /// `ε · √(1 − β₂ᵗ)`.
    pub epsilon: f32,
    /// The learning rate.
    pub lr: f32,
}

impl AdamStep {
    /// One element: `(parameter, m₁, m₂)` after the update, given the gradient and the moments
    /// before it (`None` on the first step). The expression order is burn's.
    #[inline]
    pub fn apply(&self, p: f32, g: f32, m: Option<(f32, f32)>) -> (f32, f32, f32) {
        let (m1, m2) = match m {
            Some((m1, m2)) => (
                m1 * self.beta_1 + g * (1.0 - self.beta_1),
                m2 * self.beta_2 + (g * g) * (1.0 - self.beta_2),
            ),
            None => (g * (1.0 - self.beta_1), (g * g) * (1.0 - self.beta_2)),
        };
        let update = (m1 * self.combined) / (m2.sqrt() + self.epsilon);
        (p - update * self.lr, m1, m2)
    }
}

/// Adam (β = 0.9, 0.999; ε = 1e-8 as in PyTorch) as a burn optimiser; its state is burn's own
/// [`AdamState`] record.
#[derive(Debug, Clone, Copy)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
}

impl Default for FusedAdam {
    fn default() -> Self {
        FusedAdam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
        }
    }
}

impl<B: ModelBackend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, None),
        };
        let t = i32::try_from(time).unwrap_or(i32::MAX);
        let bias_correction2_sqrt = (1.0 - self.beta_2.powi(t)).sqrt();
        let step = AdamStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            combined: bias_correction2_sqrt / (1.0 - self.beta_1.powi(t)),
            epsilon: self.epsilon * bias_correction2_sqrt,
            lr: lr as f32,
        };
        let (tensor, moment_1, moment_2) = B::adam_update(tensor, grad, moments, &step);
        let momentum = AdaptiveMomentumState {
            time,
            moment_1,
            moment_2,
            max_moment_2: None,
        };
        (tensor, Some(AdamState { momentum }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum.moment_1 = state.momentum.moment_1.to_device(device);
        state.momentum.moment_2 = state.momentum.moment_2.to_device(device);
        state
    }
}

/// [`ModelBackend::adam_update`] in burn tensor operations (GPU backends).
pub(crate) fn adam_update_tensors<B: burn::prelude::Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    s: &AdamStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let (m1, m2) = match moments {
        Some((m1, m2)) => (
            m1.mul_scalar(s.beta_1)
                .add(grad.clone().mul_scalar(1.0 - s.beta_1)),
            m2.mul_scalar(s.beta_2)
                .add(grad.square().mul_scalar(1.0 - s.beta_2)),
        ),
        None => (
            grad.clone().mul_scalar(1.0 - s.beta_1),
            grad.square().mul_scalar(1.0 - s.beta_2),
        ),
    };
    let update = m1
        .clone()
        .mul_scalar(s.combined)
        .div(m2.clone().sqrt().add_scalar(s.epsilon));
    (param - update.mul_scalar(s.lr), m1, m2)
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, Param};
    use burn::optim::adaptor::OptimizerAdaptor;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::CpuAutodiff;

    #[derive(Module, Debug)]
    struct Two<B: burn::prelude::Backend> {
        a: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
    }

    fn values(n: usize, mul: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(mul) % 101) as f32 - 50.0) / 37.0)
            .collect()
    }

    fn bits<const D: usize>(t: &Tensor<CpuAutodiff, D>) -> Vec<u32> {
        let v = t.clone().inner().into_data().to_vec::<f32>();
        v.unwrap_or_default().iter().map(|x| x.to_bits()).collect()
    }

    /// Five steps of a loss whose gradients vary per element and per step: the fused update
    /// and burn's Adam end on the same bits.
    #[test]
    fn the_fused_update_gives_burns_adam_bits() {
        let device = Default::default();
        let fresh = || Two::<CpuAutodiff> {
            a: Param::from_data(TensorData::new(values(3000, 7), [30, 100]), &device),
            b: Param::from_data(TensorData::new(values(100, 11), [100]), &device),
        };
        let mix = Tensor::<CpuAutodiff, 2>::from_data(
            TensorData::new(values(3000, 13), [30, 100]),
            &device,
        );
        fn train<O: Optimizer<Two<CpuAutodiff>, CpuAutodiff>>(
            mut m: Two<CpuAutodiff>,
            mut opt: O,
            mix: &Tensor<CpuAutodiff, 2>,
        ) -> Two<CpuAutodiff> {
            for step in 0..5 {
                let y = (m.a.val() * mix.clone()).tanh() + m.b.val().unsqueeze::<2>();
                let loss = (y.clone() * y).sum();
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                m = opt.step(1e-2 / (1.0 + step as f64), m, grads);
            }
            m
        }
        let ours = train(fresh(), OptimizerAdaptor::from(FusedAdam::default()), &mix);
        let burns = train(fresh(), AdamConfig::new().with_epsilon(1e-8).init(), &mix);
        assert_eq!(bits(&ours.a.val()), bits(&burns.a.val()));
        assert_eq!(bits(&ours.b.val()), bits(&burns.b.val()));
        assert_ne!(
            bits(&ours.a.val()),
            bits(&fresh().a.val()),
            "the weights moved"
        );
    }
}
