//! Text distillation (issue 27): a teacher language model's top-k next-token distributions
//! over windows of a token stream, as a content-addressed shard, and a student trained on them
//! with the knowledge-distillation loss.
//!
//! # Shard format (version 1)
//! All integers little-endian. A 32-byte header: magic `b"HMTK"`, `u16` version (1), `u16` k,
//! `u32` window length `t`, `u64` first window index, `u64` window count `n`, `u32` reserved
//! (0). Then, for each window and each of its `t` positions, `k` entries of a `u32` token and a
//! `u16` probability in units of `1/65535` (`round(p · 65535)`), highest first, ties by token,
//! lowest first. Window `w` covers tokens `w·t .. w·t + t` of the stream; position `j`'s entries
//! are the teacher's distribution (temperature 1) of the token after `w·t + j`, given the window
//! so far. The same teacher and stream give the same bytes on the CPU backend.

use std::ops::Range;

use burn::prelude::Backend;
use burn::tensor::activation::softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::train::{LmRun, LmTrainConfig, Windows, evaluate};
use super::{Lm, LmConfig};
use crate::distill::{KdConfig, PROB_SCALE, kd_loss, soft_targets};
use crate::error::TrainError;

const MAGIC: &[u8; 4] = b"HMTK";
const HEADER: usize = 32;
/// The most entries per position a shard may hold.
pub const MAX_K: u16 = 256;

/// A text shard's soft labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLabels {
    /// Entries per position.
    pub k: u16,
    /// Tokens per window.
    pub t: u32,
    /// The first window's index.
    pub start: u64,
    /// Per window, per position, `k` (token, fixed-point probability) pairs, highest first.
    pub entries: Vec<(u32, u16)>,
}

impl TextLabels {
    /// Windows covered.
    pub fn windows(&self) -> usize {
        self.entries.len() / (usize::from(self.k) * self.t as usize).max(1)
    }

    /// The blob (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + 6 * self.entries.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&self.k.to_le_bytes());
        b.extend_from_slice(&self.t.to_le_bytes());
        b.extend_from_slice(&self.start.to_le_bytes());
        b.extend_from_slice(&(self.windows() as u64).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for &(tok, p) in &self.entries {
            b.extend_from_slice(&tok.to_le_bytes());
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    /// Parses a blob, checking its structure (the error says what is wrong).
    pub fn from_bytes(b: &[u8]) -> Result<TextLabels, TrainError> {
        let bad = |m: String| TrainError::Artifact(format!("text distillation shard: {m}"));
        if b.len() < HEADER || &b[..4] != MAGIC {
            return Err(bad("not a text shard (magic HMTK missing)".into()));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        if u16_at(4) != 1 {
            return Err(bad(format!("version {} (this build reads 1)", u16_at(4))));
        }
        let (k, t, start, n) = (u16_at(6), u32_at(8), u64_at(12), u64_at(20));
        if k == 0 || k > MAX_K || t == 0 {
            return Err(bad(format!("k = {k}, window {t}")));
        }
        let want = (n as u128) * u128::from(t) * u128::from(k) * 6 + HEADER as u128;
        if want != b.len() as u128 {
            return Err(bad(format!("{} bytes, the header says {want}", b.len())));
        }
        let entries = b[HEADER..]
            .chunks_exact(6)
            .map(|e| {
                (
                    u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                    u16::from_le_bytes([e[4], e[5]]),
                )
            })
            .collect();
        Ok(TextLabels {
            k,
            t,
            start,
            entries,
        })
    }

    /// Shards of one campaign (the same `k` and window length, consecutive window ranges in
    /// any order) joined into one; the error names the first gap, overlap or mismatch.
    pub fn merge(mut shards: Vec<TextLabels>) -> Result<TextLabels, TrainError> {
        shards.sort_by_key(|s| s.start);
        let mut it = shards.into_iter();
        let mut out = it
            .next()
            .ok_or_else(|| TrainError::Options("no text shards to merge".into()))?;
        for s in it {
            let next = out.start + out.windows() as u64;
            if (s.k, s.t) != (out.k, out.t) || s.start != next {
                return Err(TrainError::Options(format!(
                    "a shard of windows from {} (k {}, window {}) does not follow windows \
                     {}..{next} (k {}, window {})",
                    s.start, s.k, s.t, out.start, out.k, out.t
                )));
            }
            out.entries.extend(s.entries);
        }
        Ok(out)
    }

    /// Position `j` of window `w` (absolute index), if held.
    pub fn record(&self, w: u64, j: usize) -> Option<&[(u32, u16)]> {
        let i = usize::try_from(w.checked_sub(self.start)?).ok()?;
        let (k, t) = (usize::from(self.k), self.t as usize);
        if i >= self.windows() || j >= t {
            return None;
        }
        let at = (i * t + j) * k;
        self.entries.get(at..at + k)
    }
}

/// The teacher's top-`k` labels for windows `windows` of `tokens` (its context is the window
/// length), `batch` windows per forward pass.
pub fn label_text<B: Backend>(
    teacher: &Lm<B>,
    tokens: &[u32],
    windows: Range<u64>,
    k: u16,
    batch: usize,
) -> Result<TextLabels, TrainError> {
    let c = teacher.config();
    let t = c.context;
    let end = windows.end.saturating_mul(t as u64).saturating_add(1);
    if k == 0 || k > MAX_K || usize::from(k) > c.vocab || end > tokens.len() as u64 {
        return Err(TrainError::Options(format!(
            "windows {}..{} of {t} tokens (and the one after) need {end} tokens, the stream has {}; k = {k} (1 to {})",
            windows.start,
            windows.end,
            tokens.len(),
            c.vocab.min(usize::from(MAX_K))
        )));
    }
    if let Some(bad) = tokens.iter().find(|&&v| v as usize >= c.vocab) {
        return Err(TrainError::Options(format!(
            "token {bad} is outside the teacher's vocabulary of {}",
            c.vocab
        )));
    }
    let device = teacher.tok.val().device();
    let mut entries = Vec::with_capacity((windows.end - windows.start) as usize * t * k as usize);
    let ids: Vec<u64> = windows.clone().collect();
    for chunk in ids.chunks(batch.max(1)) {
        let x: Vec<i64> = chunk
            .iter()
            .flat_map(|&w| {
                let s = w as usize * t;
                tokens[s..s + t].iter().map(|&v| i64::from(v))
            })
            .collect();
        let b = chunk.len();
        let input: Tensor<B, 2, Int> = Tensor::from_data(TensorData::new(x, [b, t]), &device);
        let probs: Vec<f32> = softmax(teacher.forward(input).reshape([b * t, c.vocab]), 1)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| TrainError::Artifact(format!("teacher probabilities: {e:?}")))?;
        for row in probs.chunks(c.vocab) {
            entries.extend(top_k(row, usize::from(k)));
        }
    }
    Ok(TextLabels {
        k,
        t: t as u32,
        start: windows.start,
        entries,
    })
}

/// The `k` most likely tokens of `row`, highest first, ties by token; fixed point.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, u16)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter()
        .map(|i| {
            (
                i as u32,
                (row[i] * PROB_SCALE).round().clamp(0.0, PROB_SCALE) as u16,
            )
        })
        .collect()
}

/// Soft targets `[rows, vocab]` at temperature `temp` from the first `k` entries of each
/// record (as [`soft_targets`] computes them for images).
fn soft_rows(records: &[&[(u32, u16)]], vocab: usize, k: usize, temp: f32) -> Vec<f32> {
    let cut: Vec<&[(u32, u16)]> = records.iter().map(|r| &r[..k.min(r.len())]).collect();
    soft_targets(&cut, vocab, temp)
}

/// How a student learns from a text shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextKd {
    /// Entries used per position (at most the shard's k).
    pub k: usize,
    /// The KD loss's temperature and soft weight (`alpha = 0`: the hard labels only).
    pub kd: KdConfig,
}

