//! Datasets: IDX (MNIST-compatible, gzip or raw), the embedded 8x8 digits CSV, and text corpora
//! as character tokens; deterministic splits, shards by index range and content ids.
//!
//! A [`Dataset`] keeps samples as bytes (pixel intensities `0..=max`) and labels, and turns a
//! list of indices into an `f32` batch scaled to `[0, 1]` on demand, so MNIST takes 47 MB rather
//! than 188 MB. Its content id is blake3 over a canonical encoding of exactly those bytes (shape,
//! classes, scale, pixels, labels), so the same data read from IDX or from a copy gets one id.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hivemesh_evolve::arch::Shape;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::error::DataError;

/// The embedded default dataset: the 8x8 digits (UCI optdigits test set, 1,797 samples).
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Largest file we decompress or read (bytes), so a hostile file cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A labelled image (or vector) dataset held as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// A human-readable name.
    pub name: String,
    /// Shape of one sample.
    pub shape: Shape,
    /// Number of classes; every label is below it.
    pub classes: u32,
    /// The largest pixel value (inputs are scaled by `1 / max`).
    pub max: u8,
    /// Samples, `len × shape.numel()` bytes, row-major.
    pub pixels: Vec<u8>,
    /// One label per sample.
    pub labels: Vec<u8>,
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

    /// Checks the internal invariants (sizes, labels below `classes`).
    pub fn validate(&self) -> Result<(), DataError> {
        let n = self.sample_len();
        if n == 0 || self.classes == 0 || self.max == 0 {
            return Err(DataError::Invalid(format!(
                "{}: empty samples, zero classes or zero scale",
                self.name
            )));
        }
        if self.pixels.len() != self.labels.len() * n {
            return Err(DataError::Invalid(format!(
                "{}: {} pixel bytes for {} samples of {n}",
                self.name,
                self.pixels.len(),
                self.labels.len()
            )));
        }
        if let Some(i) = self
            .labels
            .iter()
            .position(|&l| u32::from(l) >= self.classes)
        {
            return Err(DataError::Invalid(format!(
                "{}: sample {i} has label {} but there are {} classes",
                self.name, self.labels[i], self.classes
            )));
        }
        Ok(())
    }

    /// The content id: blake3 (derived key) of the canonical encoding.
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("hivemesh 2026-11 dataset id v1");
        match self.shape {
            Shape::Image { c, h: hh, w } => {
                h.update(&[0]);
                for v in [c, hh, w] {
                    h.update(&v.to_le_bytes());
                }
            }
            Shape::Flat(n) => {
                h.update(&[1]);
                h.update(&n.to_le_bytes());
            }
        }
        h.update(&self.classes.to_le_bytes());
        h.update(&[self.max]);
        h.update(&(self.labels.len() as u64).to_le_bytes());
        h.update(&self.pixels);
        h.update(&self.labels);
        *h.finalize().as_bytes()
    }

    /// Writes sample `i`'s inputs, scaled to `[0, 1]`, into `out` (`sample_len` values).
    pub fn write_sample(&self, i: usize, out: &mut [f32]) {
        let n = self.sample_len();
        let scale = 1.0 / f32::from(self.max);
        for (o, &p) in out.iter_mut().zip(&self.pixels[i * n..(i + 1) * n]) {
            *o = f32::from(p) * scale;
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

    /// Deterministic splits. With `test_from`, samples from that index on are the test split
    /// (an official split, as in MNIST's t10k file) and the rest is shuffled into train and
    /// validation (`validation_fraction` of the pool); otherwise everything is shuffled and
    /// `validation_fraction` of all samples goes to test, as much to validation, the rest to
    /// train. The shuffle is seeded from the dataset's id, so every peer computes the same splits.
    pub fn splits(&self, validation_fraction: f64, test_from: Option<usize>) -> Splits {
        let id = self.id();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(
            blake3::Hasher::new_derive_key("hivemesh 2026-11 dataset split v1")
                .update(&id)
                .finalize()
                .as_bytes(),
        );
        let mut rng = ChaCha8Rng::from_seed(seed);
        let pool_end = test_from.unwrap_or(self.len()).min(self.len());
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

    /// The split convention for this dataset: MNIST-style IDX pairs keep their official test
    /// set; others are cut 70 / 15 / 15.
    pub fn default_splits(&self, test_from: Option<usize>) -> Splits {
        match test_from {
            Some(_) => self.splits(1.0 / 12.0, test_from),
            None => self.splits(0.15, None),
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

/// Parses one IDX file (`ubyte` only): returns its dimensions and data.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<u32>, Vec<u8>), DataError> {
    let corrupt = |offset: usize, reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < 4 {
        return Err(corrupt(
            bytes.len(),
            "truncated: the 4-byte IDX magic is missing".into(),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(corrupt(
            0,
            "not an IDX file (magic must start 00 00)".into(),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(corrupt(
            2,
            format!(
                "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                bytes[2]
            ),
        ));
    }
    let rank = usize::from(bytes[3]);
    if rank == 0 || rank > 4 {
        return Err(corrupt(3, format!("IDX rank {rank} (1 to 4 supported)")));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(corrupt(
            bytes.len(),
            format!("truncated inside the header ({header} bytes expected)"),
        ));
    }
    let dims: Vec<u32> = (0..rank)
        .map(|k| {
            let o = 4 + 4 * k;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(u64::from(d)))
        .filter(|&n| n <= MAX_FILE_BYTES)
        .ok_or_else(|| corrupt(4, format!("dimensions {dims:?} are too large")))?
        as usize;
    let have = bytes.len() - header;
    if have < count {
        return Err(corrupt(
            bytes.len(),
            format!(
                "truncated: dimensions {dims:?} need {count} data bytes after the header, found {have}"
            ),
        ));
    }
    if have > count {
        return Err(corrupt(
            header + count,
            format!("{} unexpected bytes after the data", have - count),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// An MNIST-style dataset from an images IDX file and a labels IDX file (gzip or raw).
pub fn load_idx(images: &Path, labels: &Path, name: &str) -> Result<Dataset, DataError> {
    let (idims, pixels) = parse_idx(images, &read_maybe_gz(images)?)?;
    let (ldims, labels_v) = parse_idx(labels, &read_maybe_gz(labels)?)?;
    let (n, shape) = match idims.as_slice() {
        [n, h, w] => (*n, Shape::Image { c: 1, h: *h, w: *w }),
        [n, c, h, w] => (
            *n,
            Shape::Image {
                c: *c,
                h: *h,
                w: *w,
            },
        ),
        [n, f] => (*n, Shape::Flat(*f)),
        d => {
            return Err(DataError::Corrupt {
                path: images.to_path_buf(),
                offset: 3,
                reason: format!("images need rank 2 to 4 with samples first, got {d:?}"),
            });
        }
    };
    if ldims.as_slice() != [n] {
        return Err(DataError::Corrupt {
            path: labels.to_path_buf(),
            offset: 4,
            reason: format!("labels have dimensions {ldims:?}, the images have {n} samples"),
        });
    }
    let classes = u32::from(labels_v.iter().copied().max().unwrap_or(0)) + 1;
    let max = pixels.iter().copied().max().unwrap_or(0).max(1);
    let ds = Dataset {
        name: name.to_string(),
        shape,
        classes: classes.max(2),
        max,
        pixels,
        labels: labels_v,
    };
    ds.validate()?;
    Ok(ds)
}

/// MNIST from a folder holding the four standard files (`.gz` or raw): the 60,000 training
/// samples followed by the 10,000 test samples, and the index where the test part starts.
pub fn load_mnist(dir: &Path) -> Result<(Dataset, usize), DataError> {
    let find = |stem: &str| -> Result<PathBuf, DataError> {
        [format!("{stem}.gz"), stem.to_string()]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| DataError::Io {
                path: dir.join(format!("{stem}.gz")),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "MNIST file not found (with or without .gz)",
                ),
            })
    };
    let train = load_idx(
        &find("train-images-idx3-ubyte")?,
        &find("train-labels-idx1-ubyte")?,
        "mnist",
    )?;
    let test = load_idx(
        &find("t10k-images-idx3-ubyte")?,
        &find("t10k-labels-idx1-ubyte")?,
        "mnist",
    )?;
    if train.shape != test.shape {
        return Err(DataError::Invalid(format!(
            "MNIST train shape {:?} differs from test shape {:?}",
            train.shape, test.shape
        )));
    }
    let test_from = train.len();
    let mut all = train;
    all.classes = all.classes.max(test.classes);
    all.max = all.max.max(test.max);
    all.pixels.extend_from_slice(&test.pixels);
    all.labels.extend_from_slice(&test.labels);
    Ok((all, test_from))
}

/// The 8x8 digits CSV: 64 pixel columns (0..=16) then the label, one sample per line.
pub fn parse_digits_csv(path: &Path, text: &[u8]) -> Result<Dataset, DataError> {
    let text = std::str::from_utf8(text).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        offset: e.valid_up_to() as u64,
        reason: "not UTF-8 text".into(),
    })?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut offset = 0usize;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let corrupt = |reason: String| DataError::Corrupt {
            path: path.to_path_buf(),
            offset: start as u64,
            reason: format!("line {}: {reason}", line_no + 1),
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(corrupt(format!("{} fields, expected 65", fields.len())));
        }
        for f in &fields[..64] {
            let v: u8 = f
                .trim()
                .parse()
                .ok()
                .filter(|&v| v <= 16)
                .ok_or_else(|| corrupt(format!("pixel {f:?} is not an integer 0..=16")))?;
            pixels.push(v);
        }
        let l: u8 = fields[64]
            .trim()
            .parse()
            .ok()
            .filter(|&v| v <= 9)
            .ok_or_else(|| corrupt(format!("label {:?} is not a digit 0..=9", fields[64])))?;
        labels.push(l);
    }
    let ds = Dataset {
        name: "digits-8x8".into(),
        shape: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        max: 16,
        pixels,
        labels,
    };
    if ds.is_empty() {
        return Err(DataError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "no samples".into(),
        });
    }
    ds.validate()?;
    Ok(ds)
}

/// The embedded default dataset (8x8 digits, 1,797 samples).
pub fn digits() -> Dataset {
    let path = Path::new("builtin:digits");
    let text = gunzip_if_gz(path, DIGITS_CSV_GZ.to_vec()).expect("embedded digits decompress");
    parse_digits_csv(path, &text).expect("embedded digits parse")
}

/// A text corpus as character tokens: the sorted set of distinct characters is the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCorpus {
    /// Distinct characters, sorted.
    pub vocab: Vec<char>,
    /// The text as indices into `vocab`.
    pub tokens: Vec<u32>,
}

impl TextCorpus {
    /// Tokenises UTF-8 text.
    pub fn from_text(path: &Path, bytes: &[u8]) -> Result<TextCorpus, DataError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::Corrupt {
            path: path.to_path_buf(),
            offset: e.valid_up_to() as u64,
            reason: "not UTF-8 text".into(),
        })?;
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        let tokens = text
            .chars()
            .map(|c| vocab.binary_search(&c).unwrap_or(0) as u32)
            .collect();
        Ok(TextCorpus { vocab, tokens })
    }

    /// Reads a text file (gzip or plain).
    pub fn load(path: &Path) -> Result<TextCorpus, DataError> {
        TextCorpus::from_text(path, &read_maybe_gz(path)?)
    }

    /// The content id: blake3 of the UTF-8 text.
    pub fn id(&self) -> [u8; 32] {
        let text: String = self
            .tokens
            .iter()
            .map(|&t| self.vocab[t as usize])
            .collect();
        *blake3::Hasher::new_derive_key("hivemesh 2026-11 text corpus id v1")
            .update(text.as_bytes())
            .finalize()
            .as_bytes()
    }

    /// Next-character prediction samples for positions `range`: each sample is the one-hot
    /// encoding of `context` characters (an image of `vocab` channels, 1 × `context`) and its
    /// label is the character that follows. Needs a vocabulary of at most 256 characters.
    pub fn windows(&self, context: usize, range: Range<usize>) -> Result<Dataset, DataError> {
        let v = self.vocab.len();
        if !(2..=256).contains(&v) {
            return Err(DataError::Invalid(format!(
                "a vocabulary of {v} characters (2 to 256 supported)"
            )));
        }
        let last = self.tokens.len().saturating_sub(context);
        if context == 0 || range.start > range.end || range.end > last {
            return Err(DataError::Invalid(format!(
                "windows {}..{} of context {context} do not fit a corpus of {} tokens",
                range.start,
                range.end,
                self.tokens.len()
            )));
        }
        let n = range.len();
        let mut pixels = vec![0u8; n * v * context];
        let mut labels = Vec::with_capacity(n);
        for (k, p) in range.enumerate() {
            let sample = &mut pixels[k * v * context..(k + 1) * v * context];
            for t in 0..context {
                // channel-major: [vocab][1][context]
                sample[self.tokens[p + t] as usize * context + t] = 1;
            }
            labels.push(self.tokens[p + context] as u8);
        }
        Ok(Dataset {
            name: format!("text-windows-{context}"),
            shape: Shape::Image {
                c: v as u32,
                h: 1,
                w: context as u32,
            },
            classes: v as u32,
            max: 1,
            pixels,
            labels,
        })
    }
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
        let d = digits();
        let s = d.default_splits(None);
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
        assert_eq!(s, d.default_splits(None));
        // Official test split kept as is.
        let t = d.splits(0.1, Some(1500));
        assert_eq!(t.test, (1500..1797).collect::<Vec<u32>>());
        assert_eq!(t.train.len() + t.validation.len(), 1500);
        assert_eq!(t.validation.len(), 150);
    }

    #[test]
    fn a_changed_pixel_changes_the_id() {
        let d = digits();
        let mut e = d.clone();
        e.pixels[100] ^= 1;
        assert_ne!(d.id(), e.id());
    }

    #[test]
    fn shards_are_ranges_and_out_of_range_is_an_error() {
        let d = digits();
        assert_eq!(d.shard(10..13).expect("fits"), vec![10, 11, 12]);
        assert!(d.shard(1790..1800).is_err());
    }

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn idx_round_trip_and_truncation_names_the_offset() {
        let p = Path::new("x.idx");
        let b = idx_bytes(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (dims, data) = parse_idx(p, &b).expect("valid");
        assert_eq!(dims, vec![2, 2, 2]);
        assert_eq!(data.len(), 8);
        let err = parse_idx(p, &b[..b.len() - 3]).expect_err("truncated");
        let msg = err.to_string();
        assert!(msg.contains("x.idx") && msg.contains("offset 21"), "{msg}");
        assert!(parse_idx(p, &[0, 0, 0x0d, 1, 0, 0, 0, 1, 0]).is_err());
        assert!(parse_idx(p, &[1, 2]).is_err());
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

    #[test]
    fn bad_csv_lines_are_named() {
        let p = Path::new("d.csv");
        let mut line = vec!["0"; 64].join(",");
        line.push_str(",3\n");
        let good = parse_digits_csv(p, line.as_bytes()).expect("one sample");
        assert_eq!(good.len(), 1);
        let bad = format!("{line}{}", line.replace(",3\n", ",x\n"));
        let msg = parse_digits_csv(p, bad.as_bytes())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("d.csv"), "{msg}");
    }

    #[test]
    fn text_windows_one_hot_the_context_and_label_the_next_char() {
        let c = TextCorpus::from_text(Path::new("t"), b"abcab").expect("text");
        assert_eq!(c.vocab, vec!['a', 'b', 'c']);
        let w = c.windows(2, 0..3).expect("fits");
        assert_eq!(w.len(), 3);
        assert_eq!(w.labels, vec![2, 0, 1]); // "ab"->c, "bc"->a, "ca"->b
        // sample 0: 'a' at t=0 (channel 0), 'b' at t=1 (channel 1)
        assert_eq!(&w.pixels[..6], &[1, 0, 0, 1, 0, 0]);
        assert!(c.windows(2, 0..4).is_err());
    }
}
