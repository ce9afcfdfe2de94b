//! The scattering transform of images (Mallat 2012; Bruna and Mallat 2013), order 2, as
//! kymatio's `Scattering2D` defines it: fixed Morlet wavelets at `J` scales and `L` angles,
//! each followed by a modulus, averaged by a Gaussian low-pass and subsampled by `2^J`.
//!
//! It is a **fixed, data-independent feature extractor**: no parameter is learned, so features
//! computed from private records cost no privacy, and a linear model or small network trained
//! on them with DP-SGD reaches far higher accuracy at a given ε than one trained on pixels
//! (Tramèr and Boneh, *Differentially private learning needs better features*, ICLR 2021).
//!
//! The computation follows kymatio 0.3's definition step by step (reflect padding to a multiple
//! of `2^J` plus a border, products in the Fourier domain, subsampling by periodisation in the
//! Fourier domain, unpadding by one sample per side), so the features agree with kymatio's to
//! float precision (a test compares them with kymatio's own output). Each channel is then
//! normalised per image and group of channels (group norm without parameters, as Tramèr and
//! Boneh do), which uses only the image itself. Arithmetic is `f64` in a fixed order, the FFTs
//! rustfft's scalar code: the same bits on every CPU (the filters use the platform's `exp`,
//! `sin` and `cos`, computed once per transform).

use std::f64::consts::PI;
use std::sync::Arc;

use hivemesh_evolve::arch::Shape;
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlannerScalar};

use crate::data::{Dataset, Values};
use crate::error::TrainError;

/// The settings of a scattering transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScatterSpec {
    /// Scales `J` (1 ..= 4): the output is subsampled by `2^J`.
    pub scales: u32,
    /// Angles `L` per scale (1 ..= 16).
    pub angles: u32,
    /// Groups of the per-image group normalisation (0: none); divides the channel count.
    pub groups: u32,
}

impl ScatterSpec {
    /// The usual setting for digits: `J = 2`, `L = 8`, 27 groups (81 channels).
    pub const DEFAULT: ScatterSpec = ScatterSpec {
        scales: 2,
        angles: 8,
        groups: 27,
    };

    /// The padded side for `h × w` images (square: the larger side decides), after checking
    /// the settings and the size.
    fn padded(&self, h: u32, w: u32) -> Result<usize, TrainError> {
        let bad = |m: String| Err(TrainError::Options(m));
        if !(1..=4).contains(&self.scales) || !(1..=16).contains(&self.angles) {
            return bad(format!(
                "scattering needs 1 to 4 scales and 1 to 16 angles, not J = {} and L = {}",
                self.scales, self.angles
            ));
        }
        let ch = self.channels();
        if self.groups != 0 && !ch.is_multiple_of(self.groups) {
            return bad(format!(
                "scattering's {ch} channels cannot be split into {} groups",
                self.groups
            ));
        }
        let k = 1usize << self.scales;
        let (h, w) = (h as usize, w as usize);
        let m = ((h.max(w) + k) / k + 1) * k;
        // Reflect padding needs each side's padding below the side (pad ≤ side − 1 on both ends).
        if h < k || w < k || m - h + 2 > 2 * h || m - w + 2 > 2 * w || h.max(w) > 512 {
            return bad(format!(
                "a {h}x{w} image is too small or too large for scattering at J = {} \
                 (each side from 2^J to 512)",
                self.scales
            ));
        }
        Ok(m)
    }

    /// The shape of the features of `c × h × w` images: `c · channels × (m/2^J − 2)²`, `m`
    /// the padded side; checked as [`Scattering::new`] checks, without building the filters.
    pub fn output(&self, input: Shape) -> Result<Shape, TrainError> {
        let Shape::Image { c, h, w } = input else {
            return Err(TrainError::Options(
                "scattering needs images, and the samples are flat".into(),
            ));
        };
        let s = (self.padded(h, w)? >> self.scales) as u32 - 2;
        Ok(Shape::Image {
            c: c * self.channels(),
            h: s,
            w: s,
        })
    }

    /// Output channels per input channel: `1 + JL + L²J(J−1)/2`.
    pub fn channels(&self) -> u32 {
        let (j, l) = (self.scales, self.angles);
        1 + j * l + l * l * j * (j.saturating_sub(1)) / 2
    }
}

