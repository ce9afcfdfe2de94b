//! Job execution: a protocol [`JobSpec`] of a campaign, run by the trainer, becomes a signed
//! result's [`JobResult`] plus the blobs it produced.
//!
//! Two kinds of "no": a job that fails *deterministically* (training diverges, the genome
//! decodes to no valid model for the data, a loss expression is ill-typed) yields a
//! [`Outcome::Failure`] that honest executors agree on like any result. A job this node
//! *cannot* run here (another code version or backend class, the dataset or a blob is not
//! available, the job is over this node's memory budget) is an [`ExecError`]: nothing is
//! published, and the protocol's deadlines hand the job to the next-ranked peer.
//!
//! Each campaign kind is one module that owns running its jobs and what the node shows of it
//! ([`nas`], [`loss`], [`distill`], [`train`]); this module is the one place that matches on the kind
//! and hands over to them. What each kind reports is all integers, so every node compares
//! them the same way (see each module).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{Failure, FailureKind, JobResult, Outcome};
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, DatasetRef, JobPayload, JobSpec, LrSchedule, Optimizer, Search,
    SecureStep, TrainingBudget,
};
use hivemesh_trainer::StopReason;
use hivemesh_trainer::TrainError;
use hivemesh_trainer::attack::Attack;
use hivemesh_trainer::backend::{BackendChoice, Device, Runner};
use hivemesh_trainer::data::{self, Dataset, DatasetBlob, Splits};
use hivemesh_trainer::train::{Budget, Limits, OptimizerKind, Progress, Schedule, Stop};

use crate::admission::Admission;

pub mod distill;
pub mod estimate;
pub mod federated;
pub mod loss;
pub mod nas;
pub mod prompt;
pub mod secure;
pub mod train;

pub use federated::feature_shape;

/// The trainer code version this node runs; jobs name the version they were derived for.
pub const CODE_VERSION: &str = hivemesh_trainer::CODE_VERSION;

/// Why this node cannot run a job (nothing is published; another peer will take it).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The job belongs to another campaign than the spec given.
    #[error("job of campaign {job} run against the spec of campaign {spec}")]
    WrongCampaign {
        /// The job's campaign.
        job: String,
        /// The spec's campaign.
        spec: String,
    },
    /// The job was derived for another trainer version.
    #[error("the job needs trainer code version {want}; this node runs {CODE_VERSION}")]
    CodeVersion {
        /// The version the job names.
        want: String,
    },
    /// The job's backend class is not available here.
    #[error("backend class {class:?} is not available on this node: {reason}")]
    Backend {
        /// The class the job names.
        class: BackendClass,
        /// Why not.
        reason: String,
    },
    /// The campaign's dataset could not be obtained from any of its sources.
    #[error("dataset {name} (id {id}): {reason}")]
    Data {
        /// Its name.
        name: String,
        /// Its id.
        id: BlobId,
        /// What each source said.
        reason: String,
    },
    /// The dataset blob does not decode (its bytes are verified, so every executor sees the
    /// same: the job fails rather than waits).
    #[error("the dataset does not decode: {0}")]
    BadDataset(String),
    /// A blob the job needs (reference model, teacher) is not available here.
    #[error("blob {id} ({what}) is not available: {reason}")]
    Blob {
        /// The blob.
        id: BlobId,
        /// What it is for.
        what: &'static str,
        /// Why not.
        reason: String,
    },
    /// The job would exceed this node's memory or compute limit (`[accept]
    /// max_job_memory_mb`, `max_job_flops`).
    #[error("{0}: another peer will take it")]
    OverLimit(TrainError),
    /// A federated client's round for private data this node does not offer.
    #[error(
        "this node offers no private data named {0:?} (start it with --private-data {0}=PATH to \
         take part)"
    )]
    NoPrivateData(String),
    /// The node is shutting down (the job runs again after a restart).
    #[error("stopped at step {step}: the node is shutting down")]
    Stopped {
        /// Optimiser steps done.
        step: u64,
    },
}

