//! Loss-function search jobs: train the campaign's fixed reference model with the job's
//! expression; report its test accuracy, params and FLOPs, and the tuned constants as extras
//! `c0_micro`, `c1_micro`, … (millionths).

use hivemesh_evolve::arch::Architecture;
use hivemesh_evolve::gp::Expr;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{FailureKind, MAX_EXTRA_METRICS, Metrics, Outcome};
use hivemesh_protocol::spec::LossParams;
use hivemesh_trainer::loss::LossJob;

use super::{ExecError, JobRun, Ran, failure, fetch, train_failure};

/// The blobs a loss job needs: the reference model.
pub fn needed_blobs(p: &LossParams) -> Vec<(BlobId, &'static str)> {
    vec![(p.reference_model, "reference model")]
}

/// Trains the reference model with the expression.
pub(super) fn run(
    p: &LossParams,
    expression: &[u8],
    job: &mut JobRun<'_>,
) -> Result<Ran, ExecError> {
    let bytes = fetch(job.blobs, &p.reference_model, "reference model")?;
    let arch: Architecture = postcard::from_bytes(&bytes).map_err(|e| ExecError::Blob {
        id: p.reference_model,
        what: "reference model",
        reason: format!("not an architecture IR: {e}"),
    })?;
    let expr: Expr = match postcard::from_bytes(expression) {
        Ok(e) => e,
        Err(e) => {
            let detail = format!("the expression does not decode: {e}");
            return Ok(Ran::nothing(failure(FailureKind::InvalidJob, detail)));
        }
    };
    let lj = LossJob {
        arch: &arch,
        expr: &expr,
        data: job.data,
        splits: job.splits,
        budget: job.budget,
        tuning_steps: p.constant_tuning_steps,
        seed: job.seed,
    };
    match job.runner.loss(&lj, job.limits, job.progress) {
        Ok(r) => {
            let extra = r
                .constants
                .iter()
                .take(MAX_EXTRA_METRICS)
                .enumerate()
                .map(|(i, c)| (format!("c{i}_micro"), (f64::from(*c) * 1e6).round() as i64))
                .collect();
            let m = Metrics {
                correct: r.correct,
                total: r.total,
                params: arch.params().unwrap_or(0),
                flops: arch.flops().unwrap_or(0),
                extra,
                artifacts: vec![],
            };
            Ok(Ran::nothing(Outcome::Success(m)))
        }
        Err(e) => Ok(Ran::nothing(train_failure(e)?)),
    }
}
