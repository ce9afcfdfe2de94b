//! Distillation on the embedded digits: a teacher labels shards, the blobs are reproducible
//! and well-formed, and a student learns from them.

use crate::common;

use common::{budget, digits_mlp};
use hivemesh_trainer::distill::{KdConfig, ShardLabels, StudentJob, label_shard, run_student};
use hivemesh_trainer::train::{Limits, NasJob, run_nas};
use hivemesh_trainer::{Cpu, CpuAutodiff};

#[test]
fn a_teacher_labels_shards_reproducibly_and_a_student_learns_from_them() {
    let data = hivemesh_trainer::data::digits();
    let splits = data.default_splits();
    let arch = digits_mlp(&[32, 64], &[2]);
    let teacher = run_nas::<CpuAutodiff>(
        &NasJob {
            arch: &arch,
            data: &data,
            splits: &splits,
            budget: &budget(6),
            seed: 9,
        },
        &Limits::default(),
        &Default::default(),
        &mut |_| {},
    )
    .expect("teacher trains");
    assert!(teacher.accuracy() > 0.9, "teacher {}", teacher.accuracy());
    let d = Default::default();
    let n = data.len() as u64;
    let shards: Vec<ShardLabels> = [0..900, 900..n]
        .into_iter()
        .map(|r| label_shard::<Cpu>(&teacher.weights, &data, r, 3, &d).expect("labels"))
        .collect();
    // Reproducible bytes, and a blob that round-trips.
    let again = label_shard::<Cpu>(&teacher.weights, &data, 0..900, 3, &d).expect("labels");
    assert_eq!(again.id(), shards[0].id());
    assert_eq!(again.fingerprint(), shards[0].fingerprint());
    let bytes = shards[1].to_bytes();
    assert_eq!(bytes.len(), 24 + (n as usize - 900) * 3 * 3);
    assert_eq!(ShardLabels::from_bytes(&bytes).expect("parses"), shards[1]);
    assert!(ShardLabels::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    // Sorted, at most one in total, and the top-1 mostly right.
    let mut top1_right = 0;
    for i in 0..n {
        let rec = shards.iter().find_map(|s| s.record(i)).expect("covered");
        assert!(rec.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(rec.iter().map(|e| u32::from(e.1)).sum::<u32>() <= 65535 + 2);
        top1_right += u32::from(u16::from(rec[0].0) == data.labels[i as usize]);
    }
    assert!(f64::from(top1_right) / n as f64 > 0.9);
    // A range outside the dataset is an error.
    assert!(label_shard::<Cpu>(&teacher.weights, &data, n - 5..n + 5, 3, &d).is_err());

    // A small student learns from the soft labels.
    let student = digits_mlp(&[32, 64], &[1]);
    let s = run_student::<CpuAutodiff>(
        &StudentJob {
            arch: &student,
            data: &data,
            splits: &splits,
            labels: &shards,
            kd: KdConfig {
                temperature: 2.0,
                alpha: 0.5,
            },
            budget: &budget(6),
            seed: 1,
        },
        &Limits::default(),
        &d,
        &mut |_| {},
    )
    .expect("student trains");
    assert!(s.accuracy() > 0.8, "student {}", s.accuracy());
    // Missing labels for training samples are refused.
    let partial = [shards[0].clone()];
    let err = run_student::<CpuAutodiff>(
        &StudentJob {
            arch: &student,
            data: &data,
            splits: &splits,
            labels: &partial,
            kd: KdConfig {
                temperature: 2.0,
                alpha: 0.5,
            },
            budget: &budget(1),
            seed: 1,
        },
        &Limits::default(),
        &d,
        &mut |_| {},
    )
    .expect_err("unlabelled samples");
    assert!(err.to_string().contains("no soft label"), "{err}");
}
