//! Distillation shards: a teacher's top-k soft labels over ranges of a dataset, one job per
//! shard, in a single generation. Nothing is searched; the shards' agreed blobs are the
//! campaign's product.

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    CampaignKind, JobPayload, KindRules, MAX_JOBS_PER_GENERATION, SearchError, SearchState, Told,
};
use crate::id::BlobId;
use crate::spec_error::{SpecError, field};

/// Distillation parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillParams {
    /// The teacher model: architecture and weights, as a blob.
    pub teacher: BlobId,
    /// Probabilities kept per sample.
    pub top_k: u8,
    /// Samples per shard (one job per shard).
    pub shard_size: u32,
    /// Samples of the dataset to label (shards cover `0..samples`).
    pub samples: u64,
}

impl DistillParams {
    /// The shards, as `start..end` sample ranges in job-index order.
    pub fn shards(&self) -> impl Iterator<Item = core::ops::Range<u64>> + '_ {
        let size = u64::from(self.shard_size.max(1));
        (0..self.samples.div_ceil(size)).map(move |k| k * size..((k + 1) * size).min(self.samples))
    }
}

impl KindRules for DistillParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Distill
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.top_k == 0 {
            return Err(field("top_k", "must be at least 1"));
        }
        if self.shard_size == 0 {
            return Err(field("shard_size", "must be at least 1"));
        }
        if self.samples == 0
            || self.samples.div_ceil(u64::from(self.shard_size)) > MAX_JOBS_PER_GENERATION
        {
            return Err(field(
                "samples",
                format!("must be at least 1 and make at most {MAX_JOBS_PER_GENERATION} shards"),
            ));
        }
        Ok(())
    }

    fn generations(&self) -> u32 {
        1
    }

    fn jobs_per_generation(&self) -> u64 {
        self.samples.div_ceil(u64::from(self.shard_size.max(1)))
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        Ok(Box::new(Shards(self.clone())))
    }
}

/// A sample range as reports show it.
pub(super) fn summary(start: u64, end: u64) -> String {
    format!("{start}..{end}")
}

/// The "search" of a distillation campaign: its shards, once.
#[derive(Clone)]
struct Shards(DistillParams);

impl SearchState for Shards {
    fn ask(&mut self, _rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        self.0
            .shards()
            .map(|r| JobPayload::Distill {
                start: r.start,
                end: r.end,
            })
            .collect()
    }

    fn tell(&mut self, _told: &[Told<'_>]) -> Result<(), SearchError> {
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn params(samples: u64, shard_size: u32) -> DistillParams {
        DistillParams {
            teacher: BlobId::of_bytes(b"teacher"),
            top_k: 3,
            shard_size,
            samples,
        }
    }

    #[test]
    fn shards_cover_the_samples_once_the_last_one_short() {
        let p = params(10, 4);
        assert_eq!(p.shards().collect::<Vec<_>>(), vec![0..4, 4..8, 8..10]);
        assert_eq!(p.jobs_per_generation(), 3);
        let jobs = p
            .start()
            .expect("starts")
            .ask(&mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(jobs[2], JobPayload::Distill { start: 8, end: 10 });
        assert_eq!(p.generations(), 1);
    }

    #[test]
    fn too_many_shards_are_refused() {
        let p = params(MAX_JOBS_PER_GENERATION + 1, 1);
        assert!(p.validate().unwrap_err().to_string().contains("samples"));
        params(MAX_JOBS_PER_GENERATION, 1)
            .validate()
            .expect("valid");
    }
}