/// Where the executor gets blobs by id (the node's store; a map in tests).
pub trait BlobSource: Send + Sync {
    /// The blob's bytes, if held. Callers check the hash.
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>>;

    /// The file holding the blob and its size, if it is on disk (datasets are read from it
    /// rather than whole into memory first). Callers check the hash.
    fn file(&self, _id: &BlobId) -> Option<(std::path::PathBuf, u64)> {
        None
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    /// The source.
    inner: R,
    /// blake3 of everything read.
    hasher: blake3::Hasher,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The dataset blob `id` from `blobs` (its file, else its bytes), hash-checked: the outer error
/// says it is not here (or not intact), the inner one that it does not decode.
pub(crate) fn dataset_blob(
    name: &str,
    id: &BlobId,
    blobs: &dyn BlobSource,
) -> Result<Result<DatasetBlob, String>, String> {
    if let Some((path, len)) = blobs.file(id) {
        return read_dataset_file(name, id, &path, len);
    }
    let bytes = blobs
        .blob(id)
        .ok_or_else(|| "the dataset blob is not in the store".to_string())?;
    if BlobId::of_bytes(&bytes) != *id {
        return Err("the stored bytes do not hash to the id".into());
    }
    Ok(DatasetBlob::decode(name, &bytes).map_err(|e| e.to_string()))
}

/// Blobs a submission holds: built or read in memory, or already in the node's store.
#[derive(Debug, Default)]
pub struct HeldBlobs {
    /// Blobs in memory.
    pub bytes: BTreeMap<BlobId, Vec<u8>>,
    /// Blobs on disk: their file and size.
    pub files: BTreeMap<BlobId, (std::path::PathBuf, u64)>,
}

impl BlobSource for HeldBlobs {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        if let Some(b) = self.bytes.get(id) {
            return Some(b.clone());
        }
        let (path, len) = self.files.get(id)?;
        (*len <= 1 << 30)
            .then(|| std::fs::read(path).ok())
            .flatten()
    }

    fn file(&self, id: &BlobId) -> Option<(std::path::PathBuf, u64)> {
        self.files.get(id).cloned()
    }
}

/// Decodes the dataset blob `id` from its file, checking its hash on the way.
fn read_dataset_file(
    name: &str,
    id: &BlobId,
    path: &std::path::Path,
    len: u64,
) -> Result<Result<DatasetBlob, String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = Hashing {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let decoded = DatasetBlob::read_from(name, &mut r, len);
    // Hash whatever the decoder left unread, so that the id is checked in every case.
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| e.to_string())?;
    if BlobId(*r.hasher.finalize().as_bytes()) != *id {
        return Err("the stored bytes do not hash to the id".into());
    }
    Ok(decoded.map_err(|e| e.to_string()))
}

impl BlobSource for BTreeMap<BlobId, Vec<u8>> {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.get(id).cloned()
    }
}

/// A finished job: the result to publish and the blobs to store and serve.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The result.
    pub result: JobResult,
    /// Blobs produced, by id (the ids listed in the result's artifacts).
    pub blobs: Vec<(BlobId, Vec<u8>)>,
}

/// What a kind's job needs to run: the backend, the data, the budget and where blobs are.
pub(crate) struct JobRun<'a> {
    /// The backend that trains.
    runner: &'a dyn Runner,
    /// This node's memory limits.
    limits: &'a Limits,
    /// The campaign's dataset.
    data: &'a Dataset,
    /// Its deterministic splits.
    splits: &'a Splits,
    /// The training budget.
    budget: &'a Budget,
    /// The job's seed.
    seed: u64,
    /// Where blobs the job needs come from.
    blobs: &'a dyn BlobSource,
    /// Training progress reports.
    progress: &'a mut dyn FnMut(&Progress),
}

/// What a kind's job produced: the outcome and the blobs to store.
pub(crate) struct Ran {
    /// The outcome to publish.
    outcome: Outcome,
    /// Blobs produced, by id.
    blobs: Vec<(BlobId, Vec<u8>)>,
}

