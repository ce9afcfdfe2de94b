//! Generation 0's job deadline from the campaign's cost (issue 23): before any job has run,
//! the submitting node estimates how long the longest generation-0 job takes from its FLOPs ×
//! steps × batch (architecture search: each genome's model; loss search: the reference model,
//! with its constant-tuning steps; distillation: the teacher over one shard) and a throughput
//! per backend class, so that a campaign file that names no `job_deadline_s` gets a deadline
//! sized to its jobs. The generation then stretches its deadline as its jobs settle (ADR 0007,
//! part 3).

use hivemesh_evolve::arch::Architecture;
use hivemesh_protocol::derive::Derivation;
use hivemesh_protocol::spec::{BackendClass, CampaignSpec, JobPayload, NasParams, Search};
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::train::{Budget, NasJob};

use super::{BlobSource, Loaded, budget, load_dataset, nas};

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
/// cannot be told here: a dataset this node cannot load, or a reference model or teacher
/// (loss search, distillation) that `blobs` does not hold or that does not decode.
pub fn estimate_job_ms(spec: &CampaignSpec, blobs: &dyn BlobSource) -> Option<u64> {
    let loaded = load_dataset(&spec.dataset, blobs).ok()?;
    let budget = budget(&spec.budget);
    let steps = budget.total_steps(loaded.splits.train.len());
    let batch = u64::from(budget.batch_size);
    let test = loaded.splits.test.len() as u64;
    // A training step costs a forward and a backward pass (about 3 forward passes) per sample.
    let training = |steps: u64, forward: u64| {
        steps
            .saturating_mul(batch)
            .saturating_mul(forward.saturating_mul(3))
            .saturating_add(test.saturating_mul(forward))
    };
    let (flops, step_count) = match &spec.search {
        Search::Nas(params) => (nas_cost(spec, params, &loaded, &budget)?, steps),
        Search::Loss(params) => {
            let bytes = blobs.blob(&params.reference_model)?;
            let arch: Architecture = postcard::from_bytes(&bytes).ok()?;
            // Constant tuning takes gradient steps on the same model.
            let steps = steps.saturating_add(u64::from(params.constant_tuning_steps));
            (training(steps, arch.flops().ok()?), steps)
        }
        Search::Distill(params) => {
            let teacher = WeightsFile::from_bytes(&blobs.blob(&params.teacher)?).ok()?;
            // Labelling a shard is one forward pass per sample.
            let shard = u64::from(params.shard_size);
            (shard.saturating_mul(teacher.arch.flops().ok()?), 0)
        }
        Search::Train(params) => {
            let arch = super::train::model_arch(&blobs.blob(&params.model)?)?;
            let steps = u64::from(params.inner_steps);
            (training(steps, arch.flops().ok()?), steps)
        }
        Search::Federated(params) => {
            let arch = super::train::model_arch(&blobs.blob(&params.model)?)?;
            let steps = u64::from(params.local_steps);
            (training(steps, arch.flops().ok()?), steps)
        }
        Search::Prompt(params) => {
            // One forward pass of the full context per prompt (an upper bound).
            let model = super::prompt::teacher(params, &blobs.blob(&params.teacher)?).ok()?;
            let calls = u64::from(params.batch);
            let flops = model.config().flops_per_sequence();
            (calls.saturating_mul(flops), calls)
        }
    };
    let (rate, step_ms) = match spec.backend {
        BackendClass::CpuNdarray => (CPU_FLOPS_PER_MS, CPU_STEP_MS),
        BackendClass::Cuda => (CUDA_FLOPS_PER_MS, CUDA_STEP_MS),
    };
    Some(
        step_count
            .saturating_mul(step_ms)
            .saturating_add(flops / rate),
    )
}

