//! Regularised ("aging") evolution (Real, Aggarwal, Huang & Le 2019,
//! <https://arxiv.org/abs/1802.01548>).
//!
//! A queue of the `population` most recent evaluated genomes; each child is a mutated copy of
//! the best of `sample` members drawn at random; each new evaluation pushes the oldest out, so
//! every genome dies of age however good it is, which favours architectures that stay good
//! under retraining. Single objective: the first objective, infeasible genomes ranked after
//! feasible ones by violation.

use std::collections::VecDeque;

use rand_core::Rng;

use crate::problem::{Evaluation, EvolveError, Problem, check_told};
use crate::random::below;

/// Regularised-evolution settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegularizedConfig {
    /// Genomes alive at once.
    pub population: usize,
    /// Tournament size.
    pub sample: usize,
}

/// The regularised-evolution state machine (same `ask`/`tell` shape as NSGA-II).
#[derive(Debug, Clone)]
pub struct RegularizedEvolution<P: Problem> {
    problem: P,
    config: RegularizedConfig,
    alive: VecDeque<(P::Genome, Evaluation)>,
    best: Option<(P::Genome, Evaluation)>,
    pending: Vec<P::Genome>,
}

/// Lower is better: feasible by first objective, then infeasible by violation.
fn key(e: &Evaluation) -> (bool, f64) {
    if e.is_feasible() {
        (
            false,
            e.objectives.first().copied().unwrap_or(f64::INFINITY),
        )
    } else {
        (true, e.violation)
    }
}

fn better(a: &Evaluation, b: &Evaluation) -> bool {
    match (key(a), key(b)) {
        ((false, _), (true, _)) => true,
        ((true, _), (false, _)) => false,
        ((_, x), (_, y)) => x < y,
    }
}

impl<P: Problem> RegularizedEvolution<P> {
    /// A new search.
    pub fn new(problem: P, config: RegularizedConfig) -> Result<Self, EvolveError> {
        if config.population < 2 || config.sample == 0 || config.sample > config.population {
            return Err(EvolveError::Config(format!(
                "need population >= 2 and 1 <= sample <= population, got {config:?}"
            )));
        }
        Ok(RegularizedEvolution {
            problem,
            config,
            alive: VecDeque::new(),
            best: None,
            pending: Vec::new(),
        })
    }

    /// `n` candidates: random ones until the population is full, then mutated tournament
    /// winners.
    pub fn ask<R: Rng + ?Sized>(&mut self, n: usize, rng: &mut R) -> Vec<P::Genome> {
        if !self.pending.is_empty() {
            return self.pending.clone();
        }
        let out: Vec<P::Genome> = (0..n)
            .map(|k| {
                if self.alive.len() + k < self.config.population {
                    return self.problem.sample(rng);
                }
                let mut winner = below(rng, self.alive.len());
                for _ in 1..self.config.sample {
                    let c = below(rng, self.alive.len());
                    if better(&self.alive[c].1, &self.alive[winner].1) {
                        winner = c;
                    }
                }
                let mut child = self.alive[winner].0.clone();
                self.problem.mutate(&mut child, rng);
                child
            })
            .collect();
        self.pending = out.clone();
        out
    }

    /// The evaluations of the last `ask`, in order.
    pub fn tell(&mut self, evaluations: Vec<Evaluation>) -> Result<(), EvolveError> {
        check_told(self.pending.len(), evaluations.len())?;
        let m = self.problem.n_objectives();
        for (g, e) in self.pending.drain(..).zip(evaluations) {
            let e = e.sanitized(m);
            if self.best.as_ref().is_none_or(|b| better(&e, &b.1)) {
                self.best = Some((g.clone(), e.clone()));
            }
            self.alive.push_back((g, e));
            while self.alive.len() > self.config.population {
                self.alive.pop_front();
            }
        }
        Ok(())
    }

    /// The best genome ever evaluated.
    pub fn best(&self) -> Option<&(P::Genome, Evaluation)> {
        self.best.as_ref()
    }

    /// The living population, oldest first.
    pub fn alive(&self) -> impl Iterator<Item = &(P::Genome, Evaluation)> {
        self.alive.iter()
    }
}
