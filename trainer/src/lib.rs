//! # hivemesh-trainer
//!
//! Real training for hivemesh jobs, with `burn` (CPU `ndarray` backend by default, CUDA behind
//! a `cuda` feature). It knows nothing of peers or messages: it turns a job spec into metrics.
//!
//! It will own (see the `trainer` issue): burn models built from evolve's architecture IR,
//! reproducible training loops with weights initialised from the job's own seeded RNG (so
//! concurrent jobs stay bit-identical), GP loss expressions compiled to tensor ops, distillation
//! (teacher top-k soft labels, student KD loss), and datasets (IDX, the embedded 8x8 digits CSV,
//! text corpora) with content ids and deterministic splits.
//!
//! Nothing is implemented yet: this crate is a placeholder so the workspace has its final shape.
