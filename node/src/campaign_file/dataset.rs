//! A campaign file's dataset: the `dataset = "…"` forms, the `[data]` table saying how a file
//! is read, and turning an uploaded dataset blob into the spec's [`DatasetRef`] (ADR 0008).
//!
//! ```toml
//! dataset = "file:iris.csv"   # or "builtin:digits", "mnist:DIR", "blob:ID"
//! [data]                      # how a file: dataset is read; every key optional
//! format = "csv"              # by default from the name (csv, npz, txt, a folder's files)
//! label = "species"           # CSV: the label column, a header name or a 0-based index
//! header = true               # CSV: whether the first row names the columns
//! shape = "1x8x8"             # CSV: a sample's shape; image folders: the size to resize to
//! name = "iris"               # the dataset's name in the campaign (default: the file's)
//! ```
//! `file:PATH` and `mnist:DIR` are read where the campaign is submitted from (relative to the
//! campaign file), converted into the canonical dataset blob and uploaded; the campaign then
//! names it `blob:ID`, and executors fetch it from peers before their first job.

use hivemesh_evolve::arch::Shape;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{DatasetRef, MAX_NAME_LEN};
use hivemesh_trainer::data::{DatasetBlob, Format, ReadOptions};
use serde::Deserialize;

use super::{CampaignFileError, field};
use crate::executor::{BlobSource, builtin_digits, dataset_blob};

/// `[data]`: how a `file:` dataset is read, and its name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// The format (`csv`, `npz`, `npy`, `mnist`, `image-folder`, `cifar10`, `text`, `blob`);
    /// guessed from the path when left out.
    pub format: Option<String>,
    /// CSV: the label column, by header name or 0-based index (default: the last).
    pub label: Option<String>,
    /// CSV: whether the first row is a header (default: guessed).
    pub header: Option<bool>,
    /// A sample's shape, `CxHxW` or a length.
    pub shape: Option<String>,
    /// The dataset's name (default: the file's stem; `dataset-<id>` for a `blob:`).
    pub name: Option<String>,
}

impl DataFile {
    /// The reader's options.
    pub fn read_options(&self) -> Result<ReadOptions, CampaignFileError> {
        let format = self
            .format
            .as_deref()
            .map(str::parse::<Format>)
            .transpose()
            .map_err(|e| field("data.format", e))?;
        if let Some(s) = &self.shape {
            hivemesh_trainer::data::read::parse_shape(s).map_err(|e| field("data.shape", e))?;
        }
        Ok(ReadOptions {
            format,
            label: self.label.clone(),
            header: self.header,
            shape: self.shape.clone(),
        })
    }
}

/// How a `dataset = "…"` value names the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSource {
    /// `builtin:NAME`: embedded in every node.
    Builtin(String),
    /// `blob:ID`: an uploaded dataset blob.
    Blob(BlobId),
    /// `file:PATH` (any format) or `mnist:DIR` (with the MNIST format): to convert and
    /// upload where the campaign is submitted from.
    File {
        /// The path as written (relative to the campaign file).
        path: String,
        /// The format the form implies (`mnist:`), else `None`.
        format: Option<Format>,
    },
}

impl DatasetSource {
    /// Parses a `dataset` value.
    pub fn parse(value: &str) -> Result<DatasetSource, CampaignFileError> {
        let (scheme, rest) = value.split_once(':').unwrap_or(("", value));
        match scheme {
            "builtin" => Ok(DatasetSource::Builtin(rest.into())),
            "blob" => Ok(DatasetSource::Blob(
                rest.parse()
                    .map_err(|e| field("dataset", format!("{value}: {e}")))?,
            )),
            "file" | "mnist" if !rest.is_empty() => Ok(DatasetSource::File {
                path: rest.into(),
                format: (scheme == "mnist").then_some(Format::Mnist),
            }),
            _ => Err(field(
                "dataset",
                format!("{value:?}: use builtin:digits, file:PATH, mnist:DIR or blob:ID"),
            )),
        }
    }
}

/// The dataset reference for a `dataset = "…"` value: `builtin:digits` at once; `blob:ID` by
/// decoding the blob from `blobs` (it must be a labelled dataset). `file:`/`mnist:` must have
/// been uploaded (and renamed `blob:ID`) before.
pub fn resolve_dataset(
    value: &str,
    data: Option<&DataFile>,
    blobs: &dyn BlobSource,
) -> Result<DatasetRef, CampaignFileError> {
    resolve_dataset_for(value, data, blobs, false)
}

