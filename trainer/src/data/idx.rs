//! MNIST-style IDX files (`ubyte` element type, gzip or raw): one images file and one labels
//! file per part, and MNIST's four-file folder with its official test part.

use std::path::{Path, PathBuf};

use hivemesh_evolve::arch::Shape;

use super::{Dataset, MAX_FILE_BYTES, Values, read_maybe_gz};
use crate::error::DataError;

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
    let labels = labels_v.into_iter().map(u16::from).collect();
    Dataset::of_bytes(name, shape, classes.max(2), max, pixels, labels)
}

/// MNIST from a folder holding the four standard files (`.gz` or raw): the 60,000 training
/// samples followed by the 10,000 test samples, which are its official test part.
pub fn load_mnist(dir: &Path) -> Result<Dataset, DataError> {
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
    let test_from = train.len() as u64;
    let mut all = train;
    all.classes = all.classes.max(test.classes);
    if let (
        Values::U8 { max, data },
        Values::U8 {
            max: tmax,
            data: tdata,
        },
    ) = (&mut all.values, test.values)
    {
        *max = (*max).max(tmax);
        data.extend_from_slice(&tdata);
    }
    all.labels.extend_from_slice(&test.labels);
    all.test_from = Some(test_from);
    all.validate()?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_idx_pair_loads_with_its_shape_and_classes() {
        let dir = std::env::temp_dir().join(format!("hm-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let (images, labels) = (dir.join("i.idx"), dir.join("l.idx"));
        std::fs::write(
            &images,
            idx_bytes(&[3, 2, 2], &[0, 9, 0, 9, 1, 1, 1, 1, 5, 0, 0, 0]),
        )
        .expect("write");
        std::fs::write(&labels, idx_bytes(&[3], &[0, 4, 2])).expect("write");
        let d = load_idx(&images, &labels, "tiny").expect("loads");
        assert_eq!((d.len(), d.classes), (3, 5));
        assert_eq!(d.shape, Shape::Image { c: 1, h: 2, w: 2 });
        assert_eq!(
            d.values,
            Values::U8 {
                max: 9,
                data: vec![0, 9, 0, 9, 1, 1, 1, 1, 5, 0, 0, 0]
            }
        );
        std::fs::write(&labels, idx_bytes(&[2], &[0, 4])).expect("write");
        let e = load_idx(&images, &labels, "tiny").expect_err("2 labels for 3 images");
        assert!(e.to_string().contains("l.idx"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
