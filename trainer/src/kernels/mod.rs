//! CPU kernels for what burn-ndarray computes slowly: "same" convolution, dense layers (both
//! with an optionally fused ReLU), non-overlapping max pooling, forward and backward, and the
//! Adam update, on contiguous `f32` slices (images in NCHW order). ADR 0004 and ADR 0012.
//!
//! 3×3 and 5×5 convolutions with enough channels run as Winograd transforms ([`winograd`],
//! where [`Transform::choose`] expects them to be cheaper). The other 3×3 to 7×7 convolutions,
//! on CPUs with FMA, run their forward pass and input gradient tap by tap ([`taps`]: no patch
//! matrix, no packing) and their weight gradient as below. Every other convolution is im2col +
//! matrix multiplication, one product per sample (the `gemm` crate's
//! AVX-512/AVX2 kernels through [`linalg`]). The batch is cut into [`CHUNKS`] runs of samples
//! that rayon processes in parallel, each with its own patch buffer, so a GEMM's output rows
//! (the output channels, often just 32 or 64) need not be split across threads. The backward
//! pass recomputes the patches from the saved input instead of keeping them, which keeps a
//! job's memory at the size of its activations.
//!
//! Determinism: the chunks depend on the batch size only, never on the thread count; the
//! weight gradient is summed chunk by chunk in chunk order; every other output is written by
//! exactly one task. So results are bit-identical across runs, thread counts and machines with
//! the same GEMM kernel.

mod linalg;
mod norm;
mod taps;
mod winograd;

use rayon::prelude::*;

use linalg::{Mat, MatMut, matmul};
use winograd::Transform;

use crate::optim::AdamStep;

pub(crate) use norm::{NormDims, NormStats, norm_backward, norm_forward, norm_stats};

/// How many runs of samples a batch is cut into (fewer if the batch is smaller).
pub(crate) const CHUNKS: usize = 8;

/// Output positions per convolution product (see [`ConvDims::band`])...
const BAND: usize = 256;
/// ...unless the sample's whole patch matrix has at most this many values (512 KB).
const WHOLE: usize = 128 * 1024;

/// Sizes of one convolution: input `[b, c, h, w]`, weight `[o, c, k, k]`, output `[b, o, h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub(crate) b: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) k: usize,
}

impl ConvDims {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the patch matrix: `(channel, dy, dx)`, the weight's own order.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Samples per chunk.
    fn chunk(&self) -> usize {
        self.b.div_ceil(CHUNKS).max(1)
    }
    /// Output rows per product: the whole image when its patch matrix is small (a product per
    /// band costs a call each), otherwise about [`BAND`] positions, so that a band of the
    /// patch matrix stays in the core's L2 cache between im2col and the product (a whole 28×28
    /// sample's 5×5 patches with 32 channels are 2.5 MB); a multiple of 16 positions when one
    /// fits (the GEMM's tile). Symmetric in `c` and `o`, so the input gradient's convolution
    /// (channels swapped) cuts the same bands as the forward one.
    fn band(&self) -> usize {
        if self.c.max(self.o) * self.k * self.k * self.hw() <= WHOLE {
            return self.h.max(1);
        }
        let most = (BAND / self.w.max(1)).clamp(1, self.h.max(1));
        (1..=most)
            .rev()
            .find(|r| (r * self.w).is_multiple_of(16))
            .unwrap_or(most)
    }
    /// The bands `[ya, yb)` of output rows, top to bottom.
    fn bands(&self) -> impl Iterator<Item = [usize; 2]> + use<> {
        let (band, h) = (self.band(), self.h);
        (0..h).step_by(band).map(move |ya| [ya, (ya + band).min(h)])
    }
    /// Where, along one image row, output column `x` reads input `x + dx - k/2`: the output
    /// range whose input lies inside the image, and the input offset of its first element.
    fn x_span(&self, dx: usize) -> (usize, usize, usize) {
        let p = self.k / 2;
        let x0 = p.saturating_sub(dx);
        let x1 = (self.w + p).saturating_sub(dx).min(self.w);
        (x0, x1, x0 + dx - p)
    }
}

