//! Federated learning on private data (ADR 0010).
//!
//! A round is a generation. Its jobs are the round's **clients**: members sampled from the
//! generation's seed (a member of a federated campaign is a node that offers the campaign's
//! `private_data`), each job **pinned** to its client ([`JobPayload::pinned`]: no one else may
//! run it, and its own result settles it). A client builds the round's start model from the
//! job's recipe (`base` and the previous round's `updates`, as in `train`), trains it on its
//! private data for `local_steps` (DP-SGD with example-level privacy), clips and noises the
//! update (client-level privacy), and publishes the update and the start model as blobs. After
//! the last round one job, run by any member with the campaign's redundancy, evaluates the
//! final model on the public test split.
//!
//! Privacy is accounted here, from the jobs alone, so every node states and enforces the same
//! numbers ([`privacy_spent`]): a round that would take the campaign's client-level `ε`, or a
//! client's example-level `ε`, beyond the budget is not started (such clients are not sampled;
//! with none left, the campaign goes to its final evaluation).

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::train::{Aggregate, OuterStep, trained_blobs};
use super::{CampaignKind, JobPayload, KindRules, SearchError, SearchState, Told};
use crate::id::BlobId;
use crate::identity::PeerKey;
use crate::privacy::{Accountant, MAX_NOISE_MULTIPLIER, Mechanism, ORDERS};
use crate::spec_error::{SpecError, field};

/// Most clients in one round (secure aggregation's Shamir shares allow 255).
pub const MAX_CLIENTS: u32 = 255;
/// Most rounds.
pub const MAX_ROUNDS: u32 = 10_000;
/// Most local steps per round.
pub const MAX_LOCAL_STEPS: u32 = 100_000;
/// Longest private dataset name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Parameters of a `federated` campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederatedParams {
    /// The model (an architecture or a weights file, as for `train`).
    pub model: BlobId,
    /// The name under which clients offer their data (`--private-data NAME=PATH`): `a-z`,
    /// `0-9`, `-`, `_`, at most [`MAX_NAME_LEN`] bytes.
    pub private_data: String,
    /// Rounds.
    pub rounds: u32,
    /// Clients sampled per round (fewer when fewer members offer the data).
    pub clients_per_round: u32,
    /// A round whose agreed updates are fewer leaves the model as it was.
    pub min_clients: u32,
    /// Local optimiser steps per round (the campaign budget gives the optimiser).
    pub local_steps: u32,
    /// Example-level privacy (DP-SGD), if any.
    pub example_privacy: Option<ExamplePrivacy>,
    /// Client-level privacy (each update clipped and noised), if any.
    pub client_privacy: Option<ClientPrivacy>,
    /// `δ` of the stated `(ε, δ)`.
    pub delta: f64,
    /// The most `ε` to spend (per client at example level, per campaign at client level);
    /// `None`: no limit (still stated).
    pub epsilon_budget: Option<f64>,
    /// Each update scaled to at most this L2 norm before combining (0: none).
    pub norm_bound: f32,
    /// How the round's updates are combined.
    pub aggregate: Aggregate,
    /// How the combined update moves the model.
    pub outer: OuterStep,
}

/// DP-SGD's settings for every client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExamplePrivacy {
    /// Per-record gradient norm bound `C`.
    pub clip: f32,
    /// `σ`: noise standard deviation over `C`.
    pub noise_multiplier: f32,
    /// Poisson sampling rate of each local step.
    pub sample_rate: f64,
}

/// Client-level privacy: each update clipped to `clip` and noised with `σ·clip`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientPrivacy {
    /// Update norm bound `C`.
    pub clip: f32,
    /// `σ`: noise standard deviation over `C`.
    pub noise_multiplier: f32,
}

/// What a `federated` job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FedJob {
    /// The round (`rounds`, or the round privacy stopped at, for the final evaluation).
    pub round: u32,
    /// The client that must run it (`None`: the final evaluation, run by anyone).
    pub client: Option<PeerKey>,
    /// Members the round's clients were sampled from (the client-level sampling rate is
    /// clients / population).
    pub population: u32,
    /// The start model's base (as [`super::TrainJob::base`]).
    pub base: BlobId,
    /// The previous round's agreed updates, in job order.
    pub updates: Vec<BlobId>,
}

