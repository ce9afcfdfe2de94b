//! Winograd convolution for 3×3 and 5×5 kernels: fewer multiplications per output (ADR 0012,
//! fourth session).
//!
//! F(m×m, r×r) computes an `m × m` output tile of an `r × r` correlation from an `n × n` input
//! tile (`n = m + r − 1 = 8` here: F(6×6, 3×3) and F(4×4, 5×5)) as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`: `n²` products per input and output channel pair instead
//! of `m² r²`. Summed over input channels, each of the `n²` transform positions is one matrix
//! product `V[ξ] [tiles × c] × U[ξ]ᵀ [c × o]` through the GEMM of [`super::linalg`]. The weight
//! gradient uses the same transforms transposed: `gW = Gᵀ [Σ_tiles (A gY Aᵀ) ⊙ (Bᵀ d B)] G`, one
//! product per position summed over tiles; the input gradient is a convolution of the output
//! gradient with the flipped weight, as in the direct path, so it is [`forward`] again.
//!
//! Data: a chunk of samples is copied channels-last into a zero frame whose rows are split by
//! column phase ([`Frame`]); the transforms then run tile row by tile row as passes over long
//! runs of values ([`pass`]), vectorised, with compile-time coefficients ([`Coefs`]).
//!
//! The matrices come from the Toom–Cook construction on the points `0, ±1, ±2, ±1/2` and
//! infinity (see [`Transform::new`]). Determinism: blocks of tiles depend on the shapes only,
//! products go through the same GEMM as the direct path, the transforms are element-wise
//! (the same bits at every register width), and the chunks' weight-gradient sums are added in
//! chunk order.

use std::cell::RefCell;

use rayon::prelude::*;

use super::ConvDims;
use super::linalg::{Mat, MatMut, matmul};

/// Floats of transformed tiles (`n² × max(c, o) × tiles`) one block may hold: 256 K values,
/// 1 MB, so the transformed input and the products stay in a core's L2 between passes.
const BLOCK_VALUES: usize = 256 * 1024;

/// F(m×m, r×r) on the eight points [`POINTS`] and infinity: F(6×6, 3×3) or F(4×4, 5×5). Its
/// matrices are compile-time constants ([`Coefs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transform {
    /// Output tile side: 6 or 4.
    pub(crate) m: usize,
    /// Kernel side: 3 or 5.
    pub(crate) r: usize,
    /// Input tile side and number of points, `m + r − 1 = 8`.
    pub(crate) n: usize,
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

impl Transform {
    /// F(m×m, r×r): `(6, 3)` or `(4, 5)`.
    pub(crate) fn new(m: usize, r: usize) -> Transform {
        assert!(
            matches!((m, r), (6, 3) | (4, 5)),
            "Winograd transforms exist for F(6x6, 3x3) and F(4x4, 5x5), not F({m}x{m}, {r}x{r})"
        );
        Transform { m, r, n: m + r - 1 }
    }

    /// The transform for a convolution, when it is expected to be cheaper than the direct
    /// product (`None` keeps the direct path): 3×3 or 5×5 kernels with at least 8 input and 8
    /// output channels, F(6×6, 3×3) or F(4×4, 5×5). The estimate counts the products of both
    /// (multiply-adds per image) and each transformed value at `6n` of them: the transforms,
    /// the channels-last copies and the scatter are not a GEMM. Calibrated on the benchmark
    /// (BENCHMARKS.md, issue 28): the small CNN's 14×14, 32→64 channel 3×3 layer measured
    /// slower through the transforms and stays direct; the macro genome's 5×5 layers at 28×28
    /// and 14×14 take them.
    pub(crate) fn choose(d: &ConvDims) -> Option<Transform> {
        if !matches!(d.k, 3 | 5) || d.c.min(d.o) < 8 {
            return None;
        }
        let cost = |m: usize| {
            let n = m + d.k - 1;
            let tiles = d.h.div_ceil(m) * d.w.div_ceil(m);
            tiles * n * n * (d.c * d.o + 6 * n * (d.c + d.o))
        };
        let direct = d.h * d.w * d.k * d.k * d.c * d.o;
        let m = 8 - (d.k - 1);
        (cost(m) < direct).then(|| Transform::new(m, d.k))
    }
}

impl Transform {
    /// The input transform of one tile row, the tiles `(s, ty, 0..across)` of the framed
    /// chunk, into `v[ξ][k0 + tx][·]` (`v` `[n²][len][c]`): the first pass runs down whole
    /// framed rows (every column of the tile row at once, each shared by two tiles), the second
    /// along the columns of every tile at once (the phase-split frame makes each a run).
    fn input_row(
        &self,
        framed: &[f32],
        f: &Frame,
        (s, ty, across): (usize, usize, usize),
        mid: &mut [f32],
        (v, k0, len): (&mut [f32], usize, usize),
    ) {
        let rl = f.row_len();
        let base = s * f.sample_len() + ty * self.m * rl;
        pass::<8, 8, InputT>(framed, |i| base + i * rl, mid, |a| a * rl, rl);
        let run = across * f.c;
        for a in 0..8 {
            let dst = |b: usize| ((a * 8 + b) * len + k0) * f.c;
            pass::<8, 8, InputT>(mid, |j| a * rl + f.column(j), v, dst, run);
        }
    }