/// A complex number (just what the transform needs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct C {
    /// Real part.
    re: f64,
    /// Imaginary part.
    im: f64,
}

impl C {
    fn mul(self, o: C) -> C {
        C {
            re: self.re * o.re - self.im * o.im,
            im: self.re * o.im + self.im * o.re,
        }
    }
    fn scale(self, s: f64) -> C {
        C {
            re: self.re * s,
            im: self.im * s,
        }
    }
}

/// 2-D DFTs of `n × n` grids (rustfft's scalar planner: no run-time choice of SIMD code, so
/// the same bits on every CPU).
#[derive(Clone)]
struct Dft {
    /// Points per side.
    n: usize,
    /// The forward 1-D transform.
    fwd: Arc<dyn Fft<f64>>,
    /// The inverse 1-D transform (unnormalised).
    inv: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for Dft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dft({})", self.n)
    }
}

impl Dft {
    fn new(n: usize) -> Dft {
        let mut planner = FftPlannerScalar::new();
        Dft {
            n,
            fwd: planner.plan_fft_forward(n),
            inv: planner.plan_fft_inverse(n),
        }
    }

    /// The 2-D DFT of an `n × n` grid (inverse: divided by `n²`, as `ifft2`).
    fn apply(&self, x: &[C], inverse: bool) -> Vec<C> {
        let n = self.n;
        let plan = if inverse { &self.inv } else { &self.fwd };
        let mut buf: Vec<Complex<f64>> = x.iter().map(|c| Complex::new(c.re, c.im)).collect();
        // Rows, then columns (by transposing), then back.
        plan.process(&mut buf);
        let mut t = vec![Complex::new(0.0, 0.0); n * n];
        for r in 0..n {
            for c in 0..n {
                t[c * n + r] = buf[r * n + c];
            }
        }
        plan.process(&mut t);
        let s = if inverse { 1.0 / (n * n) as f64 } else { 1.0 };
        let mut out = vec![C::default(); n * n];
        for r in 0..n {
            for c in 0..n {
                let v = t[c * n + r];
                out[r * n + c] = C {
                    re: v.re * s,
                    im: v.im * s,
                };
            }
        }
        out
    }
}

/// The π of kymatio's Gabor normalisation: the literal 3.1415, not π (the features match its
/// output only with it).
#[allow(clippy::approx_constant)]
const KYMATIO_PI: f64 = 3.1415;

/// A Gabor filter on an `m × m` grid, periodised over 5 × 5 copies (kymatio's `gabor_2d`).
fn gabor(m: usize, sigma: f64, theta: f64, xi: f64, slant: f64) -> Vec<C> {
    // kymatio builds its rotation in f32.
    let (c, s) = ((theta.cos() as f32) as f64, (theta.sin() as f32) as f64);
    let d = slant * slant;
    // R · diag(1, d) · R⁻¹ / (2σ²)
    let k = 2.0 * sigma * sigma;
    let c00 = (c * c + s * s * d) / k;
    let c01 = (c * s - s * c * d) / k;
    let c11 = (s * s + c * c * d) / k;
    let mut g = vec![C::default(); m * m];
    let (cos_t, sin_t) = (theta.cos(), theta.sin());
    for ex in -2i64..=2 {
        for ey in -2i64..=2 {
            for i in 0..m {
                let x = (ex * m as i64 + i as i64) as f64;
                for j in 0..m {
                    let y = (ey * m as i64 + j as i64) as f64;
                    let re = -(c00 * x * x + 2.0 * c01 * x * y + c11 * y * y);
                    let im = x * xi * cos_t + y * xi * sin_t;
                    let e = re.exp();
                    let v = &mut g[i * m + j];
                    v.re += e * im.cos();
                    v.im += e * im.sin();
                }
            }
        }
    }
    let norm = 2.0 * KYMATIO_PI * sigma * sigma / slant;
    g.iter().map(|v| v.scale(1.0 / norm)).collect()
}

