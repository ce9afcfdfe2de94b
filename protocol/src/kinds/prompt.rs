//! Prompt search (issue 27, ADR 0011): a genetic algorithm looks for the prompt under which a
//! language model (the teacher, a blob) makes a target text most likely. A prompt is a
//! sequence of *genes*: indices into the campaign's word list (each word a fixed token
//! sequence, as HyperCycle's example encodes prompts), or, without a word list, the model's
//! tokens themselves. NSGA-II searches `[−log p(target | prompt), prompt length]` with the
//! operators that fit sequences ([`PromptProblem`]: one-point crossover, substitution,
//! insertion, deletion).
//!
//! Model calls cost, so the search keeps two things every node derives alike from the agreed
//! outcomes:
//! - **a cache** of every scored prompt (by its token sequence, so two gene sequences that
//!   spell the same tokens are one prompt): an offspring already scored is told its score and
//!   never becomes a job again, anywhere in the swarm;
//! - **a budget** in model calls and tokens (prompt + target per call): a generation holds only
//!   the prompts the budget still pays for, and the campaign ends when it is spent.
//!
//! Jobs are batches of at most [`MAX_BATCH`] prompts; a job's outcome carries each prompt's
//! log-likelihood in micro-nats as the extra metric [`loglik_name`]`(i)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hivemesh_evolve::prompt::PromptProblem;
use hivemesh_evolve::{Evaluation, Nsga2, Nsga2Config, Problem};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    CampaignKind, JobPayload, KindRules, SearchError, SearchState, Told, check_population,
};
use crate::id::BlobId;
use crate::outcome::Outcome;
use crate::spec_error::{SpecError, field};

/// Most prompts in one job: one extra metric each, and a result carries at most
/// `message::MAX_EXTRA_METRICS` (16; a test in `message` holds them equal: kinds sit below
/// `message` in the crate's layering).
pub const MAX_BATCH: u32 = 16;
/// The longest prompt, in genes.
pub const MAX_PROMPT_LEN: u16 = 256;
/// Most words in a word list.
pub const MAX_WORDS: usize = 2048;
/// Most tokens of one word.
pub const MAX_WORD_TOKENS: usize = 32;
/// The most bytes the word list and the target may take in the campaign (it travels in the
/// signed announcement, whose body holds at most 16 KiB).
pub const MAX_ENCODED_BYTES: usize = 12 * 1024;
/// The largest call budget.
pub const MAX_CALLS: u64 = 1_000_000;
/// The largest vocabulary a campaign may name (the architecture IR's limit).
pub const MAX_VOCAB: u32 = hivemesh_evolve::arch::MAX_LM_VOCAB as u32;
/// The largest context a campaign may name (the architecture IR's limit).
pub const MAX_CONTEXT: u32 = hivemesh_evolve::arch::MAX_LM_CONTEXT as u32;
/// Rounds of offspring a generation draws before it gives up finding an unscored prompt (the
/// search then ends: its space is exhausted around the population).
const MAX_DRAWS: usize = 16;

/// How prompts are proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptStrategy {
    /// NSGA-II over `[−log-likelihood, length]`.
    Nsga2,
    /// Random prompts each generation (the yardstick), with the same cache and budget.
    Random,
}

/// Prompt-search parameters. The teacher's shape (`vocab`, `context`) and the token sequences
/// are filled in at submission from the teacher's file; every executor checks them against the
/// teacher it loads and fails the job if they differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptParams {
    /// The teacher: a language model file (safetensors with `hivemesh_lm` metadata), a blob.
    pub teacher: BlobId,
    /// The teacher's vocabulary (every token here is below it).
    pub vocab: u32,
    /// The teacher's context: the longest prompt plus the target must fit it (plus one: the
    /// last target token is predicted, not read).
    pub context: u32,
    /// The target output, as the teacher's tokens.
    pub target: Vec<u32>,
    /// The word list, each word as tokens; empty: the genes are the teacher's tokens.
    pub words: Vec<Vec<u32>>,
    /// The shortest prompt, in genes.
    pub min_len: u16,
    /// The longest prompt, in genes.
    pub max_len: u16,
    /// Prompts proposed per generation.
    pub population: u32,
    /// Generations at most.
    pub generations: u32,
    /// Prompts per job.
    pub batch: u32,
    /// The budget in model calls (one forward pass per prompt scored).
    pub max_calls: u64,
    /// The budget in tokens (a call reads its prompt and the target).
    pub max_tokens: u64,
    /// How prompts are proposed.
    pub strategy: PromptStrategy,
}

