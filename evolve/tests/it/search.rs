//! NSGA-II and regularised evolution through their ask/tell API.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use hivemesh_evolve::benchmarks::{RealBenchmark, TestProblem};
use hivemesh_evolve::hypervolume::hypervolume;
use hivemesh_evolve::operators::{bit_flip, uniform_crossover};
use hivemesh_evolve::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn run_zdt(seed: u64, gens: usize) -> Vec<Vec<u64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = Nsga2::new(
        RealBenchmark::new(TestProblem::Zdt1),
        Nsga2Config {
            pop_size: 40,
            ..Nsga2Config::default()
        },
    )
    .unwrap();
    for _ in 0..gens {
        let batch = s.ask(&mut rng);
        let evals = batch
            .iter()
            .map(|x| Evaluation::feasible(s.problem().evaluate(x)))
            .collect();
        s.tell(evals).unwrap();
    }
    s.population()
        .iter()
        .map(|i| i.genome.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn same_seed_gives_bit_identical_runs() {
    assert_eq!(run_zdt(11, 15), run_zdt(11, 15));
    assert_ne!(run_zdt(11, 15), run_zdt(12, 15));
}

#[test]
fn search_improves_hypervolume() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut s = Nsga2::new(
        RealBenchmark::new(TestProblem::Zdt1),
        Nsga2Config::default(),
    )
    .unwrap();
    let mut hv = Vec::new();
    for _ in 0..60 {
        let batch = s.ask(&mut rng);
        let evals = batch
            .iter()
            .map(|x| Evaluation::feasible(s.problem().evaluate(x)))
            .collect();
        s.tell(evals).unwrap();
        let front: Vec<Vec<f64>> = s.front().map(|i| i.evaluation.objectives.clone()).collect();
        hv.push(hypervolume(&front, &[1.1, 1.1]).unwrap());
    }
    assert!(
        hv.windows(2).all(|w| w[1] >= w[0] - 1e-12),
        "elitism never loses the front"
    );
    assert!(hv[59] > 0.6, "{}", hv[59]);
}

#[test]
fn misuse_of_ask_tell_is_an_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut s = Nsga2::new(
        RealBenchmark::new(TestProblem::Zdt2),
        Nsga2Config::default(),
    )
    .unwrap();
    assert_eq!(s.tell(vec![]), Err(EvolveError::NothingAsked));
    let batch = s.ask(&mut rng);
    assert_eq!(
        s.ask(&mut rng),
        batch,
        "asking again re-issues the outstanding batch"
    );
    assert!(matches!(
        s.tell(vec![Evaluation::feasible(vec![0.0, 0.0])]),
        Err(EvolveError::CountMismatch { asked: 100, got: 1 })
    ));
    assert!(
        Nsga2::new(
            RealBenchmark::new(TestProblem::Zdt2),
            Nsga2Config {
                pop_size: 1,
                ..Nsga2Config::default()
            }
        )
        .is_err()
    );
}

#[test]
fn nan_infinite_and_malformed_objectives_become_worst_and_infeasible_rank_last() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut s = Nsga2::new(
        RealBenchmark::new(TestProblem::Zdt1),
        Nsga2Config {
            pop_size: 10,
            ..Nsga2Config::default()
        },
    )
    .unwrap();
    let batch = s.ask(&mut rng);
    let evals: Vec<Evaluation> = (0..batch.len())
        .map(|i| match i {
            0 => Evaluation::feasible(vec![f64::NAN, 0.0]),
            1 => Evaluation::feasible(vec![f64::NEG_INFINITY, 0.0]),
            2 => Evaluation::feasible(vec![0.5]),
            3 => Evaluation {
                objectives: vec![0.0, 0.0],
                violation: 2.0,
            },
            _ => Evaluation::feasible(vec![i as f64, 10.0 - i as f64]),
        })
        .collect();
    s.tell(evals).unwrap();
    let pop = s.population();
    // Feasible, finite ones first; the constrained one next; the three bad ones last.
    for ind in &pop[..6] {
        assert!(ind.evaluation.is_feasible() && ind.rank == 0);
    }
    assert_eq!(pop[6].evaluation.violation, 2.0);
    for ind in &pop[7..] {
        assert_eq!(ind.evaluation, Evaluation::worst(2));
    }
    assert_eq!(s.front().count(), 6);
}

