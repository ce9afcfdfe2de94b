//! Dealing a dataset among federated clients (ADR 0010's experiments): equal random parts
//! (IID) or, per class, Dirichlet(α) proportions (the usual non-IID benchmark: small α gives
//! each client few classes), and the pieces a client's private dataset is cut from.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::{Dataset, Values};

/// A uniform draw in `(0, 1)`.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; shape < 1 by the boost).
pub fn gamma(shape: f64, rng: &mut ChaCha8Rng) -> f64 {
    if shape < 1.0 {
        return gamma(shape + 1.0, rng) * uniform(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (u1, u2) = (uniform(rng), uniform(rng));
        let x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v > 0.0 && uniform(rng).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// The samples `indices` of `data` dealt to `n` clients, reproducibly from `seed`: equal
/// random parts when `alpha` is 0 (IID), else each class split by Dirichlet(`alpha`)
/// proportions (a client may get no sample of a class, or none at all at small `alpha`).
pub fn partition(
    data: &Dataset,
    indices: &[u32],
    n: usize,
    alpha: f64,
    seed: u64,
) -> Vec<Vec<u32>> {
    let n = n.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order = indices.to_vec();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut parts = vec![Vec::new(); n];
    if alpha <= 0.0 || !alpha.is_finite() {
        for (k, i) in order.into_iter().enumerate() {
            parts[k % n].push(i);
        }
        return parts;
    }
    for class in 0..data.classes {
        let of_class: Vec<u32> = order
            .iter()
            .copied()
            .filter(|i| u32::from(data.labels[*i as usize]) == class)
            .collect();
        let g: Vec<f64> = (0..n).map(|_| gamma(alpha, &mut rng)).collect();
        let total: f64 = g.iter().sum();
        let (mut start, mut acc) = (0, 0.0);
        for (k, gk) in g.iter().enumerate() {
            acc += gk / total;
            let end = if k + 1 == n {
                of_class.len()
            } else {
                ((acc * of_class.len() as f64).round() as usize).min(of_class.len())
            };
            parts[k].extend_from_slice(&of_class[start..end.max(start)]);
            start = end.max(start);
        }
    }
    parts
}

impl Dataset {
    /// The samples `indices` (in that order) as a dataset of their own, without a test part.
    pub fn subset(&self, name: &str, indices: &[u32]) -> Dataset {
        let len = self.sample_len();
        let values = match &self.values {
            Values::U8 { max, data } => Values::U8 {
                max: *max,
                data: indices
                    .iter()
                    .flat_map(|i| &data[*i as usize * len..(*i as usize + 1) * len])
                    .copied()
                    .collect(),
            },
            Values::F32(data) => Values::F32(
                indices
                    .iter()
                    .flat_map(|i| &data[*i as usize * len..(*i as usize + 1) * len])
                    .copied()
                    .collect(),
            ),
        };
        Dataset {
            name: name.into(),
            shape: self.shape,
            classes: self.classes,
            values,
            labels: indices.iter().map(|i| self.labels[*i as usize]).collect(),
            test_from: None,
        }
    }

    /// Every label `l` replaced by `classes − 1 − l` (the label-flipping attack on a
    /// client's own data).
    pub fn flip_labels(&mut self) {
        let top = self.classes.saturating_sub(1) as u16;
        for l in &mut self.labels {
            *l = top.saturating_sub(*l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;

    #[test]
    fn parts_cover_the_indices_once_and_small_alpha_skews_the_classes() {
        let d = digits();
        let all: Vec<u32> = (0..d.len() as u32).collect();
        for alpha in [0.0, 0.1, 100.0] {
            let parts = partition(&d, &all, 10, alpha, 7);
            let mut seen: Vec<u32> = parts.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, all, "α {alpha}");
            assert_eq!(parts, partition(&d, &all, 10, alpha, 7), "reproducible");
        }
        // The largest class share of a client: near 1 at α = 0.1, near 0.1 when IID.
        let top_share = |parts: &[Vec<u32>]| {
            let mut worst = 0.0f64;
            for p in parts.iter().filter(|p| p.len() > 20) {
                let mut counts = [0usize; 10];
                for i in p {
                    counts[d.labels[*i as usize] as usize] += 1;
                }
                let top = *counts.iter().max().unwrap_or(&0);
                worst = worst.max(top as f64 / p.len() as f64);
            }
            worst
        };
        assert!(top_share(&partition(&d, &all, 10, 0.1, 7)) > 0.5);
        assert!(top_share(&partition(&d, &all, 10, 0.0, 7)) < 0.25);
    }

    #[test]
    fn a_subset_keeps_its_samples_and_flipping_mirrors_the_labels() {
        let d = digits();
        let mut s = d.subset("part", &[5, 0, 9]);
        assert_eq!(s.len(), 3);
        assert!(s.validate().is_ok());
        assert_eq!(s.labels, vec![d.labels[5], d.labels[0], d.labels[9]]);
        let (Values::U8 { data: a, .. }, Values::U8 { data: b, .. }) = (&s.values, &d.values)
        else {
            panic!("bytes")
        };
        assert_eq!(&a[64..128], &b[..64]);
        s.flip_labels();
        assert_eq!(s.labels[0], 9 - d.labels[5]);
    }
}
