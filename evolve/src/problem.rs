//! What a search needs to know about its genomes, and how results come back.

use rand_core::Rng;

/// A search problem: how to sample, recombine and mutate genomes. Evaluation happens
/// elsewhere (on the swarm); results come back as [`Evaluation`]s.
pub trait Problem {
    /// A candidate solution.
    type Genome: Clone + PartialEq + core::fmt::Debug;

    /// Number of objectives (all minimised).
    fn n_objectives(&self) -> usize;

    /// A random genome.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Self::Genome;

    /// Two children of two parents.
    fn crossover<R: Rng + ?Sized>(
        &self,
        a: &Self::Genome,
        b: &Self::Genome,
        rng: &mut R,
    ) -> (Self::Genome, Self::Genome);

    /// Mutates a genome in place.
    fn mutate<R: Rng + ?Sized>(&self, genome: &mut Self::Genome, rng: &mut R);

    /// A hash of `genome` (equal genomes, equal hashes), where genomes can be hashed: it lets
    /// duplicate checks skip comparing with every genome held. `None`, the default, compares.
    fn genome_hash(&self, _genome: &Self::Genome) -> Option<u64> {
        None
    }
}

/// The measured quality of a genome: objectives to minimise and a constraint violation
/// (0 when feasible).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Objective values, all minimised.
    pub objectives: Vec<f64>,
    /// Total constraint violation; 0 means feasible.
    pub violation: f64,
}

impl Evaluation {
    /// A feasible evaluation.
    pub fn feasible(objectives: Vec<f64>) -> Self {
        Evaluation {
            objectives,
            violation: 0.0,
        }
    }

    /// The worst possible evaluation: what a failed job, a NaN or an infinite objective
    /// becomes.
    pub fn worst(m: usize) -> Self {
        Evaluation {
            objectives: vec![f64::INFINITY; m],
            violation: f64::INFINITY,
        }
    }

    /// Whether it satisfies every constraint.
    pub fn is_feasible(&self) -> bool {
        self.violation <= 0.0
    }

    /// This evaluation if it is usable (`m` finite objectives, a finite non-negative
    /// violation), else [`Evaluation::worst`]: bad numbers never reach the sort.
    pub fn sanitized(self, m: usize) -> Self {
        let ok = self.objectives.len() == m
            && self.objectives.iter().all(|x| x.is_finite())
            && self.violation.is_finite()
            && self.violation >= 0.0;
        if ok { self } else { Evaluation::worst(m) }
    }
}

/// Why the search cannot take an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolveError {
    /// `tell` without a preceding `ask`.
    #[error("tell() called with no candidates outstanding: call ask() first")]
    NothingAsked,
    /// `tell` with the wrong number of evaluations.
    #[error("tell() got {got} evaluations for {asked} candidates")]
    CountMismatch {
        /// Candidates handed out by `ask`.
        asked: usize,
        /// Evaluations given.
        got: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Checks that `got` evaluations answer an outstanding batch of `asked` candidates.
pub(crate) fn check_told(asked: usize, got: usize) -> Result<(), EvolveError> {
    if asked == 0 {
        return Err(EvolveError::NothingAsked);
    }
    if got != asked {
        return Err(EvolveError::CountMismatch { asked, got });
    }
    Ok(())
}
