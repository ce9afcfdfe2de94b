//! Direct "same" convolution, tap by tap, with fused multiply-adds: no patch matrix and no
//! GEMM packing (ADR 0012, fifth session). Used for the convolutions the Winograd transforms
//! do not take (3×3 to 7×7 kernels), forward and for the input gradient, on CPUs with FMA.
//!
//! Each input plane is copied once into a zero-bordered frame whose rows are `wp = w + 2p`
//! long (`p = k / 2`), stored flat: output `(y, x)` is frame position `q = y·wp + x`, and its
//! tap `(dy, dx)` reads frame position `q + dy·wp + dx`. So a tap of a run of [`LANES`]
//! consecutive outputs is one run of consecutive frame values, whatever the image width; the
//! positions with `x >= w` between rows are computed and dropped (`2p / wp` of the work, 12.5 %
//! for 3×3 kernels at 14×14).
//!
//! A block of `OB` output channels × `Q` runs stays in registers while every input channel
//! and tap is added into it: per tap, `Q` loads and `OB` broadcasts feed `OB·Q` vector
//! multiply-adds.
//!
//! Determinism: every output is `Σ_ci Σ_tap w·x` folded by fused multiply-adds from zero, in
//! channel then tap order, then plus its bias: the same operations for any register width or
//! block shape, so the AVX-512 and AVX2 versions give the same bits, and each output is written
//! by one task. CPUs without FMA keep the im2col path (another instruction-set class).

use rayon::prelude::*;

use super::ConvDims;

/// Outputs per run (one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;

/// The instruction sets the kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX-512F and FMA: blocks of 8 output channels × 3 runs (24 of 32 registers).
    Avx512,
    /// AVX2 and FMA: blocks of 4 output channels × 1 run (8 of 16 registers).
    Avx2,
}

impl Isa {
    /// This CPU's, if it has one of them.
    fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("fma") && has!("avx512f") {
                return Some(Isa::Avx512);
            }
            if has!("fma") && has!("avx2") {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Every set this CPU has (the tests compare their bits).
    #[cfg(test)]
    fn all_here() -> Vec<Isa> {
        let mut found: Vec<Isa> = Isa::detect().into_iter().collect();
        #[cfg(target_arch = "x86_64")]
        if found == [Isa::Avx512] && std::arch::is_x86_feature_detected!("avx2") {
            found.push(Isa::Avx2);
        }
        found
    }

    /// Output channels per block.
    fn channels(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 => 4,
        }
    }

    /// Runs per block.
    fn runs(self) -> usize {
        match self {
            Isa::Avx512 => 3,
            Isa::Avx2 => 1,
        }
    }
}

/// Whether this CPU runs the kernel (x86-64 with FMA and AVX2 or AVX-512F).
pub(super) fn supported() -> bool {
    Isa::detect().is_some()
}

/// Whether the kernel is meant for `d` (odd kernels from 3×3 to 7×7; 1×1 products need no
/// patch matrix and stay GEMMs).
pub(super) fn suits(d: &ConvDims) -> bool {
    matches!(d.k, 3 | 5 | 7) && supported()
}

/// The flat frame of one sample: `c` planes of `plane` values, rows of `wp`.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Frame row length, `w + 2p`.
    wp: usize,
    /// Runs of outputs per plane: `h·wp` positions rounded up to whole blocks of runs (a
    /// block narrower than the registers allow compiles badly: no remainder blocks).
    runs: usize,
    /// Values per plane: the runs plus the farthest tap's reach, `(k − 1)(wp + 1)`.
    plane: usize,
}

impl Frame {
    fn new(d: &ConvDims, isa: Isa) -> Frame {
        let wp = d.w + 2 * (d.k / 2);
        let runs = (d.h * wp).div_ceil(LANES).next_multiple_of(isa.runs());
        Frame {
            wp,
            runs,
            plane: runs * LANES + (d.k - 1) * (wp + 1),
        }
    }

    /// Copies sample `x` `[c, h, w]` into the frame's interior (the border stays zero), masked
    /// where `mask` (a ReLU's output) is `<= 0`.
    fn fill(&self, d: &ConvDims, x: &[f32], mask: Option<&[f32]>, frame: &mut [f32]) {
        let (p, hw) = (d.k / 2, d.h * d.w);
        for (ci, plane) in frame.chunks_mut(self.plane).take(d.c).enumerate() {
            for y in 0..d.h {
                let dst = &mut plane[(y + p) * self.wp + p..][..d.w];
                let src = &x[ci * hw + y * d.w..][..d.w];
                match mask {
                    Some(m) => super::masked_copy(dst, src, &m[ci * hw + y * d.w..][..d.w]),
                    None => dst.copy_from_slice(src),
                }
            }
        }
    }
}

/// The weight `[o, c, k, k]` as blocks of `ob` output channels, `[o / ob][c][k·k][ob]` (the
/// last block padded with zeros): the `ob` values one tap broadcasts lie together.
fn blocked(weight: &[f32], d: &ConvDims, ob: usize) -> Vec<f32> {
    let kk = d.k * d.k;
    let mut wr = vec![0f32; d.o.div_ceil(ob) * ob * d.c * kk];
    for (o, filters) in weight.chunks(d.c * kk).enumerate() {
        let block = &mut wr[(o / ob) * ob * d.c * kk..][..ob * d.c * kk];
        for (i, v) in filters.iter().enumerate() {
            block[i * ob + o % ob] = *v;
        }
    }
    wr
}

