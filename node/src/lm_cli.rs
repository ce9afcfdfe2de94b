//! `hivemesh model …`: train a small language model on a text corpus on this machine, and
//! sample from one (issue 27). No node needs to run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hivemesh_node::files::{Access, write_atomic};
use hivemesh_trainer::data::TextCorpus;
use hivemesh_trainer::lm::{self, Bpe, LmConfig, LmTrainConfig, Tokenizer};
use hivemesh_trainer::{Cpu, CpuAutodiff};

/// Language models on this machine.
#[derive(Debug, Subcommand)]
pub(crate) enum ModelCmd {
    /// Train a causal transformer on a UTF-8 text corpus (plain or gzip), one token per
    /// character (or merged by a BPE learnt from the corpus, `--bpe N`), on the CPU; 90 % of the text trains, the last 10 % validates. Prints the
    /// loss as it goes (nats per token) and writes the model as safetensors.
    TrainLm(TrainLmArgs),
    /// Continue a prompt with a model written by `train-lm`: greedy, or sampled with a seed.
    Sample {
        /// The model file.
        model: PathBuf,
        /// The text to continue (every character must be in the model's vocabulary).
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Sample at this temperature instead of taking the most likely character.
        #[arg(long)]
        temperature: Option<f64>,
        /// The sampling seed (the same seed, the same text).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a student language model from a text distillation's shards (`*.hmtk`: a netsim
    /// report's `shards/` folder, or blobs fetched from a node): the knowledge-distillation
    /// loss against the teacher's top-k next-token distributions, plus the true next tokens.
    /// The corpus must be the one the campaign labelled; the teacher's file gives the tokens.
    DistillLm(DistillLmArgs),
    /// The log-likelihood (nats) of a target text following a prompt under a model (teacher
    /// forcing: one forward pass); what a prompt search maximises.
    Score {
        /// The model file.
        model: PathBuf,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// The text that should follow it.
        #[arg(long)]
        target: String,
    },
}

/// `model train-lm`'s options (nanoGPT's CPU character-level settings by default).
#[derive(Debug, Args)]
pub(crate) struct TrainLmArgs {
    /// The corpus (e.g. ../shared/data/shakespeare/plays.txt.gz).
    #[arg(long)]
    corpus: PathBuf,
    /// Where to write the model (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads (divides the width).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// The residual width.
    #[arg(long, default_value_t = 128)]
    width: usize,
    /// Context length in characters.
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 12)]
    batch: usize,
    /// Peak learning rate (warm-up, then cosine decay to a tenth of it).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Seeds the weights and the windows (the same seed and corpus, the same model).
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Evaluate on the validation text every this many steps (and at the end).
    #[arg(long, default_value_t = 250)]
    eval_every: usize,
    /// Learn this many byte-pair merges from the corpus's first `--bpe-sample` characters and
    /// train on the merged tokens (0: one token per character).
    #[arg(long, default_value_t = 0)]
    bpe: usize,
    /// Characters the BPE learns from (learning costs one pass over them per merge).
    #[arg(long, default_value_t = 1_000_000)]
    bpe_sample: usize,
    /// Also write the untrained model here (what `trainer/benches/pytorch_lm.py --init`
    /// starts from, to compare the same run in PyTorch).
    #[arg(long)]
    save_init: Option<PathBuf>,
}

