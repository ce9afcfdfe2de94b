//! Submitting a campaign, written once for the HTTP API (`POST /campaigns`), the CLI
//! (`hivemesh campaign submit`) and netsim's clusters:
//!
//! 1. [`Submission::parse`] reads the campaign file (TOML), keeping both the typed
//!    [`CampaignFile`] and the TOML table (what a client posts to a node's API);
//! 2. [`Submission::upload_blobs`] resolves the blobs the file names by reference rather than by
//!    id — `zoo:NAME` reference models (built for the dataset) and `file:PATH` blobs (read from
//!    disk) — storing each through a caller-given `put` (a [`crate::daemon::Client`], an HTTP
//!    upload) and writing its id back into both the file and the table;
//! 3. [`build_spec`] turns the file into the spec a node signs: dataset resolved, created now by
//!    the submitting node, the roster filled with the connected peers when the file names none;
//! 4. [`check_roster`] is what a node checks before it signs (the daemon applies it to every
//!    [`crate::daemon::Client::submit`]).

use std::future::Future;
use std::path::{Path, PathBuf};

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::spec::{CampaignSpec, MAX_ROSTER, SpecError};
use hivemesh_protocol::time::Timestamp;

use hivemesh_evolve::arch::Shape;
use hivemesh_trainer::data::{Format, read_dataset};

use crate::campaign_file::dataset::{resolve_dataset_for, shape_of};
use crate::campaign_file::{
    CampaignFile, CampaignFileError, DataFile, DatasetSource, zoo_model_for,
};

/// Why a node refuses to submit a campaign spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The spec breaks a protocol rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Fewer roster members than executors per job.
    #[error(
        "the roster has {members} member(s) but every job wants {redundancy} executors: \
         generation 0 would wait for job deadlines; lower `redundancy`, connect to more peers \
         first, or list their keys in `roster`"
    )]
    BelowRedundancy {
        /// Roster members.
        members: usize,
        /// Executors per job.
        redundancy: u8,
    },
    /// Fewer roster members than agreeing executors a job needs.
    #[error(
        "the roster has {members} member(s) but a job needs {quorum} agreeing executors: \
         connect to more peers first, or list their keys in `roster`"
    )]
    BelowQuorum {
        /// Roster members.
        members: usize,
        /// Agreeing executors needed.
        quorum: u8,
    },
}

/// Whether a spec may be submitted: valid, and its genesis roster big enough to give every job
/// of generation 0 its executors and a quorum.
pub fn check_roster(spec: &CampaignSpec) -> Result<(), Refusal> {
    spec.validate()?;
    let members = spec.roster.len();
    if members < usize::from(spec.redundancy) {
        return Err(Refusal::BelowRedundancy {
            members,
            redundancy: spec.redundancy,
        });
    }
    if members < usize::from(spec.quorum) {
        return Err(Refusal::BelowQuorum {
            members,
            quorum: spec.quorum,
        });
    }
    Ok(())
}

/// Why a campaign file could not be prepared for submission.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The file is not a valid campaign file, or a `zoo:` model does not exist.
    #[error(transparent)]
    File(#[from] CampaignFileError),
    /// A `file:` dataset could not be read or converted.
    #[error("dataset: {0}")]
    Dataset(#[from] hivemesh_trainer::DataError),
    /// A `file:PATH` blob could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path (joined to the base folder).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why the blobs a campaign file names could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError<E> {
    /// A blob could not be built or read.
    #[error(transparent)]
    Prepare(#[from] SubmitError),
    /// Storing it failed (the `put`'s own error).
    #[error(transparent)]
    Put(E),
}

/// How a campaign file names a blob other than by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobRef {
    /// `zoo:NAME`: a reference model built for the file's dataset.
    Zoo(String),
    /// `file:PATH`: a file, relative to the base folder.
    File(PathBuf),
    /// `dataset = "file:PATH"` or `"mnist:DIR"`: a dataset file to convert into its blob.
    Dataset {
        /// The file or folder, relative to the base folder.
        path: PathBuf,
        /// The format the form implies (`mnist:`).
        format: Option<Format>,
    },
}

/// A blob a campaign file names by reference, to be stored before the campaign is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBlob {
    /// The field, as `table.key` (`loss.reference_model`, `distill.teacher`, `train.model`),
    /// or `dataset`.
    pub field: &'static str,
    /// The reference.
    pub source: BlobRef,
}

