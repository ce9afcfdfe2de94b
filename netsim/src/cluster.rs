//! Tier 2: a cluster of real hivemesh nodes in this process, on loopback TCP (libp2p with
//! noise and yamux, gossipsub, Kademlia, redb stores, real training), running one campaign
//! under injected faults, and what it ends with: a [`ClusterReport`].
//!
//! Faults that apply to real nodes:
//! * **Byzantine executors** ([`Byzantine`]): wrong results (`lie`: every node set to lie
//!   returns the same wrong count, so two of them can form a quorum), or corrupt blobs
//!   (`corrupt-blobs`: they serve flipped bytes to peers fetching a reference model or teacher);
//! * **kill -9 and restart** ([`Kill`]): the node's event loop is dropped where it stands, with
//!   nothing flushed (received messages committed without `fsync` may be lost, as in a crash),
//!   and after `down` it starts again from its data directory;
//! * **partitions** ([`Partition`]): the two halves of the cluster block each other's peer ids
//!   (connections closed, new ones refused; with `--processes` through each node's
//!   `/peers/{peer_id}/block` API) and heal by unblocking and redialling (`/peers/dial`). Block
//!   lists are not kept across a restart: a node restarted mid-partition reconnects across it;
//! * **delays**: [`ClusterConfig::delay`] holds every node's gossip heartbeat longer (slower
//!   mesh repair and IHAVE/IWANT gossip), a coarse knob; per-message latency needs the tier-1
//!   simulator.
//!
//! Every node is a `hivemesh_node::daemon` event loop, exactly what `hivemesh run` runs; the
//! creator (node 0) submits the campaign with every node in its roster and is not needed after
//! that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hivemesh_node::campaign_file::{CampaignFile, resolve_dataset, zoo_model};
use hivemesh_node::daemon::{self, Client, Config, Event, Fault, NodeError, SettledJob};
use hivemesh_node::executor::{Executor, needed_blobs};
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{CampaignSpec, JobSpec, Search};
use hivemesh_protocol::{CampaignId, Keypair, PeerKey, PeerScore};
use hivemesh_trainer::distill::ShardLabels;

use crate::processes::{self, Proc};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// The campaign a cluster runs when none is given: `examples/nas-digits.toml`.
pub const DEFAULT_CAMPAIGN: &str = include_str!("../../examples/nas-digits.toml");

/// Node events forwarded to the cluster's loop.
const EVENT_CAPACITY: usize = 4096;

/// How a Byzantine node misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Byzantine {
    /// Publishes wrong results (all liars alike).
    Lie,
    /// Serves corrupt copies of blobs.
    CorruptBlobs,
}

impl Byzantine {
    /// The `hivemesh run --fault` value.
    fn flag(self) -> &'static str {
        match self {
            Byzantine::Lie => "lie",
            Byzantine::CorruptBlobs => "corrupt-blobs",
        }
    }

    fn fault(self) -> Fault {
        match self {
            Byzantine::Lie => Fault::Lie,
            Byzantine::CorruptBlobs => Fault::CorruptBlobs,
        }
    }
}

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
    pub strategy: Byzantine,
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
}