/// `model distill-lm`'s options.
#[derive(Debug, Args)]
pub(crate) struct DistillLmArgs {
    /// The corpus the campaign labelled (its dataset file).
    #[arg(long)]
    corpus: PathBuf,
    /// The teacher's model file (only its tokenizer and context are read).
    #[arg(long)]
    teacher: PathBuf,
    /// The folder of shards (`*.hmtk`), consecutive window ranges of the campaign.
    #[arg(long)]
    shards: PathBuf,
    /// Where to write the student (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// The student's transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Its attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Its residual width.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 12)]
    batch: usize,
    /// Entries of each position's distribution used (default: all the shards hold).
    #[arg(long)]
    k: Option<usize>,
    /// The soft term's temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// The soft term's weight (0: the true next tokens only; 1: the teacher only).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Seeds the student's weights and the windows drawn.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

/// Runs a `model` command.
pub(crate) fn run(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::TrainLm(a) => train(&a),
        ModelCmd::DistillLm(a) => distill(&a),
        ModelCmd::Sample {
            model,
            prompt,
            tokens,
            temperature,
            seed,
        } => sample(&model, &prompt, tokens, temperature.map(|t| (t, seed))),
        ModelCmd::Score {
            model,
            prompt,
            target,
        } => {
            let (lm, tokenizer) = load(&model)?;
            let p = tokenizer.encode(&prompt).context("the prompt")?;
            let t = tokenizer.encode(&target).context("the target")?;
            let ll = lm::target_loglik(&lm, &p, &t)?;
            println!(
                "log p(target | prompt) = {ll:.4} nats over {} tokens ({:.4} per token)",
                t.len(),
                ll / t.len() as f64
            );
            Ok(())
        }
    }
}

