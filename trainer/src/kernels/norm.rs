//! Batch normalisation in training mode (the batch's own statistics), with an optionally fused
//! ReLU, forward and backward, over `x` `[b, c, hw]` (an image batch, or a flat one with
//! `hw = 1`). burn's batch norm is a dozen separate single-threaded passes (a transposing
//! copy for each statistic, then subtract, divide, multiply, add, and as many again backward);
//! here the statistics take two passes per channel, the output one, the backward pass two.
//!
//! Determinism: every per-channel sum runs over the samples in order, each sample's plane in
//! 16 lanes combined in a fixed order, by one task per channel; every output element is
//! written by exactly one task. The ReLU's mask is recomputed in the backward pass from the
//! saved input with the same [`affine`] expression, so it has the forward pass's bits without
//! keeping the output.

use rayon::prelude::*;

use super::sum_lanes;

/// Sizes of one batch norm: `b` samples of `c` channels of `hw` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NormDims {
    /// Samples.
    pub(crate) b: usize,
    /// Channels.
    pub(crate) c: usize,
    /// Values per channel and sample (`h·w`, or 1 for a flat batch).
    pub(crate) hw: usize,
}

impl NormDims {
    /// Values per channel over the batch.
    fn count(&self) -> f32 {
        (self.b * self.hw) as f32
    }

    /// Channel `ci`'s plane of every sample, in sample order.
    fn planes<'a>(&self, v: &'a [f32], ci: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, hw) = (self.c, self.hw);
        v.chunks(c * hw).map(move |s| &s[ci * hw..][..hw])
    }
}

/// A batch's statistics and the affine map they give, per channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormStats {
    /// The mean.
    pub(crate) mean: Vec<f32>,
    /// The biased variance (divided by the count, as burn's and PyTorch's normalisation).
    pub(crate) var: Vec<f32>,
    /// `1 / sqrt(var + epsilon)`.
    pub(crate) inv_std: Vec<f32>,
    /// `gamma · inv_std`: the output is `x · scale + shift`.
    pub(crate) scale: Vec<f32>,
    /// `beta − mean · scale`.
    pub(crate) shift: Vec<f32>,
}

/// The normalised, scaled and shifted value: the one expression forward and backward share.
#[inline(always)]
fn affine(x: f32, scale: f32, shift: f32) -> f32 {
    x * scale + shift
}

/// A sum of `f` over the pairs of `a` and `b` in 16 interleaved lanes combined in a fixed
/// order, as [`sum_lanes`].
#[inline(always)]
fn lanes2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((l, x), y) in acc.iter_mut().zip(x).zip(y) {
            *l += f(*x, *y);
        }
    }
    for ((l, x), y) in acc.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *l += f(*x, *y);
    }
    acc.iter().sum()
}

/// The batch statistics of `x` and the affine map for `gamma`, `beta`, `epsilon`.
pub(crate) fn norm_stats(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    d: &NormDims,
) -> NormStats {
    let n = d.count();
    let per: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ci| {
            let sum: f32 = d.planes(x, ci).map(sum_lanes).sum();
            let mean = sum / n;
            let sq: f32 = d
                .planes(x, ci)
                .map(|p| lanes2(p, p, |v, _| (v - mean) * (v - mean)))
                .sum();
            (mean, sq / n)
        })
        .collect();
    let mean: Vec<f32> = per.iter().map(|p| p.0).collect();
    let var: Vec<f32> = per.iter().map(|p| p.1).collect();
    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    NormStats {
        mean,
        var,
        inv_std,
        scale,
        shift,
    }
}

/// The output `x · scale + shift` per channel, then ReLU when `relu`.
pub(crate) fn norm_forward(x: &[f32], s: &NormStats, d: &NormDims, relu: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d.c * d.hw)
        .zip(x.par_chunks(d.c * d.hw))
        .for_each(|(ys, xs)| {
            for (ci, (yp, xp)) in ys.chunks_mut(d.hw).zip(xs.chunks(d.hw)).enumerate() {
                let (sc, sh) = (s.scale[ci], s.shift[ci]);
                for (y, x) in yp.iter_mut().zip(xp) {
                    let v = affine(*x, sc, sh);
                    *y = if relu && v <= 0.0 { 0.0 } else { v };
                }
            }
        });
    y
}

/// The output gradient with the fused ReLU's mask applied: zero where the output was `<= 0`.
#[inline(always)]
fn masked(g: f32, x: f32, sc: f32, sh: f32, relu: bool) -> f32 {
    if relu && affine(x, sc, sh) <= 0.0 {
        0.0
    } else {
        g
    }
}

/// Gradients of [`norm_forward`] given the output gradient `gy`: `(gx, ggamma, gbeta)`, `gx`
/// empty unless `want_x`. With `ĝ` the masked `gy`, `x̂ = (x − mean) · inv_std` and `n` the
/// count: `gbeta = Σ ĝ`, `ggamma = Σ ĝ·x̂`, `gx = scale / n · (n·ĝ − gbeta − x̂ · ggamma)`
/// (the exact gradient through the batch's mean and variance).
pub(crate) fn norm_backward(
    x: &[f32],
    gy: &[f32],
    s: &NormStats,
    d: &NormDims,
    relu: bool,
    want_x: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let sums: Vec<(f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|ci| {
            let (sc, sh, m, is) = (s.scale[ci], s.shift[ci], s.mean[ci], s.inv_std[ci]);
            let mut gb = 0f32;
            let mut gg = 0f32;
            for (xp, gp) in d.planes(x, ci).zip(d.planes(gy, ci)) {
                gb += lanes2(xp, gp, |x, g| masked(g, x, sc, sh, relu));
                gg += lanes2(xp, gp, |x, g| masked(g, x, sc, sh, relu) * ((x - m) * is));
            }
            (gg, gb)
        })
        .collect();
    let ggamma: Vec<f32> = sums.iter().map(|p| p.0).collect();
    let gbeta: Vec<f32> = sums.iter().map(|p| p.1).collect();
    if !want_x {
        return (Vec::new(), ggamma, gbeta);
    }
    let n = d.count();
    let mut gx = vec![0f32; x.len()];
    gx.par_chunks_mut(d.c * d.hw)
        .zip(x.par_chunks(d.c * d.hw).zip(gy.par_chunks(d.c * d.hw)))
        .for_each(|(gxs, (xs, gys))| {
            let planes = gxs
                .chunks_mut(d.hw)
                .zip(xs.chunks(d.hw).zip(gys.chunks(d.hw)));
            for (ci, (gp, (xp, yp))) in planes.enumerate() {
                let (sc, sh, m, is) = (s.scale[ci], s.shift[ci], s.mean[ci], s.inv_std[ci]);
                let (k, gb, gg) = (sc / n, gbeta[ci], ggamma[ci]);
                for ((o, x), g) in gp.iter_mut().zip(xp).zip(yp) {
                    let g = masked(*g, *x, sc, sh, relu);
                    *o = k * (n * g - gb - (x - m) * is * gg);
                }
            }
        });
    (gx, ggamma, gbeta)
}