impl PromptParams {
    /// Genes to choose from: the words, or the vocabulary.
    pub fn alphabet(&self) -> u32 {
        if self.words.is_empty() {
            self.vocab
        } else {
            self.words.len() as u32
        }
    }

    /// The prompt `genes` spell, as tokens; `None` when a gene is outside the alphabet.
    pub fn tokens(&self, genes: &[u32]) -> Option<Vec<u32>> {
        if self.words.is_empty() {
            return genes
                .iter()
                .all(|&g| g < self.vocab)
                .then(|| genes.to_vec());
        }
        let mut out = Vec::new();
        for &g in genes {
            out.extend_from_slice(self.words.get(g as usize)?);
        }
        Some(out)
    }

    /// The most tokens one gene spells.
    fn longest_gene(&self) -> usize {
        self.words.iter().map(Vec::len).max().unwrap_or(1)
    }

    /// What one call on `prompt` (tokens) costs in tokens: it reads the prompt and the target.
    pub fn call_tokens(&self, prompt: &[u32]) -> u64 {
        (prompt.len() + self.target.len()) as u64
    }

    /// The most tokens one call reads: the longest prompt (every gene its longest word) and
    /// the target.
    pub fn longest_call(&self) -> u64 {
        (usize::from(self.max_len) * self.longest_gene() + self.target.len()) as u64
    }

    /// The most calls and tokens the campaign can spend: every generation's proposals scored
    /// (none found in the cache), each at the longest prompt, capped by the budgets.
    pub fn projected(&self) -> (u64, u64) {
        let calls = u64::from(self.population)
            .saturating_mul(u64::from(self.generations))
            .min(self.max_calls);
        (
            calls,
            calls
                .saturating_mul(self.longest_call())
                .min(self.max_tokens),
        )
    }

    fn problem(&self) -> PromptProblem {
        PromptProblem {
            alphabet: self.alphabet(),
            min_len: usize::from(self.min_len),
            max_len: usize::from(self.max_len),
            objectives: 2,
            mutation_rate: 0.9,
        }
    }

    fn check_tokens(&self) -> Result<(), SpecError> {
        let outside = |t: &u32| *t >= self.vocab;
        if self.target.is_empty() || self.target.iter().any(outside) {
            return Err(field(
                "target",
                format!(
                    "must be at least 1 token, each below the vocabulary ({})",
                    self.vocab
                ),
            ));
        }
        if self.words.len() > MAX_WORDS
            || self
                .words
                .iter()
                .any(|w| w.is_empty() || w.len() > MAX_WORD_TOKENS || w.iter().any(outside))
        {
            return Err(field(
                "words",
                format!(
                    "at most {MAX_WORDS} words of 1 to {MAX_WORD_TOKENS} tokens, each below \
                     the vocabulary ({})",
                    self.vocab
                ),
            ));
        }
        let encoded =
            postcard::to_stdvec(&(&self.words, &self.target)).map_or(usize::MAX, |b| b.len());
        if encoded > MAX_ENCODED_BYTES {
            return Err(field(
                "words",
                format!(
                    "the word list and the target take {encoded} bytes; at most \
                     {MAX_ENCODED_BYTES} fit a campaign announcement"
                ),
            ));
        }
        let longest = usize::from(self.max_len) * self.longest_gene() + self.target.len();
        if longest > self.context as usize + 1 {
            return Err(field(
                "target",
                format!(
                    "the longest prompt ({} tokens) and the target ({} tokens) do not fit the \
                     teacher's context of {} tokens (prompt + target ≤ {}): shorten the target \
                     or max_len",
                    longest - self.target.len(),
                    self.target.len(),
                    self.context,
                    self.context + 1
                ),
            ));
        }
        Ok(())
    }
}

