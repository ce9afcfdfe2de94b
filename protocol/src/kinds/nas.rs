//! Architecture search (NSGA-Net style): genomes of a search space, trained and scored on
//! `[error, params, FLOPs]` by NSGA-II (Deb et al. 2002), or on error alone by regularised
//! evolution (Real et al. 2019).

use hivemesh_evolve::arch::{ArchError, Architecture, MacroSpace, MlpSpace, Shape};
use hivemesh_evolve::search_problems::GeneProblem;
use hivemesh_evolve::{Evaluation, Nsga2, Nsga2Config, RegularizedConfig, RegularizedEvolution};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    CampaignKind, JobPayload, KindRules, SearchError, SearchState, Told, check_population,
    error_rate, hex,
};
use crate::outcome::Outcome;
use crate::spec_error::{SpecError, field};

/// Widest hidden layer an MLP space may offer. With 16 layers this bounds a model at about
/// 4 G parameters before the input layer: the protocol's cap; each node's `max_job_memory` and
/// `max_job_flops` then decide what it runs.
pub const MAX_WIDTH: u32 = 1 << 16;
/// Most channels a macro-space phase may offer.
pub const MAX_CHANNELS: u32 = 4096;
/// Largest kernel a macro-space phase may offer.
pub const MAX_KERNEL: u8 = 31;

/// Architecture-search parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NasParams {
    /// The space genomes come from.
    pub space: NasSpace,
    /// The evolutionary strategy.
    pub strategy: Strategy,
    /// Genomes per generation.
    pub population: u32,
    /// Generations to run.
    pub generations: u32,
}

/// An architecture search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NasSpace {
    /// Multi-layer perceptrons for small inputs: up to `max_layers` hidden layers, each with a
    /// width from `widths`.
    Mlp {
        /// Most hidden layers.
        max_layers: u8,
        /// Allowed hidden widths.
        widths: Vec<u32>,
    },
    /// NSGA-Net macro space: `phases` phases of `nodes_per_phase` nodes with connection bits,
    /// per-phase channel and kernel choices.
    Macro {
        /// Number of phases.
        phases: u8,
        /// Nodes per phase.
        nodes_per_phase: u8,
        /// Allowed channel counts.
        channels: Vec<u32>,
        /// Allowed kernel sizes.
        kernels: Vec<u8>,
    },
}

/// An evolutionary strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// NSGA-II (Deb et al. 2002).
    Nsga2,
    /// Regularised (aging) evolution (Real et al. 2019).
    RegularizedEvolution,
}

impl KindRules for NasParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Nas
    }

    fn validate(&self) -> Result<(), SpecError> {
        check_population(self.population, self.generations)?;
        self.space.validate()
    }

    fn generations(&self) -> u32 {
        self.generations.max(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.population)
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        let problem = GeneProblem {
            limits: gene_limits(&self.space),
            objectives: 3,
        };
        if problem.limits.is_empty() || problem.limits.contains(&0) {
            return Err(SearchError::NoGenes);
        }
        let pop = self.population as usize;
        Ok(match self.strategy {
            Strategy::Nsga2 => Box::new(NasSearch::Nsga2(Box::new(Nsga2::new(
                problem,
                Nsga2Config {
                    pop_size: pop,
                    ..Nsga2Config::default()
                },
            )?))),
            Strategy::RegularizedEvolution => Box::new(NasSearch::Regularized {
                search: Box::new(RegularizedEvolution::new(
                    problem,
                    RegularizedConfig {
                        population: pop,
                        sample: (pop / 4).clamp(2, pop),
                    },
                )?),
                population: pop,
            }),
        })
    }
}

