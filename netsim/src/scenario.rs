//! Scenario files: a TOML description of a simulated swarm, its faults and its Byzantine peers,
//! with the seeds to run it under. See `netsim/scenarios/` for examples.

use serde::Deserialize;

/// An inclusive range of virtual milliseconds, drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Millis {
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
}

/// A Byzantine behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Reports a wrong result, different from every other wrong peer's.
    Wrong,
    /// Reports the same wrong result as the rest of its colluding group.
    Collude,
    /// Trains nothing: waits for another executor's reveal and commits to a copy of it.
    Copy,
    /// Commits to two different results for each job.
    Equivocate,
    /// Claims jobs and never finishes them.
    Withhold,
    /// Floods garbage and oversized messages.
    Spam,
    /// Sends messages with forged signatures (claiming to be another peer).
    Forge,
    /// Replays valid messages signed for another campaign.
    Replay,
    /// Executes honestly but runs in audit mode and reports a wrong result on every audit
    /// (a false accuser).
    Slander,
}

/// Peers of one behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Byzantine {
    /// What they do.
    pub behaviour: Behaviour,
    /// How many (taken from the highest-numbered initial nodes, never node 0).
    pub count: usize,
}

/// A fault injected at a virtual time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Node `node` stops at `at_ms`; with `restart_ms` it restarts then from its store.
    Crash {
        /// The node (0 is the campaign's creator).
        node: usize,
        /// When it stops.
        at_ms: u64,
        /// When it restarts, if ever.
        restart_ms: Option<u64>,
    },
    /// Node `node` runs `factor` times slower from `at_ms` on (jobs it starts from then).
    Slow {
        /// The node.
        node: usize,
        /// When.
        at_ms: u64,
        /// How many times slower.
        factor: u32,
    },
    /// The network splits into `groups` (nodes not listed form one more group) from `at_ms`
    /// until `heal_ms`.
    Partition {
        /// When it splits.
        at_ms: u64,
        /// When it heals.
        heal_ms: u64,
        /// Node groups.
        groups: Vec<Vec<usize>>,
    },
}

/// A node with its own number of job slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// The node.
    pub node: usize,
    /// Jobs it runs at once (instead of `capacity`).
    pub count: u16,
}

/// New peers joining mid-campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// How many.
    pub count: usize,
    /// When.
    pub at_ms: u64,
}

fn default_seeds() -> Vec<u64> {
    vec![1]
}
fn default_latency() -> Millis {
    Millis { min: 10, max: 80 }
}
fn default_job_time() -> Millis {
    Millis {
        min: 5_000,
        max: 15_000,
    }
}
fn default_sync() -> u64 {
    5_000
}
fn default_deadline() -> u64 {
    60_000
}
fn default_round() -> u64 {
    1_000
}
fn default_max_time() -> u64 {
    24 * 3_600_000
}
fn default_generations() -> u32 {
    3
}
fn default_population() -> u32 {
    12
}
fn default_r() -> u8 {
    3
}
fn default_q() -> u8 {
    2
}
fn default_max_extra() -> u8 {
    3
}
fn default_spread() -> f64 {
    1.0
}
fn default_capacity() -> u16 {
    1
}
fn default_true() -> bool {
    true
}

