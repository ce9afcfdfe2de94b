//! Datasets: the formats people have (MNIST IDX, CSV, NumPy, image folders, CIFAR-10 batches,
//! plain text), the canonical dataset blob every one of them converts into, deterministic
//! splits, shards by index range and content ids.
//!
//! A [`Dataset`] keeps samples either as bytes (pixel intensities `0..=max`, scaled to `[0, 1]`
//! when batched, so MNIST takes 47 MB rather than 188 MB) or as `f32` features used as they are,
//! with one `u16` label per sample. Its content id is the blake3 hash of its canonical blob
//! ([`blob`], ADR 0008): the dataset travels through the swarm as that blob, and the same data
//! read from any format gets one id.
//!
//! Readers, one module per format, each naming the file and the row, column, member or offset
//! of a problem: [`idx`], [`csv`], [`npy`], [`image_folder`], [`cifar`], [`text`].

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use hivemesh_evolve::arch::Shape;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::error::DataError;

pub mod blob;
pub mod cifar;
pub mod csv;
pub mod idx;
pub mod image_folder;
pub mod npy;
pub mod partition;
pub mod read;
pub mod text;

pub use blob::{DatasetBlob, MAX_DATASET_BYTES};
pub use cifar::load_cifar10;
pub use csv::{CsvOptions, LabelColumn};
pub use idx::{load_idx, load_mnist, parse_idx};
pub use image_folder::load_image_folder;
pub use npy::{load_npy_pair, load_npz};
pub use read::{Format, ReadDataset, ReadOptions, read_dataset, read_posted};
pub use text::TextCorpus;

/// The embedded default dataset: the 8x8 digits (UCI optdigits test set, 1,797 samples).
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Largest file we decompress or read whole (bytes), so a hostile file cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Most classes a dataset may have (labels are `u16`).
pub const MAX_CLASSES: u32 = 1 << 16;

/// A dataset's sample values, row-major, `len × shape.numel()` of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Bytes `0..=max`, scaled by `1 / max` into `[0, 1]` when batched (images, counts).
    U8 {
        /// The largest value (at least 1).
        max: u8,
        /// The values.
        data: Vec<u8>,
    },
    /// Finite `f32` features, used as they are.
    F32(Vec<f32>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::U8 { data, .. } => data.len(),
            Values::F32(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn byte_len(&self) -> u64 {
        match self {
            Values::U8 { data, .. } => data.len() as u64,
            Values::F32(v) => 4 * v.len() as u64,
        }
    }
}

/// A labelled image (or feature-vector) dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A human-readable name (not part of the id).
    pub name: String,
    /// Shape of one sample.
    pub shape: Shape,
    /// Number of classes; every label is below it (2 ..= [`MAX_CLASSES`]).
    pub classes: u32,
    /// The samples' values.
    pub values: Values,
    /// One label per sample.
    pub labels: Vec<u16>,
    /// Where an official test part starts (MNIST's t10k file): samples from here on are the
    /// test split. `None`: the splits are drawn from the whole set.
    pub test_from: Option<u64>,
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Used to fit weights.
    Train,
    /// Held out for tuning (loss constants, early choices).
    Validation,
    /// Reported accuracy.
    Test,
}

/// A dataset's three splits as sample indices (disjoint, each sorted in a fixed shuffled order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training indices.
    pub train: Vec<u32>,
    /// Validation indices.
    pub validation: Vec<u32>,
    /// Test indices.
    pub test: Vec<u32>,
}

