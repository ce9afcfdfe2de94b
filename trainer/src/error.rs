//! Errors of the trainer. Each names what is wrong and where (file and offset, layer, limit).

use std::path::PathBuf;

/// A dataset could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content is broken.
    #[error("{} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset (in the decompressed stream for gzip files) where the problem is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A cell of a table (CSV) is wrong: `file:row:col` (1-based, rows as lines of the file).
    #[error("{}:{row}:{col}: {reason}", path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// The line.
        row: usize,
        /// The column.
        col: usize,
        /// What is wrong.
        reason: String,
    },
    /// A member of an archive (`.npz`) or a file of a folder is wrong.
    #[error("{} ({member}): {reason}", path.display())]
    Member {
        /// The archive or folder.
        path: PathBuf,
        /// The member or file inside it.
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// The data is readable but inconsistent (labels, sizes, ranges).
    #[error("invalid dataset: {0}")]
    Invalid(String),
}

/// A job could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data is not usable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The architecture does not fit the data or is not valid; names the layer.
    #[error("architecture: {0}")]
    Arch(String),
    /// The job would need more memory than allowed; refused before allocating.
    #[error("job needs about {needed} bytes, over the memory budget of {budget} bytes")]
    MemoryBudget {
        /// Estimated peak bytes.
        needed: u64,
        /// The configured budget.
        budget: u64,
    },
    /// The budget or options are not valid.
    #[error("invalid training options: {0}")]
    Options(String),
    /// A loss expression is not valid.
    #[error("loss expression: {0}")]
    Loss(String),
    /// Training diverged (NaN or infinite loss or weights): a failed job, not a crash.
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged {
        /// The optimiser step where it happened.
        step: u64,
        /// The loss value.
        loss: f32,
    },
    /// A weights artifact is broken or belongs to another architecture.
    #[error("weights artifact: {0}")]
    Artifact(String),
    /// The requested backend is not available on this host.
    #[error("backend unavailable: {0}")]
    Backend(String),
    /// The job would cost more compute than allowed; refused before allocating.
    #[error(
        "job needs about {needed} FLOPs to train, over the compute budget of {budget} FLOPs \
         (raise max_job_flops to run it)"
    )]
    CostBudget {
        /// Estimated training FLOPs.
        needed: u64,
        /// The configured budget.
        budget: u64,
    },
    /// Training was stopped before it finished (see [`crate::train::Stop`]).
    #[error("training stopped at step {step}: {reason}")]
    Stopped {
        /// The optimiser steps done.
        step: u64,
        /// Why.
        reason: StopReason,
    },
}

/// Why a training run was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// The job ran past its wall-clock limit.
    #[error("the job ran past its time limit of {limit_s} s")]
    TimeLimit {
        /// The limit, in seconds.
        limit_s: u64,
    },
    /// The process is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}