impl NasSpace {
    fn validate(&self) -> Result<(), SpecError> {
        match self {
            NasSpace::Mlp { max_layers, widths } => {
                if *max_layers == 0 || *max_layers > 16 {
                    return Err(field("space.max_layers", "must be 1 to 16"));
                }
                if widths.is_empty()
                    || widths.len() > 32
                    || widths.iter().any(|w| !(1..=MAX_WIDTH).contains(w))
                {
                    return Err(field(
                        "space.widths",
                        format!("1 to 32 widths, each 1 to {MAX_WIDTH}"),
                    ));
                }
            }
            NasSpace::Macro {
                phases,
                nodes_per_phase,
                channels,
                kernels,
            } => {
                if *phases == 0 || *phases > 8 {
                    return Err(field("space.phases", "must be 1 to 8"));
                }
                if *nodes_per_phase == 0 || *nodes_per_phase > 12 {
                    return Err(field("space.nodes_per_phase", "must be 1 to 12"));
                }
                if channels.is_empty()
                    || channels.len() > 16
                    || channels.iter().any(|c| !(1..=MAX_CHANNELS).contains(c))
                {
                    return Err(field(
                        "space.channels",
                        format!("1 to 16 channel counts, each 1 to {MAX_CHANNELS}"),
                    ));
                }
                if kernels.is_empty()
                    || kernels.len() > 8
                    || kernels.iter().any(|k| *k > MAX_KERNEL || k % 2 == 0)
                {
                    return Err(field(
                        "space.kernels",
                        format!("1 to 8 odd kernel sizes, each at most {MAX_KERNEL}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// This space for data of shape `input` with `classes` classes.
    pub fn for_data(&self, input: Shape, classes: u32) -> EvolveSpace {
        match self {
            NasSpace::Mlp { max_layers, widths } => EvolveSpace::Mlp(MlpSpace {
                input,
                classes,
                max_layers: usize::from(*max_layers),
                widths: widths.clone(),
            }),
            NasSpace::Macro {
                phases,
                nodes_per_phase,
                channels,
                kernels,
            } => EvolveSpace::Macro(MacroSpace {
                input,
                classes,
                phases: usize::from(*phases),
                nodes: usize::from(*nodes_per_phase),
                channels: channels.clone(),
                kernels: kernels.iter().map(|&k| u32::from(k)).collect(),
            }),
        }
    }
}

/// A NAS space as evolve's search space for data of one shape.
#[derive(Debug, Clone, PartialEq)]
pub enum EvolveSpace {
    /// Multi-layer perceptrons.
    Mlp(MlpSpace),
    /// The NSGA-Net macro space.
    Macro(MacroSpace),
}

impl EvolveSpace {
    /// The architecture a genome encodes, or why it is not a valid model for the data.
    pub fn decode(&self, genes: &[u32]) -> Result<Architecture, ArchError> {
        match self {
            EvolveSpace::Mlp(s) => s.decode(genes),
            EvolveSpace::Macro(s) => s.decode(genes),
        }
    }

    /// The number of choices of each gene.
    pub fn gene_limits(&self) -> Vec<u32> {
        match self {
            EvolveSpace::Mlp(s) => s.gene_limits(),
            EvolveSpace::Macro(s) => s.gene_limits(),
        }
    }
}

/// The genome layout of a NAS space (the input shape and class count do not change the genes,
/// so placeholders are used).
pub fn gene_limits(space: &NasSpace) -> Vec<u32> {
    space
        .for_data(Shape::Image { c: 1, h: 1, w: 1 }, 1)
        .gene_limits()
}

/// Decodes a NAS job's genome.
pub fn decode_genome(genome: &[u8]) -> Option<Vec<u32>> {
    postcard::from_bytes(genome).ok()
}

/// A genome as reports show it (hex of its encoding).
pub(super) fn summary(genome: &[u8]) -> String {
    hex(genome)
}

/// The objectives of an architecture from its agreed outcome: error rate, params, FLOPs;
/// "worst" for failed or void jobs.
pub fn objectives(outcome: Option<&Outcome>) -> Evaluation {
    match (outcome, error_rate(outcome)) {
        (Some(Outcome::Success(m)), Some(error)) => {
            Evaluation::feasible(vec![error, m.params as f64, m.flops as f64])
        }
        _ => Evaluation::worst(3),
    }
}

/// The search state of a NAS campaign.
#[derive(Clone)]
enum NasSearch {
    /// NSGA-II on `[error, params, FLOPs]`.
    Nsga2(Box<Nsga2<GeneProblem>>),
    /// Regularised evolution on the error alone.
    Regularized {
        /// The search.
        search: Box<RegularizedEvolution<GeneProblem>>,
        /// Genomes asked for per generation.
        population: usize,
    },
}

fn encode(genome: &Vec<u32>) -> JobPayload {
    JobPayload::Nas {
        genome: postcard::to_stdvec(genome).unwrap_or_default(),
    }
}

impl SearchState for NasSearch {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        match self {
            NasSearch::Nsga2(s) => s.ask(rng).iter().map(encode).collect(),
            NasSearch::Regularized { search, population } => {
                search.ask(*population, rng).iter().map(encode).collect()
            }
        }
    }

    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError> {
        let evaluations = told.iter().map(|t| objectives(t.outcome));
        match self {
            NasSearch::Nsga2(s) => s.tell(evaluations.collect())?,
            NasSearch::Regularized { search, .. } => search.tell(
                evaluations
                    .map(|e| Evaluation {
                        objectives: e.objectives[..1].to_vec(),
                        violation: e.violation,
                    })
                    .collect(),
            )?,
        }
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Metrics;
    use rand_core::SeedableRng;

    fn params(strategy: Strategy) -> NasParams {
        NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![8, 16],
            },
            strategy,
            population: 6,
            generations: 3,
        }
    }

    #[test]
    fn each_strategy_asks_a_population_of_genomes_inside_the_space() {
        for strategy in [Strategy::Nsga2, Strategy::RegularizedEvolution] {
            let p = params(strategy);
            let limits = gene_limits(&p.space);
            let mut s = p.start().expect("starts");
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let jobs = s.ask(&mut rng);
            assert_eq!(jobs.len(), 6, "{strategy:?}");
            for j in &jobs {
                let JobPayload::Nas { genome } = j else {
                    panic!("NAS payload expected")
                };
                let g = decode_genome(genome).expect("decodes");
                assert_eq!(g.len(), limits.len());
                assert!(g.iter().zip(&limits).all(|(x, l)| x < l));
            }
            let told: Vec<Told<'_>> = jobs
                .iter()
                .map(|payload| Told {
                    payload,
                    outcome: None,
                })
                .collect();
            s.tell(&told).expect("told");
            assert_eq!(s.ask(&mut rng).len(), 6);
        }
    }

    #[test]
    fn telling_the_wrong_number_of_outcomes_is_an_error() {
        let mut s = params(Strategy::Nsga2).start().expect("starts");
        let jobs = s.ask(&mut ChaCha8Rng::seed_from_u64(1));
        let told = [Told {
            payload: &jobs[0],
            outcome: None,
        }];
        assert!(matches!(s.tell(&told), Err(SearchError::Evolve(_))));
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = params(Strategy::Nsga2);
        p.space = NasSpace::Macro {
            phases: 2,
            nodes_per_phase: 4,
            channels: vec![16],
            kernels: vec![4],
        };
        assert!(p.validate().unwrap_err().to_string().contains("kernels"));
        let mut p = params(Strategy::Nsga2);
        p.population = 1;
        assert!(p.validate().unwrap_err().to_string().contains("population"));
        params(Strategy::Nsga2).validate().expect("valid");
    }

    #[test]
    fn objectives_are_error_params_flops_or_worst() {
        let m = Metrics {
            correct: 9,
            total: 10,
            params: 100,
            flops: 200,
            extra: Default::default(),
            artifacts: vec![],
        };
        let e = objectives(Some(&Outcome::Success(m)));
        assert!(e.is_feasible());
        assert_eq!(e.objectives.len(), 3);
        assert!((e.objectives[0] - 0.1).abs() < 1e-12);
        assert_eq!(&e.objectives[1..], &[100.0, 200.0]);
        assert!(!objectives(None).is_feasible());
    }
}