    /// The output transform of one tile row, products `prod[ξ][k0 + tx][·]` (`[n²][len][o]`)
    /// into `out[u][v][tx][·]`.
    fn output_row(
        &self,
        prod: &[f32],
        (k0, len, o): (usize, usize, usize),
        across: usize,
        mid: &mut [f32],
        out: &mut [f32],
    ) {
        match self.m {
            4 => output_row::<4>(prod, (k0, len, o), across, mid, out),
            _ => output_row::<6>(prod, (k0, len, o), across, mid, out),
        }
    }

    /// `A gY Aᵀ` of one tile row of the framed output gradient into `prod[ξ][k0 + tx][·]`.
    fn grad_row(
        &self,
        framed: &[f32],
        f: &Frame,
        at: (usize, usize, usize),
        mid: &mut [f32],
        (prod, k0, len): (&mut [f32], usize, usize),
    ) {
        match self.m {
            4 => grad_row::<4>(framed, f, at, mid, (prod, k0, len)),
            _ => grad_row::<6>(framed, f, at, mid, (prod, k0, len)),
        }
    }
}

/// [`Transform::output_row`] for output tiles of side `M`.
fn output_row<const M: usize>(
    prod: &[f32],
    (k0, len, o): (usize, usize, usize),
    across: usize,
    mid: &mut [f32],
    out: &mut [f32],
) where
    OutputT<M>: Coefs<8, M>,
{
    let run = across * o;
    for b in 0..8 {
        let src = |a: usize| ((a * 8 + b) * len + k0) * o;
        pass::<8, M, OutputT<M>>(prod, src, mid, |u| (u * 8 + b) * run, run);
    }
    for u in 0..M {
        pass::<8, M, OutputT<M>>(mid, |b| (u * 8 + b) * run, out, |v| (u * M + v) * run, run);
    }
}

/// [`Transform::grad_row`] for output tiles of side `M`.
fn grad_row<const M: usize>(
    framed: &[f32],
    f: &Frame,
    (s, ty, across): (usize, usize, usize),
    mid: &mut [f32],
    (prod, k0, len): (&mut [f32], usize, usize),
) where
    GradT<M>: Coefs<M, 8>,
{
    let rl = f.row_len();
    let base = s * f.sample_len() + ty * M * rl;
    pass::<M, 8, GradT<M>>(framed, |i| base + i * rl, mid, |a| a * rl, rl);
    let run = across * f.c;
    for a in 0..8 {
        let dst = |b: usize| ((a * 8 + b) * len + k0) * f.c;
        pass::<M, 8, GradT<M>>(mid, |j| a * rl + f.column(j), prod, dst, run);
    }
}

/// Lanes per register block of a [`pass`]: one AVX-512 register, four SSE ones.
const LANES: usize = 16;

/// The finite points of every per-tile transform: F(4×4, 5×5) and F(6×6, 3×3) both have
/// eight (these seven and infinity), so they share the input transform.
const POINTS: [f64; 7] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5];

/// A per-tile transform matrix `[OUT × IN]` known at compile time, so that LLVM folds its
/// zeros (skipped) and ones (no product) into the unrolled loops.
trait Coefs<const IN: usize, const OUT: usize> {
    const L: [[f32; IN]; OUT];

    /// `L x` for a block of [`LANES`] columns: row by row from `L` unless a transform has a
    /// cheaper sequence (the points come in pairs `±p`, so rows pair up into sums and
    /// differences of shared even and odd parts).
    #[inline(always)]
    fn apply(x: &[[f32; LANES]; IN]) -> [[f32; LANES]; OUT] {
        let mut y = [[0f32; LANES]; OUT];
        for (row, coef) in y.iter_mut().zip(&Self::L) {
            *row = combine(coef, x);
        }
        y
    }
}

/// `f(x0, …, x7)` lane by lane: eight rows out of eight rows in.
#[inline(always)]
fn lanewise<const IN: usize, const OUT: usize>(
    x: &[[f32; LANES]; IN],
    f: impl Fn([f32; IN]) -> [f32; OUT],
) -> [[f32; LANES]; OUT] {
    let mut y = [[0f32; LANES]; OUT];
    for z in 0..LANES {
        let r = f(std::array::from_fn(|i| x[i][z]));
        for (row, v) in y.iter_mut().zip(r) {
            row[z] = v;
        }
    }
    y
}

/// `Bᵀ` of the eight points: input tiles in.
struct InputT;

impl Coefs<8, 8> for InputT {
    const L: [[f32; 8]; 8] = input_matrix();

