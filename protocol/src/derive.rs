//! Deterministic job derivation: generation 0 from the campaign spec, generation `g + 1` from
//! the closure of `g` through evolve's search strategy, seeded from that closure (DESIGN §2.2).
//!
//! Every node runs the same [`Derivation`] over the same closures and so derives the same
//! jobs; jobs are never announced. NAS campaigns evolve integer genomes of the spec's space
//! (NSGA-II on `[error, params, FLOPs]`, or regularised evolution on error); loss campaigns
//! evolve GP expressions (NSGA-II on `[error, size]`: accuracy with parsimony pressure);
//! distillation campaigns have one generation, one job per shard.

use hivemesh_evolve::gp::{Expr, GpConfig};
use hivemesh_evolve::search_problems::{GeneProblem, GpProblem};
use hivemesh_evolve::{Evaluation, Nsga2, Nsga2Config, RegularizedConfig, RegularizedEvolution};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::closure::{Closure, generation_seed};
use crate::id::{CampaignId, JobId, context, hash_canonical};
use crate::identity::PeerKey;
use crate::outcome::Outcome;
use crate::spec::{CampaignSpec, JobPayload, JobSpec, NasSpace, Search, Strategy};

/// Why jobs cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// The spec does not describe a search evolve can run.
    #[error("campaign cannot be searched: {0}")]
    Spec(String),
    /// A closure that does not follow the last derived generation.
    #[error("closure of generation {got} does not close the current generation {expected}")]
    OutOfOrder {
        /// The generation awaiting closure.
        expected: u32,
        /// The closure's generation.
        got: u32,
    },
    /// The closure's entries do not match the derived jobs.
    #[error("closure lists {got} jobs, generation has {expected}")]
    Mismatch {
        /// Jobs derived.
        expected: usize,
        /// Entries in the closure.
        got: usize,
    },
}

#[derive(Clone)]
enum State {
    NasNsga2(Box<Nsga2<GeneProblem>>),
    NasRegularized(Box<RegularizedEvolution<GeneProblem>>),
    Loss(Box<Nsga2<GpProblem>>),
    Distill,
}

/// The search state of one campaign, advanced one closure at a time.
#[derive(Clone)]
pub struct Derivation {
    spec: CampaignSpec,
    campaign: CampaignId,
    state: State,
    population: usize,
    generations: u32,
    /// The generation whose jobs were derived last.
    generation: u32,
    jobs: Vec<JobSpec>,
    /// The same jobs by id (hashed once per derivation, shared by every peer using it).
    by_id: Arc<BTreeMap<JobId, JobSpec>>,
}

impl core::fmt::Debug for Derivation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Derivation")
            .field("campaign", &self.campaign)
            .field("generation", &self.generation)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

/// A memo of derivations shared by several [`Derivation`]s of one campaign: the state after
/// each closure, keyed by the closure's root. A derivation is a pure function of the spec and
/// the chain of closures (which the root commits to), so peers in one process — a simulator's
/// thousand nodes — compute each generation once instead of once per peer. A real node has one
/// peer per campaign and does not use it.
///
/// It also memoises, per generation, which members may run which jobs (the first `bound` of each
/// job's rank): every simulated peer would otherwise rank the members for every job itself.
#[derive(Clone, Default)]
pub struct DerivationCache(Arc<Mutex<Memo>>);

/// Each member's `(position, index, job)` for the jobs where it ranks below the bound, sorted.
type RankTable = HashMap<PeerKey, Vec<(usize, u32, JobId)>>;

#[derive(Default)]
struct Memo {
    derivations: HashMap<[u8; 32], Arc<Derivation>>,
    /// Per (seed, bound, weighted members, jobs) digest: each member's `(position, index, job)`
    /// for the jobs where it ranks below `bound`, sorted.
    ranks: HashMap<[u8; 32], Arc<RankTable>>,
    /// Ids of the campaign specs that passed [`CampaignSpec::validate`].
    valid: HashSet<[u8; 32]>,
    /// Per (seed, members) digest: the generation's voters.
    voters: HashMap<[u8; 32], Arc<[PeerKey]>>,
}

/// Rank tables kept at once (a few generations; the oldest are dropped).
const RANK_TABLES: usize = 4;

