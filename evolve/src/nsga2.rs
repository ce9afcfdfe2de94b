//! NSGA-II (Deb, Pratap, Agarwal & Meyarivan 2002, <https://doi.org/10.1109/4235.996017>).
//!
//! Each generation: binary tournaments (lower rank wins, then larger crowding distance, then
//! a coin) pick parents; crossover and mutation make `pop_size` children, duplicates of the
//! population or of each other re-drawn; parents and children are merged, sorted into fronts
//! (feasible solutions first, infeasible ones after, by constraint violation), and the best
//! `pop_size` survive (elitism). The last front is cut by [`Truncation`]: by default crowding
//! distance recomputed after each removal for two objectives, and M-nearest-neighbour pruning
//! for three or more (Kukkonen & Deb 2006a/b), which beat the one-pass cut of the 2002 paper
//! on the ZDT and DTLZ2 benchmarks (BENCHMARKS.md).
//!
//! The step API separates the algorithm from evaluation: [`Nsga2::ask`] hands out candidates,
//! [`Nsga2::tell`] takes their [`Evaluation`]s. With the same seeded RNG and evaluations, every
//! run is bit-identical.

use std::collections::HashMap;

use rand_core::Rng;

use crate::problem::{Evaluation, EvolveError, Problem, check_told};
use crate::random::{below, chance};
use crate::sort::{crowding_distance, non_dominated_sort, prune_nearest_neighbours};

/// Genomes held, by [`Problem::genome_hash`].
type Seen<G> = HashMap<u64, Vec<G>>;

/// NSGA-II settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Nsga2Config {
    /// Individuals kept each generation (and children made each generation).
    pub pop_size: usize,
    /// Re-draw children identical to a population member or an earlier child.
    pub eliminate_duplicates: bool,
    /// Re-draws allowed per child before a duplicate is accepted.
    pub max_redraws: usize,
    /// How the front that does not fit is cut.
    pub truncation: Truncation,
}

/// How survival cuts the last front that does not fit into the population.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Deb et al. 2002: compute crowding distances once, keep the largest.
    Crowding,
    /// Kukkonen & Deb 2006 ("Improved pruning of non-dominated solutions based on crowding
    /// distance", <https://doi.org/10.1109/CEC.2006.1688581>): remove the most crowded member
    /// one at a time, recomputing crowding distances after each removal, so that removing one
    /// of two close neighbours protects the other.
    IterativeCrowding,
    /// Kukkonen & Deb 2006b: remove the member whose `M` nearest neighbours (in normalised
    /// objective space) are closest, one at a time; see
    /// [`prune_nearest_neighbours`](crate::sort::prune_nearest_neighbours). Survivors still carry
    /// their crowding distance for the tournament.
    NearestNeighbours,
    /// [`IterativeCrowding`](Truncation::IterativeCrowding) for two objectives,
    /// [`NearestNeighbours`](Truncation::NearestNeighbours) for three or more, where the
    /// per-axis crowding distance no longer measures how isolated a point is (on DTLZ2 this
    /// lifts the hypervolume after 200 generations by about 4%; see BENCHMARKS.md).
    #[default]
    Auto,
}

impl Default for Nsga2Config {
    fn default() -> Self {
        Nsga2Config {
            pop_size: 100,
            eliminate_duplicates: true,
            max_redraws: 100,
            truncation: Truncation::Auto,
        }
    }
}

/// A member of the population with its standing.
#[derive(Debug, Clone, PartialEq)]
pub struct Individual<G> {
    /// The genome.
    pub genome: G,
    /// Its evaluation.
    pub evaluation: Evaluation,
    /// Its front (0 = best).
    pub rank: usize,
    /// Its crowding distance within its front.
    pub crowding: f64,
}

/// The NSGA-II state machine.
#[derive(Debug, Clone)]
pub struct Nsga2<P: Problem> {
    problem: P,
    config: Nsga2Config,
    initial: Vec<P::Genome>,
    population: Vec<Individual<P::Genome>>,
    pending: Vec<P::Genome>,
    generation: usize,
}

impl<P: Problem> Nsga2<P> {
    /// A new search; the first [`ask`](Self::ask) samples `pop_size` random genomes.
    pub fn new(problem: P, config: Nsga2Config) -> Result<Self, EvolveError> {
        if config.pop_size < 2 {
            return Err(EvolveError::Config(format!(
                "pop_size is {}, must be at least 2",
                config.pop_size
            )));
        }
        Ok(Nsga2 {
            problem,
            config,
            initial: Vec::new(),
            population: Vec::new(),
            pending: Vec::new(),
            generation: 0,
        })
    }

    /// Seeds the first generation: these genomes (at most `pop_size`, duplicates dropped) come
    /// first, random samples fill the rest. For known-good starting points such as a
    /// baseline loss.
    pub fn with_initial(mut self, genomes: Vec<P::Genome>) -> Self {
        self.initial = genomes;
        self
    }

