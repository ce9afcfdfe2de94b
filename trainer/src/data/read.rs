//! Reading any supported format into a canonical dataset blob: the one entry point for
//! `hivemesh dataset add`, `POST /datasets` and `dataset = "file:PATH"` in campaign files.

use std::path::Path;
use std::str::FromStr;

use hivemesh_evolve::arch::Shape;

use super::csv::{CsvOptions, Header, LabelColumn};
use super::{DatasetBlob, TextCorpus, cifar, csv, image_folder, load_mnist, npy};
use crate::error::DataError;

/// A dataset file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A folder with MNIST's four IDX files (gzip or raw).
    Mnist,
    /// CSV (or TSV): numeric features and a label column.
    Csv,
    /// A folder with `x.npy` and `y.npy`.
    Npy,
    /// A `.npz` archive with members `x` and `y`.
    Npz,
    /// torchvision's ImageFolder layout: `root/<class>/*.png|jpg`.
    ImageFolder,
    /// CIFAR-10's binary batches (a folder or one `.bin` file).
    Cifar10,
    /// Plain UTF-8 text (a language-model corpus).
    Text,
    /// A canonical dataset blob already (`HMDS`).
    Blob,
}

/// The format names, for help and errors.
pub const FORMATS: &str = "mnist, csv, npy, npz, image-folder, cifar10, text, blob";

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Ok(match s {
            "mnist" | "idx" => Format::Mnist,
            "csv" | "tsv" => Format::Csv,
            "npy" => Format::Npy,
            "npz" => Format::Npz,
            "image-folder" | "imagefolder" => Format::ImageFolder,
            "cifar10" | "cifar-10" => Format::Cifar10,
            "text" | "txt" => Format::Text,
            "blob" | "hmds" => Format::Blob,
            other => {
                return Err(format!(
                    "unknown dataset format {other:?} (one of {FORMATS})"
                ));
            }
        })
    }
}

impl Format {
    /// The format a path most likely has: folders by the files they hold, files by their
    /// extension (a `.gz` suffix looked through) or by the dataset-blob magic.
    pub fn guess(path: &Path) -> Result<Format, DataError> {
        if path.is_dir() {
            let has = |f: &str| path.join(f).exists() || path.join(format!("{f}.gz")).exists();
            return Ok(if has("train-images-idx3-ubyte") {
                Format::Mnist
            } else if has("data_batch_1.bin") || has("test_batch.bin") {
                Format::Cifar10
            } else if has("x.npy") && has("y.npy") {
                Format::Npy
            } else {
                Format::ImageFolder
            });
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        match ext {
            "csv" | "tsv" => Ok(Format::Csv),
            "npz" => Ok(Format::Npz),
            "txt" | "text" | "md" => Ok(Format::Text),
            "bin" => Ok(Format::Cifar10),
            "hmds" => Ok(Format::Blob),
            _ => {
                let mut head = [0u8; 4];
                let magic = std::fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                    .is_ok()
                    && &head == super::blob::MAGIC;
                if magic {
                    return Ok(Format::Blob);
                }
                Err(DataError::Invalid(format!(
                    "{}: cannot tell the format from the name; give one of {FORMATS}",
                    path.display()
                )))
            }
        }
    }
}

/// How to read a dataset file; everything but the format is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The format (`None`: guessed from the path).
    pub format: Option<Format>,
    /// CSV: the label column, a header name or a 0-based index (default: the last column).
    pub label: Option<String>,
    /// CSV: whether the first row is a header (`None`: guessed).
    pub header: Option<bool>,
    /// CSV: the shape of one sample (`CxHxW` or a length); image folders: the size every
    /// image is resized to (required there).
    pub shape: Option<String>,
}

/// A dataset read from a file, and the class names when the format has them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadDataset {
    /// The dataset.
    pub blob: DatasetBlob,
    /// Class `i`'s name, when the labels were names (CSV texts, image folder classes).
    pub class_names: Option<Vec<String>>,
}

/// Parses a shape: `C x H x W` (`1x28x28`) or a flat length (`64`).
pub fn parse_shape(s: &str) -> Result<Shape, String> {
    let dims: Result<Vec<u32>, _> = s.split(['x', 'X']).map(|d| d.trim().parse()).collect();
    match dims.as_deref() {
        Ok([n]) if *n > 0 => Ok(Shape::Flat(*n)),
        Ok([c, h, w]) if *c > 0 && *h > 0 && *w > 0 => Ok(Shape::Image {
            c: *c,
            h: *h,
            w: *w,
        }),
        _ => Err(format!(
            "shape {s:?}: give CxHxW (e.g. 1x28x28) or a length (e.g. 64)"
        )),
    }
}

