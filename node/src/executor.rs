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
//! What each kind reports (all integers, so every node compares them the same way):
//! - NAS: test-split `correct`/`total`, the IR's exact params and FLOPs, the trained weights
//!   as an artifact (a `WeightsFile`, its id = blake3 of its bytes);
//! - loss: the same for the fixed reference model trained with the expression; the tuned
//!   constants as extras `c0_micro`, `c1_micro`, … (millionths);
//! - distillation: the teacher's top-1 `correct` over the shard and the shard size, the
//!   teacher's params and FLOPs, the shard blob (HMKD v1) as the artifact and the first 8
//!   bytes of its fingerprint as the extra `fingerprint`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hivemesh_evolve::arch::Architecture;
use hivemesh_evolve::gp::Expr;
use hivemesh_protocol::derive::decode_genome;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{Failure, FailureKind, JobResult, Metrics, Outcome};
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, DatasetRef, JobPayload, JobSpec, LrSchedule, NasSpace, Optimizer,
    Search, TrainingBudget,
};
use hivemesh_trainer::TrainError;
use hivemesh_trainer::backend::{BackendChoice, Runner};
use hivemesh_trainer::data::{self, Dataset, Splits};
use hivemesh_trainer::loss::LossJob;
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::train::{Budget, Limits, NasJob, OptimizerKind, Progress, Schedule};

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
    /// The job would exceed this node's memory budget.
    #[error(transparent)]
    Memory(TrainError),
}

