//! What a malicious federated client sends instead of its update (ADR 0010's attack suite):
//! the update with its sign flipped, scaled ×10, replaced by Gaussian garbage, or zero (a free
//! rider). Label flipping is an attack on the client's own data
//! ([`crate::data::Dataset::flip_labels`]), not on the update.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::rounds::Update;

/// An attack on a client's update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// `−u`.
    SignFlip,
    /// `10 u`.
    Scale,
    /// Gaussian noise of 10× each tensor's RMS.
    Garbage,
    /// Zero: a free rider, taking the model and giving nothing.
    FreeRider,
}

impl Attack {
    /// `u` as the attacker sends it (`seed` draws the garbage).
    pub fn apply(self, u: &Update, seed: u64) -> Update {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = u.clone();
        for t in &mut out.tensors {
            let v: Vec<f32> = t
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len().max(1) as f32).sqrt();
            let new: Vec<f32> = match self {
                Attack::SignFlip => v.iter().map(|x| -x).collect(),
                Attack::Scale => v.iter().map(|x| 10.0 * x).collect(),
                Attack::FreeRider => vec![0.0; v.len()],
                Attack::Garbage => v
                    .iter()
                    .map(|_| {
                        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        10.0 * rms * z as f32
                    })
                    .collect(),
            };
            t.data = new.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SavedTensor;

    #[test]
    fn each_attack_does_what_it_says() {
        let u = Update {
            tensors: vec![SavedTensor {
                name: "w".into(),
                shape: vec![4],
                data: [1.0f32, -2.0, 0.5, 0.0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            }],
        };
        let n = u.norm();
        assert!((Attack::SignFlip.apply(&u, 0).norm() - n).abs() < 1e-9);
        assert!((Attack::Scale.apply(&u, 0).norm() - 10.0 * n).abs() < 1e-6);
        assert_eq!(Attack::FreeRider.apply(&u, 0).norm(), 0.0);
        let g = Attack::Garbage.apply(&u, 3);
        assert_eq!(g, Attack::Garbage.apply(&u, 3), "seeded");
        assert!(g.norm() > 2.0 * n, "{} vs {n}", g.norm());
    }
}