/// The FLOPs of the costliest generation-0 job of an architecture search (genomes that are no
/// model for the data are left out: they fail at once).
fn nas_cost(
    spec: &CampaignSpec,
    params: &NasParams,
    loaded: &Loaded,
    budget: &Budget,
) -> Option<u64> {
    let jobs = Derivation::new(spec).ok()?.generation_zero().to_vec();
    let mut worst = 0u64;
    for job in &jobs {
        let JobPayload::Nas { genome } = &job.payload else {
            return None;
        };
        let Ok(arch) = nas::architecture(&params.space, genome, &loaded.data) else {
            continue;
        };
        let job = NasJob {
            arch: &arch,
            data: &loaded.data,
            splits: &loaded.splits,
            budget,
            seed: job.seed,
        };
        worst = worst.max(job.cost_flops().ok()?);
    }
    Some(worst)
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
    use std::collections::BTreeMap;

    use hivemesh_protocol::id::BlobId;

    use crate::campaign_file::CampaignFile;
    use crate::submit::{Resolve, Submission, build_spec};

    fn no_blobs() -> BTreeMap<BlobId, Vec<u8>> {
        BTreeMap::new()
    }

    fn spec(text: &str) -> CampaignSpec {
        let file = CampaignFile::parse(text).expect("parses");
        let key = hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public();
        build_spec(
            &file,
            key,
            &[],
            hivemesh_protocol::Timestamp(1),
            &no_blobs(),
        )
        .expect("spec")
    }

    const SMALL: &str = "name = \"x\"\n[nas]\nwidths = [16]\nmax_layers = 1\npopulation = 4\n\
                         generations = 1\n[budget]\nmax_steps = 100\nbatch_size = 32\n";

    #[test]
    fn bigger_jobs_get_longer_deadlines_and_a_given_deadline_stands() {
        let small = estimate_job_ms(&spec(SMALL), &no_blobs()).expect("NAS on digits is estimated");
        let big_text = SMALL
            .replace("widths = [16]", "widths = [4096]")
            .replace("max_steps = 100", "max_steps = 100000\nepochs = 1000");
        let big = estimate_job_ms(&spec(&big_text), &no_blobs()).expect("estimated");
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
    fn a_loss_search_is_estimated_from_its_reference_model_when_it_is_held() {
        let text = "name = \"x\"\n[loss]\npopulation = 4\ngenerations = 1\n\
                    reference_model = \"zoo:mlp-16\"\n[budget]\nmax_steps = 100\n";
        let mut sub = Submission::parse(text).expect("parses");
        let mut built = BTreeMap::new();
        futures::executor::block_on(sub.upload_blobs(
            Resolve {
                zoo: true,
                files: None,
            },
            |_, bytes| {
                let id = BlobId::of_bytes(&bytes);
                built.insert(id, bytes);
                async move { Ok::<_, std::convert::Infallible>(id) }
            },
        ))
        .expect("the zoo model is built");
        let key = hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public();
        let held =
            build_spec(&sub.file, key, &[], hivemesh_protocol::Timestamp(1), &built).expect("spec");
        let ms = estimate_job_ms(&held, &built).expect("estimated from the model");
        // One epoch of the digits set at batch 32 is 40-odd steps, 1 ms each at least.
        assert!(ms >= 40, "at least a step's fixed cost per step: {ms}");
        assert_eq!(held.schedule.job_deadline_ms, deadline_for(ms));
        // Without the model's bytes the estimate cannot be made: the default stands.
        let blind = build_spec(
            &sub.file,
            key,
            &[],
            hivemesh_protocol::Timestamp(1),
            &no_blobs(),
        )
        .expect("spec");
        assert_eq!(estimate_job_ms(&blind, &no_blobs()), None);
        assert_eq!(
            blind.schedule.job_deadline_ms, 600_000,
            "the default stands"
        );
    }

    #[test]
    fn a_distillation_is_estimated_from_its_teacher_over_one_shard() {
        let data = hivemesh_trainer::data::digits();
        let arch = hivemesh_trainer::zoo::mlp(data.shape, 64, data.classes);
        let model: hivemesh_trainer::model::Model<hivemesh_trainer::Cpu> =
            hivemesh_trainer::model::Model::new(&arch, [1; 32], &Default::default())
                .expect("a model");
        let teacher = model.weights_file(&arch).to_bytes();
        let id = BlobId::of_bytes(&teacher);
        let blobs = BTreeMap::from([(id, teacher)]);
        let text = format!(
            "name = \"x\"\n[distill]\nteacher = \"{id}\"\ntop_k = 3\nshard_size = 500\n\
             samples = 1500\n"
        );
        let file = CampaignFile::parse(&text).expect("parses");
        let key = hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public();
        let s = build_spec(&file, key, &[], hivemesh_protocol::Timestamp(1), &blobs).expect("spec");
        let ms = estimate_job_ms(&s, &blobs).expect("estimated from the teacher");
        // 500 forward passes of a small MLP: well under the floor.
        assert_eq!(s.schedule.job_deadline_ms, deadline_for(ms));
        assert_eq!(deadline_for(ms), MIN_DEADLINE_MS, "{ms} ms");
        assert_eq!(
            estimate_job_ms(&s, &no_blobs()),
            None,
            "no teacher, no estimate"
        );
    }
}