/// Trains a student of shape `c` (its context the shard's window length) on `labels` over
/// `tokens` (the stream the shard labelled) with `cfg`'s schedule and AdamW (no gradient
/// clipping): each step draws `cfg.batch`
/// of the shard's windows; the loss is [`kd_loss`] against the teacher's top-k at the given
/// temperature and the true next tokens. Evaluated like [`super::train_lm`] on `val`.
pub fn train_student<B: AutodiffBackend>(
    c: &LmConfig,
    cfg: &LmTrainConfig,
    tokens: &[u32],
    labels: &TextLabels,
    kd: TextKd,
    val: &[u32],
    device: &B::Device,
) -> Result<(Lm<B>, LmRun), TrainError> {
    use burn::module::AutodiffModule;
    use burn::optim::{GradientsParams, Optimizer};
    let t = labels.t as usize;
    if c.context != t || labels.windows() == 0 {
        return Err(TrainError::Options(format!(
            "a student of context {} for a shard of {} windows of {t}",
            c.context,
            labels.windows()
        )));
    }
    let mut model = Lm::<B>::new(c, cfg.seed, device)?;
    let mut opt = cfg.adamw().init::<B, Lm<B>>();
    let mut rng = Windows::new(cfg.seed);
    let n = labels.windows() as u64;
    let mut run = LmRun {
        train_loss: Vec::new(),
        val_loss: Vec::new(),
        tokens: 0,
    };
    for step in 0..cfg.steps {
        let picks: Vec<u64> = (0..cfg.batch)
            .map(|_| labels.start + rng.next_u64() % n)
            .collect();
        let (x, y, records) = student_batch(tokens, labels, &picks)?;
        let b = picks.len();
        let soft = soft_rows(&records, c.vocab, kd.k, kd.kd.temperature);
        let mut hard = vec![0f32; b * t * c.vocab];
        for (i, &tok) in y.iter().enumerate() {
            hard[i * c.vocab + tok as usize] = 1.0;
        }
        let input: Tensor<B, 2, Int> = Tensor::from_data(TensorData::new(x, [b, t]), device);
        let logits = model.forward(input).reshape([b * t, c.vocab]);
        let to2 =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [b * t, c.vocab]), device);
        let loss = kd_loss(logits, to2(soft), to2(hard), kd.kd);
        let value: f64 = loss.clone().into_scalar().elem();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(cfg.lr_at(step), model, grads);
        run.train_loss.push(value);
        run.tokens += (b * t) as u64;
    }
    let v = evaluate(&model.valid(), val, cfg.eval_batches, cfg.batch, cfg.seed);
    run.val_loss.push((cfg.steps, v));
    Ok((model, run))
}