impl KindRules for PromptParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Prompt
    }

    fn validate(&self) -> Result<(), SpecError> {
        check_population(self.population, self.generations)?;
        if !(2..=MAX_VOCAB).contains(&self.vocab) {
            return Err(field("vocab", format!("must be 2 to {MAX_VOCAB}")));
        }
        if !(1..=MAX_CONTEXT).contains(&self.context) {
            return Err(field("context", format!("must be 1 to {MAX_CONTEXT}")));
        }
        if self.min_len == 0 || self.min_len > self.max_len || self.max_len > MAX_PROMPT_LEN {
            return Err(field(
                "min_len",
                format!("need 1 ≤ min_len ≤ max_len ≤ {MAX_PROMPT_LEN}"),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(field("batch", format!("must be 1 to {MAX_BATCH}")));
        }
        if !(1..=MAX_CALLS).contains(&self.max_calls) {
            return Err(field("max_calls", format!("must be 1 to {MAX_CALLS}")));
        }
        self.check_tokens()?;
        let cheapest = (usize::from(self.min_len) + self.target.len()) as u64;
        if self.max_tokens < cheapest {
            return Err(field(
                "max_tokens",
                format!("must pay for at least one call ({cheapest} tokens)"),
            ));
        }
        Ok(())
    }

    fn generations(&self) -> u32 {
        self.generations.max(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.population.div_ceil(self.batch.max(1)))
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        let nsga = Nsga2::new(
            self.problem(),
            Nsga2Config {
                pop_size: self.population as usize,
                ..Nsga2Config::default()
            },
        )?;
        Ok(Box::new(PromptSearch {
            params: Arc::new(self.clone()),
            nsga: Box::new(nsga),
            cache: Arc::new(BTreeMap::new()),
            asked: Vec::new(),
            jobs: Vec::new(),
            spent: Spent::default(),
            done: false,
        }))
    }
}

/// A job's prompts as reports show them.
pub(super) fn summary(prompts: &[Vec<u32>]) -> String {
    let genes: usize = prompts.iter().map(Vec::len).sum();
    format!("{} prompts, {genes} genes", prompts.len())
}

/// The extra metric holding prompt `i`'s log-likelihood (micro-nats) in a job's outcome.
pub fn loglik_name(i: usize) -> String {
    format!("ll{i:02}")
}

/// The log-likelihoods (micro-nats) of a job's `n` prompts from its outcome: `Ok(None)` for a
/// failure (each prompt is then scored as failed), an error for a success that does not carry
/// one value per prompt (every node judges it alike: all its prompts failed).
pub fn logliks(outcome: &Outcome, n: usize) -> Option<Vec<i64>> {
    match outcome {
        Outcome::Success(m) => (0..n)
            .map(|i| m.extra.get(&loglik_name(i)).copied())
            .collect::<Option<Vec<i64>>>()
            .filter(|v| v.len() == m.extra.len() && v.iter().all(|&x| x <= 0)),
        Outcome::Failure(_) => None,
    }
}

/// A scored prompt's key in the cache: the hash of its tokens (32 bytes whatever the prompt's
/// length, so a campaign's cache holds at most [`MAX_CALLS`] small entries).
type PromptKey = [u8; 32];

/// The cache key of the prompt `tokens`.
fn key(tokens: &[u32]) -> PromptKey {
    crate::id::hash_canonical(crate::id::context::PROMPT, &tokens)
}

/// Calls, tokens and cache hits so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Spent {
    /// Prompts scored by the model (agreed outcomes, failures included).
    calls: u64,
    /// Tokens those calls read.
    tokens: u64,
    /// Proposals answered from the cache instead.
    cache_hits: u64,
}

/// The search state of a prompt campaign.
#[derive(Clone)]
struct PromptSearch {
    /// The campaign's parameters.
    params: Arc<PromptParams>,
    /// The genetic search.
    nsga: Box<Nsga2<PromptProblem>>,
    /// Every prompt scored, by the hash of its tokens: its log-likelihood in micro-nats,
    /// `None` when its job failed (shared copy-on-write between derivations).
    cache: Arc<BTreeMap<PromptKey, Option<i64>>>,
    /// The proposals of the generation asked last (genes), in order.
    asked: Vec<Vec<u32>>,
    /// The generation's jobs: indices into `asked`.
    jobs: Vec<Vec<usize>>,
    /// What was spent.
    spent: Spent,
    /// The budget is spent or no unscored prompt can be found.
    done: bool,
}