impl core::fmt::Debug for DerivationCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DerivationCache")
    }
}

impl DerivationCache {
    /// A new derivation for `spec` with generation 0 derived, from the memo when another
    /// derivation of the same campaign already did.
    pub fn start(&self, spec: &CampaignSpec) -> Result<Arc<Derivation>, DeriveError> {
        let key = *spec.id().as_bytes();
        let mut memo = self.lock();
        if let Some(done) = memo.derivations.get(&key)
            && done.spec == *spec
        {
            return Ok(Arc::clone(done));
        }
        let mut d = Derivation::new(spec)?;
        d.generation_zero();
        let d = Arc::new(d);
        memo.derivations.insert(key, Arc::clone(&d));
        Ok(d)
    }

    /// [`CampaignSpec::validate`], done once per spec: a thousand simulated peers of one
    /// campaign would otherwise each check every roster key.
    pub fn validate(&self, spec: &CampaignSpec) -> Result<(), crate::spec::SpecError> {
        let key = *spec.id().as_bytes();
        if self.lock().valid.contains(&key) {
            return Ok(());
        }
        spec.validate()?;
        self.lock().valid.insert(key);
        Ok(())
    }

    /// [`crate::assign::voters`] of `members` under `seed`, computed once per distinct pair.
    pub fn voters(&self, members: &[PeerKey], seed: &[u8; 32]) -> Vec<PeerKey> {
        let key = {
            let mut h = blake3::Hasher::new();
            h.update(seed);
            for p in members {
                h.update(p.as_bytes());
            }
            *h.finalize().as_bytes()
        };
        if let Some(v) = self.lock().voters.get(&key) {
            return v.to_vec();
        }
        let v = crate::assign::voters(members, seed);
        let mut memo = self.lock();
        if memo.voters.len() >= RANK_TABLES {
            memo.voters.clear();
        }
        memo.voters.insert(key, Arc::from(v.as_slice()));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Advances `d` by `closure` (whose root is `root`), from the memo when another
    /// derivation already did: the result is the same either way.
    pub fn advance(
        &self,
        d: &mut Arc<Derivation>,
        closure: &Closure,
        root: [u8; 32],
    ) -> Result<Vec<JobSpec>, DeriveError> {
        self.advance_shared(d, closure, root)?;
        Ok(d.jobs.clone())
    }

    /// [`DerivationCache::advance`] without copying the jobs out: read them from `d`
    /// ([`Derivation::jobs`], [`Derivation::jobs_by_id`]).
    pub fn advance_shared(
        &self,
        d: &mut Arc<Derivation>,
        closure: &Closure,
        root: [u8; 32],
    ) -> Result<(), DeriveError> {
        let mut memo = self.lock();
        if let Some(done) = memo.derivations.get(&root)
            && done.campaign == d.campaign
            && done.generation == d.generation + 1
        {
            *d = Arc::clone(done);
            return Ok(());
        }
        Arc::make_mut(d).advance(closure)?;
        memo.derivations.insert(root, Arc::clone(d));
        Ok(())
    }

    /// The jobs `me` may run, as [`crate::assign::position_below`] would list them for every
    /// `(job, index)` of `jobs`: `(position, index, job)` for each job where `me` ranks below
    /// `bound` among `members` (sorted) weighted by `weight_of`, in that order. Computed once
    /// for all members per distinct (seed, bound, members, weights, jobs) and remembered.
    pub fn jobs_ranked_below(
        &self,
        seed: &[u8; 32],
        members: &[PeerKey],
        weight_of: impl Fn(&PeerKey) -> u64,
        jobs: &[(JobId, u32)],
        bound: usize,
        me: &PeerKey,
    ) -> Vec<(usize, u32, JobId)> {
        let weights: Vec<u64> = members.iter().map(&weight_of).collect();
        let key = {
            let mut h = blake3::Hasher::new();
            h.update(seed);
            h.update(&(bound as u64).to_le_bytes());
            for (p, w) in members.iter().zip(&weights) {
                h.update(p.as_bytes());
                h.update(&w.to_le_bytes());
            }
            for (j, i) in jobs {
                h.update(j.as_bytes());
                h.update(&i.to_le_bytes());
            }
            *h.finalize().as_bytes()
        };
        let table = {
            let memo = self.lock();
            memo.ranks.get(&key).cloned()
        };
        let table = match table {
            Some(t) => t,
            None => {
                // Outside the lock: other peers wait only for the insert.
                let weight: HashMap<PeerKey, u64> = members
                    .iter()
                    .copied()
                    .zip(weights.iter().copied())
                    .collect();
                let mut t = RankTable::new();
                for (job, index) in jobs {
                    let ranked = crate::assign::rank(job, seed, members, |p| {
                        weight.get(p).copied().unwrap_or(1)
                    });
                    for (pos, p) in ranked.into_iter().take(bound).enumerate() {
                        t.entry(p).or_default().push((pos, *index, *job));
                    }
                }
                for list in t.values_mut() {
                    list.sort();
                }
                let t = Arc::new(t);
                let mut memo = self.lock();
                if memo.ranks.len() >= RANK_TABLES {
                    memo.ranks.clear();
                }
                memo.ranks.insert(key, Arc::clone(&t));
                t
            }
        };
        table.get(me).cloned().unwrap_or_default()
    }
}

/// The genome layout of a NAS space (the input shape and class count do not change the genes,
/// so placeholders are used).
fn gene_limits(space: &NasSpace) -> Vec<u32> {
    use hivemesh_evolve::arch::Shape;
    match space.for_data(Shape::Image { c: 1, h: 1, w: 1 }, 1) {
        EvolveSpace::Mlp(s) => s.gene_limits(),
        EvolveSpace::Macro(s) => s.gene_limits(),
    }
}

/// A NAS space as evolve's search space for data of one shape.
#[derive(Debug, Clone, PartialEq)]
pub enum EvolveSpace {
    /// Multi-layer perceptrons.
    Mlp(hivemesh_evolve::arch::MlpSpace),
    /// The NSGA-Net macro space.
    Macro(hivemesh_evolve::arch::MacroSpace),
}

impl NasSpace {
    /// This space for data of shape `input` with `classes` classes.
    pub fn for_data(&self, input: hivemesh_evolve::arch::Shape, classes: u32) -> EvolveSpace {
        use hivemesh_evolve::arch::{MacroSpace, MlpSpace};
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

impl EvolveSpace {
    /// The architecture a genome encodes, or why it is not a valid model for the data.
    pub fn decode(
        &self,
        genes: &[u32],
    ) -> Result<hivemesh_evolve::arch::Architecture, hivemesh_evolve::arch::ArchError> {
        match self {
            EvolveSpace::Mlp(s) => s.decode(genes),
            EvolveSpace::Macro(s) => s.decode(genes),
        }
    }
}

fn rng_for(campaign: &CampaignId, generation: u32, previous: &[u8; 32]) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(generation_seed(campaign, generation, previous))
}

/// The objectives of an architecture from its agreed outcome: error rate, params, FLOPs;
/// "worst" for failed or void jobs.
pub fn nas_objectives(outcome: Option<&Outcome>) -> Evaluation {
    match outcome {
        Some(Outcome::Success(m)) if m.total > 0 => Evaluation::feasible(vec![
            1.0 - m.correct as f64 / m.total as f64,
            m.params as f64,
            m.flops as f64,
        ]),
        _ => Evaluation::worst(3),
    }
}

impl Derivation {
    /// The search of `spec`, before generation 0.
    pub fn new(spec: &CampaignSpec) -> Result<Self, DeriveError> {
        let err = |e: hivemesh_evolve::EvolveError| DeriveError::Spec(e.to_string());
        let (state, population, generations) = match &spec.search {
            Search::Nas(p) => {
                let problem = GeneProblem {
                    limits: gene_limits(&p.space),
                    objectives: 3,
                };
                if problem.limits.is_empty() || problem.limits.contains(&0) {
                    return Err(DeriveError::Spec("the NAS space has no genes".into()));
                }
                let pop = p.population as usize;
                let state = match p.strategy {
                    Strategy::Nsga2 => State::NasNsga2(Box::new(
                        Nsga2::new(
                            problem,
                            Nsga2Config {
                                pop_size: pop,
                                ..Nsga2Config::default()
                            },
                        )
                        .map_err(err)?,
                    )),
                    Strategy::RegularizedEvolution => State::NasRegularized(Box::new(
                        RegularizedEvolution::new(
                            problem,
                            RegularizedConfig {
                                population: pop,
                                sample: (pop / 4).clamp(2, pop),
                            },
                        )
                        .map_err(err)?,
                    )),
                };
                (state, pop, p.generations)
            }
            Search::Loss(p) => {
                // The limits always fit cross-entropy, generation 0's seed (6 deep, 7 nodes):
                // below them every variation of it would break the limits and be discarded,
                // and the search could only try unrelated random trees.
                let seed = Expr::cross_entropy();
                let problem = GpProblem {
                    config: GpConfig {
                        max_depth: usize::from(p.max_depth).max(seed.depth()),
                        max_size: usize::from(p.max_size).max(seed.genes.len() + 1),
                        ..GpConfig::default()
                    },
                    objectives: 2,
                };
                let pop = p.population as usize;
                // Generation 0 starts from the cross-entropy baseline (then random trees): the
                // search has a working loss to improve on, and the campaign measures its best
                // against cross-entropy on the same reference model.
                let state = State::Loss(Box::new(
                    Nsga2::new(
                        problem,
                        Nsga2Config {
                            pop_size: pop,
                            ..Nsga2Config::default()
                        },
                    )
                    .map_err(err)?
                    .with_initial(vec![Expr::cross_entropy()]),
                ));
                (state, pop, p.generations)
            }
            Search::Distill(p) => {
                let shards = p.samples.div_ceil(u64::from(p.shard_size.max(1)));
                (State::Distill, usize::try_from(shards).unwrap_or(0), 1)
            }
        };
        Ok(Derivation {
            campaign: spec.id(),
            spec: spec.clone(),
            state,
            population,
            generations: generations.max(1),
            generation: 0,
            jobs: Vec::new(),
            by_id: Arc::default(),
        })
    }