/// Where the executor gets blobs by id (the node's store; a map in tests).
pub trait BlobSource: Send + Sync {
    /// The blob's bytes, if held. Callers check the hash.
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>>;
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

/// A loaded dataset and its deterministic splits (MNIST keeps its official test part).
#[derive(Debug)]
struct Loaded {
    data: Dataset,
    splits: Splits,
}

/// Runs jobs. Cheap to share across threads: datasets are loaded once and cached by id.
#[derive(Debug, Default)]
pub struct Executor {
    limits: Limits,
    datasets: Mutex<BTreeMap<BlobId, Arc<Loaded>>>,
}

impl Executor {
    /// An executor refusing jobs over `limits`.
    pub fn new(limits: Limits) -> Executor {
        Executor {
            limits,
            datasets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `job` of campaign `spec`, reporting training progress.
    pub fn run(
        &self,
        spec: &CampaignSpec,
        job: &JobSpec,
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
        let runner = choice.runner().map_err(|e| ExecError::Backend {
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
        let loaded = self.dataset(&spec.dataset)?;
        let (data, splits) = (&loaded.data, &loaded.splits);
        let budget = budget(&spec.budget);
        let done = |outcome: Outcome, blobs: Vec<(BlobId, Vec<u8>)>| Executed {
            result: JobResult {
                outcome,
                wall_time_ms: started.elapsed().as_millis() as u64,
            },
            blobs,
        };
        let (outcome, out) = match (&spec.search, &job.payload) {
            (Search::Nas(p), JobPayload::Nas { genome }) => {
                let arch = match architecture(&p.space, genome, data) {
                    Ok(a) => a,
                    Err(detail) => {
                        return Ok(done(failure(FailureKind::InvalidJob, detail), vec![]));
                    }
                };
                let nas = NasJob {
                    arch: &arch,
                    data,
                    splits,
                    budget: &budget,
                    seed: job.seed,
                };
                match runner.nas(&nas, &self.limits, progress) {
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
                        (Outcome::Success(m), vec![(id, bytes)])
                    }
                    Err(e) => (train_failure(e)?, vec![]),
                }
            }
            (Search::Loss(p), JobPayload::Loss { expression }) => {
                let bytes = fetch(blobs, &p.reference_model, "reference model")?;
                let arch: Architecture =
                    postcard::from_bytes(&bytes).map_err(|e| ExecError::Blob {
                        id: p.reference_model,
                        what: "reference model",
                        reason: format!("not an architecture IR: {e}"),
                    })?;
                let expr: Expr = match postcard::from_bytes(expression) {
                    Ok(e) => e,
                    Err(e) => {
                        let detail = format!("the expression does not decode: {e}");
                        return Ok(done(failure(FailureKind::InvalidJob, detail), vec![]));
                    }
                };
                let lj = LossJob {
                    arch: &arch,
                    expr: &expr,
                    data,
                    splits,
                    budget: &budget,
                    tuning_steps: p.constant_tuning_steps,
                    seed: job.seed,
                };
                match runner.loss(&lj, &self.limits, progress) {
                    Ok(r) => {
                        let extra = r
                            .constants
                            .iter()
                            .take(hivemesh_protocol::message::MAX_EXTRA_METRICS)
                            .enumerate()
                            .map(|(i, c)| {
                                (format!("c{i}_micro"), (f64::from(*c) * 1e6).round() as i64)
                            })
                            .collect();
                        let m = Metrics {
                            correct: r.correct,
                            total: r.total,
                            params: arch.params().unwrap_or(0),
                            flops: arch.flops().unwrap_or(0),
                            extra,
                            artifacts: vec![],
                        };
                        (Outcome::Success(m), vec![])
                    }
                    Err(e) => (train_failure(e)?, vec![]),
                }
            }
            (Search::Distill(p), JobPayload::Distill { start, end }) => {
                let bytes = fetch(blobs, &p.teacher, "teacher")?;
                let teacher = WeightsFile::from_bytes(&bytes).map_err(|e| ExecError::Blob {
                    id: p.teacher,
                    what: "teacher",
                    reason: e.to_string(),
                })?;
                match runner.label(&teacher, data, *start..*end, p.top_k) {
                    Ok(labels) => {
                        let shard = labels.to_bytes();
                        let id = BlobId::of_bytes(&shard);
                        let correct = labels
                            .entries
                            .chunks(usize::from(labels.k.max(1)))
                            .zip(*start..*end)
                            .filter(|(rec, i)| {
                                rec.first().map(|&(c, _)| u32::from(c))
                                    == data.labels.get(*i as usize).map(|&l| u32::from(l))
                            })
                            .count() as u64;
                        let fp = labels.fingerprint();
                        let mut extra = BTreeMap::new();
                        extra.insert(
                            "fingerprint".to_string(),
                            i64::from_le_bytes([
                                fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7],
                            ]),
                        );
                        let m = Metrics {
                            correct,
                            total: labels.len() as u64,
                            params: teacher.arch.params().unwrap_or(0),
                            flops: teacher.arch.flops().unwrap_or(0),
                            extra,
                            artifacts: vec![id],
                        };
                        (Outcome::Success(m), vec![(id, shard)])
                    }
                    Err(e) => (train_failure(e)?, vec![]),
                }
            }
            _ => {
                let detail = "the job's payload does not match the campaign's search kind".into();
                (failure(FailureKind::InvalidJob, detail), vec![])
            }
        };
        Ok(done(outcome, out))
    }

    /// The campaign's dataset, loaded once per id.
    fn dataset(&self, r: &DatasetRef) -> Result<Arc<Loaded>, ExecError> {
        if let Some(d) = self.cache().get(&r.id) {
            return Ok(d.clone());
        }
        let loaded = Arc::new(load_dataset(r)?);
        self.cache().insert(r.id, loaded.clone());
        Ok(loaded)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<BlobId, Arc<Loaded>>> {
        // A panic while holding the lock cannot leave the map half-written (inserts are
        // atomic), so a poisoned lock is still usable.
        self.datasets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loads `r` from the first of its sources that yields data with the right id.
///
/// Sources: `builtin:digits` (the embedded 8x8 digits), `mnist:DIR` or a plain directory
/// holding the four MNIST IDX files (`.gz` or raw).
fn load_dataset(r: &DatasetRef) -> Result<Loaded, ExecError> {
    let mut why = Vec::new();
    for source in &r.sources {
        let attempt: Result<(Dataset, Option<usize>), String> = if source == "builtin:digits" {
            Ok((data::digits(), None))
        } else if let Some(name) = source.strip_prefix("builtin:") {
            Err(format!(
                "no built-in dataset `{name}` (there is `builtin:digits`)"
            ))
        } else {
            let dir = PathBuf::from(source.strip_prefix("mnist:").unwrap_or(source));
            load_dir(&dir)
        };
        match attempt {
            Ok((d, test_from)) => {
                let id = BlobId(d.id());
                if id == r.id {
                    let splits = d.default_splits(test_from);
                    return Ok(Loaded { data: d, splits });
                }
                why.push(format!("{source}: has id {id}, not the campaign's"));
            }
            Err(e) => why.push(format!("{source}: {e}")),
        }
    }
    if why.is_empty() {
        why.push("the campaign lists no sources".into());
    }
    Err(ExecError::Data {
        name: r.name.clone(),
        id: r.id,
        reason: why.join("; "),
    })
}

fn load_dir(dir: &Path) -> Result<(Dataset, Option<usize>), String> {
    if !dir.is_dir() {
        return Err("not a directory with MNIST IDX files".into());
    }
    data::load_mnist(dir)
        .map(|(d, test_from)| (d, Some(test_from)))
        .map_err(|e| e.to_string())
}

/// The dataset reference of the embedded digits set (what `builtin:digits` resolves to).
pub fn builtin_digits() -> DatasetRef {
    DatasetRef {
        id: BlobId(data::digits().id()),
        name: "digits-8x8".into(),
        sources: vec!["builtin:digits".into()],
    }
}

/// The blobs every job of a campaign needs before it can run (the loss search's reference
/// model, the distillation teacher), with what each is. The node fetches missing ones from
/// peers before it starts the job.
pub fn needed_blobs(spec: &CampaignSpec) -> Vec<(BlobId, &'static str)> {
    match &spec.search {
        Search::Nas(_) => Vec::new(),
        Search::Loss(p) => vec![(p.reference_model, "reference model")],
        Search::Distill(p) => vec![(p.teacher, "teacher")],
    }
}

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

/// A NAS genome as an architecture for `data`, or why it is not a valid model for it.
fn architecture(space: &NasSpace, genome: &[u8], data: &Dataset) -> Result<Architecture, String> {
    let genes = decode_genome(genome).ok_or("the genome does not decode")?;
    space
        .for_data(data.shape, data.classes)
        .decode(&genes)
        .map_err(|e| e.to_string())
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
        TrainError::MemoryBudget { .. } => Err(ExecError::Memory(e)),
        TrainError::Backend(reason) => Err(ExecError::Backend {
            class: BackendClass::Cuda,
            reason,
        }),
        TrainError::Data(_) | TrainError::Artifact(_) => {
            Ok(failure(FailureKind::DataUnavailable, e.to_string()))
        }
    }
}