/// [`resolve_dataset`] for a campaign that reads a text corpus (`text`: a distillation whose
/// teacher is a language model) rather than labelled samples.
pub fn resolve_dataset_for(
    value: &str,
    data: Option<&DataFile>,
    blobs: &dyn BlobSource,
    text: bool,
) -> Result<DatasetRef, CampaignFileError> {
    match DatasetSource::parse(value)? {
        DatasetSource::Builtin(name) if name == "digits" => Ok(builtin_digits()),
        DatasetSource::Builtin(name) => Err(field(
            "dataset",
            format!("no built-in dataset {name:?} (there is builtin:digits)"),
        )),
        DatasetSource::File { .. } => Err(field(
            "dataset",
            format!(
                "{value}: a file is converted and uploaded by `hivemesh campaign submit`; when \
                 posting to the API, upload it first (`hivemesh dataset add`, POST /datasets) \
                 and name it blob:ID"
            ),
        )),
        DatasetSource::Blob(id) => {
            let name = data
                .and_then(|d| d.name.clone())
                .unwrap_or_else(|| format!("dataset-{}", &id.to_string()[..8]));
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(field("data.name", format!("1 to {MAX_NAME_LEN} bytes")));
            }
            let bytes = match blobs.file(&id) {
                Some((_, len)) => len,
                None => blobs.blob(&id).map_or(0, |b| b.len() as u64),
            };
            let decoded = dataset_blob(&name, &id, blobs).map_err(|why| {
                field(
                    "dataset",
                    format!(
                        "blob {id}: {why}: upload it first with `hivemesh dataset add` (or \
                         POST /datasets)"
                    ),
                )
            })?;
            let found = DatasetRef {
                id,
                name,
                sources: Vec::new(),
                bytes,
            };
            match decoded {
                Ok(DatasetBlob::Samples(_)) if !text => Ok(found),
                Ok(DatasetBlob::Text(_)) if text => Ok(found),
                Ok(DatasetBlob::Text(_)) => Err(field(
                    "dataset",
                    format!("blob {id} is a text corpus; this campaign needs labelled samples"),
                )),
                Ok(DatasetBlob::Samples(_)) => Err(field(
                    "dataset",
                    format!(
                        "blob {id} holds labelled samples; a language-model teacher labels a \
                         text corpus (`hivemesh dataset add FILE.txt --format text`)"
                    ),
                )),
                Err(e) => Err(field("dataset", format!("blob {id}: {e}"))),
            }
        }
    }
}

/// A labelled dataset's sample shape and classes, from its blob's first bytes (for zoo
/// models).
pub fn shape_of(head: &[u8]) -> Option<(Shape, u32)> {
    hivemesh_trainer::data::blob::peek(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn dataset_values_parse_and_blobs_resolve_to_their_size() {
        assert_eq!(
            DatasetSource::parse("mnist:/data/mnist").expect("mnist"),
            DatasetSource::File {
                path: "/data/mnist".into(),
                format: Some(Format::Mnist)
            }
        );
        assert!(DatasetSource::parse("s3://bucket").is_err());
        assert!(DatasetSource::parse("file:").is_err());
        let blob = DatasetBlob::Samples(hivemesh_trainer::data::digits()).encode();
        let id = BlobId::of_bytes(&blob);
        let mut store = BTreeMap::new();
        let value = format!("blob:{id}");
        let e = resolve_dataset(&value, None, &store).expect_err("not stored");
        assert!(e.to_string().contains("not in the store"), "{e}");
        assert!(e.to_string().contains("dataset add"), "{e}");
        store.insert(id, blob.clone());
        let r = resolve_dataset(&value, None, &store).expect("stored");
        assert_eq!((r.id, r.bytes), (id, blob.len() as u64));
        assert_eq!(r.id, builtin_digits().id, "the same data has one id");
        assert!(r.sources.is_empty(), "fetched from peers by id");
        let e = resolve_dataset("file:x.csv", None, &store).expect_err("not uploaded");
        assert!(e.to_string().contains("campaign submit"), "{e}");
        let text = DatasetBlob::Text(
            hivemesh_trainer::data::TextCorpus::from_text("t".as_ref(), b"abc").expect("text"),
        )
        .encode();
        let tid = BlobId::of_bytes(&text);
        store.insert(tid, text);
        let e = resolve_dataset(&format!("blob:{tid}"), None, &store).expect_err("text");
        assert!(e.to_string().contains("text corpus"), "{e}");
    }
}
