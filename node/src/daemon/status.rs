//! The read models the API and the CLI show: [`NodeStatus`], [`CampaignStatus`],
//! [`SettledJob`], [`FrontPoint`] and [`front`], and the functions that build them from a
//! campaign's closures (settled jobs, standings, the metrics counted per closure).
//!
//! The rules come from the protocol: what each job's closure decided, audit labels and scores
//! are [`hivemesh_protocol::standings`]'s (statistics come out of the state machine); this
//! file only turns them into the JSON and table shapes the API and the CLI show.

use std::collections::BTreeMap;

use hivemesh_protocol::closure::Closure;
use hivemesh_protocol::derive::jobs_of_closures;
use hivemesh_protocol::id::CampaignId;
use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::kinds::federated::privacy_spent;
use hivemesh_protocol::message::Outcome;
use hivemesh_protocol::scoring::PeerScore;
use hivemesh_protocol::spec::{CampaignKind, CampaignSpec, FedJob, JobPayload, JobSpec, Search};
use hivemesh_protocol::standings::{self, AuditLabel, DecidedJob, JobStatus};
use serde::Serialize;

use super::campaigns::Campaign;
use crate::hex;
use crate::metrics::Metrics;
use crate::store::Store;

/// One campaign as the node sees it (served by `hivemesh campaign status` and the HTTP API).
#[derive(Debug, Clone, Serialize)]
pub struct CampaignStatus {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `nas`, `loss` or `distill`.
    pub kind: String,
    /// The generation in progress (or the last one, when finished).
    pub generation: u32,
    /// Generations the campaign runs.
    pub generations: u32,
    /// Whether the last generation closed.
    pub finished: bool,
    /// Members of the current generation.
    pub members: usize,
    /// Voters of the current generation's closure vote.
    pub voters: usize,
    /// The closure vote's epoch: above 0 after the creator handed a stalled vote to the
    /// voters that stalled (ADR 0006).
    pub vote_epoch: u32,
    /// Voters that stalled in the current epoch (a vote that stays stalled, with no regenesis
    /// coming, needs the creator's node back online).
    pub stalls: usize,
    /// Stored messages.
    pub messages: u64,
    /// Jobs of closed generations that settled (agreed success or failure).
    pub settled: usize,
    /// Jobs this node executed (results held).
    pub results_held: u64,
    /// Closures: generation and root (hex).
    pub closures: Vec<(u32, String)>,
    /// The current front: settled successful jobs not dominated on (accuracy up, params
    /// down, FLOPs down), best accuracy first.
    pub front: Vec<FrontPoint>,
    /// The protocol's one-line summary.
    pub summary: String,
    /// What a federated campaign's privacy has cost so far (ADR 0010); `None` for other kinds.
    pub privacy: Option<PrivacyStatus>,
    /// A federated campaign's clients as its rounds judged them: rounds taken part in,
    /// strikes, bench (empty for other kinds).
    pub clients: Vec<ClientStandingStatus>,
    /// What the search has counted, by name: a prompt campaign's `model_calls`, `tokens` and
    /// `cache_hits` so far and its budgets `max_calls` and `max_tokens` (empty for other
    /// kinds).
    pub counters: BTreeMap<String, u64>,
    /// A prompt campaign's front: the scored prompts no other beats on both log-likelihood
    /// and length, best first (empty for other kinds).
    pub prompts: Vec<crate::executor::prompt::PromptPoint>,
}

/// One client's standing in a federated campaign (from the agreed rounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientStandingStatus {
    /// Its key (hex).
    pub client: String,
    /// Rounds it was sampled for.
    pub rounds: u32,
    /// Times most of a later round's clients flagged its update.
    pub strikes: u32,
    /// While benched: the round before which it is sampled only to make up the minimum.
    pub benched_until: Option<u32>,
}

/// Privacy spent by a federated campaign, as every node states it from the jobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacyStatus {
    /// `δ` of every `ε` here.
    pub delta: f64,
    /// The campaign's budget, if any.
    pub budget: Option<f64>,
    /// Client-level `ε` of the campaign after each round (empty without client-level
    /// privacy).
    pub campaign_epsilon: Vec<f64>,
    /// Example-level `ε` per client (empty without example-level privacy).
    pub clients: Vec<ClientPrivacyStatus>,
}

/// One client's example-level spending.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientPrivacyStatus {
    /// Its key (hex).
    pub client: String,
    /// Rounds it was sampled for.
    pub rounds: u32,
    /// Its `ε`.
    pub epsilon: f64,
}

