use super::*;
use crate::data::digits;
use crate::model::WeightsFile;
use crate::rounds::initial_weights;
use crate::train::{OptimizerKind, Schedule, evaluate};
use crate::{Cpu, CpuAutodiff};
use burn::module::AutodiffModule;
use hivemesh_evolve::arch::Activation;

type B = CpuAutodiff;

fn weights(hidden: u32) -> WeightsFile {
    let d = digits();
    initial_weights(&crate::zoo::mlp(d.shape, hidden, d.classes), [4; 32]).expect("weights")
}

fn model(w: &WeightsFile) -> Model<B> {
    Model::<B>::from_weights(w, &Default::default()).expect("a model")
}

fn norm(v: &[Vec<f32>]) -> f64 {
    v.iter()
        .flatten()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

fn dp(clip: f32, noise_multiplier: f32) -> DpSgd {
    DpSgd {
        clip,
        noise_multiplier,
        sample_rate: 1.0,
        steps: 1,
        secret: [9; 32],
    }
}

/// Without clipping or noise, the sum of the per-record gradients over the batch size is the
/// ordinary gradient of the batch's mean loss, by one backward pass per record and by the
/// dense chain's one pass alike.
#[test]
fn unclipped_and_noiseless_it_is_the_batch_gradient() {
    let data = digits();
    let m = model(&weights(16));
    let chain = m.dense_chain().expect("an MLP is a dense chain");
    assert_eq!(chain.len(), 2);
    for path in [None, Some(chain.as_slice())] {
        unclipped_is_the_batch_gradient(&m, path, &data);
    }
}

fn unclipped_is_the_batch_gradient(m: &Model<B>, chain: Option<&[DenseLayer]>, data: &Dataset) {
    let batch: Vec<u32> = (0..32).collect();
    let mut rng = ChaCha8Rng::from_seed([0; 32]);
    let (ours, loss) = private_gradient(
        m,
        chain,
        data,
        &batch,
        &dp(1e9, 0.0),
        32.0,
        &mut rng,
        &Default::default(),
    );
    let x = input_batch::<B>(data, &batch, &Default::default());
    let y = one_hot::<B>(
        &data.targets(&batch),
        data.classes as usize,
        &Default::default(),
    );
    let l = cross_entropy(m.forward(x), y);
    let mean: f32 = l.clone().into_scalar().elem();
    let grads = GradientsParams::from_grads(l.backward(), m);
    let mut g = Gather::<B> {
        grads: &grads,
        out: Vec::new(),
        _b: std::marker::PhantomData,
    };
    m.visit(&mut g);
    assert_eq!(ours.len(), g.out.len());
    assert!((loss - mean).abs() < 1e-5, "{loss} vs {mean}");
    for (a, b) in ours.iter().flatten().zip(g.out.iter().flatten()) {
        assert!((a - b).abs() < 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
    }
    assert!(norm(&ours) > 0.0);
}

/// Each record adds at most `C` to the sum; one record whose gradient is larger adds exactly
/// `C`; the dense chain's clipped sum is the per-record one.
#[test]
fn each_record_counts_for_at_most_the_clipping_norm() {
    let data = digits();
    let m = model(&weights(16));
    let chain = m.dense_chain().expect("a dense chain");
    let mut rng = ChaCha8Rng::from_seed([0; 32]);
    let clip = 1e-3;
    let (one, _) = private_gradient(
        &m,
        Some(&chain),
        &data,
        &[5],
        &dp(clip, 0.0),
        1.0,
        &mut rng,
        &Default::default(),
    );
    assert!(
        (norm(&one) - f64::from(clip)).abs() < 1e-6,
        "{}",
        norm(&one)
    );
    let batch: Vec<u32> = (0..50).collect();
    let mut sums = Vec::new();
    for path in [None, Some(chain.as_slice())] {
        let (sum, _) = private_gradient(
            &m,
            path,
            &data,
            &batch,
            &dp(clip, 0.0),
            1.0,
            &mut rng,
            &Default::default(),
        );
        assert!(norm(&sum) <= 50.0 * f64::from(clip) * (1.0 + 1e-5));
        sums.push(sum);
    }
    for (a, b) in sums[0].iter().flatten().zip(sums[1].iter().flatten()) {
        assert!((a - b).abs() <= 1e-7 + 1e-4 * a.abs(), "{a} vs {b}");
    }
}

/// An empty step is noise alone, of standard deviation `σC / (qN)` per value.
#[test]
fn the_noise_has_the_stated_deviation() {
    let data = digits();
    let m = model(&weights(64));
    let mut rng = ChaCha8Rng::from_seed([1; 32]);
    let (g, loss) = private_gradient(
        &m,
        m.dense_chain().as_deref(),
        &data,
        &[],
        &dp(0.5, 2.0),
        4.0,
        &mut rng,
        &Default::default(),
    );
    assert!(loss.is_nan());
    let values: Vec<f64> = g.iter().flatten().map(|v| f64::from(*v)).collect();
    let n = values.len() as f64;
    assert!(n > 4000.0);
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    // σC / expected = 2 × 0.5 / 4.
    assert!((std - 0.25).abs() < 0.0125, "{std}");
    assert!(mean.abs() < 0.02, "{mean}");
}

fn budget() -> Budget {
    Budget {
        epochs: 1,
        max_steps: None,
        batch_size: 64,
        learning_rate: 0.01,
        optimizer: OptimizerKind::Adam,
        schedule: Schedule::Constant,
    }
}

/// DP-SGD at σ = 1 still learns the digits, and the same seed gives the same weights.
#[test]
fn dp_sgd_learns_and_is_reproducible() {
    let data = digits();
    let splits = data.splits(0.2);
    let w = weights(32);
    let dp = |seed: u8| DpSgd {
        clip: 1.0,
        noise_multiplier: 1.0,
        sample_rate: 64.0 / splits.train.len() as f64,
        steps: 150,
        secret: [seed; 32],
    };
    let b = budget();
    let train = |seed| {
        let dp = dp(seed);
        let plan = PrivatePlan {
            data: &data,
            train: &splits.train,
            dp: &dp,
            budget: &b,
            stop: &Stop::default(),
        };
        let (m, stats) =
            fit_private(model(&w), &plan, &Default::default(), &mut |_| {}).expect("trains");
        assert_eq!(stats.steps, 150);
        m.valid().weights_file(&w.arch)
    };
    let a = train(1);
    assert_eq!(a, train(1), "bit-exact");
    assert_ne!(a, train(2));
    let m = Model::<Cpu>::from_weights(&a, &Default::default()).expect("model");
    let (correct, total) = evaluate(&m, &data, &splits.test, 500, &Default::default());
    assert!(correct * 10 > total * 8, "{correct}/{total}");
}

#[test]
fn batch_norm_and_bad_settings_are_refused_with_the_reason() {
    let d = digits();
    let bn = crate::zoo::chain(
        d.shape,
        d.classes,
        &[
            Op::Flatten,
            Op::Dense { out: 8 },
            Op::BatchNorm,
            Op::Act(Activation::Relu),
            Op::Dense { out: d.classes },
        ],
    );
    let e = check_private(&bn).expect_err("refused");
    assert!(e.to_string().contains("batch norm"), "{e}");
    assert!(check_private(&crate::zoo::mlp(d.shape, 8, d.classes)).is_ok());
    assert!(dp(0.0, 1.0).validate().is_err());
    assert!(dp(1.0, -1.0).validate().is_err());
    assert!(
        DpSgd {
            sample_rate: 0.0,
            ..dp(1.0, 1.0)
        }
        .validate()
        .is_err()
    );
}

/// A client's update is clipped to `C` and noised reproducibly.
#[test]
fn a_clients_update_is_clipped_then_noised() {
    let w = weights(8);
    let mut after = w.clone();
    for t in &mut after.tensors {
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + 0.5).to_le_bytes())
            .collect();
    }
    let u = Update::between(&w, &after);
    let mut clipped = u.clone();
    let before = clip_and_noise(&mut clipped, 1.0, 0.0, [0; 32]);
    assert!(before > 1.0);
    assert!((clipped.norm() - 1.0).abs() < 1e-5);
    assert!((u.norm() - before).abs() < 1e-9, "the norm before clipping");
    let (mut a, mut b) = (u.clone(), u.clone());
    clip_and_noise(&mut a, 1.0, 0.1, [3; 32]);
    clip_and_noise(&mut b, 1.0, 0.1, [3; 32]);
    assert_eq!(a, b);
    assert_ne!(a, clipped);
}

/// Only a chain of dense layers with ReLUs takes the one-pass path: a convolutional network
/// and a tanh do not.
#[test]
fn only_dense_relu_chains_are_dense_chains() {
    let d = digits();
    let cnn = crate::zoo::small_cnn(d.shape, d.classes);
    let w = initial_weights(&cnn, [1; 32]).expect("weights");
    assert!(model(&w).dense_chain().is_none());
    let mut tanh = crate::zoo::mlp(d.shape, 16, d.classes);
    for n in &mut tanh.nodes {
        if n.op == hivemesh_evolve::arch::Op::Act(Activation::Relu) {
            n.op = hivemesh_evolve::arch::Op::Act(Activation::Tanh);
        }
    }
    let w = initial_weights(&tanh, [1; 32]).expect("weights");
    assert!(model(&w).dense_chain().is_none());
    let layers = model(&weights(16)).dense_chain().expect("an MLP");
    assert_eq!(
        layers
            .iter()
            .map(|l| (l.inputs, l.outputs, l.relu))
            .collect::<Vec<_>>(),
        vec![(64, 16, true), (16, 10, false)]
    );
}