    /// `Bᵀ x` in 38 operations instead of 44 products and sums (a test checks it against `L`).
    #[inline(always)]
    fn apply(x: &[[f32; LANES]; 8]) -> [[f32; LANES]; 8] {
        lanewise(x, |[x0, x1, x2, x3, x4, x5, x6, x7]| {
            let (t1, t2) = ((x2 + x6) - 4.25 * x4, (x1 + x5) - 4.25 * x3);
            let (t3, t4) = (
                (0.25 * x2 + x6) - 1.25 * x4,
                (0.5 * x1 + 2.0 * x5) - 2.5 * x3,
            );
            let (t5, t6) = ((4.0 * x2 + x6) - 5.0 * x4, (2.0 * x1 + 0.5 * x5) - 2.5 * x3);
            [
                (x6 - x0) + 5.25 * (x2 - x4),
                t1 + t2,
                t1 - t2,
                t3 + t4,
                t3 - t4,
                t5 + t6,
                t5 - t6,
                (x7 - x1) + 5.25 * (x3 - x5),
            ]
        })
    }
}

/// `Aᵀ` for output tiles of side `M`: products out.
struct OutputT<const M: usize>;

impl Coefs<8, 4> for OutputT<4> {
    const L: [[f32; 8]; 4] = output_matrix::<4>();

    /// `Aᵀ x` through the sums and differences of the `±p` pairs.
    #[inline(always)]
    fn apply(x: &[[f32; LANES]; 8]) -> [[f32; LANES]; 4] {
        lanewise(x, |[x0, x1, x2, x3, x4, x5, x6, x7]| {
            let (a, b, c, d, e, f) = (x1 + x2, x1 - x2, x3 + x4, x3 - x4, x5 + x6, x5 - x6);
            [
                x0 + a + c + e,
                b + 2.0 * d + 0.5 * f,
                a + 4.0 * c + 0.25 * e,
                b + 8.0 * d + 0.125 * f + x7,
            ]
        })
    }
}

impl Coefs<8, 6> for OutputT<6> {
    const L: [[f32; 8]; 6] = output_matrix::<6>();
}

/// `A` for output-gradient tiles of side `M` in (the weight gradient).
struct GradT<const M: usize>;

impl Coefs<4, 8> for GradT<4> {
    const L: [[f32; 4]; 8] = grad_matrix::<4>();

    /// `A x`: the values at the eight points of the cubic `x0 + x1 t + x2 t² + x3 t³`, the
    /// `±p` pairs from shared even and odd parts.
    #[inline(always)]
    fn apply(x: &[[f32; LANES]; 4]) -> [[f32; LANES]; 8] {
        lanewise(x, |[x0, x1, x2, x3]| {
            let (e1, o1) = (x0 + x2, x1 + x3);
            let (e2, o2) = (x0 + 4.0 * x2, 2.0 * x1 + 8.0 * x3);
            let (e3, o3) = (x0 + 0.25 * x2, 0.5 * x1 + 0.125 * x3);
            [x0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, e3 + o3, e3 - o3, x3]
        })
    }
}

impl Coefs<6, 8> for GradT<6> {
    const L: [[f32; 6]; 8] = grad_matrix::<6>();
}

/// `G` for kernels of side `R`: kernels in (once per step).
struct FilterT<const R: usize>;

impl<const R: usize> Coefs<R, 8> for FilterT<R> {
    const L: [[f32; R]; 8] = filter_matrix::<R>();
}

/// `Gᵀ`: weight-gradient sums back to kernels of side `R` (once per step).
struct WeightT<const R: usize>;

impl<const R: usize> Coefs<8, R> for WeightT<R> {
    const L: [[f32; 8]; R] = weight_matrix::<R>();
}

const fn power(p: f64, e: usize) -> f64 {
    let mut v = 1.0;
    let mut i = 0;
    while i < e {
        v *= p;
        i += 1;
    }
    v
}

/// `Bᵀ`: row `j` holds the coefficients (lowest power first) of `q_j = ∏_{l≠j} (x − p_l)` over
/// the finite points, the infinity row those of `∏_l (x − p_l)`. With [`output_matrix`]
/// (`Aᵀ[i][j] = p_jⁱ`, infinity picks the leading coefficient) and [`filter_matrix`] this is
/// Toom–Cook's linear convolution transposed into a correlation, with the scale `q_j(p_j)`
/// moved from `Bᵀ` into `G`, whose transform runs once per step.
const fn input_matrix() -> [[f32; 8]; 8] {
    let mut bt = [[0f32; 8]; 8];
    let mut j = 0;
    while j < 8 {
        // The coefficients of ∏ (x − p_l) over the finite points other than j (all for j = 7).
        let mut c = [0f64; 9];
        c[0] = 1.0;
        let (mut deg, mut l) = (0, 0);
        while l < 7 {
            if l != j {
                let mut k = deg + 1;
                while k > 0 {
                    c[k] = c[k - 1] - POINTS[l] * c[k];
                    k -= 1;
                }
                c[0] *= -POINTS[l];
                deg += 1;
            }
            l += 1;
        }
        let mut k = 0;
        while k < 8 {
            bt[j][k] = c[k] as f32;
            k += 1;
        }
        j += 1;
    }
    bt
}

