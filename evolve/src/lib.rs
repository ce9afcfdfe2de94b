//! # hivemesh-evolve
//!
//! The search algorithms of hivemesh, as a pure library: no I/O, no networking, no `burn`.
//! Every random choice draws from an RNG passed in (a seeded ChaCha in practice) through the
//! few sampling functions in [`random`], and every transcendental function comes from the
//! pure-Rust `libm`, so every peer derives the bit-identical next generation from the same
//! seed and the same agreed results.
//!
//! ## Multi-objective search: NSGA-II
//! [`nsga2::Nsga2`] implements NSGA-II (Deb, Pratap, Agarwal & Meyarivan, *A fast and elitist
//! multiobjective genetic algorithm: NSGA-II*, IEEE TEC 2002,
//! <https://doi.org/10.1109/4235.996017>): non-dominated sorting into fronts ([`sort`]:
//! O(N log N) for two objectives, ENS-BS for more), crowding distance to keep fronts spread,
//! binary tournaments on (rank, crowding), elitist survival of parents and children together,
//! feasible solutions before infeasible ones, and duplicate elimination. It is driven by an
//! `ask`/`tell` step API so that evaluation — training a network for a fixed budget — happens
//! on the swarm. hivemesh uses it the way NSGA-Net does (Lu et al., *NSGA-Net: Neural
//! Architecture Search using Multi-Objective Genetic Algorithm*, GECCO 2019,
//! <https://arxiv.org/abs/1810.03522>): objectives are error, parameters and FLOPs.
//!
//! ## Single-objective search: regularised evolution
//! [`regularized::RegularizedEvolution`] (Real et al. 2019) keeps a queue of recent genomes and
//! retires the oldest, whatever its fitness.
//!
//! ## Architectures
//! [`arch`] decodes genomes from an MLP space and from the NSGA-Net macro space into an
//! architecture IR (a DAG of conv, pooling, dense, activation, batch-norm, add and flatten
//! layers) with inferred shapes, exact parameter and FLOP counts (one multiply-add = 2 FLOPs)
//! and a content id.
//!
//! ## Loss functions: genetic programming
//! [`gp`] evolves typed loss expressions over targets, logits and probabilities, as in
//! AutoML-Zero (Real, Liang, So & Le 2020, <https://arxiv.org/abs/2003.03384>) and GLO
//! (Gonzalez & Miikkulainen 2020, <https://arxiv.org/abs/1905.11528>): protected operations,
//! ramped half-and-half initialisation, subtree crossover, four mutations, simplification,
//! canonical ids, behavioural fingerprints and tunable constant slots.
//!
//! ## Operators, problems, measures
//! [`operators`]: SBX and polynomial mutation for reals, uniform/two-point crossover and bit
//! flips for bit strings, two-point crossover and rounded polynomial mutation for integers.
//! [`benchmarks`]: ZDT1–3 and DTLZ2. [`hypervolume`]: exact hypervolume in 2 and 3 dimensions.

pub mod arch;
pub mod benchmarks;
pub mod gp;
pub mod hypervolume;
pub mod nsga2;
pub mod operators;
pub mod problem;
pub mod prompt;
pub mod random;
pub mod regularized;
pub mod search_problems;
pub mod sort;

pub use nsga2::{Individual, Nsga2, Nsga2Config, Truncation};
pub use problem::{Evaluation, EvolveError, Problem};
pub use regularized::{RegularizedConfig, RegularizedEvolution};