/// Inputs, next tokens and label records of windows `picks`.
#[allow(clippy::type_complexity)]
fn student_batch<'a>(
    tokens: &[u32],
    labels: &'a TextLabels,
    picks: &[u64],
) -> Result<(Vec<i64>, Vec<u32>, Vec<&'a [(u32, u16)]>), TrainError> {
    let t = labels.t as usize;
    let mut x = Vec::with_capacity(picks.len() * t);
    let mut y = Vec::with_capacity(picks.len() * t);
    let mut records = Vec::with_capacity(picks.len() * t);
    for &w in picks {
        let s = w as usize * t;
        let window = tokens.get(s..s + t + 1).ok_or_else(|| {
            TrainError::Options(format!("window {w} is past the end of the stream"))
        })?;
        x.extend(window[..t].iter().map(|&v| i64::from(v)));
        y.extend_from_slice(&window[1..]);
        for j in 0..t {
            records.push(labels.record(w, j).ok_or_else(|| {
                TrainError::Options(format!("window {w} position {j} is not in the shard"))
            })?);
        }
    }
    Ok((x, y, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::module::AutodiffModule;

    #[test]
    fn a_student_learns_from_a_teachers_labels() {
        use crate::CpuAutodiff;
        let (c, cfg) = crate::lm::train::tests::tiny();
        let cfg = LmTrainConfig { steps: 150, ..cfg };
        let corpus = crate::lm::train::tests::corpus();
        let d = Default::default();
        let (teacher, _) =
            crate::lm::train_lm::<CpuAutodiff>(&c, &cfg, &corpus, &d, &mut |_, _, _| {})
                .expect("teacher");
        let (train, val) = crate::lm::train::split(&corpus);
        let labels = label_text(&teacher.valid(), train, 0..300, 3, 32).expect("labels");
        let kd = TextKd {
            k: 3,
            kd: KdConfig {
                temperature: 2.0,
                alpha: 0.5,
            },
        };
        let student = LmTrainConfig { seed: 9, ..cfg };
        let (_, run) = train_student::<CpuAutodiff>(&c, &student, train, &labels, kd, val, &d)
            .expect("student");
        let (first, last) = (run.train_loss[0], run.val_loss[0].1);
        assert!(last < 0.5 && first > last, "{first} → {last}");
        // A shard for another window length is refused.
        let short = LmConfig { context: 4, ..c };
        assert!(
            train_student::<CpuAutodiff>(&short, &student, train, &labels, kd, val, &d).is_err()
        );
    }

    #[test]
    fn labels_round_trip_are_sorted_and_checked() {
        let c = LmConfig {
            vocab: 6,
            context: 4,
            layers: 1,
            heads: 1,
            width: 8,
        };
        let teacher = Lm::<Cpu>::new(&c, 1, &Default::default()).expect("valid");
        let tokens: Vec<u32> = (0..41).map(|i| (i * 7 % 6) as u32).collect();
        let l = label_text(&teacher, &tokens, 2..10, 3, 3).expect("labels");
        assert_eq!(l.windows(), 8);
        let rec = l.record(5, 2).expect("held");
        assert_eq!(rec.len(), 3);
        assert!(rec.windows(2).all(|w| w[0].1 >= w[1].1));
        let bytes = l.to_bytes();
        assert_eq!(TextLabels::from_bytes(&bytes).expect("parses"), l);
        // The same teacher, the same bytes; one batch size or another, the same labels.
        assert_eq!(
            label_text(&teacher, &tokens, 2..10, 3, 8).expect("labels"),
            l
        );
        assert!(l.record(10, 0).is_none() && l.record(1, 0).is_none());
        assert!(TextLabels::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            label_text(&teacher, &tokens, 2..11, 3, 3).is_err(),
            "past the end"
        );
        // Shards of one campaign, in any order, merge into the labels of their whole range.
        let parts = vec![
            label_text(&teacher, &tokens, 6..10, 3, 3).expect("labels"),
            label_text(&teacher, &tokens, 2..6, 3, 3).expect("labels"),
        ];
        assert_eq!(TextLabels::merge(parts.clone()).expect("consecutive"), l);
        let gap = vec![
            parts[0].clone(),
            label_text(&teacher, &tokens, 2..5, 3, 3).expect("l"),
        ];
        let e = TextLabels::merge(gap).expect_err("a gap");
        assert!(
            e.to_string().contains("does not follow windows 2..5"),
            "{e}"
        );
    }
}
