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
use crate::outcome::Outcome;
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
    /// Secure aggregation, if any: each round then takes four generations (see
    /// [`SecureStep`]) and only sums of updates are revealed.
    pub secure: Option<SecureAggregation>,
    /// What the model sees of each record: its values, or fixed features computed from them
    /// (on the private and the public data alike; the model's input is their shape).
    pub features: Features,
}

/// What a federated model sees of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Features {
    /// The record's own values.
    Values,
    /// The scattering transform of an image (order 2, kymatio's definition: `1 + JL +
    /// L²J(J−1)/2` channels per input channel, subsampled by `2^J`), each image's channels
    /// group-normalised. Fixed and data-independent: computed from private records it costs
    /// no privacy, and DP training on it is far more accurate at a given ε than on pixels
    /// (Tramèr and Boneh 2021).
    Scattering {
        /// Scales `J` (1 ..= [`MAX_SCATTER_SCALES`]).
        scales: u8,
        /// Angles `L` (1 ..= [`MAX_SCATTER_ANGLES`]).
        angles: u8,
        /// Groups of the per-image normalisation (0: none); divides the channel count.
        groups: u8,
    },
}

/// Most scattering scales.
pub const MAX_SCATTER_SCALES: u8 = 4;
/// Most scattering angles.
pub const MAX_SCATTER_ANGLES: u8 = 16;

impl Features {
    /// Scattering with `J = 2`, `L = 8` and 27 groups: Tramèr and Boneh's setting for digits.
    pub const SCATTERING: Features = Features::Scattering {
        scales: 2,
        angles: 8,
        groups: 27,
    };

    /// Checks the settings: scales and angles in range, groups dividing the channels.
    pub fn validate(&self) -> Result<(), SpecError> {
        let Features::Scattering {
            scales,
            angles,
            groups,
        } = *self
        else {
            return Ok(());
        };
        if !(1..=MAX_SCATTER_SCALES).contains(&scales) {
            return Err(field(
                "features.scales",
                format!("must be 1 to {MAX_SCATTER_SCALES}"),
            ));
        }
        if !(1..=MAX_SCATTER_ANGLES).contains(&angles) {
            return Err(field(
                "features.angles",
                format!("must be 1 to {MAX_SCATTER_ANGLES}"),
            ));
        }
        let (j, l) = (u32::from(scales), u32::from(angles));
        let channels = 1 + j * l + l * l * j * (j - 1) / 2;
        if groups != 0 && !channels.is_multiple_of(u32::from(groups)) {
            return Err(field(
                "features.groups",
                format!("must divide the {channels} channels (or be 0: no normalisation)"),
            ));
        }
        Ok(())
    }
}

/// Secure aggregation's settings (ADR 0010).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureAggregation {
    /// Groups a round's clients are split into (roster position modulo `buckets`); each
    /// group's sum is revealed and the aggregate combines the groups' means (1: only the
    /// round's sum is revealed). A robust aggregate needs several.
    pub buckets: u32,
    /// Each client's neighbours in its group (SecAgg+); 0: every other client of the group.
    pub neighbours: u32,
}

impl SecureAggregation {
    /// The fewest surviving clients a group's sum may be revealed for: an honest client
    /// reveals no self-mask share of a smaller group, and each adds `1/this` of the
    /// client-level noise variance, so every revealed sum carries the whole of it.
    pub fn group_min(&self, min_clients: u32) -> u32 {
        (min_clients / self.buckets.max(1)).max(2)
    }
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

/// The step of a round a `federated` job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecureStep {
    /// Without secure aggregation: train and publish the update (or the final evaluation).
    Train,
    /// Secure aggregation, 1: publish fresh public keys for this round.
    Keys,
    /// 2: deal sealed shares of this round's secrets to the neighbours of the roster.
    Deal,
    /// 3: train and publish the masked update (pairwise masks with the clients that dealt).
    Mask,
    /// 4: reveal the shares that unmask the survivors' sum.
    Reveal,
}

