//! Differential-privacy accounting (ADR 0010): the Rényi differential privacy (RDP) of the
//! sampled Gaussian mechanism, composed over steps and rounds, and its conversion to an
//! `(ε, δ)` guarantee.
//!
//! The mechanism: each step includes every record independently with probability `q` (Poisson
//! sampling), sums their contributions clipped to L2 norm `C`, and adds Gaussian noise of
//! standard deviation `σC` (`σ` is the *noise multiplier*). Its RDP at order `α` is
//! `log(A_α) / (α − 1)` (Mironov, Talwar and Zhang 2019, "Rényi Differential Privacy of the
//! Sampled Gaussian Mechanism", §3.3), with
//! `A_α = E_{z∼μ0}[((1 − q) + q·μ1(z)/μ0(z))^α]`, `μ0 = N(0, σ²)`, `μ1 = N(1, σ²)`: a finite
//! binomial sum for integer `α` and two infinite sums split at `z0 = σ² ln(1/q − 1) + ½` for
//! fractional `α`. RDP composes by addition; `(ε, δ)` comes from the conversion of Balle et
//! al. 2020 (Theorem 21): `ε = min_α [rdp_α + ln((α − 1)/α) − (ln δ + ln α)/(α − 1)]`.
//! These are the same analyses Opacus's `RDPAccountant` uses, with the same orders
//! ([`ORDERS`]); a fixture computed with Opacus checks every value to 1e-6 relative.
//!
//! Every node must reach the same verdict on a campaign's budget, so all arithmetic is `f64`
//! through `libm` (the same bits on every platform), in a fixed order.

use serde::{Deserialize, Serialize};

/// The RDP orders tracked: 1.1, 1.2, …, 10.9, then 12, 13, …, 63 (Opacus's default alphas).
pub const ORDERS: [f64; 151] = orders();

const fn orders() -> [f64; 151] {
    let mut o = [0.0; 151];
    let mut i = 0;
    while i < 99 {
        o[i] = 1.0 + (i + 1) as f64 / 10.0;
        i += 1;
    }
    while i < 151 {
        o[i] = (i - 99 + 12) as f64;
        i += 1;
    }
    o
}

/// Terms of a fractional order's series are summed until both fall below `e^-30`, or at most
/// this many (a series that does not converge by then counts as no privacy, `ε = ∞`).
const MAX_TERMS: u32 = 100_000;

/// Steps of one sampled Gaussian mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mechanism {
    /// Probability that a record is in a step's sample (`q`, in `[0, 1]`).
    pub sample_rate: f64,
    /// Noise standard deviation over the clipping norm (`σ`, at least 0).
    pub noise_multiplier: f64,
    /// Steps composed.
    pub steps: u64,
}

/// Why a noise multiplier could not be found for a target.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A parameter is out of range (what, and the value).
    #[error("{0}")]
    Invalid(String),
    /// Even the largest noise multiplier tried does not reach the target.
    #[error(
        "no noise multiplier up to {max} reaches ε = {target} at δ = {delta} over {steps} steps \
         of sampling rate {sample_rate}: give a larger ε, fewer rounds or steps, or a smaller \
         sampling rate"
    )]
    Unreachable {
        /// The target ε.
        target: f64,
        /// δ.
        delta: f64,
        /// The sampling rate.
        sample_rate: f64,
        /// Steps.
        steps: u64,
        /// The largest multiplier tried.
        max: f64,
    },
}

/// The largest noise multiplier [`noise_for`] tries.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e4;

/// `ln(e^a + e^b)`.
fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    libm::log1p(libm::exp(lo - hi)) + hi
}

/// `ln(e^a − e^b)` for `a ≥ b`; `None` when `a < b` (a negative result).
fn log_sub(a: f64, b: f64) -> Option<f64> {
    if a < b {
        return None;
    }
    if b == f64::NEG_INFINITY {
        return Some(a);
    }
    if a == b {
        return Some(f64::NEG_INFINITY);
    }
    let d = libm::expm1(a - b);
    Some(if d.is_finite() { libm::log(d) + b } else { a })
}

