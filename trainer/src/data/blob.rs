//! The canonical dataset blob (ADR 0008): the one byte layout every format converts into. Its
//! blake3 hash is the dataset's id, it is what travels between peers, and it is simple enough
//! to read from any language (fixed little-endian fields, no framing library).
//!
//! ```text
//! offset  size  field
//!      0     4  magic "HMDS"
//!      4     1  version (1)
//!      5     1  kind: 0 labelled samples, 1 UTF-8 text
//! labelled samples:
//!      6     1  values: 0 bytes (scaled by 1/max), 1 f32
//!      7     1  max (the largest byte value; 0 for f32)
//!      8     1  shape: 0 image (c, h, w), 1 flat (n, 0, 0)
//!      9    12  three u32
//!     21     4  u32 classes (2 ..= 65536)
//!     25     8  u64 samples
//!     33     8  u64 where the official test part starts (u64::MAX: none)
//!     41  2×n   u16 label per sample
//!      …        the values, row-major: samples × numel bytes or f32
//! text:
//!      6     8  u64 length, then that many bytes of UTF-8
//! ```
//! Nothing may follow. The decoder checks every size against the blob's length before it
//! allocates, so a hostile blob costs at most its own size.

use std::io::{self, Read, Write};
use std::path::Path;

use hivemesh_evolve::arch::Shape;

use super::{Dataset, TextCorpus, Values};
use crate::error::DataError;

/// The magic at the start of every dataset blob.
pub const MAGIC: &[u8; 4] = b"HMDS";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// The largest dataset blob (64 GiB): what a campaign may declare.
pub const MAX_DATASET_BYTES: u64 = 64 << 30;
/// Bytes before the labels of a labelled-samples blob.
pub const SAMPLES_HEADER: usize = 41;

/// A decoded dataset blob.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetBlob {
    /// Labelled samples.
    Samples(Dataset),
    /// A text corpus.
    Text(TextCorpus),
}

impl DatasetBlob {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// Writes the canonical bytes (to a file, without building them in memory).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            DatasetBlob::Samples(d) => write_samples(d, w),
            DatasetBlob::Text(t) => write_text(&t.text(), w),
        }
    }

    /// The id: blake3 of the canonical bytes.
    pub fn id(&self) -> [u8; 32] {
        match self {
            DatasetBlob::Samples(d) => d.id(),
            DatasetBlob::Text(t) => t.id(),
        }
    }

    /// One line for people: samples, shape, classes, value type (or the text's size).
    pub fn summary(&self) -> String {
        match self {
            DatasetBlob::Samples(d) => {
                let values = match d.values {
                    Values::U8 { max, .. } => format!("bytes 0..={max}"),
                    Values::F32(_) => "f32".into(),
                };
                let test = d
                    .test_from
                    .map(|t| format!(", official test part from sample {t}"))
                    .unwrap_or_default();
                format!(
                    "{} samples of shape {}, {} classes, {values}{test}",
                    d.len(),
                    shape_text(&d.shape),
                    d.classes
                )
            }
            DatasetBlob::Text(t) => format!(
                "text of {} characters, a vocabulary of {}",
                t.tokens.len(),
                t.vocab.len()
            ),
        }
    }

    /// Decodes a blob (`name` for the dataset and the errors).
    pub fn decode(name: &str, bytes: &[u8]) -> Result<DatasetBlob, DataError> {
        let corrupt = |offset: usize, reason: String| DataError::Corrupt {
            path: Path::new(name).to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < 6 || &bytes[..4] != MAGIC {
            return Err(corrupt(
                0,
                "not a hivemesh dataset blob (no HMDS magic)".into(),
            ));
        }
        if bytes[4] != VERSION {
            return Err(corrupt(
                4,
                format!(
                    "dataset blob version {} (this node reads {VERSION})",
                    bytes[4]
                ),
            ));
        }
        match bytes[5] {
            0 => decode_samples(name, bytes, &corrupt).map(DatasetBlob::Samples),
            1 => {
                let len = read_u64(bytes, 6).ok_or_else(|| corrupt(6, "truncated".into()))?;
                if len != bytes.len() as u64 - 14 {
                    return Err(corrupt(
                        6,
                        format!(
                            "says {len} text bytes, has {}",
                            bytes.len().saturating_sub(14)
                        ),
                    ));
                }
                let t = TextCorpus::from_text(Path::new(name), &bytes[14..])?;
                Ok(DatasetBlob::Text(t))
            }
            k => Err(corrupt(5, format!("unknown dataset kind {k}"))),
        }
    }
}