/// The privacy a federated campaign's `jobs` spent (`None` for other kinds).
pub fn privacy_status(spec: &CampaignSpec, jobs: &[JobSpec]) -> Option<PrivacyStatus> {
    let Search::Federated(p) = &spec.search else {
        return None;
    };
    let mut rounds: BTreeMap<u32, Vec<&FedJob>> = BTreeMap::new();
    for j in jobs {
        if let JobPayload::Federated(f) = &j.payload {
            rounds.entry(j.generation).or_default().push(f);
        }
    }
    let rounds: Vec<Vec<&FedJob>> = rounds.into_values().collect();
    let spent = privacy_spent(p, &rounds);
    Some(PrivacyStatus {
        delta: spent.delta,
        budget: p.epsilon_budget,
        campaign_epsilon: spent.campaign,
        clients: spent
            .clients
            .into_iter()
            .map(|(k, (rounds, epsilon))| ClientPrivacyStatus {
                client: hex(k.as_bytes()),
                rounds,
                epsilon,
            })
            .collect(),
    })
}

/// One point of a campaign's front.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontPoint {
    /// The job.
    pub job: String,
    /// Its generation.
    pub generation: u32,
    /// Test accuracy.
    pub accuracy: f64,
    /// Parameters.
    pub params: u64,
    /// FLOPs per sample.
    pub flops: u64,
    /// The weights blob, if any.
    pub artifact: Option<String>,
}

/// The non-dominated settled jobs (accuracy up, params and FLOPs down), best accuracy first.
/// A `train` campaign's front is its final model (the final evaluation, whose one artifact is
/// the model): its rounds' jobs are steps towards it, not candidates.
pub fn front(jobs: &[SettledJob]) -> Vec<FrontPoint> {
    let ok: Vec<&SettledJob> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Success)
        .filter(|j| {
            let rounds = [CampaignKind::Train.name(), CampaignKind::Federated.name()];
            !rounds.contains(&j.payload.0.as_str()) || j.artifacts.len() == 1
        })
        // A prompt job scores prompts, not a model: its front is [`CampaignStatus::prompts`].
        .filter(|j| j.payload.0 != CampaignKind::Prompt.name())
        .collect();
    let dominates = |a: &SettledJob, b: &SettledJob| {
        a.accuracy >= b.accuracy
            && a.params <= b.params
            && a.flops <= b.flops
            && (a.accuracy > b.accuracy || a.params < b.params || a.flops < b.flops)
    };
    let mut out: Vec<FrontPoint> = ok
        .iter()
        .filter(|j| !ok.iter().any(|o| dominates(o, j)))
        .map(|j| FrontPoint {
            job: j.job.clone(),
            generation: j.generation,
            accuracy: j.accuracy,
            params: j.params,
            flops: j.flops,
            artifact: j.artifacts.first().cloned(),
        })
        .collect();
    out.sort_by(|a, b| {
        b.accuracy
            .total_cmp(&a.accuracy)
            .then(a.params.cmp(&b.params))
    });
    out.dedup_by(|a, b| a.accuracy == b.accuracy && a.params == b.params && a.flops == b.flops);
    out
}

/// The node as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The libp2p peer id.
    pub peer_id: String,
    /// The node's signing key (how ledgers name it).
    pub key: String,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: usize,
    /// Connected peers that proved they speak hivemesh (the genesis roster of a campaign
    /// submitted here without one: this node and them).
    pub hivemesh_peers: usize,
    /// Jobs running now.
    pub jobs_running: usize,
    /// Jobs finished since start.
    pub jobs_finished: u64,
    /// Messages validated since start (gossip and sync).
    pub messages_validated: u64,
    /// Messages refused since start.
    pub messages_rejected: u64,
    /// Audit mode.
    pub audit: bool,
    /// The store's last failed write (a full disk), until a write succeeds; `null` when healthy.
    pub store_error: Option<String>,
    /// Results and messages that wait in memory for the store to take them (retried on the
    /// sync timer; a waiting result is not yet acknowledged).
    pub pending_writes: usize,
    /// Blob fetches under way (datasets, models): bytes verified so far and the size.
    pub fetches: Vec<super::blobs::FetchProgress>,
    /// Bytes the blob store holds, and its quota.
    pub blob_store: (u64, u64),
    /// Campaigns followed.
    pub campaigns: Vec<CampaignStatus>,
}

