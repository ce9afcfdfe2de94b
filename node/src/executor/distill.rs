//! Distillation jobs: label a shard of the dataset with the teacher's top-k probabilities;
//! report the teacher's top-1 `correct` over the shard and the shard size, the teacher's
//! params and FLOPs, the shard blob (HMKD v1) as the artifact and the first 8 bytes of its
//! fingerprint as the extra `fingerprint`.
//!
//! A teacher that is a language model (ADR 0011) labels a text corpus instead ([`run_text`]):
//! a shard is a range of windows of the corpus in the teacher's tokens (window `w` covers
//! tokens `w·t .. w·t + t`, `t` the teacher's context), its blob a `HMTK` v1 text shard, and
//! `correct` counts the positions whose top-1 token is the one that follows in the text.

use std::collections::BTreeMap;

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{Metrics, Outcome};
use hivemesh_protocol::spec::DistillParams;
use hivemesh_trainer::model::WeightsFile;

use hivemesh_protocol::message::FailureKind;
use hivemesh_protocol::spec::DatasetRef;
use hivemesh_trainer::Cpu;
use hivemesh_trainer::data::DatasetBlob;
use hivemesh_trainer::lm::distill::label_text;
use hivemesh_trainer::lm::{load_lm, read_lm_meta};

use super::{BlobSource, ExecError, JobRun, Ran, dataset_blob, failure, fetch, train_failure};

/// The blobs a distillation job needs: the teacher.
pub fn needed_blobs(p: &DistillParams) -> Vec<(BlobId, &'static str)> {
    vec![(p.teacher, "teacher")]
}

/// Labels samples `start..end` with the teacher.
pub(super) fn run(
    p: &DistillParams,
    start: u64,
    end: u64,
    job: &mut JobRun<'_>,
) -> Result<Ran, ExecError> {
    let bytes = fetch(job.blobs, &p.teacher, "teacher")?;
    let teacher = WeightsFile::from_bytes(&bytes).map_err(|e| ExecError::Blob {
        id: p.teacher,
        what: "teacher",
        reason: e.to_string(),
    })?;
    let data = job.data;
    match job.runner.label(&teacher, data, start..end, p.top_k) {
        Ok(labels) => {
            let correct = labels
                .entries
                .chunks(usize::from(labels.k.max(1)))
                .zip(start..end)
                .filter(|(rec, i)| {
                    rec.first().map(|&(c, _)| u32::from(c))
                        == data.labels.get(*i as usize).map(|&l| u32::from(l))
                })
                .count() as u64;
            let counts = Counts {
                correct,
                total: labels.len() as u64,
                params: teacher.arch.params().unwrap_or(0),
                flops: teacher.arch.flops().unwrap_or(0),
            };
            Ok(shard_ran(counts, labels.fingerprint(), labels.to_bytes()))
        }
        Err(e) => Ok(Ran::nothing(train_failure(e)?)),
    }
}

/// Whether a distillation teacher's bytes are a language model (its campaign labels text).
pub fn is_language_model(teacher: &[u8]) -> bool {
    read_lm_meta(teacher).is_ok()
}

/// Windows per forward pass when labelling text.
const TEXT_BATCH: usize = 16;

