//! What a cluster run is asked to do: [`ClusterConfig`] with its faults ([`Kill`],
//! [`Partition`], [`Byzantine`]) and campaign [`Overrides`], and each node's [`Role`].

use std::path::PathBuf;
use std::time::Duration;

use hivemesh_node::daemon::Fault;
use serde::Serialize;

use super::ClusterError;

/// The campaign a cluster runs when none is given: `examples/nas-digits.toml`.
pub const DEFAULT_CAMPAIGN: &str = include_str!("../../../examples/nas-digits.toml");

/// Kill node `node` (`kill -9`) `at` after the campaign is submitted (or, with
/// `after_generation`, after that generation first closes); restart it `down` later (`None`:
/// it stays down).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kill {
    /// The node's index (0 is the creator).
    pub node: usize,
    /// When, after submission (or after `after_generation` closed).
    pub at: Duration,
    /// Count `at` from the first closure of this generation instead of from submission.
    pub after_generation: Option<u32>,
    /// How long it stays down (`None`: for good).
    pub down: Option<Duration>,
}

/// Split the cluster into two halves `at` after submission, heal `heal` later.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Partition {
    /// When, after submission.
    pub at: Duration,
    /// How long it lasts.
    pub heal: Duration,
}

/// Values that replace the campaign file's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Overrides {
    /// Executors per job.
    pub redundancy: Option<u8>,
    /// Agreeing executors needed.
    pub quorum: Option<u8>,
    /// Candidates per generation (NAS, loss).
    pub population: Option<u32>,
    /// Generations (NAS, loss).
    pub generations: Option<u32>,
    /// Fraction of settled jobs audited.
    pub audit_rate: Option<f64>,
    /// Generation 0's job deadline, seconds (later ones adapt to observed job times).
    pub job_deadline_s: Option<u64>,
    /// Most extra executors per job (idle takers and takeovers past deadlines).
    pub max_extra_executors: Option<u8>,
}

/// A cluster run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Nodes (at least 2).
    pub nodes: usize,
    /// How many of them are Byzantine (the last ones; never the creator).
    pub byzantine: usize,
    /// How they misbehave.
    pub strategy: Fault,
    /// Honest nodes in audit mode (nodes 1, 2, ...).
    pub auditors: usize,
    /// The campaign file (TOML), e.g. [`DEFAULT_CAMPAIGN`].
    pub campaign: String,
    /// Where `file:` paths in the campaign file are relative to.
    pub campaign_dir: PathBuf,
    /// Values replacing the file's.
    pub overrides: Overrides,
    /// Kills and restarts.
    pub kills: Vec<Kill>,
    /// A partition.
    pub partition: Option<Partition>,
    /// Gossipsub heartbeat of every node (default 500 ms).
    pub delay: Option<Duration>,
    /// Jobs each node trains at once.
    pub jobs_per_node: u16,
    /// Seeds the node identities.
    pub seed: u64,
    /// Gives up after this long.
    pub timeout: Duration,
    /// Where the nodes keep their stores (a folder per node is made under it; emptied at the
    /// start, removed at the end unless `keep_data`).
    pub data_dir: PathBuf,
    /// Leave `data_dir` (every node's store and, with `processes`, its `node.log`) after the
    /// run, for a post-mortem.
    pub keep_data: bool,
    /// Show a progress bar and a line per closed generation on stderr.
    pub progress: bool,
    /// Re-run every settled job once on one executor after the run, to measure the overhead.
    pub measure_overhead: bool,
    /// Run every node as a `hivemesh run` child process of this binary (the path), instead of
    /// in this process.
    pub processes: Option<PathBuf>,
    /// A federated campaign's private data, dealt among the nodes.
    pub private: Option<super::private::PrivateSplit>,
}

impl ClusterConfig {
    /// The README's main job: 8 nodes, one liar, the default campaign.
    pub fn new(data_dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            nodes: 8,
            byzantine: 1,
            strategy: Fault::Lie,
            auditors: 0,
            campaign: DEFAULT_CAMPAIGN.to_string(),
            campaign_dir: PathBuf::from("."),
            overrides: Overrides {
                redundancy: Some(3),
                job_deadline_s: Some(30),
                ..Overrides::default()
            },
            kills: Vec::new(),
            partition: None,
            delay: None,
            jobs_per_node: 1,
            seed: 1,
            timeout: Duration::from_secs(1800),
            data_dir,
            keep_data: false,
            progress: true,
            measure_overhead: true,
            processes: None,
            private: None,
        }
    }

    /// Node `i`'s role: the last `byzantine` nodes (never the creator) misbehave, nodes
    /// `1..=auditors` audit.
    pub fn role(&self, i: usize) -> Role {
        if i >= self.nodes.saturating_sub(self.byzantine) && i > 0 {
            Role::Byzantine
        } else if i >= 1 && i <= self.auditors {
            Role::Auditor
        } else {
            Role::Honest
        }
    }

    /// Every node's role, by index.
    pub fn roles(&self) -> Vec<Role> {
        (0..self.nodes).map(|i| self.role(i)).collect()
    }

    /// Checks that the configuration can run.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.nodes < 2 {
            return Err(ClusterError::Config(
                "a cluster needs at least 2 nodes".into(),
            ));
        }
        if self.byzantine >= self.nodes {
            return Err(ClusterError::Config(
                "at least the creator must be honest".into(),
            ));
        }
        if let Some(k) = self.kills.iter().find(|k| k.node >= self.nodes) {
            return Err(ClusterError::Config(format!(
                "--kill names node {}, but nodes are 0..{}",
                k.node,
                self.nodes - 1
            )));
        }
        if self.private.is_some() && self.processes.is_some() {
            return Err(ClusterError::Config(
                "--private-data runs in-process nodes only (not with --processes)".into(),
            ));
        }
        if self.private.is_some() && super::private::private_name(&self.campaign).is_none() {
            return Err(ClusterError::Config(
                "--private-data needs a federated campaign (its [federated] private_data names \
                 the data)"
                    .into(),
            ));
        }
        if let Some(bin) = &self.processes
            && !bin.is_file()
        {
            return Err(ClusterError::Config(format!(
                "--processes needs the hivemesh binary, not found at {}: build it with \
                 `cargo build --release -p hivemesh-node` or pass --hivemesh PATH",
                bin.display()
            )));
        }
        Ok(())
    }
}

/// What a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Follows the protocol.
    Honest,
    /// Follows the protocol in audit mode.
    Auditor,
    /// Misbehaves as configured.
    Byzantine,
}