/// The patch matrix `[c·k·k, (yb − ya)·w]` of output rows `ya..yb` of one sample `x`
/// `[c, h, w]` into `cols`.
///
/// Row `(channel, dy, dx)` is the channel's plane shifted by `(dy − k/2)·w + dx − k/2`: one
/// block copy of the rows that stay inside the image, after which the few columns that
/// wrapped around a row's end are zeroed again (one `memmove` per image row cost most of
/// what im2col took), and rows that read above or below the image are zeroed.
fn im2col(x: &[f32], d: &ConvDims, [ya, yb]: [usize; 2], cols: &mut [f32]) {
    let (hw, kk, w, p) = (d.hw(), d.k * d.k, d.w, d.k / 2);
    for (r, row) in cols.chunks_mut((yb - ya) * w).enumerate() {
        let (ci, dy, dx) = (r / kk, (r % kk) / d.k, r % d.k);
        let (x0, x1, _) = d.x_span(dx);
        // Output rows whose source row lies inside the image, within the band.
        let v0 = p.saturating_sub(dy).max(ya);
        let v1 = (d.h + p).saturating_sub(dy).min(d.h).min(yb);
        if x0 >= x1 || v0 >= v1 {
            row.fill(0.0);
            continue;
        }
        row[..(v0 - ya) * w].fill(0.0);
        row[(v1 - ya) * w..].fill(0.0);
        let plane = &x[ci * hw..][..hw];
        // row[(y − ya)·w + j] = plane[(y + dy − p)·w + j + dx − p] for y in v0..v1, every j:
        // clip the shifted source block to the plane; the clipped ends are edge columns.
        let src0 = ((v0 + dy - p) * w) as isize + dx as isize - p as isize;
        let len = (v1 - v0) * w;
        let lo = (-src0).max(0) as usize;
        let hi = (hw as isize - src0).clamp(0, len as isize) as usize;
        let at = (v0 - ya) * w;
        if lo < hi {
            let from = (src0 + lo as isize) as usize;
            row[at + lo..at + hi].copy_from_slice(&plane[from..from + (hi - lo)]);
        }
        // Columns outside the image, strided (a loop of plain stores, not a memset per row).
        for e in (0..x0).chain(x1..w) {
            for y in v0..v1 {
                row[(y - ya) * w + e] = 0.0;
            }
        }
    }
}

/// A band of a sample's patch matrix as one product's operand (see [`ConvDims::band`]). A 1×1
/// convolution's patches are the sample itself (no copy); otherwise a buffer that [`im2col`]
/// refills.
struct Patches {
    d: ConvDims,
    cols: Vec<f32>,
}

impl Patches {
    fn new(d: &ConvDims) -> Patches {
        let len = if d.k == 1 {
            0
        } else {
            d.rows() * d.band() * d.w
        };
        Patches {
            d: *d,
            cols: vec![0f32; len],
        }
    }

    /// The patches `[c·k·k, (yb − ya)·w]` of output rows `ya..yb` of sample `x` `[c, h, w]`.
    fn of<'s>(&'s mut self, x: &'s [f32], [ya, yb]: [usize; 2]) -> Mat<'s> {
        let d = &self.d;
        let n = (yb - ya) * d.w;
        if d.k == 1 {
            return Mat {
                data: &x[ya * d.w..],
                rows: d.rows(),
                cols: n,
                rs: d.hw(),
                cs: 1,
            };
        }
        let cols = &mut self.cols[..d.rows() * n];
        im2col(x, d, [ya, yb], cols);
        Mat::rows(cols, d.rows(), n)
    }
}

/// ReLU in place, as burn computes it: values `<= 0` become 0 (NaN stays NaN). A select,
/// not a branch, so the loop vectorises.
pub(crate) fn relu_in_place(v: &mut [f32]) {
    for x in v {
        *x = if *x <= 0.0 { 0.0 } else { *x };
    }
}

/// The gradient through a ReLU whose output was `y`: zero where `y <= 0`, as burn's.
pub(crate) fn relu_mask(g: &mut [f32], y: &[f32]) {
    for (g, y) in g.iter_mut().zip(y) {
        *g = if *y <= 0.0 { 0.0 } else { *g };
    }
}

/// `dst = g` masked by the ReLU whose output was `y` ([`relu_mask`] of a copy, in one pass).
fn masked_copy(dst: &mut [f32], g: &[f32], y: &[f32]) {
    let n = dst.len();
    let (g, y) = (&g[..n], &y[..n]);
    for i in 0..n {
        // Both loaded unconditionally: a select, not a branch around a load.
        let (v, out) = (g[i], y[i]);
        dst[i] = if out <= 0.0 { 0.0 } else { v };
    }
}

