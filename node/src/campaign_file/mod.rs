//! Campaign files: the TOML a researcher writes (`hivemesh campaign submit FILE.toml`), turned
//! into a protocol [`CampaignSpec`]. Every field but `name` and the search table has a default;
//! unknown keys are errors (a typo must not silently become a default). See `examples/`.
//!
//! ```toml
//! name = "NAS on digits"
//! dataset = "builtin:digits"     # or "file:data.csv", "mnist:DIR", "blob:ID" (see [`dataset`])
//! seed = 1
//! redundancy = 3                 # executors per job
//! quorum = 2                     # agreeing executors needed
//! roster = []                    # genesis voters (public keys); empty: the submitting node
//                                # and the peers it is connected to
//!
//! [nas]                          # or [loss] / [distill] / [train] / [federated] / [prompt]
//! max_layers = 2
//! widths = [16, 32, 64]
//! population = 8
//! generations = 3
//!
//! [budget]
//! max_steps = 200
//! ```

use hivemesh_protocol::Tolerance;
use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, DatasetRef, LrSchedule, Optimizer, Schedule, TrainingBudget,
};
use hivemesh_protocol::time::Timestamp;
use serde::Deserialize;

use crate::executor::CODE_VERSION;

pub mod dataset;
pub mod distill;
pub mod federated;
pub mod loss;
pub mod nas;
pub mod prompt;
pub mod train;

pub use self::dataset::{DataFile, DatasetSource, resolve_dataset};
pub use self::distill::DistillFile;
pub use self::federated::FederatedFile;
pub use self::loss::{LossFile, zoo_model, zoo_model_for};
pub use self::nas::NasFile;
pub use self::prompt::PromptFile;
pub use self::train::TrainFile;

/// Why a campaign file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignFileError {
    /// Not valid TOML, or a field of the wrong type, or an unknown key.
    #[error("campaign file: {0}")]
    Toml(#[from] toml::de::Error),
    /// The file names no search, or more than one.
    #[error(
        "campaign file: give exactly one of [nas], [loss], [distill], [train], [federated] or \
         [prompt]"
    )]
    Search,
    /// A value is out of range.
    #[error("campaign file: {field}: {reason}")]
    Field {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The resulting spec breaks a protocol rule.
    #[error("campaign file: {0}")]
    Spec(#[from] hivemesh_protocol::spec::SpecError),
}

fn field(field: &'static str, reason: impl Into<String>) -> CampaignFileError {
    CampaignFileError::Field {
        field,
        reason: reason.into(),
    }
}

/// A campaign file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFile {
    /// A human-readable name.
    pub name: String,
    /// `builtin:digits` (default), `file:PATH`, `mnist:DIR` or `blob:ID` ([`dataset`]).
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// `[data]`: how a `file:` dataset is read, and its name.
    pub data: Option<DataFile>,
    /// The root seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Executors per job.
    #[serde(default = "default_redundancy")]
    pub redundancy: u8,
    /// Agreeing executors needed.
    #[serde(default = "default_quorum")]
    pub quorum: u8,
    /// Largest difference in correct test predictions between agreeing results (0: exact, the
    /// right choice on the CPU backend).
    #[serde(default)]
    pub tolerance_correct: u64,
    /// Fraction of settled jobs auditors re-run, 0.0 to 1.0.
    #[serde(default)]
    pub audit_rate: f64,
    /// `cpu` (default, bit-exact) or `cuda`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Genesis voters (public keys, hex); the submitting node is always added. Empty: the
    /// submitting node and the peers connected to it when the campaign is submitted.
    #[serde(default)]
    pub roster: Vec<String>,
    /// Training budget of every job.
    #[serde(default)]
    pub budget: BudgetFile,
    /// Deadlines.
    #[serde(default)]
    pub schedule: ScheduleFile,
    /// Architecture search.
    pub nas: Option<NasFile>,
    /// Loss-function search.
    pub loss: Option<LossFile>,
    /// Distillation shards.
    pub distill: Option<DistillFile>,
    /// One model trained together in rounds.
    pub train: Option<TrainFile>,
    /// One model trained on private data (ADR 0010).
    pub federated: Option<FederatedFile>,
    /// Prompt search under a language model.
    pub prompt: Option<PromptFile>,
}

