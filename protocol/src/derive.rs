//! Deterministic job derivation: generation 0 from the campaign spec, generation `g + 1` from
//! the closure of `g` through evolve's search strategy, seeded from that closure (DESIGN §2.2).
//!
//! Every node runs the same [`Derivation`] over the same closures and so derives the same
//! jobs; jobs are never announced. NAS campaigns evolve integer genomes of the spec's space
//! (NSGA-II on `[error, params, FLOPs]`, or regularised evolution on error); loss campaigns
//! evolve GP expressions (NSGA-II on `[error, size]`: accuracy with parsimony pressure);
//! distillation campaigns have one generation, one job per shard.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::closure::{Closure, generation_seed};
use crate::id::{CampaignId, JobId, context, hash_canonical};
use crate::identity::PeerKey;
use crate::kinds::{JobPayload, SearchError, SearchState, Told};
use crate::outcome::Outcome;
use crate::schedule::Plan;
use crate::spec::{CampaignSpec, JobSpec};

pub use crate::kinds::nas::{EvolveSpace, decode_genome, objectives as nas_objectives};

/// Why jobs cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    /// The spec does not describe a search evolve can run, or the search refused its input.
    #[error("campaign cannot be searched: {0}")]
    Search(#[from] SearchError),
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

/// The search state of one campaign, advanced one closure at a time.
#[derive(Clone)]
pub struct Derivation {
    spec: CampaignSpec,
    campaign: CampaignId,
    /// The kind's search, told each closure.
    state: Box<dyn SearchState>,
    /// Search generations in the campaign (the kind's; repair generations come on top).
    generations: u32,
    /// Search generations told to the kind's state so far.
    searched: u32,
    /// The generation whose jobs were derived last (the closure it awaits).
    generation: u32,
    /// While the jobs are a repair generation: the search generation they complete.
    repair: Option<Repair>,
    jobs: Vec<JobSpec>,
    /// The same jobs by id (hashed once per derivation, shared by every peer using it).
    by_id: Arc<BTreeMap<JobId, JobSpec>>,
}

/// A search generation some of whose jobs went void, while those are run again (issue 23:
/// voided genomes are re-derived, not dropped): what the kind is told once the repair
/// generation closes.
#[derive(Debug, Clone)]
struct Repair {
    /// The search generation's payloads, in job-index order.
    payloads: Vec<JobPayload>,
    /// Their agreed outcomes so far (`None`: void).
    outcomes: Vec<Option<Outcome>>,
    /// For each job of the repair generation (by index), the payload it runs again.
    reruns: Vec<usize>,
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
pub type RankTable = HashMap<PeerKey, Vec<(usize, u32, JobId)>>;

#[derive(Default)]
struct Memo {
    derivations: HashMap<[u8; 32], Arc<Derivation>>,
    /// Per (seed, bound, weighted members, jobs) digest: each member's `(position, index, job)`
    /// for the jobs where it ranks below `bound`, sorted.
    ranks: HashMap<[u8; 32], Arc<RankTable>>,
    /// Per (rank table key, r): the generation's plan (queues, owners, due rounds).
    plans: HashMap<([u8; 32], usize), Arc<Plan>>,
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
        jobs: &[RankedJob],
        bound: usize,
        me: &PeerKey,
    ) -> Vec<(usize, u32, JobId)> {
        self.rank_table(seed, members, weight_of, jobs, bound)
            .1
            .get(me)
            .cloned()
            .unwrap_or_default()
    }

    /// The generation's [`Plan`] from the first `r` of each job's rank, `r <= bound`;
    /// remembered like the rank table it reads.
    pub fn plan(
        &self,
        seed: &[u8; 32],
        members: &[PeerKey],
        weight_of: impl Fn(&PeerKey) -> u64,
        jobs: &[RankedJob],
        bound: usize,
        r: usize,
    ) -> Arc<Plan> {
        let (key, table) = self.rank_table(seed, members, weight_of, jobs, bound);
        if let Some(p) = self.lock().plans.get(&(key, r)) {
            return Arc::clone(p);
        }
        let plan = Arc::new(Plan::new(table.iter().map(|(p, q)| (p, q.as_slice())), r));
        let mut memo = self.lock();
        if memo.plans.len() >= RANK_TABLES {
            memo.plans.clear();
        }
        memo.plans.insert((key, r), Arc::clone(&plan));
        plan
    }

    /// The shared rank table for (seed, bound, weighted members, jobs), and its key: each
    /// member's `(position, index, job)` for the jobs where it ranks below `bound`, sorted.
    fn rank_table(
        &self,
        seed: &[u8; 32],
        members: &[PeerKey],
        weight_of: impl Fn(&PeerKey) -> u64,
        jobs: &[RankedJob],
        bound: usize,
    ) -> ([u8; 32], Arc<RankTable>) {
        let weights: Vec<u64> = members.iter().map(&weight_of).collect();
        let key = {
            let mut h = blake3::Hasher::new();
            h.update(seed);
            h.update(&(bound as u64).to_le_bytes());
            for (p, w) in members.iter().zip(&weights) {
                h.update(p.as_bytes());
                h.update(&w.to_le_bytes());
            }
            for (j, i, _) in jobs {
                h.update(j.as_bytes());
                h.update(&i.to_le_bytes());
            }
            *h.finalize().as_bytes()
        };
        let table = {
            let memo = self.lock();
            memo.ranks.get(&key).cloned()
        };
        if let Some(t) = table {
            return (key, t);
        }
        // Outside the lock: other peers wait only for the insert.
        let weight: HashMap<PeerKey, u64> = members
            .iter()
            .copied()
            .zip(weights.iter().copied())
            .collect();
        let t = Arc::new(rank_table(
            seed,
            members,
            |p| weight.get(p).copied().unwrap_or(1),
            jobs,
            bound,
        ));
        let mut memo = self.lock();
        if memo.ranks.len() >= RANK_TABLES {
            memo.ranks.clear();
        }
        memo.ranks.insert(key, Arc::clone(&t));
        (key, t)
    }
}

/// Each member's `(position, index, job)` for the `jobs` where it ranks below `bound` among
/// A job as ranking sees it: its id, its index, and the member it is pinned to, if any
/// ([`crate::kinds::JobPayload::pinned`]).
pub type RankedJob = (JobId, u32, Option<PeerKey>);

/// The ranking inputs of `jobs` (by id).
pub fn ranked_jobs<'a>(jobs: impl IntoIterator<Item = (&'a JobId, &'a JobSpec)>) -> Vec<RankedJob> {
    jobs.into_iter()
        .map(|(id, s)| (*id, s.index, s.payload.pinned().copied()))
        .collect()
}

