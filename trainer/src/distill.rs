//! Distillation: a teacher's top-k soft labels over a shard of a dataset, stored as a
//! content-addressed blob, and a student trained on them with the knowledge-distillation loss
//! (Hinton, Vinyals & Dean 2015, <https://arxiv.org/abs/1503.02531>).
//!
//! # Shard format (version 1)
//! All integers little-endian. A 24-byte header: magic `b"HMKD"`, `u16` version (1), `u8` k,
//! `u8` reserved (0), `u64` first sample index, `u64` sample count `n`. Then `n` records of `k`
//! entries, each entry a `u8` class and a `u16` probability in units of `1/65535`
//! (`round(p · 65535)`, so a record's values sum to at most 65535 + k/2). Entries are sorted by
//! probability, highest first, ties by class, lowest first. Probabilities are the teacher's
//! softmax at temperature 1; a student applies its own temperature (see [`soft_targets`]).
//!
//! The blob's id is blake3 of its bytes. On the CPU backend executors produce identical bytes,
//! so the id is the agreement key; [`ShardLabels::fingerprint`] is a compact key for
//! backends that differ in the last bits: blake3 over each sample's top-1 class and its
//! probability rounded to 1/64.

use burn::prelude::Backend;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};
use hivemesh_evolve::arch::Architecture;

use crate::data::{Dataset, Splits};
use crate::error::TrainError;
use crate::model::{Model, WeightsFile};
use crate::ops::{ModelBackend, TrainBackend};
use crate::train::{
    Budget, FitStats, Limits, NasJob, Progress, input_batch, one_hot, train_and_test,
};

const MAGIC: &[u8; 4] = b"HMKD";
const HEADER: usize = 24;
/// Fixed-point unit of probabilities.
pub const PROB_SCALE: f32 = 65535.0;

/// A shard's soft labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLabels {
    /// Entries per sample.
    pub k: u8,
    /// First sample index.
    pub start: u64,
    /// Per sample, `k` (class, fixed-point probability) pairs, highest first.
    pub entries: Vec<(u8, u16)>,
}

impl ShardLabels {
    /// Samples covered.
    pub fn len(&self) -> usize {
        self.entries.len() / usize::from(self.k.max(1))
    }

    /// Whether no samples are covered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The blob (see the module docs for the format).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + 3 * self.entries.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(self.k);
        b.push(0);
        b.extend_from_slice(&self.start.to_le_bytes());
        b.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for &(c, p) in &self.entries {
            b.push(c);
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    /// Parses a blob, checking its structure.
    pub fn from_bytes(b: &[u8]) -> Result<ShardLabels, TrainError> {
        let bad = |m: String| TrainError::Artifact(format!("distillation shard: {m}"));
        if b.len() < HEADER || &b[..4] != MAGIC {
            return Err(bad("not a shard blob (magic HMKD missing)".into()));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != 1 {
            return Err(bad(format!("version {version} (this build reads 1)")));
        }
        let k = b[6];
        let start = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        let n = u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8]));
        let want = (n as u128) * u128::from(k) * 3;
        if k == 0 || want != (b.len() - HEADER) as u128 {
            return Err(bad(format!(
                "k={k}, {n} samples need {want} bytes of records, found {} (at offset {HEADER})",
                b.len() - HEADER
            )));
        }
        let entries = b[HEADER..]
            .chunks_exact(3)
            .map(|e| (e[0], u16::from_le_bytes([e[1], e[2]])))
            .collect();
        Ok(ShardLabels { k, start, entries })
    }

    /// blake3 of the blob: the shard's content id.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    /// Compact agreement key tolerant to last-bit differences (see the module docs).
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("hivemesh 2026-11 distill fingerprint v1");
        h.update(&self.start.to_le_bytes());
        for rec in self.entries.chunks(usize::from(self.k.max(1))) {
            let (c, p) = rec[0];
            h.update(&[c, ((u32::from(p) * 64 + 32767) / 65535) as u8]);
        }
        *h.finalize().as_bytes()
    }

    /// The record of sample `index` (absolute), if this shard covers it.
    pub fn record(&self, index: u64) -> Option<&[(u8, u16)]> {
        let i = index.checked_sub(self.start)? as usize;
        let k = usize::from(self.k);
        self.entries.get(i * k..(i + 1) * k)
    }
}

/// Runs `teacher` over samples `range` of `data` and keeps the top `k` probabilities of each.
pub fn label_shard<B: ModelBackend>(
    teacher: &WeightsFile,
    data: &Dataset,
    range: std::ops::Range<u64>,
    k: u8,
    device: &B::Device,
) -> Result<ShardLabels, TrainError> {
    if teacher.arch.input != data.shape || teacher.arch.classes != data.classes {
        return Err(TrainError::Arch(format!(
            "the teacher expects {:?} inputs and {} classes; {} has {:?} and {}",
            teacher.arch.input, teacher.arch.classes, data.name, data.shape, data.classes
        )));
    }
    let classes = data.classes as usize;
    if k == 0 || usize::from(k) > classes || classes > 256 {
        return Err(TrainError::Options(format!(
            "top-k of {k} with {classes} classes (1 <= k <= classes <= 256)"
        )));
    }
    let idx = data.shard(range.clone())?;
    let model = Model::<B>::from_weights(teacher, device)?;
    let mut entries = Vec::with_capacity(idx.len() * usize::from(k));
    for chunk in idx.chunks(500) {
        let probs = softmax(model.forward(input_batch::<B>(data, chunk, device)), 1);
        let probs: Vec<f32> = probs.into_data().to_vec().unwrap_or_default();
        for row in probs.chunks(classes) {
            let mut order: Vec<usize> = (0..classes).collect();
            // Highest fixed-point probability first, then lowest class.
            let q: Vec<u16> = row
                .iter()
                .map(|&p| (p.clamp(0.0, 1.0) * PROB_SCALE).round() as u16)
                .collect();
            order.sort_by(|&a, &b| q[b].cmp(&q[a]).then(a.cmp(&b)));
            entries.extend(order[..usize::from(k)].iter().map(|&c| (c as u8, q[c])));
        }
    }
    Ok(ShardLabels {
        k,
        start: range.start,
        entries,
    })
}