/// A Morlet wavelet: a Gabor filter minus the Gaussian that zeroes its mean.
fn morlet(m: usize, sigma: f64, theta: f64, xi: f64, slant: f64) -> Vec<C> {
    let wave = gabor(m, sigma, theta, xi, slant);
    let env = gabor(m, sigma, theta, 0.0, slant);
    let sum = |v: &[C]| {
        v.iter().fold(C::default(), |a, b| C {
            re: a.re + b.re,
            im: a.im + b.im,
        })
    };
    let (sw, se) = (sum(&wave), sum(&env));
    let den = se.re * se.re + se.im * se.im;
    let k = C {
        re: (sw.re * se.re + sw.im * se.im) / den,
        im: (sw.im * se.re - sw.re * se.im) / den,
    };
    wave.iter()
        .zip(&env)
        .map(|(w, e)| {
            let p = k.mul(*e);
            C {
                re: w.re - p.re,
                im: w.im - p.im,
            }
        })
        .collect()
}

/// A filter's Fourier transform (real part) periodised to resolution `res` (`m / 2^res`
/// points): the band between the kept low and high frequencies zeroed, the rest folded.
fn periodise(f: &[f64], m: usize, res: u32) -> Vec<f64> {
    let k = 1usize << res;
    let n = m / k;
    let lo = (m as f64 * 0.5f64.powi(res as i32 + 1)) as usize;
    let len = (m as f64 * (1.0 - 0.5f64.powi(res as i32))) as usize;
    let kept = |i: usize| !(lo..lo + len).contains(&i);
    let mut out = vec![0.0; n * n];
    for a in 0..n {
        for b in 0..n {
            let mut acc = 0.0;
            for i in 0..k {
                for j in 0..k {
                    let (r, c) = (a + i * n, b + j * n);
                    if kept(r) && kept(c) {
                        acc += f[r * m + c];
                    }
                }
            }
            out[a * n + b] = acc;
        }
    }
    out
}

/// One wavelet: its scale and its Fourier transform at resolutions `0..`.
#[derive(Debug, Clone)]
struct Wavelet {
    /// Scale `j`.
    j: u32,
    /// At resolution `r`: `(m / 2^r)²` real values.
    levels: Vec<Vec<f64>>,
}

/// A scattering transform for images of one size.
#[derive(Debug, Clone)]
pub struct Scattering {
    /// The settings.
    spec: ScatterSpec,
    /// Input height and width.
    h: usize,
    /// See `h`.
    w: usize,
    /// The padded side (a multiple of `2^J`, square).
    m: usize,
    /// Padding above / left of the image.
    top: usize,
    /// See `top`.
    left: usize,
    /// The wavelets, scale-major then angle.
    psi: Vec<Wavelet>,
    /// The low-pass at resolutions `0..J`.
    phi: Vec<Vec<f64>>,
    /// DFTs at `m / 2^r` points, `r` in `0..=J`.
    dft: Vec<Dft>,
}

impl Scattering {
    /// Builds the filters for `h × w` images (square after padding: the larger side decides).
    pub fn new(spec: ScatterSpec, h: u32, w: u32) -> Result<Scattering, TrainError> {
        let m = spec.padded(h, w)?;
        let (h, w) = (h as usize, w as usize);
        let (top, left) = ((m - h) / 2, (m - w) / 2);
        let jj = spec.scales;
        let l = spec.angles;
        let dft: Vec<Dft> = (0..=jj).map(|r| Dft::new(m >> r)).collect();
        let real_ft =
            |g: Vec<C>| -> Vec<f64> { dft[0].apply(&g, false).iter().map(|c| c.re).collect() };
        let mut psi = Vec::new();
        for j in 0..jj {
            for t in 0..l {
                // kymatio: (int(L - L/2 - 1) - t)·π/L, with L/2 a float division.
                let first = (l as f64 - l as f64 / 2.0 - 1.0) as i64;
                let theta = (first - t as i64) as f64 * PI / l as f64;
                let sigma = 0.8 * f64::from(1u32 << j);
                let xi = 0.75 * PI / f64::from(1u32 << j);
                let f = real_ft(morlet(m, sigma, theta, xi, 4.0 / l as f64));
                let levels = (0..(j + 1).min((jj - 1).max(1)))
                    .map(|r| periodise(&f, m, r))
                    .collect();
                psi.push(Wavelet { j, levels });
            }
        }
        let f = real_ft(gabor(m, 0.8 * f64::from(1u32 << (jj - 1)), 0.0, 0.0, 1.0));
        let phi = (0..jj).map(|r| periodise(&f, m, r)).collect();
        Ok(Scattering {
            spec,
            h,
            w,
            m,
            top,
            left,
            psi,
            phi,
            dft,
        })
    }

