//! Campaign kinds: architecture search ([`nas`]), loss-function search ([`loss`]),
//! distillation shards ([`distill`]), training one model together in rounds ([`train`]),
//! federated learning on private data ([`federated`]) and prompt search ([`prompt`]).
//!
//! Each kind owns, in its one file, its typed parameters and their validation, how the jobs of
//! generation 0 and of generation `g + 1` are derived (its [`SearchState`]), how an agreed
//! outcome becomes the search's objectives, and how its payloads are shown. Everything else in
//! the crate — assignment, commit–reveal, agreement, closures, audits, scoring — is
//! kind-agnostic and reaches a kind only through this module.
//!
//! This file is the one registration point: the only place in the crate that matches on
//! [`Search`], [`JobPayload`] or [`CampaignKind`]. A new kind adds a file beside the others,
//! a variant to those three enums (at the end: the wire encoding of the existing variants must
//! not change) and its arm in each `match` below.

pub mod distill;
pub mod federated;
pub mod loss;
pub mod nas;
pub mod prompt;
pub mod train;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::identity::PeerKey;
use crate::outcome::Outcome;
use crate::spec_error::{SpecError, field};

pub use distill::DistillParams;
pub use federated::{
    ClientPrivacy, ExamplePrivacy, Features, FedJob, FederatedParams, SecureAggregation,
    SecureRound, SecureStep,
};
pub use loss::LossParams;
pub use nas::{NasParams, NasSpace, Strategy};
pub use prompt::{PromptParams, PromptStrategy};
pub use train::{Aggregate, OuterStep, TrainJob, TrainParams, UpdateEncoding};

/// Most jobs in one generation.
pub const MAX_JOBS_PER_GENERATION: u64 = 20_000;

/// The kind of a campaign, without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CampaignKind {
    /// Architecture search.
    Nas,
    /// Loss-function search.
    Loss,
    /// Distillation shards.
    Distill,
    /// One model trained together, round by round.
    Train,
    /// One model trained on private data that never leaves its clients (ADR 0010).
    Federated,
    /// Prompt search: the prompt that makes a language model most likely to say a target.
    Prompt,
}

impl CampaignKind {
    /// Every kind.
    pub const ALL: [CampaignKind; 6] = [
        CampaignKind::Nas,
        CampaignKind::Loss,
        CampaignKind::Distill,
        CampaignKind::Train,
        CampaignKind::Federated,
        CampaignKind::Prompt,
    ];

    /// The kind's name in campaign files, reports and the API: `nas`, `loss`, `distill`,
    /// `train`, `federated` or `prompt`.
    pub const fn name(self) -> &'static str {
        match self {
            CampaignKind::Nas => "nas",
            CampaignKind::Loss => "loss",
            CampaignKind::Distill => "distill",
            CampaignKind::Train => "train",
            CampaignKind::Federated => "federated",
            CampaignKind::Prompt => "prompt",
        }
    }

    /// The kind named `name` (see [`CampaignKind::name`]).
    pub fn from_name(name: &str) -> Option<CampaignKind> {
        CampaignKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl core::fmt::Display for CampaignKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The search a campaign runs, with its typed parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Search {
    /// Architecture search: genomes trained and scored on `[accuracy, params, FLOPs]`.
    Nas(NasParams),
    /// Loss-function search: GP expressions used as the loss of a fixed reference model.
    Loss(LossParams),
    /// Distillation: a teacher's top-k soft labels over shards of the dataset.
    Distill(DistillParams),
    /// Training: one model trained round by round from its segments' agreed updates.
    Train(TrainParams),
    /// Federated learning: clients train on private data; updates are private and combined.
    Federated(FederatedParams),
    /// Prompt search: prompts scored by a language model's likelihood of a target.
    Prompt(PromptParams),
}

/// What a job computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPayload {
    /// Train and evaluate an architecture genome (evolve's canonical genome encoding).
    Nas {
        /// The encoded genome.
        genome: Vec<u8>,
    },
    /// Train the reference model with a loss expression (evolve's canonical encoding).
    Loss {
        /// The encoded expression.
        expression: Vec<u8>,
    },
    /// Run the teacher over samples `start..end` of the dataset.
    Distill {
        /// First sample.
        start: u64,
        /// One past the last sample.
        end: u64,
    },
    /// Train the round's model on one segment (or evaluate the final model).
    Train(TrainJob),
    /// A client's round on its private data (or the final evaluation).
    Federated(FedJob),
    /// Score a batch of prompts (genes: words or tokens) under the teacher.
    Prompt {
        /// The prompts, as genes.
        prompts: Vec<Vec<u32>>,
    },
}

