//! Training a [`Lm`] on a token stream: random windows, AdamW with warm-up and cosine decay,
//! evaluation in nats per token, sampling, and the model as a safetensors file.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Param};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::Backend;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::{Lm, LmConfig, Tokenizer};
use crate::error::TrainError;

/// How to train (nanoGPT's names in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmTrainConfig {
    /// Optimiser steps (`max_iters`, also `lr_decay_iters`).
    pub steps: usize,
    /// Windows per step (`batch_size`).
    pub batch: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// The learning rate the cosine decays to (`min_lr`).
    pub min_lr: f64,
    /// Steps of linear warm-up (`warmup_iters`).
    pub warmup: usize,
    /// AdamW's decoupled weight decay, on every parameter.
    pub weight_decay: f64,
    /// AdamW's β₁.
    pub beta1: f32,
    /// AdamW's β₂.
    pub beta2: f32,
    /// Each parameter's gradient is scaled to at most this L2 norm (0: no clipping). Per
    /// parameter, as burn clips; nanoGPT clips the norm of all gradients together.
    pub clip: f32,
    /// Seeds the initial weights and the windows drawn.
    pub seed: u64,
    /// Evaluate every this many steps (and after the last; 0: only after the last).
    pub eval_every: usize,
    /// Batches of validation windows per evaluation (`eval_iters`).
    pub eval_batches: usize,
}

impl LmTrainConfig {
    /// nanoGPT's `train_shakespeare_char` settings on the CPU: 2,000 steps of 12 windows,
    /// lr 1e-3 → 1e-4 after 100 warm-up steps, weight decay 0.1, β₂ 0.99, clip 1.
    pub fn nanogpt() -> LmTrainConfig {
        LmTrainConfig {
            steps: 2000,
            batch: 12,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            clip: 1.0,
            seed: 1337,
            eval_every: 250,
            eval_batches: 20,
        }
    }

    /// The learning rate of step `step` (0-based): linear warm-up to `lr` over `warmup`
    /// steps, then a cosine down to `min_lr` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let done = ((step - self.warmup) as f64 / span).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
        self.min_lr + cos * (self.lr - self.min_lr)
    }

    /// AdamW with these β, decay and ε = 1e-8 (clipping left to the caller).
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(1e-8)
            .with_weight_decay(self.weight_decay as f32)
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |w: &str| Err(TrainError::Options(format!("language model training: {w}")));
        if self.steps == 0 || self.batch == 0 {
            return bad("steps and batch must be above 0");
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("the learning rates must be finite, 0 ≤ min_lr ≤ lr, lr > 0");
        }
        if self.batch > 65_536 || self.eval_batches > 65_536 {
            return bad("at most 65,536 windows per batch and batches per evaluation");
        }
        Ok(())
    }
}

/// What a training run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LmRun {
    /// The training loss (nats per token) of every step.
    pub train_loss: Vec<f64>,
    /// `(step, validation loss)` at each evaluation (the step count done so far).
    pub val_loss: Vec<(usize, f64)>,
    /// Tokens trained on (steps × batch × context).
    pub tokens: u64,
}

/// The training and validation token streams: the first 90 % and the last 10 % (nanoGPT's
/// split).
pub fn split(tokens: &[u32]) -> (&[u32], &[u32]) {
    tokens.split_at(tokens.len() - tokens.len() / 10)
}

/// The windows' random stream: SplitMix64, simple enough that the PyTorch yardstick
/// (`trainer/benches/pytorch_lm.py`) draws the very same windows.
#[derive(Debug, Clone)]
pub struct Windows(u64);

impl Windows {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Windows {
        Windows(seed)
    }

    /// The next draw.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `batch` windows of `t + 1` tokens from `stream` (each starting at the next draw modulo
    /// `len − t`): inputs and targets (shifted by one), as `i64`.
    pub fn draw(&mut self, stream: &[u32], t: usize, batch: usize) -> (Vec<i64>, Vec<i64>) {
        let starts = (stream.len() - t) as u64;
        let mut x = Vec::with_capacity(batch * t);
        let mut y = Vec::with_capacity(batch * t);
        for _ in 0..batch {
            let s = (self.next_u64() % starts) as usize;
            x.extend(stream[s..s + t].iter().map(|&v| i64::from(v)));
            y.extend(stream[s + 1..s + t + 1].iter().map(|&v| i64::from(v)));
        }
        (x, y)
    }
}