    /// The problem.
    pub fn problem(&self) -> &P {
        &self.problem
    }

    /// Generations completed (`tell`s accepted).
    pub fn generation(&self) -> usize {
        self.generation
    }

    /// The current population, best front first.
    pub fn population(&self) -> &[Individual<P::Genome>] {
        &self.population
    }

    /// The feasible non-dominated members of the population.
    pub fn front(&self) -> impl Iterator<Item = &Individual<P::Genome>> {
        self.population
            .iter()
            .filter(|i| i.rank == 0 && i.evaluation.is_feasible())
    }

    /// The next candidates to evaluate (the same ones again if the last batch was not told).
    pub fn ask<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Vec<P::Genome> {
        if !self.pending.is_empty() {
            return self.pending.clone();
        }
        let n = self.config.pop_size;
        let mut out: Vec<P::Genome> = Vec::with_capacity(n);
        let mut seen: Seen<P::Genome> = HashMap::new();
        for i in &self.population {
            if let Some(h) = self.problem.genome_hash(&i.genome) {
                seen.entry(h).or_default().push(i.genome.clone());
            }
        }
        if self.population.is_empty() {
            for g in &self.initial {
                if out.len() < n && !self.is_duplicate(g, &out, &seen) {
                    self.keep(g.clone(), &mut out, &mut seen);
                }
            }
            while out.len() < n {
                let mut g = self.problem.sample(rng);
                for _ in 0..self.config.max_redraws {
                    if !self.is_duplicate(&g, &out, &seen) {
                        break;
                    }
                    g = self.problem.sample(rng);
                }
                self.keep(g, &mut out, &mut seen);
            }
        } else {
            // After `max_redraws` re-draws per child on average, accept duplicates rather than
            // loop forever (tiny search spaces).
            let budget = self.config.max_redraws.saturating_mul(n).max(n);
            let mut attempts = 0usize;
            let mut competitors = Competitors::new(self.population.len());
            while out.len() < n {
                attempts += 1;
                let strict = attempts <= budget;
                let a = self.tournament(&mut competitors, rng);
                let b = self.tournament(&mut competitors, rng);
                let (mut c, mut d) = self.problem.crossover(
                    &self.population[a].genome,
                    &self.population[b].genome,
                    rng,
                );
                self.problem.mutate(&mut c, rng);
                self.problem.mutate(&mut d, rng);
                for child in [c, d] {
                    if out.len() < n && (!strict || !self.is_duplicate(&child, &out, &seen)) {
                        self.keep(child, &mut out, &mut seen);
                    }
                }
            }
        }
        self.pending = out.clone();
        out
    }

    /// Whether `g` is in the population or in `out` already (when duplicates are eliminated).
    /// Where the problem hashes genomes, `seen` holds both by hash and `g` is compared with
    /// the genomes of its hash only (comparing every draw with every genome held made drawing
    /// a population of `n` O(n²): 1.15 s for 11,607 genomes).
    fn is_duplicate(&self, g: &P::Genome, out: &[P::Genome], seen: &Seen<P::Genome>) -> bool {
        if !self.config.eliminate_duplicates {
            return false;
        }
        match self.problem.genome_hash(g) {
            Some(h) => seen.get(&h).is_some_and(|same| same.contains(g)),
            None => out.contains(g) || self.population.iter().any(|i| &i.genome == g),
        }
    }

    /// Adds `g` to the batch `out` (and to `seen`, by its hash).
    fn keep(&self, g: P::Genome, out: &mut Vec<P::Genome>, seen: &mut Seen<P::Genome>) {
        if let Some(h) = self.problem.genome_hash(&g) {
            seen.entry(h).or_default().push(g.clone());
        }
        out.push(g);
    }

    /// Binary tournament between the next two competitors: lower rank, then larger crowding
    /// distance, then a coin.
    fn tournament<R: Rng + ?Sized>(&self, competitors: &mut Competitors, rng: &mut R) -> usize {
        let a = competitors.next(rng);
        let b = competitors.next(rng);
        let (x, y) = (&self.population[a], &self.population[b]);
        if x.rank != y.rank {
            return if x.rank < y.rank { a } else { b };
        }
        if x.crowding != y.crowding {
            return if x.crowding > y.crowding { a } else { b };
        }
        if chance(rng, 0.5) { a } else { b }
    }

    /// Takes the evaluations of the last [`ask`](Self::ask), in order, and selects the next
    /// population. Non-finite objectives count as the worst possible evaluation.
    pub fn tell(&mut self, evaluations: Vec<Evaluation>) -> Result<(), EvolveError> {
        check_told(self.pending.len(), evaluations.len())?;
        let m = self.problem.n_objectives();
        let mut merged: Vec<(P::Genome, Evaluation)> = self
            .population
            .drain(..)
            .map(|i| (i.genome, i.evaluation))
            .collect();
        merged.extend(
            self.pending
                .drain(..)
                .zip(evaluations)
                .map(|(g, e)| (g, e.sanitized(m))),
        );
        self.population = survive(merged, self.config.pop_size, self.config.truncation);
        self.generation += 1;
        Ok(())
    }
}

