//! The leaf types of results: what a job's executors report ([`Outcome`], [`Metrics`],
//! [`Failure`]) and how far apart agreeing results may be ([`Tolerance`]).
//!
//! This module imports nothing of the crate but [`crate::id`], so every module above it
//! (specs, messages, agreement, audits, closures) can use these types without importing each
//! other in a circle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, context, hash_canonical};

/// A job's outcome: metrics, or a failure that must itself be agreed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Training finished and was evaluated.
    Success(Metrics),
    /// Training could not finish.
    Failure(Failure),
}

impl Outcome {
    /// The content digest of this outcome (order key for deterministic choices).
    pub fn digest(&self) -> [u8; 32] {
        hash_canonical(context::OUTCOME, self)
    }
}

/// Metrics of a finished job. Integers, so that comparisons give every node the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Metrics {
    /// Correct predictions on the evaluation split.
    pub correct: u64,
    /// Size of the evaluation split.
    pub total: u64,
    /// Trainable parameters of the model (exact).
    pub params: u64,
    /// FLOPs of one forward pass of one sample (exact; one multiply-add = 2 FLOPs).
    pub flops: u64,
    /// Named extra metrics as integers (fixed point where the value is fractional; the name
    /// says the scale, e.g. `val_loss_micro`). Sorted by name.
    pub extra: BTreeMap<String, i64>,
    /// Blobs produced (weights, shards).
    pub artifacts: Vec<BlobId>,
}

/// A job that could not finish.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Failure {
    /// What went wrong (compared when agreeing).
    pub kind: FailureKind,
    /// Free-text detail (not compared).
    pub detail: String,
}

/// Classes of job failure. Only the class is compared between executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// The loss or weights became NaN or infinite.
    NonFinite,
    /// The job spec cannot be executed (e.g. a genome that decodes to no valid model).
    InvalidJob,
    /// The dataset or another blob could not be obtained.
    DataUnavailable,
    /// Ran out of memory.
    OutOfMemory,
    /// Ran past the executor's wall-clock limit for one job (stopped, not finished).
    TimeLimit,
}

/// How far apart two agreeing results may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tolerance {
    /// Largest allowed difference in correct counts.
    pub correct: u64,
    /// Largest allowed difference in each named extra metric.
    pub extra: u64,
    /// Whether artifact blob ids (weights, shards) must be identical.
    pub exact_artifacts: bool,
}

impl Tolerance {
    /// Bit-exact agreement (CPU backend).
    pub const EXACT: Tolerance = Tolerance {
        correct: 0,
        extra: 0,
        exact_artifacts: true,
    };
}