/// `ln(erfc(x))`, accurate where `erfc` underflows: the asymptotic series
/// `erfc(x) = e^{−x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + 105/(16x⁸) − …)` above
/// `x = 20` (its next term is below 1e-12 there).
fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        return libm::log(libm::erfc(x));
    }
    let y = 1.0 / (2.0 * x * x);
    let series = 1.0 - y * (1.0 - 3.0 * y * (1.0 - 5.0 * y * (1.0 - 7.0 * y)));
    -x * x - libm::log(x) - 0.5 * libm::log(std::f64::consts::PI) + libm::log(series)
}

/// `ln A_α` for an integer order: `Σ_{i=0}^{α} C(α, i) q^i (1 − q)^{α−i} e^{(i² − i)/(2σ²)}`.
fn log_a_integer(q: f64, sigma: f64, alpha: u32) -> f64 {
    let (lq, l1q) = (libm::log(q), libm::log(1.0 - q));
    let mut coef = 1.0f64;
    let mut total = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let (fi, rest) = (f64::from(i), f64::from(alpha - i));
        let term = libm::log(coef) + fi * lq + rest * l1q + (fi * fi - fi) / (2.0 * sigma * sigma);
        total = log_add(total, term);
        coef = coef * rest / (fi + 1.0);
    }
    total
}

/// `ln A_α` for a fractional order: the two series over `(−∞, z0]` and `[z0, ∞)`, with
/// generalised binomial coefficients (negative ones subtracted); `∞` when a partial sum turns
/// negative or the series does not converge within [`MAX_TERMS`].
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (lq, l1q) = (libm::log(q), libm::log(1.0 - q));
    let z0 = sigma * sigma * libm::log(1.0 / q - 1.0) + 0.5;
    let scale = std::f64::consts::SQRT_2 * sigma;
    let (mut a0, mut a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let mut coef = 1.0f64;
    for i in 0..MAX_TERMS {
        let i = f64::from(i);
        let j = alpha - i;
        let lc = libm::log(coef.abs());
        let s0 = lc
            + i * lq
            + j * l1q
            + (i * i - i) / (2.0 * sigma * sigma)
            + libm::log(0.5)
            + log_erfc((i - z0) / scale);
        let s1 = lc
            + j * lq
            + i * l1q
            + (j * j - j) / (2.0 * sigma * sigma)
            + libm::log(0.5)
            + log_erfc((z0 - j) / scale);
        if coef > 0.0 {
            a0 = log_add(a0, s0);
            a1 = log_add(a1, s1);
        } else {
            match (log_sub(a0, s0), log_sub(a1, s1)) {
                (Some(x), Some(y)) => (a0, a1) = (x, y),
                _ => return f64::INFINITY,
            }
        }
        if s0.max(s1) < -30.0 {
            return log_add(a0, a1);
        }
        coef = coef * (alpha - i) / (i + 1.0);
    }
    f64::INFINITY
}

/// The RDP of one step at order `alpha` (`∞` without noise; 0 without sampling).
fn step_rdp(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 && alpha <= f64::from(u32::MAX) {
        log_a_integer(q, sigma, alpha as u32)
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

impl Mechanism {
    /// Checks the parameters: `q` in `[0, 1]`, `σ` finite and not negative.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(PrivacyError::Invalid(format!(
                "sampling rate {} must be in [0, 1]",
                self.sample_rate
            )));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "noise multiplier {} must be a finite number, at least 0",
                self.noise_multiplier
            )));
        }
        Ok(())
    }

    /// Its RDP at each of [`ORDERS`] (`steps` steps composed).
    pub fn rdp(&self) -> [f64; ORDERS.len()] {
        let steps = self.steps as f64;
        ORDERS.map(|alpha| {
            let r = step_rdp(self.sample_rate, self.noise_multiplier, alpha);
            if r == 0.0 { 0.0 } else { r * steps }
        })
    }
}

