//! Variation operators for real, binary and integer genomes.
//!
//! Real-valued: simulated binary crossover (SBX, Deb & Agrawal 1995) and polynomial mutation
//! (Deb & Goyal 1996), both in the bounded form of the NSGA-II reference code. Binary:
//! uniform and two-point crossover, bit-flip mutation. Integer: two-point crossover and
//! polynomial mutation on the integer's value, rounded (as in NSGA-Net).
//!
//! Powers use the pure-Rust `libm` crate, never the platform's libm, so every peer computes
//! bit-identical children from the same parents and seed.

use rand_core::Rng;

use crate::random::{below, chance, uniform};

/// SBX settings (defaults: pymoo's and Deb's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sbx {
    /// Distribution index: larger keeps children closer to their parents.
    pub eta: f64,
    /// Probability that a pair is recombined at all.
    pub prob: f64,
    /// Probability that each variable of a recombined pair is crossed.
    pub prob_var: f64,
}

impl Default for Sbx {
    fn default() -> Self {
        Sbx {
            eta: 15.0,
            prob: 0.9,
            prob_var: 0.5,
        }
    }
}

/// Polynomial-mutation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pm {
    /// Distribution index: larger makes smaller steps.
    pub eta: f64,
    /// Probability that each variable mutates (`None`: `min(0.5, 1 / n)`).
    pub prob_var: Option<f64>,
}

impl Default for Pm {
    fn default() -> Self {
        Pm {
            eta: 20.0,
            prob_var: None,
        }
    }
}

/// Simulated binary crossover of two real vectors within `[lower, upper]`.
pub fn sbx<R: Rng + ?Sized>(
    a: &[f64],
    b: &[f64],
    lower: &[f64],
    upper: &[f64],
    cfg: &Sbx,
    rng: &mut R,
) -> (Vec<f64>, Vec<f64>) {
    let mut c1 = a.to_vec();
    let mut c2 = b.to_vec();
    if !chance(rng, cfg.prob) {
        return (c1, c2);
    }
    let exp = 1.0 / (cfg.eta + 1.0);
    for i in 0..a.len() {
        if !chance(rng, cfg.prob_var) {
            continue;
        }
        let (x1, x2) = (a[i], b[i]);
        if (x1 - x2).abs() <= 1e-14 {
            continue;
        }
        let (y1, y2) = if x1 < x2 { (x1, x2) } else { (x2, x1) };
        let (lo, hi) = (lower[i], upper[i]);
        let u = uniform(rng);
        let betaq = |beta: f64| -> f64 {
            let alpha = 2.0 - libm::pow(beta, -(cfg.eta + 1.0));
            if u <= 1.0 / alpha {
                libm::pow(u * alpha, exp)
            } else {
                libm::pow(1.0 / (2.0 - u * alpha), exp)
            }
        };
        let d = y2 - y1;
        let k1 = 0.5 * ((y1 + y2) - betaq(1.0 + 2.0 * (y1 - lo) / d) * d);
        let k2 = 0.5 * ((y1 + y2) + betaq(1.0 + 2.0 * (hi - y2) / d) * d);
        let (k1, k2) = (k1.clamp(lo, hi), k2.clamp(lo, hi));
        if chance(rng, 0.5) {
            c1[i] = k2;
            c2[i] = k1;
        } else {
            c1[i] = k1;
            c2[i] = k2;
        }
    }
    (c1, c2)
}

/// Bounded polynomial mutation of a real vector, in place.
pub fn polynomial_mutation<R: Rng + ?Sized>(
    x: &mut [f64],
    lower: &[f64],
    upper: &[f64],
    cfg: &Pm,
    rng: &mut R,
) {
    let n = x.len().max(1);
    let p = cfg.prob_var.unwrap_or((1.0 / n as f64).min(0.5));
    for i in 0..x.len() {
        if !chance(rng, p) {
            continue;
        }
        let (lo, hi) = (lower[i], upper[i]);
        if hi <= lo {
            continue;
        }
        x[i] = pm_step(x[i], lo, hi, cfg.eta, rng);
    }
}

fn pm_step<R: Rng + ?Sized>(y: f64, lo: f64, hi: f64, eta: f64, rng: &mut R) -> f64 {
    let d1 = (y - lo) / (hi - lo);
    let d2 = (hi - y) / (hi - lo);
    let u = uniform(rng);
    let pow = 1.0 / (eta + 1.0);
    let dq = if u <= 0.5 {
        let v = 2.0 * u + (1.0 - 2.0 * u) * libm::pow(1.0 - d1, eta + 1.0);
        libm::pow(v, pow) - 1.0
    } else {
        let v = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * libm::pow(1.0 - d2, eta + 1.0);
        1.0 - libm::pow(v, pow)
    };
    (y + dq * (hi - lo)).clamp(lo, hi)
}

