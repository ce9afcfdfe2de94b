//! Campaign and job specifications: what a researcher asks the swarm to compute.
//!
//! A [`CampaignSpec`] is signed by its creator and gossiped; its [`CampaignId`] is the hash of
//! its canonical encoding. Jobs are not announced: every node derives the same [`JobSpec`]s from
//! the spec (generation 0) and from each generation's agreed results (later generations), and a
//! job's [`JobId`] is the hash of its spec.

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, CampaignId, JobId, context, hash_canonical};
use crate::identity::PeerKey;
use crate::outcome::Tolerance;
use crate::spec_error::field;

pub use crate::kinds::{
    Aggregate, CampaignKind, ClientPrivacy, DistillParams, ExamplePrivacy, Features, FedJob,
    FederatedParams, JobPayload, LossParams, MAX_JOBS_PER_GENERATION, NasParams, NasSpace,
    OuterStep, PromptParams, PromptStrategy, Search, SecureAggregation, SecureRound, SecureStep,
    Strategy, TrainJob, TrainParams, UpdateEncoding,
};
pub use crate::spec_error::SpecError;
use crate::time::Timestamp;

/// The most executors a job may have.
pub const MAX_REDUNDANCY: u8 = 16;
/// The longest campaign name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest code-version string, in bytes.
pub const MAX_CODE_VERSION_LEN: usize = 64;
/// Audit rates are expressed in parts per million.
pub const PPM: u32 = 1_000_000;
/// Most members of a campaign's voting roster (ADR 0003: consensus cost grows with it).
pub const MAX_ROSTER: usize = 128;
/// Most epochs a job's budget may ask for (a protocol cap every node applies; each node's own
/// `max_job_flops` then bounds what it trains).
pub const MAX_EPOCHS: u32 = 10_000;
/// Most optimiser steps a job's budget may ask for.
pub const MAX_STEPS: u64 = 100_000_000;
/// What a researcher asks the swarm to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignSpec {
    /// A human-readable name (not unique; the id is).
    pub name: String,
    /// When the creator made it (distinguishes otherwise identical campaigns).
    pub created_at: Timestamp,
    /// The search to run and its parameters.
    pub search: Search,
    /// The data every job trains and evaluates on.
    pub dataset: DatasetRef,
    /// How much training each job gets.
    pub budget: TrainingBudget,
    /// The campaign's root seed; job seeds derive from it and from closures.
    pub seed: u64,
    /// Executors per job (`r`).
    pub redundancy: u8,
    /// Agreeing executors needed to settle a job (`q`).
    pub quorum: u8,
    /// How far agreeing results may differ.
    pub tolerance: Tolerance,
    /// Fraction of settled jobs that auditors re-execute, in parts per million.
    pub audit_rate_ppm: u32,
    /// The class of backend executors must use (CPU results are bit-exact; GPU ones are not).
    pub backend: BackendClass,
    /// The trainer code version executors must run (results from other versions are not
    /// comparable).
    pub code_version: String,
    /// The genesis roster: peers that vote on generation 0's closure (sorted, distinct; the
    /// creator enrols them). Later rosters are fixed by closures (ADR 0003).
    pub roster: Vec<PeerKey>,
    /// Deadlines and timeouts.
    pub schedule: Schedule,
}

/// Deadlines and timeouts of a campaign, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Generation 0's job deadline: how long one job may take. A job is due once each of its
    /// executors has had a deadline per job ahead of it in its queue (its due round, ADR 0007);
    /// after that the next-ranked peers may take it while it has no quorum. Later generations
    /// adapt it to observed job times (see `closure::next_deadline`).
    pub job_deadline_ms: u64,
    /// Smallest and largest adapted job deadline.
    pub min_deadline_ms: u64,
    /// See `min_deadline_ms`.
    pub max_deadline_ms: u64,
    /// Extra executors a job may get beyond `redundancy` (one more per deadline passed, and
    /// idle peers within this bound).
    pub max_extra_executors: u8,
    /// Base timeout of a consensus round step; round `k` waits `(1 + k)` times this.
    pub round_timeout_ms: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            job_deadline_ms: 10 * 60_000,
            min_deadline_ms: 10_000,
            max_deadline_ms: 24 * 3_600_000,
            max_extra_executors: 3,
            round_timeout_ms: 2_000,
        }
    }
}

/// A dataset, named by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// Hash of the dataset's canonical bytes.
    pub id: BlobId,
    /// A human-readable name, e.g. `digits-8x8`.
    pub name: String,
    /// Where else to get it than from peers by `id`: `builtin:digits` (every node holds it).
    /// Empty for an uploaded dataset: executors fetch the blob `id` (ADR 0008).
    pub sources: Vec<String>,
    /// The size of the dataset blob in bytes (1 ..= [`MAX_DATASET_BYTES`]): a node refuses a
    /// campaign whose dataset is over its own limit, and fetches no more than this.
    pub bytes: u64,
}