/// A round with secure aggregation, as far as it has gone: what its steps agreed, indexed by
/// roster position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureRound {
    /// The round (its keys and masks are bound to it).
    pub round: u32,
    /// Clients sampled for the round (the client-level sampling rate is this / population).
    pub sampled: u32,
    /// Clients whose keys were agreed, with the keys blob, in sampling order.
    pub roster: Vec<(PeerKey, BlobId)>,
    /// Each roster client's deal blob (`None`: it did not deal and takes no further part).
    pub deals: Vec<Option<BlobId>>,
    /// Each roster client's masked update (`None`: it dropped, or started from another model
    /// than most).
    pub masked: Vec<Option<BlobId>>,
    /// Each roster client's reveal (`None`: none agreed).
    pub reveals: Vec<Option<BlobId>>,
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
    /// The previous round's agreed updates, in job order (without secure aggregation).
    pub updates: Vec<BlobId>,
    /// With secure aggregation: the previous round, whose unmasked sums move `base`.
    pub sums: Option<SecureRound>,
    /// The step this job runs.
    pub step: SecureStep,
    /// With secure aggregation: this round so far (empty for [`SecureStep::Keys`]).
    pub secure: Option<SecureRound>,
}

/// Bits of one `flagged_K` metric (below the sign bit of an `i64`).
const FLAG_BITS: usize = 62;

/// Extra metrics a client reports about the previous round's updates it found at fault
/// (refused, over the norm limit, outliers; with secure aggregation, bad shares): position
/// `i` is bit `i % 62` of `flagged_{i / 62}`, present only when not zero.
pub fn flag_metrics(flagged: &[usize]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for i in flagged.iter().filter(|i| **i < MAX_CLIENTS as usize) {
        *out.entry(format!("flagged_{}", i / FLAG_BITS)).or_default() |= 1 << (i % FLAG_BITS);
    }
    out
}

/// The positions [`flag_metrics`] encoded in `extra`.
pub fn flags_of(extra: &BTreeMap<String, i64>) -> Vec<usize> {
    let mut out = Vec::new();
    for (k, v) in extra {
        let Some(word) = k
            .strip_prefix("flagged_")
            .and_then(|w| w.parse::<usize>().ok())
        else {
            continue;
        };
        out.extend(
            (0..FLAG_BITS)
                .filter(|b| v >> b & 1 == 1)
                .map(|b| word * FLAG_BITS + b)
                .filter(|i| *i < MAX_CLIENTS as usize),
        );
    }
    out.sort_unstable();
    out
}