/// What the shared machinery asks of a campaign kind's parameters.
pub trait KindRules: core::fmt::Debug {
    /// Which kind these are.
    fn kind(&self) -> CampaignKind;
    /// Checks every parameter against its allowed range.
    fn validate(&self) -> Result<(), SpecError>;
    /// Generations the campaign runs (at least 1).
    fn generations(&self) -> u32;
    /// Jobs in each generation.
    fn jobs_per_generation(&self) -> u64;
    /// Jobs in the whole campaign, repair generations not counted.
    fn total_jobs(&self) -> u64 {
        self.jobs_per_generation()
            .saturating_mul(u64::from(self.generations()))
    }
    /// The search state before generation 0.
    fn start(&self) -> Result<Box<dyn SearchState>, SearchError>;
}

/// A kind's search, advanced one agreed generation at a time. Deterministic: the same
/// sequence of `ask`s (with the same seeded generators) and `tell`s gives the same jobs on
/// every node.
pub trait SearchState: Send + Sync {
    /// The payloads of the next generation's jobs, in job-index order.
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload>;
    /// [`SearchState::ask`] for a generation whose members (sorted) are `members`: kinds
    /// whose jobs go to particular members (federated clients) sample them here.
    fn ask_among(&mut self, rng: &mut ChaCha8Rng, members: &[PeerKey]) -> Vec<JobPayload> {
        let _ = members;
        self.ask(rng)
    }
    /// The agreed outcomes of the generation asked last, in job-index order (`None`: the job
    /// went void).
    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError>;
    /// Whether the search has nothing more to ask: the campaign then ends before its last
    /// generation (a federated campaign stopped early by its privacy budget or by too few
    /// clients, once its final evaluation is told). Default: never.
    fn finished(&self) -> bool {
        false
    }
    /// How the search stands with each participant it keeps a record of (a federated
    /// campaign's clients: rounds taken part in, strikes, bench), sorted by key. Default:
    /// none.
    fn standings(&self) -> Vec<ClientStanding> {
        Vec::new()
    }
    /// What the search has counted so far, by name (a prompt campaign's model calls, tokens
    /// and cache hits, and its budgets). Default: nothing.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// A copy of this state (derivations are shared copy-on-write).
    fn clone_box(&self) -> Box<dyn SearchState>;
}

/// One client as a kind's search judges it (see [`SearchState::standings`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStanding {
    /// The client.
    pub client: PeerKey,
    /// Rounds it was sampled for.
    pub rounds: u32,
    /// Times most of a later round's clients flagged its update (outlier, above the norm
    /// bound, malformed, a lying reveal).
    pub strikes: u32,
    /// While benched: the round before which it is sampled only to make up the minimum.
    pub benched_until: Option<u32>,
}

impl Clone for Box<dyn SearchState> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// One job of a generation as its search is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Told<'a> {
    /// What the job computed.
    pub payload: &'a JobPayload,
    /// The agreed outcome, or `None` when the job went void.
    pub outcome: Option<&'a Outcome>,
}

/// Why a kind's search cannot start or go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// The architecture space encodes no genes.
    #[error("the NAS space has no genes")]
    NoGenes,
    /// The evolutionary search refused its configuration or input.
    #[error(transparent)]
    Evolve(#[from] hivemesh_evolve::EvolveError),
}

impl Search {
    /// The kind's rules for these parameters: the one dispatch from a spec to its kind.
    pub fn rules(&self) -> &dyn KindRules {
        match self {
            Search::Nas(p) => p,
            Search::Loss(p) => p,
            Search::Distill(p) => p,
            Search::Train(p) => p,
            Search::Federated(p) => p,
            Search::Prompt(p) => p,
        }
    }

    /// The campaign's kind.
    pub fn kind(&self) -> CampaignKind {
        self.rules().kind()
    }
}

impl JobPayload {
    /// The kind of campaign this payload belongs to.
    pub fn kind(&self) -> CampaignKind {
        match self {
            JobPayload::Nas { .. } => CampaignKind::Nas,
            JobPayload::Loss { .. } => CampaignKind::Loss,
            JobPayload::Distill { .. } => CampaignKind::Distill,
            JobPayload::Train(_) => CampaignKind::Train,
            JobPayload::Federated(_) => CampaignKind::Federated,
            JobPayload::Prompt { .. } => CampaignKind::Prompt,
        }
    }