/// The seeds of the training and evaluation windows for a run seeded `seed`.
const TRAIN_WINDOWS: u64 = 0x6c6d_7472_6169_6e21;
const EVAL_WINDOWS: u64 = 0x6576_616c_7561_7465;

fn int2<B: Backend>(v: Vec<i64>, b: usize, t: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, [b, t]), device)
}

/// Mean cross-entropy (nats per token) of `logits` `[b, t, v]` against `targets` `[b, t]`.
pub fn lm_loss<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    logp.gather(1, targets.reshape([b * t, 1])).mean().neg()
}

fn need_tokens(stream: &[u32], t: usize, what: &str) -> Result<(), TrainError> {
    if stream.len() <= t {
        return Err(TrainError::Options(format!(
            "the {what} split has {} tokens, fewer than a window of {} (a longer corpus or a shorter context)",
            stream.len(),
            t + 1
        )));
    }
    Ok(())
}

/// Trains a model of shape `c` on `tokens` (split 90/10) with `cfg`; `progress` is told each
/// step and its loss, and each evaluation. Bit-identical for the same inputs on the CPU.
pub fn train_lm<B: AutodiffBackend>(
    c: &LmConfig,
    cfg: &LmTrainConfig,
    tokens: &[u32],
    device: &B::Device,
    progress: &mut dyn FnMut(usize, f64, Option<f64>),
) -> Result<(Lm<B>, LmRun), TrainError> {
    cfg.check()?;
    if let Some(bad) = tokens.iter().find(|&&v| v as usize >= c.vocab) {
        return Err(TrainError::Options(format!(
            "token {bad} is outside the vocabulary of {}",
            c.vocab
        )));
    }
    let (train, val) = split(tokens);
    need_tokens(train, c.context, "training")?;
    need_tokens(val, c.context, "validation")?;
    let mut model = Lm::<B>::new(c, cfg.seed, device)?;
    let clip = (cfg.clip > 0.0).then_some(GradientClippingConfig::Norm(cfg.clip));
    let mut opt = cfg.adamw().with_grad_clipping(clip).init::<B, Lm<B>>();
    let mut rng = Windows::new(cfg.seed ^ TRAIN_WINDOWS);
    let mut run = LmRun {
        train_loss: Vec::with_capacity(cfg.steps),
        val_loss: Vec::new(),
        tokens: 0,
    };
    let t = c.context;
    for step in 0..cfg.steps {
        let (x, y) = rng.draw(train, t, cfg.batch);
        let loss = lm_loss(
            model.forward(int2(x, cfg.batch, t, device)),
            int2(y, cfg.batch, t, device),
        );
        let value: f64 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step: step as u64,
                loss: value as f32,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(cfg.lr_at(step), model, grads);
        run.train_loss.push(value);
        run.tokens += (cfg.batch * t) as u64;
        let done = step + 1;
        let eval = done == cfg.steps || (cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every));
        let val_loss =
            eval.then(|| evaluate(&model.valid(), val, cfg.eval_batches, cfg.batch, cfg.seed));
        if let Some(v) = val_loss {
            run.val_loss.push((done, v));
        }
        progress(done, value, val_loss);
    }
    Ok((model, run))
}

/// The mean loss (nats per token) of `model` on `batches` batches of `batch` windows drawn
/// from `stream` with `seed` (the same windows for the same arguments).
pub fn evaluate<B: Backend>(
    model: &Lm<B>,
    stream: &[u32],
    batches: usize,
    batch: usize,
    seed: u64,
) -> f64 {
    let t = model.config().context;
    let device = model.tok.val().device();
    let mut rng = Windows::new(seed ^ EVAL_WINDOWS);
    let mut sum = 0.0;
    for _ in 0..batches.max(1) {
        let (x, y) = rng.draw(stream, t, batch);
        let loss = lm_loss(
            model.forward(int2(x, batch, t, &device)),
            int2(y, batch, t, &device),
        );
        sum += loss.into_scalar().elem::<f64>();
    }
    sum / batches.max(1) as f64
}