/// A job as reports show it: `round R client KEY` (`final` for the evaluation).
pub(super) fn summary(job: &FedJob) -> String {
    let step = match job.step {
        SecureStep::Train => "",
        SecureStep::Keys => " keys",
        SecureStep::Deal => " deal",
        SecureStep::Mask => " masked update",
        SecureStep::Reveal => " reveal",
    };
    match &job.client {
        Some(c) => format!("round {} client {c}{step}", job.round),
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

    /// Generations a round takes: 1, or 4 with secure aggregation.
    pub fn steps_per_round(&self) -> u32 {
        if self.secure.is_some() { 4 } else { 1 }
    }

    /// The largest magnitude of one value of a client's update under secure aggregation (the
    /// fixed point's bound): the clip, plus eight standard deviations of the client's share of
    /// the client-level noise. `None` without secure aggregation.
    pub fn secure_bound(&self) -> Option<f64> {
        let s = self.secure?;
        let m = f64::from(s.group_min(self.min_clients));
        Some(match self.client_privacy {
            Some(c) => f64::from(c.clip) * (1.0 + 8.0 * f64::from(c.noise_multiplier) / m.sqrt()),
            None => f64::from(self.norm_bound),
        })
    }

    /// The largest L2 norm an honest client's update of `values` values can have: it clips
    /// to the client-level `C` (then adds its noise, of standard deviation `σ'C` per value,
    /// whose norm stays below `σ'C(√values + 6)` but with negligible probability) or bounds
    /// itself to `norm_bound`; `None` when neither is asked. An update above it is dropped and
    /// its client flagged.
    pub fn norm_limit(&self, values: u64) -> Option<f64> {
        let slack = 1.0 + 1e-3;
        match self.client_privacy {
            Some(c) => {
                let share = self
                    .secure
                    .map_or(1.0, |s| f64::from(s.group_min(self.min_clients)).sqrt());
                let sigma = f64::from(c.noise_multiplier) / share;
                let noise = sigma * ((values as f64).sqrt() + 6.0);
                Some(f64::from(c.clip) * (slack + noise))
            }
            None if self.norm_bound > 0.0 => Some(f64::from(self.norm_bound) * slack),
            None => None,
        }
    }

    fn validate_secure(&self) -> Result<(), SpecError> {
        let Some(s) = self.secure else {
            return Ok(());
        };
        if self.client_privacy.is_none() && self.norm_bound <= 0.0 {
            return Err(field(
                "secure",
                "secure aggregation needs bounded updates: give client_privacy or a norm_bound",
            ));
        }
        if s.buckets == 0 || 2 * s.buckets > self.min_clients {
            return Err(field(
                "secure.buckets",
                "must be 1 to min_clients / 2 (each group's sum hides at least two clients)",
            ));
        }
        if s.neighbours == 1 || s.neighbours >= MAX_CLIENTS {
            return Err(field(
                "secure.neighbours",
                format!("must be 0 (all of the group) or 2 to {}", MAX_CLIENTS - 1),
            ));
        }
        Ok(())
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
        self.features.validate()?;
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
        self.validate_secure()?;
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
        // What the aggregate combines at the least: the updates of a round, or with secure
        // aggregation its groups' means.
        let (fewest, what) = match self.secure {
            Some(s) => (s.buckets, "secure.buckets"),
            None => (self.min_clients, "min_clients"),
        };
        match self.aggregate {
            Aggregate::TrimmedMean { trim } if 2 * trim >= fewest => Err(field(
                "trim",
                format!(
                    "must leave at least one update of the fewest a round combines: 2 x trim < {what}"
                ),
            )),
            Aggregate::MultiKrum { byzantine, keep }
                if 2 * u32::from(byzantine) + 2 >= fewest || keep == 0 =>
            {
                Err(field(
                    "krum_byzantine",
                    format!("Multi-Krum needs {what} > 2f + 2 and keep of at least 1"),
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
        self.rounds
            .saturating_mul(self.steps_per_round())
            .saturating_add(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.clients_per_round)
    }

    fn total_jobs(&self) -> u64 {
        u64::from(self.clients_per_round)
            * u64::from(self.rounds)
            * u64::from(self.steps_per_round())
            + 1
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        Ok(Box::new(FedRounds {
            params: self.clone(),
            round: 0,
            stopped: false,
            evaluated: false,
            base: self.model,
            updates: Vec::new(),
            sums: None,
            step: SecureStep::Keys,
            current: SecureRound::default(),
            pending_start: None,
            update_clients: Vec::new(),
            strikes: BTreeMap::new(),
            benched: BTreeMap::new(),
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
    /// Whether the final evaluation was told (the campaign ends).
    evaluated: bool,
    /// See [`FedJob::base`].
    base: BlobId,
    /// See [`FedJob::updates`].
    updates: Vec<BlobId>,
    /// See [`FedJob::sums`].
    sums: Option<SecureRound>,
    /// With secure aggregation: the step asked next.
    step: SecureStep,
    /// With secure aggregation: the round so far.
    current: SecureRound,
    /// With secure aggregation: the start model the round's masked updates agreed on.
    pending_start: Option<BlobId>,
    /// The client of each of `updates`.
    update_clients: Vec<PeerKey>,
    /// Times each client was found at fault by most of the next round's clients.
    strikes: BTreeMap<PeerKey, u32>,
    /// Clients sampled before the given round only to make up `min_clients` (`2^(strikes − 1)`
    /// rounds after a strike).
    benched: BTreeMap<PeerKey, u32>,
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

    /// The round's clients: up to `clients_per_round` of the eligible members (within their
    /// budget, not benched), drawn from `rng` (partial Fisher–Yates over the sorted list),
    /// made up to `min_clients` from benched members if need be; or none when the campaign's
    /// client-level budget forbids the round.
    fn sample(&mut self, rng: &mut ChaCha8Rng, members: &[PeerKey]) -> Vec<PeerKey> {
        let mut ok: Vec<PeerKey> = members
            .iter()
            .filter(|p| self.client_may_join(p))
            .copied()
            .collect();
        ok.sort();
        ok.dedup();
        let is_benched = |p: &PeerKey| self.benched.get(p).is_some_and(|until| self.round < *until);
        let (mut benched, mut eligible): (Vec<PeerKey>, Vec<PeerKey>) =
            ok.into_iter().partition(|p| is_benched(p));
        let k = (self.params.clients_per_round as usize).min(eligible.len());
        for i in 0..k {
            let j = i + (rng.next_u64() % (eligible.len() - i) as u64) as usize;
            eligible.swap(i, j);
        }
        eligible.truncate(k);
        // Benched clients only make up the round's minimum, fewest strikes first: a bench
        // must not starve the campaign when few members offer the data.
        let want = (self.params.min_clients as usize).min(self.params.clients_per_round as usize);
        if eligible.len() < want {
            benched.sort_by_key(|p| (self.strikes.get(p).copied().unwrap_or(0), *p));
            let missing = want - eligible.len();
            eligible.extend(benched.into_iter().take(missing));
        }
        if let Some(budget) = self.params.epsilon_budget
            && let Some(curve) =
                self.curves
                    .client(&self.params, eligible.len() as u32, members.len() as u32)
        {
            let mut next = self.campaign.clone();
            next.add_curve(&curve, 1);
            if next.epsilon(self.params.delta) > budget {
                return Vec::new();
            }
        }
        eligible
    }

    fn job(&self, client: Option<PeerKey>, population: u32, step: SecureStep) -> JobPayload {
        let secure = match step {
            SecureStep::Deal | SecureStep::Mask | SecureStep::Reveal => Some(self.current.clone()),
            SecureStep::Train | SecureStep::Keys => None,
        };
        JobPayload::Federated(FedJob {
            round: self.round,
            client,
            population,
            base: self.base,
            updates: self.updates.clone(),
            sums: self.sums.clone(),
            step,
            secure,
        })
    }

    /// The clients of the current secure step: the roster for the deal, those that dealt for
    /// the masked update, the survivors for the reveal.
    fn secure_clients(&self) -> Vec<PeerKey> {
        let c = &self.current;
        let keep = |i: usize| match self.step {
            SecureStep::Deal => true,
            SecureStep::Mask => c.deals.get(i).is_some_and(Option::is_some),
            _ => c.masked.get(i).is_some_and(Option::is_some),
        };
        (0..c.roster.len())
            .filter(|i| keep(*i))
            .map(|i| c.roster[i].0)
            .collect()
    }

    /// A round with secure aggregation that cannot go on (too few clients at a step): the
    /// model stays as it was and the next round starts.
    fn abandon_round(&mut self) {
        self.round = self.round.saturating_add(1);
        self.step = SecureStep::Keys;
        self.current = SecureRound::default();
        self.pending_start = None;
    }

    /// Spends a round's privacy: each client that computed an update takes part once, and the
    /// campaign's client-level accountant composes one round of `sampled` of `population`.
    fn spend(&mut self, clients: &[PeerKey], sampled: u32, population: u32) {
        for c in clients {
            *self.participation.entry(*c).or_default() += 1;
        }
        if let Some(curve) = self.curves.client(&self.params, sampled, population) {
            self.campaign.add_curve(&curve, 1);
        }
    }

    /// Tells a step of a round with secure aggregation: `agreed` is each asked client with the
    /// artifacts of its agreed success (if any).
    fn tell_secure(&mut self, agreed: &[(PeerKey, Option<&[BlobId]>)], population: u32) {
        let min = self.params.min_clients.max(2) as usize;
        let first = |a: Option<&[BlobId]>| a.and_then(|a| a.first().copied());
        // Each roster client's agreed artifact, in roster order.
        let by_roster = |roster: &[(PeerKey, BlobId)]| -> Vec<Option<BlobId>> {
            roster
                .iter()
                .map(|r| agreed.iter().find(|a| a.0 == r.0).and_then(|a| first(a.1)))
                .collect()
        };
        match self.step {
            SecureStep::Train => {}
            SecureStep::Keys => {
                self.current.roster = agreed
                    .iter()
                    .filter_map(|(c, a)| first(*a).map(|k| (*c, k)))
                    .collect();
                self.step = SecureStep::Deal;
            }
            SecureStep::Deal => {
                self.current.deals = by_roster(&self.current.roster);
                self.step = SecureStep::Mask;
            }
            SecureStep::Mask => {
                let clients: Vec<PeerKey> = agreed.iter().map(|a| a.0).collect();
                self.spend(&clients, self.current.sampled, population);
                let starts: Vec<(PeerKey, BlobId, BlobId)> = agreed
                    .iter()
                    .filter_map(|(c, a)| match a {
                        Some([masked, start]) => Some((*c, *masked, *start)),
                        _ => None,
                    })
                    .collect();
                let start = most_named(starts.iter().map(|s| s.2));
                if start.is_none() {
                    // No client could build the start model: as in a plain round, the sums
                    // it applies may be lost; the next round starts from the base alone.
                    self.sums = None;
                }
                self.current.masked = self
                    .current
                    .roster
                    .iter()
                    .map(|r| {
                        starts
                            .iter()
                            .find(|s| s.0 == r.0 && Some(s.2) == start)
                            .map(|s| s.1)
                    })
                    .collect();
                self.pending_start = start;
                self.step = SecureStep::Reveal;
            }
            SecureStep::Reveal => {
                self.current.reveals = by_roster(&self.current.roster);
                self.base = self.pending_start.take().unwrap_or(self.base);
                self.updates.clear();
                self.sums = Some(std::mem::take(&mut self.current));
                self.round = self.round.saturating_add(1);
                self.step = SecureStep::Keys;
                return;
            }
        }
        let c = &self.current;
        let left = match self.step {
            SecureStep::Deal => c.roster.len(),
            SecureStep::Mask => c.deals.iter().flatten().count(),
            _ => c.masked.iter().flatten().count(),
        };
        if left < min {
            self.abandon_round();
        }
    }

    /// Strikes each of `accused` (the clients of the updates the reporters applied, by
    /// position) that more than half of `reports` flagged, with at least two reports: a struck
    /// client is not sampled for `2^(strikes − 1)` rounds. One lying reporter cannot strike an
    /// honest client; honest reporters flag alike (the same blobs, the same rule).
    fn judge(&mut self, reports: &[Vec<usize>], accused: &[PeerKey]) {
        if reports.len() < 2 {
            return;
        }
        for (i, c) in accused.iter().enumerate() {
            let n = reports
                .iter()
                .filter(|r| r.binary_search(&i).is_ok())
                .count();
            if 2 * n > reports.len() {
                let s = self.strikes.entry(*c).or_default();
                *s = s.saturating_add(1);
                let rounds = 1u32 << (*s - 1).min(16);
                self.benched
                    .insert(*c, self.round.saturating_add(1).saturating_add(rounds));
            }
        }
    }

    /// Tells a round without secure aggregation: the next recipe as `train` takes it, the
    /// start model most agreed outcomes name, with the updates that started from it; fewer
    /// than `min_clients` of them leave the model as it was.
    fn tell_plain(&mut self, told: &[Told<'_>]) {
        let agreed: Vec<(BlobId, BlobId, Option<PeerKey>)> = told
            .iter()
            .filter_map(|t| {
                let client = match t.payload {
                    JobPayload::Federated(j) => j.client,
                    _ => None,
                };
                t.outcome
                    .and_then(trained_blobs)
                    .map(|(u, s, _)| (u, s, client))
            })
            .collect();
        let Some(start) = most_named(agreed.iter().map(|a| a.1)) else {
            // No client could build the start model: the agreed updates it applies may be
            // lost (their one holder gone before anyone fetched them). The next round starts
            // from the base alone, or the campaign would never move again.
            self.updates.clear();
            self.update_clients.clear();
            return;
        };
        let from_start: Vec<&(BlobId, BlobId, Option<PeerKey>)> =
            agreed.iter().filter(|a| a.1 == start).collect();
        if (from_start.len() as u32) < self.params.min_clients {
            return;
        }
        self.base = start;
        self.updates = from_start.iter().map(|a| a.0).collect();
        self.update_clients = from_start.iter().filter_map(|a| a.2).collect();
    }
}

/// The id named most often (the first to reach the count on a tie), if any.
fn most_named(ids: impl Iterator<Item = BlobId> + Clone) -> Option<BlobId> {
    let mut best: Option<(usize, BlobId)> = None;
    for id in ids.clone() {
        let n = ids.clone().filter(|x| *x == id).count();
        if best.is_none_or(|(m, _)| n > m) {
            best = Some((n, id));
        }
    }
    best.map(|b| b.1)
}

impl SearchState for FedRounds {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        self.ask_among(rng, &[])
    }

    fn ask_among(&mut self, rng: &mut ChaCha8Rng, members: &[PeerKey]) -> Vec<JobPayload> {
        let population = members.len() as u32;
        if self.round >= self.params.rounds || self.stopped {
            return vec![self.job(None, population, SecureStep::Train)];
        }
        let secure = self.params.secure.is_some();
        if secure && self.step != SecureStep::Keys {
            let step = self.step;
            return self
                .secure_clients()
                .into_iter()
                .map(|c| self.job(Some(c), population, step))
                .collect();
        }
        let clients = self.sample(rng, members);
        if clients.is_empty() {
            // Over budget, or no member: the campaign ends with its evaluation.
            self.stopped = true;
            return vec![self.job(None, population, SecureStep::Train)];
        }
        let step = if secure {
            self.current = SecureRound {
                round: self.round,
                sampled: clients.len() as u32,
                ..SecureRound::default()
            };
            SecureStep::Keys
        } else {
            SecureStep::Train
        };
        clients
            .into_iter()
            .map(|c| self.job(Some(c), population, step))
            .collect()
    }

    /// Spends the round's privacy when its clients computed updates (every client asked
    /// counts, settled or not: a client may have published before its job went void), then
    /// takes the next recipe (see [`FedRounds::tell_plain`], [`FedRounds::tell_secure`]).
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
            // The final evaluation: nothing is left to ask.
            self.round = self.round.saturating_add(1);
            self.evaluated = true;
            return Ok(());
        }
        let population = jobs.first().map_or(0, |j| j.population);
        let reports: Vec<Vec<usize>> = told
            .iter()
            .filter(|t| {
                matches!(t.payload, JobPayload::Federated(j)
                    if j.client.is_some() && matches!(j.step, SecureStep::Train | SecureStep::Mask))
            })
            .filter_map(|t| match t.outcome {
                Some(Outcome::Success(m)) => Some(flags_of(&m.extra)),
                _ => None,
            })
            .collect();
        let accused: Vec<PeerKey> = match (&self.sums, self.params.secure) {
            (Some(sums), Some(_)) => sums.roster.iter().map(|r| r.0).collect(),
            (_, Some(_)) => Vec::new(),
            (_, None) => self.update_clients.clone(),
        };
        self.judge(&reports, &accused);
        if self.params.secure.is_some() {
            let agreed: Vec<(PeerKey, Option<&[BlobId]>)> = told
                .iter()
                .filter_map(|t| {
                    let JobPayload::Federated(j) = t.payload else {
                        return None;
                    };
                    let artifacts = match t.outcome {
                        Some(Outcome::Success(m)) => Some(m.artifacts.as_slice()),
                        _ => None,
                    };
                    Some((j.client?, artifacts))
                })
                .collect();
            self.tell_secure(&agreed, population);
            return Ok(());
        }
        self.spend(&clients, clients.len() as u32, population);
        self.round = self.round.saturating_add(1);
        self.tell_plain(told);
        Ok(())
    }

    fn finished(&self) -> bool {
        self.evaluated
    }

    fn standings(&self) -> Vec<super::ClientStanding> {
        let keys: std::collections::BTreeSet<&PeerKey> = self
            .participation
            .keys()
            .chain(self.strikes.keys())
            .collect();
        keys.into_iter()
            .map(|k| super::ClientStanding {
                client: *k,
                rounds: self.participation.get(k).copied().unwrap_or(0),
                strikes: self.strikes.get(k).copied().unwrap_or(0),
                benched_until: self.benched.get(k).copied().filter(|u| self.round < *u),
            })
            .collect()
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

/// The privacy spent by `rounds` (each generation's jobs, in order): client-level per round
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
        // Updates are computed by a plain round's clients and at a secure round's mask step.
        let clients: Vec<PeerKey> = jobs
            .iter()
            .filter(|j| matches!(j.step, SecureStep::Train | SecureStep::Mask))
            .filter_map(|j| j.client)
            .collect();
        if clients.is_empty() {
            continue;
        }
        for c in &clients {
            *taken.entry(*c).or_default() += 1;
        }
        let population = jobs.first().map_or(0, |j| j.population);
        let sampled = jobs
            .first()
            .and_then(|j| j.secure.as_ref())
            .map_or(clients.len() as u32, |s| s.sampled);
        if let Some(curve) = curves.client(params, sampled, population) {
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