/// `y = conv(x, weight) + bias`, then ReLU when `relu`: `x` `[b, c, h, w]`, `weight`
/// `[o, c, k, k]`, `bias` `[o]`. Each sample is one product `weight [o, c·k·k] × patches
/// [c·k·k, h·w]` written straight into its output planes, which already hold the bias.
pub(crate) fn conv_forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &ConvDims,
    relu: bool,
) -> Vec<f32> {
    match Transform::choose(d) {
        Some(t) => winograd::forward(x, weight, bias, d, relu, &t),
        None if taps::suits(d) => taps::forward(x, weight, bias, d, relu, None),
        None => direct_forward(x, weight, bias, d, relu),
    }
}

/// [`conv_forward`] as im2col and one product per sample (or band of output rows).
fn direct_forward(x: &[f32], weight: &[f32], bias: &[f32], d: &ConvDims, relu: bool) -> Vec<f32> {
    let (hw, per) = (d.hw(), d.chunk());
    let mut y = vec![0f32; d.b * d.o * hw];
    let wm = Mat::rows(weight, d.o, d.rows());
    y.par_chunks_mut(per * d.o * hw)
        .zip(x.par_chunks(per * d.c * hw))
        .for_each(|(y, x)| {
            let mut cols = Patches::new(d);
            for (ys, xs) in y.chunks_mut(d.o * hw).zip(x.chunks(d.c * hw)) {
                for (plane, b) in ys.chunks_mut(hw).zip(bias) {
                    plane.fill(*b);
                }
                for band in d.bands() {
                    let n = (band[1] - band[0]) * d.w;
                    let dst = MatMut {
                        data: &mut ys[band[0] * d.w..],
                        rows: d.o,
                        cols: n,
                        rs: hw,
                    };
                    matmul(dst, wm, cols.of(xs, band), true);
                }
                if relu {
                    relu_in_place(ys);
                }
            }
        });
    y
}

/// Gradients of [`conv_forward`] given the output gradient `gy` `[b, o, h, w]` (and, for a
/// convolution fused with its ReLU, its output `relu_out`, which masks `gy`):
/// `(gx, gweight, gbias)`; `gx` is empty unless `want_x`. Per sample: `gweight += gy_s ×
/// patches(x_s)ᵀ`; chunk sums are added in chunk order. The input gradient is itself a "same"
/// convolution, of `gy_s` with the weight flipped in space and its channel axes swapped
/// ([`flipped`]): one product `[c, o·k·k] × patches(gy_s)` shaped like the forward one,
/// where `weightᵀ × gy_s` would sum over only `o` terms per element and then need a col2im
/// pass over a `c·k·k × h·w` matrix.
pub(crate) fn conv_backward(
    x: &[f32],
    weight: &[f32],
    gy: &[f32],
    relu_out: Option<&[f32]>,
    d: &ConvDims,
    want_x: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match Transform::choose(d) {
        Some(t) => winograd_backward(x, weight, gy, relu_out, d, want_x, &t),
        None if want_x && taps::suits(d) => {
            let dt = ConvDims {
                c: d.o,
                o: d.c,
                ..*d
            };
            let gx = taps::forward(gy, &flipped(weight, d), &[], &dt, false, relu_out);
            let (_, gw, gb) = direct_backward(x, weight, gy, relu_out, d, false);
            (gx, gw, gb)
        }
        None => direct_backward(x, weight, gy, relu_out, d, want_x),
    }
}

