//! Sampling primitives on top of any `rand_core::Rng`.
//!
//! We own these few lines instead of using `rand`'s distributions so that the sequence drawn
//! from a seed never changes with a dependency upgrade: every peer must derive the same next
//! generation from the same seed, today and after an upgrade.

use rand_core::Rng;

/// A uniform `f64` in `[0, 1)` with 53 random bits.
pub fn uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's method).
pub fn below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    assert!(n > 0, "below(0) has no value");
    let n = n as u64;
    loop {
        let x = rng.next_u64();
        let m = u128::from(x) * u128::from(n);
        let low = m as u64;
        if low >= n.wrapping_neg() % n {
            return (m >> 64) as usize;
        }
    }
}

/// `true` with probability `p`.
pub fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    uniform(rng) < p
}

/// A uniform `f64` in `[lo, hi)`.
pub fn range<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[below(&mut rng, 7)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        let u: Vec<f64> = (0..1000).map(|_| uniform(&mut rng)).collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<usize> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..100).map(|_| below(&mut r, 1000)).collect()
        };
        let b: Vec<usize> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..100).map(|_| below(&mut r, 1000)).collect()
        };
        assert_eq!(a, b);
    }
}