impl DatasetBlob {
    /// Decodes a blob of `len` bytes from a reader (a file) without holding its bytes twice:
    /// the header is checked against `len` before the samples are allocated and read into
    /// place.
    pub fn read_from(name: &str, mut r: impl Read, len: u64) -> Result<DatasetBlob, DataError> {
        let path = Path::new(name).to_path_buf();
        let io = |e: io::Error| DataError::Io {
            path: path.clone(),
            source: e,
        };
        let mut head = [0u8; SAMPLES_HEADER];
        let n = (len as usize).min(SAMPLES_HEADER);
        r.read_exact(&mut head[..n]).map_err(io)?;
        if n < SAMPLES_HEADER || head[5] != 0 {
            // Text, or something too short for samples: small enough to read whole.
            let mut all = head[..n].to_vec();
            r.take(len - n as u64).read_to_end(&mut all).map_err(io)?;
            return DatasetBlob::decode(name, &all);
        }
        let d = header_only(name, &head)?;
        let samples = read_u64(&head, 25).unwrap_or_default();
        let width: u64 = if head[6] == 0 { 1 } else { 4 };
        let expected = d
            .shape
            .numel()
            .checked_mul(width)
            .and_then(|s| s.checked_add(2))
            .and_then(|s| s.checked_mul(samples))
            .and_then(|s| s.checked_add(SAMPLES_HEADER as u64));
        if expected != Some(len) {
            return Err(DataError::Corrupt {
                path,
                offset: 25,
                reason: format!("{samples} samples do not fill a blob of {len} bytes"),
            });
        }
        let mut labels = vec![0u8; 2 * samples as usize];
        r.read_exact(&mut labels).map_err(io)?;
        let labels = labels
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let count = (samples * d.shape.numel()) as usize;
        let values = match d.values {
            Values::U8 { max, .. } => {
                let mut data = vec![0u8; count];
                r.read_exact(&mut data).map_err(io)?;
                Values::U8 { max, data }
            }
            Values::F32(_) => {
                let mut v = Vec::with_capacity(count);
                let mut buf = vec![0u8; 1 << 16];
                while v.len() < count {
                    let take = ((count - v.len()) * 4).min(buf.len());
                    r.read_exact(&mut buf[..take]).map_err(io)?;
                    v.extend(
                        buf[..take]
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    );
                }
                Values::F32(v)
            }
        };
        let d = Dataset {
            labels,
            values,
            test_from: Some(read_u64(&head, 33).unwrap_or_default()).filter(|&t| t != u64::MAX),
            ..d
        };
        d.validate()?;
        Ok(DatasetBlob::Samples(d))
    }
}

/// A labelled-samples header checked alone: the dataset it describes with no samples.
fn header_only(name: &str, head: &[u8; SAMPLES_HEADER]) -> Result<Dataset, DataError> {
    let mut empty = *head;
    empty[25..33].copy_from_slice(&0u64.to_le_bytes());
    empty[33..41].copy_from_slice(&u64::MAX.to_le_bytes());
    match DatasetBlob::decode(name, &empty)? {
        DatasetBlob::Samples(d) => Ok(d),
        DatasetBlob::Text(_) => Err(DataError::Invalid(format!("{name}: not labelled samples"))),
    }
}

/// The sample shape and classes a labelled dataset blob's first bytes declare (`None` for a
/// text corpus or a header that does not check).
pub fn peek(head: &[u8]) -> Option<(Shape, u32)> {
    let head: &[u8; SAMPLES_HEADER] = head.get(..SAMPLES_HEADER)?.try_into().ok()?;
    let d = header_only("dataset", head).ok()?;
    Some((d.shape, d.classes))
}

/// `c×h×w` or the flat length.
pub fn shape_text(shape: &Shape) -> String {
    match shape {
        Shape::Image { c, h, w } => format!("{c}x{h}x{w}"),
        Shape::Flat(n) => n.to_string(),
    }
}