/// [`conv_backward`] through im2col products, sample by sample.
fn direct_backward(
    x: &[f32],
    weight: &[f32],
    gy: &[f32],
    relu_out: Option<&[f32]>,
    d: &ConvDims,
    want_x: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hw, per) = (d.hw(), d.chunk());
    let dt = ConvDims {
        c: d.o,
        o: d.c,
        ..*d
    };
    let flip = if want_x {
        flipped(weight, d)
    } else {
        Vec::new()
    };
    let wt = Mat::rows(&flip, if want_x { d.c } else { 0 }, dt.rows());
    let mut gx = vec![0f32; if want_x { d.b * d.c * hw } else { 0 }];
    let mut gx_chunks = gx.chunks_mut(per * d.c * hw);
    let tasks: Vec<(usize, Option<&mut [f32]>)> = (0..d.b.div_ceil(per))
        .map(|i| (i, gx_chunks.next()))
        .collect();
    let partial: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(i, mut gx)| {
            let (s0, s1) = (i * per, ((i + 1) * per).min(d.b));
            let mut cols = Patches::new(d);
            let mut gcols = gx.is_some().then(|| Patches::new(&dt));
            let mut gw = vec![0f32; d.o * d.rows()];
            let mut gb = vec![0f32; d.o];
            let mut masked = vec![0f32; if relu_out.is_some() { d.o * hw } else { 0 }];
            for s in s0..s1 {
                let mut gys = &gy[s * d.o * hw..][..d.o * hw];
                if let Some(y) = relu_out {
                    masked_copy(&mut masked, gys, &y[s * d.o * hw..][..d.o * hw]);
                    gys = &masked;
                }
                for (acc, plane) in gb.iter_mut().zip(gys.chunks(hw)) {
                    *acc += sum_lanes(plane);
                }
                let xs = &x[s * d.c * hw..][..d.c * hw];
                for band in d.bands() {
                    let (at, n) = (band[0] * d.w, (band[1] - band[0]) * d.w);
                    let gym = Mat {
                        data: &gys[at..],
                        rows: d.o,
                        cols: n,
                        rs: hw,
                        cs: 1,
                    };
                    let dst = MatMut::rows(&mut gw, d.o, d.rows());
                    matmul(dst, gym, cols.of(xs, band).t(), s > s0 || at > 0);
                    if let (Some(gx), Some(gcols)) = (gx.as_deref_mut(), gcols.as_mut()) {
                        let dst = MatMut {
                            data: &mut gx[(s - s0) * d.c * hw + at..],
                            rows: d.c,
                            cols: n,
                            rs: hw,
                        };
                        matmul(dst, wt, gcols.of(gys, band), false);
                    }
                }
            }
            (gw, gb)
        })
        .collect();
    let mut gw = vec![0f32; d.o * d.rows()];
    let mut gb = vec![0f32; d.o];
    for (pw, pb) in &partial {
        for (a, v) in gw.iter_mut().zip(pw) {
            *a += v;
        }
        for (a, v) in gb.iter_mut().zip(pb) {
            *a += v;
        }
    }
    (gx, gw, gb)
}

/// [`conv_backward`] through Winograd transforms: the output gradient masked by the fused
/// ReLU once for the whole batch, the bias gradient summed sample by sample, the input
/// gradient as the flipped convolution ([`winograd::forward`]), the weight gradient by
/// [`winograd::weight_grad`].
fn winograd_backward(
    x: &[f32],
    weight: &[f32],
    gy: &[f32],
    relu_out: Option<&[f32]>,
    d: &ConvDims,
    want_x: bool,
    t: &Transform,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hw = d.hw();
    let masked;
    let g = match relu_out {
        Some(y) => {
            let mut m = gy.to_vec();
            m.par_chunks_mut(d.o * hw)
                .zip(y.par_chunks(d.o * hw))
                .for_each(|(g, y)| relu_mask(g, y));
            masked = m;
            &masked[..]
        }
        None => gy,
    };
    let mut gb = vec![0f32; d.o];
    for sample in g.chunks(d.o * hw) {
        for (acc, plane) in gb.iter_mut().zip(sample.chunks(hw)) {
            *acc += sum_lanes(plane);
        }
    }
    let gx = if want_x {
        let dt = ConvDims {
            c: d.o,
            o: d.c,
            ..*d
        };
        winograd::forward(g, &flipped(weight, d), &vec![0f32; d.c], &dt, false, t)
    } else {
        Vec::new()
    };
    (gx, winograd::weight_grad(x, g, d, t), gb)
}

/// The weight `[o, c, k, k]` of a convolution as the weight `[c, o, k, k]` of its adjoint:
/// `flipped[c][o][y][x] = weight[o][c][k-1-y][k-1-x]`.
fn flipped(weight: &[f32], d: &ConvDims) -> Vec<f32> {
    let kk = d.k * d.k;
    let mut f = vec![0f32; weight.len()];
    for (ci, out) in f.chunks_mut(d.o * kk).enumerate() {
        for (oi, taps) in out.chunks_mut(kk).enumerate() {
            let src = &weight[(oi * d.c + ci) * kk..][..kk];
            for (t, v) in taps.iter_mut().zip(src.iter().rev()) {
                *t = *v;
            }
        }
    }
    f
}

