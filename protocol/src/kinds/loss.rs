//! Loss-function search (genetic programming, in the spirit of GLO: Gonzalez & Miikkulainen
//! 2020): expressions used as the loss of a fixed reference model, evolved by NSGA-II on
//! `[error, size]` (accuracy with parsimony pressure), starting from cross-entropy.

use hivemesh_evolve::gp::{Expr, GpConfig};
use hivemesh_evolve::search_problems::GpProblem;
use hivemesh_evolve::{Evaluation, Nsga2, Nsga2Config};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    CampaignKind, JobPayload, KindRules, SearchError, SearchState, Told, check_population,
    error_rate, hex,
};
use crate::id::BlobId;
use crate::spec_error::{SpecError, field};

/// Loss-function search parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossParams {
    /// Expressions per generation.
    pub population: u32,
    /// Generations to run.
    pub generations: u32,
    /// Deepest expression tree.
    pub max_depth: u8,
    /// Most nodes in an expression tree.
    pub max_size: u16,
    /// The fixed reference model every candidate loss trains (its architecture IR, as a blob).
    pub reference_model: BlobId,
    /// Gradient steps spent tuning an expression's constants before the main training.
    pub constant_tuning_steps: u32,
}

impl KindRules for LossParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Loss
    }

    fn validate(&self) -> Result<(), SpecError> {
        check_population(self.population, self.generations)?;
        if self.max_depth == 0 || self.max_depth > 32 {
            return Err(field("max_depth", "must be 1 to 32"));
        }
        if self.max_size == 0 || self.max_size > 1024 {
            return Err(field("max_size", "must be 1 to 1024"));
        }
        Ok(())
    }

    fn generations(&self) -> u32 {
        self.generations.max(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.population)
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        // The limits always fit cross-entropy, generation 0's seed (6 deep, 7 nodes): below
        // them every variation of it would break the limits and be discarded, and the search
        // could only try unrelated random trees.
        let seed = Expr::cross_entropy();
        let problem = GpProblem {
            config: GpConfig {
                max_depth: usize::from(self.max_depth).max(seed.depth()),
                max_size: usize::from(self.max_size).max(seed.genes.len() + 1),
                ..GpConfig::default()
            },
            objectives: 2,
        };
        // Generation 0 starts from the cross-entropy baseline (then random trees): the search
        // has a working loss to improve on, and the campaign measures its best against
        // cross-entropy on the same reference model.
        let search = Nsga2::new(
            problem,
            Nsga2Config {
                pop_size: self.population as usize,
                ..Nsga2Config::default()
            },
        )?
        .with_initial(vec![seed]);
        Ok(Box::new(LossSearch(Box::new(search))))
    }
}

/// An expression as reports show it (hex of its encoding).
pub(super) fn summary(expression: &[u8]) -> String {
    hex(expression)
}

/// The objectives of a loss expression: the error rate its training reached and its encoded
/// size; "worst" for failed or void jobs.
pub fn objectives(told: &Told<'_>) -> Evaluation {
    let size = match told.payload {
        JobPayload::Loss { expression } => expression.len() as f64,
        _ => f64::INFINITY,
    };
    match error_rate(told.outcome) {
        Some(error) => Evaluation::feasible(vec![error, size]),
        None => Evaluation::worst(2),
    }
}

/// The search state of a loss campaign: NSGA-II over expressions.
#[derive(Clone)]
struct LossSearch(Box<Nsga2<GpProblem>>);

impl SearchState for LossSearch {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        self.0
            .ask(rng)
            .iter()
            .map(|e: &Expr| JobPayload::Loss {
                expression: postcard::to_stdvec(e).unwrap_or_default(),
            })
            .collect()
    }

    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError> {
        self.0.tell(told.iter().map(objectives).collect())?;
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Metrics, Outcome};
    use rand_core::SeedableRng;

    fn params() -> LossParams {
        LossParams {
            population: 5,
            generations: 2,
            max_depth: 2,
            max_size: 3,
            reference_model: BlobId::of_bytes(b"model"),
            constant_tuning_steps: 0,
        }
    }

    #[test]
    fn generation_zero_starts_from_cross_entropy_even_under_tight_limits() {
        let mut s = params().start().expect("starts");
        let jobs = s.ask(&mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(jobs.len(), 5);
        let ce = postcard::to_stdvec(&Expr::cross_entropy()).expect("encodes");
        assert_eq!(
            jobs[0],
            JobPayload::Loss { expression: ce },
            "the first candidate is cross-entropy"
        );
    }

    #[test]
    fn objectives_are_error_and_size() {
        let payload = JobPayload::Loss {
            expression: vec![1, 2, 3],
        };
        let ok = Outcome::Success(Metrics {
            correct: 1,
            total: 2,
            params: 0,
            flops: 0,
            extra: Default::default(),
            artifacts: vec![],
        });
        let e = objectives(&Told {
            payload: &payload,
            outcome: Some(&ok),
        });
        assert_eq!(e.objectives, vec![0.5, 3.0]);
        let void = objectives(&Told {
            payload: &payload,
            outcome: None,
        });
        assert!(!void.is_feasible());
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = params();
        p.max_size = 0;
        assert!(p.validate().unwrap_err().to_string().contains("max_size"));
        let mut p = params();
        p.max_depth = 33;
        assert!(p.validate().unwrap_err().to_string().contains("max_depth"));
        params().validate().expect("valid");
    }
}