/// `Aᵀ` `[M × 8]` for output side `M`: `Aᵀ[i][j] = p_jⁱ`, the infinity column `e_{M−1}`.
const fn output_matrix<const M: usize>() -> [[f32; 8]; M] {
    let mut at = [[0f32; 8]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < 7 {
            at[i][j] = power(POINTS[j], i) as f32;
            j += 1;
        }
        i += 1;
    }
    at[M - 1][7] = 1.0;
    at
}

/// `A = (Aᵀ)ᵀ`.
const fn grad_matrix<const M: usize>() -> [[f32; M]; 8] {
    let at = output_matrix::<M>();
    let mut a = [[0f32; M]; 8];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < 8 {
            a[j][i] = at[i][j];
            j += 1;
        }
        i += 1;
    }
    a
}

/// `G` `[8 × R]`: `G[j][k] = p_jᵏ / q_j(p_j)`, the infinity row `e_{R−1}`.
const fn filter_matrix<const R: usize>() -> [[f32; R]; 8] {
    let mut g = [[0f32; R]; 8];
    let mut j = 0;
    while j < 7 {
        let (mut scale, mut l) = (1.0f64, 0);
        while l < 7 {
            if l != j {
                scale *= POINTS[j] - POINTS[l];
            }
            l += 1;
        }
        let mut k = 0;
        while k < R {
            g[j][k] = (power(POINTS[j], k) / scale) as f32;
            k += 1;
        }
        j += 1;
    }
    g[7][R - 1] = 1.0;
    g
}

/// `Gᵀ`.
const fn weight_matrix<const R: usize>() -> [[f32; 8]; R] {
    let g = filter_matrix::<R>();
    let mut gt = [[0f32; 8]; R];
    let mut j = 0;
    while j < 8 {
        let mut k = 0;
        while k < R {
            gt[k][j] = g[j][k];
            k += 1;
        }
        j += 1;
    }
    gt
}

/// `dst row a = Σ_i C[a][i] · src row i` over rows of `len` values for a compile-time matrix
/// `C` `[PA × P]`, [`LANES`] values at a time held in a local block (which LLVM keeps in
/// registers); zero coefficients are skipped and ones folded. Every output value is the same
/// sequence of products and sums in the full blocks and in the tail, so the result does not
/// depend on where a block starts.
#[inline(always)]
fn mix<const P: usize, const PA: usize, C: Coefs<P, PA>>(
    src: &[f32],
    src_row: impl Fn(usize) -> usize,
    dst: &mut [f32],
    dst_row: impl Fn(usize) -> usize,
    len: usize,
) {
    let full = len / LANES * LANES;
    for at in (0..full).step_by(LANES) {
        let mut x = [[0f32; LANES]; P];
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = src[src_row(i) + at..][..LANES]
                .try_into()
                .expect("a block of LANES values");
        }
        for (a, row) in C::apply(&x).iter().enumerate() {
            dst[dst_row(a) + at..][..LANES].copy_from_slice(row);
        }
    }
    if full < len {
        let w = len - full;
        let mut x = [[0f32; LANES]; P];
        for (i, xi) in x.iter_mut().enumerate() {
            xi[..w].copy_from_slice(&src[src_row(i) + full..][..w]);
        }
        for (a, row) in C::apply(&x).iter().enumerate() {
            dst[dst_row(a) + full..][..w].copy_from_slice(&row[..w]);
        }
    }
}

/// `Σ_i coef[i] · x[i]` lane by lane, skipping zero coefficients.
#[inline(always)]
fn combine<const P: usize>(coef: &[f32; P], x: &[[f32; LANES]; P]) -> [f32; LANES] {
    let mut acc = [0f32; LANES];
    for (c, xi) in coef.iter().zip(x) {
        if *c != 0.0 {
            for (s, v) in acc.iter_mut().zip(xi) {
                *s += c * v;
            }
        }
    }
    acc
}

/// `dst row a = Σ_i C[a][i] · src row i` over rows of `len` values ([`mix`]), compiled
/// for AVX-512, AVX2 and the baseline and picked at run time. The versions are the same
/// element-wise products and sums (no fused multiply-add), so they give the same bits; only
/// the register width differs.
#[allow(unsafe_code)]
fn pass<const P: usize, const PA: usize, C: Coefs<P, PA>>(
    src: &[f32],
    src_row: impl Fn(usize) -> usize,
    dst: &mut [f32],
    dst_row: impl Fn(usize) -> usize,
    len: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { pass_avx512::<P, PA, C>(src, src_row, dst, dst_row, len) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { pass_avx2::<P, PA, C>(src, src_row, dst, dst_row, len) };
        }
    }
    mix::<P, PA, C>(src, src_row, dst, dst_row, len)
}