/// The `(ε, α)` of an RDP curve at `δ`: the smallest `ε` over the orders, and the order that
/// gives it (`(∞, NaN)` when every order gives `∞` or NaN).
pub fn epsilon(rdp: &[f64; ORDERS.len()], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, f64::NAN);
    for (alpha, r) in ORDERS.iter().zip(rdp) {
        let eps = r - (libm::log(delta) + libm::log(*alpha)) / (alpha - 1.0)
            + libm::log((alpha - 1.0) / alpha);
        if eps < best.0 {
            best = (eps, *alpha);
        }
    }
    best
}

/// What a sequence of mechanisms has spent: their RDP, added order by order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// RDP so far at each of [`ORDERS`].
    rdp: Vec<f64>,
}

impl Default for Accountant {
    fn default() -> Accountant {
        Accountant {
            rdp: vec![0.0; ORDERS.len()],
        }
    }
}

impl Accountant {
    /// Nothing spent.
    pub fn new() -> Accountant {
        Accountant::default()
    }

    /// Composes `m` with what was spent.
    pub fn add(&mut self, m: &Mechanism) {
        for (total, r) in self.rdp.iter_mut().zip(m.rdp()) {
            *total += r;
        }
    }

    /// Composes `times` copies of a mechanism whose RDP curve is `rdp` (as [`Mechanism::rdp`]
    /// gives it): the curve is computed once and scaled, which matters where the same round
    /// is composed for many clients or many rounds.
    pub fn add_curve(&mut self, rdp: &[f64; ORDERS.len()], times: u64) {
        let times = times as f64;
        for (total, r) in self.rdp.iter_mut().zip(rdp) {
            if *r != 0.0 && times != 0.0 {
                *total += r * times;
            }
        }
    }

    /// `ε` spent at `δ`.
    pub fn epsilon(&self, delta: f64) -> f64 {
        let mut rdp = [0.0; ORDERS.len()];
        rdp.copy_from_slice(&self.rdp);
        epsilon(&rdp, delta).0
    }

    /// `ε` at `δ` if `m` were composed next (for refusing a round that would overspend).
    pub fn epsilon_after(&self, m: &Mechanism, delta: f64) -> f64 {
        let mut next = self.clone();
        next.add(m);
        next.epsilon(delta)
    }
}

