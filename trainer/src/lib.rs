//! # hivemesh-trainer
//!
//! Real training for hivemesh jobs, with `burn` 0.21 (CPU `ndarray` backend by default, CUDA
//! behind the `cuda` feature). It knows nothing of peers or messages: it turns a job (an
//! architecture, a loss expression or a distillation shard, a dataset, a budget and a seed)
//! into metrics and artifacts.
//!
//! * [`data`]: datasets (IDX, the embedded 8x8 digits, text corpora), splits, shards, ids;
//! * [`model`]: burn models from evolve's architecture IR, weights from the job's own seeded RNG
//!   (so concurrent jobs stay bit-identical), content-addressed weights artifacts;
//! * [`train`]: the training loop (optimisers, schedules, progress, memory budget) and the NAS job;
//! * [`rounds`]: training one model together in rounds: start states, updates, the outer step;
//! * [`ops`]: the layer operations per backend (fast CPU convolution and pooling with their own
//!   backward passes; burn's kernels on CUDA);
//! * [`export`]: a trained model as JSON IR, safetensors and a generated PyTorch module;
//! * [`backend`]: choosing the device, with a clear error where CUDA is not usable.

pub mod attack;
pub mod backend;
pub mod data;
pub mod distill;
pub mod error;
pub mod export;
mod kernels;
pub mod lm;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod private;
pub mod rounds;
pub mod scatter;
pub mod train;
pub mod zoo;

pub use error::{DataError, StopReason, TrainError};
pub use ops::{ModelBackend, TrainBackend};

/// The trainer's code version: jobs name it, and results of different versions are not
/// compared. The suffix counts changes of the CPU kernels that change result bits (ADR 0012):
/// `k2` = convolutions and dense layers multiply with the `gemm` crate; `k3` = batch norm is
/// one fused op (with its ReLU), a convolution's input gradient is a convolution, and its
/// weight gradient is summed over bands of output rows; `k4` = 3×3 and 5×5 convolutions with
/// at least 8 channels each way run as Winograd F(6×6, 3×3) / F(4×4, 5×5); `k5` = the other
/// 3×3 to 7×7 convolutions (forward and input gradient) run tap by tap with fused
/// multiply-adds on CPUs with FMA (AVX2 or AVX-512: the same bits).
pub const CODE_VERSION: &str = concat!("hivemesh-trainer/", env!("CARGO_PKG_VERSION"), "+k5");

/// The default CPU backend: burn's ndarray backend on `f32` (bit-exact across runs).
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
