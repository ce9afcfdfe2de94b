//! Architecture search jobs: decode the genome into a model for the dataset, train it, report
//! test accuracy, the IR's exact params and FLOPs, and the trained weights as an artifact.

use std::collections::BTreeMap;

use hivemesh_evolve::arch::Architecture;
use hivemesh_protocol::derive::decode_genome;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::{NasParams, NasSpace};
use hivemesh_trainer::data::Dataset;
use hivemesh_trainer::train::NasJob;

use super::{ExecError, JobRun, Ran, failure, train_failure};

/// Trains the genome's architecture.
pub(super) fn run(p: &NasParams, genome: &[u8], job: &mut JobRun<'_>) -> Result<Ran, ExecError> {
    let arch = match architecture(&p.space, genome, job.data) {
        Ok(a) => a,
        Err(e) => {
            return Ok(Ran::nothing(failure(
                FailureKind::InvalidJob,
                e.to_string(),
            )));
        }
    };
    let nas = NasJob {
        arch: &arch,
        data: job.data,
        splits: job.splits,
        budget: job.budget,
        seed: job.seed,
    };
    match job.runner.nas(&nas, job.limits, job.progress) {
        Ok(r) => {
            let bytes = r.weights.to_bytes();
            let id = BlobId::of_bytes(&bytes);
            let m = Metrics {
                correct: r.correct,
                total: r.total,
                params: r.params,
                flops: r.flops,
                extra: BTreeMap::new(),
                artifacts: vec![id],
            };
            Ok(Ran {
                outcome: Outcome::Success(m),
                blobs: vec![(id, bytes)],
            })
        }
        Err(e) => Ok(Ran::nothing(train_failure(e)?)),
    }
}

/// Why a genome is not a valid model for the data.
#[derive(Debug, thiserror::Error)]
pub(super) enum InvalidGenome {
    /// The bytes are not a genome.
    #[error("the genome does not decode")]
    Undecodable,
    /// The genes make no valid architecture for the data.
    #[error("{0}")]
    Arch(String),
}

/// A NAS genome as an architecture for `data`, or why it is not a valid model for it.
pub(super) fn architecture(
    space: &NasSpace,
    genome: &[u8],
    data: &Dataset,
) -> Result<Architecture, InvalidGenome> {
    let genes = decode_genome(genome).ok_or(InvalidGenome::Undecodable)?;
    space
        .for_data(data.shape, data.classes)
        .decode(&genes)
        .map_err(|e| InvalidGenome::Arch(e.to_string()))
}