/// Which references to resolve here (the others stay as they are, for the node to resolve).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolve<'a> {
    /// Build `zoo:` models here.
    pub zoo: bool,
    /// Read `file:` blobs here, relative to this folder.
    pub files: Option<&'a Path>,
}

/// A campaign file on its way to a node.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The file, as parsed (blob references replaced by ids as they are stored).
    pub file: CampaignFile,
    /// The same as a TOML table, kept in step with `file`.
    pub table: toml::Table,
    /// The text as given.
    text: String,
    /// Whether a blob reference was replaced (the text no longer matches).
    changed: bool,
    /// The dataset's sample shape and classes, once known (for zoo models).
    dataset_shape: Option<(Shape, u32)>,
}

impl Submission {
    /// Parses a campaign file.
    pub fn parse(text: &str) -> Result<Submission, CampaignFileError> {
        let file = CampaignFile::parse(text)?;
        let table = toml::from_str(text)?;
        Ok(Submission {
            file,
            table,
            text: text.to_string(),
            changed: false,
            dataset_shape: None,
        })
    }

    /// The TOML to post: the text as given while nothing was replaced, else the table.
    pub fn text(&self) -> String {
        if self.changed {
            self.table.to_string()
        } else {
            self.text.clone()
        }
    }

    /// The blob references `resolve` asks to resolve here: the dataset first (zoo models are
    /// built for it), then the others in field order.
    pub fn pending(&mut self, resolve: Resolve<'_>) -> Vec<PendingBlob> {
        let mut out = Vec::new();
        if let (Some(base), Ok(DatasetSource::File { path, format })) =
            (resolve.files, DatasetSource::parse(&self.file.dataset))
        {
            out.push(PendingBlob {
                field: "dataset",
                source: BlobRef::Dataset {
                    path: base.join(path),
                    format,
                },
            });
        }
        for (field, value) in self.file.blob_refs_mut() {
            let source = if let Some(name) = value.strip_prefix("zoo:") {
                resolve.zoo.then(|| BlobRef::Zoo(name.to_string()))
            } else if let Some(path) = value.strip_prefix("file:") {
                resolve.files.map(|base| BlobRef::File(base.join(path)))
            } else {
                None
            };
            out.extend(source.map(|source| PendingBlob { field, source }));
        }
        out
    }

    /// A pending blob's bytes: the zoo model built for the file's dataset, the file read, or
    /// the dataset converted into its canonical blob.
    pub fn bytes(&self, blob: &PendingBlob) -> Result<Vec<u8>, SubmitError> {
        match &blob.source {
            BlobRef::Zoo(name) => {
                let (mut shape, classes) = self.dataset_shape(blob.field)?;
                if let (Some(f), true) = (&self.file.federated, blob.field == "federated.model") {
                    // The model sees the campaign's features, not the raw records.
                    shape = f.model_input(shape)?;
                }
                Ok(zoo_model_for(blob.field, name, shape, classes)?)
            }
            BlobRef::File(path) => std::fs::read(path).map_err(|source| SubmitError::Read {
                path: path.clone(),
                source,
            }),
            BlobRef::Dataset { path, format } => {
                let mut opts = self
                    .file
                    .data
                    .as_ref()
                    .map(DataFile::read_options)
                    .transpose()?
                    .unwrap_or_default();
                opts.format = format.or(opts.format);
                Ok(read_dataset(path, &opts)?.blob.encode())
            }
        }
    }

    /// Learns the dataset's shape from its blob (a node resolving `blob:ID` itself).
    pub fn know_dataset(&mut self, bytes: &[u8]) {
        self.dataset_shape = shape_of(bytes);
    }