/// A settled job, for exports: what was run and what the executors agreed on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettledJob {
    /// The job id.
    pub job: String,
    /// Its generation.
    pub generation: u32,
    /// Its index in the generation.
    pub index: u32,
    /// What it ran: `nas` (genome), `loss` (expression) or `distill` (sample range), and the
    /// payload as hex (genome, expression) or `start..end`.
    pub payload: (String, String),
    /// `success`, `failure` (executors agreed the job fails) or `void` (no quorum in time).
    pub status: JobStatus,
    /// Correct test predictions (success).
    pub correct: u64,
    /// Test samples (success).
    pub total: u64,
    /// `correct / total` (success).
    pub accuracy: f64,
    /// Parameters (success).
    pub params: u64,
    /// FLOPs per sample (success).
    pub flops: u64,
    /// Named extra metrics.
    pub extra: BTreeMap<String, i64>,
    /// Artifact blob ids (weights, shards), hex.
    pub artifacts: Vec<String>,
    /// Why it failed (failure), or why it went void (void: `no claim`, `no quorum by the
    /// deadline` or `dispute unresolved`; a void job runs again in the next generation).
    pub failure: Option<String>,
    /// Executors that agreed.
    pub agreeing: Vec<String>,
    /// Executors that did not.
    pub dissenting: Vec<String>,
    /// The audit verdict, when the job was audited: `confirmed` (every auditor agreed),
    /// `upheld` (a dispute's jury agreed with the executors) or `overturned` (the jury did
    /// not: the outcome above is then the jury's, and `agreeing` its jurors).
    pub audit: Option<AuditLabel>,
    /// When overturned: the executors who had agreed on the wrong outcome.
    pub overturned: Vec<String>,
}

impl SettledJob {
    pub(super) fn new(job: &JobSpec, s: &hivemesh_protocol::Settlement) -> SettledJob {
        let payload = (job.payload.kind().name().to_string(), job.payload.summary());
        let mut out = SettledJob {
            job: job.id().to_string(),
            generation: job.generation,
            index: job.index,
            payload,
            status: JobStatus::Success,
            correct: 0,
            total: 0,
            accuracy: 0.0,
            params: 0,
            flops: 0,
            extra: BTreeMap::new(),
            artifacts: Vec::new(),
            failure: None,
            agreeing: s.agreeing.iter().map(ToString::to_string).collect(),
            dissenting: s.dissenting.iter().map(ToString::to_string).collect(),
            audit: None,
            overturned: Vec::new(),
        };
        match &s.canonical {
            Outcome::Success(m) => {
                out.correct = m.correct;
                out.total = m.total;
                out.accuracy = if m.total > 0 {
                    m.correct as f64 / m.total as f64
                } else {
                    0.0
                };
                out.params = m.params;
                out.flops = m.flops;
                out.extra = m.extra.clone();
                out.artifacts = m.artifacts.iter().map(ToString::to_string).collect();
            }
            Outcome::Failure(f) => {
                out.status = JobStatus::Failure;
                out.failure = Some(format!("{:?}: {}", f.kind, f.detail));
            }
        }
        out
    }

    /// A decided job as exports show it: the settlement that stands (the jury's when an
    /// audit overturned the closure), its audit label and the overturned executors.
    pub(super) fn decided(job: &JobSpec, d: &DecidedJob<'_>) -> SettledJob {
        match d.shown() {
            None => SettledJob::void(job, d.void_reason),
            Some(s) => SettledJob {
                audit: d.audit,
                overturned: d.overturned().iter().map(ToString::to_string).collect(),
                ..SettledJob::new(job, s)
            },
        }
    }

    fn void(job: &JobSpec, reason: Option<hivemesh_protocol::closure::VoidReason>) -> SettledJob {
        let mut out = SettledJob::new(
            job,
            &hivemesh_protocol::Settlement {
                canonical: Outcome::Failure(hivemesh_protocol::message::Failure {
                    kind: hivemesh_protocol::message::FailureKind::InvalidJob,
                    detail: String::new(),
                }),
                agreeing: Vec::new(),
                dissenting: Vec::new(),
            },
        );
        out.status = JobStatus::Void;
        out.failure = Some(
            reason
                .map_or("no quorum by the deadline", |r| r.as_str())
                .into(),
        );
        out
    }
}