/// Reads `path` in its format into a dataset.
pub fn read_dataset(path: &Path, opts: &ReadOptions) -> Result<ReadDataset, DataError> {
    let format = match opts.format {
        Some(f) => f,
        None => Format::guess(path)?,
    };
    let shape = opts
        .shape
        .as_deref()
        .map(parse_shape)
        .transpose()
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
    let samples = |d| {
        Ok(ReadDataset {
            blob: DatasetBlob::Samples(d),
            class_names: None,
        })
    };
    match format {
        Format::Mnist => samples(load_mnist(path)?),
        Format::Csv => {
            let c = csv::load_csv(path, &csv_options(path, opts, shape))?;
            Ok(ReadDataset {
                blob: DatasetBlob::Samples(c.dataset),
                class_names: c.class_names,
            })
        }
        Format::Npy => samples(npy::load_npy_pair(
            &path.join("x.npy"),
            &path.join("y.npy"),
        )?),
        Format::Npz => samples(npy::load_npz(path)?),
        Format::ImageFolder => {
            let shape = shape.ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: an image folder needs the shape its images are resized to \
                     (e.g. --shape 3x32x32)",
                    path.display()
                ))
            })?;
            let (d, names) = image_folder::load_image_folder(path, shape)?;
            Ok(ReadDataset {
                blob: DatasetBlob::Samples(d),
                class_names: Some(names),
            })
        }
        Format::Cifar10 => samples(cifar::load_cifar10(path)?),
        Format::Text => Ok(ReadDataset {
            blob: DatasetBlob::Text(TextCorpus::load(path)?),
            class_names: None,
        }),
        Format::Blob => {
            let name = path.display().to_string();
            Ok(ReadDataset {
                blob: DatasetBlob::decode(&name, &read_blob_file(path)?)?,
                class_names: None,
            })
        }
    }
}

/// A blob file, read whole (up to the largest dataset blob).
fn read_blob_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let len = std::fs::metadata(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > super::MAX_DATASET_BYTES {
        return Err(DataError::Invalid(format!(
            "{}: {len} bytes, over the {}-byte dataset limit",
            path.display(),
            super::MAX_DATASET_BYTES
        )));
    }
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn csv_options(path: &Path, opts: &ReadOptions, shape: Option<Shape>) -> CsvOptions {
    let tsv = path
        .to_str()
        .is_some_and(|p| p.ends_with(".tsv") || p.ends_with(".tsv.gz"));
    CsvOptions {
        label: match opts.label.as_deref() {
            None => LabelColumn::Last,
            Some(l) => l
                .parse()
                .map_or_else(|_| LabelColumn::Name(l.into()), LabelColumn::Index),
        },
        header: match opts.header {
            None => Header::Auto,
            Some(true) => Header::Present,
            Some(false) => Header::Absent,
        },
        delimiter: if tsv { '\t' } else { ',' },
        shape,
    }
}

/// Reads a file's bytes as posted to a node (`POST /datasets`): CSV, `.npz`, one CIFAR-10
/// batch, text or a blob; folder formats must be converted by the client first.
pub fn read_posted(name: &str, bytes: &[u8], opts: &ReadOptions) -> Result<ReadDataset, DataError> {
    let format = match opts.format {
        Some(f) => f,
        None if bytes.starts_with(super::blob::MAGIC) => Format::Blob,
        None => Format::guess(Path::new(name)).map_err(|_| {
            DataError::Invalid(format!(
                "{name}: cannot tell the format; give ?format= (one of {FORMATS})"
            ))
        })?,
    };
    match format {
        Format::Blob => Ok(ReadDataset {
            blob: DatasetBlob::decode(name, bytes)?,
            class_names: None,
        }),
        Format::Mnist | Format::Npy | Format::ImageFolder => Err(DataError::Invalid(format!(
            "{name}: a folder format cannot be posted as one body: convert it with \
             `hivemesh dataset add` (which posts the canonical blob)"
        ))),
        _ => {
            // The readers take files: write the body to a private temporary file.
            let dir = tempdir_for(name)?;
            let path = dir.join(Path::new(name).file_name().unwrap_or("upload".as_ref()));
            std::fs::write(&path, bytes).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            let read = read_dataset(
                &path,
                &ReadOptions {
                    format: Some(format),
                    ..opts.clone()
                },
            );
            std::fs::remove_dir_all(&dir).ok();
            read
        }
    }
}

/// A fresh private folder under the system's temporary folder.
fn tempdir_for(name: &str) -> Result<std::path::PathBuf, DataError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hivemesh-dataset-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| DataError::Io {
        path: Path::new(name).to_path_buf(),
        source,
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_guessed_from_names_and_shapes_parse() {
        for (name, f) in [
            ("a.csv", Format::Csv),
            ("a.CSV.gz", Format::Csv),
            ("a.tsv", Format::Csv),
            ("d.npz", Format::Npz),
            ("shakespeare.txt", Format::Text),
            ("data_batch_1.bin", Format::Cifar10),
        ] {
            assert_eq!(Format::guess(Path::new(name)).expect(name), f, "{name}");
        }
        assert!(Format::guess(Path::new("weights.safetensors")).is_err());
        assert_eq!(
            parse_shape("1x28x28"),
            Ok(Shape::Image { c: 1, h: 28, w: 28 })
        );
        assert_eq!(parse_shape("64"), Ok(Shape::Flat(64)));
        assert!(parse_shape("0x2x2").is_err() && parse_shape("2x2").is_err());
        assert_eq!("image-folder".parse(), Ok(Format::ImageFolder));
        assert!("parquet".parse::<Format>().unwrap_err().contains("csv"));
    }

    #[test]
    fn a_posted_csv_and_a_posted_blob_read_the_same() {
        let csv = b"f1,f2,label\n0.5,1,0\n2,3,1\n1,1,1\n";
        let opts = ReadOptions::default();
        let a = read_posted("t.csv", csv, &opts).expect("csv");
        let blob = a.blob.encode();
        let b = read_posted("whatever", &blob, &opts).expect("blob");
        assert_eq!(a.blob.id(), b.blob.id());
        let e = read_posted("x", csv, &opts).expect_err("no name, no format");
        assert!(e.to_string().contains("?format="), "{e}");
        let folder = ReadOptions {
            format: Some(Format::ImageFolder),
            ..ReadOptions::default()
        };
        assert!(read_posted("x", csv, &folder).is_err());
    }
}