    /// Generations in the campaign.
    pub fn generations(&self) -> u32 {
        self.generations
    }

    /// The jobs of generation 0 (derived once; later calls return the same jobs).
    pub fn generation_zero(&mut self) -> &[JobSpec] {
        if self.jobs.is_empty() && self.generation == 0 {
            self.jobs = self.make_jobs(0, &[0; 32]);
            self.index_jobs();
        }
        &self.jobs
    }

    /// The jobs of the generation derived last.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    /// [`Derivation::jobs`] by id.
    pub fn jobs_by_id(&self) -> Arc<BTreeMap<JobId, JobSpec>> {
        Arc::clone(&self.by_id)
    }

    fn index_jobs(&mut self) {
        self.by_id = Arc::new(self.jobs.iter().map(|j| (j.id(), j.clone())).collect());
    }

    /// The generation derived last.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Feeds the closure of the current generation; returns the next generation's jobs, or
    /// an empty list when the campaign is finished.
    pub fn advance(&mut self, closure: &Closure) -> Result<&[JobSpec], DeriveError> {
        if closure.generation != self.generation {
            return Err(DeriveError::OutOfOrder {
                expected: self.generation,
                got: closure.generation,
            });
        }
        if closure.entries.len() != self.jobs.len() {
            return Err(DeriveError::Mismatch {
                expected: self.jobs.len(),
                got: closure.entries.len(),
            });
        }
        // Outcomes in job-index order (the closure is in job-id order).
        let by_id: std::collections::BTreeMap<_, _> =
            closure.entries.iter().map(|e| (e.job(), e)).collect();
        let outcomes: Vec<Option<&Outcome>> = self
            .jobs
            .iter()
            .map(|j| by_id.get(&j.id()).and_then(|e| e.outcome()))
            .collect();
        let told = match &mut self.state {
            State::NasNsga2(s) => s.tell(outcomes.iter().map(|o| nas_objectives(*o)).collect()),
            State::NasRegularized(s) => s.tell(
                outcomes
                    .iter()
                    .map(|o| {
                        let e = nas_objectives(*o);
                        Evaluation {
                            objectives: e.objectives[..1].to_vec(),
                            violation: e.violation,
                        }
                    })
                    .collect(),
            ),
            State::Loss(s) => {
                let sizes: Vec<f64> = self
                    .jobs
                    .iter()
                    .map(|j| match &j.payload {
                        JobPayload::Loss { expression } => expression.len() as f64,
                        _ => f64::INFINITY,
                    })
                    .collect();
                s.tell(
                    outcomes
                        .iter()
                        .zip(sizes)
                        .map(|(o, size)| {
                            let e = nas_objectives(*o);
                            if e.is_feasible() {
                                Evaluation::feasible(vec![e.objectives[0], size])
                            } else {
                                Evaluation::worst(2)
                            }
                        })
                        .collect(),
                )
            }
            State::Distill => Ok(()),
        };
        told.map_err(|e| DeriveError::Spec(e.to_string()))?;
        self.generation += 1;
        self.jobs = if self.generation >= self.generations {
            Vec::new()
        } else {
            self.make_jobs(self.generation, &closure.root())
        };
        self.index_jobs();
        Ok(&self.jobs)
    }