/// The largest dataset blob a campaign may name (64 GiB).
pub const MAX_DATASET_BYTES: u64 = 64 << 30;

/// How much training a job gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingBudget {
    /// Passes over the training split.
    pub epochs: u32,
    /// Optional cap on optimiser steps (whichever of epochs and steps ends first).
    pub max_steps: Option<u64>,
    /// Samples per step.
    pub batch_size: u32,
    /// The optimiser.
    pub optimizer: Optimizer,
    /// The peak learning rate.
    pub learning_rate: f32,
    /// How the learning rate changes over training.
    pub schedule: LrSchedule,
}

/// An optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Optimizer {
    /// Stochastic gradient descent with momentum.
    Sgd {
        /// Momentum coefficient in `[0, 1)`.
        momentum: f32,
    },
    /// Adam with the usual defaults.
    Adam,
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay to zero over the budget.
    Cosine,
}

/// The class of backend that produced a result. Results are only compared within a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendClass {
    /// burn's ndarray CPU backend: bit-exact across machines (measured on x86-64 with FMA).
    CpuNdarray,
    /// burn's CUDA backend: results differ in the last bits across GPU models.
    Cuda,
}

impl CampaignSpec {
    /// The campaign's id: the hash of this spec's canonical encoding.
    pub fn id(&self) -> CampaignId {
        CampaignId(hash_canonical(context::CAMPAIGN, self))
    }

    /// The campaign's kind.
    pub fn kind(&self) -> CampaignKind {
        self.search.kind()
    }

    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(field(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} bytes and not blank"),
            ));
        }
        if self.redundancy == 0 || self.redundancy > MAX_REDUNDANCY {
            return Err(field(
                "redundancy",
                format!("is {}, must be 1 to {MAX_REDUNDANCY}", self.redundancy),
            ));
        }
        if self.quorum == 0 || self.quorum > self.redundancy {
            return Err(field(
                "quorum",
                format!(
                    "is {}, must be 1 to redundancy ({})",
                    self.quorum, self.redundancy
                ),
            ));
        }
        if self.audit_rate_ppm > PPM {
            return Err(field(
                "audit_rate",
                format!(
                    "is {} ppm, must be at most {PPM} (100%)",
                    self.audit_rate_ppm
                ),
            ));
        }
        if self.code_version.is_empty() || self.code_version.len() > MAX_CODE_VERSION_LEN {
            return Err(field(
                "code_version",
                format!("must be 1 to {MAX_CODE_VERSION_LEN} bytes"),
            ));
        }
        if self.dataset.name.is_empty() || self.dataset.name.len() > MAX_NAME_LEN {
            return Err(field(
                "dataset.name",
                format!("must be 1 to {MAX_NAME_LEN} bytes"),
            ));
        }
        if !(1..=MAX_DATASET_BYTES).contains(&self.dataset.bytes) {
            return Err(field(
                "dataset.bytes",
                format!("must be 1 to {MAX_DATASET_BYTES}"),
            ));
        }
        if self.dataset.sources.len() > 8 || self.dataset.sources.iter().any(|s| s.len() > 256) {
            return Err(field(
                "dataset.sources",
                "at most 8 sources of at most 256 bytes each",
            ));
        }
        if self.roster.is_empty() || self.roster.len() > MAX_ROSTER {
            return Err(field(
                "roster",
                format!(
                    "has {} members, must have 1 to {MAX_ROSTER}",
                    self.roster.len()
                ),
            ));
        }
        if self.roster.windows(2).any(|w| w[0] >= w[1]) {
            return Err(field("roster", "must be sorted and without repeats"));
        }
        if let Some(bad) = self.roster.iter().find(|k| !k.is_valid_signer()) {
            return Err(field(
                "roster",
                format!("{} is not a valid ed25519 public key", bad.short()),
            ));
        }
        let sc = &self.schedule;
        if sc.min_deadline_ms == 0
            || sc.min_deadline_ms > sc.max_deadline_ms
            || !(sc.min_deadline_ms..=sc.max_deadline_ms).contains(&sc.job_deadline_ms)
        {
            return Err(field(
                "schedule",
                "need 0 < min_deadline_ms <= job_deadline_ms <= max_deadline_ms",
            ));
        }
        if sc.round_timeout_ms == 0 {
            return Err(field("schedule.round_timeout_ms", "must be at least 1"));
        }
        self.budget.validate()?;
        self.search.rules().validate()
    }
}