/// A sum in 16 interleaved lanes combined in a fixed order: the same bits every time, and a
/// loop that vectorises (a plain `f32` sum is one long dependency chain).
fn sum_lanes(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    for (l, x) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += x;
    }
    lanes.iter().sum()
}

/// Sizes of one dense layer: input `[b, i]`, weight `[i, o]` (burn's `Linear` layout),
/// output `[b, o]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DenseDims {
    pub(crate) b: usize,
    pub(crate) i: usize,
    pub(crate) o: usize,
}

/// Rows of a dense layer's product per parallel piece. Fixed, so the pieces (and the bits)
/// depend on the shapes only, never on the thread count.
const ROWS: usize = 16;

/// `y = x · w + bias`, then ReLU when `relu`; pieces of [`ROWS`] samples in parallel.
pub(crate) fn dense_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    d: &DenseDims,
    relu: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; d.b * d.o];
    let wm = Mat::rows(w, d.i, d.o);
    y.par_chunks_mut(ROWS * d.o)
        .zip(x.par_chunks(ROWS * d.i))
        .for_each(|(y, x)| {
            let rows = y.len() / d.o.max(1);
            for row in y.chunks_mut(d.o) {
                row.copy_from_slice(bias);
            }
            let dst = MatMut::rows(y, rows, d.o);
            matmul(dst, Mat::rows(x, rows, d.i), wm, true);
            if relu {
                relu_in_place(y);
            }
        });
    y
}

/// Gradients of [`dense_forward`] given `gy` `[b, o]` (masked by `relu_out` for a layer fused
/// with its ReLU): `(gx, gw, gbias)`, `gx` empty unless `want_x`. `gw = xᵀ · g` in pieces of
/// [`ROWS`] input features, `gx = g · wᵀ` in pieces of [`ROWS`] samples, `gbias` summed over
/// samples in order.
pub(crate) fn dense_backward(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    relu_out: Option<&[f32]>,
    d: &DenseDims,
    want_x: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut masked;
    let g = match relu_out {
        Some(y) => {
            masked = gy.to_vec();
            relu_mask(&mut masked, y);
            &masked[..]
        }
        None => gy,
    };
    let mut gb = vec![0f32; d.o];
    for row in g.chunks(d.o) {
        for (a, v) in gb.iter_mut().zip(row) {
            *a += v;
        }
    }
    let gm = Mat::rows(g, d.b, d.o);
    let mut gw = vec![0f32; d.i * d.o];
    gw.par_chunks_mut(ROWS * d.o)
        .enumerate()
        .for_each(|(piece, dst)| {
            let (r0, rows) = (piece * ROWS, dst.len() / d.o.max(1));
            // xᵀ's rows r0.. : column r of x, read with stride i.
            let xt = Mat {
                data: &x[r0..],
                rows,
                cols: d.b,
                rs: 1,
                cs: d.i,
            };
            let dst = MatMut::rows(dst, rows, d.o);
            matmul(dst, xt, gm, false);
        });
    let mut gx = vec![0f32; if want_x { d.b * d.i } else { 0 }];
    let wt = Mat::rows(w, d.i, d.o).t();
    gx.par_chunks_mut(ROWS * d.i)
        .zip(g.par_chunks(ROWS * d.o))
        .for_each(|(dst, g)| {
            let rows = dst.len() / d.i.max(1);
            let dst = MatMut::rows(dst, rows, d.i);
            matmul(dst, Mat::rows(g, rows, d.o), wt, false);
        });
    (gx, gw, gb)
}

/// Elements per piece of an element-wise update spread over the thread pool.
const PIECE: usize = 1 << 14;

/// Adam over one tensor in place: `p`, `m1`, `m2` are updated by `step` given the gradient
/// `g`; `first` when the moments are fresh (their values are then ignored). Each element's
/// arithmetic is independent of the pieces, so the bits are too.
pub(crate) fn adam(
    p: &mut [f32],
    g: &[f32],
    m1: &mut [f32],
    m2: &mut [f32],
    step: &AdamStep,
    first: bool,
) {
    p.par_chunks_mut(PIECE)
        .zip(g.par_chunks(PIECE))
        .zip(m1.par_chunks_mut(PIECE))
        .zip(m2.par_chunks_mut(PIECE))
        .for_each(|(((p, g), m1), m2)| {
            if first {
                adam_piece::<true>(p, g, m1, m2, step);
            } else {
                adam_piece::<false>(p, g, m1, m2, step);
            }
        });
}

