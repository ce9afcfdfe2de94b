//! [`Problem`] implementations for the swarm's two searches, so NSGA-II and regularised
//! evolution can drive them through `ask`/`tell`:
//!
//! * [`GeneProblem`]: integer genomes with a per-gene exclusive upper bound — the
//!   architecture spaces' encoding ([`crate::arch::MlpSpace::gene_limits`],
//!   [`crate::arch::MacroSpace::gene_limits`]). Two-point crossover and integer polynomial
//!   mutation, as NSGA-Net uses on its macro encoding.
//! * [`GpProblem`]: loss expressions ([`crate::gp::Expr`]). Ramped half-and-half samples,
//!   subtree crossover, and one of the four mutations per child.
//!
//! The objectives themselves come from the swarm (training results), not from these types.

use rand_core::Rng;

use crate::gp::{Expr, GpConfig, ramped_half_and_half};
use crate::operators::{Pm, integer_polynomial_mutation, two_point_crossover};
use crate::problem::Problem;
use crate::random::below;

/// Integer genomes, gene `i` in `0..limits[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneProblem {
    /// Exclusive upper bound of each gene (each at least 1).
    pub limits: Vec<u32>,
    /// Objectives the swarm reports per genome.
    pub objectives: usize,
}

impl Problem for GeneProblem {
    type Genome = Vec<u32>;

    fn n_objectives(&self) -> usize {
        self.objectives
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<u32> {
        self.limits
            .iter()
            .map(|&l| below(rng, l.max(1) as usize) as u32)
            .collect()
    }

    fn crossover<R: Rng + ?Sized>(
        &self,
        a: &Vec<u32>,
        b: &Vec<u32>,
        rng: &mut R,
    ) -> (Vec<u32>, Vec<u32>) {
        two_point_crossover(a, b, rng)
    }

    fn mutate<R: Rng + ?Sized>(&self, genome: &mut Vec<u32>, rng: &mut R) {
        let mut x: Vec<i64> = genome.iter().map(|&g| i64::from(g)).collect();
        let lower = vec![0i64; x.len()];
        let upper: Vec<i64> = self
            .limits
            .iter()
            .map(|&l| i64::from(l.max(1)) - 1)
            .collect();
        integer_polynomial_mutation(&mut x, &lower, &upper, &Pm::default(), rng);
        for (g, v) in genome.iter_mut().zip(x) {
            *g = u32::try_from(v).unwrap_or(0);
        }
    }

    fn genome_hash(&self, genome: &Vec<u32>) -> Option<u64> {
        Some(hash_tokens(genome))
    }
}

/// A hash of an integer genome (for duplicate checks within one process).
pub(crate) fn hash_tokens(genome: &[u32]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    genome.hash(&mut h);
    h.finish()
}

/// Loss expressions within `config`'s depth and size limits.
#[derive(Debug, Clone, PartialEq)]
pub struct GpProblem {
    /// Limits and constant ranges.
    pub config: GpConfig,
    /// Objectives the swarm reports per expression.
    pub objectives: usize,
}

impl Problem for GpProblem {
    type Genome = Expr;

    fn n_objectives(&self) -> usize {
        self.objectives
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Expr {
        // One tree from a ramped draw: the depth is chosen by the ramp's first slot, so pick
        // a random ramp position instead to spread depths over many samples.
        let span = self
            .config
            .max_depth
            .saturating_sub(self.config.min_depth.max(3))
            + 1;
        let k = 1 + below(rng, 2 * span.max(1));
        ramped_half_and_half(k, &self.config, rng)
            .pop()
            .unwrap_or_else(Expr::mse)
    }

    fn crossover<R: Rng + ?Sized>(&self, a: &Expr, b: &Expr, rng: &mut R) -> (Expr, Expr) {
        Expr::crossover(a, b, &self.config, rng)
    }

    fn mutate<R: Rng + ?Sized>(&self, genome: &mut Expr, rng: &mut R) {
        *genome = genome.mutate(&self.config, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Evaluation, Nsga2, Nsga2Config};
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn genes_stay_within_limits_through_a_search() {
        let p = GeneProblem {
            limits: vec![1, 2, 5, 9, 3],
            objectives: 2,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut s = Nsga2::new(
            p.clone(),
            Nsga2Config {
                pop_size: 20,
                ..Nsga2Config::default()
            },
        )
        .expect("config");
        for _ in 0..10 {
            let batch = s.ask(&mut rng);
            for g in &batch {
                assert!(g.iter().zip(&p.limits).all(|(x, l)| x < l), "{g:?}");
            }
            let evals = batch
                .iter()
                .map(|g| Evaluation::feasible(vec![f64::from(g[2]), f64::from(g[3])]))
                .collect();
            s.tell(evals).expect("tell");
        }
    }

    /// `GeneProblem` without its genome hash: duplicates found by comparing with every genome.
    #[derive(Clone)]
    struct Unhashed(GeneProblem);

    impl Problem for Unhashed {
        type Genome = Vec<u32>;
        fn n_objectives(&self) -> usize {
            self.0.n_objectives()
        }
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<u32> {
            self.0.sample(rng)
        }
        fn crossover<R: Rng + ?Sized>(
            &self,
            a: &Vec<u32>,
            b: &Vec<u32>,
            rng: &mut R,
        ) -> (Vec<u32>, Vec<u32>) {
            self.0.crossover(a, b, rng)
        }
        fn mutate<R: Rng + ?Sized>(&self, g: &mut Vec<u32>, rng: &mut R) {
            self.0.mutate(g, rng);
        }
    }

    #[test]
    fn hashed_duplicate_checks_draw_exactly_what_comparing_every_genome_draws() {
        // A small space (60 genomes) and populations near and above it: duplicates are common.
        let p = GeneProblem {
            limits: vec![3, 4, 5],
            objectives: 1,
        };
        for pop_size in [10, 50, 80] {
            let config = Nsga2Config {
                pop_size,
                ..Nsga2Config::default()
            };
            let mut hashed = Nsga2::new(p.clone(), config.clone()).expect("config");
            let mut plain = Nsga2::new(Unhashed(p.clone()), config).expect("config");
            let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
            for _ in 0..4 {
                let (a, b) = (hashed.ask(&mut r1), plain.ask(&mut r2));
                assert_eq!(a, b, "pop {pop_size}");
                let evals: Vec<Evaluation> = a
                    .iter()
                    .map(|g| Evaluation::feasible(vec![f64::from(g[0] + g[1] * g[2])]))
                    .collect();
                hashed.tell(evals.clone()).expect("tell");
                plain.tell(evals).expect("tell");
            }
        }
    }

    #[test]
    fn expressions_stay_within_limits() {
        let p = GpProblem {
            config: GpConfig::default(),
            objectives: 1,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let mut a = p.sample(&mut rng);
            let b = p.sample(&mut rng);
            let (c, _) = p.crossover(&a, &b, &mut rng);
            p.mutate(&mut a, &mut rng);
            for e in [&a, &b, &c] {
                assert!(e.check().is_ok());
                assert!(e.genes.len() <= p.config.max_size && e.depth() <= p.config.max_depth);
            }
        }
    }
}