impl TrainingBudget {
    fn validate(&self) -> Result<(), SpecError> {
        if self.epochs == 0 && self.max_steps.is_none_or(|s| s == 0) {
            return Err(field("budget", "needs epochs >= 1 or max_steps >= 1"));
        }
        if self.epochs > MAX_EPOCHS {
            return Err(field(
                "budget.epochs",
                format!("is {}, must be at most {MAX_EPOCHS}", self.epochs),
            ));
        }
        if let Some(steps) = self.max_steps
            && steps > MAX_STEPS
        {
            return Err(field(
                "budget.max_steps",
                format!("is {steps}, must be at most {MAX_STEPS}"),
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1 << 16 {
            return Err(field("budget.batch_size", "must be 1 to 65536"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(field(
                "budget.learning_rate",
                format!(
                    "is {}, must be a positive finite number",
                    self.learning_rate
                ),
            ));
        }
        if let Optimizer::Sgd { momentum } = self.optimizer
            && !(0.0..1.0).contains(&momentum)
        {
            return Err(field(
                "budget.optimizer.momentum",
                format!("is {momentum}, must be in [0, 1)"),
            ));
        }
        Ok(())
    }
}

/// One unit of work, derived deterministically by every node (never announced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The campaign it belongs to.
    pub campaign: CampaignId,
    /// The generation it belongs to.
    pub generation: u32,
    /// Its index within the generation.
    pub index: u32,
    /// What to compute.
    pub payload: JobPayload,
    /// The seed for everything random in the job (weight init, shuffling).
    pub seed: u64,
    /// The trainer code version executors must run.
    pub code_version: String,
    /// The backend class executors must use.
    pub backend: BackendClass,
    /// Estimated work in compute units (the scoring weight of an agreed result).
    pub compute: u64,
}

impl JobSpec {
    /// The job's id: the hash of this spec's canonical encoding.
    pub fn id(&self) -> JobId {
        JobId(hash_canonical(context::JOB, self))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid NAS campaign for tests.
    pub(crate) fn sample_spec() -> CampaignSpec {
        CampaignSpec {
            name: "digits-mlp".into(),
            created_at: Timestamp(1_700_000_000_000),
            search: Search::Nas(NasParams {
                space: NasSpace::Mlp {
                    max_layers: 3,
                    widths: vec![16, 32, 64],
                },
                strategy: Strategy::Nsga2,
                population: 20,
                generations: 5,
            }),
            dataset: DatasetRef {
                id: BlobId::of_bytes(b"digits"),
                name: "digits-8x8".into(),
                sources: vec!["builtin:digits".into()],
                bytes: 1 << 20,
            },
            budget: TrainingBudget {
                epochs: 2,
                max_steps: None,
                batch_size: 64,
                optimizer: Optimizer::Adam,
                learning_rate: 1e-3,
                schedule: LrSchedule::Constant,
            },
            seed: 42,
            redundancy: 3,
            quorum: 2,
            tolerance: Tolerance::EXACT,
            audit_rate_ppm: 50_000,
            backend: BackendClass::CpuNdarray,
            code_version: "hivemesh-trainer/0.1.0".into(),
            roster: vec![crate::identity::Keypair::from_secret_bytes([1; 32]).public()],
            schedule: Schedule::default(),
        }
    }

    #[test]
    fn sample_is_valid_and_id_is_stable() {
        let s = sample_spec();
        s.validate().unwrap();
        assert_eq!(s.id(), s.clone().id());
        let mut t = s.clone();
        t.seed += 1;
        assert_ne!(s.id(), t.id());
        assert_eq!(s.kind(), CampaignKind::Nas);
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = sample_spec();
        s.quorum = 4;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("quorum") && e.contains("redundancy (3)"), "{e}");

        let mut s = sample_spec();
        s.budget.learning_rate = f32::NAN;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("learning_rate")
        );

        let mut s = sample_spec();
        s.audit_rate_ppm = PPM + 1;
        assert!(s.validate().unwrap_err().to_string().contains("audit_rate"));

        let mut s = sample_spec();
        s.redundancy = 0;
        assert!(s.validate().unwrap_err().to_string().contains("redundancy"));

        let mut s = sample_spec();
        s.name = " ".into();
        assert!(s.validate().unwrap_err().to_string().contains("name"));

        let mut s = sample_spec();
        s.search = Search::Nas(NasParams {
            space: NasSpace::Macro {
                phases: 2,
                nodes_per_phase: 4,
                channels: vec![16],
                kernels: vec![4],
            },
            strategy: Strategy::Nsga2,
            population: 10,
            generations: 2,
        });
        assert!(s.validate().unwrap_err().to_string().contains("kernels"));
    }

    /// A small NAS job of [`sample_spec`]'s campaign.
    pub(crate) fn sample_job() -> JobSpec {
        JobSpec {
            campaign: sample_spec().id(),
            generation: 0,
            index: 0,
            payload: JobPayload::Nas { genome: vec![1, 2] },
            seed: 9,
            code_version: "v".into(),
            backend: BackendClass::CpuNdarray,
            compute: 10,
        }
    }

    #[test]
    fn job_ids_differ_by_every_field() {
        let base = sample_job();
        let mut other = base.clone();
        other.index = 1;
        assert_ne!(base.id(), other.id());
        let mut other = base.clone();
        other.payload = JobPayload::Nas { genome: vec![1, 3] };
        assert_ne!(base.id(), other.id());
        assert_eq!(base.id(), base.clone().id());
    }
}
