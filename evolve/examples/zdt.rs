//! NSGA-II on a standard test problem; the last line printed is `hv=<hypervolume>` of the
//! final non-dominated front, with reference point 1.1 on every axis.
//!
//! `cargo run --release -p hivemesh-evolve --example zdt -- --problem zdt1 --pop 100 --gens 200 --seed 1`

use clap::Parser;
use hivemesh_evolve::benchmarks::{RealBenchmark, TestProblem};
use hivemesh_evolve::hypervolume::hypervolume;
use hivemesh_evolve::{Evaluation, Nsga2, Nsga2Config, Truncation};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// Runs NSGA-II on ZDT1-3 or DTLZ2 and prints the final hypervolume.
#[derive(Debug, Parser)]
struct Args {
    /// zdt1, zdt2, zdt3 or dtlz2.
    #[arg(long, default_value = "zdt1")]
    problem: TestProblem,
    /// Population size.
    #[arg(long, default_value_t = 100)]
    pop: usize,
    /// Generations (the initial population is generation 0 and not counted).
    #[arg(long, default_value_t = 200)]
    gens: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How the last front is cut: `auto` (default: `iterative` for two objectives, `mnn` for
    /// three or more), `iterative` (crowding distance recomputed after each removal, Kukkonen &
    /// Deb 2006), `mnn` (M-nearest-neighbour pruning, Kukkonen & Deb 2006b) or `crowding`
    /// (Deb et al. 2002, one pass).
    #[arg(long, default_value = "auto")]
    truncation: String,
    /// Print the hypervolume every N generations.
    #[arg(long, default_value_t = 0)]
    every: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let problem = RealBenchmark::new(args.problem);
    let m = hivemesh_evolve::Problem::n_objectives(&problem);
    let reference = vec![1.1; m];
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut search = Nsga2::new(
        problem,
        Nsga2Config {
            pop_size: args.pop,
            truncation: match args.truncation.as_str() {
                "auto" => Truncation::Auto,
                "iterative" => Truncation::IterativeCrowding,
                "crowding" => Truncation::Crowding,
                "mnn" => Truncation::NearestNeighbours,
                other => {
                    return Err(format!(
                        "--truncation {other}: expected auto, iterative, crowding or mnn"
                    )
                    .into());
                }
            },
            ..Nsga2Config::default()
        },
    )?;
    let front_hv = |s: &Nsga2<RealBenchmark>| -> Result<f64, Box<dyn std::error::Error>> {
        let pts: Vec<Vec<f64>> = s.front().map(|i| i.evaluation.objectives.clone()).collect();
        Ok(hypervolume(&pts, &reference)?)
    };
    // Generation 0 (random) plus `gens` generations of offspring, as pymoo's n_gen = gens + 1.
    for g in 0..=args.gens {
        let batch = search.ask(&mut rng);
        let evals = batch
            .iter()
            .map(|x| Evaluation::feasible(search.problem().evaluate(x)))
            .collect();
        search.tell(evals)?;
        if args.every > 0 && g % args.every == 0 {
            println!(
                "gen {g:>4}  front {:>3}  hv {:.6}",
                search.front().count(),
                front_hv(&search)?
            );
        }
    }
    println!("hv={:.6}", front_hv(&search)?);
    Ok(())
}
