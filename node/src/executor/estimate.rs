//! Generation 0's job deadline from the campaign's cost (issue 23): before any job has run,
//! the submitting node estimates how long the longest generation-0 job takes from its FLOPs ×
//! steps × batch and a throughput per backend class, so that a campaign file that names no
//! `job_deadline_s` gets a deadline sized to its jobs. The generation then stretches its
//! deadline as its jobs settle (ADR 0007, part 3).

use hivemesh_protocol::derive::Derivation;
use hivemesh_protocol::spec::{BackendClass, CampaignSpec, JobPayload, Search};
use hivemesh_trainer::train::NasJob;

use super::{budget, load_dataset, nas};

/// Training throughput the estimate assumes, FLOPs per millisecond: a fifth of what this
/// project's 2-core VM measured for an MLP on the CPU backend (25 GFLOP/s, BENCHMARKS.md
/// "trainer"), for slower or busier hosts.
const CPU_FLOPS_PER_MS: u64 = 5_000_000;
/// The same for CUDA (a conservative 100 GFLOP/s: small models do not fill a GPU).
const CUDA_FLOPS_PER_MS: u64 = 100_000_000;
/// A step's fixed cost beside its FLOPs (dispatch, optimiser update), ms: what dominates for
/// the small models of the embedded digits set.
const CPU_STEP_MS: u64 = 1;
/// The same for CUDA (kernel launches).
const CUDA_STEP_MS: u64 = 2;
/// The deadline is this many times the longest estimate.
const SAFETY: u64 = 3;
/// The shortest deadline an estimate gives, ms.
const MIN_DEADLINE_MS: u64 = 30_000;
/// The longest, ms (the protocol's default upper bound).
const MAX_DEADLINE_MS: u64 = 24 * 3_600_000;

/// How long the longest of `spec`'s generation-0 jobs should take, ms, or `None` when it
/// cannot be told here (a kind other than architecture search, whose cost depends on blobs;
/// a dataset this node cannot load; a genome that is no model).
pub fn estimate_job_ms(spec: &CampaignSpec) -> Option<u64> {
    let Search::Nas(params) = &spec.search else {
        return None;
    };
    let loaded = load_dataset(&spec.dataset).ok()?;
    let jobs = Derivation::new(spec).ok()?.generation_zero().to_vec();
    let budget = budget(&spec.budget);
    let mut worst = 0u64;
    for job in &jobs {
        let JobPayload::Nas { genome } = &job.payload else {
            return None;
        };
        let Ok(arch) = nas::architecture(&params.space, genome, &loaded.data) else {
            continue;
        };
        let nas = NasJob {
            arch: &arch,
            data: &loaded.data,
            splits: &loaded.splits,
            budget: &budget,
            seed: job.seed,
        };
        worst = worst.max(nas.cost_flops().ok()?);
    }
    let steps = budget.total_steps(loaded.splits.train.len());
    let (rate, step_ms) = match spec.backend {
        BackendClass::CpuNdarray => (CPU_FLOPS_PER_MS, CPU_STEP_MS),
        BackendClass::Cuda => (CUDA_FLOPS_PER_MS, CUDA_STEP_MS),
    };
    Some(steps.saturating_mul(step_ms).saturating_add(worst / rate))
}

/// The generation-0 deadline for a job estimated at `job_ms`: [`SAFETY`] times it, within
/// 30 s and 24 h.
pub fn deadline_for(job_ms: u64) -> u64 {
    job_ms
        .saturating_mul(SAFETY)
        .clamp(MIN_DEADLINE_MS, MAX_DEADLINE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign_file::CampaignFile;
    use crate::submit::build_spec;

    fn spec(text: &str) -> CampaignSpec {
        let file = CampaignFile::parse(text).expect("parses");
        let key = hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public();
        build_spec(&file, key, &[], hivemesh_protocol::Timestamp(1)).expect("spec")
    }

    const SMALL: &str = "name = \"x\"\n[nas]\nwidths = [16]\nmax_layers = 1\npopulation = 4\n\
                         generations = 1\n[budget]\nmax_steps = 100\nbatch_size = 32\n";

    #[test]
    fn bigger_jobs_get_longer_deadlines_and_a_given_deadline_stands() {
        let small = estimate_job_ms(&spec(SMALL)).expect("NAS on digits is estimated");
        let big_text = SMALL
            .replace("widths = [16]", "widths = [4096]")
            .replace("max_steps = 100", "max_steps = 100000\nepochs = 1000");
        let big = estimate_job_ms(&spec(&big_text)).expect("estimated");
        assert!(big > 100 * small, "{big} vs {small}");
        // A file without job_deadline_s gets the estimate's deadline.
        assert_eq!(
            spec(&big_text).schedule.job_deadline_ms,
            deadline_for(big),
            "estimated"
        );
        assert!(
            deadline_for(big) > 600_000,
            "longer than the old fixed 10 min"
        );
        assert_eq!(deadline_for(1), MIN_DEADLINE_MS);
        // One that names it keeps it.
        let given = format!("{big_text}[schedule]\njob_deadline_s = 45\n");
        assert_eq!(spec(&given).schedule.job_deadline_ms, 45_000);
    }

    #[test]
    fn kinds_whose_cost_needs_blobs_are_not_estimated() {
        let loss = "name = \"x\"\n[loss]\npopulation = 4\ngenerations = 1\n\
                    reference_model = \"{}\"\n";
        let file = CampaignFile::parse(&loss.replace("{}", &"0".repeat(64))).expect("parses");
        let key = hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public();
        let s = build_spec(&file, key, &[], hivemesh_protocol::Timestamp(1)).expect("spec");
        assert_eq!(estimate_job_ms(&s), None);
        assert_eq!(s.schedule.job_deadline_ms, 600_000, "the default stands");
    }
}