/// `y = conv(x, weight) + bias` ("same", stride 1), then ReLU when `relu`; `x` masked first
/// where `mask` (a ReLU's output shaped like `x`) is `<= 0`. `bias` may be empty (none).
/// Samples in chunks of [`ConvDims::chunk`] in parallel. Only where [`supported`].
pub(super) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &ConvDims,
    relu: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let isa = Isa::detect().expect("taps::forward runs only where taps::supported()");
    forward_with(isa, x, weight, bias, d, relu, mask)
}

/// [`forward`] compiled for `isa`.
fn forward_with(
    isa: Isa,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    d: &ConvDims,
    relu: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let f = Frame::new(d, isa);
    let wr = blocked(weight, d, isa.channels());
    let (hw, per) = (d.hw(), d.chunk());
    let mut y = vec![0f32; d.b * d.o * hw];
    y.par_chunks_mut(per * d.o * hw)
        .enumerate()
        .for_each(|(i, y)| {
            let mut frame = vec![0f32; d.c * f.plane];
            let mut framed = vec![0f32; d.o * f.runs * LANES];
            for (j, ys) in y.chunks_mut(d.o * hw).enumerate() {
                let s = i * per + j;
                let xs = &x[s * d.c * hw..][..d.c * hw];
                f.fill(
                    d,
                    xs,
                    mask.map(|m| &m[s * d.c * hw..][..d.c * hw]),
                    &mut frame,
                );
                let job = Sample {
                    d,
                    f: &f,
                    frame: &frame,
                    wr: &wr,
                    bias,
                    relu,
                };
                run_sample(isa, &job, &mut framed, ys);
            }
        });
    y
}

/// One sample's convolution: its frame, the blocked weight and where each tap reads.
struct Sample<'a> {
    d: &'a ConvDims,
    f: &'a Frame,
    frame: &'a [f32],
    wr: &'a [f32],
    bias: &'a [f32],
    relu: bool,
}