fn default_dataset() -> String {
    "builtin:digits".into()
}
fn default_seed() -> u64 {
    1
}
fn default_redundancy() -> u8 {
    3
}
fn default_quorum() -> u8 {
    2
}
fn default_backend() -> String {
    "cpu".into()
}

/// `[budget]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetFile {
    /// Passes over the training split.
    pub epochs: u32,
    /// Stop after this many steps (0: no step limit).
    pub max_steps: u64,
    /// Batch size.
    pub batch_size: u32,
    /// `adam` or `sgd`.
    pub optimizer: String,
    /// SGD momentum.
    pub momentum: f32,
    /// Learning rate.
    pub learning_rate: f32,
    /// `constant` or `cosine`.
    pub schedule: String,
}

impl Default for BudgetFile {
    fn default() -> Self {
        BudgetFile {
            epochs: 1,
            max_steps: 200,
            batch_size: 32,
            optimizer: "adam".into(),
            momentum: 0.9,
            learning_rate: 1e-2,
            schedule: "constant".into(),
        }
    }
}

impl BudgetFile {
    /// The protocol's training budget.
    pub fn to_budget(&self) -> Result<TrainingBudget, CampaignFileError> {
        let b = self;
        Ok(TrainingBudget {
            epochs: b.epochs,
            max_steps: (b.max_steps > 0).then_some(b.max_steps),
            batch_size: b.batch_size,
            optimizer: match b.optimizer.as_str() {
                "adam" => Optimizer::Adam,
                "sgd" => Optimizer::Sgd {
                    momentum: b.momentum,
                },
                other => {
                    return Err(field(
                        "budget.optimizer",
                        format!("{other:?}: use adam or sgd"),
                    ));
                }
            },
            learning_rate: b.learning_rate,
            schedule: match b.schedule.as_str() {
                "constant" => LrSchedule::Constant,
                "cosine" => LrSchedule::Cosine,
                other => {
                    return Err(field(
                        "budget.schedule",
                        format!("{other:?}: use constant or cosine"),
                    ));
                }
            },
        })
    }
}

/// `[schedule]`, in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleFile {
    /// Generation 0's job deadline: how long one job may take (each executor gets one per
    /// job ahead of it in its queue; ADR 0007). Left out: estimated from the jobs' cost at
    /// submission where the kind allows (architecture search), else 600 s.
    pub job_deadline_s: Option<u64>,
    /// Base timeout of a closure round step.
    pub round_timeout_s: f64,
    /// Most extra executors a job may get beyond `redundancy` (takeovers past deadlines and
    /// idle peers).
    pub max_extra_executors: u8,
}

impl ScheduleFile {
    /// The protocol's schedule.
    pub fn to_schedule(&self) -> Schedule {
        let d = Schedule::default();
        let job_deadline_ms = self
            .job_deadline_s
            .map_or(d.job_deadline_ms, |s| s.saturating_mul(1000));
        Schedule {
            job_deadline_ms,
            // A first deadline shorter than the default floor lowers the floor with it.
            min_deadline_ms: d.min_deadline_ms.min(job_deadline_ms),
            round_timeout_ms: (self.round_timeout_s * 1000.0) as u64,
            max_extra_executors: self.max_extra_executors,
            ..d
        }
    }
}

impl Default for ScheduleFile {
    fn default() -> Self {
        let d = Schedule::default();
        ScheduleFile {
            job_deadline_s: None,
            round_timeout_s: d.round_timeout_ms as f64 / 1000.0,
            max_extra_executors: d.max_extra_executors,
        }
    }
}

