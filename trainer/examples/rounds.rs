//! Issue 25's training figures, on one machine, with the very functions a `train` campaign's
//! executors run (`hivemesh_trainer::rounds`): R rounds of S segments of H inner steps, the
//! outer step over the segments' updates as they travel, the final model on the test split.
//! Beside it, in the same run:
//!
//! * **one node**: the same model trained alone on the same samples in the same order (every
//!   round's segments one after another, H steps each: R x S x H steps, the same batches);
//! * **bytes per round**: what the swarm moves (each of N nodes fetches the round's S update
//!   blobs, as measured here) against synchronous data-parallel training of S workers for the
//!   same H steps (a ring all-reduce of the f32 gradient at every step: 2 (S - 1) P 4 bytes in
//!   all per step).
//!
//! ```text
//! cargo run --release -p hivemesh-trainer --example rounds -- --mnist ../shared/data/mnist
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use hivemesh_trainer::CpuAutodiff;
use hivemesh_trainer::data::{Dataset, Splits, digits, load_mnist};
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::rounds::{
    Combine, Encoding, Outer, SegmentJob, TrainState, Update, evaluate_weights, initial_weights,
    outer_step, run_segment, segment_samples, with_feedback,
};
use hivemesh_trainer::train::{Budget, Limits, OptimizerKind, Schedule, sub_seed};
use hivemesh_trainer::zoo::{mlp, small_cnn};

/// Rounds against one node, on MNIST (or the embedded digits).
#[derive(Parser)]
struct Args {
    /// MNIST folder (IDX files); the embedded digits without it.
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// `mlp` (784-128-10 on MNIST) or `cnn` (the zoo's small CNN).
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Rounds (R).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Segments per round (S).
    #[arg(long, default_value_t = 4)]
    segments: u32,
    /// Inner steps (H).
    #[arg(long, default_value_t = 100)]
    inner_steps: u32,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Inner Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Outer (Nesterov) learning rate.
    #[arg(long, default_value_t = 0.7)]
    outer_lr: f32,
    /// Outer momentum.
    #[arg(long, default_value_t = 0.9)]
    outer_momentum: f32,
    /// Top-k: values kept per thousand.
    #[arg(long, default_value_t = 10)]
    per_mille: u16,
    /// Nodes fetching each round's updates (for the bytes figure).
    #[arg(long, default_value_t = 4)]
    nodes: u64,
}

/// One way of training: its final test accuracy, and the update bytes of one round.
struct Outcome {
    correct: u64,
    total: u64,
    update_bytes: u64,
    /// Bytes of one round's residuals (each goes to its segment's next executor only).
    residual_bytes: u64,
}

fn budget(a: &Args) -> Budget {
    Budget {
        epochs: u32::MAX,
        max_steps: Some(u64::from(a.inner_steps)),
        batch_size: a.batch,
        optimizer: OptimizerKind::Adam,
        learning_rate: a.lr,
        schedule: Schedule::Constant,
    }
}

/// The samples of round `r`, segment `s` (each round's seed is fixed by `r` here).
fn segment(a: &Args, splits: &Splits, r: u32, s: u32) -> Vec<u32> {
    let size = a.inner_steps * a.batch;
    segment_samples(&splits.train, u64::from(r) * 7919 + 1, s, size)
}

/// Segment `s` of round `r` trained from `start` (the job seed numbers the segments).
fn train_segment(
    a: &Args,
    data: &Dataset,
    splits: &Splits,
    start: &WeightsFile,
    (r, s): (u32, u32),
) -> Result<WeightsFile> {
    let samples = segment(a, splits, r, s);
    let job = SegmentJob {
        start,
        data,
        samples: &samples,
        evaluate_on: &[],
        budget: &budget(a),
        seed: u64::from(r * a.segments + s),
        private: None,
    };
    let limits = Limits::default();
    Ok(run_segment::<CpuAutodiff>(&job, &limits, &Default::default(), &mut |_| {})?.trained)
}

/// `weights`' test accuracy, and the bytes of one round's updates.
fn tested(weights: &WeightsFile, data: &Dataset, splits: &Splits, bytes: u64) -> Result<Outcome> {
    let device = Default::default();
    let (correct, total) =
        evaluate_weights::<hivemesh_trainer::Cpu>(weights, data, &splits.test, &device)?;
    Ok(Outcome {
        correct,
        total,
        update_bytes: bytes,
        residual_bytes: 0,
    })
}