impl PromptSearch {
    /// The next proposals: NSGA-II's offspring, or random prompts.
    fn propose(&mut self, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
        match self.params.strategy {
            PromptStrategy::Nsga2 => self.nsga.ask(rng),
            PromptStrategy::Random => {
                let p = self.nsga.problem().clone();
                (0..self.params.population).map(|_| p.sample(rng)).collect()
            }
        }
    }

    /// The evaluation of `genes` from the cache (worst when unscored or failed).
    fn evaluation(&self, genes: &[u32]) -> Evaluation {
        let score = self
            .params
            .tokens(genes)
            .and_then(|t| self.cache.get(&key(&t)).copied());
        match score.flatten() {
            Some(ll) => Evaluation::feasible(vec![-(ll as f64) / 1e6, genes.len() as f64]),
            None => Evaluation::worst(2),
        }
    }

    /// Tells the search the evaluations of everything asked (from the cache).
    fn tell_cached(&mut self) -> Result<(), SearchError> {
        let evals = self.asked.iter().map(|g| self.evaluation(g)).collect();
        if self.params.strategy == PromptStrategy::Nsga2 {
            self.nsga.tell(evals)?;
        }
        Ok(())
    }

    /// Splits `asked` into cache hits and the new prompts the budget pays for (one per token
    /// sequence), batched into jobs; whether some new prompt was left unpaid.
    fn plan(&mut self) -> bool {
        let p = Arc::clone(&self.params);
        let (mut calls, mut tokens) = (self.spent.calls, self.spent.tokens);
        let mut fresh: std::collections::BTreeSet<PromptKey> = Default::default();
        let mut chosen = Vec::new();
        let mut unpaid = false;
        for (i, genes) in self.asked.iter().enumerate() {
            let Some(t) = p.tokens(genes) else { continue };
            let k = key(&t);
            if self.cache.contains_key(&k) || fresh.contains(&k) {
                self.spent.cache_hits += 1;
                continue;
            }
            let cost = p.call_tokens(&t);
            if calls >= p.max_calls || tokens.saturating_add(cost) > p.max_tokens {
                unpaid = true;
                continue;
            }
            calls += 1;
            tokens += cost;
            fresh.insert(k);
            chosen.push(i);
        }
        self.jobs = chosen
            .chunks(p.batch.max(1) as usize)
            .map(<[usize]>::to_vec)
            .collect();
        unpaid
    }
}

impl SearchState for PromptSearch {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        self.jobs.clear();
        for _ in 0..MAX_DRAWS {
            if self.done {
                break;
            }
            self.asked = self.propose(rng);
            let unpaid = self.plan();
            if !self.jobs.is_empty() {
                self.done = unpaid;
                return self
                    .jobs
                    .iter()
                    .map(|idx| JobPayload::Prompt {
                        prompts: idx.iter().map(|&i| self.asked[i].clone()).collect(),
                    })
                    .collect();
            }
            // Nothing new to score: the budget is spent, or every proposal was scored before
            // (told from the cache, and drawn again).
            self.done = unpaid;
            if self.tell_cached().is_err() {
                self.done = true;
            }
        }
        self.done = true;
        Vec::new()
    }

    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError> {
        let p = Arc::clone(&self.params);
        let cache = Arc::make_mut(&mut self.cache);
        for t in told {
            let (JobPayload::Prompt { prompts }, Some(outcome)) = (t.payload, t.outcome) else {
                continue;
            };
            let scores = logliks(outcome, prompts.len());
            for (i, genes) in prompts.iter().enumerate() {
                let Some(tokens) = p.tokens(genes) else {
                    continue;
                };
                self.spent.calls += 1;
                self.spent.tokens += p.call_tokens(&tokens);
                cache.insert(key(&tokens), scores.as_ref().map(|s| s[i]));
            }
        }
        self.tell_cached()
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("model_calls", self.spent.calls),
            ("tokens", self.spent.tokens),
            ("cache_hits", self.spent.cache_hits),
            ("max_calls", self.params.max_calls),
            ("max_tokens", self.params.max_tokens),
        ]
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests;