/// The sections of searches sized by `population` and `generations` (what a cluster's
/// `--population` and `--generations` override).
pub const SEARCH_SECTIONS: [&str; 2] = [nas::SECTION, loss::SECTION];

/// The campaign-file fields that name a blob, as (table, key): each holds a blob id, or a
/// reference resolved at submit time (`zoo:NAME` for a reference model, `file:PATH`).
pub const BLOB_FIELDS: [(&str, &str); 5] = [
    loss::BLOB_FIELD,
    distill::BLOB_FIELD,
    train::BLOB_FIELD,
    federated::BLOB_FIELD,
    prompt::BLOB_FIELD,
];

impl CampaignFile {
    /// The blob-naming fields present in this file ([`BLOB_FIELDS`]), as (`table.key`, value).
    pub fn blob_refs_mut(&mut self) -> Vec<(&'static str, &mut String)> {
        let mut out = Vec::new();
        if let Some(l) = self.loss.as_mut() {
            out.push(("loss.reference_model", &mut l.reference_model));
        }
        if let Some(d) = self.distill.as_mut() {
            out.push(("distill.teacher", &mut d.teacher));
        }
        if let Some(t) = self.train.as_mut() {
            out.push(("train.model", &mut t.model));
        }
        if let Some(f) = self.federated.as_mut() {
            out.push(("federated.model", &mut f.model));
        }
        if let Some(p) = self.prompt.as_mut() {
            out.push(("prompt.teacher", &mut p.teacher));
        }
        debug_assert!(out.len() <= BLOB_FIELDS.len());
        out
    }

    /// Parses TOML.
    pub fn parse(text: &str) -> Result<CampaignFile, CampaignFileError> {
        Ok(toml::from_str(text)?)
    }