    /// The shape of one image's features: `channels × (m/2^J − 2) × (m/2^J − 2)` per input
    /// channel.
    pub fn out_shape(&self, in_channels: u32) -> Shape {
        let s = (self.m >> self.spec.scales) as u32 - 2;
        Shape::Image {
            c: in_channels * self.spec.channels(),
            h: s,
            w: s,
        }
    }
}

/// Fourier-domain subsampling by `k` of an `n × n` grid: the mean of the `k × k` aliased
/// copies (the transform of the signal sampled every `k` points).
fn subsample(x: &[C], n: usize, k: usize) -> Vec<C> {
    let s = n / k;
    let mut out = vec![C::default(); s * s];
    let inv = 1.0 / (k * k) as f64;
    for a in 0..s {
        for b in 0..s {
            let mut acc = C::default();
            for i in 0..k {
                for j in 0..k {
                    let v = x[(a + i * s) * n + b + j * s];
                    acc.re += v.re;
                    acc.im += v.im;
                }
            }
            out[a * s + b] = acc.scale(inv);
        }
    }
    out
}

/// `x ⊙ f` for a real filter.
fn filtered(x: &[C], f: &[f64]) -> Vec<C> {
    x.iter().zip(f).map(|(v, g)| v.scale(*g)).collect()
}

impl Scattering {
    /// The DFT at resolution `r` (`m / 2^r` points).
    fn dft_at(&self, n: usize) -> &Dft {
        let r = (self.m / n).trailing_zeros() as usize;
        &self.dft[r]
    }

    /// `|ifft(x)|` then its DFT again.
    fn modulus_ft(&self, x: &[C], n: usize) -> Vec<C> {
        let d = self.dft_at(n);
        let u: Vec<C> = d
            .apply(x, true)
            .iter()
            .map(|v| C {
                re: v.re.hypot(v.im),
                im: 0.0,
            })
            .collect();
        d.apply(&u, false)
    }

    /// Low-pass at resolution `r`, subsample to `m / 2^J`, back to space, unpad: appended to
    /// `out`.
    fn average(&self, x: &[C], n: usize, r: usize, out: &mut Vec<f32>) {
        let s = self.m >> self.spec.scales;
        let y = subsample(&filtered(x, &self.phi[r]), n, n / s);
        let v = self.dft_at(s).apply(&y, true);
        for a in 1..s - 1 {
            for b in 1..s - 1 {
                out.push(v[a * s + b].re as f32);
            }
        }
    }

    /// The reflect-padded image (`m × m`) as complex values.
    fn padded(&self, img: &[f32]) -> Vec<C> {
        let reflect = |p: usize, off: usize, len: usize| {
            let i = p as i64 - off as i64;
            let i = if i < 0 { -i } else { i };
            let last = len as i64 - 1;
            (if i > last { 2 * last - i } else { i }) as usize
        };
        let m = self.m;
        let mut x = vec![C::default(); m * m];
        for r in 0..m {
            let sr = reflect(r, self.top, self.h);
            for c in 0..m {
                let sc = reflect(c, self.left, self.w);
                x[r * m + c].re = f64::from(img[sr * self.w + sc]);
            }
        }
        x
    }