impl Splits {
    /// The indices of one split.
    pub fn get(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

impl Dataset {
    /// A dataset of byte values (`0..=max`), checked.
    pub fn of_bytes(
        name: &str,
        shape: Shape,
        classes: u32,
        max: u8,
        data: Vec<u8>,
        labels: Vec<u16>,
    ) -> Result<Dataset, DataError> {
        let d = Dataset {
            name: name.into(),
            shape,
            classes,
            values: Values::U8 { max, data },
            labels,
            test_from: None,
        };
        d.validate()?;
        Ok(d)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape.numel() as usize
    }

    /// Checks the invariants: sizes, classes, labels below `classes`, finite features, the test
    /// part inside the set.
    pub fn validate(&self) -> Result<(), DataError> {
        let n = self.sample_len();
        let invalid = |m: String| Err(DataError::Invalid(format!("{}: {m}", self.name)));
        if n == 0 {
            return invalid("samples of no values".into());
        }
        if !(2..=MAX_CLASSES).contains(&self.classes) {
            return invalid(format!(
                "{} classes (2 to {MAX_CLASSES} supported)",
                self.classes
            ));
        }
        if matches!(self.values, Values::U8 { max: 0, .. }) {
            return invalid("byte values with a largest value of 0".into());
        }
        if self.values.len() as u64 != self.labels.len() as u64 * n as u64 {
            return invalid(format!(
                "{} values for {} samples of {n}",
                self.values.len(),
                self.labels.len()
            ));
        }
        if let Some(i) = self
            .labels
            .iter()
            .position(|&l| u32::from(l) >= self.classes)
        {
            return invalid(format!(
                "sample {i} has label {} but there are {} classes",
                self.labels[i], self.classes
            ));
        }
        if let Values::F32(v) = &self.values
            && let Some(i) = v.iter().position(|x| !x.is_finite())
        {
            return invalid(format!(
                "sample {} has a value {} (not finite)",
                i / n,
                v[i]
            ));
        }
        if let Some(t) = self.test_from
            && t > self.len() as u64
        {
            return invalid(format!(
                "the test part starts at {t}, past the {} samples",
                self.len()
            ));
        }
        Ok(())
    }

    /// The content id: the blake3 hash of the canonical blob ([`blob`]), computed without
    /// building the blob.
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        blob::write_samples(self, &mut h).expect("hashing cannot fail");
        *h.finalize().as_bytes()
    }

    /// Writes sample `i`'s inputs into `out` (`sample_len` values): bytes scaled to `[0, 1]`,
    /// features as they are.
    pub fn write_sample(&self, i: usize, out: &mut [f32]) {
        let n = self.sample_len();
        match &self.values {
            Values::U8 { max, data } => {
                let scale = 1.0 / f32::from(*max);
                for (o, &p) in out.iter_mut().zip(&data[i * n..(i + 1) * n]) {
                    *o = f32::from(p) * scale;
                }
            }
            Values::F32(v) => out.copy_from_slice(&v[i * n..(i + 1) * n]),
        }
    }

    /// Inputs of the given samples as one row-major `f32` buffer.
    pub fn inputs(&self, indices: &[u32]) -> Vec<f32> {
        let n = self.sample_len();
        let mut out = vec![0.0; indices.len() * n];
        for (k, &i) in indices.iter().enumerate() {
            self.write_sample(i as usize, &mut out[k * n..(k + 1) * n]);
        }
        out
    }

    /// Labels of the given samples.
    pub fn targets(&self, indices: &[u32]) -> Vec<i64> {
        indices
            .iter()
            .map(|&i| i64::from(self.labels[i as usize]))
            .collect()
    }

    /// The samples `range` as indices (a shard), or an error if the range leaves the dataset.
    pub fn shard(&self, range: Range<u64>) -> Result<Vec<u32>, DataError> {
        if range.start > range.end || range.end > self.len() as u64 {
            return Err(DataError::Invalid(format!(
                "{}: shard {}..{} is outside 0..{}",
                self.name,
                range.start,
                range.end,
                self.len()
            )));
        }
        Ok((range.start as u32..range.end as u32).collect())
    }

    /// Deterministic splits. With an official test part ([`Dataset::test_from`]) that part is
    /// the test split and the rest is shuffled into train and validation (`validation_fraction`
    /// of the pool); otherwise everything is shuffled and `validation_fraction` of all samples
    /// goes to test, as much to validation, the rest to train. The shuffle is seeded from the
    /// dataset's id, so every peer computes the same splits.
    pub fn splits(&self, validation_fraction: f64) -> Splits {
        let id = self.id();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(
            blake3::Hasher::new_derive_key("hivemesh 2026-11 dataset split v1")
                .update(&id)
                .finalize()
                .as_bytes(),
        );
        let mut rng = ChaCha8Rng::from_seed(seed);
        let test_from = self.test_from.map(|t| (t as usize).min(self.len()));
        let pool_end = test_from.unwrap_or(self.len());
        let mut pool: Vec<u32> = (0..pool_end as u32).collect();
        shuffle(&mut pool, &mut rng);
        let cut = |f: f64| ((self.len() as f64) * f).round() as usize;
        let test = match test_from {
            Some(_) => (pool_end as u32..self.len() as u32).collect(),
            None => {
                let rest = pool.split_off(cut(validation_fraction).min(pool.len()));
                std::mem::replace(&mut pool, rest)
            }
        };
        let v = match test_from {
            Some(_) => ((pool.len() as f64) * validation_fraction).round() as usize,
            None => cut(validation_fraction),
        }
        .min(pool.len());
        let train = pool.split_off(v);
        Splits {
            train,
            validation: pool,
            test,
        }
    }

    /// The split convention: a dataset with an official test part keeps it (and 1/12 of the
    /// rest validates, as MNIST's 5,000 of 60,000); others are cut 70 / 15 / 15.
    pub fn default_splits(&self) -> Splits {
        match self.test_from {
            Some(_) => self.splits(1.0 / 12.0),
            None => self.splits(0.15),
        }
    }
}

/// Fisher–Yates with our own uniform draw (stable across dependency upgrades).
pub fn shuffle(v: &mut [u32], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = hivemesh_evolve::random::below(rng, i + 1);
        v.swap(i, j);
    }
}