    /// The protocol spec, created now by `creator` (added to the roster), with the dataset
    /// reference `dataset` (see [`resolve_dataset`]).
    pub fn to_spec(
        &self,
        creator: PeerKey,
        now: Timestamp,
        dataset: DatasetRef,
    ) -> Result<CampaignSpec, CampaignFileError> {
        let sections = [
            self.nas.is_some(),
            self.loss.is_some(),
            self.distill.is_some(),
            self.train.is_some(),
            self.federated.is_some(),
            self.prompt.is_some(),
        ];
        if sections.iter().filter(|s| **s).count() != 1 {
            return Err(CampaignFileError::Search);
        }
        let search = if let Some(n) = &self.nas {
            n.to_search()?
        } else if let Some(l) = &self.loss {
            l.to_search()?
        } else if let Some(d) = &self.distill {
            d.to_search()?
        } else if let Some(t) = &self.train {
            t.to_search()?
        } else if let Some(f) = &self.federated {
            f.to_search()?
        } else if let Some(p) = &self.prompt {
            p.to_search()?
        } else {
            return Err(CampaignFileError::Search);
        };
        let budget = self.budget.to_budget()?;
        if !(0.0..=1.0).contains(&self.audit_rate) {
            return Err(field("audit_rate", "must be between 0.0 and 1.0"));
        }
        let mut roster = vec![creator];
        for k in &self.roster {
            roster.push(
                k.parse()
                    .map_err(|e| field("roster", format!("{k}: {e}")))?,
            );
        }
        roster.sort();
        roster.dedup();
        let backend = match self.backend.as_str() {
            "cpu" => BackendClass::CpuNdarray,
            "cuda" => BackendClass::Cuda,
            other => return Err(field("backend", format!("{other:?}: use cpu or cuda"))),
        };
        let schedule = self.schedule.to_schedule();
        let mut tolerance = Tolerance {
            correct: self.tolerance_correct,
            ..Tolerance::EXACT
        };
        if let Some(t) = &self.train {
            tolerance = t.tolerance(tolerance)?;
        }
        let spec = CampaignSpec {
            name: self.name.clone(),
            created_at: now,
            search,
            dataset,
            budget,
            seed: self.seed,
            redundancy: self.redundancy,
            quorum: self.quorum,
            tolerance,
            audit_rate_ppm: (self.audit_rate * 1e6).round() as u32,
            backend,
            code_version: CODE_VERSION.into(),
            roster,
            schedule,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::builtin_digits;
    use hivemesh_evolve::arch::Architecture;
    use hivemesh_protocol::id::BlobId;

    fn spec_of(text: &str, dataset: DatasetRef) -> Result<CampaignSpec, CampaignFileError> {
        let key = hivemesh_protocol::Keypair::from_secret_bytes([3; 32]).public();
        CampaignFile::parse(text)?.to_spec(key, Timestamp(1_764_000_000_000), dataset)
    }

    #[test]
    fn every_example_campaign_file_makes_a_valid_spec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".toml") || name == "node.toml" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            // Blob references resolved at submit time (zoo:, file:) stand in as an id here.
            let mut doc: toml::Table = toml::from_str(&text).expect("TOML");
            for (table, key) in BLOB_FIELDS {
                if let Some(v) = doc.get_mut(table).and_then(|t| t.get_mut(key))
                    && v.as_str().is_some_and(|s| s.contains(':'))
                {
                    *v = toml::Value::String(BlobId::of_bytes(b"x").to_string());
                }
            }
            let mut file = CampaignFile::parse(&doc.to_string()).expect("parses");
            if let Some(p) = file.prompt.as_mut() {
                // A prompt campaign reads its teacher's tokens: a small one stands in.
                p.resolve(&prompt::tests::tiny_teacher(64))
                    .expect("a teacher");
            }
            let key = hivemesh_protocol::Keypair::from_secret_bytes([3; 32]).public();
            let spec = file
                .to_spec(key, Timestamp(1_764_000_000_000), builtin_digits())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            seen += 1;
        }
        assert!(seen >= 6, "every campaign example: {seen}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let base = "name = \"x\"\n[nas]\npopulation = 4\ngenerations = 1\n";
        spec_of(base, builtin_digits()).expect("minimal file");
        let e = spec_of(&format!("colour = 1\n{base}"), builtin_digits()).expect_err("typo");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = spec_of(
            "name = \"x\"\n[nas]\npopulation = 4\ngenerations = 1\nspace = \"rnn\"\n",
            builtin_digits(),
        )
        .expect_err("space");
        assert!(e.to_string().contains("nas.space"), "{e}");
        let e = spec_of("name = \"x\"\n", builtin_digits()).expect_err("no search");
        assert!(matches!(e, CampaignFileError::Search), "{e}");
    }

    #[test]
    fn zoo_models_are_built_for_the_dataset() {
        use hivemesh_evolve::arch::Shape;
        let digits = zoo_model("mlp-32", Shape::Image { c: 1, h: 8, w: 8 }, 10).expect("mlp");
        let arch: Architecture = postcard::from_bytes(&digits).expect("IR");
        // 64*32+32 + 32*10+10
        assert_eq!(arch.params().expect("params"), 2410);
        let mnist = zoo_model("cnn", Shape::Image { c: 1, h: 28, w: 28 }, 10).expect("cnn");
        let mnist: Architecture = postcard::from_bytes(&mnist).expect("IR");
        assert_eq!(mnist.params().expect("params"), 421_642);
        let iris: Architecture =
            postcard::from_bytes(&zoo_model("mlp-8", Shape::Flat(4), 3).expect("mlp")).expect("IR");
        assert_eq!(iris.params().expect("params"), 4 * 8 + 8 + 8 * 3 + 3);
        for name in ["mlp-0", "mlp-x", "resnet"] {
            let e = zoo_model(name, Shape::Flat(4), 3).expect_err(name);
            assert!(e.to_string().contains("loss.reference_model"), "{e}");
        }
    }
}