/// `n` tokens continuing `prompt` (not empty, within the vocabulary): greedy (the first most
/// likely token) without `sample`, else drawn at `temperature` from a stream seeded by
/// `seed`.
pub fn generate<B: Backend>(
    model: &Lm<B>,
    prompt: &[u32],
    n: usize,
    sample: Option<(f64, u64)>,
) -> Result<Vec<u32>, TrainError> {
    let c = model.config();
    if prompt.is_empty() || prompt.iter().any(|&v| v as usize >= c.vocab) {
        return Err(TrainError::Options(format!(
            "a prompt of 1 or more tokens below {} is needed",
            c.vocab
        )));
    }
    let device = model.tok.val().device();
    let mut rng = sample.map(|(_, seed)| ChaCha8Rng::seed_from_u64(seed));
    let mut out = prompt.to_vec();
    for _ in 0..n {
        let from = out.len().saturating_sub(c.context);
        let window: Vec<i64> = out[from..].iter().map(|&v| i64::from(v)).collect();
        let t = window.len();
        let logits = model.forward(int2(window, 1, t, &device));
        let last: Vec<f32> = logits
            .slice([0..1, t - 1..t, 0..c.vocab])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| TrainError::Artifact(format!("logits: {e:?}")))?;
        let next = match (&mut rng, sample) {
            (Some(r), Some((temperature, _))) => draw(&last, temperature, r),
            _ => argmax(&last),
        };
        out.push(next as u32);
    }
    Ok(out.split_off(prompt.len()))
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn draw(logits: &[f32], temperature: f64, rng: &mut ChaCha8Rng) -> usize {
    let t = temperature.max(1e-6);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let p: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / t).exp())
        .collect();
    let total: f64 = p.iter().sum();
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (i, x) in p.iter().enumerate() {
        if u < *x {
            return i;
        }
        u -= x;
    }
    p.len() - 1
}

/// The model's tensors by name, with shapes and values.
fn tensors<B: Backend>(m: &Lm<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    fn one<B: Backend, const D: usize>(
        name: String,
        p: &Param<Tensor<B, D>>,
    ) -> (String, Vec<usize>, Vec<f32>) {
        let v = p.val();
        let shape = v.dims().to_vec();
        (
            name,
            shape,
            v.into_data().convert::<f32>().to_vec().unwrap_or_default(),
        )
    }
    let mut out = vec![one("tok".into(), &m.tok), one("pos".into(), &m.pos)];
    let ln = |out: &mut Vec<_>, n: &str, l: &burn::nn::LayerNorm<B>| {
        out.push(one(format!("{n}.gamma"), &l.gamma));
        if let Some(b) = &l.beta {
            out.push(one(format!("{n}.beta"), b));
        }
    };
    let lin = |out: &mut Vec<_>, n: &str, l: &burn::nn::Linear<B>| {
        out.push(one(format!("{n}.weight"), &l.weight));
        if let Some(b) = &l.bias {
            out.push(one(format!("{n}.bias"), b));
        }
    };
    for (i, b) in m.blocks.iter().enumerate() {
        ln(&mut out, &format!("blocks.{i}.ln1"), &b.ln1);
        lin(&mut out, &format!("blocks.{i}.qkv"), &b.qkv);
        lin(&mut out, &format!("blocks.{i}.proj"), &b.proj);
        ln(&mut out, &format!("blocks.{i}.ln2"), &b.ln2);
        lin(&mut out, &format!("blocks.{i}.fc"), &b.fc);
        lin(&mut out, &format!("blocks.{i}.out"), &b.out);
    }
    ln(&mut out, "ln_f", &m.ln_f);
    out
}

/// The model as safetensors bytes: its tensors (f32, row-major; linear weights `[in, out]`)
/// and metadata `hivemesh_lm`: JSON `{"config": LmConfig, "tokenizer": {"chars": [...],
/// "bpe": {"base", "merges"} or null}}`. The same model gives the same bytes.
pub fn save_lm<B: Backend>(m: &Lm<B>, tokenizer: &Tokenizer) -> Result<Vec<u8>, TrainError> {
    let ts = tensors(m);
    let bytes: Vec<Vec<u8>> = ts
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = ts
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Artifact(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    // One metadata entry: safetensors writes its metadata map in hash order, so two entries
    // would make the bytes (and the file's content id) differ from run to run.
    let meta = LmMeta {
        config: m.config(),
        tokenizer: tokenizer.clone(),
    };
    let metadata: HashMap<String, String> = [("hivemesh_lm".to_string(), to_json(&meta))]
        .into_iter()
        .collect();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Artifact(format!("safetensors: {e}")))
}

