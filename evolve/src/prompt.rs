//! Prompts as genomes (issue 27's `prompt` campaigns): a prompt is a sequence of token ids
//! drawn from `0..alphabet` (a campaign's word list, or a model's vocabulary), of length
//! `min_len..=max_len`. The operators that fit sequences: one-point crossover (each parent cut
//! at its own point, tails swapped) and a mutation that substitutes, inserts or deletes one
//! token, as GA prompt searches (EvoPrompt, GPS) use them. The objectives (the swarm's
//! measurement, e.g. the target's negative log-likelihood and the prompt's length) come back
//! through `tell`.

use rand_core::Rng;

use crate::problem::Problem;
use crate::random::{below, chance};

/// Token sequences over `0..alphabet` with lengths in `min_len..=max_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptProblem {
    /// Tokens to draw from (at least 1).
    pub alphabet: u32,
    /// The shortest prompt (at least 1).
    pub min_len: usize,
    /// The longest prompt (at least `min_len`).
    pub max_len: usize,
    /// Objectives the swarm reports per prompt.
    pub objectives: usize,
    /// The chance that a child is mutated after crossover (one edit each time).
    pub mutation_rate: f64,
}

impl PromptProblem {
    /// Whether `genome` is a prompt of this problem.
    pub fn contains(&self, genome: &[u32]) -> bool {
        (self.min_len..=self.max_len).contains(&genome.len())
            && genome.iter().all(|&t| t < self.alphabet)
    }

    fn token<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        below(rng, self.alphabet.max(1) as usize) as u32
    }

    /// `child` cut or padded (with fresh tokens) to the length limits.
    fn fit<R: Rng + ?Sized>(&self, mut child: Vec<u32>, rng: &mut R) -> Vec<u32> {
        child.truncate(self.max_len);
        while child.len() < self.min_len.max(1) {
            child.push(self.token(rng));
        }
        child
    }
}

impl Problem for PromptProblem {
    type Genome = Vec<u32>;

    fn n_objectives(&self) -> usize {
        self.objectives
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<u32> {
        let lo = self.min_len.max(1);
        let len = lo + below(rng, self.max_len.max(lo) - lo + 1);
        (0..len).map(|_| self.token(rng)).collect()
    }

    /// One-point crossover: `a[..i] ++ b[j..]` and `b[..j] ++ a[i..]`, cuts drawn in each
    /// parent, children fitted to the length limits (the search mutates them after).
    fn crossover<R: Rng + ?Sized>(
        &self,
        a: &Vec<u32>,
        b: &Vec<u32>,
        rng: &mut R,
    ) -> (Vec<u32>, Vec<u32>) {
        let i = below(rng, a.len() + 1);
        let j = below(rng, b.len() + 1);
        let c1 = [&a[..i], &b[j..]].concat();
        let c2 = [&b[..j], &a[i..]].concat();
        (self.fit(c1, rng), self.fit(c2, rng))
    }

    /// One edit, with the problem's rate: a token substituted, one inserted (below the
    /// longest) or one deleted (above the shortest), each equally likely when allowed.
    fn mutate<R: Rng + ?Sized>(&self, genome: &mut Vec<u32>, rng: &mut R) {
        if !chance(rng, self.mutation_rate) {
            return;
        }
        let mut edits = vec![0u8];
        if genome.len() < self.max_len {
            edits.push(1);
        }
        if genome.len() > self.min_len.max(1) {
            edits.push(2);
        }
        match edits[below(rng, edits.len())] {
            0 if !genome.is_empty() => {
                let at = below(rng, genome.len());
                genome[at] = self.token(rng);
            }
            1 => {
                let at = below(rng, genome.len() + 1);
                let t = self.token(rng);
                genome.insert(at, t);
            }
            2 => {
                let at = below(rng, genome.len());
                genome.remove(at);
            }
            _ => {}
        }
    }

    fn genome_hash(&self, genome: &Vec<u32>) -> Option<u64> {
        Some(crate::search_problems::hash_tokens(genome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nsga2::{Nsga2, Nsga2Config};
    use crate::problem::Evaluation;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    fn problem() -> PromptProblem {
        PromptProblem {
            alphabet: 12,
            min_len: 2,
            max_len: 8,
            objectives: 2,
            mutation_rate: 0.9,
        }
    }

    /// A stand-in for the model: the prompt's distance from a hidden sentence (tokens in the
    /// wrong place, plus the length difference), and its length.
    fn evaluate(g: &[u32]) -> Evaluation {
        let hidden = [3u32, 1, 4, 1, 5, 9];
        let wrong =
            hidden.iter().zip(g).filter(|(a, b)| a != b).count() + hidden.len().abs_diff(g.len());
        Evaluation::feasible(vec![wrong as f64, g.len() as f64])
    }

    #[test]
    fn operators_keep_prompts_within_the_space() {
        let p = problem();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let (a, b) = (p.sample(&mut rng), p.sample(&mut rng));
            assert!(p.contains(&a) && p.contains(&b), "{a:?} {b:?}");
            let (mut c, mut d) = p.crossover(&a, &b, &mut rng);
            p.mutate(&mut c, &mut rng);
            p.mutate(&mut d, &mut rng);
            assert!(p.contains(&c) && p.contains(&d), "{c:?} {d:?}");
        }
    }

    #[test]
    fn nsga2_over_prompts_beats_random_search_at_equal_evaluations() {
        let p = problem();
        let (pop, gens) = (20, 15);
        let mut best_ga = f64::INFINITY;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut s = Nsga2::new(
            p.clone(),
            Nsga2Config {
                pop_size: pop,
                ..Nsga2Config::default()
            },
        )
        .expect("config");
        for _ in 0..gens {
            let asked = s.ask(&mut rng);
            let evals: Vec<Evaluation> = asked.iter().map(|g| evaluate(g)).collect();
            best_ga = evals
                .iter()
                .map(|e| e.objectives[0])
                .fold(best_ga, f64::min);
            s.tell(evals).expect("told");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let best_random = (0..pop * gens)
            .map(|_| evaluate(&p.sample(&mut rng)).objectives[0])
            .fold(f64::INFINITY, f64::min);
        // The hidden sentence is one of 12^6 ≈ 3·10⁶ prompts of its length: random search
        // with 300 draws gets a token or two right; the GA assembles it.
        assert!(
            best_ga + 2.0 <= best_random,
            "GA {best_ga}, random {best_random}"
        );
    }
}