/// Writes a labelled dataset's canonical bytes.
pub fn write_samples(d: &Dataset, w: &mut impl Write) -> io::Result<()> {
    let (kind, max) = match d.values {
        Values::U8 { max, .. } => (0u8, max),
        Values::F32(_) => (1, 0),
    };
    let (shape_kind, dims) = match d.shape {
        Shape::Image { c, h, w } => (0u8, [c, h, w]),
        Shape::Flat(n) => (1, [n, 0, 0]),
    };
    w.write_all(MAGIC)?;
    w.write_all(&[VERSION, 0, kind, max, shape_kind])?;
    for v in dims.into_iter().chain([d.classes]) {
        w.write_all(&v.to_le_bytes())?;
    }
    w.write_all(&(d.len() as u64).to_le_bytes())?;
    w.write_all(&d.test_from.unwrap_or(u64::MAX).to_le_bytes())?;
    let mut buf = Vec::with_capacity(64 * 1024);
    for chunk in d.labels.chunks(16 * 1024) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|l| l.to_le_bytes()));
        w.write_all(&buf)?;
    }
    match &d.values {
        Values::U8 { data, .. } => w.write_all(data)?,
        Values::F32(v) => {
            for chunk in v.chunks(16 * 1024) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
    }
    Ok(())
}

