//! Loss jobs: a GP expression trains the reference model; constants are tuned by the
//! hypergradient; broken losses fail cleanly.

use crate::common;

use common::digits_mlp;
use hivemesh_evolve::gp::{Expr, Op};
use hivemesh_trainer::data::digits;
use hivemesh_trainer::loss::{LossJob, run_loss};
use hivemesh_trainer::train::{Budget, Limits, NasJob, OptimizerKind, Schedule, run_nas};
use hivemesh_trainer::{CpuAutodiff, TrainError};

fn budget() -> Budget {
    Budget {
        epochs: 3,
        max_steps: None,
        batch_size: 32,
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        learning_rate: 0.05,
        schedule: Schedule::Constant,
    }
}

/// `mean(c0 · −sum(y · log p))`: cross-entropy scaled by a tunable constant.
fn scaled_ce(c0: f32) -> Expr {
    Expr {
        genes: vec![
            Op::MeanBatch,
            Op::Mul,
            Op::Const(0),
            Op::Neg,
            Op::SumClasses,
            Op::Mul,
            Op::Target,
            Op::Log,
            Op::Prob,
        ],
        constants: vec![c0],
    }
}

#[test]
fn the_cross_entropy_expression_trains_as_well_as_built_in_cross_entropy() {
    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32], &[1]);
    let b = budget();
    let ce = Expr::cross_entropy();
    let job = LossJob {
        arch: &arch,
        expr: &ce,
        data: &data,
        splits: &splits,
        budget: &b,
        tuning_steps: 0,
        seed: 3,
    };
    let gp = run_loss::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect("trains");
    let nas = run_nas::<CpuAutodiff>(
        &NasJob {
            arch: &arch,
            data: &data,
            splits: &splits,
            budget: &b,
            seed: 3,
        },
        &Limits::default(),
        &Default::default(),
        &mut |_| {},
    )
    .expect("trains");
    assert!(gp.accuracy() > 0.9, "GP cross-entropy: {}", gp.accuracy());
    assert!(
        (gp.accuracy() - nas.accuracy()).abs() < 0.03,
        "{} vs {}",
        gp.accuracy(),
        nas.accuracy()
    );
}

#[test]
fn tuning_raises_a_too_small_loss_scale_and_is_deterministic() {
    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32], &[1]);
    let b = Budget {
        epochs: 1,
        ..budget()
    };
    let expr = scaled_ce(0.02);
    let job = LossJob {
        arch: &arch,
        expr: &expr,
        data: &data,
        splits: &splits,
        budget: &b,
        tuning_steps: 40,
        seed: 4,
    };
    let run = || {
        run_loss::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
            .expect("trains")
    };
    let tuned = run();
    assert!(
        tuned.constants[0] > 0.1,
        "a 0.02-scaled loss barely trains; tuning should raise it: {:?}",
        tuned.constants
    );
    let untuned = run_loss::<CpuAutodiff>(
        &LossJob {
            tuning_steps: 0,
            ..job.clone()
        },
        &Limits::default(),
        &Default::default(),
        &mut |_| {},
    )
    .expect("trains");
    assert!(
        tuned.accuracy() > untuned.accuracy(),
        "tuned {} vs untuned {}",
        tuned.accuracy(),
        untuned.accuracy()
    );
    let again = run();
    assert_eq!(
        (tuned.constants.clone(), tuned.weights_hash),
        (again.constants, again.weights_hash)
    );
}

#[test]
fn an_overflowing_loss_is_a_failed_job_not_a_panic() {
    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32], &[1]);
    let b = budget();
    // mean(sum(square(square(square(exp(z · 20)))))) overflows to infinity.
    let expr = Expr {
        genes: vec![
            Op::MeanBatch,
            Op::SumClasses,
            Op::Square,
            Op::Square,
            Op::Square,
            Op::Square,
            Op::Exp,
            Op::Mul,
            Op::Logit,
            Op::Const(0),
        ],
        constants: vec![20.0],
    };
    for tuning_steps in [0, 5] {
        let job = LossJob {
            arch: &arch,
            expr: &expr,
            data: &data,
            splits: &splits,
            budget: &b,
            tuning_steps,
            seed: 1,
        };
        let err =
            run_loss::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
                .expect_err("overflows");
        assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
    }
    // An ill-typed expression is refused with the reason.
    let bad = Expr {
        genes: vec![Op::SumClasses, Op::Logit],
        constants: vec![],
    };
    let job = LossJob {
        arch: &arch,
        expr: &bad,
        data: &data,
        splits: &splits,
        budget: &b,
        tuning_steps: 0,
        seed: 1,
    };
    let err = run_loss::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect_err("ill-typed");
    assert!(matches!(err, TrainError::Loss(_)), "{err}");
}