    /// One channel's coefficients, kymatio's order: the low-pass, the first order (scale-major,
    /// then angle), the second order (by first wavelet, then second), `(m/2^J − 2)²` each.
    fn channel(&self, img: &[f32], out: &mut Vec<f32>) {
        let m = self.m;
        let u0 = self.dft[0].apply(&self.padded(img), false);
        self.average(&u0, m, 0, out);
        let mut firsts = Vec::with_capacity(self.psi.len());
        for p in &self.psi {
            let mut u1 = filtered(&u0, &p.levels[0]);
            let n1 = m >> p.j;
            if p.j > 0 {
                u1 = subsample(&u1, m, 1 << p.j);
            }
            let u1 = self.modulus_ft(&u1, n1);
            self.average(&u1, n1, p.j as usize, out);
            firsts.push((p.j, n1, u1));
        }
        for (j1, n1, u1) in &firsts {
            for p in self.psi.iter().filter(|p| p.j > *j1) {
                let u2 = filtered(u1, &p.levels[*j1 as usize]);
                let u2 = subsample(&u2, *n1, 1 << (p.j - j1));
                let n2 = m >> p.j;
                let u2 = self.modulus_ft(&u2, n2);
                self.average(&u2, n2, p.j as usize, out);
            }
        }
    }

    /// The features of one image (`c × h × w` values, row-major), group-normalised if the
    /// spec says so.
    pub fn transform(&self, img: &[f32], in_channels: u32) -> Vec<f32> {
        let plane = self.h * self.w;
        let mut out = Vec::new();
        for c in 0..in_channels as usize {
            self.channel(&img[c * plane..(c + 1) * plane], &mut out);
        }
        let groups = self.spec.groups as usize * in_channels as usize;
        if groups > 0 {
            group_norm(&mut out, groups);
        }
        out
    }

    /// Replaces every sample of `data` by its features (the labels and splits unchanged).
    pub fn dataset(&self, data: &Dataset) -> Result<Dataset, TrainError> {
        let all: Vec<u32> = (0..data.len() as u32).collect();
        let mut f = self.samples(data, &all)?;
        f.test_from = data.test_from;
        Ok(f)
    }

    /// The features of `data`'s samples `indices`, in that order, as a dataset of their own
    /// (with their labels; no official test part).
    pub fn samples(&self, data: &Dataset, indices: &[u32]) -> Result<Dataset, TrainError> {
        let Shape::Image { c, h, w } = data.shape else {
            return Err(TrainError::Options(format!(
                "scattering needs images, and {} holds flat samples",
                data.name
            )));
        };
        if (h as usize, w as usize) != (self.h, self.w) {
            return Err(TrainError::Options(format!(
                "the scattering was built for {}x{} images, {} has {h}x{w}",
                self.h, self.w, data.name
            )));
        }
        if let Some(i) = indices.iter().find(|i| **i as usize >= data.len()) {
            return Err(TrainError::Options(format!(
                "sample {i} is past the {} samples of {}",
                data.len(),
                data.name
            )));
        }
        let shape = self.out_shape(c);
        let per = shape.numel() as usize;
        let mut values = vec![0.0f32; indices.len() * per];
        // Samples are independent: any split over threads gives the same values.
        values
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .for_each_init(
                || vec![0.0f32; data.sample_len()],
                |sample, (out, i)| {
                    data.write_sample(*i as usize, sample);
                    out.copy_from_slice(&self.transform(sample, c));
                },
            );
        Ok(Dataset {
            name: format!(
                "{} (scattering J={} L={})",
                data.name, self.spec.scales, self.spec.angles
            ),
            shape,
            classes: data.classes,
            values: Values::F32(values),
            labels: indices.iter().map(|i| data.labels[*i as usize]).collect(),
            test_from: None,
        })
    }
}

/// The mean and the (biased) variance of `g`, in `f64`.
fn moments(g: &[f32]) -> (f64, f64) {
    let n = g.len() as f64;
    let mean = g.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let var = g
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var)
}