/// The smallest noise multiplier (to 1e-4 relative) whose `steps` steps at `sample_rate`
/// spend at most `target` ε at `delta`: bisection on `σ`, since `ε` falls as `σ` grows.
pub fn noise_for(
    target: f64,
    delta: f64,
    sample_rate: f64,
    steps: u64,
) -> Result<f64, PrivacyError> {
    if !(target.is_finite() && target > 0.0) {
        return Err(PrivacyError::Invalid(format!(
            "target ε {target} must be above 0"
        )));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Invalid(format!(
            "δ {delta} must be in (0, 1)"
        )));
    }
    let eps = |sigma: f64| {
        let m = Mechanism {
            sample_rate,
            noise_multiplier: sigma,
            steps,
        };
        epsilon(&m.rdp(), delta).0
    };
    Mechanism {
        sample_rate,
        noise_multiplier: 1.0,
        steps,
    }
    .validate()?;
    let mut hi = 1.0f64;
    while eps(hi) > target {
        if hi >= MAX_NOISE_MULTIPLIER {
            return Err(PrivacyError::Unreachable {
                target,
                delta,
                sample_rate,
                steps,
                max: hi,
            });
        }
        hi *= 2.0;
    }
    let mut lo = 0.0f64;
    while hi - lo > 1e-4 * hi {
        let mid = 0.5 * (lo + hi);
        if eps(mid) > target {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line of the Opacus fixture (`benches/opacus_accountant.py`).
    #[derive(Deserialize)]
    struct Case {
        q: f64,
        sigma: f64,
        steps: u64,
        delta: f64,
        /// `null` where Opacus gives ∞.
        epsilon: Option<f64>,
        order: Option<f64>,
        /// RDP at every order (`null` where Opacus gives ∞), on the first line of each
        /// `(q, σ, steps)` (the curve does not depend on δ).
        rdp: Option<Vec<Option<f64>>>,
    }

    /// The relative difference (0 when both are the same infinity).
    fn relative(ours: f64, theirs: f64) -> f64 {
        if theirs.is_infinite() || ours.is_infinite() {
            return if ours == theirs { 0.0 } else { f64::INFINITY };
        }
        (ours - theirs).abs() / theirs.abs().max(1e-300)
    }

    /// Every RDP value and ε of the grid equals Opacus's to 1e-6 relative (and picks the same
    /// order).
    #[test]
    fn the_accountant_agrees_with_opacus_on_the_whole_grid() {
        let fixture = include_str!("../benches/opacus_accountant.jsonl");
        let (mut cases, mut worst) = (0, 0.0f64);
        let mut close = |ours: f64, theirs: f64| {
            let r = relative(ours, theirs);
            worst = worst.max(r);
            r <= 1e-6
        };
        for line in fixture.lines().filter(|l| l.starts_with('{')) {
            let c: Case = serde_json::from_str(line).expect("a fixture line");
            let m = Mechanism {
                sample_rate: c.q,
                noise_multiplier: c.sigma,
                steps: c.steps,
            };
            let rdp = m.rdp();
            let curve = c.rdp.unwrap_or_default();
            assert!(curve.is_empty() || curve.len() == ORDERS.len());
            for ((ours, theirs), alpha) in rdp.iter().zip(&curve).zip(ORDERS) {
                let theirs = theirs.unwrap_or(f64::INFINITY);
                assert!(
                    close(*ours, theirs),
                    "q {} σ {} steps {} α {alpha}: {ours} vs Opacus {theirs}",
                    c.q,
                    c.sigma,
                    c.steps
                );
            }
            let (eps, order) = epsilon(&rdp, c.delta);
            assert!(
                close(eps, c.epsilon.unwrap_or(f64::INFINITY)),
                "q {} σ {} steps {} δ {}: ε {eps} vs Opacus {}",
                c.q,
                c.sigma,
                c.steps,
                c.delta,
                c.epsilon.unwrap_or(f64::INFINITY)
            );
            if eps.is_finite() {
                assert_eq!(Some(order), c.order);
            }
            cases += 1;
        }
        assert!(cases >= 200, "{cases} cases");
        eprintln!("{cases} cases; largest relative difference from Opacus: {worst:.2e}");
    }

    #[test]
    fn composing_adds_up_and_refuses_nothing_it_cannot_compute() {
        let m = Mechanism {
            sample_rate: 0.01,
            noise_multiplier: 1.1,
            steps: 100,
        };
        let mut a = Accountant::new();
        assert_eq!(a.epsilon(1e-5), epsilon(&[0.0; ORDERS.len()], 1e-5).0);
        a.add(&m);
        let once = a.epsilon(1e-5);
        let twice = a.epsilon_after(&m, 1e-5);
        let m200 = Mechanism { steps: 200, ..m };
        assert!((twice - epsilon(&m200.rdp(), 1e-5).0).abs() < 1e-9);
        assert!(twice > once && once > 0.0);
        let none = Mechanism {
            noise_multiplier: 0.0,
            ..m
        };
        assert_eq!(a.epsilon_after(&none, 1e-5), f64::INFINITY);
        assert!(
            Mechanism {
                sample_rate: 1.5,
                ..m
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn the_noise_for_a_target_spends_at_most_the_target_and_barely_less() {
        let (q, steps, delta) = (256.0 / 60_000.0, 60 * 234, 1e-5);
        for target in [1.0, 2.0, 8.0] {
            let sigma = noise_for(target, delta, q, steps).expect("reachable");
            let spent = |s: f64| {
                epsilon(
                    &Mechanism {
                        sample_rate: q,
                        noise_multiplier: s,
                        steps,
                    }
                    .rdp(),
                    delta,
                )
                .0
            };
            assert!(spent(sigma) <= target, "σ {sigma}");
            assert!(spent(sigma * 0.999) > target, "σ {sigma} is the smallest");
        }
        assert!(matches!(
            noise_for(1e-6, delta, 1.0, 1_000_000),
            Err(PrivacyError::Unreachable { .. })
        ));
        assert!(noise_for(0.0, delta, q, steps).is_err());
        assert!(noise_for(1.0, 0.0, q, steps).is_err());
    }
}