    /// The one member that may run this job, when the kind pins it (a federated client's
    /// round: only its data can compute it). A pinned job settles on its executor's result
    /// alone, is never stolen, replicated or audited, and no one else's result for it counts.
    pub fn pinned(&self) -> Option<&PeerKey> {
        match self {
            JobPayload::Federated(j) => j.client.as_ref(),
            _ => None,
        }
    }

    /// The payload as reports show it: the genome or expression as hex, or a sample range
    /// `start..end`.
    pub fn summary(&self) -> String {
        match self {
            JobPayload::Nas { genome } => nas::summary(genome),
            JobPayload::Loss { expression } => loss::summary(expression),
            JobPayload::Distill { start, end } => distill::summary(*start, *end),
            JobPayload::Train(j) => train::summary(j),
            JobPayload::Federated(j) => federated::summary(j),
            JobPayload::Prompt { prompts } => prompt::summary(prompts),
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The error rate of an agreed successful outcome on a non-empty evaluation split; `None`
/// for failures, void jobs and empty splits.
pub fn error_rate(outcome: Option<&Outcome>) -> Option<f64> {
    match outcome {
        Some(Outcome::Success(m)) if m.total > 0 => Some(1.0 - m.correct as f64 / m.total as f64),
        _ => None,
    }
}

/// Checks a searched kind's population and generation count.
pub(crate) fn check_population(population: u32, generations: u32) -> Result<(), SpecError> {
    if !(2..=MAX_JOBS_PER_GENERATION as u32).contains(&population) {
        return Err(field(
            "population",
            format!("must be 2 to {MAX_JOBS_PER_GENERATION}"),
        ));
    }
    if !(1..=100_000).contains(&generations) {
        return Err(field("generations", "must be 1 to 100000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, FailureKind, Metrics};

    #[test]
    fn kind_names_round_trip() {
        for k in CampaignKind::ALL {
            assert_eq!(CampaignKind::from_name(k.name()), Some(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(CampaignKind::from_name("prompts"), None);
    }

    #[test]
    fn payload_kinds_and_summaries() {
        let p = JobPayload::Nas {
            genome: vec![0x0a, 0xff],
        };
        assert_eq!(
            (p.kind(), p.summary().as_str()),
            (CampaignKind::Nas, "0aff")
        );
        let p = JobPayload::Loss {
            expression: vec![1],
        };
        assert_eq!((p.kind(), p.summary().as_str()), (CampaignKind::Loss, "01"));
        let p = JobPayload::Distill { start: 5, end: 9 };
        assert_eq!(
            (p.kind(), p.summary().as_str()),
            (CampaignKind::Distill, "5..9")
        );
    }

    #[test]
    fn error_rate_of_outcomes() {
        let m = Metrics {
            correct: 3,
            total: 4,
            params: 1,
            flops: 1,
            extra: Default::default(),
            artifacts: vec![],
        };
        assert_eq!(error_rate(Some(&Outcome::Success(m.clone()))), Some(0.25));
        let empty = Metrics { total: 0, ..m };
        assert_eq!(error_rate(Some(&Outcome::Success(empty))), None);
        let f = Outcome::Failure(Failure {
            kind: FailureKind::NonFinite,
            detail: String::new(),
        });
        assert_eq!(error_rate(Some(&f)), None);
        assert_eq!(error_rate(None), None);
    }

    /// The wire encoding of the enums is part of every campaign and job id: variants keep
    /// their indices.
    #[test]
    fn variant_indices_are_stable() {
        let enc = |p: &JobPayload| postcard::to_stdvec(p).expect("encodes")[0];
        assert_eq!(enc(&JobPayload::Nas { genome: vec![] }), 0);
        assert_eq!(enc(&JobPayload::Loss { expression: vec![] }), 1);
        assert_eq!(enc(&JobPayload::Distill { start: 0, end: 0 }), 2);
        let k = |k: CampaignKind| postcard::to_stdvec(&k).expect("encodes")[0];
        assert_eq!(
            CampaignKind::ALL.map(k),
            [0, 1, 2, 3, 4, 5],
            "CampaignKind variants keep their order"
        );
    }
}