/// Labels windows `start..end` of the campaign's text corpus with a language-model teacher
/// (`teacher`, its verified bytes).
pub(super) fn run_text(
    p: &DistillParams,
    teacher: &[u8],
    (start, end): (u64, u64),
    dataset: &DatasetRef,
    blobs: &dyn BlobSource,
    limits: &hivemesh_trainer::train::Limits,
) -> Result<Ran, ExecError> {
    let invalid = |detail: String| Ok(Ran::nothing(failure(FailureKind::InvalidJob, detail)));
    if dataset.sources.iter().any(|s| s.starts_with("builtin:")) {
        return invalid(
            "a language-model teacher labels a text corpus, not the built-in digits".into(),
        );
    }
    let unavailable = |reason: String| ExecError::Data {
        name: dataset.name.clone(),
        id: dataset.id,
        reason,
    };
    let corpus = match dataset_blob(&dataset.name, &dataset.id, blobs).map_err(unavailable)? {
        Ok(DatasetBlob::Text(c)) => c,
        Ok(DatasetBlob::Samples(_)) => {
            return invalid(
                "a language-model teacher labels a text corpus; the dataset holds labelled samples"
                    .into(),
            );
        }
        Err(e) => return invalid(format!("dataset {}: {e}", dataset.name)),
    };
    let (model, tokenizer) = match load_lm::<Cpu>(teacher, &Default::default()) {
        Ok(m) => m,
        Err(e) => return invalid(format!("teacher: {e}")),
    };
    let c = model.config();
    super::prompt::check_memory(&c, limits)?;
    check_shard_memory(end.saturating_sub(start), &c, p.top_k, limits)?;
    let tokens = match tokenizer.encode(&corpus.text()) {
        Ok(t) => t,
        Err(e) => return invalid(format!("the corpus in the teacher's tokens: {e}")),
    };
    let labels = match label_text(&model, &tokens, start..end, u16::from(p.top_k), TEXT_BATCH) {
        Ok(l) => l,
        Err(e) => return Ok(Ran::nothing(train_failure(e)?)),
    };
    let t = c.context;
    let k = usize::from(labels.k.max(1));
    // Position j of window w predicts token w·t + j + 1.
    let correct = labels
        .entries
        .chunks(k)
        .enumerate()
        .filter(|(i, rec)| {
            let (w, j) = (start as usize + i / t, i % t);
            rec.first().map(|e| e.0) == tokens.get(w * t + j + 1).copied()
        })
        .count() as u64;
    let counts = Counts {
        correct,
        total: (labels.entries.len() / k) as u64,
        params: c.params(),
        flops: c.flops_per_sequence(),
    };
    let shard = labels.to_bytes();
    Ok(shard_ran(counts, *blake3::hash(&shard).as_bytes(), shard))
}

/// Refuses (for another peer to take) a text shard whose labels would exceed this node's
/// memory limit: `windows × context × k` entries of 6 bytes, held as entries and again as the
/// blob, plus one batch's probabilities. A campaign of few, long shards over a large corpus
/// asks for that much; the shard's size, not the corpus's, is what a job holds.
fn check_shard_memory(
    windows: u64,
    c: &hivemesh_trainer::lm::LmConfig,
    k: u8,
    limits: &hivemesh_trainer::train::Limits,
) -> Result<(), ExecError> {
    let entries = windows
        .saturating_mul(c.context as u64)
        .saturating_mul(u64::from(k));
    let probs = (TEXT_BATCH * c.context * c.vocab * 4) as u64;
    let needed = entries.saturating_mul(2 * 6).saturating_add(probs);
    match limits.memory_budget {
        Some(budget) if needed > budget => Err(ExecError::OverLimit(
            hivemesh_trainer::TrainError::MemoryBudget { needed, budget },
        )),
        _ => Ok(()),
    }
}

/// What a shard's outcome counts: the teacher's top-1 agreement with the data, and its size.
struct Counts {
    /// Records whose most likely entry is the true label (next token).
    correct: u64,
    /// Records in the shard.
    total: u64,
    /// The teacher's parameters.
    params: u64,
    /// Its FLOPs per sample (per window, for text).
    flops: u64,
}

/// A shard's outcome: the counts, the first 8 bytes of its fingerprint as the extra
/// `fingerprint`, and the shard blob as the artifact.
fn shard_ran(c: Counts, fingerprint: [u8; 32], shard: Vec<u8>) -> Ran {
    let id = BlobId::of_bytes(&shard);
    let mut head = [0u8; 8];
    head.copy_from_slice(&fingerprint[..8]);
    let extra = BTreeMap::from([("fingerprint".to_string(), i64::from_le_bytes(head))]);
    let m = Metrics {
        correct: c.correct,
        total: c.total,
        params: c.params,
        flops: c.flops,
        extra,
        artifacts: vec![id],
    };
    Ran {
        outcome: Outcome::Success(m),
        blobs: vec![(id, shard)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hivemesh_trainer::lm::LmConfig;
    use hivemesh_trainer::train::Limits;

    #[test]
    fn a_text_shard_over_the_memory_limit_is_left_to_another_peer() {
        let c = LmConfig::small(84);
        let limits = Limits {
            memory_budget: Some(1 << 30),
            ..Limits::default()
        };
        // 500 windows of 64 at k = 20: 7.7 MB of labels.
        check_shard_memory(500, &c, 20, &limits).expect("fits");
        // 2 million windows at k = 255: some 400 GB.
        let e = check_shard_memory(2_000_000, &c, 255, &limits).expect_err("over the limit");
        assert!(matches!(e, ExecError::OverLimit(_)), "{e}");
    }
}