impl Ran {
    /// An outcome with no blobs.
    fn nothing(outcome: Outcome) -> Ran {
        Ran {
            outcome,
            blobs: Vec::new(),
        }
    }
}

/// A loaded dataset and its deterministic splits (MNIST keeps its official test part).
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The samples.
    data: Dataset,
    /// Its splits.
    splits: Splits,
}

impl Loaded {
    fn new(data: Dataset) -> Loaded {
        let splits = data.default_splits();
        Loaded { data, splits }
    }
}

/// Datasets an executor keeps loaded (the least recently loaded goes first).
const CACHED_DATASETS: usize = 4;

/// Runs jobs. Cheap to share across threads: datasets are loaded once and cached by id.
#[derive(Debug, Default)]
pub struct Executor {
    /// Memory and compute limits, and the shutdown flag every job watches.
    limits: Limits,
    /// Longest one job trains (`None`: no limit but the campaign's).
    max_job_time: Option<Duration>,
    /// Raised by [`Executor::stop_all`]: running jobs stop within one optimiser step.
    shutdown: Arc<AtomicBool>,
    /// Datasets loaded, by id, oldest first.
    datasets: Mutex<Vec<(BlobId, Arc<Loaded>)>>,
    /// Values (weights and statistics) of training campaigns' models, by model blob, newest
    /// last, at most [`MODEL_SIZES`]: read once, not at every fetch a round makes.
    model_values: Mutex<Vec<(BlobId, u64)>>,
    /// The private datasets this node offers to federated campaigns, by name.
    private: BTreeMap<String, Arc<Loaded>>,
    /// This node's secret for private randomness (DP sampling and noise): from its key.
    secret: [u8; 32],
    /// A malicious federated client's attack on its updates (netsim's attack suite), if any.
    attack: Option<Attack>,
    /// Features (of public splits and private data) computed for federated campaigns.
    features: federated::FeatureCache,
}

/// Models whose size [`Executor`] remembers.
const MODEL_SIZES: usize = 16;

impl Executor {
    /// An executor refusing jobs over the operator's limits (`admission`).
    pub fn new(admission: &Admission) -> Executor {
        Executor {
            limits: Limits {
                memory_budget: Some(admission.max_job_memory),
                flops_budget: Some(admission.max_job_flops),
                stop: Stop::default(),
            },
            max_job_time: Some(admission.max_job_time),
            shutdown: Arc::new(AtomicBool::new(false)),
            datasets: Mutex::new(Vec::new()),
            model_values: Mutex::new(Vec::new()),
            private: BTreeMap::new(),
            secret: [0; 32],
            attack: None,
            features: Default::default(),
        }
    }

    /// This executor sending `attack` instead of its federated updates (a Byzantine client,
    /// for netsim's attack suite; `None`: honest).
    pub fn with_attack(mut self, attack: Option<Attack>) -> Executor {
        self.attack = attack;
        self
    }

    /// This executor offering `private` datasets (by name) to federated campaigns, with
    /// `secret` (kept from everyone: derive it from the node's key) seeding their private
    /// randomness.
    pub fn with_private_data(
        mut self,
        private: BTreeMap<String, Dataset>,
        secret: [u8; 32],
    ) -> Executor {
        self.private = private
            .into_iter()
            .map(|(name, d)| (name, Arc::new(Loaded::new(d))))
            .collect();
        self.secret = secret;
        self
    }

    /// The names of the private datasets offered.
    pub fn offers(&self) -> impl Iterator<Item = &str> {
        self.private.keys().map(String::as_str)
    }

    /// Computes the features `f` of the private dataset `name` ahead of a campaign's first
    /// client job, which then finds them cached instead of spending its deadline on them; an
    /// error is left for that job to report.
    pub fn warm_private_features(&self, name: &str, f: &hivemesh_protocol::spec::Features) {
        let Some(d) = self.private.get(name) else {
            return;
        };
        let all: Vec<u32> = (0..d.data.len() as u32).collect();
        if let Err(e) = self
            .features
            .featured(f, &d.data, &all, self.limits.memory_budget)
        {
            tracing::debug!("features of private data {name:?} not computed ahead: {e}");
        }
    }