/// The rounds, as a campaign's executors run them.
fn swarm(
    a: &Args,
    data: &Dataset,
    splits: &Splits,
    start: &WeightsFile,
    outer: Outer,
    (encoding, feedback): (Encoding, bool),
) -> Result<Outcome> {
    let mut state = TrainState::fresh(start.clone());
    let (mut update_bytes, mut residual_bytes) = (0, 0);
    let mut residuals: Vec<Option<Update>> = vec![None; a.segments as usize];
    for r in 0..a.rounds {
        let mut updates = Vec::new();
        (update_bytes, residual_bytes) = (0, 0);
        for s in 0..a.segments {
            let trained = train_segment(a, data, splits, &state.weights, (r, s))?;
            let delta = Update::between(&state.weights, &trained);
            let blob = if feedback {
                let slot = &mut residuals[s as usize];
                let (blob, left) = with_feedback(&delta, slot.as_ref(), encoding)?;
                // The residual travels as f16 to the segment's next executor only.
                let left = left.encode(Encoding::F16);
                residual_bytes += left.len() as u64;
                *slot = Some(Update::decode(&left)?);
                blob
            } else {
                delta.encode(encoding)
            };
            update_bytes += blob.len() as u64;
            updates.push(Update::decode(&blob)?);
        }
        state = outer_step(&state, &updates, outer, Combine::Mean);
    }
    let mut o = tested(&state.weights, data, splits, update_bytes)?;
    o.residual_bytes = residual_bytes;
    Ok(o)
}

/// One model alone over the same segments in the same order.
fn one_node(a: &Args, data: &Dataset, splits: &Splits, start: &WeightsFile) -> Result<Outcome> {
    let mut weights = start.clone();
    for r in 0..a.rounds {
        for s in 0..a.segments {
            weights = train_segment(a, data, splits, &weights, (r, s))?;
        }
    }
    tested(&weights, data, splits, 0)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let data = match &a.mnist {
        Some(dir) => load_mnist(dir).with_context(|| format!("reading {}", dir.display()))?,
        None => digits(),
    };
    let splits = data.default_splits();
    let arch = match a.model.as_str() {
        "mlp" => mlp(data.shape, 128, data.classes),
        "cnn" => small_cnn(data.shape, data.classes),
        other => anyhow::bail!("unknown model {other:?}: mlp or cnn"),
    };
    let start = initial_weights(&arch, sub_seed(1, "train-init"))?;
    let params = arch.params()?;
    println!(
        "{}: {} params, R = {}, S = {}, H = {}, batch {}, Adam lr {}, Nesterov {}/{}; {} test \
         samples",
        a.model,
        params,
        a.rounds,
        a.segments,
        a.inner_steps,
        a.batch,
        a.lr,
        a.outer_lr,
        a.outer_momentum,
        splits.test.len()
    );
    let t = Instant::now();
    let alone = one_node(&a, &data, &splits, &start)?;
    let pct = |o: &Outcome| 100.0 * o.correct as f64 / o.total as f64;
    println!(
        "one node, same samples and order ({} steps): {:.2} % ({:.0} s)",
        a.rounds * a.segments * a.inner_steps,
        pct(&alone),
        t.elapsed().as_secs_f64()
    );
    // Synchronous data parallel, S workers, H steps: a ring all-reduce of f32 gradients per step.
    let sync = 2 * u64::from(a.segments - 1) * params * 4 * u64::from(a.inner_steps);
    let nesterov = Outer::Nesterov {
        lr: a.outer_lr,
        momentum: a.outer_momentum,
    };
    let top = Encoding::TopK {
        per_mille: a.per_mille,
    };
    let ways = [
        ("average, f32", Outer::Average, (Encoding::F32, false)),
        ("Nesterov, f32", nesterov, (Encoding::F32, false)),
        ("Nesterov, f16", nesterov, (Encoding::F16, false)),
        ("Nesterov, top-k", nesterov, (top, false)),
        ("Nesterov, top-k + error feedback", nesterov, (top, true)),
    ];
    for (name, outer, enc) in ways {
        let t = Instant::now();
        let o = swarm(&a, &data, &splits, &start, outer, enc)?;
        let moved = a.nodes * o.update_bytes + o.residual_bytes;
        println!(
            "swarm, {name}: {:.2} % ({:+.2} points vs one node; {:.0} s); bytes per round {} \
             ({} nodes x {} B of updates + {} B of residuals) vs synchronous data parallel {} = \
             {:.0}x less",
            pct(&o),
            pct(&o) - pct(&alone),
            t.elapsed().as_secs_f64(),
            moved,
            a.nodes,
            o.update_bytes,
            o.residual_bytes,
            sync,
            sync as f64 / moved as f64
        );
    }
    Ok(())
}