/// Soft targets `[batch, classes]` at temperature `t` from top-k records: `p^(1/t)` over the
/// kept classes, renormalised (the teacher's softmax at temperature `t` restricted to its top
/// k), zero elsewhere.
/// Classes are any small integers (`u8` for images, `u32` tokens for text).
pub fn soft_targets<C: Copy + Into<u32>>(
    records: &[&[(C, u16)]],
    classes: usize,
    t: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; records.len() * classes];
    for (i, rec) in records.iter().enumerate() {
        let w: Vec<f32> = rec
            .iter()
            .map(|&(_, p)| (f32::from(p) / PROB_SCALE).max(1e-12).powf(1.0 / t))
            .collect();
        let s: f32 = w.iter().sum();
        for (&(c, _), wv) in rec.iter().zip(&w) {
            out[i * classes + c.into() as usize] = wv / s;
        }
    }
    out
}

/// Knowledge-distillation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdConfig {
    /// Softmax temperature of teacher and student in the soft term.
    pub temperature: f32,
    /// Weight of the soft term; `1 − alpha` weighs the hard-label cross-entropy.
    pub alpha: f32,
}

/// The KD loss: `alpha · T² · CE(soft_T, softmax(z / T)) + (1 − alpha) · CE(y, softmax(z))`.
/// (Cross-entropy against the soft targets differs from the KL divergence by the targets'
/// entropy, a constant, so the gradients are the same.)
pub fn kd_loss<B: Backend>(
    logits: Tensor<B, 2>,
    soft: Tensor<B, 2>,
    hard: Tensor<B, 2>,
    kd: KdConfig,
) -> Tensor<B, 1> {
    let t = kd.temperature;
    let soft_ce = (soft * log_softmax(logits.clone().div_scalar(t), 1))
        .sum_dim(1)
        .mean()
        .neg();
    let hard_ce = (hard * log_softmax(logits, 1)).sum_dim(1).mean().neg();
    soft_ce.mul_scalar(kd.alpha * t * t) + hard_ce.mul_scalar(1.0 - kd.alpha)
}

/// A student trained on soft labels.
#[derive(Debug, Clone)]
pub struct StudentJob<'a> {
    /// The student's architecture.
    pub arch: &'a Architecture,
    /// The data.
    pub data: &'a Dataset,
    /// Splits: the student trains on `train` (every train sample must be labelled), is
    /// evaluated on `test`.
    pub splits: &'a Splits,
    /// Soft labels covering the training samples.
    pub labels: &'a [ShardLabels],
    /// KD settings.
    pub kd: KdConfig,
    /// The budget.
    pub budget: &'a Budget,
    /// The seed.
    pub seed: u64,
}

/// What a student run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StudentResult {
    /// Correct test predictions.
    pub correct: u64,
    /// Test samples.
    pub total: u64,
    /// Training statistics.
    pub fit: FitStats,
}

impl StudentResult {
    /// Test accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Trains a student with the KD loss on backend `B`.
pub fn run_student<B: TrainBackend>(
    job: &StudentJob<'_>,
    limits: &Limits,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<StudentResult, TrainError> {
    let run = NasJob {
        arch: job.arch,
        data: job.data,
        splits: job.splits,
        budget: job.budget,
        seed: job.seed,
    };
    run.check(limits)?;
    if !(job.kd.temperature > 0.0 && (0.0..=1.0).contains(&job.kd.alpha)) {
        return Err(TrainError::Options(
            "KD temperature must be > 0 and alpha in [0, 1]".into(),
        ));
    }
    let record = |i: u32| job.labels.iter().find_map(|s| s.record(u64::from(i)));
    if let Some(&i) = job.splits.train.iter().find(|&&i| record(i).is_none()) {
        return Err(TrainError::Options(format!(
            "training sample {i} has no soft label in the given shards"
        )));
    }
    let classes = job.data.classes as usize;
    let data = job.data;
    let mut loss = |logits: Tensor<B, 2>, batch: &[u32]| {
        let recs: Vec<&[(u8, u16)]> = batch.iter().filter_map(|&i| record(i)).collect();
        let soft = Tensor::from_data(
            TensorData::new(
                soft_targets(&recs, classes, job.kd.temperature),
                [batch.len(), classes],
            ),
            device,
        );
        let hard = one_hot::<B>(&data.targets(batch), classes, device);
        kd_loss(logits, soft, hard, job.kd)
    };
    let t = train_and_test(&run, &limits.stop, device, &mut loss, progress)?;
    Ok(StudentResult {
        correct: t.correct,
        total: t.total,
        fit: t.fit,
    })
}