/// Defines `$name`: [`pass`] compiled with the target feature `$feature` (wider registers,
/// the same operations).
macro_rules! pass_with {
    ($name:ident, $feature:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        fn $name<const P: usize, const PA: usize, C: Coefs<P, PA>>(
            src: &[f32],
            src_row: impl Fn(usize) -> usize,
            dst: &mut [f32],
            dst_row: impl Fn(usize) -> usize,
            len: usize,
        ) {
            mix::<P, PA, C>(src, src_row, dst, dst_row, len)
        }
    };
}

pass_with!(pass_avx512, "avx512f");
pass_with!(pass_avx2, "avx2");

/// How a chunk of samples is cut into output tiles and blocks of whole tile rows.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    /// Tiles per image row.
    across: usize,
    /// Tiles per image column.
    down: usize,
    /// Tiles per block (the rows of the products): a whole number of tile rows.
    len: usize,
}

impl Tiles {
    fn new(d: &ConvDims, t: &Transform) -> Tiles {
        let across = d.w.div_ceil(t.m);
        let fit = BLOCK_VALUES / (t.n * t.n * d.c.max(d.o));
        Tiles {
            across,
            down: d.h.div_ceil(t.m),
            len: {
                // A multiple of 16 tiles (the GEMM's tile) when whole rows that fit allow one;
                // never less than one tile row.
                let (rows, step) = ((fit / across).max(1), 16 / gcd(across, 16));
                let rows = if rows >= step {
                    rows / step * step
                } else {
                    rows
                };
                rows * across
            },
        }
    }
    fn per_sample(&self) -> usize {
        self.across * self.down
    }
    /// The sample and the tile row of tile `i` of a chunk.
    fn row_of(&self, i: usize) -> (usize, usize) {
        (i / self.per_sample(), i % self.per_sample() / self.across)
    }
}

/// How a chunk's images lie in a framed buffer: channels last, and each framed row split by
/// column phase (`x mod m`, the tile step), so that column `j` of every tile of a tile row is
/// one contiguous run (`[s][y][x mod m][x / m][c]`).
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Framed rows per sample.
    rows: usize,
    /// Column phases: the tile step `m`.
    m: usize,
    /// Framed columns per phase.
    q: usize,
    /// Channels.
    c: usize,
}

impl Frame {
    fn row_len(&self) -> usize {
        self.m * self.q * self.c
    }
    fn sample_len(&self) -> usize {
        self.rows * self.row_len()
    }
    /// Where framed column `x` starts within a framed row.
    fn column(&self, x: usize) -> usize {
        ((x % self.m) * self.q + x / self.m) * self.c
    }
}

/// A chunk's samples `[s, c, h, w]` into the layout of `f`, shifted by `pad` rows and columns
/// into a frame of zeros (every framed value outside the image is written 0).
fn channels_last(x: &[f32], [c, h, w]: [usize; 3], f: &Frame, pad: usize, out: &mut Vec<f32>) {
    let samples = x.len() / (c * h * w);
    if out.len() < samples * f.sample_len() {
        out.resize(samples * f.sample_len(), 0.0);
    }
    let rl = f.row_len();
    let columns: Vec<usize> = (0..w).map(|xx| f.column(xx + pad)).collect();
    for (s, sample) in x.chunks(c * h * w).enumerate() {
        let framed = &mut out[s * f.sample_len()..][..f.sample_len()];
        framed[..pad * rl].fill(0.0);
        framed[(pad + h) * rl..].fill(0.0);
        for y in 0..h {
            let row = &mut framed[(y + pad) * rl..][..rl];
            for xx in (0..pad).chain(pad + w..f.m * f.q) {
                row[f.column(xx)..][..c].fill(0.0);
            }
            for (ci, plane) in sample.chunks(h * w).enumerate() {
                for (at, v) in columns.iter().zip(&plane[y * w..][..w]) {
                    row[at + ci] = *v;
                }
            }
        }
    }
}

/// Work buffers of one chunk. Each worker thread keeps one set between calls ([`POOL`]):
/// every value a call reads it has written first, so nothing needs zeroing again, and the
/// buffers (a few MB) are not reallocated for every chunk of every layer.
#[derive(Default)]
struct Scratch {
    /// The chunk's input channels-last, framed (see [`channels_last`]).
    framed: Vec<f32>,
    /// The chunk's output gradient channels-last, framed (the weight gradient).
    framed_gy: Vec<f32>,
    /// The first pass of a 2-D transform.
    mid: Vec<f32>,
    /// Transformed inputs of a block, `[n²][tiles][c]`.
    v: Vec<f32>,
    /// Products (forward) or transformed output gradients (weight gradient), `[n²][tiles][o]`.
    prod: Vec<f32>,
}