fn train(a: &TrainLmArgs) -> anyhow::Result<()> {
    let corpus = TextCorpus::load(&a.corpus)
        .with_context(|| format!("cannot use {} as a corpus", a.corpus.display()))?;
    let mut tokenizer = Tokenizer::chars(corpus.vocab.clone());
    let tokens = if a.bpe > 0 {
        let sample = &corpus.tokens[..a.bpe_sample.min(corpus.tokens.len())];
        let bpe = Bpe::learn(sample, corpus.vocab.len() as u32, a.bpe);
        eprintln!(
            "learnt {} merges from {} characters",
            bpe.merges.len(),
            sample.len()
        );
        tokenizer.bpe = Some(bpe);
        tokenizer.encode_tokens(&corpus.tokens)
    } else {
        corpus.tokens.clone()
    };
    let c = LmConfig {
        vocab: tokenizer.vocab(),
        context: a.context,
        layers: a.layers,
        heads: a.heads,
        width: a.width,
    };
    c.check()?;
    let cfg = LmTrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        min_lr: a.lr / 10.0,
        warmup: a.warmup.min(a.steps),
        seed: a.seed,
        eval_every: a.eval_every,
        ..LmTrainConfig::nanogpt()
    };
    eprintln!(
        "{} characters ({} tokens), a vocabulary of {}; {} parameters, {:.1} MFLOPs per window; {} steps of {} windows",
        corpus.tokens.len(),
        tokens.len(),
        c.vocab,
        c.params(),
        c.flops_per_sequence() as f64 / 1e6,
        cfg.steps,
        cfg.batch
    );
    if let Some(path) = &a.save_init {
        let init = lm::Lm::<Cpu>::new(&c, cfg.seed, &Default::default())?;
        write_atomic(path, &lm::save_lm(&init, &tokenizer)?, Access::Public)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let started = Instant::now();
    let every = (cfg.steps / 20).max(1);
    let mut report = |step: usize, loss: f64, val: Option<f64>| {
        if step.is_multiple_of(every) || val.is_some() {
            let tps = (step * cfg.batch * c.context) as f64 / started.elapsed().as_secs_f64();
            let val = val.map_or_else(String::new, |v| format!(", validation {v:.4}"));
            eprintln!(
                "step {step}/{}: loss {loss:.4}{val} ({tps:.0} tokens/s)",
                cfg.steps
            );
        }
    };
    let device = Default::default();
    let (model, run) = lm::train_lm::<CpuAutodiff>(&c, &cfg, &tokens, &device, &mut report)?;
    let bytes = lm::save_lm(&model, &tokenizer)?;
    write_atomic(&a.out, &bytes, Access::Public)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let val = run.val_loss.last().map_or(f64::NAN, |v| v.1);
    println!(
        "wrote {} ({} bytes): validation loss {val:.4} nats per token after {} steps, {:.0} s",
        a.out.display(),
        bytes.len(),
        cfg.steps,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn distill(a: &DistillLmArgs) -> anyhow::Result<()> {
    let (teacher, tokenizer) = {
        let bytes = std::fs::read(&a.teacher)
            .with_context(|| format!("cannot read {}", a.teacher.display()))?;
        lm::read_lm_meta(&bytes).with_context(|| {
            format!("{} is not a model written by train-lm", a.teacher.display())
        })?
    };
    let corpus = TextCorpus::load(&a.corpus)
        .with_context(|| format!("cannot use {} as a corpus", a.corpus.display()))?;
    let tokens = tokenizer
        .encode(&corpus.text())
        .context("the corpus in the teacher's tokens")?;
    let mut shards = Vec::new();
    let dir = std::fs::read_dir(&a.shards)
        .with_context(|| format!("cannot read the folder {}", a.shards.display()))?;
    for entry in dir {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "hmtk") {
            let bytes = std::fs::read(&path)?;
            shards.push(
                lm::distill::TextLabels::from_bytes(&bytes)
                    .with_context(|| path.display().to_string())?,
            );
        }
    }
    if shards.is_empty() {
        bail!("no text shards (*.hmtk) in {}", a.shards.display());
    }
    let labels = lm::distill::TextLabels::merge(shards)?;
    let c = LmConfig {
        vocab: tokenizer.vocab(),
        context: teacher.context,
        layers: a.layers,
        heads: a.heads,
        width: a.width,
    };
    c.check()?;
    let cfg = LmTrainConfig {
        steps: a.steps,
        batch: a.batch,
        warmup: (a.steps / 20).min(100),
        seed: a.seed,
        ..LmTrainConfig::nanogpt()
    };
    let kd = lm::distill::TextKd {
        k: a.k
            .unwrap_or(usize::from(labels.k))
            .min(usize::from(labels.k)),
        kd: hivemesh_trainer::distill::KdConfig {
            temperature: a.temperature,
            alpha: a.alpha,
        },
    };
    // Validation on the text the campaign's windows end before (or the last tenth).
    let covered = (labels.start + labels.windows() as u64) as usize * labels.t as usize + 1;
    let val = if covered < tokens.len() * 9 / 10 {
        &tokens[covered..]
    } else {
        lm::train::split(&tokens).1
    };
    eprintln!(
        "{} windows of {} tokens (k = {}) from {}; a student of {} parameters, {} steps",
        labels.windows(),
        labels.t,
        labels.k,
        a.shards.display(),
        c.params(),
        cfg.steps
    );
    let started = Instant::now();
    let (model, run) = lm::distill::train_student::<CpuAutodiff>(
        &c,
        &cfg,
        &tokens,
        &labels,
        kd,
        val,
        &Default::default(),
    )?;
    let bytes = lm::save_lm(&model, &tokenizer)?;
    write_atomic(&a.out, &bytes, Access::Public)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let v = run.val_loss.last().map_or(f64::NAN, |v| v.1);
    println!(
        "wrote {}: validation loss {v:.4} nats per token on {} held-out tokens after {} steps, \
         {:.0} s",
        a.out.display(),
        val.len(),
        cfg.steps,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sample(path: &Path, prompt: &str, n: usize, how: Option<(f64, u64)>) -> anyhow::Result<()> {
    let (model, tokenizer) = load(path)?;
    let ids = tokenizer.encode(prompt).context("the prompt")?;
    if ids.is_empty() {
        bail!("the prompt is empty: give at least one character");
    }
    let out = lm::generate(&model, &ids, n, how)?;
    println!("{prompt}{}", tokenizer.decode(&out));
    Ok(())
}

/// A model file written by `train-lm`.
fn load(path: &Path) -> anyhow::Result<(lm::Lm<Cpu>, Tokenizer)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    lm::load_lm::<Cpu>(&bytes, &Default::default())
        .with_context(|| format!("{} is not a model written by train-lm", path.display()))
}