    /// The dataset's sample shape and classes: the embedded digits, or a dataset uploaded or
    /// made known ([`Submission::know_dataset`]) before.
    fn dataset_shape(&self, for_field: &'static str) -> Result<(Shape, u32), CampaignFileError> {
        if self.file.dataset == "builtin:digits" {
            let d = hivemesh_trainer::data::digits();
            return Ok((d.shape, d.classes));
        }
        self.dataset_shape.ok_or_else(|| CampaignFileError::Field {
            field: for_field,
            reason: format!(
                "a zoo model is built for the dataset, and {} is not known here yet",
                self.file.dataset
            ),
        })
    }

    /// Names the stored blob by its id in the file and the table.
    pub fn set_blob(&mut self, field: &str, id: BlobId) {
        if field == "dataset" {
            return self.set_dataset(id);
        }
        for (f, value) in self.file.blob_refs_mut() {
            if f == field {
                *value = id.to_string();
            }
        }
        if let Some((tab, key)) = field.split_once('.')
            && let Some(toml::Value::Table(t)) = self.table.get_mut(tab)
        {
            t.insert(key.into(), toml::Value::String(id.to_string()));
        }
        self.changed = true;
    }

    /// Names the uploaded dataset `blob:ID`, keeping the file's name as the dataset's.
    fn set_dataset(&mut self, id: BlobId) {
        let stem = match DatasetSource::parse(&self.file.dataset) {
            Ok(DatasetSource::File { path, .. }) => Path::new(&path)
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.split('.').next().unwrap_or(n).to_string())
                .filter(|n| !n.is_empty() && n.len() <= 64),
            _ => None,
        };
        let data = self.file.data.get_or_insert_with(DataFile::default);
        if data.name.is_none()
            && let Some(stem) = stem
        {
            data.name = Some(stem.clone());
            let t = self
                .table
                .entry("data")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = t {
                t.insert("name".into(), toml::Value::String(stem));
            }
        }
        self.file.dataset = format!("blob:{id}");
        self.table.insert(
            "dataset".into(),
            toml::Value::String(self.file.dataset.clone()),
        );
        self.changed = true;
    }

    /// Builds or reads every blob `resolve` asks for, stores each with `put` and names it by
    /// id; returns what was stored.
    pub async fn upload_blobs<F, Fut, E>(
        &mut self,
        resolve: Resolve<'_>,
        mut put: F,
    ) -> Result<Vec<(PendingBlob, BlobId)>, UploadError<E>>
    where
        F: FnMut(&PendingBlob, Vec<u8>) -> Fut,
        Fut: Future<Output = Result<BlobId, E>>,
    {
        let mut stored = Vec::new();
        for blob in self.pending(resolve) {
            let bytes = self.bytes(&blob)?;
            if blob.field == "dataset" {
                self.know_dataset(&bytes);
            }
            let id = put(&blob, bytes).await.map_err(UploadError::Put)?;
            self.set_blob(blob.field, id);
            stored.push((blob, id));
        }
        Ok(stored)
    }
}

