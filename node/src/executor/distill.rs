//! Distillation jobs: label a shard of the dataset with the teacher's top-k probabilities;
//! report the teacher's top-1 `correct` over the shard and the shard size, the teacher's
//! params and FLOPs, the shard blob (HMKD v1) as the artifact and the first 8 bytes of its
//! fingerprint as the extra `fingerprint`.

use std::collections::BTreeMap;

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{Metrics, Outcome};
use hivemesh_protocol::spec::DistillParams;
use hivemesh_trainer::model::WeightsFile;

use super::{ExecError, JobRun, Ran, fetch, train_failure};

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
            let shard = labels.to_bytes();
            let id = BlobId::of_bytes(&shard);
            let correct = labels
                .entries
                .chunks(usize::from(labels.k.max(1)))
                .zip(start..end)
                .filter(|(rec, i)| {
                    rec.first().map(|&(c, _)| u32::from(c))
                        == data.labels.get(*i as usize).map(|&l| u32::from(l))
                })
                .count() as u64;
            let fp = labels.fingerprint();
            let mut extra = BTreeMap::new();
            extra.insert(
                "fingerprint".to_string(),
                i64::from_le_bytes([fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7]]),
            );
            let m = Metrics {
                correct,
                total: labels.len() as u64,
                params: teacher.arch.params().unwrap_or(0),
                flops: teacher.arch.flops().unwrap_or(0),
                extra,
                artifacts: vec![id],
            };
            Ok(Ran {
                outcome: Outcome::Success(m),
                blobs: vec![(id, shard)],
            })
        }
        Err(e) => Ok(Ran::nothing(train_failure(e)?)),
    }
}