    /// Why the private dataset `name` cannot give the features `f` (images of a size the
    /// transform takes), or `None` when it can (or is not offered here).
    pub fn private_features_refusal(
        &self,
        name: &str,
        f: &hivemesh_protocol::spec::Features,
    ) -> Option<String> {
        let d = self.private.get(name)?;
        feature_shape(f, d.data.shape).err()
    }

    /// Stops every running job within one optimiser step (they end with
    /// [`ExecError::Stopped`], publish nothing, and run again after a restart).
    pub fn stop_all(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// This node's limits for one job of `spec`, starting now: it stops at the node's time
    /// limit or the campaign's longest deadline (after it the protocol has handed the job to
    /// others), whichever comes first, or at shutdown.
    fn job_limits(&self, spec: &CampaignSpec) -> Limits {
        let campaign = Duration::from_millis(spec.schedule.max_deadline_ms);
        let limit = self.max_job_time.map_or(campaign, |t| t.min(campaign));
        Limits {
            stop: Stop::after(limit, Some(Arc::clone(&self.shutdown))),
            ..self.limits.clone()
        }
    }

    /// Refuses, before the blobs it needs are fetched, a job that cannot run within this
    /// node's limits as far as what is held here shows (a training round whose outer step
    /// would hold too many updates of the model); the run checks everything again.
    pub fn precheck(
        &self,
        spec: &CampaignSpec,
        job: &JobSpec,
        blobs: &dyn BlobSource,
    ) -> Result<(), ExecError> {
        match (&spec.search, &job.payload) {
            (Search::Train(p), JobPayload::Train(t)) => match self.model_values(p.model, blobs) {
                Some(values) => train::check_outer_memory(p, t, values, &self.limits),
                None => Ok(()),
            },
            (Search::Federated(p), JobPayload::Federated(f)) => {
                match self.model_values(p.model, blobs) {
                    Some(values) => train::outer_memory_fits(
                        train::combine(&p.aggregate),
                        f.updates.len() + f.sums.as_ref().map_or(0, |s| s.roster.len()),
                        values,
                        &self.limits,
                    ),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The most bytes one of a job's own blobs ([`job_blobs`]) may hold, where the campaign's
    /// kind sizes them from what is held here (a training round's states and updates, from
    /// the model); `None` for the default limit.
    pub fn job_blob_limit(&self, spec: &CampaignSpec, blobs: &dyn BlobSource) -> Option<u64> {
        match &spec.search {
            Search::Train(p) => self.model_values(p.model, blobs).map(train::blob_limit),
            Search::Federated(p) => self.model_values(p.model, blobs).map(train::blob_limit),
            _ => None,
        }
    }

    /// The values of a training campaign's model, remembered, or read from its blob when it
    /// is held here.
    fn model_values(&self, model: BlobId, blobs: &dyn BlobSource) -> Option<u64> {
        let mut known = self.model_values.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = known.iter().find(|(id, _)| *id == model) {
            return Some(*v);
        }
        let values = train::held_model_values(model, blobs)?;
        if known.len() >= MODEL_SIZES {
            known.remove(0);
        }
        known.push((model, values));
        Some(values)
    }

    /// Runs `job` of campaign `spec` on `device` (of the job's backend class), reporting
    /// training progress.
    pub fn run(
        &self,
        spec: &CampaignSpec,
        job: &JobSpec,
        device: Device,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Executed, ExecError> {
        if job.campaign != spec.id() {
            return Err(ExecError::WrongCampaign {
                job: job.campaign.to_string(),
                spec: spec.id().to_string(),
            });
        }
        if job.code_version != CODE_VERSION {
            return Err(ExecError::CodeVersion {
                want: job.code_version.clone(),
            });
        }
        let choice = match job.backend {
            BackendClass::CpuNdarray => BackendChoice::Cpu,
            BackendClass::Cuda => BackendChoice::Cuda,
        };
        if device.backend() != choice {
            return Err(ExecError::Backend {
                class: job.backend,
                reason: format!("the job needs a {choice:?} device, not {device}"),
            });
        }
        let runner = device.runner().map_err(|e| ExecError::Backend {
            class: job.backend,
            reason: e.to_string(),
        })?;
        self.run_on(&*runner, spec, job, blobs, progress)
    }

    fn run_on(
        &self,
        runner: &dyn Runner,
        spec: &CampaignSpec,
        job: &JobSpec,
        blobs: &dyn BlobSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Executed, ExecError> {
        let started = Instant::now();
        let done = |outcome: Outcome, blobs: Vec<(BlobId, Vec<u8>)>| Executed {
            result: JobResult {
                outcome,
                wall_time_ms: started.elapsed().as_millis() as u64,
            },
            blobs,
        };
        // A prompt campaign scores prompts under its teacher and reads no dataset.
        if let (Search::Prompt(p), JobPayload::Prompt { prompts }) = (&spec.search, &job.payload) {
            let ran = prompt::run(p, prompts, blobs, &self.job_limits(spec))?;
            return Ok(done(ran.outcome, ran.blobs));
        }
        // A language-model teacher labels a text corpus (ADR 0011), not samples.
        if let (Search::Distill(p), JobPayload::Distill { start, end }) =
            (&spec.search, &job.payload)
        {
            let teacher = fetch(blobs, &p.teacher, "teacher")?;
            if distill::is_language_model(&teacher) {
                let limits = self.job_limits(spec);
                let range = (*start, *end);
                let ran = distill::run_text(p, &teacher, range, &spec.dataset, blobs, &limits)?;
                return Ok(done(ran.outcome, ran.blobs));
            }
        }
        let loaded = match self.dataset(&spec.dataset, blobs) {
            // Every executor decodes the same verified bytes: a dataset that does not decode
            // fails the job the same way everywhere.
            Err(ExecError::BadDataset(why)) => {
                let detail = format!("dataset {}: {why}", spec.dataset.name);
                return Ok(done(failure(FailureKind::InvalidJob, detail), Vec::new()));
            }
            r => r?,
        };
        let (data, splits) = (&loaded.data, &loaded.splits);
        let budget = budget(&spec.budget);
        let limits = self.job_limits(spec);
        let mut run = JobRun {
            runner,
            limits: &limits,
            data,
            splits,
            budget: &budget,
            seed: job.seed,
            blobs,
            progress,
        };
        let ran = match (&spec.search, &job.payload) {
            (Search::Nas(p), JobPayload::Nas { genome }) => nas::run(p, genome, &mut run)?,
            (Search::Loss(p), JobPayload::Loss { expression }) => {
                loss::run(p, expression, &mut run)?
            }
            (Search::Distill(p), JobPayload::Distill { start, end }) => {
                distill::run(p, *start, *end, &mut run)?
            }
            (Search::Train(p), JobPayload::Train(t)) => train::run(p, t, spec.seed, &mut run)?,
            (Search::Federated(p), JobPayload::Federated(f)) => {
                let client = federated::Client {
                    private: &self.private,
                    secret: &self.secret,
                    job_id: *job.id().as_bytes(),
                    campaign: *job.campaign.as_bytes(),
                    attack: self.attack,
                    features: &self.features,
                };
                federated::run(p, f, spec.seed, &mut run, &client)?
            }
            _ => {
                let detail = "the job's payload does not match the campaign's search kind".into();
                Ran::nothing(failure(FailureKind::InvalidJob, detail))
            }
        };
        Ok(done(ran.outcome, ran.blobs))
    }

    /// The campaign's dataset, loaded once per id (at most [`CACHED_DATASETS`] kept).
    fn dataset(&self, r: &DatasetRef, blobs: &dyn BlobSource) -> Result<Arc<Loaded>, ExecError> {
        if let Some(d) = self.cache().iter().find(|(id, _)| *id == r.id) {
            return Ok(d.1.clone());
        }
        let loaded = Arc::new(load_dataset(r, blobs)?);
        let mut cache = self.cache();
        if cache.len() >= CACHED_DATASETS {
            cache.remove(0);
        }
        cache.push((r.id, loaded.clone()));
        Ok(loaded)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Vec<(BlobId, Arc<Loaded>)>> {
        // A panic while holding the lock cannot leave the map half-written (inserts are
        // atomic), so a poisoned lock is still usable.
        self.datasets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loads `r`: the embedded digits for `builtin:digits`, otherwise the dataset blob `r.id`
/// from `blobs` (the node fetched it from peers before the job started; ADR 0008).
pub(crate) fn load_dataset(r: &DatasetRef, blobs: &dyn BlobSource) -> Result<Loaded, ExecError> {
    let unavailable = |reason: String| ExecError::Data {
        name: r.name.clone(),
        id: r.id,
        reason,
    };
    if let Some(name) = r.sources.iter().find_map(|s| s.strip_prefix("builtin:")) {
        if name != "digits" {
            return Err(unavailable(format!(
                "no built-in dataset `{name}` (there is `builtin:digits`)"
            )));
        }
        let d = data::digits();
        if BlobId(d.id()) != r.id {
            return Err(unavailable(format!(
                "the embedded digits have id {}, not the campaign's",
                BlobId(d.id())
            )));
        }
        return Ok(Loaded::new(d));
    }
    let decoded = dataset_blob(&r.name, &r.id, blobs).map_err(unavailable)?;
    match decoded {
        Ok(DatasetBlob::Samples(d)) => Ok(Loaded::new(d)),
        Ok(DatasetBlob::Text(_)) => Err(ExecError::BadDataset(
            "a text corpus, not labelled samples".into(),
        )),
        Err(e) => Err(ExecError::BadDataset(e)),
    }
}

/// The dataset reference of the embedded digits set (what `builtin:digits` resolves to).
pub fn builtin_digits() -> DatasetRef {
    let d = data::digits();
    DatasetRef {
        id: BlobId(d.id()),
        name: "digits-8x8".into(),
        sources: vec!["builtin:digits".into()],
        bytes: DatasetBlob::Samples(d).encode().len() as u64,
    }
}

/// The blobs every job of a campaign needs before it can run (an uploaded dataset, the loss
/// search's reference model, the distillation teacher, the model a `train` campaign trains),
/// with what each is. The node fetches missing ones from
/// peers before it starts the job.
pub fn needed_blobs(spec: &CampaignSpec) -> Vec<(BlobId, &'static str)> {
    let builtin = spec
        .dataset
        .sources
        .iter()
        .any(|s| s.starts_with("builtin:"));
    let reads_data = !matches!(spec.search, Search::Prompt(_));
    let dataset = (!builtin && reads_data).then_some((spec.dataset.id, "dataset"));
    let kind = match &spec.search {
        Search::Nas(_) => Vec::new(),
        Search::Loss(p) => loss::needed_blobs(p),
        Search::Distill(p) => distill::needed_blobs(p),
        Search::Train(p) => train::needed_blobs(p),
        Search::Federated(p) => vec![(p.model, "model")],
        Search::Prompt(p) => prompt::needed_blobs(p),
    };
    dataset.into_iter().chain(kind).collect()
}

/// The blobs one job needs besides the campaign's ([`needed_blobs`]): a training round's base
/// model and the updates it applies.
pub fn job_blobs(spec: &CampaignSpec, job: &JobSpec) -> Vec<(BlobId, &'static str)> {
    match (&spec.search, &job.payload) {
        (Search::Train(p), JobPayload::Train(t)) => train::job_blobs(p, t),
        (Search::Federated(p), JobPayload::Federated(f)) => {
            let needs_start = matches!(f.step, SecureStep::Train | SecureStep::Mask);
            let base = (f.base != p.model && needs_start).then_some((f.base, "round's base model"));
            base.into_iter()
                .chain(f.updates.iter().map(|u| (*u, "agreed update")))
                .chain(secure::job_blobs(f))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// What a node with [`Fault::Noise`](crate::fault::Fault::Noise) publishes for `job`: a training
/// round's update replaced by noise ([`train::with_noisy_update`]); every other success's
/// `correct` off by one (as [`Fault::Lie`](crate::fault::Fault::Lie)).
pub fn garble(spec: &CampaignSpec, job: &JobSpec, mut done: Executed) -> Executed {
    let noisy = match &spec.search {
        Search::Train(p) => train::with_noisy_update(p, &mut done, job.seed),
        _ => None,
    };
    if noisy.is_none() {
        done.result = lie(done.result);
    }
    done
}

/// [`Fault::Lie`](crate::fault::Fault::Lie): a successful result's `correct` off by one.
pub fn lie(mut result: JobResult) -> JobResult {
    if let Outcome::Success(m) = &mut result.outcome {
        m.correct = (m.correct + 1) % (m.total + 1);
    }
    result
}

/// A blob the job needs, checked against its id.
fn fetch(blobs: &dyn BlobSource, id: &BlobId, what: &'static str) -> Result<Vec<u8>, ExecError> {
    let bytes = blobs.blob(id).ok_or_else(|| ExecError::Blob {
        id: *id,
        what,
        reason: "not in the store".into(),
    })?;
    if BlobId::of_bytes(&bytes) != *id {
        return Err(ExecError::Blob {
            id: *id,
            what,
            reason: "the stored bytes do not hash to the id".into(),
        });
    }
    Ok(bytes)
}

/// The trainer's budget for the campaign's.
fn budget(b: &TrainingBudget) -> Budget {
    Budget {
        epochs: b.epochs,
        max_steps: b.max_steps,
        batch_size: b.batch_size,
        optimizer: match b.optimizer {
            Optimizer::Adam => OptimizerKind::Adam,
            Optimizer::Sgd { momentum } => OptimizerKind::Sgd { momentum },
        },
        learning_rate: b.learning_rate,
        schedule: match b.schedule {
            LrSchedule::Constant => Schedule::Constant,
            LrSchedule::Cosine => Schedule::Cosine,
        },
    }
}

fn failure(kind: FailureKind, detail: String) -> Outcome {
    let mut detail = detail;
    if detail.len() > hivemesh_protocol::message::MAX_FAILURE_DETAIL_LEN {
        let mut cut = hivemesh_protocol::message::MAX_FAILURE_DETAIL_LEN;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    Outcome::Failure(Failure { kind, detail })
}

/// A trainer error as a published failure, or as "cannot run here".
fn train_failure(e: TrainError) -> Result<Outcome, ExecError> {
    match e {
        TrainError::Diverged { .. } => Ok(failure(FailureKind::NonFinite, e.to_string())),
        TrainError::Arch(_) | TrainError::Loss(_) | TrainError::Options(_) => {
            Ok(failure(FailureKind::InvalidJob, e.to_string()))
        }
        TrainError::MemoryBudget { .. } | TrainError::CostBudget { .. } => {
            Err(ExecError::OverLimit(e))
        }
        TrainError::Stopped {
            step,
            reason: StopReason::Shutdown,
        } => Err(ExecError::Stopped { step }),
        TrainError::Stopped {
            reason: StopReason::TimeLimit { .. },
            ..
        } => Ok(failure(FailureKind::TimeLimit, e.to_string())),
        TrainError::Backend(reason) => Err(ExecError::Backend {
            class: BackendClass::Cuda,
            reason,
        }),
        TrainError::Data(_) | TrainError::Artifact(_) => {
            Ok(failure(FailureKind::DataUnavailable, e.to_string()))
        }
    }
}
