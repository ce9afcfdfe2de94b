//! Fixtures shared by the trainer's integration tests: digits models, a budget, a CPU NAS run.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use hivemesh_evolve::arch::{Architecture, MlpSpace, Shape};
use hivemesh_trainer::CpuAutodiff;
use hivemesh_trainer::train::{
    Budget, Limits, NasJob, NasResult, OptimizerKind, Schedule, run_nas,
};

/// An MLP for the 8x8 digits: one gene per hidden layer (0 = absent, `i` = `widths[i - 1]`).
pub(crate) fn digits_mlp(widths: &[u32], genome: &[u32]) -> Architecture {
    MlpSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        max_layers: genome.len(),
        widths: widths.to_vec(),
    }
    .decode(genome)
    .expect("valid")
}

/// Adam 3e-3 with cosine decay, batches of 32.
pub(crate) fn budget(epochs: u32) -> Budget {
    Budget {
        epochs,
        max_steps: None,
        batch_size: 32,
        optimizer: OptimizerKind::Adam,
        learning_rate: 3e-3,
        schedule: Schedule::Cosine,
    }
}

/// Runs a NAS job on the CPU backend without limits or progress.
pub(crate) fn run_cpu(job: &NasJob<'_>) -> NasResult {
    run_nas::<CpuAutodiff>(job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect("trains")
}