/// Four bits: only 16 genomes exist, fewer than a population of 10 needs without repeats
/// over a few generations. The search must still terminate.
#[derive(Debug, Clone)]
struct TinyBits;

impl Problem for TinyBits {
    type Genome = Vec<bool>;
    fn n_objectives(&self) -> usize {
        2
    }
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<bool> {
        (0..4).map(|_| rng.next_u32() & 1 == 1).collect()
    }
    fn crossover<R: Rng + ?Sized>(
        &self,
        a: &Vec<bool>,
        b: &Vec<bool>,
        rng: &mut R,
    ) -> (Vec<bool>, Vec<bool>) {
        uniform_crossover(a, b, rng)
    }
    fn mutate<R: Rng + ?Sized>(&self, g: &mut Vec<bool>, rng: &mut R) {
        bit_flip(g, None, rng);
    }
}

#[test]
fn tiny_search_spaces_terminate() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut s = Nsga2::new(
        TinyBits,
        Nsga2Config {
            pop_size: 10,
            max_redraws: 5,
            ..Nsga2Config::default()
        },
    )
    .unwrap();
    for _ in 0..5 {
        let batch = s.ask(&mut rng);
        assert_eq!(batch.len(), 10);
        let evals = batch
            .iter()
            .map(|g| {
                let ones = g.iter().filter(|b| **b).count() as f64;
                Evaluation::feasible(vec![ones, 4.0 - ones])
            })
            .collect();
        s.tell(evals).unwrap();
    }
}

#[test]
fn regularized_evolution_finds_the_minimum() {
    #[derive(Debug, Clone)]
    struct Sphere;
    impl Problem for Sphere {
        type Genome = Vec<f64>;
        fn n_objectives(&self) -> usize {
            1
        }
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
            (0..3)
                .map(|_| hivemesh_evolve::random::range(rng, -5.0, 5.0))
                .collect()
        }
        fn crossover<R: Rng + ?Sized>(
            &self,
            a: &Vec<f64>,
            b: &Vec<f64>,
            _: &mut R,
        ) -> (Vec<f64>, Vec<f64>) {
            (a.clone(), b.clone())
        }
        fn mutate<R: Rng + ?Sized>(&self, g: &mut Vec<f64>, rng: &mut R) {
            let i = hivemesh_evolve::random::below(rng, g.len());
            g[i] += hivemesh_evolve::random::range(rng, -0.5, 0.5);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut re = RegularizedEvolution::new(
        Sphere,
        RegularizedConfig {
            population: 30,
            sample: 5,
        },
    )
    .unwrap();
    for _ in 0..150 {
        let batch = re.ask(8, &mut rng);
        let evals = batch
            .iter()
            .map(|x| Evaluation::feasible(vec![x.iter().map(|v| v * v).sum()]))
            .collect();
        re.tell(evals).unwrap();
    }
    let (_, best) = re.best().unwrap();
    assert!(best.objectives[0] < 0.05, "{best:?}");
    assert_eq!(re.alive().count(), 30);
    assert!(
        RegularizedEvolution::new(
            Sphere,
            RegularizedConfig {
                population: 3,
                sample: 4
            }
        )
        .is_err()
    );
}

#[test]
fn the_first_generation_starts_with_the_seeds() {
    use hivemesh_evolve::gp::{Expr, GpConfig};
    use hivemesh_evolve::search_problems::GpProblem;
    let p = GpProblem {
        config: GpConfig::default(),
        objectives: 2,
    };
    let mut s = hivemesh_evolve::Nsga2::new(
        p,
        hivemesh_evolve::Nsga2Config {
            pop_size: 6,
            ..hivemesh_evolve::Nsga2Config::default()
        },
    )
    .expect("config")
    .with_initial(vec![
        Expr::cross_entropy(),
        Expr::cross_entropy(),
        Expr::mse(),
    ]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let batch = s.ask(&mut rng);
    assert_eq!(batch.len(), 6);
    assert_eq!(batch[0], Expr::cross_entropy());
    assert_eq!(batch[1], Expr::mse(), "the duplicate seed is dropped");
    assert!(
        batch[2..]
            .iter()
            .all(|e| *e != Expr::cross_entropy() && *e != Expr::mse())
    );
}