/// Writes a text corpus's canonical bytes.
pub fn write_text(text: &str, w: &mut impl Write) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&[VERSION, 1])?;
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn decode_samples(
    name: &str,
    b: &[u8],
    corrupt: &dyn Fn(usize, String) -> DataError,
) -> Result<Dataset, DataError> {
    if b.len() < SAMPLES_HEADER {
        return Err(corrupt(b.len(), "truncated inside the header".into()));
    }
    let dims = [read_u32(b, 9), read_u32(b, 13), read_u32(b, 17)].map(Option::unwrap_or_default);
    let shape = match b[8] {
        0 => Shape::Image {
            c: dims[0],
            h: dims[1],
            w: dims[2],
        },
        1 if dims[1] == 0 && dims[2] == 0 => Shape::Flat(dims[0]),
        k => {
            return Err(corrupt(
                8,
                format!("unknown shape kind {k} or stray dimensions"),
            ));
        }
    };
    let classes = read_u32(b, 21).unwrap_or_default();
    let samples = read_u64(b, 25).unwrap_or_default();
    let test_from = Some(read_u64(b, 33).unwrap_or_default()).filter(|&t| t != u64::MAX);
    let width: u64 = match b[6] {
        0 => 1,
        1 => 4,
        k => return Err(corrupt(6, format!("unknown value type {k}"))),
    };
    let expected = shape
        .numel()
        .checked_mul(width)
        .and_then(|s| s.checked_add(2))
        .and_then(|s| s.checked_mul(samples))
        .and_then(|s| s.checked_add(SAMPLES_HEADER as u64));
    if expected != Some(b.len() as u64) {
        return Err(corrupt(
            25,
            format!(
                "{samples} samples of shape {} need {} bytes, the blob has {}",
                shape_text(&shape),
                expected.map_or("too many".into(), |e| e.to_string()),
                b.len()
            ),
        ));
    }
    let n = samples as usize;
    let values_at = SAMPLES_HEADER + 2 * n;
    let labels = b[SAMPLES_HEADER..values_at]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let values = match b[6] {
        0 if b[7] == 0 => return Err(corrupt(7, "byte values with a max of 0".into())),
        0 => Values::U8 {
            max: b[7],
            data: b[values_at..].to_vec(),
        },
        _ => Values::F32(
            b[values_at..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
    };
    let d = Dataset {
        name: name.into(),
        shape,
        classes,
        values,
        labels,
        test_from,
    };
    d.validate()?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;

    #[test]
    fn datasets_round_trip_and_the_id_is_the_blobs_hash() {
        let mut d = digits();
        d.test_from = Some(1500);
        let blob = DatasetBlob::Samples(d.clone());
        let bytes = blob.encode();
        assert_eq!(*blake3::hash(&bytes).as_bytes(), d.id());
        assert_eq!(bytes.len(), SAMPLES_HEADER + 1797 * (2 + 64));
        let back = DatasetBlob::decode("digits-8x8", &bytes).expect("decodes");
        assert_eq!(back, blob);
        let f = Dataset {
            values: Values::F32(vec![0.5, -1.0, 3.25, 1e-3]),
            ..Dataset::of_bytes("f", Shape::Flat(2), 3, 1, vec![0; 4], vec![2, 0]).expect("ok")
        };
        let bytes = DatasetBlob::Samples(f.clone()).encode();
        assert_eq!(
            DatasetBlob::decode("f", &bytes).expect("f32"),
            DatasetBlob::Samples(f)
        );
        let t = TextCorpus::from_text(Path::new("t"), "to be, or not".as_bytes()).expect("text");
        let bytes = DatasetBlob::Text(t.clone()).encode();
        assert_eq!(*blake3::hash(&bytes).as_bytes(), t.id());
        assert_eq!(
            DatasetBlob::decode("t", &bytes).expect("text"),
            DatasetBlob::Text(t)
        );
    }

    #[test]
    fn reading_from_a_stream_gives_what_decoding_gives() {
        let mut d = digits();
        d.test_from = Some(17);
        let f = Dataset {
            values: Values::F32((0..6).map(|i| i as f32 / 3.0).collect()),
            ..Dataset::of_bytes("f", Shape::Flat(3), 2, 1, vec![0; 6], vec![1, 0]).expect("ok")
        };
        let t = TextCorpus::from_text(Path::new("t"), b"abcab").expect("text");
        for blob in [
            DatasetBlob::Samples(d),
            DatasetBlob::Samples(f),
            DatasetBlob::Text(t),
        ] {
            let bytes = blob.encode();
            let name = match &blob {
                DatasetBlob::Samples(d) => d.name.clone(),
                DatasetBlob::Text(_) => "t".into(),
            };
            let read = DatasetBlob::read_from(&name, &bytes[..], bytes.len() as u64);
            assert_eq!(read.expect("reads"), blob);
        }
        let bytes = DatasetBlob::Samples(digits()).encode();
        assert_eq!(peek(&bytes), Some((Shape::Image { c: 1, h: 8, w: 8 }, 10)));
        assert_eq!(peek(&bytes[..SAMPLES_HEADER - 1]), None);
        let short = bytes.len() as u64 - 1;
        let e = DatasetBlob::read_from("d", &bytes[..], short).expect_err("a length that lies");
        assert!(e.to_string().contains("do not fill"), "{e}");
        let mut huge = bytes[..SAMPLES_HEADER].to_vec();
        huge[25..33].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = DatasetBlob::read_from("d", &huge[..], 1 << 40).expect_err("no allocation");
        assert!(e.to_string().contains("do not fill"), "{e}");
    }

    #[test]
    fn broken_blobs_name_the_offset_and_allocate_nothing_big() {
        let bytes = DatasetBlob::Samples(digits()).encode();
        let e = DatasetBlob::decode("d", &bytes[..bytes.len() - 1]).expect_err("short");
        assert!(e.to_string().contains("d at offset 25"), "{e}");
        let mut huge = bytes[..SAMPLES_HEADER].to_vec();
        huge[25..33].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = DatasetBlob::decode("d", &huge).expect_err("claims 2^64 samples");
        assert!(e.to_string().contains("too many"), "{e}");
        let mut bad_label = bytes.clone();
        bad_label[SAMPLES_HEADER] = 10;
        let e = DatasetBlob::decode("d", &bad_label).expect_err("label 10 of 10 classes");
        assert!(e.to_string().contains("label 10"), "{e}");
        let mut other = bytes.clone();
        other[4] = 2;
        assert!(DatasetBlob::decode("d", &other).is_err(), "version 2");
        assert!(DatasetBlob::decode("d", b"PK\x03\x04").is_err(), "not ours");
        let mut text =
            DatasetBlob::Text(TextCorpus::from_text(Path::new("t"), b"abc").expect("text"))
                .encode();
        text.push(b'd');
        assert!(
            DatasetBlob::decode("t", &text).is_err(),
            "a length that lies"
        );
    }
}