/// The spec a node signs for `file`, created `now` by `creator`: the dataset resolved (an
/// uploaded blob is decoded from `blobs` to check it: call it off the async runtime), generation 0's job
/// deadline estimated from its cost when the file names none (a reference model or teacher
/// read from `blobs`), and, when the file names no
/// roster, the creator and the `connected` peers as the genesis roster (others join at
/// generation boundaries).
pub fn build_spec(
    file: &CampaignFile,
    creator: PeerKey,
    connected: &[PeerKey],
    now: Timestamp,
    blobs: &dyn crate::executor::BlobSource,
) -> Result<CampaignSpec, CampaignFileError> {
    // A distillation whose teacher is a language model labels a text corpus.
    let text = file.distill.as_ref().is_some_and(|d| {
        d.teacher
            .parse()
            .ok()
            .and_then(|id| blobs.blob(&id))
            .is_some_and(|b| crate::executor::distill::is_language_model(&b))
    });
    let dataset = resolve_dataset_for(&file.dataset, file.data.as_ref(), blobs, text)?;
    let mut file = file.clone();
    if let Some(p) = file.prompt.as_mut() {
        // The target and the words become the teacher's tokens: the teacher must be here.
        let id = p.teacher_id();
        let bytes = id
            .and_then(|id| blobs.blob(&id))
            .ok_or_else(|| CampaignFileError::Field {
                field: "prompt.teacher",
                reason: format!("{}: this node does not hold the teacher", p.teacher),
            })?;
        if id != Some(BlobId::of_bytes(&bytes)) {
            return Err(CampaignFileError::Field {
                field: "prompt.teacher",
                reason: "the stored bytes do not hash to the id".into(),
            });
        }
        p.resolve(&bytes)?;
    }
    let file = &file;
    let mut spec = file.to_spec(creator, now, dataset)?;
    if file.schedule.job_deadline_s.is_none()
        && let Some(ms) = crate::executor::estimate::estimate_job_ms(&spec, blobs)
    {
        // Generation 0's deadline from the jobs' cost (issue 23); the floor follows it down.
        let d = crate::executor::estimate::deadline_for(ms);
        spec.schedule.job_deadline_ms = d;
        spec.schedule.min_deadline_ms = spec.schedule.min_deadline_ms.min(d);
        spec.validate()?;
    }
    if file.roster.is_empty() {
        spec.roster = std::iter::once(creator)
            .chain(connected.iter().copied().take(MAX_ROSTER - 1))
            .collect();
        spec.roster.sort();
        spec.roster.dedup();
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOSS: &str =
        "name = \"x\"\n[loss]\npopulation = 4\ngenerations = 1\nreference_model = \"zoo:mlp-16\"\n";

    fn no_blobs() -> std::collections::BTreeMap<BlobId, Vec<u8>> {
        std::collections::BTreeMap::new()
    }

    fn key(i: u8) -> PeerKey {
        hivemesh_protocol::Keypair::from_secret_bytes([i; 32]).public()
    }

    #[test]
    fn zoo_models_are_built_stored_and_named_by_id() {
        let mut sub = Submission::parse(LOSS).expect("parse");
        assert_eq!(sub.text(), LOSS, "unchanged text is posted as given");
        assert!(sub.pending(Resolve::default()).is_empty(), "nothing asked");
        let stored = futures::executor::block_on(sub.upload_blobs(
            Resolve {
                zoo: true,
                files: None,
            },
            |_, bytes| async move { Ok::<_, std::convert::Infallible>(BlobId::of_bytes(&bytes)) },
        ))
        .expect("upload");
        assert_eq!(stored.len(), 1);
        let (blob, id) = &stored[0];
        assert_eq!(blob.field, "loss.reference_model");
        assert_eq!(blob.source, BlobRef::Zoo("mlp-16".into()));
        let again = Submission::parse(&sub.text()).expect("reparse");
        assert_eq!(
            again.file.loss.expect("loss").reference_model,
            id.to_string()
        );
        let spec = build_spec(
            &sub.file,
            key(1),
            &[key(2), key(3)],
            Timestamp(1),
            &no_blobs(),
        )
        .expect("spec");
        assert_eq!(spec.roster.len(), 3, "creator and the connected peers");
    }

    #[test]
    fn files_are_read_relative_to_the_base_folder() {
        let text = LOSS.replace("zoo:mlp-16", "file:missing.bin");
        let mut sub = Submission::parse(&text).expect("parse");
        let base = Path::new("/nonexistent-hivemesh");
        let pending = sub.pending(Resolve {
            zoo: true,
            files: Some(base),
        });
        assert_eq!(pending[0].source, BlobRef::File(base.join("missing.bin")));
        let e = sub.bytes(&pending[0]).expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent-hivemesh/missing.bin"),
            "{e}"
        );
    }

    #[test]
    fn small_rosters_are_refused() {
        let mut spec = build_spec(
            &Submission::parse(&LOSS.replace("zoo:mlp-16", &BlobId::of_bytes(b"m").to_string()))
                .expect("parse")
                .file,
            key(1),
            &[],
            Timestamp(1),
            &no_blobs(),
        )
        .expect("spec");
        assert!(matches!(
            check_roster(&spec),
            Err(Refusal::BelowRedundancy {
                members: 1,
                redundancy: 3
            })
        ));
        spec.roster = vec![key(1), key(2), key(3)];
        spec.roster.sort();
        assert_eq!(check_roster(&spec), Ok(()));
    }
}