/// The most values (32 MB) a thread keeps in its [`Scratch`] between calls; a layer that needs
/// more gets its buffers and frees them when done, so a node's memory after a large job
/// returns to where it was.
const KEEP_VALUES: usize = 8 * 1024 * 1024;

thread_local! {
    /// This thread's [`Scratch`].
    static POOL: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Scratch {
    /// Runs `f` with this thread's buffers, grown to what `d` needs (a fresh set if they are
    /// already in use further up this thread's stack).
    fn with<R>(d: &ConvDims, t: &Transform, tiles: &Tiles, f: impl FnOnce(&mut Scratch) -> R) -> R {
        POOL.with(|pool| {
            let mut fresh = Scratch::default();
            let mut held = pool.try_borrow_mut();
            let s = match held.as_deref_mut() {
                Ok(s) => s,
                Err(_) => &mut fresh,
            };
            let nn = t.n * t.n * tiles.len;
            for (buf, len) in [
                (&mut s.mid, t.n * t.m * (tiles.across + 1) * d.c.max(d.o)),
                (&mut s.v, nn * d.c),
                (&mut s.prod, nn * d.o),
            ] {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
            }
            let r = f(s);
            if s.values() > KEEP_VALUES {
                // A very large layer: give its buffers back rather than hold them for good.
                *s = Scratch::default();
            }
            r
        })
    }

    fn values(&self) -> usize {
        [
            &self.framed,
            &self.framed_gy,
            &self.mid,
            &self.v,
            &self.prod,
        ]
        .iter()
        .map(|b| b.len())
        .sum()
    }

    /// The chunk `x` `[s, c, h, w]` framed for input tiles: `k / 2` zeros before, enough
    /// after for the last tile's window.
    fn frame_input(&mut self, x: &[f32], d: &ConvDims, t: &Transform, tiles: &Tiles) -> Frame {
        let f = Frame {
            rows: tiles.down * t.m + t.r - 1,
            m: t.m,
            q: tiles.across + (t.n - 1) / t.m,
            c: d.c,
        };
        channels_last(x, [d.c, d.h, d.w], &f, d.k / 2, &mut self.framed);
        f
    }

    /// `v[ξ][k][·] = (Bᵀ d_k B)[ξ]` for tiles `first + k`, `k < len` (whole tile rows).
    fn transform_input(
        &mut self,
        t: &Transform,
        tiles: &Tiles,
        f: &Frame,
        [first, len]: [usize; 2],
    ) {
        for k0 in (0..len).step_by(tiles.across) {
            let (smp, ty) = tiles.row_of(first + k0);
            let at = (smp, ty, tiles.across);
            t.input_row(&self.framed, f, at, &mut self.mid, (&mut self.v, k0, len));
        }
    }
}

/// `U[ξ][o][c] = (G g Gᵀ)[ξ]` for every kernel of `weight` `[o, c, r, r]`: the rows of the
/// passes are `o · c` kernels wide.
fn filters(weight: &[f32], d: &ConvDims, t: &Transform) -> Vec<f32> {
    match t.r {
        3 => filters_r::<3>(weight, d.o * d.c),
        _ => filters_r::<5>(weight, d.o * d.c),
    }
}

/// [`filters`] for kernels of side `R`.
fn filters_r<const R: usize>(weight: &[f32], oc: usize) -> Vec<f32> {
    let by_tap = transpose(weight, oc, R * R);
    let mut mid = vec![0f32; 8 * R * oc];
    let mut u = vec![0f32; 64 * oc];
    for j in 0..R {
        let (src, dst) = (|i: usize| (i * R + j) * oc, |a: usize| (a * R + j) * oc);
        pass::<R, 8, FilterT<R>>(&by_tap, src, &mut mid, dst, oc);
    }
    for a in 0..8 {
        let (src, dst) = (|j: usize| (a * R + j) * oc, |b: usize| (a * 8 + b) * oc);
        pass::<R, 8, FilterT<R>>(&mid, src, &mut u, dst, oc);
    }
    u
}

/// `gW[o][c] = Gᵀ sums[·][o][c] G` for kernels of side `R`, as `[o, c, R, R]`.
fn unfilter_r<const R: usize>(sums: &[f32], oc: usize) -> Vec<f32> {
    let mut mid = vec![0f32; R * 8 * oc];
    let mut by_tap = vec![0f32; R * R * oc];
    for j in 0..8 {
        let (src, dst) = (|i: usize| (i * 8 + j) * oc, |a: usize| (a * 8 + j) * oc);
        pass::<8, R, WeightT<R>>(sums, src, &mut mid, dst, oc);
    }
    for a in 0..R {
        let (src, dst) = (|j: usize| (a * 8 + j) * oc, |b: usize| (a * R + b) * oc);
        pass::<8, R, WeightT<R>>(&mid, src, &mut by_tap, dst, oc);
    }
    transpose(&by_tap, R * R, oc)
}

/// `y = conv(x, weight) + bias` (ReLU after when `relu`), as [`super::conv_forward`], by
/// F(m×m, r×r): per chunk of samples, per block of tiles, the input transform, `n²` products
/// `V[ξ] [tiles × c] × U[ξ]ᵀ [c × o]`, and the output transform written into the output
/// planes.
pub(crate) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &ConvDims,
    relu: bool,
    t: &Transform,
) -> Vec<f32> {
    let (hw, per) = (d.h * d.w, d.chunk());
    let u = filters(weight, d, t);
    let tiles = Tiles::new(d, t);
    let mut y = vec![0f32; d.b * d.o * hw];
    y.par_chunks_mut(per * d.o * hw)
        .zip(x.par_chunks(per * d.c * hw))
        .for_each(|(y, x)| {
            Scratch::with(d, t, &tiles, |s| {
                forward_chunk(s, x, y, (&u, bias), d, t, &tiles)
            });
            if relu {
                super::relu_in_place(y);
            }
        });
    y
}