/// A job as reports show it: `round R client KEY` (`final` for the evaluation).
pub(super) fn summary(job: &FedJob) -> String {
    match &job.client {
        Some(c) => format!("round {} client {c}", job.round),
        None => format!("round {} final evaluation", job.round),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn positive(x: f32) -> bool {
    x.is_finite() && x > 0.0
}

/// A noise multiplier the accountant computes in bounded time: `0 ≤ σ ≤` [`MAX_NOISE_MULTIPLIER`]
/// (a larger one protects no better in any useful sense, and its RDP series runs longer).
fn valid_multiplier(x: f32) -> bool {
    x.is_finite() && (0.0..=MAX_NOISE_MULTIPLIER as f32).contains(&x)
}

impl FederatedParams {
    /// The example-level mechanism of one client's round.
    pub fn example_round(&self) -> Option<Mechanism> {
        self.example_privacy.map(|e| Mechanism {
            sample_rate: e.sample_rate,
            noise_multiplier: f64::from(e.noise_multiplier),
            steps: u64::from(self.local_steps),
        })
    }

    /// The client-level mechanism of a round sampling `clients` of `population`.
    pub fn client_round(&self, clients: u32, population: u32) -> Option<Mechanism> {
        self.client_privacy.map(|c| Mechanism {
            sample_rate: if population == 0 {
                1.0
            } else {
                (f64::from(clients) / f64::from(population)).min(1.0)
            },
            noise_multiplier: f64::from(c.noise_multiplier),
            steps: 1,
        })
    }

    fn validate_privacy(&self) -> Result<(), SpecError> {
        if let Some(e) = self.example_privacy {
            if !positive(e.clip) {
                return Err(field("example_privacy.clip", "must be above 0"));
            }
            if !valid_multiplier(e.noise_multiplier) {
                return Err(field(
                    "example_privacy.noise_multiplier",
                    format!("must be 0 to {MAX_NOISE_MULTIPLIER}"),
                ));
            }
            if !(e.sample_rate > 0.0 && e.sample_rate <= 1.0) {
                return Err(field("example_privacy.sample_rate", "must be in (0, 1]"));
            }
        }
        if let Some(c) = self.client_privacy {
            if !positive(c.clip) {
                return Err(field("client_privacy.clip", "must be above 0"));
            }
            if !valid_multiplier(c.noise_multiplier) {
                return Err(field(
                    "client_privacy.noise_multiplier",
                    format!("must be 0 to {MAX_NOISE_MULTIPLIER}"),
                ));
            }
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(field("delta", "must be in (0, 1)"));
        }
        if let Some(b) = self.epsilon_budget
            && !(b.is_finite() && b > 0.0)
        {
            return Err(field("epsilon_budget", "must be above 0"));
        }
        Ok(())
    }
}

impl KindRules for FederatedParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Federated
    }

    fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.private_data) {
            return Err(field(
                "private_data",
                format!("a name of 1 to {MAX_NAME_LEN} bytes of a-z, 0-9, - and _"),
            ));
        }
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(field("rounds", format!("must be 1 to {MAX_ROUNDS}")));
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients_per_round) {
            return Err(field(
                "clients_per_round",
                format!("must be 1 to {MAX_CLIENTS}"),
            ));
        }
        if !(1..=self.clients_per_round).contains(&self.min_clients) {
            return Err(field("min_clients", "must be 1 to clients_per_round"));
        }
        if !(1..=MAX_LOCAL_STEPS).contains(&self.local_steps) {
            return Err(field(
                "local_steps",
                format!("must be 1 to {MAX_LOCAL_STEPS}"),
            ));
        }
        if !(self.norm_bound.is_finite() && self.norm_bound >= 0.0) {
            return Err(field("norm_bound", "must be 0 (none) or above"));
        }
        self.validate_privacy()?;
        if let OuterStep::Nesterov {
            learning_rate,
            momentum,
        } = self.outer
            && !(positive(learning_rate) && (0.0..1.0).contains(&momentum))
        {
            return Err(field(
                "outer",
                "Nesterov needs a learning rate above 0 and a momentum in [0, 1)",
            ));
        }
        match self.aggregate {
            Aggregate::TrimmedMean { trim } if 2 * trim >= self.min_clients => Err(field(
                "trim",
                "must leave at least one update of the fewest a round combines: 2 x trim < min_clients",
            )),
            Aggregate::MultiKrum { byzantine, keep }
                if 2 * u32::from(byzantine) + 2 >= self.min_clients || keep == 0 =>
            {
                Err(field(
                    "krum_byzantine",
                    "Multi-Krum needs min_clients > 2f + 2 and keep of at least 1",
                ))
            }
            Aggregate::CenteredClip { radius, iterations }
                if !(positive(radius) && radius <= 100.0 && (1..=10).contains(&iterations)) =>
            {
                Err(field(
                    "clip_radius",
                    "must be in (0, 100], with 1 to 10 iterations",
                ))
            }
            _ => Ok(()),
        }
    }

    fn generations(&self) -> u32 {
        self.rounds.saturating_add(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.clients_per_round)
    }

    fn total_jobs(&self) -> u64 {
        u64::from(self.clients_per_round) * u64::from(self.rounds) + 1
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        Ok(Box::new(FedRounds {
            params: self.clone(),
            round: 0,
            stopped: false,
            base: self.model,
            updates: Vec::new(),
            participation: BTreeMap::new(),
            campaign: Accountant::new(),
            curves: Curves::new(self),
        }))
    }
}

