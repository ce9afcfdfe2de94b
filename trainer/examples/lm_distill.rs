//! Issue 27's distillation figure: does a student language model learn more from a teacher's
//! top-k next-token distributions than from the text alone, at equal steps?
//!
//! The teacher is a model written by `hivemesh model train-lm`; it labels the first `--windows`
//! windows of the corpus's training stream (`hivemesh_trainer::lm::distill`, the shard format a
//! text-distillation job would publish, at the largest k asked). Students of the same shape
//! (`--layers`, `--width`) then train on the same windows for the same steps: one on the hard
//! labels (the next characters) and one per (k, temperature) on the KD loss (alpha 0.5); each
//! prints its validation loss (nats per character).
//!
//! ```text
//! cargo run --release -p hivemesh-trainer --example lm_distill -- --teacher lm.safetensors \
//!     --corpus ../shared/data/shakespeare/plays.txt.gz
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use hivemesh_trainer::data::TextCorpus;
use hivemesh_trainer::distill::KdConfig;
use hivemesh_trainer::lm::distill::{TextKd, label_text, train_student};
use hivemesh_trainer::lm::train::split;
use hivemesh_trainer::lm::{LmConfig, LmTrainConfig, load_lm};
use hivemesh_trainer::{Cpu, CpuAutodiff};

/// Soft against hard labels for a student language model.
#[derive(Parser)]
struct Args {
    /// The teacher (`hivemesh model train-lm`'s file, characters only).
    #[arg(long)]
    teacher: PathBuf,
    /// The corpus it was trained on.
    #[arg(long)]
    corpus: PathBuf,
    /// Windows labelled (and trained on).
    #[arg(long, default_value_t = 4000)]
    windows: u64,
    /// Student steps (batch 12).
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Student blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Student width.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// The k values to try (comma-separated).
    #[arg(long, default_value = "1,5,20")]
    ks: String,
    /// The temperatures to try (comma-separated).
    #[arg(long, default_value = "1,2")]
    temperatures: String,
    /// The students' seed (initial weights and the windows each step draws).
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{x:?} in {s:?}"))
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bytes = std::fs::read(&a.teacher).with_context(|| a.teacher.display().to_string())?;
    let (teacher, tokenizer) = load_lm::<Cpu>(&bytes, &Default::default())?;
    anyhow::ensure!(
        tokenizer.bpe.is_none(),
        "a character-level teacher is needed"
    );
    let corpus = TextCorpus::load(&a.corpus)?;
    anyhow::ensure!(
        corpus.vocab == tokenizer.chars,
        "the teacher was trained on another corpus"
    );
    let (train, val) = split(&corpus.tokens);
    let ks: Vec<usize> = list(&a.ks)?;
    let temps: Vec<f32> = list(&a.temperatures)?;
    let kmax = ks.iter().copied().max().unwrap_or(1) as u16;
    let started = Instant::now();
    let labels = label_text(&teacher, train, 0..a.windows, kmax, 32)?;
    eprintln!(
        "labelled {} windows of {} at k = {kmax} in {:.0} s ({} bytes)",
        labels.windows(),
        labels.t,
        started.elapsed().as_secs_f64(),
        labels.to_bytes().len()
    );
    let tc = teacher.config();
    let c = LmConfig {
        layers: a.layers,
        width: a.width,
        heads: 4.min(a.width),
        ..tc
    };
    let cfg = LmTrainConfig {
        steps: a.steps,
        warmup: (a.steps / 20).max(1),
        eval_every: 0,
        seed: a.seed,
        ..LmTrainConfig::nanogpt()
    };
    println!(
        "teacher {} parameters; student {} parameters, {} steps of {} windows",
        tc.params(),
        c.params(),
        cfg.steps,
        cfg.batch
    );
    let mut runs = vec![(
        "hard labels".to_string(),
        TextKd {
            k: 1,
            kd: KdConfig {
                temperature: 1.0,
                alpha: 0.0,
            },
        },
    )];
    for &k in &ks {
        for &t in &temps {
            let kd = KdConfig {
                temperature: t,
                alpha: 0.5,
            };
            runs.push((format!("soft k = {k}, T = {t}"), TextKd { k, kd }));
        }
    }
    let d = Default::default();
    for (name, kd) in runs {
        let t0 = Instant::now();
        let (_, run) = train_student::<CpuAutodiff>(&c, &cfg, train, &labels, kd, val, &d)?;
        println!(
            "{name}: validation {:.4} nats/char ({:.0} s)",
            run.val_loss[0].1,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
