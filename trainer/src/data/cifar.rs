//! CIFAR-10's binary batches: records of one label byte (0 to 9) and 3,072 pixel bytes
//! (3×32×32, channel-major: the red plane, then green, then blue).
//!
//! A folder is read as the official distribution (`cifar-10-batches-bin`): `data_batch_1.bin`
//! to `data_batch_5.bin` (those present, at least one), then `test_batch.bin` if present, which
//! becomes the official test part. A single batch file is read alone. Batches may be gzipped.

use std::path::{Path, PathBuf};

use hivemesh_evolve::arch::Shape;

use super::{Dataset, Values, read_maybe_gz};
use crate::error::DataError;

/// Bytes per record: the label and 3×32×32 pixels.
pub const RECORD_BYTES: usize = 1 + PIXELS;
/// Pixel bytes per record.
const PIXELS: usize = 3 * 32 * 32;
/// Number of CIFAR-10 classes.
const CLASSES: u8 = 10;
/// The training batches, in order.
const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch.
const TEST_BATCH: &str = "test_batch.bin";

/// CIFAR-10 from its binary distribution folder or from one batch file (see the module doc).
pub fn load_cifar10(dir_or_file: &Path) -> Result<Dataset, DataError> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let test_from = if dir_or_file.is_dir() {
        let train: Vec<PathBuf> = TRAIN_BATCHES
            .iter()
            .map(|f| dir_or_file.join(f))
            .filter(|p| p.is_file())
            .collect();
        if train.is_empty() {
            return Err(DataError::Io {
                path: dir_or_file.join(TRAIN_BATCHES[0]),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no CIFAR-10 data batch in the folder (data_batch_1.bin to data_batch_5.bin)",
                ),
            });
        }
        for path in &train {
            read_batch(path, &mut data, &mut labels)?;
        }
        let test = dir_or_file.join(TEST_BATCH);
        let train_len = labels.len() as u64;
        if test.is_file() {
            read_batch(&test, &mut data, &mut labels)?;
            Some(train_len)
        } else {
            None
        }
    } else {
        read_batch(dir_or_file, &mut data, &mut labels)?;
        None
    };
    let d = Dataset {
        name: "cifar10".into(),
        shape: Shape::Image { c: 3, h: 32, w: 32 },
        classes: u32::from(CLASSES),
        values: Values::U8 { max: 255, data },
        labels,
        test_from,
    };
    d.validate()?;
    Ok(d)
}

/// Appends one batch file's records, checking its length and every label first.
fn read_batch(path: &Path, data: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<(), DataError> {
    let bytes = read_maybe_gz(path)?;
    let corrupt = |offset: usize, reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let partial = bytes.len() % RECORD_BYTES;
    if partial != 0 {
        let hint = match bytes.len() % (RECORD_BYTES + 1) {
            0 => " (CIFAR-100's 3,074-byte records are not supported)",
            _ => "",
        };
        let reason = format!(
            "{} bytes are not whole {RECORD_BYTES}-byte records: the last record has only \
             {partial} bytes{hint}",
            bytes.len()
        );
        return Err(corrupt(bytes.len() - partial, reason));
    }
    if bytes.is_empty() {
        return Err(corrupt(0, "no records".into()));
    }
    let records = bytes.chunks_exact(RECORD_BYTES);
    if let Some((k, r)) = records.clone().enumerate().find(|(_, r)| r[0] >= CLASSES) {
        let reason = format!("record {k} has label {} (CIFAR-10 labels are 0 to 9)", r[0]);
        return Err(corrupt(k * RECORD_BYTES, reason));
    }
    data.reserve(records.len() * PIXELS);
    labels.reserve(records.len());
    for r in records {
        labels.push(u16::from(r[0]));
        data.extend_from_slice(&r[1..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of records with the given labels; record `k`'s pixels are all `k * 10`, except
    /// that its green plane is `k * 10 + 1`.
    fn batch(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, &l) in labels.iter().enumerate() {
            let v = k as u8 * 10;
            b.push(l);
            b.extend(std::iter::repeat_n(v, 1024));
            b.extend(std::iter::repeat_n(v + 1, 1024));
            b.extend(std::iter::repeat_n(v, 1024));
        }
        b
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hm-cifar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        dir
    }

    #[test]
    fn a_single_batch_file_loads_channel_major() {
        let dir = tmp("file");
        let path = dir.join("data_batch_1.bin");
        std::fs::write(&path, batch(&[3, 9, 0])).expect("write");
        let d = load_cifar10(&path).expect("loads");
        assert_eq!((d.len(), d.classes, d.test_from), (3, 10, None));
        assert_eq!(d.shape, Shape::Image { c: 3, h: 32, w: 32 });
        assert_eq!(d.labels, vec![3, 9, 0]);
        let Values::U8 { max, data } = &d.values else {
            panic!("bytes expected")
        };
        assert_eq!(*max, 255);
        let second = &data[PIXELS..2 * PIXELS];
        assert_eq!((second[0], second[1024], second[2048]), (10, 11, 10));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_folder_reads_the_data_batches_then_the_test_batch() {
        let dir = tmp("dir");
        std::fs::write(dir.join("data_batch_1.bin"), batch(&[0, 1])).expect("write");
        std::fs::write(dir.join("data_batch_3.bin"), batch(&[2])).expect("write");
        std::fs::write(dir.join("readme.html"), b"ignored").expect("write");
        let d = load_cifar10(&dir).expect("train only");
        assert_eq!((d.labels.clone(), d.test_from), (vec![0, 1, 2], None));
        std::fs::write(dir.join("test_batch.bin"), batch(&[7, 8])).expect("write");
        let d = load_cifar10(&dir).expect("with test");
        assert_eq!((d.labels, d.test_from), (vec![0, 1, 2, 7, 8], Some(3)));
        std::fs::remove_file(dir.join("data_batch_1.bin")).expect("rm");
        std::fs::remove_file(dir.join("data_batch_3.bin")).expect("rm");
        let msg = load_cifar10(&dir).expect_err("no data batch").to_string();
        assert!(msg.contains("no CIFAR-10 data batch"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn partial_records_and_bad_labels_name_file_and_offset() {
        let dir = tmp("bad");
        let path = dir.join("b.bin");
        let mut b = batch(&[1, 2]);
        b.truncate(b.len() - 100);
        std::fs::write(&path, &b).expect("write");
        let msg = load_cifar10(&path).expect_err("partial").to_string();
        assert!(
            msg.contains("b.bin at offset 3073") && msg.contains("only 2973 bytes"),
            "{msg}"
        );
        std::fs::write(&path, batch(&[1, 2, 10])).expect("write");
        let msg = load_cifar10(&path).expect_err("label 10").to_string();
        assert!(
            msg.contains("b.bin at offset 6146: record 2 has label 10"),
            "{msg}"
        );
        std::fs::write(&path, vec![0u8; 2 * 3074]).expect("write");
        let msg = load_cifar10(&path).expect_err("cifar-100").to_string();
        assert!(msg.contains("CIFAR-100"), "{msg}");
        std::fs::write(&path, b"").expect("write");
        assert!(
            load_cifar10(&path)
                .expect_err("empty")
                .to_string()
                .contains("no records")
        );
        assert!(load_cifar10(&dir.join("absent.bin")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