/// The rounds of a `federated` campaign.
#[derive(Clone)]
struct FedRounds {
    /// The campaign's parameters.
    params: FederatedParams,
    /// The round asked next.
    round: u32,
    /// Whether privacy stopped the rounds (the next ask is the final evaluation).
    stopped: bool,
    /// See [`FedJob::base`].
    base: BlobId,
    /// See [`FedJob::updates`].
    updates: Vec<BlobId>,
    /// Rounds each client was sampled for.
    participation: BTreeMap<PeerKey, u32>,
    /// The campaign's client-level spending.
    campaign: Accountant,
    /// The RDP curves of one client's round and of each round shape seen.
    curves: Curves,
}

/// An RDP curve at every order of [`ORDERS`].
type Curve = [f64; ORDERS.len()];

/// Most client-level curves kept (one per distinct `(clients, population)` of a round).
const MAX_CURVES: usize = 64;

/// RDP curves computed once and scaled, never once per member or per round: a curve costs
/// up to tens of milliseconds (a fractional order's series), and a campaign may have
/// hundreds of members and thousands of rounds.
#[derive(Clone)]
struct Curves {
    /// One client's round at example level (`local_steps` DP-SGD steps), if private.
    example: Option<Curve>,
    /// The client-level curve of a round of `clients` sampled among `population`.
    client: BTreeMap<(u32, u32), Curve>,
}

impl Curves {
    fn new(params: &FederatedParams) -> Curves {
        Curves {
            example: params.example_round().map(|m| m.rdp()),
            client: BTreeMap::new(),
        }
    }

    /// The client-level curve of a round of `clients` of `population` (cached).
    fn client(&mut self, params: &FederatedParams, clients: u32, population: u32) -> Option<Curve> {
        let m = params.client_round(clients, population)?;
        if let Some(c) = self.client.get(&(clients, population)) {
            return Some(*c);
        }
        if self.client.len() >= MAX_CURVES {
            self.client.clear();
        }
        let c = m.rdp();
        self.client.insert((clients, population), c);
        Some(c)
    }

    /// Example-level `ε` of a client after `rounds` rounds.
    fn example_epsilon(&self, rounds: u32, delta: f64) -> Option<f64> {
        let curve = self.example.as_ref()?;
        let mut a = Accountant::new();
        a.add_curve(curve, u64::from(rounds));
        Some(a.epsilon(delta))
    }
}

impl FedRounds {
    /// Whether one more round for `client` keeps its example-level `ε` within the budget.
    fn client_may_join(&self, client: &PeerKey) -> bool {
        let Some(budget) = self.params.epsilon_budget else {
            return true;
        };
        let rounds = self.participation.get(client).copied().unwrap_or(0) + 1;
        self.curves
            .example_epsilon(rounds, self.params.delta)
            .is_none_or(|e| e <= budget)
    }

    /// The round's clients: up to `clients_per_round` of the eligible members, drawn from
    /// `rng` (partial Fisher–Yates over the sorted eligible list), or none when the campaign's
    /// client-level budget forbids the round.
    fn sample(&mut self, rng: &mut ChaCha8Rng, members: &[PeerKey]) -> Vec<PeerKey> {
        let mut eligible: Vec<PeerKey> = members
            .iter()
            .filter(|p| self.client_may_join(p))
            .copied()
            .collect();
        eligible.sort();
        eligible.dedup();
        let k = (self.params.clients_per_round as usize).min(eligible.len());
        if let Some(budget) = self.params.epsilon_budget
            && let Some(curve) = self
                .curves
                .client(&self.params, k as u32, members.len() as u32)
        {
            let mut next = self.campaign.clone();
            next.add_curve(&curve, 1);
            if next.epsilon(self.params.delta) > budget {
                return Vec::new();
            }
        }
        for i in 0..k {
            let j = i + (rng.next_u64() % (eligible.len() - i) as u64) as usize;
            eligible.swap(i, j);
        }
        eligible.truncate(k);
        eligible
    }

