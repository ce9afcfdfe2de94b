//! NAS jobs on the embedded digits: learning, bit-exact reproducibility (alone and concurrent),
//! and clear refusals.

use crate::common;

use common::{budget, digits_mlp, run_cpu};
use hivemesh_evolve::arch::{Architecture, MacroSpace, MlpSpace, Shape};
use hivemesh_trainer::data::{Splits, digits};
use hivemesh_trainer::train::{Budget, Limits, NasJob, NasResult, OptimizerKind, run_nas};
use hivemesh_trainer::{CpuAutodiff, TrainError};

fn cnn() -> Architecture {
    macro_cnn(8, 3)
}

/// The largest genome of the macro space on the 8x8 digits with one channel count and kernel.
fn macro_cnn(channels: u32, kernel: u32) -> Architecture {
    let space = MacroSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        phases: 2,
        nodes: 3,
        channels: vec![channels],
        kernels: vec![kernel],
    };
    let genome: Vec<u32> = space.gene_limits().iter().map(|l| l - 1).collect();
    space.decode(&genome).expect("valid")
}

fn run(arch: &Architecture, budget: &Budget, seed: u64, splits: &Splits) -> NasResult {
    let data = digits();
    let job = NasJob {
        arch,
        data: &data,
        splits,
        budget,
        seed,
    };
    run_cpu(&job)
}

#[test]
fn an_mlp_learns_the_digits_and_the_same_spec_gives_identical_results() {
    let splits = digits().default_splits();
    let a = run(&digits_mlp(&[32, 64], &[2, 0]), &budget(8), 1, &splits);
    assert!(a.accuracy() > 0.9, "accuracy {}", a.accuracy());
    assert_eq!(a.total, splits.test.len() as u64);
    assert_eq!(a.params, 64 * 64 + 64 + 64 * 10 + 10);
    let b = run(&digits_mlp(&[32, 64], &[2, 0]), &budget(8), 1, &splits);
    assert_eq!(
        (a.correct, a.weights_hash, a.fit.final_loss.to_bits()),
        (b.correct, b.weights_hash, b.fit.final_loss.to_bits())
    );
    assert_eq!(a.weights.id(), b.weights.id());
    let c = run(&digits_mlp(&[32, 64], &[2, 0]), &budget(8), 2, &splits);
    assert_ne!(
        a.weights_hash, c.weights_hash,
        "another seed, other weights"
    );
}

#[test]
fn a_cnn_with_batch_norm_learns_and_concurrent_jobs_match_solo_runs() {
    let splits = digits().default_splits();
    let b = Budget {
        max_steps: Some(60),
        ..budget(2)
    };
    let solo_cnn = run(&cnn(), &b, 5, &splits);
    let solo_mlp = run(&digits_mlp(&[32, 64], &[2, 0]), &b, 6, &splits);
    assert!(
        solo_cnn.accuracy() > 0.5,
        "accuracy {}",
        solo_cnn.accuracy()
    );
    // Two at once, twice over, in one process: each must equal its solo run bit for bit.
    for _ in 0..2 {
        let (x, y) = std::thread::scope(|s| {
            let x = s.spawn(|| run(&cnn(), &b, 5, &splits));
            let y = s.spawn(|| run(&digits_mlp(&[32, 64], &[2, 0]), &b, 6, &splits));
            (x.join().expect("cnn thread"), y.join().expect("mlp thread"))
        });
        assert_eq!(x.weights_hash, solo_cnn.weights_hash);
        assert_eq!(y.weights_hash, solo_mlp.weights_hash);
        assert_eq!(x.correct, solo_cnn.correct);
    }
}

/// The CPU kernels split work into pieces fixed by the shapes, never by the thread count: a
/// CNN with fused conv + ReLU, one with batch norm and residual adds, one whose 32-channel 5x5
/// convolutions run as Winograd transforms, and an MLP train to the same bits on 1, 2 and 3
/// threads (ADR 0012).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let splits = digits().default_splits();
    let b = Budget {
        max_steps: Some(25),
        ..budget(1)
    };
    let zoo_cnn = hivemesh_trainer::zoo::small_cnn(Shape::Image { c: 1, h: 8, w: 8 }, 10);
    for arch in [
        zoo_cnn,
        cnn(),
        macro_cnn(32, 5),
        digits_mlp(&[32, 64], &[2, 0]),
    ] {
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| run(&arch, &b, 3, &splits))
        };
        let one = on(1);
        for threads in [2, 3] {
            let other = on(threads);
            assert_eq!(
                (other.weights_hash, other.correct),
                (one.weights_hash, one.correct),
                "{threads} threads vs 1"
            );
        }
    }
}