impl ClusterConfig {
    /// The README's main job: 8 nodes, one liar, the default campaign.
    pub fn new(data_dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            nodes: 8,
            byzantine: 1,
            strategy: Byzantine::Lie,
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
        }
    }

    fn role(&self, i: usize) -> Role {
        if i >= self.nodes.saturating_sub(self.byzantine) && i > 0 {
            Role::Byzantine
        } else if i >= 1 && i <= self.auditors {
            Role::Auditor
        } else {
            Role::Honest
        }
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

/// Why a cluster run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot run.
    #[error("cluster: {0}")]
    Config(String),
    /// The campaign file is wrong.
    #[error(transparent)]
    Campaign(#[from] hivemesh_node::campaign_file::CampaignFileError),
    /// A node failed to start.
    #[error("node {node}: {source}")]
    Node {
        /// Which.
        node: usize,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// A node process failed to start.
    #[error("node {node} (process): {reason}")]
    Process {
        /// Which.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A node stopped answering.
    #[error("node {0} stopped unexpectedly")]
    Stopped(usize),
    /// The campaign did not finish in time.
    #[error("the campaign did not finish within {after:?}; where each node stood:\n{states}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// Each running node's protocol state, one line each.
        states: String,
    },
}

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
    pub strategy: Byzantine,
    /// Whether the campaign finished at every running honest node.
    pub finished: bool,
    /// Seconds from submission to the end.
    pub wall_s: f64,
    /// Per generation.
    pub generations: Vec<GenerationView>,
    /// Per node.
    pub node_views: Vec<NodeView>,
    /// Whether every running node holds the same closures.
    pub agreement: bool,
    /// The agreed settled jobs (from the first running honest node).
    pub jobs: Vec<SettledJob>,
    /// The Pareto front of the settled jobs (accuracy up, params and FLOPs down).
    pub front: Vec<daemon::FrontPoint>,
    /// Standings from the agreed ledger.
    pub standings: Vec<Standing>,
    /// Byzantine nodes the ledger shows misbehaving (dissent or failed audits).
    pub cheaters_detected: Vec<usize>,
    /// Byzantine nodes the ledger does not catch.
    pub cheaters_missed: Vec<usize>,
    /// Byzantine nodes with positive points (earned something).
    pub cheaters_paid: Vec<usize>,
    /// Honest nodes the ledger penalises (dissent or failed audits).
    pub honest_penalised: Vec<usize>,
    /// Jobs whose agreed outcome a Byzantine node stands behind (after audits).
    pub wrong_results: usize,
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
    /// The shard blobs, as `(file name, bytes)`, written to the report's `shards/` folder.
    #[serde(skip)]
    pub shard_blobs: Vec<(String, Vec<u8>)>,
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
    pub status: String,
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

impl ClusterReport {
    /// Whether the run shows what a cluster must: the campaign finished, every running node
    /// agrees, and no wrong result stands.
    pub fn ok(&self) -> bool {
        self.finished
            && self.agreement
            && self.wrong_results == 0
            && self.shards.iter().all(|s| s.verified)
    }
}

/// The identity of cluster node `i` under `seed`.
pub fn node_key(seed: u64, i: usize) -> Keypair {
    let h = blake3::hash(format!("hivemesh-netsim cluster {seed} {i}").as_bytes());
    Keypair::from_secret_bytes(*h.as_bytes())
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; `None` where
/// there is no procfs.
pub fn process_cpu_seconds() -> Option<f64> {
    processes::cpu_seconds_of("/proc/self/stat")
}

/// What the cluster hears from a node about the campaign.
#[derive(Debug, Clone)]
enum NodeEvent {
    /// A generation closed here.
    Closed { generation: u32, root: String },
    /// The campaign finished here.
    Finished,
    /// This many more job executions started here.
    Started(u64),
    /// A job was handed back.
    Abandoned { job: String, reason: String },
}

/// Which node an event is from, and which of its lives (a restart is a new life: a late
/// event of the killed one must not count for the new one).
type Source = (usize, u64);

type Events = mpsc::Sender<(Source, CampaignId, NodeEvent)>;

/// A fresh life number for a node being started.
fn next_life() -> u64 {
    static LIVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    LIVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A running node: in this process, or a `hivemesh run` child process.
struct Running {
    addr: Multiaddr,
    peer_id: PeerId,
    kind: Kind,
    /// This life's number (see [`Source`]).
    life: u64,
    /// Polls a child process's API for events.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

enum Kind {
    InProcess {
        client: Client,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    },
    Process(Proc),
}

/// A settled job, as much as the progress lines need.
#[derive(Debug, Clone, serde::Deserialize)]
struct Brief {
    generation: u32,
    status: String,
    accuracy: f64,
}

impl Running {
    fn client(&self) -> Option<&Client> {
        match &self.kind {
            Kind::InProcess { client, .. } => Some(client),
            Kind::Process(_) => None,
        }
    }

    /// Blocks or unblocks a peer: through the client, or a child's HTTP API.
    async fn block(&self, i: usize, peer: PeerId, blocked: bool) -> Result<(), ClusterError> {
        match &self.kind {
            Kind::InProcess { client, .. } => client
                .block(peer, blocked)
                .await
                .map_err(|_| ClusterError::Stopped(i)),
            Kind::Process(p) => p
                .block(&peer, blocked)
                .await
                .map_err(|e| ClusterError::Process {
                    node: i,
                    reason: e.to_string(),
                }),
        }
    }

    /// Dials `addr` (best effort: a refused dial is repaired by gossip and sync later).
    async fn dial(&self, addr: Multiaddr) {
        match &self.kind {
            Kind::InProcess { client, .. } => {
                let _ = client.dial(addr).await;
            }
            Kind::Process(p) => {
                let _ = p.dial(&addr).await;
            }
        }
    }

    async fn briefs(&self, id: CampaignId) -> Option<Vec<Brief>> {
        match &self.kind {
            Kind::InProcess { client, .. } => client.settled(id).await.ok().flatten().map(|jobs| {
                jobs.iter()
                    .map(|j| Brief {
                        generation: j.generation,
                        status: j.status.clone(),
                        accuracy: j.accuracy,
                    })
                    .collect()
            }),
            Kind::Process(p) => {
                let v = p.get_json(&format!("/campaigns/{id}/results")).await.ok()?;
                serde_json::from_value(v).ok()
            }
        }
    }

    /// One line on where the node stands in the campaign.
    async fn state_line(&self, id: CampaignId) -> Option<String> {
        match &self.kind {
            Kind::InProcess { client, .. } => client.campaign(id).await.ok().flatten().map(|c| {
                format!(
                    "generation {} finished {}: {}",
                    c.generation, c.finished, c.summary
                )
            }),
            Kind::Process(p) => {
                let c = p.get_json(&format!("/campaigns/{id}")).await.ok()?;
                Some(format!(
                    "generation {} finished {}: {}",
                    c["generation"],
                    c["finished"],
                    c["summary"].as_str().unwrap_or("")
                ))
            }
        }
    }

    async fn put_blob(&self, bytes: Vec<u8>) -> Result<String, ClusterError> {
        match &self.kind {
            Kind::InProcess { client, .. } => client
                .put_blob(bytes)
                .await
                .map_err(|_| ClusterError::Stopped(0))?
                .map(|id| id.to_string())
                .map_err(ClusterError::Config),
            Kind::Process(p) => {
                let v = p
                    .post("/blobs", &bytes)
                    .await
                    .map_err(|e| ClusterError::Config(format!("node 0: {e}")))?;
                v["id"].as_str().map(String::from).ok_or_else(|| {
                    ClusterError::Config(format!("node 0: POST /blobs answered {v}"))
                })
            }
        }
    }

    /// `kill -9`; the CPU seconds a child process had used.
    async fn kill(self) -> f64 {
        if let Some(w) = self.watcher {
            w.abort();
        }
        match self.kind {
            Kind::InProcess { stop, task, .. } => {
                // The loop is dropped where it stands, nothing is flushed.
                task.abort();
                let _ = task.await;
                drop(stop);
                0.0
            }
            Kind::Process(p) => {
                let cpu = p.cpu_seconds().unwrap_or(0.0);
                p.kill().await;
                cpu
            }
        }
    }

    /// A clean stop; the CPU seconds a child process had used.
    async fn stop(self) -> f64 {
        if let Some(w) = self.watcher {
            w.abort();
        }
        match self.kind {
            Kind::InProcess { stop, task, .. } => {
                let _ = stop.send(());
                let _ = task.await;
                0.0
            }
            Kind::Process(p) => {
                let cpu = p.cpu_seconds().unwrap_or(0.0);
                p.stop(Duration::from_secs(30)).await;
                cpu
            }
        }
    }

    /// Starts polling a child process's API for `id`'s events (in-process nodes push theirs).
    fn watch(&mut self, i: usize, id: CampaignId, events: &Events) {
        let Kind::Process(p) = &self.kind else { return };
        let api = p.api;
        let life = self.life;
        let events = events.clone();
        self.watcher = Some(tokio::spawn(async move {
            let mut sent: BTreeSet<(u32, String)> = BTreeSet::new();
            let mut finished = false;
            let mut started = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let mut out = Vec::new();
                if let Ok(c) = processes::get_json_at(api, &format!("/campaigns/{id}")).await {
                    for pair in c["closures"].as_array().into_iter().flatten() {
                        if let (Some(g), Some(root)) = (pair[0].as_u64(), pair[1].as_str())
                            && sent.insert((g as u32, root.to_string()))
                        {
                            out.push(NodeEvent::Closed {
                                generation: g as u32,
                                root: root.to_string(),
                            });
                        }
                    }
                    if !finished && c["finished"].as_bool() == Some(true) {
                        finished = true;
                        out.push(NodeEvent::Finished);
                    }
                }
                if let Ok(st) = processes::get_json_at(api, "/status").await {
                    let n = st["jobs_running"].as_u64().unwrap_or(0)
                        + st["jobs_finished"].as_u64().unwrap_or(0);
                    if n > started {
                        out.push(NodeEvent::Started(n - started));
                        started = n;
                    }
                }
                for e in out {
                    if events.send(((i, life), id, e)).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
}

/// Starts node `i`: in this process, or as a child process with `--processes`.
async fn start_node(
    cfg: &ClusterConfig,
    i: usize,
    bootstrap: Vec<Multiaddr>,
    events: &Events,
) -> Result<Running, ClusterError> {
    let life = next_life();
    let Some(bin) = &cfg.processes else {
        return start_in_process(cfg, i, life, bootstrap, events.clone()).await;
    };
    let dir = cfg.data_dir.join(format!("node{i}"));
    let key = node_key(cfg.seed, i);
    let role = cfg.role(i);
    let fault = (role == Role::Byzantine).then(|| cfg.strategy.flag());
    let p = processes::spawn(processes::Spawn {
        bin,
        data_dir: &dir,
        key: &key,
        bootstrap: &bootstrap,
        jobs: cfg.jobs_per_node,
        audit: role == Role::Auditor,
        fault,
        heartbeat: cfg.delay,
    })
    .await
    .map_err(|e| ClusterError::Process {
        node: i,
        reason: e.to_string(),
    })?;
    Ok(Running {
        addr: p.addr.clone(),
        peer_id: p.peer_id,
        kind: Kind::Process(p),
        life,
        watcher: None,
    })
}

/// Opens node `i`'s store in this process, connected to no one, to read what it holds (after
/// its child process stopped).
async fn open_offline(cfg: &ClusterConfig, i: usize) -> Result<Running, ClusterError> {
    let mut c = Config::new(cfg.data_dir.join(format!("node{i}")));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
    let (client, ev) = daemon::start(c, node_key(cfg.seed, i))
        .map_err(|source| ClusterError::Node { node: i, source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ev.run(async {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr: Multiaddr::empty(),
        peer_id: client.peer_id(),
        kind: Kind::InProcess { client, stop, task },
        life: 0,
        watcher: None,
    })
}

/// Starts node `i` in this process, retrying while its store is still held by a job the
/// previous (killed) instance left running on the blocking pool.
async fn start_in_process(
    cfg: &ClusterConfig,
    i: usize,
    life: u64,
    bootstrap: Vec<Multiaddr>,
    events: Events,
) -> Result<Running, ClusterError> {
    let mut c = Config::new(cfg.data_dir.join(format!("node{i}")));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
    c.bootstrap = bootstrap;
    c.jobs = cfg.jobs_per_node.max(1);
    c.sync_interval = Duration::from_secs(1);
    if let Some(d) = cfg.delay {
        c.net.heartbeat = d;
    }
    match cfg.role(i) {
        Role::Byzantine => c.fault = Some(cfg.strategy.fault()),
        Role::Auditor => c.audit = true,
        Role::Honest => {}
    }
    let key = node_key(cfg.seed, i);
    let give_up = Instant::now() + Duration::from_secs(120);
    let (client, ev) = loop {
        match daemon::start(c.clone(), key.clone()) {
            Ok(x) => break x,
            Err(NodeError::Store(hivemesh_node::store::StoreError::Locked { .. }))
                if Instant::now() < give_up =>
            {
                // The killed instance's last job still holds the store: wait for it.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(source) => return Err(ClusterError::Node { node: i, source }),
        }
    };
    let mut rx = client.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ev.run(async {
        let _ = stopped.await;
    }));
    let addr = loop {
        match rx.recv().await {
            Ok(Event::Listening(a)) => break a,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return Err(ClusterError::Stopped(i));
            }
        }
    };
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let (campaign, e) = match e {
                        Event::Closed {
                            campaign,
                            generation,
                            root,
                        } => (
                            campaign,
                            NodeEvent::Closed {
                                generation,
                                root: hivemesh_node::hex(&root),
                            },
                        ),
                        Event::Finished(campaign) => (campaign, NodeEvent::Finished),
                        Event::JobStarted { campaign, .. } => (campaign, NodeEvent::Started(1)),
                        Event::JobAbandoned {
                            campaign,
                            job,
                            reason,
                        } => (
                            campaign,
                            NodeEvent::Abandoned {
                                job: job.to_string(),
                                reason,
                            },
                        ),
                        _ => continue,
                    };
                    if events.send(((i, life), campaign, e)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Running {
        addr,
        peer_id: client.peer_id(),
        kind: Kind::InProcess { client, stop, task },
        life,
        watcher: None,
    })
}

/// The campaign file with the overrides and the roster (every node) written into it.
fn campaign_table(cfg: &ClusterConfig, roster: &[PeerKey]) -> Result<toml::Table, ClusterError> {
    use toml::Value;
    let mut t: toml::Table = toml::from_str(&cfg.campaign)
        .map_err(|e| ClusterError::Config(format!("campaign file: {e}")))?;
    let o = &cfg.overrides;
    if let Some(r) = o.redundancy {
        t.insert("redundancy".into(), Value::Integer(r.into()));
    }
    if let Some(q) = o.quorum {
        t.insert("quorum".into(), Value::Integer(q.into()));
    }
    if let Some(a) = o.audit_rate {
        t.insert("audit_rate".into(), Value::Float(a.clamp(0.0, 1.0)));
    }
    let sub = |t: &mut toml::Table, name: &str| -> Option<toml::Table> {
        match t.get(name) {
            Some(Value::Table(x)) => Some(x.clone()),
            _ => None,
        }
    };
    let mut schedule = sub(&mut t, "schedule").unwrap_or_default();
    if let Some(d) = o.job_deadline_s {
        schedule.insert(
            "job_deadline_s".into(),
            Value::Integer(d.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(x) = o.max_extra_executors {
        schedule.insert("max_extra_executors".into(), Value::Integer(x.into()));
    }
    if !schedule.is_empty() {
        t.insert("schedule".into(), Value::Table(schedule));
    }
    for name in ["nas", "loss"] {
        if let Some(mut search) = sub(&mut t, name) {
            if let Some(p) = o.population {
                search.insert("population".into(), Value::Integer(p.into()));
            }
            if let Some(g) = o.generations {
                search.insert("generations".into(), Value::Integer(g.into()));
            }
            t.insert(name.into(), Value::Table(search));
        }
    }
    t.insert(
        "roster".into(),
        Value::Array(
            roster
                .iter()
                .map(|k| Value::String(k.to_string()))
                .collect(),
        ),
    );
    Ok(t)
}

/// Submits the campaign at the creator: the file with the overrides and every node in the
/// roster; blobs it names as `zoo:` or `file:` are built or read and stored at the creator
/// first. Returns the spec (as the creator signs it, up to its timestamp) and the id.
async fn submit_campaign(
    cfg: &ClusterConfig,
    creator: &Running,
    roster: &[PeerKey],
) -> Result<(CampaignSpec, CampaignId), ClusterError> {
    let mut table = campaign_table(cfg, roster)?;
    let mut file = CampaignFile::parse(&table.to_string())?;
    let source = file.dataset.clone();
    for (name, value) in file.blob_refs_mut() {
        let bytes = if let Some(zoo) = value.strip_prefix("zoo:") {
            zoo_model(zoo, &source)?
        } else if let Some(path) = value.strip_prefix("file:") {
            let p = cfg.campaign_dir.join(path);
            std::fs::read(&p).map_err(|e| {
                ClusterError::Config(format!("{name} = \"{value}\": {}: {e}", p.display()))
            })?
        } else {
            continue;
        };
        *value = creator.put_blob(bytes).await?;
        if let Some((tab, key)) = name.split_once('.')
            && let Some(toml::Value::Table(t)) = table.get_mut(tab)
        {
            t.insert(key.into(), toml::Value::String(value.clone()));
        }
    }
    let dataset = resolve_dataset(&file.dataset)?;
    let creator_key = node_key(cfg.seed, 0).public();
    let spec = file.to_spec(creator_key, hivemesh_node::unix_now(), dataset)?;
    spec.validate()
        .map_err(|e| ClusterError::Config(format!("campaign: {e}")))?;
    if spec.roster.len() < usize::from(spec.redundancy) {
        return Err(ClusterError::Config(format!(
            "{} nodes cannot give every job {} executors: lower --redundancy or add nodes",
            spec.roster.len(),
            spec.redundancy
        )));
    }
    let id = match &creator.kind {
        Kind::InProcess { client, .. } => client
            .submit(spec.clone())
            .await
            .map_err(|_| ClusterError::Stopped(0))?
            .map_err(ClusterError::Config)?,
        Kind::Process(p) => {
            let v = p
                .post("/campaigns", table.to_string().as_bytes())
                .await
                .map_err(|e| ClusterError::Config(format!("node 0: {e}")))?;
            v["id"]
                .as_str()
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| {
                    ClusterError::Config(format!("node 0: POST /campaigns answered {v}"))
                })?
        }
    };
    Ok((spec, id))
}

fn kind_of(spec: &CampaignSpec) -> &'static str {
    match spec.search {
        Search::Nas(_) => "nas",
        Search::Loss(_) => "loss",
        Search::Distill(_) => "distill",
    }
}

fn total_jobs(spec: &CampaignSpec) -> usize {
    match &spec.search {
        Search::Nas(p) => (p.population * p.generations) as usize,
        Search::Loss(p) => (p.population * p.generations) as usize,
        Search::Distill(p) => p.samples.div_ceil(u64::from(p.shard_size.max(1))) as usize,
    }
}

/// A scheduled fault.
#[derive(Debug, Clone)]
enum Action {
    Kill(usize, Option<Duration>),
    Restart(usize),
    Split,
    Heal,
}

/// Runs a cluster to the end of its campaign (or the timeout) and reports.
pub async fn run(cfg: &ClusterConfig) -> Result<ClusterReport, ClusterError> {
    if cfg.nodes < 2 {
        return Err(ClusterError::Config(
            "a cluster needs at least 2 nodes".into(),
        ));
    }
    if cfg.byzantine >= cfg.nodes {
        return Err(ClusterError::Config(
            "at least the creator must be honest".into(),
        ));
    }
    if let Some(k) = cfg.kills.iter().find(|k| k.node >= cfg.nodes) {
        return Err(ClusterError::Config(format!(
            "--kill names node {}, but nodes are 0..{}",
            k.node,
            cfg.nodes - 1
        )));
    }
    if let Some(bin) = &cfg.processes
        && !bin.is_file()
    {
        return Err(ClusterError::Config(format!(
            "--processes needs the hivemesh binary, not found at {}: build it with \
             `cargo build --release -p hivemesh-node` or pass --hivemesh PATH",
            bin.display()
        )));
    }
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    let (etx, mut erx) = mpsc::channel::<(Source, CampaignId, NodeEvent)>(EVENT_CAPACITY);
    let mut nodes: Vec<Option<Running>> = Vec::new();
    for i in 0..cfg.nodes {
        // A tree with a back edge: connected from the start, a few hops across.
        let mut boot: Vec<Multiaddr> = Vec::new();
        for j in [0, i / 2, i.saturating_sub(1)] {
            if j < i
                && let Some(Some(n)) = nodes.get(j)
                && !boot.contains(&n.addr)
            {
                boot.push(n.addr.clone());
            }
        }
        nodes.push(Some(start_node(cfg, i, boot, &etx).await?));
    }
    let keys: Vec<PeerKey> = (0..cfg.nodes)
        .map(|i| node_key(cfg.seed, i).public())
        .collect();
    let peer_ids: Vec<PeerId> = nodes.iter().flatten().map(|n| n.peer_id).collect();
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    let (spec, id) = {
        let creator = nodes[0].as_ref().ok_or(ClusterError::Stopped(0))?;
        submit_campaign(cfg, creator, &keys).await?
    };
    let total = total_jobs(&spec);
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some(n) = n {
            n.watch(i, id, &etx);
        }
    }
    // CPU seconds of child processes that were killed (`--processes`).
    let mut killed_cpu = 0.0f64;

    let mut schedule: Vec<(Duration, Action)> = Vec::new();
    for k in cfg.kills.iter().filter(|k| k.after_generation.is_none()) {
        schedule.push((k.at, Action::Kill(k.node, k.down)));
    }
    if let Some(p) = &cfg.partition {
        schedule.push((p.at, Action::Split));
        schedule.push((p.at + p.heal, Action::Heal));
    }
    schedule.sort_by_key(|(t, _)| *t);

    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} jobs settled  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    // Lines go above the bar on a terminal, plainly to stderr otherwise (CI logs, pipes).
    let say = |line: String| match &bar {
        Some(b) if !b.is_hidden() => b.println(line),
        Some(_) => eprintln!("{line}"),
        None => {}
    };
    let honest: Vec<usize> = (0..cfg.nodes)
        .filter(|i| cfg.role(*i) != Role::Byzantine)
        .collect();
    let mut finished: BTreeSet<usize> = BTreeSet::new();
    let mut gone_for_good: BTreeSet<usize> = BTreeSet::new();
    let mut closed: BTreeMap<u32, (String, f64, f64, BTreeSet<usize>)> = BTreeMap::new();
    let mut progress: Vec<crate::plot::Sample> = Vec::new();
    let mut gen_views: BTreeMap<u32, (usize, f64)> = BTreeMap::new();
    let mut faults: Vec<FaultEvent> = Vec::new();
    let mut executions = 0u64;
    let mut per_node_executions = vec![0u64; cfg.nodes];
    let mut next_fault = 0usize;
    let mut timed_out = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let generations = match &spec.search {
        Search::Nas(p) => p.generations,
        Search::Loss(p) => p.generations,
        Search::Distill(_) => 1,
    };
    loop {
        // A node that is down until a restart is waited for even if it had finished: it must
        // finish again from its store (and an old incarnation's late event may have said so).
        let waiting: Vec<usize> = honest
            .iter()
            .copied()
            .filter(|i| !gone_for_good.contains(i))
            .filter(|i| !finished.contains(i) || nodes[*i].is_none())
            .collect();
        if waiting.is_empty() {
            break;
        }
        let elapsed = t0.elapsed();
        if elapsed > cfg.timeout {
            timed_out = true;
            break;
        }
        let fault_at = schedule
            .get(next_fault)
            .map(|(t, _)| tokio::time::Instant::from_std(t0 + *t));
        tokio::select! {
            biased;
            () = async {
                match fault_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let action = schedule[next_fault].1.clone();
                next_fault += 1;
                let at_s = t0.elapsed().as_secs_f64();
                let what = apply(cfg, action, id, &mut nodes, &peer_ids, &etx, &mut schedule, t0, &mut finished, &mut gone_for_good, &mut killed_cpu).await?;
                say(format!("{at_s:7.1}s  fault: {what}"));
                faults.push(FaultEvent { at_s, what });
                schedule[next_fault..].sort_by_key(|(t, _)| *t);
            }
            Some(((i, life), campaign, e)) = erx.recv() => match e {
                _ if campaign != id => {}
                NodeEvent::Closed { generation, root } => {
                    let t = t0.elapsed().as_secs_f64();
                    let entry = closed.entry(generation).or_insert_with(|| {
                        (root.clone(), t, t, BTreeSet::new())
                    });
                    entry.2 = t;
                    entry.3.insert(i);
                    if entry.3.len() == 1 {
                        // Kills triggered by this closure.
                        for k in cfg.kills.iter().filter(|k| k.after_generation == Some(generation)) {
                            schedule.push((t0.elapsed() + k.at, Action::Kill(k.node, k.down)));
                        }
                        schedule[next_fault..].sort_by_key(|(t, _)| *t);
                    }
                    if entry.3.len() == 1
                        && let Some(Some(n)) = nodes.get(i)
                        && let Some(jobs) = n.briefs(id).await
                    {
                        let settled = jobs.iter().filter(|j| j.status != "void").count();
                        let best = jobs.iter().filter(|j| j.status == "success").map(|j| j.accuracy).fold(0.0, f64::max);
                        let in_gen: Vec<&Brief> = jobs.iter().filter(|j| j.generation == generation).collect();
                        let gen_best = in_gen.iter().filter(|j| j.status == "success").map(|j| j.accuracy).fold(0.0, f64::max);
                        gen_views.insert(generation, (in_gen.iter().filter(|j| j.status != "void").count(), gen_best));
                        progress.push(crate::plot::Sample { seconds: t, settled, best });
                        if let Some(b) = &bar {
                            b.set_position(settled.min(total) as u64);
                        }
                        if (generation as usize) < generations as usize {
                            say(format!(
                                "{t:7.1}s  generation {}/{generations} closed (root {}): {} jobs settled, best accuracy {best:.4}",
                                generation + 1,
                                &root[..12.min(root.len())],
                                settled,
                            ));
                        } else {
                            say(format!("{t:7.1}s  audits judged (root {})", &root[..12.min(root.len())]));
                        }
                    }
                }
                NodeEvent::Finished => {
                    if nodes[i].as_ref().is_some_and(|n| n.life == life) {
                        finished.insert(i);
                    }
                }
                NodeEvent::Started(n) => {
                    executions += n;
                    per_node_executions[i] += n;
                }
                NodeEvent::Abandoned { job, reason } => {
                    say(format!("node {i} handed back job {}: {reason}", &job[..12.min(job.len())]));
                }
            },
            _ = ticker.tick() => {
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "{} executions, {}/{} nodes finished",
                        executions,
                        finished.len(),
                        honest.len()
                    ));
                }
            }
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    // What every node holds.
    let mut states = String::new();
    if timed_out {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n
                && let Some(line) = n.state_line(id).await
            {
                states.push_str(&format!("node {i} ({:?}): {line}\n", cfg.role(i)));
            }
        }
    }
    let mut final_status: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let swarm_cpu = if cfg.processes.is_some() {
        // Child processes: their CPU seconds; then each store is read here, offline.
        let mut cpu = killed_cpu;
        let mut reopen = Vec::new();
        for (i, slot) in nodes.iter_mut().enumerate() {
            if let Some(n) = slot.take() {
                if let Kind::Process(p) = &n.kind
                    && let Ok(st) = p.get_json("/status").await
                {
                    final_status.insert(
                        i,
                        (
                            st["messages_validated"].as_u64().unwrap_or(0),
                            st["messages_rejected"].as_u64().unwrap_or(0),
                        ),
                    );
                }
                cpu += n.stop().await;
                reopen.push(i);
            }
        }
        if !timed_out {
            for i in reopen {
                nodes[i] = Some(open_offline(cfg, i).await?);
            }
        }
        Some(cpu)
    } else {
        match (cpu0, process_cpu_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        }
    };
    let mut views = Vec::new();
    let mut agreed_jobs: Option<Vec<SettledJob>> = None;
    let mut scores: Option<Vec<(PeerKey, PeerScore)>> = None;
    let mut jobs_to_rerun: Option<(CampaignSpec, Vec<JobSpec>)> = None;
    let mut blobs: BTreeMap<BlobId, Vec<u8>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let role = cfg.role(i);
        let Some(n) = n.as_ref().and_then(Running::client) else {
            views.push(NodeView {
                index: i,
                role,
                key: keys[i].to_string(),
                up: false,
                finished: false,
                closures: Vec::new(),
                jobs_trained: per_node_executions[i],
                messages_validated: 0,
                messages_rejected: 0,
            });
            continue;
        };
        let c = n.campaign(id).await.map_err(|_| ClusterError::Stopped(i))?;
        let st = n.status().await.map_err(|_| ClusterError::Stopped(i))?;
        if role != Role::Byzantine && agreed_jobs.is_none() {
            agreed_jobs = n.settled(id).await.map_err(|_| ClusterError::Stopped(i))?;
            scores = n.scores(id).await.map_err(|_| ClusterError::Stopped(i))?;
            jobs_to_rerun = n.jobs(id).await.map_err(|_| ClusterError::Stopped(i))?;
            for (b, _) in needed_blobs(&spec) {
                if let Ok(Ok(Some(bytes))) = n.blob(b).await {
                    blobs.insert(b, bytes);
                }
            }
        }
        views.push(NodeView {
            index: i,
            role,
            key: keys[i].to_string(),
            up: true,
            finished: finished.contains(&i),
            closures: c.map(|c| c.closures).unwrap_or_default(),
            jobs_trained: per_node_executions[i],
            messages_validated: final_status.get(&i).map_or(st.messages_validated, |s| s.0),
            messages_rejected: final_status.get(&i).map_or(st.messages_rejected, |s| s.1),
        });
    }
    // Distillation: the agreed shards' bytes, from whichever running node holds each (honest
    // nodes first).
    let mut shard_bytes: BTreeMap<BlobId, Vec<u8>> = BTreeMap::new();
    if let Some(jobs) = &agreed_jobs {
        let mut order: Vec<&Client> = Vec::new();
        for role_first in [true, false] {
            for (i, n) in nodes.iter().enumerate() {
                if let Some(n) = n.as_ref().and_then(Running::client)
                    && (cfg.role(i) != Role::Byzantine) == role_first
                {
                    order.push(n);
                }
            }
        }
        for j in jobs.iter().filter(|j| j.payload.0 == "distill") {
            let Some(b) = j.artifacts.first().and_then(|a| a.parse::<BlobId>().ok()) else {
                continue;
            };
            for n in &order {
                if let Ok(Ok(Some(bytes))) = n.blob(b).await
                    && BlobId::of_bytes(&bytes) == b
                {
                    shard_bytes.insert(b, bytes);
                    break;
                }
            }
        }
    }
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    let up: Vec<&NodeView> = views.iter().filter(|v| v.up).collect();
    let agreement = up
        .first()
        .is_some_and(|f| !f.closures.is_empty() && up.iter().all(|v| v.closures == f.closures));
    let jobs = agreed_jobs.unwrap_or_default();
    let (shards, shard_blobs) = collect_shards(&jobs, &shard_bytes);
    let scores = scores.unwrap_or_default();
    let role_of_key: BTreeMap<PeerKey, usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let standings: Vec<Standing> = scores
        .iter()
        .filter_map(|(k, s)| {
            let i = *role_of_key.get(k)?;
            Some(Standing {
                index: i,
                role: cfg.role(i),
                key: k.to_string(),
                score: s.clone(),
            })
        })
        .collect();
    let caught = |s: &PeerScore| s.dissented > 0 || s.failed_audits > 0;
    let byz: Vec<&Standing> = standings
        .iter()
        .filter(|s| s.role == Role::Byzantine)
        .collect();
    let cheaters_detected = byz
        .iter()
        .filter(|s| caught(&s.score))
        .map(|s| s.index)
        .collect();
    let cheaters_paid = byz
        .iter()
        .filter(|s| s.score.points > 0)
        .map(|s| s.index)
        .collect();
    let honest_penalised = standings
        .iter()
        .filter(|s| s.role != Role::Byzantine && caught(&s.score))
        .map(|s| s.index)
        .collect();
    let byz_keys: BTreeSet<String> = byz.iter().map(|s| s.key.clone()).collect();
    // A liar that executed but is not in the standings (no settled job) is also missed.
    let mut cheaters_missed: Vec<usize> = (0..cfg.nodes)
        .filter(|i| cfg.role(*i) == Role::Byzantine)
        .filter(|i| !byz.iter().any(|s| s.index == *i && caught(&s.score)))
        .collect();
    if cfg.strategy == Byzantine::CorruptBlobs {
        // Serving corrupt blobs is not a ledger offence: peers refuse the bytes and lower the
        // server's gossip score, which the ledger does not see.
        cheaters_missed.clear();
    }
    let wrong_results = if cfg.strategy == Byzantine::Lie {
        jobs.iter()
            .filter(|j| j.agreeing.iter().any(|k| byz_keys.contains(k)))
            .count()
    } else {
        0
    };
    let settled = jobs.iter().filter(|j| j.status != "void").count();
    let generations_out: Vec<GenerationView> = closed
        .iter()
        .map(|(g, (root, first, last, _))| {
            let (n, best) = gen_views.get(g).copied().unwrap_or((0, 0.0));
            GenerationView {
                generation: *g,
                root: root.clone(),
                first_closed_s: *first,
                last_closed_s: *last,
                settled: n,
                best_accuracy: best,
            }
        })
        .collect();

    let overhead = match (cfg.measure_overhead, swarm_cpu, jobs_to_rerun) {
        (true, Some(swarm_cpu_s), Some((rerun_spec, all))) if settled > 0 => {
            let settled_ids: BTreeSet<&str> = jobs
                .iter()
                .filter(|j| j.status != "void")
                .map(|j| j.job.as_str())
                .collect();
            let todo: Vec<JobSpec> = all
                .into_iter()
                .filter(|j| settled_ids.contains(j.id().to_string().as_str()))
                .collect();
            if cfg.progress {
                eprintln!(
                    "measuring the overhead: running the {} settled jobs once on one executor...",
                    todo.len()
                );
            }
            let single = tokio::task::spawn_blocking(move || {
                let ex = Executor::new(Config::new(PathBuf::new()).limits);
                let c0 = process_cpu_seconds();
                let w0 = Instant::now();
                for j in &todo {
                    let _ = ex.run(&rerun_spec, j, &blobs, &mut |_| {});
                }
                match (c0, process_cpu_seconds()) {
                    (Some(a), Some(b)) => Some((b - a, w0.elapsed().as_secs_f64())),
                    _ => None,
                }
            })
            .await
            .ok()
            .flatten();
            single
                .filter(|s| s.0 > 0.0)
                .map(|(single_cpu_s, single_wall_s)| Overhead {
                    swarm_cpu_s,
                    single_cpu_s,
                    single_wall_s,
                    redundancy: spec.redundancy,
                    ratio: swarm_cpu_s / (f64::from(spec.redundancy) * single_cpu_s),
                    executions_per_job: executions as f64 / settled as f64,
                })
        }
        _ => None,
    };
    let front = daemon::front(&jobs);
    let finished_all = !timed_out;
    let report = ClusterReport {
        campaign: id.to_string(),
        name: spec.name.clone(),
        kind: kind_of(&spec).into(),
        nodes: cfg.nodes,
        redundancy: spec.redundancy,
        quorum: spec.quorum,
        strategy: cfg.strategy,
        finished: finished_all,
        wall_s,
        generations: generations_out,
        node_views: views,
        agreement,
        jobs,
        front,
        standings,
        cheaters_detected,
        cheaters_missed,
        cheaters_paid,
        honest_penalised,
        wrong_results,
        executions,
        jobs_per_minute: settled as f64 / (wall_s / 60.0).max(1e-9),
        progress,
        faults,
        overhead,
        shards,
        shard_blobs,
    };
    if !cfg.keep_data {
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    if timed_out {
        return Err(ClusterError::Timeout {
            after: cfg.timeout,
            states,
        });
    }
    Ok(report)
}

/// The distillation shards of `jobs` (the agreed settled jobs), checked against the bytes
/// found at the nodes: each must hash to its agreed id and parse as a shard of its range.
fn collect_shards(
    jobs: &[SettledJob],
    bytes: &BTreeMap<BlobId, Vec<u8>>,
) -> (Vec<ShardView>, Vec<(String, Vec<u8>)>) {
    let mut views = Vec::new();
    let mut files = Vec::new();
    for j in jobs.iter().filter(|j| j.payload.0 == "distill") {
        let (start, end) = j
            .payload
            .1
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or((0, 0));
        let blob = j.artifacts.first().cloned();
        let found = blob
            .as_deref()
            .and_then(|b| b.parse::<BlobId>().ok())
            .and_then(|b| bytes.get(&b));
        let verified = j.status == "success"
            && found.is_some_and(|b| {
                ShardLabels::from_bytes(b)
                    .is_ok_and(|s| s.start == start && s.len() as u64 == end - start)
            });
        let file = verified.then(|| format!("{start:09}-{end:09}.hmkd"));
        if let (Some(f), Some(b)) = (&file, found) {
            files.push((f.clone(), b.clone()));
        }
        views.push(ShardView {
            job: j.job.clone(),
            start,
            end,
            status: j.status.clone(),
            blob,
            agreeing: j.agreeing.len(),
            teacher_accuracy: j.accuracy,
            verified,
            file,
        });
    }
    views.sort_by_key(|v| v.start);
    (views, files)
}

/// Applies one scheduled fault; returns what it did.
#[allow(clippy::too_many_arguments)]
async fn apply(
    cfg: &ClusterConfig,
    action: Action,
    id: CampaignId,
    nodes: &mut [Option<Running>],
    peer_ids: &[PeerId],
    events: &Events,
    schedule: &mut Vec<(Duration, Action)>,
    t0: Instant,
    finished: &mut BTreeSet<usize>,
    gone_for_good: &mut BTreeSet<usize>,
    killed_cpu: &mut f64,
) -> Result<String, ClusterError> {
    let half = cfg.nodes / 2;
    Ok(match action {
        Action::Kill(i, down) => {
            let Some(n) = nodes[i].take() else {
                return Ok(format!("node {i} is already down"));
            };
            *killed_cpu += n.kill().await;
            finished.remove(&i);
            match down {
                Some(d) => {
                    schedule.push((t0.elapsed() + d, Action::Restart(i)));
                    format!("kill -9 node {i} (restart in {:.0} s)", d.as_secs_f64())
                }
                None => {
                    gone_for_good.insert(i);
                    format!("kill -9 node {i} (for good)")
                }
            }
        }
        Action::Restart(i) => {
            let boot: Vec<Multiaddr> = nodes
                .iter()
                .flatten()
                .map(|n| n.addr.clone())
                .take(3)
                .collect();
            let mut n = start_node(cfg, i, boot, events).await?;
            n.watch(i, id, events);
            nodes[i] = Some(n);
            finished.remove(&i);
            format!("node {i} restarted from its store")
        }
        Action::Split => {
            for (i, n) in nodes.iter().enumerate() {
                let Some(n) = n.as_ref() else {
                    continue;
                };
                for (j, p) in peer_ids.iter().enumerate() {
                    if (i < half) != (j < half) {
                        n.block(i, *p, true).await?;
                    }
                }
            }
            format!("partition: nodes 0..{half} | {half}..{}", cfg.nodes)
        }
        Action::Heal => {
            for (i, n) in nodes.iter().enumerate() {
                let Some(n) = n.as_ref() else {
                    continue;
                };
                for (j, p) in peer_ids.iter().enumerate() {
                    if (i < half) != (j < half) {
                        n.block(i, *p, false).await?;
                    }
                }
            }
            // Reconnect across the cut: each node dials one node of the other half.
            let addrs: Vec<Option<Multiaddr>> = nodes
                .iter()
                .map(|n| n.as_ref().map(|n| n.addr.clone()))
                .collect();
            for (i, n) in nodes.iter().enumerate() {
                let Some(n) = n.as_ref() else {
                    continue;
                };
                let other = if i < half {
                    half + i % (cfg.nodes - half)
                } else {
                    (i - half) % half.max(1)
                };
                if let Some(Some(a)) = addrs.get(other) {
                    n.dial(a.clone()).await;
                }
            }
            "partition healed".to_string()
        }
    })
}