    fn job(&self, client: Option<PeerKey>, population: u32) -> JobPayload {
        JobPayload::Federated(FedJob {
            round: self.round,
            client,
            population,
            base: self.base,
            updates: self.updates.clone(),
        })
    }
}

impl SearchState for FedRounds {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        self.ask_among(rng, &[])
    }

    fn ask_among(&mut self, rng: &mut ChaCha8Rng, members: &[PeerKey]) -> Vec<JobPayload> {
        let population = members.len() as u32;
        if self.round >= self.params.rounds || self.stopped {
            return vec![self.job(None, population)];
        }
        let clients = self.sample(rng, members);
        if clients.is_empty() {
            // Over budget, or no member: the campaign ends with its evaluation.
            self.stopped = true;
            return vec![self.job(None, population)];
        }
        clients
            .into_iter()
            .map(|c| self.job(Some(c), population))
            .collect()
    }

    /// Spends the round's privacy (every sampled client counts, settled or not: a client
    /// may have published before its job went void), then takes the next recipe as `train`
    /// does: the start model most agreed outcomes name, with the updates that started from
    /// it; fewer than `min_clients` of them leave the model as it was.
    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError> {
        let jobs: Vec<&FedJob> = told
            .iter()
            .filter_map(|t| match t.payload {
                JobPayload::Federated(j) => Some(j),
                _ => None,
            })
            .collect();
        let clients: Vec<PeerKey> = jobs.iter().filter_map(|j| j.client).collect();
        if clients.is_empty() {
            self.round = self.round.saturating_add(1);
            return Ok(());
        }
        for c in &clients {
            *self.participation.entry(*c).or_default() += 1;
        }
        let population = jobs.first().map_or(0, |j| j.population);
        if let Some(curve) = self
            .curves
            .client(&self.params, clients.len() as u32, population)
        {
            self.campaign.add_curve(&curve, 1);
        }
        self.round = self.round.saturating_add(1);
        let agreed: Vec<(BlobId, BlobId)> = told
            .iter()
            .filter_map(|t| t.outcome.and_then(trained_blobs).map(|(u, s, _)| (u, s)))
            .collect();
        let mut best: Option<(usize, BlobId)> = None;
        for (_, start) in &agreed {
            let n = agreed.iter().filter(|a| a.1 == *start).count();
            if best.is_none_or(|(m, _)| n > m) {
                best = Some((n, *start));
            }
        }
        let Some((n, start)) = best else {
            return Ok(());
        };
        if (n as u32) < self.params.min_clients {
            return Ok(());
        }
        self.base = start;
        self.updates = agreed
            .iter()
            .filter(|a| a.1 == start)
            .map(|a| a.0)
            .collect();
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

/// Privacy spent, as every node states it from the campaign's jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    /// The campaign's client-level `ε` after each round so far (empty without client-level
    /// privacy).
    pub campaign: Vec<f64>,
    /// Each client's example-level `ε` (and rounds taken part in), without example-level
    /// privacy: none.
    pub clients: BTreeMap<PeerKey, (u32, f64)>,
    /// `δ`.
    pub delta: f64,
}

/// The privacy spent by `rounds` (each round's jobs, in round order): client-level per round
/// for the campaign, example-level per client. Computed from the job payloads alone.
pub fn privacy_spent(params: &FederatedParams, rounds: &[Vec<&FedJob>]) -> Spent {
    let mut curves = Curves::new(params);
    let mut campaign = Accountant::new();
    let mut spent = Spent {
        campaign: Vec::new(),
        clients: BTreeMap::new(),
        delta: params.delta,
    };
    let mut taken: BTreeMap<PeerKey, u32> = BTreeMap::new();
    for jobs in rounds {
        let clients: Vec<PeerKey> = jobs.iter().filter_map(|j| j.client).collect();
        if clients.is_empty() {
            continue;
        }
        for c in &clients {
            *taken.entry(*c).or_default() += 1;
        }
        let population = jobs.first().map_or(0, |j| j.population);
        if let Some(curve) = curves.client(params, clients.len() as u32, population) {
            campaign.add_curve(&curve, 1);
            spent.campaign.push(campaign.epsilon(params.delta));
        }
    }
    for (c, n) in taken {
        if let Some(e) = curves.example_epsilon(n, params.delta) {
            spent.clients.insert(c, (n, e));
        }
    }
    spent
}

#[cfg(test)]
mod tests;