#[test]
fn an_ir_that_does_not_fit_the_data_names_the_layer() {
    let data = digits();
    let splits = data.default_splits();
    let wrong = MlpSpace {
        input: Shape::Image { c: 1, h: 28, w: 28 },
        classes: 10,
        max_layers: 1,
        widths: vec![8],
    }
    .decode(&[1])
    .expect("valid");
    let job = NasJob {
        arch: &wrong,
        data: &data,
        splits: &splits,
        budget: &budget(1),
        seed: 0,
    };
    let err = run_nas::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect_err("input mismatch");
    assert!(
        matches!(err, TrainError::Arch(_)) && err.to_string().contains("node 0"),
        "{err}"
    );

    let twelve = MlpSpace {
        input: data.shape,
        classes: 12,
        max_layers: 1,
        widths: vec![8],
    }
    .decode(&[1])
    .expect("valid");
    let job = NasJob {
        arch: &twelve,
        ..job
    };
    let err = run_nas::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect_err("class mismatch");
    assert!(err.to_string().contains("classes"), "{err}");
}

#[test]
fn a_job_over_the_memory_budget_is_refused_before_training() {
    let data = digits();
    let splits = data.default_splits();
    let arch = cnn();
    let job = NasJob {
        arch: &arch,
        data: &data,
        splits: &splits,
        budget: &budget(1),
        seed: 0,
    };
    let mut steps = 0;
    let err = run_nas::<CpuAutodiff>(
        &job,
        &Limits {
            memory_budget: Some(1 << 20),
            ..Limits::default()
        },
        &Default::default(),
        &mut |_| steps += 1,
    )
    .expect_err("over budget");
    assert!(matches!(err, TrainError::MemoryBudget { .. }), "{err}");
    assert_eq!(steps, 0, "refused before any step");
}

#[test]
fn a_job_over_the_compute_budget_is_refused_before_training() {
    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32, 64], &[2, 0]);
    // The poison budget of issue 22: a billion epochs.
    let b = Budget {
        epochs: 1_000_000_000,
        ..budget(1)
    };
    let job = NasJob {
        arch: &arch,
        data: &data,
        splits: &splits,
        budget: &b,
        seed: 0,
    };
    let cost = job.cost_flops().expect("cost");
    let forward = arch.flops().expect("flops");
    assert!(
        cost > forward * 3 * 1_000_000_000,
        "cost {cost} counts every epoch"
    );
    let mut steps = 0;
    let limits = Limits {
        flops_budget: Some(1 << 40),
        ..Limits::default()
    };
    let err = run_nas::<CpuAutodiff>(&job, &limits, &Default::default(), &mut |_| steps += 1)
        .expect_err("over budget");
    assert!(
        matches!(err, TrainError::CostBudget { needed, .. } if needed == cost),
        "{err}"
    );
    assert_eq!(steps, 0, "refused before any step");
}

#[test]
fn a_run_past_its_deadline_or_told_to_stop_ends_within_a_step() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use hivemesh_trainer::StopReason;
    use hivemesh_trainer::train::Stop;

    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32, 64], &[2, 0]);
    let b = Budget {
        epochs: 1_000_000,
        ..budget(1)
    };
    let job = NasJob {
        arch: &arch,
        data: &data,
        splits: &splits,
        budget: &b,
        seed: 0,
    };
    // A deadline already passed: the run stops before its first step.
    let limits = Limits {
        stop: Stop::after(Duration::ZERO, None),
        ..Limits::default()
    };
    let err = run_nas::<CpuAutodiff>(&job, &limits, &Default::default(), &mut |_| {})
        .expect_err("stopped");
    assert!(
        matches!(
            err,
            TrainError::Stopped {
                step: 0,
                reason: StopReason::TimeLimit { .. }
            }
        ),
        "{err}"
    );
    // A flag raised by another party after step 5: the run ends at step 5.
    let flag = Arc::new(AtomicBool::new(false));
    let limits = Limits {
        stop: Stop {
            deadline: None,
            flag: Some(Arc::clone(&flag)),
        },
        ..Limits::default()
    };
    let err = run_nas::<CpuAutodiff>(&job, &limits, &Default::default(), &mut |p| {
        if p.step == 5 {
            flag.store(true, Ordering::Relaxed);
        }
    })
    .expect_err("stopped");
    assert!(
        matches!(
            err,
            TrainError::Stopped {
                step: 5,
                reason: StopReason::Shutdown
            }
        ),
        "{err}"
    );
}

#[test]
fn a_diverging_run_is_a_failure_not_a_panic() {
    let splits = digits().default_splits();
    let data = digits();
    let arch = digits_mlp(&[32, 64], &[2, 0]);
    let b = Budget {
        learning_rate: 1e9,
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        ..budget(3)
    };
    let job = NasJob {
        arch: &arch,
        data: &data,
        splits: &splits,
        budget: &b,
        seed: 0,
    };
    let err = run_nas::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
        .expect_err("diverges");
    assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
}

#[test]
fn progress_is_reported_every_step() {
    let data = digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32, 64], &[2, 0]);
    let b = Budget {
        max_steps: Some(25),
        ..budget(1)
    };
    let job = NasJob {
        arch: &arch,
        data: &data,
        splits: &splits,
        budget: &b,
        seed: 0,
    };
    let mut seen = Vec::new();
    run_nas::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |p| {
        seen.push(*p)
    })
    .expect("trains");
    assert_eq!(seen.len(), 25);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, p)| p.step == i as u64 + 1 && p.total_steps == 25)
    );
    assert!(seen[9].loss.is_some() && seen[24].loss.is_some() && seen[0].loss.is_none());
}