/// [`Sample::all`] compiled for `isa`.
#[allow(unsafe_code)]
fn run_sample(isa: Isa, job: &Sample<'_>, framed: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `Isa::detect` found AVX-512F and FMA on this CPU.
        Isa::Avx512 => unsafe { sample_avx512(job, framed, out) },
        // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
        Isa::Avx2 => unsafe { sample_avx2(job, framed, out) },
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no {isa:?} outside x86-64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn sample_avx512(job: &Sample<'_>, framed: &mut [f32], out: &mut [f32]) {
    match job.d.k {
        3 => job.all::<8, 3, 3>(framed, out),
        5 => job.all::<8, 3, 5>(framed, out),
        _ => job.all::<8, 3, 7>(framed, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sample_avx2(job: &Sample<'_>, framed: &mut [f32], out: &mut [f32]) {
    match job.d.k {
        3 => job.all::<4, 1, 3>(framed, out),
        5 => job.all::<4, 1, 5>(framed, out),
        _ => job.all::<4, 1, 7>(framed, out),
    }
}

impl Sample<'_> {
    /// Every block of `OB` output channels × `Q` runs into the output frame `framed`, then
    /// the output planes `out` from it; kernels of side `K` (`d.k`).
    #[inline(always)]
    fn all<const OB: usize, const Q: usize, const K: usize>(
        &self,
        framed: &mut [f32],
        out: &mut [f32],
    ) {
        let per = OB * self.d.c * K * K;
        for o0 in (0..self.d.o).step_by(OB) {
            let wr = &self.wr[o0 / OB * per..][..per];
            for r in (0..self.f.runs).step_by(Q) {
                let acc = self.block::<OB, Q, K>(wr, r * LANES);
                self.store(&acc, framed, o0, r * LANES);
            }
        }
        self.unframe(framed, out);
    }

    /// The sums of `OB` output channels over `Q` runs from frame position `q0`. The taps of
    /// one kernel row read one slice of the frame row (compile-time sizes: no bounds check
    /// per tap).
    #[inline(always)]
    fn block<const OB: usize, const Q: usize, const K: usize>(
        &self,
        wr: &[f32],
        q0: usize,
    ) -> [[[f32; LANES]; Q]; OB] {
        let mut acc = [[[0f32; LANES]; Q]; OB];
        let wp = self.f.wp;
        for ci in 0..self.d.c {
            let plane = &self.frame[ci * self.f.plane..][..self.f.plane];
            let wc = &wr[ci * K * K * OB..][..K * K * OB];
            for dy in 0..K {
                let row = &plane[q0 + dy * wp..][..Q * LANES + K - 1];
                for dx in 0..K {
                    let v: [[f32; LANES]; Q] = std::array::from_fn(|j| {
                        row[j * LANES + dx..][..LANES]
                            .try_into()
                            .expect("a run of LANES values")
                    });
                    let wt: &[f32; OB] = wc[(dy * K + dx) * OB..][..OB]
                        .try_into()
                        .expect("OB weights");
                    for (acc, w) in acc.iter_mut().zip(wt) {
                        for (acc, v) in acc.iter_mut().zip(&v) {
                            for (a, x) in acc.iter_mut().zip(v) {
                                *a = w.mul_add(*x, *a);
                            }
                        }
                    }
                }
            }
        }
        acc
    }

    /// Writes a block's sums into the output frame `[o][runs · LANES]` (whole runs).
    #[inline(always)]
    fn store<const OB: usize, const Q: usize>(
        &self,
        acc: &[[[f32; LANES]; Q]; OB],
        framed: &mut [f32],
        o0: usize,
        q0: usize,
    ) {
        let len = self.f.runs * LANES;
        for (i, acc) in acc.iter().enumerate().take(self.d.o.saturating_sub(o0)) {
            let run = &mut framed[(o0 + i) * len + q0..][..Q * LANES];
            for (dst, v) in run.chunks_exact_mut(LANES).zip(acc) {
                dst.copy_from_slice(v);
            }
        }
    }

    /// The output planes from the output frame: the positions inside the image, plus bias,
    /// then ReLU.
    fn unframe(&self, framed: &[f32], out: &mut [f32]) {
        let (d, wp, len) = (self.d, self.f.wp, self.f.runs * LANES);
        for (o, plane) in out.chunks_mut(d.hw()).enumerate() {
            let b = self.bias.get(o).copied();
            for (y, row) in plane.chunks_mut(d.w).enumerate() {
                let src = &framed[o * len + y * wp..][..d.w];
                for (t, v) in row.iter_mut().zip(src) {
                    let v = match b {
                        Some(b) => *v + b,
                        None => *v,
                    };
                    *t = if self.relu && v <= 0.0 { 0.0 } else { v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, mul: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(mul) % 97) as f32 - 48.0) / 40.0)
            .collect()
    }

    /// The convolution from its definition, summed in the kernel's order (channel, then tap)
    /// with fused multiply-adds: the kernel must give exactly these bits.
    fn reference(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        d: &ConvDims,
        mask: Option<&[f32]>,
    ) -> Vec<f32> {
        let (p, hw) = (d.k as isize / 2, d.hw());
        let mut y = vec![0f32; d.b * d.o * hw];
        for s in 0..d.b {
            for o in 0..d.o {
                for yy in 0..d.h {
                    for xx in 0..d.w {
                        let mut acc = 0f32;
                        for ci in 0..d.c {
                            for dy in 0..d.k {
                                for dx in 0..d.k {
                                    let (sy, sx) = (
                                        yy as isize + dy as isize - p,
                                        xx as isize + dx as isize - p,
                                    );
                                    let inside = sy >= 0
                                        && sx >= 0
                                        && (sy as usize) < d.h
                                        && (sx as usize) < d.w;
                                    let i = (s * d.c + ci) * hw
                                        + (sy.max(0) as usize) * d.w
                                        + sx.max(0) as usize;
                                    let v = match (inside, mask) {
                                        (false, _) => 0.0,
                                        (true, Some(m)) if m[i] <= 0.0 => 0.0,
                                        (true, _) => x[i],
                                    };
                                    let w = wt[((o * d.c + ci) * d.k + dy) * d.k + dx];
                                    acc = w.mul_add(v, acc);
                                }
                            }
                        }
                        y[(s * d.o + o) * hw + yy * d.w + xx] =
                            acc + bias.get(o).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        y
    }

    /// Exact bits of the definition in the kernel's order, on every instruction set this CPU
    /// has, for image widths below, at and above one run, channel counts that leave a partial block, every kernel size, with and
    /// without an input mask, over several chunks of samples.
    #[test]
    fn taps_give_the_bits_of_the_definition() {
        if !supported() {
            return;
        }
        for (b, c, h, w, o, k) in [
            (3, 2, 5, 7, 3, 3),
            (11, 3, 14, 14, 9, 3),
            (2, 4, 9, 20, 8, 5),
            (2, 1, 28, 28, 16, 7),
        ] {
            let d = ConvDims { b, c, h, w, o, k };
            let x = ramp(b * c * h * w, 7);
            let wt = ramp(o * c * k * k, 13);
            let bias = ramp(o, 5);
            let mask = ramp(b * c * h * w, 3);
            let relu: Vec<f32> = reference(&x, &wt, &bias, &d, None)
                .iter()
                .map(|v| if *v <= 0.0 { 0.0 } else { *v })
                .collect();
            for isa in Isa::all_here() {
                assert_eq!(
                    forward_with(isa, &x, &wt, &bias, &d, false, None),
                    reference(&x, &wt, &bias, &d, None),
                    "{isa:?} {d:?}"
                );
                assert_eq!(
                    forward_with(isa, &x, &wt, &[], &d, false, Some(&mask)),
                    reference(&x, &wt, &[], &d, Some(&mask)),
                    "{isa:?} {d:?}"
                );
                assert_eq!(forward_with(isa, &x, &wt, &bias, &d, true, None), relu);
            }
        }
    }
}