/// One piece of [`adam`], written so that it vectorises (the first step's case known at
/// compile time, every slice cut to one length): `sqrt` and `/` are correctly rounded in
/// vector registers as in scalar ones, so the bits are the scalar loop's. Scalar, the square
/// root and division of every element were half of the MLP's training step.
fn adam_piece<const FIRST: bool>(
    p: &mut [f32],
    g: &[f32],
    m1: &mut [f32],
    m2: &mut [f32],
    step: &AdamStep,
) {
    let n = p.len();
    let (g, m1, m2) = (&g[..n], &mut m1[..n], &mut m2[..n]);
    for i in 0..n {
        let before = (!FIRST).then_some((m1[i], m2[i]));
        (p[i], m1[i], m2[i]) = step.apply(p[i], g[i], before);
    }
}

/// `k×k` max pooling with stride `k`, no padding, floor mode, over `planes` planes of `h×w`:
/// the output and, per output, the index within its plane of the maximum (the first one on
/// ties).
pub(crate) fn max_pool_forward(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
) -> (Vec<f32>, Vec<u32>) {
    let (oh, ow) = (h / k, w / k);
    let mut out = vec![0f32; planes * oh * ow];
    let mut arg = vec![0u32; planes * oh * ow];
    // Whole planes per task, enough of them that a task is worth scheduling.
    let per = (PIECE / (h * w).max(1)).max(1);
    out.par_chunks_mut(per * oh * ow)
        .zip(arg.par_chunks_mut(per * oh * ow))
        .enumerate()
        .for_each(|(piece, (out, arg))| {
            let planes = out.chunks_mut(oh * ow).zip(arg.chunks_mut(oh * ow));
            for (i, (out, arg)) in planes.enumerate() {
                let plane = &x[(piece * per + i) * h * w..][..h * w];
                if k == 2 {
                    pool_plane_2(plane, w, oh, ow, out, arg);
                } else {
                    pool_plane(plane, w, k, oh, ow, out, arg);
                }
            }
        });
    (out, arg)
}

/// One plane of [`max_pool_forward`], any `k`: the first maximum in row-major window order.
fn pool_plane(
    plane: &[f32],
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    arg: &mut [u32],
) {
    for oy in 0..oh {
        for ox in 0..ow {
            let first = oy * k * w + ox * k;
            let (mut best, mut at) = (plane[first], first);
            for dy in 0..k {
                for dx in 0..k {
                    let i = first + dy * w + dx;
                    if plane[i] > best {
                        (best, at) = (plane[i], i);
                    }
                }
            }
            out[oy * ow + ox] = best;
            arg[oy * ow + ox] = at as u32;
        }
    }
}

/// [`pool_plane`] for `k = 2` (the macro space's and the zoo's pooling): the same window
/// order, with selects instead of branches and no index arithmetic per element.
fn pool_plane_2(plane: &[f32], w: usize, oh: usize, ow: usize, out: &mut [f32], arg: &mut [u32]) {
    for oy in 0..oh {
        let base = 2 * oy * w;
        let (r0, r1) = (&plane[base..][..w], &plane[base + w..][..w]);
        let (out, arg) = (&mut out[oy * ow..][..ow], &mut arg[oy * ow..][..ow]);
        for ox in 0..ow {
            let c = 2 * ox;
            let (mut best, mut at) = (r0[c], base + c);
            for (v, i) in [
                (r0[c + 1], base + c + 1),
                (r1[c], base + w + c),
                (r1[c + 1], base + w + c + 1),
            ] {
                let more = v > best;
                best = if more { v } else { best };
                at = if more { i } else { at };
            }
            out[ox] = best;
            arg[ox] = at as u32;
        }
    }
}