/// The metadata of a saved model.
#[derive(Serialize, Deserialize)]
struct LmMeta {
    /// Its shape.
    config: LmConfig,
    /// Its tokens.
    tokenizer: Tokenizer,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The tokenizer and shape of a model file from [`save_lm`] (its metadata only: no tensor is
/// read), or why it is not one.
pub fn read_lm_meta(bytes: &[u8]) -> Result<(LmConfig, Tokenizer), TrainError> {
    let bad = |w: String| TrainError::Artifact(format!("not a hivemesh language model: {w}"));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let LmMeta { config, tokenizer } = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("hivemesh_lm"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("no hivemesh_lm metadata".into()))?;
    Ok((config, tokenizer))
}

/// A model and its vocabulary from [`save_lm`]'s bytes; a file that is not one (no
/// `hivemesh_lm` metadata, a missing or misshapen tensor) is refused with the reason.
pub fn load_lm<B: Backend>(
    bytes: &[u8],
    device: &B::Device,
) -> Result<(Lm<B>, Tokenizer), TrainError> {
    let bad = |w: String| TrainError::Artifact(format!("not a hivemesh language model: {w}"));
    let (c, tokenizer) = read_lm_meta(bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    if !tokenizer.is_valid() || tokenizer.vocab() != c.vocab {
        return Err(bad(format!(
            "a tokenizer of {} tokens (valid: {}) for a model of {}",
            tokenizer.vocab(),
            tokenizer.is_valid(),
            c.vocab
        )));
    }
    // A file names its shape before its tensors: check the shape, and that the file is large
    // enough to hold it, before allocating the model (a lying header costs nothing).
    c.check().map_err(|e| TrainError::Options(e.to_string()))?;
    if c.params().saturating_mul(4) > bytes.len() as u64 {
        return Err(bad(format!(
            "its shape has {} parameters, the file holds {} bytes",
            c.params(),
            bytes.len()
        )));
    }
    let mut m = Lm::<B>::new(&c, 0, device)?;
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    for (name, shape, _) in tensors(&m) {
        let t = st.tensor(&name).map_err(|e| bad(format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
            return Err(bad(format!(
                "{name}: {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        values.insert(name, v);
    }
    set_tensors(&mut m, &mut values, device);
    Ok((m, tokenizer))
}

fn set_tensors<B: Backend>(m: &mut Lm<B>, v: &mut HashMap<String, Vec<f32>>, device: &B::Device) {
    fn put<B: Backend, const D: usize>(
        p: &mut Param<Tensor<B, D>>,
        v: &mut HashMap<String, Vec<f32>>,
        name: &str,
        device: &B::Device,
    ) {
        let dims = p.val().dims();
        if let Some(x) = v.remove(name) {
            *p = Param::from_data(TensorData::new(x, dims), device);
        }
    }
    put(&mut m.tok, v, "tok", device);
    put(&mut m.pos, v, "pos", device);
    let ln = |l: &mut burn::nn::LayerNorm<B>, n: &str, v: &mut HashMap<String, Vec<f32>>| {
        put(&mut l.gamma, v, &format!("{n}.gamma"), device);
        if let Some(b) = &mut l.beta {
            put(b, v, &format!("{n}.beta"), device);
        }
    };
    let lin = |l: &mut burn::nn::Linear<B>, n: &str, v: &mut HashMap<String, Vec<f32>>| {
        put(&mut l.weight, v, &format!("{n}.weight"), device);
        if let Some(b) = &mut l.bias {
            put(b, v, &format!("{n}.bias"), device);
        }
    };
    for (i, b) in m.blocks.iter_mut().enumerate() {
        ln(&mut b.ln1, &format!("blocks.{i}.ln1"), v);
        lin(&mut b.qkv, &format!("blocks.{i}.qkv"), v);
        lin(&mut b.proj, &format!("blocks.{i}.proj"), v);
        ln(&mut b.ln2, &format!("blocks.{i}.ln2"), v);
        lin(&mut b.fc, &format!("blocks.{i}.fc"), v);
        lin(&mut b.out, &format!("blocks.{i}.out"), v);
    }
    ln(&mut m.ln_f, "ln_f", v);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Cpu, CpuAutodiff};

    /// A repetitive text a tiny model learns quickly: "abcabd" cycles of 5 tokens.
    pub(crate) fn corpus() -> Vec<u32> {
        (0..3000).map(|i| [0, 1, 2, 0, 1, 3][i % 6]).collect()
    }

    /// A one-block model and a 200-step schedule for [`corpus`].
    pub(crate) fn tiny() -> (LmConfig, LmTrainConfig) {
        let c = LmConfig {
            vocab: 5,
            context: 8,
            layers: 1,
            heads: 2,
            width: 16,
        };
        let cfg = LmTrainConfig {
            steps: 200,
            batch: 8,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            eval_every: 100,
            eval_batches: 2,
            ..LmTrainConfig::nanogpt()
        };
        (c, cfg)
    }

    #[test]
    fn windows_follow_splitmix64() {
        // SplitMix64's published first output from state 0.
        assert_eq!(Windows::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let stream: Vec<u32> = (0..100).collect();
        let (x, y) = Windows::new(5).draw(&stream, 4, 3);
        assert_eq!(x.len(), 12);
        assert!(x.iter().zip(&y).all(|(a, b)| b - a == 1));
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_the_floor() {
        let cfg = LmTrainConfig::nanogpt();
        assert!((cfg.lr_at(0) - 1e-5).abs() < 1e-12);
        assert!((cfg.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!(cfg.lr_at(1000) < 1e-3 && cfg.lr_at(1000) > 1e-4);
        assert!((cfg.lr_at(2000) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn training_learns_is_bit_identical_and_round_trips_through_safetensors() {
        let (c, cfg) = tiny();
        let d = Default::default();
        let mut seen = Vec::new();
        let (m, run) =
            train_lm::<CpuAutodiff>(&c, &cfg, &corpus(), &d, &mut |s, l, v| seen.push((s, l, v)))
                .expect("trains");
        assert_eq!(seen.len(), 200);
        assert_eq!(run.val_loss.len(), 2);
        let first = run.train_loss[0];
        let last = run.val_loss[1].1;
        // ln 5 ≈ 1.61 at the start, the cycle's unigram entropy 1.33; a window's first two
        // positions cannot be told apart (0.23 each), the rest are certain.
        assert!(first > 1.2 && last < 0.4, "{first} → {last}");
        let (m2, run2) =
            train_lm::<CpuAutodiff>(&c, &cfg, &corpus(), &d, &mut |_, _, _| {}).expect("trains");
        assert_eq!(run, run2, "the same run twice");
        let vocab = Tokenizer::chars("abcde".chars().collect());
        let bytes = save_lm(&m.valid(), &vocab).expect("saves");
        assert_eq!(bytes, save_lm(&m2.valid(), &vocab).expect("saves"));
        let (back, v) = load_lm::<Cpu>(&bytes, &d).expect("loads");
        assert_eq!(v, vocab);
        assert_eq!(save_lm(&back, &vocab).expect("saves"), bytes);
        // A tokenizer that does not fit the model is refused.
        let wrong = Tokenizer::chars("abcdef".chars().collect());
        let e = load_lm::<Cpu>(&save_lm(&back, &wrong).expect("saves"), &d).unwrap_err();
        assert!(e.to_string().contains("tokenizer of 6"), "{e}");
        // Greedy continuation follows the cycle (a 1 always follows a 0); sampling is seeded.
        let g = generate(&back, &[0, 1, 2, 0], 2, None).expect("generates");
        assert_eq!(g[0], 1);
        let s1 = generate(&back, &[0], 10, Some((1.0, 9))).expect("samples");
        assert_eq!(
            s1,
            generate(&back, &[0], 10, Some((1.0, 9))).expect("samples")
        );
        assert!(load_lm::<Cpu>(b"not a model", &d).is_err());
        // A header claiming a huge model with no tensors behind it is refused before any
        // allocation.
        let merges = crate::lm::bpe::MAX_MERGES as u32;
        let big = LmConfig {
            vocab: 2 + merges as usize,
            context: 8192,
            layers: 48,
            heads: 64,
            width: 4096,
        };
        let meta = LmMeta {
            config: big,
            tokenizer: Tokenizer {
                chars: vec!['a', 'b'],
                bpe: Some(crate::lm::Bpe {
                    base: 2,
                    merges: (0..merges).map(|i| (i, i)).collect(),
                }),
            },
        };
        let header: HashMap<String, String> = [("hivemesh_lm".to_string(), to_json(&meta))]
            .into_iter()
            .collect();
        let liar = safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), Some(header))
            .expect("serialises");
        let e = load_lm::<Cpu>(&liar, &d).unwrap_err();
        assert!(e.to_string().contains("parameters, the file holds"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let (c, cfg) = tiny();
        let d = Default::default();
        let mut bad = corpus();
        bad[7] = 9;
        let e = train_lm::<CpuAutodiff>(&c, &cfg, &bad, &d, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("token 9"), "{e}");
        let e =
            train_lm::<CpuAutodiff>(&c, &cfg, &corpus()[..40], &d, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("validation split"), "{e}");
    }
}