/// `members` weighted by `weight_of`, sorted.
pub fn rank_table(
    seed: &[u8; 32],
    members: &[PeerKey],
    weight_of: impl Fn(&PeerKey) -> u64,
    jobs: &[RankedJob],
    bound: usize,
) -> RankTable {
    let mut t = RankTable::new();
    for (job, index, pinned) in jobs {
        // A pinned job ranks its one executor first and no one else (if it is a member).
        let ranked = match pinned {
            Some(p) => members
                .binary_search(p)
                .map_or_else(|_| Vec::new(), |_| vec![*p]),
            None => crate::assign::rank(job, seed, members, &weight_of),
        };
        for (pos, p) in ranked.into_iter().take(bound).enumerate() {
            t.entry(p).or_default().push((pos, *index, *job));
        }
    }
    for list in t.values_mut() {
        list.sort();
    }
    t
}

fn rng_for(campaign: &CampaignId, generation: u32, previous: &[u8; 32]) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(generation_seed(campaign, generation, previous))
}

impl Derivation {
    /// The search of `spec`, before generation 0.
    pub fn new(spec: &CampaignSpec) -> Result<Self, DeriveError> {
        let rules = spec.search.rules();
        Ok(Derivation {
            campaign: spec.id(),
            spec: spec.clone(),
            state: rules.start()?,
            generations: rules.generations(),
            searched: 0,
            generation: 0,
            repair: None,
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
            let roster = self.spec.roster.clone();
            self.jobs = self.make_jobs(0, &[0; 32], &roster);
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

    /// The search's record of its participants (see [`SearchState::standings`]).
    pub fn standings(&self) -> Vec<crate::kinds::ClientStanding> {
        self.state.standings()
    }

    /// What the search has counted (see [`SearchState::counters`]).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.state.counters()
    }

    /// Feeds the closure of the current generation; returns the next generation's jobs, or
    /// an empty list when the campaign is finished.
    ///
    /// A search generation with void jobs is not told to the kind at once: the next
    /// generation runs the voided payloads again (a *repair* generation, issue 23), and the
    /// kind is told the search generation's outcomes once that closes. A job void again in
    /// the repair is told as void: each search generation takes at most two closures.
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
        let outcomes: Vec<Option<Outcome>> = self
            .jobs
            .iter()
            .map(|j| by_id.get(&j.id()).and_then(|e| e.outcome()).cloned())
            .collect();
        let root = closure.root();
        self.generation += 1;
        let (payloads, outcomes) = match self.repair.take() {
            Some(mut repair) => {
                for (rerun, outcome) in repair.reruns.iter().zip(outcomes) {
                    repair.outcomes[*rerun] = outcome;
                }
                (repair.payloads, repair.outcomes)
            }
            None => {
                let payloads: Vec<JobPayload> =
                    self.jobs.iter().map(|j| j.payload.clone()).collect();
                // A void job runs once more in a repair generation, unless it is pinned: its
                // one executor did not deliver, and asking it again would only wait again.
                let reruns: Vec<usize> = (0..outcomes.len())
                    .filter(|i| outcomes[*i].is_none() && payloads[*i].pinned().is_none())
                    .collect();
                if !reruns.is_empty() {
                    let again: Vec<JobPayload> =
                        reruns.iter().map(|i| payloads[*i].clone()).collect();
                    self.jobs = self.specs(self.generation, &root, again);
                    self.repair = Some(Repair {
                        payloads,
                        outcomes,
                        reruns,
                    });
                    self.index_jobs();
                    return Ok(&self.jobs);
                }
                (payloads, outcomes)
            }
        };
        let told: Vec<Told<'_>> = payloads
            .iter()
            .zip(&outcomes)
            .map(|(payload, outcome)| Told {
                payload,
                outcome: outcome.as_ref(),
            })
            .collect();
        self.state.tell(&told)?;
        self.searched += 1;
        self.jobs = if self.searched >= self.generations || self.state.finished() {
            Vec::new()
        } else {
            self.make_jobs(self.generation, &root, &closure.members)
        };
        self.index_jobs();
        Ok(&self.jobs)
    }

    fn make_jobs(
        &mut self,
        generation: u32,
        previous: &[u8; 32],
        members: &[PeerKey],
    ) -> Vec<JobSpec> {
        let mut rng = rng_for(&self.campaign, generation, previous);
        let payloads = self.state.ask_among(&mut rng, members);
        self.specs(generation, previous, payloads)
    }

    /// The jobs of `generation` (after the closure `previous`) that run `payloads`.
    fn specs(
        &self,
        generation: u32,
        previous: &[u8; 32],
        payloads: Vec<JobPayload>,
    ) -> Vec<JobSpec> {
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

/// The jobs of generation 0 and of every generation `closures` open (in order), by id:
/// what a status or export needs to name each decided job. Derivation stops at the first
/// closure that does not follow (a spec whose search cannot start gives no jobs).
pub fn jobs_of_closures<'a>(
    spec: &CampaignSpec,
    closures: impl IntoIterator<Item = &'a Closure>,
) -> BTreeMap<JobId, JobSpec> {
    let mut jobs = BTreeMap::new();
    if let Ok(mut d) = Derivation::new(spec) {
        jobs.extend(d.generation_zero().iter().map(|j| (j.id(), j.clone())));
        for closure in closures {
            match d.advance(closure) {
                Ok(next) => jobs.extend(next.iter().map(|j| (j.id(), j.clone()))),
                Err(_) => break,
            }
        }
    }
    jobs
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
        let jobs: Vec<RankedJob> = (0u32..45)
            .map(|i| (JobId(*blake3::hash(&i.to_le_bytes()).as_bytes()), i, None))
            .collect();
        let seed = [9; 32];
        let cache = DerivationCache::default();
        let mut listed = 0;
        for bound in [1, 5] {
            for me in &members {
                let mut direct: Vec<(usize, u32, JobId)> = jobs
                    .iter()
                    .filter_map(|(j, i, _)| {
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
            .filter(|(j, _, _)| {
                crate::assign::position_below(j, &seed, &members, |_| 1, &members[0], 5).is_some()
            })
            .count();
        assert_eq!(flat.len(), flat_direct);
    }

    fn closure_for(spec: &CampaignSpec, jobs: &[JobSpec], generation: u32) -> Closure {
        let mut entries: Vec<Entry> = jobs
            .iter()
            .map(|j| Entry::Void {
                job: j.id(),
                reason: crate::closure::VoidReason::NoClaim,
            })
            .collect();
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

    /// A closure of `jobs` (of `generation`) settling the jobs whose index `settle` picks and
    /// voiding the rest.
    fn closure_settling(
        spec: &CampaignSpec,
        jobs: &[JobSpec],
        generation: u32,
        settle: impl Fn(u32) -> bool,
    ) -> Closure {
        let mut c = closure_for(spec, jobs, generation);
        let settled: BTreeMap<JobId, u32> = jobs
            .iter()
            .filter(|j| settle(j.index))
            .map(|j| (j.id(), j.index))
            .collect();
        for e in &mut c.entries {
            if let Some(i) = settled.get(&e.job()) {
                let p = crate::agreement::tests::peer(1);
                *e = Entry::Settled {
                    job: e.job(),
                    settlement: crate::Settlement {
                        canonical: crate::agreement::tests::metrics(u64::from(*i)),
                        agreeing: vec![p],
                        dissenting: vec![],
                    },
                    wall_time_ms: 1,
                    credited: vec![p],
                };
            }
        }
        c
    }

    #[test]
    fn voided_jobs_run_again_in_a_repair_generation_before_the_search_moves_on() {
        let spec = sample_spec();
        let mut d = Derivation::new(&spec).expect("derivation");
        let g0: Vec<JobSpec> = d.generation_zero().to_vec();
        // Jobs 3 and 7 go void: generation 1 runs exactly their payloads again.
        let void = |i: u32| i == 3 || i == 7;
        let repair = d
            .advance(&closure_settling(&spec, &g0, 0, |i| !void(i)))
            .expect("advance")
            .to_vec();
        let rerun: Vec<&JobPayload> = g0
            .iter()
            .filter(|j| void(j.index))
            .map(|j| &j.payload)
            .collect();
        assert_eq!(repair.iter().map(|j| &j.payload).collect::<Vec<_>>(), rerun);
        assert!(repair.iter().all(|j| j.generation == 1));
        assert_eq!(d.searched, 0, "the search is not told yet");
        // The repair settles: the search is told generation 0 whole and asks for more.
        let next = d
            .advance(&closure_settling(&spec, &repair, 1, |_| true))
            .expect("advance")
            .to_vec();
        assert_eq!(d.searched, 1);
        assert_eq!(next.len(), g0.len(), "a whole new generation");
        assert!(next.iter().all(|j| j.generation == 2));
        // A generation without voids is told at once.
        let after = d
            .advance(&closure_settling(&spec, &next, 2, |_| true))
            .expect("advance")
            .to_vec();
        assert_eq!(d.searched, 2);
        assert!(after.is_empty() || after.len() == g0.len());
    }

    #[test]
    fn every_node_derives_the_same_generations() {
        let spec = sample_spec();
        let mut a = Derivation::new(&spec).expect("derivation");
        let mut b = Derivation::new(&spec).expect("derivation");
        let g0: Vec<JobSpec> = a.generation_zero().to_vec();
        assert_eq!(g0, b.generation_zero());
        assert_eq!(g0.len(), 20);
        let limits = crate::kinds::nas::gene_limits(match &spec.search {
            crate::spec::Search::Nas(p) => &p.space,
            _ => unreachable!("sample is NAS"),
        });
        for j in &g0 {
            let crate::spec::JobPayload::Nas { genome } = &j.payload else {
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

    #[test]
    fn jobs_of_closures_lists_every_derived_generation() {
        let spec = sample_spec();
        let mut d = Derivation::new(&spec).expect("derivation");
        let g0 = d.generation_zero().to_vec();
        let c0 = closure_for(&spec, &g0, 0);
        let g1 = d.advance(&c0).expect("advance").to_vec();
        let all = jobs_of_closures(&spec, [&c0]);
        assert_eq!(all.len(), g0.len() + g1.len());
        assert!(g0.iter().chain(&g1).all(|j| all.get(&j.id()) == Some(j)));
        // A closure out of order ends the list where it stands.
        assert_eq!(jobs_of_closures(&spec, [&c0, &c0]).len(), all.len());
    }
}
