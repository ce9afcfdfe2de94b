//! What a cluster run ends with: the [`ClusterReport`] and its parts.

use hivemesh_node::daemon::{self, SettledJob};
use hivemesh_protocol::PeerScore;
use serde::Serialize;

use super::config::Role;
use super::grade::Grade;
use hivemesh_node::fault::Fault;

/// One node's view at the end.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its index.
    pub index: usize,
    /// Its role.
    pub role: Role,
    /// Its signing key (hex).
    pub key: String,
    /// Whether it was running at the end.
    pub up: bool,
    /// Whether it saw the campaign finish.
    pub finished: bool,
    /// Its closures: generation and root (hex).
    pub closures: Vec<(u32, String)>,
    /// Job executions it started (every instance, audits included).
    pub jobs_trained: u64,
    /// Messages it validated (since its last start).
    pub messages_validated: u64,
    /// Messages it refused.
    pub messages_rejected: u64,
}

/// One generation's closure as the cluster saw it.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationView {
    /// The generation.
    pub generation: u32,
    /// Its closure root (hex), as the first node to close it saw it.
    pub root: String,
    /// Seconds after submission the first node closed it.
    pub first_closed_s: f64,
    /// Seconds after submission the last running node closed it.
    pub last_closed_s: f64,
    /// Jobs settled (success or failure) in it.
    pub settled: usize,
    /// Its best accuracy.
    pub best_accuracy: f64,
}

/// A fault as applied.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds after submission.
    pub at_s: f64,
    /// What happened.
    pub what: String,
}

/// One peer's standing, with its role.
#[derive(Debug, Clone, Serialize)]
pub struct Standing {
    /// The node's index.
    pub index: usize,
    /// Its role.
    pub role: Role,
    /// Its key (hex).
    pub key: String,
    /// Its score from the agreed ledger.
    pub score: PeerScore,
}

/// The overhead measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// CPU seconds the whole cluster used from submission to the end.
    pub swarm_cpu_s: f64,
    /// CPU seconds one executor needs to run every settled job once, in this process.
    pub single_cpu_s: f64,
    /// Wall seconds of that single-executor run.
    pub single_wall_s: f64,
    /// Executors per job (r).
    pub redundancy: u8,
    /// `swarm_cpu_s / (r × single_cpu_s)` (goal ≤ 1.10).
    pub ratio: f64,
    /// Job executions in the swarm (all nodes, audits included) per settled job.
    pub executions_per_job: f64,
}

/// Everything a cluster run ends with.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The campaign's id (hex).
    pub campaign: String,
    /// Its name.
    pub name: String,
    /// `nas`, `loss` or `distill`.
    pub kind: String,
    /// Nodes.
    pub nodes: usize,
    /// Executors per job and quorum.
    pub redundancy: u8,
    /// Agreeing executors needed.
    pub quorum: u8,
    /// The Byzantine strategy.
    pub strategy: Fault,
    /// Whether the campaign finished at every running honest node.
    pub finished: bool,
    /// Seconds from submission to the end.
    pub wall_s: f64,
    /// Per generation.
    pub generations: Vec<GenerationView>,
    /// Per node.
    pub node_views: Vec<NodeView>,
    /// The agreed settled jobs (from the first running honest node).
    pub jobs: Vec<SettledJob>,
    /// The Pareto front of the settled jobs (accuracy up, params and FLOPs down).
    pub front: Vec<daemon::FrontPoint>,
    /// The grade: agreement, standings, cheaters caught and paid, wrong results standing
    /// (its fields appear at the top level of `report.json`).
    #[serde(flatten)]
    pub grade: Grade,
    /// Job executions started across the cluster (audits included).
    pub executions: u64,
    /// Settled jobs per minute of wall time.
    pub jobs_per_minute: f64,
    /// Progress samples.
    pub progress: Vec<crate::plot::Sample>,
    /// Faults applied.
    pub faults: Vec<FaultEvent>,
    /// The overhead measurement (when asked for).
    pub overhead: Option<Overhead>,
    /// Distillation campaigns: the agreed shards, one per settled job.
    pub shards: Vec<ShardView>,
    /// The shard blobs, written to the report's `shards/` folder.
    #[serde(skip)]
    pub shard_blobs: Vec<ShardFile>,
    /// `train` and `federated` campaigns: one line per round, then the final evaluation.
    pub rounds: Vec<super::RoundLine>,
    /// What the search counted (a prompt campaign's model calls, tokens, cache hits and
    /// budgets).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// A prompt campaign's front of prompts, best first.
    pub prompts: Vec<hivemesh_node::executor::prompt::PromptPoint>,
    /// A federated campaign's privacy spent, as node 0 states it (ADR 0010).
    pub privacy: Option<hivemesh_node::daemon::PrivacyStatus>,
}

/// One distillation shard as the cluster ended with it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardView {
    /// The job id (hex).
    pub job: String,
    /// First sample.
    pub start: u64,
    /// One past the last sample.
    pub end: u64,
    /// `success`, `failure` or `void`.
    pub status: hivemesh_protocol::standings::JobStatus,
    /// The agreed shard blob (hex), for a success.
    pub blob: Option<String>,
    /// Executors that agreed on it.
    pub agreeing: usize,
    /// The teacher's top-1 agreement with the dataset labels over the shard.
    pub teacher_accuracy: f64,
    /// Whether a node held the blob and its bytes hash to the agreed id and parse as a shard
    /// covering `start..end`.
    pub verified: bool,
    /// The file under the report's `shards/` folder, when verified.
    pub file: Option<String>,
}

/// A verified distillation shard's bytes, as the report's `shards/` folder holds them.
#[derive(Debug, Clone)]
pub struct ShardFile {
    /// The file name under `shards/`.
    pub name: String,
    /// The shard blob.
    pub bytes: Vec<u8>,
}

impl ClusterReport {
    /// Whether the run shows what a cluster must: the campaign finished, every running node
    /// agrees, and no wrong result stands (see [`super::grade::ok`]).
    pub fn ok(&self) -> bool {
        super::grade::ok(
            self.finished,
            self.grade.agreement,
            self.grade.wrong_results,
            &self.shards,
        )
    }
}