/// [`forward`] for one chunk of samples `x` into their outputs `y`, with the transformed
/// kernels `u` and the bias.
#[allow(clippy::too_many_arguments)]
fn forward_chunk(
    s: &mut Scratch,
    x: &[f32],
    y: &mut [f32],
    (u, bias): (&[f32], &[f32]),
    d: &ConvDims,
    t: &Transform,
    tiles: &Tiles,
) {
    let (hw, nn) = (d.h * d.w, t.n * t.n);
    let mut out = vec![0f32; t.m * t.m * tiles.across * d.o];
    let f = s.frame_input(x, d, t, tiles);
    let total = x.len() / (d.c * hw) * tiles.per_sample();
    for first in (0..total).step_by(tiles.len) {
        let len = (total - first).min(tiles.len);
        s.transform_input(t, tiles, &f, [first, len]);
        for xi in 0..nn {
            let dst = MatMut::rows(&mut s.prod[xi * len * d.o..][..len * d.o], len, d.o);
            let vx = Mat::rows(&s.v[xi * len * d.c..][..len * d.c], len, d.c);
            let ux = Mat::rows(&u[xi * d.o * d.c..][..d.o * d.c], d.o, d.c);
            matmul(dst, vx, ux.t(), false);
        }
        for k0 in (0..len).step_by(tiles.across) {
            t.output_row(&s.prod, (k0, len, d.o), tiles.across, &mut s.mid, &mut out);
            scatter(&out, bias, y, d, t.m, tiles, tiles.row_of(first + k0));
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Writes one tile row of outputs `out[u][v][tx][o]` (+ `bias[o]`) into the chunk's output
/// `y` `[s, o, h, w]` at tile row `(s, ty)`, clipped to the image.
fn scatter(
    out: &[f32],
    bias: &[f32],
    y: &mut [f32],
    d: &ConvDims,
    m: usize,
    tiles: &Tiles,
    (s, ty): (usize, usize),
) {
    let (hw, oy, run) = (d.h * d.w, ty * m, tiles.across * d.o);
    let sample = &mut y[s * d.o * hw..][..d.o * hw];
    for (o, (plane, b)) in sample.chunks_mut(hw).zip(bias).enumerate() {
        for u in 0..m.min(d.h - oy) {
            let line = &mut plane[(oy + u) * d.w..][..d.w];
            for (tx, piece) in line.chunks_mut(m).enumerate() {
                for (dx, v) in piece.iter_mut().enumerate() {
                    *v = out[(u * m + dx) * run + tx * d.o + o] + b;
                }
            }
        }
    }
}

/// The weight gradient of [`forward`] for the output gradient `gy` `[b, o, h, w]` (already
/// masked by a fused ReLU): `gW = Gᵀ [Σ_tiles (A gY Aᵀ) ⊙ (Bᵀ d B)] G`; the sums over tiles are
/// `n²` products `[o × tiles] × [tiles × c]` per block, accumulated per chunk, the chunks
/// added in order.
pub(crate) fn weight_grad(x: &[f32], gy: &[f32], d: &ConvDims, t: &Transform) -> Vec<f32> {
    let (hw, per, nn, oc) = (d.h * d.w, d.chunk(), t.n * t.n, d.o * d.c);
    let tiles = Tiles::new(d, t);
    let partial: Vec<Vec<f32>> = gy
        .par_chunks(per * d.o * hw)
        .zip(x.par_chunks(per * d.c * hw))
        .map(|(gy, x)| Scratch::with(d, t, &tiles, |s| weight_grad_chunk(s, x, gy, d, t, &tiles)))
        .collect();
    let mut sums = vec![0f32; nn * oc];
    for p in &partial {
        for (a, v) in sums.iter_mut().zip(p) {
            *a += v;
        }
    }
    match t.r {
        3 => unfilter_r::<3>(&sums, oc),
        _ => unfilter_r::<5>(&sums, oc),
    }
}

/// The sums `Σ_tiles (A gY Aᵀ) ⊙ (Bᵀ d B)`, `[n²][o][c]`, of one chunk (see [`weight_grad`]).
fn weight_grad_chunk(
    s: &mut Scratch,
    x: &[f32],
    gy: &[f32],
    d: &ConvDims,
    t: &Transform,
    tiles: &Tiles,
) -> Vec<f32> {
    let (hw, nn, oc) = (d.h * d.w, t.n * t.n, d.o * d.c);
    let mut sums = vec![0f32; nn * oc];
    let f = s.frame_input(x, d, t, tiles);
    let gf = Frame {
        rows: tiles.down * t.m,
        m: t.m,
        q: tiles.across,
        c: d.o,
    };
    channels_last(gy, [d.o, d.h, d.w], &gf, 0, &mut s.framed_gy);
    let total = x.len() / (d.c * hw) * tiles.per_sample();
    for first in (0..total).step_by(tiles.len) {
        let len = (total - first).min(tiles.len);
        s.transform_input(t, tiles, &f, [first, len]);
        for k0 in (0..len).step_by(tiles.across) {
            let (smp, ty) = tiles.row_of(first + k0);
            let at = (smp, ty, tiles.across);
            t.grad_row(&s.framed_gy, &gf, at, &mut s.mid, (&mut s.prod, k0, len));
        }
        for xi in 0..nn {
            let dst = MatMut::rows(&mut sums[xi * oc..][..oc], d.o, d.c);
            let g = Mat::rows(&s.prod[xi * len * d.o..][..len * d.o], len, d.o);
            let v = Mat::rows(&s.v[xi * len * d.c..][..len * d.c], len, d.c);
            matmul(dst, g.t(), v, true);
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread keeps the buffers of ordinary layers between calls and gives back those of a
    /// layer past [`KEEP_VALUES`].
    #[test]
    fn a_thread_keeps_small_buffers_and_frees_large_ones() {
        let t = Transform::new(4, 5);
        let small = ConvDims {
            b: 1,
            c: 32,
            h: 28,
            w: 28,
            o: 32,
            k: 5,
        };
        let large = ConvDims {
            c: 128,
            o: 128,
            w: 2048,
            h: 4,
            ..small
        };
        let held = || POOL.with(|p| p.borrow().values());
        Scratch::with(&small, &t, &Tiles::new(&small, &t), |_| ());
        let kept = held();
        assert!(kept > 0 && kept <= KEEP_VALUES);
        Scratch::with(&large, &t, &Tiles::new(&large, &t), |s| {
            assert!(s.values() > KEEP_VALUES)
        });
        assert_eq!(held(), 0);
    }

    /// The hand-written sequences equal the matrices they stand for (up to rounding).
    #[test]
    fn cheaper_sequences_equal_their_matrices() {
        fn check<const I: usize, const O: usize, C: Coefs<I, O>>() {
            let x: [[f32; LANES]; I] = std::array::from_fn(|i| {
                std::array::from_fn(|z| ((i * 37 + z * 11) % 23) as f32 - 11.0)
            });
            let fast = C::apply(&x);
            for (row, coef) in fast.iter().zip(&C::L) {
                let slow = combine(coef, &x);
                for (a, b) in row.iter().zip(&slow) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
        }
        check::<8, 8, InputT>();
        check::<8, 4, OutputT<4>>();
        check::<4, 8, GradT<4>>();
    }

    /// The 1-D identity `y_i = Σ_k g_k d_{i+k}` holds for both transforms: small integers in,
    /// so `f32` rounding stays far below the tolerance.
    #[test]
    fn transforms_compute_a_correlation() {
        fn check<const M: usize, const R: usize>()
        where
            OutputT<M>: Coefs<8, M>,
        {
            let g: [f32; R] = std::array::from_fn(|i| i as f32 - 1.5);
            let d: [f32; 8] = std::array::from_fn(|i| (i * 7 % 5) as f32 - 2.0);
            let gg: [f32; 8] =
                std::array::from_fn(|j| (0..R).map(|k| FilterT::<R>::L[j][k] * g[k]).sum());
            let bd: [f32; 8] =
                std::array::from_fn(|j| (0..8).map(|i| InputT::L[j][i] * d[i]).sum());
            for i in 0..M {
                let got: f32 = (0..8).map(|j| OutputT::<M>::L[i][j] * gg[j] * bd[j]).sum();
                let want: f32 = (0..R).map(|k| g[k] * d[i + k]).sum();
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "F({M},{R}) y{i}: {got} vs {want}"
                );
            }
            for (k, row) in WeightT::<R>::L.iter().enumerate() {
                let column: Vec<f32> = FilterT::<R>::L.iter().map(|r| r[k]).collect();
                assert_eq!(row.to_vec(), column, "Gᵀ is G transposed");
            }
        }
        check::<6, 3>();
        check::<4, 5>();
    }
}