/// Uniform crossover: each position swapped with probability ½.
pub fn uniform_crossover<T: Clone, R: Rng + ?Sized>(
    a: &[T],
    b: &[T],
    rng: &mut R,
) -> (Vec<T>, Vec<T>) {
    let mut c1 = a.to_vec();
    let mut c2 = b.to_vec();
    for i in 0..a.len().min(b.len()) {
        if chance(rng, 0.5) {
            core::mem::swap(&mut c1[i], &mut c2[i]);
        }
    }
    (c1, c2)
}

/// Two-point crossover: the segment between two random cut points is exchanged.
pub fn two_point_crossover<T: Clone, R: Rng + ?Sized>(
    a: &[T],
    b: &[T],
    rng: &mut R,
) -> (Vec<T>, Vec<T>) {
    let n = a.len().min(b.len());
    let mut c1 = a.to_vec();
    let mut c2 = b.to_vec();
    if n < 2 {
        return (c1, c2);
    }
    let mut p = below(rng, n + 1);
    let mut q = below(rng, n + 1);
    if p > q {
        core::mem::swap(&mut p, &mut q);
    }
    for i in p..q {
        core::mem::swap(&mut c1[i], &mut c2[i]);
    }
    (c1, c2)
}

/// Flips each bit with probability `p` (`None`: `1 / n`).
pub fn bit_flip<R: Rng + ?Sized>(bits: &mut [bool], p: Option<f64>, rng: &mut R) {
    let p = p.unwrap_or(1.0 / bits.len().max(1) as f64);
    for b in bits.iter_mut() {
        if chance(rng, p) {
            *b = !*b;
        }
    }
}

/// Polynomial mutation of integers in `[lower, upper]` (inclusive): the step is computed on
/// the real line and rounded.
pub fn integer_polynomial_mutation<R: Rng + ?Sized>(
    x: &mut [i64],
    lower: &[i64],
    upper: &[i64],
    cfg: &Pm,
    rng: &mut R,
) {
    let n = x.len().max(1);
    let p = cfg.prob_var.unwrap_or((1.0 / n as f64).min(0.5));
    for i in 0..x.len() {
        if !chance(rng, p) || upper[i] <= lower[i] {
            continue;
        }
        let (lo, hi) = (lower[i] as f64, upper[i] as f64);
        let y = pm_step(x[i] as f64, lo, hi, cfg.eta, rng);
        x[i] = (y.round() as i64).clamp(lower[i], upper[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn real_operators_respect_bounds_and_seed() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let lo = vec![-1.0; 10];
        let hi = vec![2.0; 10];
        for _ in 0..500 {
            let a: Vec<f64> = (0..10)
                .map(|_| crate::random::range(&mut rng, -1.0, 2.0))
                .collect();
            let b: Vec<f64> = (0..10)
                .map(|_| crate::random::range(&mut rng, -1.0, 2.0))
                .collect();
            let (mut c, d) = sbx(&a, &b, &lo, &hi, &Sbx::default(), &mut rng);
            polynomial_mutation(
                &mut c,
                &lo,
                &hi,
                &Pm {
                    eta: 20.0,
                    prob_var: Some(1.0),
                },
                &mut rng,
            );
            assert!(c.iter().chain(&d).all(|v| (-1.0..=2.0).contains(v)));
        }
        let run = |seed| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            let (c, _) = sbx(
                &[0.1; 5],
                &[0.9; 5],
                &[0.0; 5],
                &[1.0; 5],
                &Sbx::default(),
                &mut r,
            );
            c
        };
        assert_eq!(run(5), run(5));
    }

    #[test]
    fn sbx_children_are_centred_on_parents() {
        // SBX preserves the parents' mean in each crossed variable.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let cfg = Sbx {
            prob: 1.0,
            prob_var: 1.0,
            ..Sbx::default()
        };
        let (c, d) = sbx(&[0.3], &[0.6], &[-100.0], &[100.0], &cfg, &mut rng);
        assert!((c[0] + d[0] - 0.9).abs() < 1e-12);
    }

    #[test]
    fn integer_and_bit_operators() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x = vec![0i64, 5, 9];
        for _ in 0..200 {
            integer_polynomial_mutation(
                &mut x,
                &[0, 0, 0],
                &[9, 9, 9],
                &Pm {
                    eta: 5.0,
                    prob_var: Some(1.0),
                },
                &mut rng,
            );
            assert!(x.iter().all(|v| (0..=9).contains(v)));
        }
        let (c, d) = two_point_crossover(&[1, 1, 1, 1], &[2, 2, 2, 2], &mut rng);
        for i in 0..4 {
            assert_eq!(c[i] + d[i], 3, "each position comes from one parent");
        }
        let mut bits = vec![false; 1000];
        bit_flip(&mut bits, Some(0.5), &mut rng);
        let ones = bits.iter().filter(|b| **b).count();
        assert!((400..600).contains(&ones));
        let (u, v) = uniform_crossover(&[true; 8], &[false; 8], &mut rng);
        assert!(u.iter().zip(&v).all(|(a, b)| a != b));
    }
}