/// Normalises `x` in `groups` equal, consecutive groups to mean 0 and variance 1 (plus 1e-5,
/// as `torch.nn.functional.group_norm`).
fn group_norm(x: &mut [f32], groups: usize) {
    let size = x.len() / groups;
    for g in x.chunks_exact_mut(size) {
        let (mean, var) = moments(g);
        let inv = 1.0 / (var + 1e-5).sqrt();
        for v in g.iter_mut() {
            *v = ((f64::from(*v) - mean) * inv) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line of the kymatio fixture (`benches/kymatio_scattering.py`).
    #[derive(serde::Deserialize)]
    struct Case {
        side: u32,
        j: u32,
        l: u32,
        input: Vec<f32>,
        output: Vec<f64>,
    }

    #[test]
    fn features_match_kymatios_own() {
        let fixture = include_str!("../benches/kymatio_scattering.jsonl");
        let mut cases = 0;
        for line in fixture.lines() {
            let c: Case = serde_json::from_str(line).expect("a fixture line");
            let spec = ScatterSpec {
                scales: c.j,
                angles: c.l,
                groups: 0,
            };
            let s = Scattering::new(spec, c.side, c.side).expect("valid");
            let got = s.transform(&c.input, 1);
            assert_eq!(got.len(), c.output.len(), "J={} L={}", c.j, c.l);
            assert_eq!(s.out_shape(1).numel() as usize, got.len());
            let scale = c.output.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (g, k)) in got.iter().zip(&c.output).enumerate() {
                assert!(
                    (f64::from(*g) - k).abs() <= 2e-5 * scale,
                    "J={} L={} side {}: coefficient {i} is {g}, kymatio's {k}",
                    c.j,
                    c.l,
                    c.side
                );
            }
            cases += 1;
        }
        assert_eq!(cases, 4);
    }

    #[test]
    fn group_norm_gives_each_group_mean_zero_and_unit_variance() {
        let img: Vec<f32> = (0..64).map(|i| ((i * 37) % 17) as f32 / 16.0).collect();
        let raw = Scattering::new(
            ScatterSpec {
                groups: 0,
                ..ScatterSpec::DEFAULT
            },
            8,
            8,
        )
        .expect("valid")
        .transform(&img, 1);
        let s = Scattering::new(ScatterSpec::DEFAULT, 8, 8).expect("valid");
        let f = s.transform(&img, 1);
        assert_eq!(f.len(), 81 * 2 * 2);
        let size = f.len() / 27;
        for (g, r) in f.chunks_exact(size).zip(raw.chunks_exact(size)) {
            let ((mean, var), (_, raw_var)) = (moments(g), moments(r));
            // Unit variance but for the 1e-5 added to the group's own.
            let want = raw_var / (raw_var + 1e-5);
            assert!(
                mean.abs() < 1e-5 && (var - want).abs() < 1e-4,
                "{mean} {var} {want}"
            );
        }
    }

    #[test]
    fn bad_settings_and_images_are_refused() {
        let spec = |scales, angles, groups| ScatterSpec {
            scales,
            angles,
            groups,
        };
        assert!(Scattering::new(spec(0, 8, 0), 28, 28).is_err());
        assert!(Scattering::new(spec(2, 17, 0), 28, 28).is_err());
        assert!(
            Scattering::new(spec(2, 8, 4), 28, 28).is_err(),
            "81 channels, 4 groups"
        );
        assert!(
            Scattering::new(spec(3, 8, 0), 4, 4).is_err(),
            "smaller than 2^J"
        );
        // 5 x 10 at J = 1 pads the short side to 14: 5 below it, more than reflection gives.
        assert!(
            Scattering::new(spec(1, 4, 0), 5, 10).is_err(),
            "padding past the side"
        );
        // Every size that is taken transforms (reflection stays inside the image).
        for (h, w) in [(6, 10), (8, 8), (7, 12), (28, 28), (28, 20)] {
            let s = Scattering::new(spec(1, 4, 0), h, w).expect("taken");
            let img = vec![0.5f32; (h * w) as usize];
            assert_eq!(s.transform(&img, 1).len() as u64, s.out_shape(1).numel());
        }
        let s = Scattering::new(ScatterSpec::DEFAULT, 28, 28).expect("valid");
        let mnist = Shape::Image { c: 1, h: 28, w: 28 };
        assert_eq!(
            ScatterSpec::DEFAULT.output(mnist).expect("valid"),
            s.out_shape(1)
        );
        assert_eq!(s.out_shape(1), Shape::Image { c: 81, h: 7, w: 7 });
        assert!(ScatterSpec::DEFAULT.output(Shape::Flat(784)).is_err());
        let e = s.dataset(&crate::data::digits()).expect_err("8x8 images");
        assert!(e.to_string().contains("28x28"), "{e}");
    }
}