/// Tournament selection without replacement (as in Deb's NSGA-II code and pymoo): competitors
/// come from successive random permutations of the population, so every individual enters
/// the same number of tournaments and the best cannot be missed by chance.
#[derive(Debug)]
struct Competitors {
    order: Vec<usize>,
    next: usize,
}

impl Competitors {
    fn new(n: usize) -> Self {
        Competitors {
            order: (0..n).collect(),
            next: n,
        }
    }

    fn next<R: Rng + ?Sized>(&mut self, rng: &mut R) -> usize {
        if self.next >= self.order.len() {
            for i in (1..self.order.len()).rev() {
                self.order.swap(i, below(rng, i + 1));
            }
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1]
    }
}

/// Ranks `candidates` (feasible by fronts, then infeasible by violation) and keeps the best
/// `n`, cutting the last front by `truncation`. Deterministic: ties go to the lower index.
pub fn survive<G: Clone>(
    candidates: Vec<(G, Evaluation)>,
    n: usize,
    truncation: Truncation,
) -> Vec<Individual<G>> {
    let fronts = constrained_fronts(&candidates);
    let points: Vec<Vec<f64>> = candidates.iter().map(|c| c.1.objectives.clone()).collect();
    let mut chosen: Vec<(usize, usize, f64)> = Vec::with_capacity(n);
    for (rank, front) in fronts.iter().enumerate() {
        if chosen.len() >= n {
            break;
        }
        let room = n - chosen.len();
        let members: Vec<(usize, f64)> = if front.len() <= room {
            front
                .iter()
                .copied()
                .zip(crowding_distance(&points, front))
                .collect()
        } else {
            let objectives = points.get(front[0]).map_or(0, Vec::len);
            let truncation = match truncation {
                Truncation::Auto if objectives >= 3 => Truncation::NearestNeighbours,
                Truncation::Auto => Truncation::IterativeCrowding,
                other => other,
            };
            match truncation {
                Truncation::Crowding => {
                    let crowd = crowding_distance(&points, front);
                    let mut m: Vec<(usize, f64)> = front.iter().copied().zip(crowd).collect();
                    m.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    m.truncate(room);
                    m
                }
                Truncation::IterativeCrowding => {
                    let mut kept: Vec<usize> = front.clone();
                    while kept.len() > room {
                        let crowd = crowding_distance(&points, &kept);
                        let worst = (0..kept.len())
                            .min_by(|&a, &b| {
                                crowd[a].total_cmp(&crowd[b]).then(kept[b].cmp(&kept[a]))
                            })
                            .unwrap_or(0);
                        kept.remove(worst);
                    }
                    let crowd = crowding_distance(&points, &kept);
                    kept.into_iter().zip(crowd).collect()
                }
                Truncation::NearestNeighbours | Truncation::Auto => {
                    let kept = prune_nearest_neighbours(&points, front, room);
                    let crowd = crowding_distance(&points, &kept);
                    kept.into_iter().zip(crowd).collect()
                }
            }
        };
        chosen.extend(members.into_iter().map(|(i, c)| (i, rank, c)));
    }
    let mut slots: Vec<Option<(G, Evaluation)>> = candidates.into_iter().map(Some).collect();
    chosen
        .into_iter()
        .filter_map(|(i, rank, crowding)| {
            slots[i].take().map(|(genome, evaluation)| Individual {
                genome,
                evaluation,
                rank,
                crowding,
            })
        })
        .collect()
}

/// Fronts of feasible candidates by non-dominated sorting, followed by infeasible candidates in
/// order of violation (equal violations share a front).
pub fn constrained_fronts<G>(candidates: &[(G, Evaluation)]) -> Vec<Vec<usize>> {
    let feasible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].1.is_feasible())
        .collect();
    let points: Vec<Vec<f64>> = feasible
        .iter()
        .map(|&i| candidates[i].1.objectives.clone())
        .collect();
    let mut fronts: Vec<Vec<usize>> = non_dominated_sort(&points)
        .into_iter()
        .map(|f| f.into_iter().map(|k| feasible[k]).collect())
        .collect();
    let mut infeasible: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].1.is_feasible())
        .collect();
    infeasible.sort_by(|&a, &b| {
        candidates[a]
            .1
            .violation
            .total_cmp(&candidates[b].1.violation)
            .then(a.cmp(&b))
    });
    let mut k = 0;
    while k < infeasible.len() {
        let v = candidates[infeasible[k]].1.violation;
        let mut front = Vec::new();
        while k < infeasible.len() && candidates[infeasible[k]].1.violation == v {
            front.push(infeasible[k]);
            k += 1;
        }
        fronts.push(front);
    }
    fronts
}
