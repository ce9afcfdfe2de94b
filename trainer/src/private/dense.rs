//! DP-SGD's clipped gradient sum for a chain of dense layers without a backward pass per
//! record (the "ghost clipping" idea, Goodfellow 2015; Lee and Kifer 2021): a dense layer's
//! per-record weight gradient is the outer product `a_i ⊗ δ_i` of its input and the gradient
//! at its output, so its squared norm is `‖a_i‖² ‖δ_i‖²` (plus `‖δ_i‖²` for the bias), and
//! the sum of the clipped per-record gradients is one product `Aᵀ (c ⊙ Δ)` with `c_i` each
//! record's clipping factor. One forward and one backward pass over the batch, by hand, give
//! every record's norm and the clipped sum: the same mathematics as clipping each record's
//! own gradient, at the cost of one batch step.
//!
//! The loss is the cross-entropy of the logits (as [`crate::train::cross_entropy`] for one
//! record), so the gradient at the logits is `softmax(z) − onehot(y)`; a ReLU passes the
//! gradient where its input was positive. Computed in `f32` with `f64` norms and sums, in a
//! fixed order: the same bits on every CPU.

use crate::data::Dataset;
use crate::model::DenseLayer;

/// `out[i][j] = Σ_k a[i][k] w[k][j] + b[j]` for `rows` rows (`a` is `rows × n_in`, `w` is
/// `n_in × n_out`, both row-major); zero inputs are skipped (images are sparse).
fn affine(a: &[f32], w: &[f32], b: &[f32], rows: usize, l: &DenseLayer) -> Vec<f32> {
    let (n_in, n_out) = (l.inputs, l.outputs);
    let mut out = vec![0.0f32; rows * n_out];
    for i in 0..rows {
        let o = &mut out[i * n_out..(i + 1) * n_out];
        o.copy_from_slice(b);
        for (k, &x) in a[i * n_in..(i + 1) * n_in].iter().enumerate() {
            if x != 0.0 {
                for (oj, wj) in o.iter_mut().zip(&w[k * n_out..(k + 1) * n_out]) {
                    *oj += x * wj;
                }
            }
        }
    }
    out
}

/// Each record's loss and the gradient at the logits, `softmax(z) − onehot(y)`, in place.
fn logit_gradient(z: &mut [f32], labels: &[usize], classes: usize) -> Vec<f64> {
    let mut losses = Vec::with_capacity(labels.len());
    for (row, y) in z.chunks_exact_mut(classes).zip(labels) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|v| f64::from(v - m).exp()).sum();
        let log_sum = sum.ln() + f64::from(m);
        losses.push(log_sum - f64::from(row[*y]));
        for v in row.iter_mut() {
            *v = (f64::from(*v) - log_sum).exp() as f32;
        }
        row[*y] -= 1.0;
    }
    losses
}

/// The sum over `batch` of each record's gradient clipped to norm `clip` (per parameter, in
/// the model's visiting order: weight then bias, layer by layer), and the sum of the records'
/// losses. `params` are the model's parameters in that order.
pub(super) fn clipped_sum(
    layers: &[DenseLayer],
    params: &[Vec<f32>],
    data: &Dataset,
    batch: &[u32],
    clip: f32,
) -> (Vec<Vec<f64>>, f64) {
    let rows = batch.len();
    let classes = data.classes as usize;
    // Forward: every layer's input (after its ReLU).
    let mut inputs: Vec<Vec<f32>> = vec![data.inputs(batch)];
    let mut z = Vec::new();
    for (k, l) in layers.iter().enumerate() {
        z = affine(&inputs[k], &params[2 * k], &params[2 * k + 1], rows, l);
        if l.relu {
            z.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        if k + 1 < layers.len() {
            inputs.push(std::mem::take(&mut z));
        }
    }
    let labels: Vec<usize> = batch
        .iter()
        .map(|i| usize::from(data.labels[*i as usize]))
        .collect();
    let losses = logit_gradient(&mut z, &labels, classes);
    // Backward: each layer's output gradient δ, and each record's squared norm.
    let mut deltas: Vec<Vec<f32>> = vec![Vec::new(); layers.len()];
    let mut sq = vec![0.0f64; rows];
    let mut delta = z;
    for (k, l) in layers.iter().enumerate().rev() {
        let (n_in, n_out) = (l.inputs, l.outputs);
        for i in 0..rows {
            let d2: f64 = delta[i * n_out..(i + 1) * n_out]
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum();
            let a2: f64 = inputs[k][i * n_in..(i + 1) * n_in]
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum();
            sq[i] += d2 * (a2 + 1.0);
        }
        if k > 0 {
            let w = &params[2 * k];
            let mut below = vec![0.0f32; rows * n_in];
            for i in 0..rows {
                let d = &delta[i * n_out..(i + 1) * n_out];
                for (kk, slot) in below[i * n_in..(i + 1) * n_in].iter_mut().enumerate() {
                    // After a ReLU, no gradient where its input was not positive.
                    if !layers[k - 1].relu || inputs[k][i * n_in + kk] > 0.0 {
                        *slot = d
                            .iter()
                            .zip(&w[kk * n_out..(kk + 1) * n_out])
                            .map(|(a, b)| a * b)
                            .sum();
                    }
                }
            }
            deltas[k] = std::mem::replace(&mut delta, below);
        } else {
            deltas[k] = std::mem::take(&mut delta);
        }
    }
    let scale: Vec<f64> = sq
        .iter()
        .map(|s| (f64::from(clip) / s.sqrt().max(1e-12)).min(1.0))
        .collect();
    // The clipped sums: Σ_i c_i a_i ⊗ δ_i and Σ_i c_i δ_i, layer by layer.
    let mut out = Vec::with_capacity(2 * layers.len());
    for (k, l) in layers.iter().enumerate() {
        let (n_in, n_out) = (l.inputs, l.outputs);
        let mut gw = vec![0.0f64; n_in * n_out];
        let mut gb = vec![0.0f64; n_out];
        for (i, c) in scale.iter().enumerate() {
            let d: Vec<f64> = deltas[k][i * n_out..(i + 1) * n_out]
                .iter()
                .map(|v| f64::from(*v) * c)
                .collect();
            gb.iter_mut().zip(&d).for_each(|(g, v)| *g += v);
            for (kk, &x) in inputs[k][i * n_in..(i + 1) * n_in].iter().enumerate() {
                if x != 0.0 {
                    let x = f64::from(x);
                    for (g, v) in gw[kk * n_out..(kk + 1) * n_out].iter_mut().zip(&d) {
                        *g += x * v;
                    }
                }
            }
        }
        out.push(gw);
        out.push(gb);
    }
    (out, losses.iter().sum())
}