/// The input gradient of [`max_pool_forward`]: each output's gradient goes to its maximum.
pub(crate) fn max_pool_backward(gy: &[f32], arg: &[u32], planes: usize, hw: usize) -> Vec<f32> {
    let mut gx = vec![0f32; planes * hw];
    let per = gy.len() / planes.max(1);
    gx.par_chunks_mut(hw).enumerate().for_each(|(pl, plane)| {
        for (g, &a) in gy[pl * per..][..per].iter().zip(&arg[pl * per..][..per]) {
            plane[a as usize] += g;
        }
    });
    gx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution straight from its definition.
    fn naive_conv(x: &[f32], wt: &[f32], bias: &[f32], d: &ConvDims) -> Vec<f32> {
        let p = d.k as isize / 2;
        let mut y = vec![0f32; d.b * d.o * d.h * d.w];
        for s in 0..d.b {
            for o in 0..d.o {
                for yy in 0..d.h {
                    for xx in 0..d.w {
                        let mut acc = bias[o];
                        for c in 0..d.c {
                            for dy in 0..d.k {
                                for dx in 0..d.k {
                                    let iy = yy as isize + dy as isize - p;
                                    let ix = xx as isize + dx as isize - p;
                                    if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((s * d.c + c) * d.h + iy as usize) * d.w + ix as usize;
                                    let wi = ((o * d.c + c) * d.k + dy) * d.k + dx;
                                    acc += x[xi] * wt[wi];
                                }
                            }
                        }
                        y[((s * d.o + o) * d.h + yy) * d.w + xx] = acc;
                    }
                }
            }
        }
        y
    }

    fn ramp(n: usize, mul: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(mul) % 97) as f32 - 48.0) / 31.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    /// Within 2e-5 of the largest magnitude in `b`: a Winograd result's rounding error scales
    /// with its sums' terms, not with each result (a small value among large ones).
    fn close_to_scale(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-5 * scale,
                "at {i}: {x} vs {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn conv_forward_matches_the_definition_for_every_odd_kernel() {
        for (b, k) in [(2, 1), (2, 3), (11, 3), (3, 5)] {
            let d = ConvDims {
                b,
                c: 3,
                h: 5,
                w: 7,
                o: 4,
                k,
            };
            let x = ramp(d.b * d.c * d.h * d.w, 7);
            let wt = ramp(d.o * d.c * k * k, 13);
            let bias = ramp(d.o, 5);
            close(
                &conv_forward(&x, &wt, &bias, &d, false),
                &naive_conv(&x, &wt, &bias, &d),
                1e-5,
            );
        }
    }

    /// The backward pass is the adjoint of the forward: for random `x`, `w` and output
    /// gradient `g`, `<g, conv(x, w)>` is bilinear, so its derivative along `x` is `<gx, δx>`
    /// and along `w` is `<gw, δw>`; checked against the naive forward.
    #[test]
    fn conv_backward_is_the_adjoint_of_the_forward() {
        // 11 samples: chunks of 2 and a last chunk of 1.
        for (b, k) in [(2, 1), (11, 3), (3, 5)] {
            let d = ConvDims {
                b,
                c: 3,
                h: 6,
                w: 5,
                o: 2,
                k,
            };
            let x = ramp(d.b * d.c * d.h * d.w, 11);
            let wt = ramp(d.o * d.c * k * k, 17);
            let zero = vec![0f32; d.o];
            let g = ramp(d.b * d.o * d.h * d.w, 23);
            let (gx, gw, gb) = conv_backward(&x, &wt, &g, None, &d, true);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
            let dx = ramp(x.len(), 29);
            let dw = ramp(wt.len(), 31);
            // conv is linear in x (with zero bias) and in w.
            let lin_x = dot(&g, &naive_conv(&dx, &wt, &zero, &d));
            let lin_w = dot(&g, &naive_conv(&x, &dw, &zero, &d));
            close(&[dot(&gx, &dx)], &[lin_x], 1e-4);
            close(&[dot(&gw, &dw)], &[lin_w], 1e-4);
            let per_o: Vec<f32> = (0..d.o)
                .map(|o| {
                    (0..d.b)
                        .map(|s| g[(s * d.o + o) * 30..][..30].iter().sum::<f32>())
                        .sum()
                })
                .collect();
            close(&gb, &per_o, 1e-5);
            let (none, _, _) = conv_backward(&x, &wt, &g, None, &d, false);
            assert!(none.is_empty());
        }
    }

    /// Every Winograd tile size gives the convolution of the definition and its exact adjoint,
    /// on images that are not a whole number of tiles, over several chunks of samples.
    #[test]
    fn winograd_convolutions_match_the_definition() {
        for (m, k, h, w) in [(6, 3, 13, 9), (6, 3, 14, 14), (4, 5, 7, 11), (4, 5, 28, 10)] {
            let t = Transform::new(m, k);
            let d = ConvDims {
                b: 11,
                c: 8,
                h,
                w,
                o: 9,
                k,
            };
            let x = ramp(d.b * d.c * d.h * d.w, 7);
            let wt = ramp(d.o * d.rows(), 13);
            let bias = ramp(d.o, 5);
            let y = winograd::forward(&x, &wt, &bias, &d, false, &t);
            close_to_scale(&y, &naive_conv(&x, &wt, &bias, &d));
            let g = ramp(y.len(), 23);
            let (gx, gw, gb) = winograd_backward(&x, &wt, &g, None, &d, true, &t);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
            let (dx, dw, zero) = (ramp(x.len(), 29), ramp(wt.len(), 31), vec![0f32; d.o]);
            close(
                &[dot(&gx, &dx)],
                &[dot(&g, &naive_conv(&dx, &wt, &zero, &d))],
                1e-4,
            );
            close(
                &[dot(&gw, &dw)],
                &[dot(&g, &naive_conv(&x, &dw, &zero, &d))],
                1e-4,
            );
            let (direct_gx, direct_gw, direct_gb) = direct_backward(&x, &wt, &g, None, &d, true);
            close_to_scale(&gx, &direct_gx);
            close_to_scale(&gw, &direct_gw);
            close(&gb, &direct_gb, 1e-5);
        }
    }

    /// Chunks depend on the batch, not on the threads: one thread and four give the same bits,
    /// through the direct path and through Winograd transforms.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let direct = ConvDims {
            b: 13,
            c: 4,
            h: 9,
            w: 9,
            o: 6,
            k: 3,
        };
        let winograd = ConvDims {
            c: 32,
            o: 32,
            h: 12,
            w: 11,
            k: 5,
            ..direct
        };
        assert!(Transform::choose(&direct).is_none() && Transform::choose(&winograd).is_some());
        for d in [direct, winograd] {
            same_bits_on_one_and_four_threads(&d);
        }
    }

    fn same_bits_on_one_and_four_threads(d: &ConvDims) {
        let x = ramp(d.b * d.c * d.h * d.w, 7);
        let wt = ramp(d.o * d.rows(), 13);
        let g = ramp(d.b * d.o * d.h * d.w, 19);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| {
                let y = conv_forward(&x, &wt, &ramp(d.o, 3), d, true);
                let back = conv_backward(&x, &wt, &g, Some(&y), d, true);
                (y, back)
            })
        };
        assert_eq!(run(1), run(4));
    }

    /// The `k = 2` path picks the same maxima (ties included: few distinct values) as the
    /// general one, on odd sizes where the last row and column are dropped.
    #[test]
    fn the_two_by_two_pool_equals_the_general_one() {
        let (h, w) = (9, 11);
        let plane: Vec<f32> = ramp(h * w, 37).iter().map(|v| v.round()).collect();
        let (oh, ow) = (h / 2, w / 2);
        let mut general = (vec![0f32; oh * ow], vec![0u32; oh * ow]);
        let mut fast = general.clone();
        pool_plane(&plane, w, 2, oh, ow, &mut general.0, &mut general.1);
        pool_plane_2(&plane, w, oh, ow, &mut fast.0, &mut fast.1);
        assert_eq!(general, fast);
        assert!(general.1.windows(2).all(|p| p[0] != p[1]));
    }

    #[test]
    fn max_pool_picks_the_first_maximum_and_routes_its_gradient() {
        // One 4x5 plane, k = 2: output 2x2 (the last column is dropped, floor mode).
        let x = [
            1.0, 3.0, 0.0, 0.0, 9.0, //
            2.0, 3.0, -1.0, -2.0, 9.0, //
            5.0, 5.0, 7.0, 6.0, 9.0, //
            5.0, 4.0, 6.0, 7.0, 9.0,
        ];
        let (out, arg) = max_pool_forward(&x, 1, 4, 5, 2);
        assert_eq!(out, vec![3.0, 0.0, 5.0, 7.0]);
        assert_eq!(arg, vec![1, 2, 10, 12]);
        let gx = max_pool_backward(&[1.0, 2.0, 3.0, 4.0], &arg, 1, 20);
        let mut want = vec![0f32; 20];
        for (a, g) in arg.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            want[*a as usize] = g;
        }
        assert_eq!(gx, want);
    }
}