/// A simulated campaign.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Seeds to run it under (each run is fully determined by its seed).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Nodes at the start (node 0 creates the campaign).
    pub nodes: usize,
    /// Generations of the campaign.
    #[serde(default = "default_generations")]
    pub generations: u32,
    /// Jobs per generation.
    #[serde(default = "default_population")]
    pub population: u32,
    /// Executors per job.
    #[serde(default = "default_r")]
    pub redundancy: u8,
    /// Agreeing executors to settle.
    #[serde(default = "default_q")]
    pub quorum: u8,
    /// Jobs each node runs at once.
    #[serde(default = "default_capacity")]
    pub capacity: u16,
    /// One-way message latency.
    #[serde(default = "default_latency")]
    pub latency_ms: Millis,
    /// Probability that one delivery is lost (sync repairs it later).
    #[serde(default)]
    pub loss: f64,
    /// Training time of a job (on a node of speed 1).
    #[serde(default = "default_job_time")]
    pub job_time_ms: Millis,
    /// Draw each job's time once (every executor takes it divided by its speed) instead of
    /// once per execution.
    #[serde(default)]
    pub per_job_times: bool,
    /// Nodes' speeds, drawn log-uniformly in `[1, speed_spread]` per node from the run's seed
    /// (job times are divided by them); `1`, the default: every node equally fast.
    #[serde(default = "default_spread")]
    pub speed_spread: f64,
    /// Nodes with more (or fewer) job slots than `capacity`.
    #[serde(default)]
    pub slots: Vec<Slots>,
    /// Extra executors a job may get beyond `redundancy` (the campaign's
    /// `max_extra_executors`).
    #[serde(default = "default_max_extra")]
    pub max_extra: u8,
    /// How often each node pulls missing messages from a random reachable peer.
    #[serde(default = "default_sync")]
    pub sync_interval_ms: u64,
    /// Generation 0's job deadline.
    #[serde(default = "default_deadline")]
    pub job_deadline_ms: u64,
    /// Base consensus round timeout.
    #[serde(default = "default_round")]
    pub round_timeout_ms: u64,
    /// Give up after this much virtual time.
    #[serde(default = "default_max_time")]
    pub max_time_ms: u64,
    /// Verify every message's signature (off only for scale runs; forged-signature scenarios
    /// need it).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// How job evidence (claims, commitments, reveals) travels. `0` (the default): flooded to
    /// every node, as on one gossip topic per campaign. `N > 0`: sharded topics — the evidence
    /// of a job reaches the generation's voters, the audit-mode nodes, and the nodes ranked
    /// to run some job of the same of `N` shards (each node subscribes to the shards of its
    /// ranked jobs); heartbeats reach the voters (a membership topic); consensus messages and
    /// audit reports still reach everyone.
    /// See `docs/decisions/0003-closure-consensus.md`, "Scale".
    #[serde(default)]
    pub evidence_shards: u32,
    /// Derive each generation's jobs once for all simulated nodes (a memo keyed by the
    /// closure root; derivation is a pure function of it) instead of once per node. Off by
    /// default, so that the scenario tests derive independently; the scale runs turn it on.
    #[serde(default)]
    pub share_derivation: bool,
    /// Fraction of settled jobs sampled for audit (the campaign's audit rate).
    #[serde(default)]
    pub audit_rate: f64,
    /// Honest nodes in audit mode (nodes 1, 2, …).
    #[serde(default)]
    pub auditors: usize,
    /// Byzantine peers.
    #[serde(default)]
    pub byzantine: Vec<Byzantine>,
    /// Faults.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Joins.
    #[serde(default)]
    pub joins: Vec<Join>,
}

/// Why a scenario file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not readable.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML or not a scenario.
    #[error("scenario {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said.
        message: String,
    },
    /// Fields that do not fit together.
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Parses and checks scenario text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.into(),
            message,
        };
        if s.nodes == 0 {
            return Err(invalid("nodes must be at least 1".into()));
        }
        let byz: usize = s.byzantine.iter().map(|b| b.count).sum();
        if byz >= s.nodes {
            return Err(invalid(format!(
                "{byz} Byzantine nodes leave no honest node among {}",
                s.nodes
            )));
        }
        if !(0.0..=1.0).contains(&s.audit_rate) {
            return Err(invalid(format!(
                "audit_rate {} must be in [0, 1]",
                s.audit_rate
            )));
        }
        if s.auditors + byz >= s.nodes {
            return Err(invalid(format!(
                "{} auditors and {byz} Byzantine nodes do not fit among {} nodes beside the creator",
                s.auditors, s.nodes
            )));
        }
        if !(0.0..1.0).contains(&s.loss) {
            return Err(invalid(format!("loss {} must be in [0, 1)", s.loss)));
        }
        for m in [s.latency_ms, s.job_time_ms] {
            if m.min > m.max {
                return Err(invalid(format!("range min {} above max {}", m.min, m.max)));
            }
        }
        let total = s.nodes + s.joins.iter().map(|j| j.count).sum::<usize>();
        if !(s.speed_spread.is_finite() && s.speed_spread >= 1.0) {
            return Err(invalid(format!(
                "speed_spread {} must be at least 1",
                s.speed_spread
            )));
        }
        if let Some(sl) = s.slots.iter().find(|sl| sl.node >= total || sl.count == 0) {
            return Err(invalid(format!(
                "slots for node {} ({} of them): the node must exist and have at least one",
                sl.node, sl.count
            )));
        }
        for f in &s.faults {
            let nodes: Vec<usize> = match f {
                Fault::Crash { node, .. } => vec![*node],
                Fault::Slow { node, factor, .. } => {
                    if *factor == 0 {
                        return Err(invalid("a slow-down factor must be at least 1".into()));
                    }
                    vec![*node]
                }
                Fault::Partition { groups, .. } => groups.iter().flatten().copied().collect(),
            };
            if let Some(n) = nodes.iter().find(|n| **n >= total) {
                return Err(invalid(format!("fault names node {n}, only {total} exist")));
            }
        }
        if s.seeds.is_empty() {
            return Err(invalid("seeds must list at least one seed".into()));
        }
        Ok(s)
    }
}
