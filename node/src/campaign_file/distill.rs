//! `[distill]`: distillation shards labelled by a teacher, and their defaults.

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{DistillParams, Search};
use serde::Deserialize;

use super::{CampaignFileError, field};

/// The blob-naming key of `[distill]`.
pub const BLOB_FIELD: (&str, &str) = ("distill", "teacher");

/// `[distill]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillFile {
    /// The teacher (architecture and weights): a blob id (hex), or `file:PATH` (uploaded by
    /// `campaign submit`).
    pub teacher: String,
    /// Probabilities kept per sample.
    #[serde(default = "default_top_k")]
    pub top_k: u8,
    /// Samples per shard.
    pub shard_size: u32,
    /// Samples to label.
    pub samples: u64,
}

fn default_top_k() -> u8 {
    3
}

impl DistillFile {
    /// The protocol's search (the teacher must be a blob id by now).
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let d = self;
        Ok(Search::Distill(DistillParams {
            teacher: d
                .teacher
                .parse::<BlobId>()
                .map_err(|e| field("distill.teacher", e.to_string()))?,
            top_k: d.top_k,
            shard_size: d.shard_size,
            samples: d.samples,
        }))
    }
}