/// One campaign's status (without the protocol's summary line, which needs `&mut`).
pub(super) fn campaign_status(id: &CampaignId, c: &Campaign, store: &Store) -> CampaignStatus {
    let jobs = settled(c);
    let spec = &c.spec;
    let kind = spec.search.rules();
    CampaignStatus {
        id: id.to_string(),
        name: spec.name.clone(),
        kind: kind.kind().name().into(),
        generation: c.peer.generation(),
        generations: kind.generations(),
        finished: c.peer.finished(),
        members: c.peer.members().len(),
        voters: c.peer.voters().len(),
        vote_epoch: c.peer.stall_state().0,
        stalls: c.peer.stall_state().1,
        messages: store.message_count(id).unwrap_or(0),
        settled: jobs.iter().filter(|j| j.status != JobStatus::Void).count(),
        results_held: store.result_count(id).unwrap_or(0),
        closures: c
            .peer
            .closures()
            .iter()
            .map(|(cl, _)| (cl.generation, hex(&cl.root())))
            .collect(),
        front: front(&jobs),
        summary: String::new(),
        privacy: privacy_status(spec, &self::jobs(c).1),
        clients: c
            .peer
            .standings()
            .into_iter()
            .map(|s| ClientStandingStatus {
                client: hex(s.client.as_bytes()),
                rounds: s.rounds,
                strikes: s.strikes,
                benched_until: s.benched_until,
            })
            .collect(),
        counters: c
            .peer
            .counters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        prompts: prompt_front(c, store),
    }
}

/// A prompt campaign's front, its prompts as text where this node holds the teacher (empty
/// for other kinds).
fn prompt_front(c: &Campaign, store: &Store) -> Vec<crate::executor::prompt::PromptPoint> {
    let Search::Prompt(p) = &c.spec.search else {
        return Vec::new();
    };
    let all = closures(c);
    let jobs = jobs_of_closures(&c.spec, all.iter().copied());
    let decided = standings::decided(&all, &c.spec.tolerance);
    let scored: Vec<(&JobSpec, &Outcome)> = decided
        .iter()
        .filter_map(|d| Some((jobs.get(&d.job)?, d.outcome()?)))
        .collect();
    let tokenizer = store
        .blob(&p.teacher)
        .ok()
        .flatten()
        .and_then(|b| hivemesh_trainer::lm::read_lm_meta(&b).ok())
        .map(|(_, t)| t);
    crate::executor::prompt::front(p, &scored, tokenizer.as_ref())
}

/// A campaign's spec and every job derived so far, in generation and index order.
pub(super) fn jobs(c: &Campaign) -> (CampaignSpec, Vec<JobSpec>) {
    let mut jobs: Vec<JobSpec> = jobs_of_closures(&c.spec, closures(c))
        .into_values()
        .collect();
    jobs.sort_by_key(|j| (j.generation, j.index));
    ((*c.spec).clone(), jobs)
}

/// The campaign's closures, oldest first.
fn closures(c: &Campaign) -> Vec<&Closure> {
    c.peer.closures().iter().map(|(cl, _)| &**cl).collect()
}

/// Counts a just-closed generation's settlements and audit verdicts in the metrics.
pub(super) fn count_closure(c: &Campaign, generation: u32, metrics: &Metrics) {
    let all = closures(c);
    let Some(closure) = all.iter().find(|cl| cl.generation == generation) else {
        return;
    };
    for entry in &closure.entries {
        Metrics::count(
            &metrics.jobs_settled,
            "status",
            JobStatus::of_entry(entry).as_str(),
        );
    }
    for label in standings::verdict_labels(closure, &all, &c.spec.tolerance) {
        Metrics::count(&metrics.audits, "outcome", label.as_str());
    }
}

/// Every job of a closed generation with its spec and what the closures decided
/// ([`standings::decided`]). Jobs are re-derived from the spec and the closures (deterministic
/// and cheap); outcomes come from the closures, which every honest node agrees on (not from
/// the local ledger, whose settlements may still gain late reveals).
pub(super) fn settled(c: &Campaign) -> Vec<SettledJob> {
    let all = closures(c);
    let jobs = jobs_of_closures(&c.spec, all.iter().copied());
    let mut out: Vec<SettledJob> = standings::decided(&all, &c.spec.tolerance)
        .iter()
        .filter_map(|d| jobs.get(&d.job).map(|spec| SettledJob::decided(spec, d)))
        .collect();
    out.sort_by_key(|j| (j.generation, j.index));
    out
}

/// Every peer's standing in a campaign, from its closures ([`standings::scores`]): the same
/// on every honest node.
pub(super) fn standings(c: &Campaign) -> Vec<(PeerKey, PeerScore)> {
    let all = closures(c);
    let jobs = jobs_of_closures(&c.spec, all.iter().copied());
    let decided = standings::decided(&all, &c.spec.tolerance);
    standings::scores(
        &decided,
        |j| jobs.get(j).map(|s| s.compute),
        c.peer.failed_audits(),
    )
    .into_iter()
    .collect()
}