/// Reads a whole file (decompressing gzip when it starts with the gzip magic), capped at
/// [`MAX_FILE_BYTES`].
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut raw = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(DataError::Corrupt {
            path: path.to_path_buf(),
            offset: MAX_FILE_BYTES,
            reason: format!("larger than the {MAX_FILE_BYTES}-byte limit"),
        });
    }
    gunzip_if_gz(path, raw)
}

fn gunzip_if_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(MAX_FILE_BYTES + 1);
    match dec.read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > MAX_FILE_BYTES => Err(DataError::Corrupt {
            path: path.to_path_buf(),
            offset: MAX_FILE_BYTES,
            reason: format!("decompresses to more than {MAX_FILE_BYTES} bytes"),
        }),
        Ok(_) => Ok(out),
        Err(e) => Err(DataError::Corrupt {
            path: path.to_path_buf(),
            offset: out.len() as u64,
            reason: format!(
                "gzip stream broken after {} decompressed bytes: {e}",
                out.len()
            ),
        }),
    }
}

/// The embedded default dataset (8x8 digits, 1,797 samples).
pub fn digits() -> Dataset {
    let path = Path::new("builtin:digits");
    let text = gunzip_if_gz(path, DIGITS_CSV_GZ.to_vec()).expect("embedded digits decompress");
    csv::parse_digits_csv(path, &text).expect("embedded digits parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_parse_with_the_documented_shape() {
        let d = digits();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.shape, Shape::Image { c: 1, h: 8, w: 8 });
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (170..=185).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(d.id(), digits().id());
    }

    #[test]
    fn splits_are_disjoint_complete_and_deterministic() {
        let mut d = digits();
        let s = d.default_splits();
        let mut all: Vec<u32> = s
            .train
            .iter()
            .chain(&s.validation)
            .chain(&s.test)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..d.len() as u32).collect::<Vec<_>>());
        assert_eq!(s.test.len(), 270);
        assert_eq!(s.validation.len(), 270);
        assert_eq!(s, d.default_splits());
        // An official test part is kept as it is.
        d.test_from = Some(1500);
        let t = d.splits(0.1);
        assert_eq!(t.test, (1500..1797).collect::<Vec<u32>>());
        assert_eq!(t.train.len() + t.validation.len(), 1500);
        assert_eq!(t.validation.len(), 150);
    }

    #[test]
    fn a_changed_value_label_or_test_part_changes_the_id() {
        let d = digits();
        let mut e = d.clone();
        if let Values::U8 { data, .. } = &mut e.values {
            data[100] ^= 1;
        }
        assert_ne!(d.id(), e.id());
        let mut e = d.clone();
        e.labels[0] = (e.labels[0] + 1) % 10;
        assert_ne!(d.id(), e.id());
        let mut e = d.clone();
        e.test_from = Some(1000);
        assert_ne!(d.id(), e.id());
        let mut e = d.clone();
        e.name = "another name".into();
        assert_eq!(d.id(), e.id(), "the name is not part of the data");
    }

    #[test]
    fn invalid_datasets_say_what_is_wrong() {
        let shape = Shape::Flat(2);
        let e = Dataset::of_bytes("x", shape, 2, 1, vec![0; 3], vec![0, 1]).expect_err("sizes");
        assert!(e.to_string().contains("3 values for 2 samples"), "{e}");
        let e = Dataset::of_bytes("x", shape, 2, 1, vec![0; 4], vec![0, 2]).expect_err("label");
        assert!(e.to_string().contains("label 2"), "{e}");
        let e = Dataset::of_bytes("x", shape, 1, 1, vec![0; 4], vec![0, 0]).expect_err("classes");
        assert!(e.to_string().contains("1 classes"), "{e}");
        let mut d = Dataset::of_bytes("x", shape, 2, 1, vec![0; 4], vec![0, 1]).expect("valid");
        d.values = Values::F32(vec![0.0, f32::NAN, 1.0, 2.0]);
        let e = d.validate().expect_err("NaN");
        assert!(e.to_string().contains("not finite"), "{e}");
    }

    #[test]
    fn shards_are_ranges_and_out_of_range_is_an_error() {
        let d = digits();
        assert_eq!(d.shard(10..13).expect("fits"), vec![10, 11, 12]);
        assert!(d.shard(1790..1800).is_err());
    }

    #[test]
    fn corrupt_gzip_names_file_and_offset() {
        let dir = std::env::temp_dir().join(format!("hm-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("broken.gz");
        let mut gz = DIGITS_CSV_GZ.to_vec();
        gz.truncate(gz.len() / 2);
        std::fs::write(&path, &gz).expect("write");
        let msg = read_maybe_gz(&path)
            .expect_err("truncated gzip")
            .to_string();
        assert!(msg.contains("broken.gz") && msg.contains("offset"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