    fn make_jobs(&mut self, generation: u32, previous: &[u8; 32]) -> Vec<JobSpec> {
        let mut rng = rng_for(&self.campaign, generation, previous);
        let payloads: Vec<JobPayload> = match &mut self.state {
            State::NasNsga2(s) => s
                .ask(&mut rng)
                .iter()
                .map(|g| JobPayload::Nas {
                    genome: postcard::to_stdvec(g).unwrap_or_default(),
                })
                .collect(),
            State::NasRegularized(s) => s
                .ask(self.population, &mut rng)
                .iter()
                .map(|g| JobPayload::Nas {
                    genome: postcard::to_stdvec(g).unwrap_or_default(),
                })
                .collect(),
            State::Loss(s) => s
                .ask(&mut rng)
                .iter()
                .map(|e: &Expr| JobPayload::Loss {
                    expression: postcard::to_stdvec(e).unwrap_or_default(),
                })
                .collect(),
            State::Distill => {
                let (size, samples) = match &self.spec.search {
                    Search::Distill(p) => (u64::from(p.shard_size.max(1)), p.samples),
                    _ => (1, 0),
                };
                (0..samples.div_ceil(size))
                    .map(|k| JobPayload::Distill {
                        start: k * size,
                        end: ((k + 1) * size).min(samples),
                    })
                    .collect()
            }
        };
        payloads
            .into_iter()
            .enumerate()
            .map(|(index, payload)| {
                let index = index as u32;
                let h = hash_canonical(
                    context::JOB_SEED,
                    &(self.campaign, generation, index, previous),
                );
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[..8]);
                JobSpec {
                    campaign: self.campaign,
                    generation,
                    index,
                    payload,
                    seed: u64::from_le_bytes(b) ^ self.spec.seed,
                    code_version: self.spec.code_version.clone(),
                    backend: self.spec.backend,
                    compute: 1,
                }
            })
            .collect()
    }
}

/// Decodes a NAS job's genome.
pub fn decode_genome(genome: &[u8]) -> Option<Vec<u32>> {
    postcard::from_bytes(genome).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::Entry;
    use crate::spec::tests::sample_spec;

    #[test]
    fn the_shared_rank_table_lists_what_each_peer_would_rank_itself() {
        let mut members: Vec<PeerKey> = (0u8..60)
            .map(|i| crate::Keypair::from_secret_bytes([i; 32]).public())
            .collect();
        members.sort();
        let weight = |p: &PeerKey| 1 + u64::from(p.as_bytes()[0] % 5);
        let jobs: Vec<(JobId, u32)> = (0u32..45)
            .map(|i| (JobId(*blake3::hash(&i.to_le_bytes()).as_bytes()), i))
            .collect();
        let seed = [9; 32];
        let cache = DerivationCache::default();
        let mut listed = 0;
        for bound in [1, 5] {
            for me in &members {
                let mut direct: Vec<(usize, u32, JobId)> = jobs
                    .iter()
                    .filter_map(|(j, i)| {
                        crate::assign::position_below(j, &seed, &members, weight, me, bound)
                            .map(|pos| (pos, *i, *j))
                    })
                    .collect();
                direct.sort();
                let shared = cache.jobs_ranked_below(&seed, &members, weight, &jobs, bound, me);
                assert_eq!(shared, direct, "bound {bound}");
                listed += shared.len();
            }
            assert_eq!(
                listed,
                jobs.len() * bound,
                "every job has `bound` listed executors"
            );
            listed = 0;
        }
        // A non-member is listed for nothing; other weights make another table.
        let outsider = crate::Keypair::from_secret_bytes([200; 32]).public();
        assert!(
            cache
                .jobs_ranked_below(&seed, &members, weight, &jobs, 5, &outsider)
                .is_empty()
        );
        let flat = cache.jobs_ranked_below(&seed, &members, |_| 1, &jobs, 5, &members[0]);
        let flat_direct = jobs
            .iter()
            .filter(|(j, _)| {
                crate::assign::position_below(j, &seed, &members, |_| 1, &members[0], 5).is_some()
            })
            .count();
        assert_eq!(flat.len(), flat_direct);
    }

    fn closure_for(spec: &CampaignSpec, jobs: &[JobSpec], generation: u32) -> Closure {
        let mut entries: Vec<Entry> = jobs.iter().map(|j| Entry::Void { job: j.id() }).collect();
        entries.sort_by_key(Entry::job);
        Closure {
            campaign: spec.id(),
            generation,
            previous: [0; 32],
            entries,
            verdicts: vec![],
            members: spec.roster.clone(),
            deadline_ms: 1000,
        }
    }

    #[test]
    fn every_node_derives_the_same_generations() {
        let spec = sample_spec();
        let mut a = Derivation::new(&spec).expect("derivation");
        let mut b = Derivation::new(&spec).expect("derivation");
        let g0: Vec<JobSpec> = a.generation_zero().to_vec();
        assert_eq!(g0, b.generation_zero());
        assert_eq!(g0.len(), 20);
        let limits = gene_limits(match &spec.search {
            Search::Nas(p) => &p.space,
            _ => unreachable!("sample is NAS"),
        });
        for j in &g0 {
            let JobPayload::Nas { genome } = &j.payload else {
                panic!("NAS job expected")
            };
            let g = decode_genome(genome).expect("genome decodes");
            assert!(g.iter().zip(&limits).all(|(x, l)| x < l));
        }
        let c = closure_for(&spec, &g0, 0);
        let g1a = a.advance(&c).expect("advance").to_vec();
        let g1b = b.advance(&c).expect("advance").to_vec();
        assert_eq!(g1a, g1b);
        assert!(g1a.iter().all(|j| j.generation == 1));
        // A different closure (another root) seeds a different generation.
        let mut c2 = c.clone();
        c2.deadline_ms = 2000;
        let mut d = Derivation::new(&spec).expect("derivation");
        d.generation_zero();
        let g1d = d.advance(&c2).expect("advance").to_vec();
        assert_ne!(g1a, g1d);
        // Out-of-order closures are refused.
        assert!(matches!(
            a.advance(&c),
            Err(DeriveError::OutOfOrder {
                expected: 1,
                got: 0
            })
        ));
    }

    #[test]
    fn a_shared_cache_derives_what_each_peer_would_alone() {
        let spec = sample_spec();
        let cache = DerivationCache::default();
        let mut x = cache.start(&spec).expect("start");
        let mut y = cache.start(&spec).expect("start");
        assert!(Arc::ptr_eq(&x, &y), "generation 0 is derived once");
        let mut alone = Derivation::new(&spec).expect("derivation");
        let g0 = alone.generation_zero().to_vec();
        assert_eq!(x.jobs(), &g0[..]);
        let c = closure_for(&spec, &g0, 0);
        let root = c.root();
        let gx = cache.advance(&mut x, &c, root).expect("advance");
        let gy = cache.advance(&mut y, &c, root).expect("advance");
        assert!(Arc::ptr_eq(&x, &y), "generation 1 is derived once");
        assert_eq!(gx, alone.advance(&c).expect("advance").to_vec());
        assert_eq!(gx, gy);
        // Another closure misses the memo and is derived, not mixed up with the first.
        let mut c2 = c.clone();
        c2.deadline_ms = 2000;
        let mut z = cache.start(&spec).expect("start");
        let gz = cache.advance(&mut z, &c2, c2.root()).expect("advance");
        assert_ne!(gz, gx);
        assert_eq!(x.jobs(), &gx[..], "a shared state is copied on write");
    }
}
