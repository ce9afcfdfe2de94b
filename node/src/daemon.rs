//! The running node: a [`Client`] handle, the [`EventLoop`] that owns the swarm, the store and
//! one protocol [`Peer`] per campaign, and the [`Event`]s it reports.
//!
//! The event loop is the only owner of mutable state. It waits, in priority order (`biased`),
//! on: shutdown; commands from clients; finished jobs; the earliest protocol wakeup; the sync
//! timer; and the swarm. Training runs on the blocking pool (`spawn_blocking`), at most
//! `--jobs` at once, and reports back over a bounded channel.
//!
//! Every message from the network is verified (frame, signature, campaign binding, age) before
//! the protocol sees it; the protocol's verdict decides whether gossipsub forwards it (accept),
//! drops it (ignore) or drops it and penalises the forwarder (reject). Own messages and
//! accepted messages are stored before they are published, results before they are fed to the
//! protocol; a restarted node replays its store (see [`crate::store`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hivemesh_protocol::closure::{Closure, Entry};
use hivemesh_protocol::derive::Derivation;
use hivemesh_protocol::envelope::{AnySigned, Context, Signed};
use hivemesh_protocol::error::{DecodeError, PeerAction};
use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::identity::{Keypair, PeerKey};
use hivemesh_protocol::message::{JobResult, Kind, Outcome};
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerInput, PeerOutput};
use hivemesh_protocol::scoring::{self, JobRecord, PeerScore, ScoringRules};
use hivemesh_protocol::spec::{CampaignSpec, JobPayload, JobSpec};
use hivemesh_trainer::train::Limits;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::executor::{BlobSource, Executed, Executor, needed_blobs};
use crate::fetch::{BlobFetch, MAX_BLOB_LEN, MAX_FETCHES, Step};
use crate::metrics::Metrics;
use crate::net::{
    BLOB_CHUNK, Behaviour, BehaviourEvent, BlobRequest, BlobResponse, CAMPAIGNS_TOPIC,
    MAX_SYNC_BYTES, MAX_SYNC_CAMPAIGNS, NetConfig, SyncRequest, SyncResponse, campaign_topic,
    topic_score_params,
};
use crate::store::{Store, StoreError};
use crate::{hex, unix_now};

/// Commands queued from clients to the event loop.
pub const COMMAND_CAPACITY: usize = 64;
/// Finished jobs queued to the event loop.
pub const JOB_RESULT_CAPACITY: usize = 64;
/// Events buffered per subscriber (a slow subscriber misses the oldest).
pub const EVENT_CAPACITY: usize = 1024;
/// Own messages kept for publishing while no peer is subscribed yet.
pub const OUTBOX_CAPACITY: usize = 4096;
/// Most campaigns a node follows (announcements past it are ignored).
pub const MAX_CAMPAIGNS: usize = 64;
/// Gossip messages accepted per forwarding peer per second (more are ignored, not forwarded).
pub const GOSSIP_RATE_PER_PEER: f64 = 500.0;
/// Sync requests answered per peer per second.
pub const REQUEST_RATE_PER_PEER: f64 = 50.0;
/// Blob chunk requests answered per peer per second (256 KiB each: 50 MiB/s).
pub const BLOB_RATE_PER_PEER: f64 = 200.0;
/// Blobs this node announces as a provider when it starts (the rest are still served).
pub const MAX_ANNOUNCED_BLOBS: usize = 4096;
/// Connections a node seeks out (through Kademlia) for a well-knit gossip mesh.
pub const TARGET_PEERS: usize = 4;
/// Application-score cost of one invalid message received over sync.
const SYNC_REJECT_PENALTY: f64 = -100.0;

/// Why the node stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The libp2p swarm could not be built.
    #[error("network setup: {0}")]
    Net(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Deliberate misbehaviour, for tests and netsim clusters (`hivemesh run` sets it only from
/// the hidden `--fault` flag / `HIVEMESH_FAULT`, which netsim's `--processes` mode uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Publish wrong results: every successful result's `correct` is off by one.
    Lie,
    /// Serve blobs with their first byte flipped.
    CorruptBlobs,
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1` style).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Jobs run at once.
    pub jobs: u16,
    /// Audit mode (re-execute sampled jobs first).
    pub audit: bool,
    /// How often to pull missing ledger messages from a connected peer.
    pub sync_interval: Duration,
    /// Network knobs.
    pub net: NetConfig,
    /// Executor limits.
    pub limits: Limits,
    /// Gossip messages accepted per forwarding peer per second (more are ignored).
    pub gossip_rate: f64,
    /// Misbehaviour to inject (tests only).
    pub fault: Option<Fault>,
}

impl Config {
    /// Defaults for a node keeping its state in `data_dir`, listening on every interface on
    /// `port` (TCP and QUIC; 0 picks free ports).
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            jobs: 1,
            audit: false,
            sync_interval: Duration::from_secs(5),
            net: NetConfig::default(),
            limits: Limits::default(),
            gossip_rate: GOSSIP_RATE_PER_PEER,
            fault: None,
        }
    }
}

/// What the node reports to subscribers.
#[derive(Debug, Clone)]
pub enum Event {
    /// Listening on a new address (with `/p2p/<peer id>`).
    Listening(Multiaddr),
    /// Connected to a peer.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A network message was validated, fed to the protocol and stored.
    Accepted(MessageId),
    /// A peer subscribed to a campaign's gossip topic.
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The campaign.
        campaign: CampaignId,
    },
    /// A campaign was submitted here or learned from a peer.
    CampaignAdded(CampaignId),
    /// A job started running here.
    JobStarted {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
    },
    /// A job finished here (its result is stored and published).
    JobFinished {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
    },
    /// A generation closed.
    Closed {
        /// The campaign.
        campaign: CampaignId,
        /// The generation.
        generation: u32,
        /// Its closure root.
        root: [u8; 32],
    },
    /// A campaign's last generation closed.
    Finished(CampaignId),
    /// A job could not be run here after all (a blob it needs cannot be found, the dataset is
    /// missing, ...); the protocol lets the next-ranked peers take it over.
    JobAbandoned {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// A blob was fetched from a peer, hash-checked and stored.
    BlobFetched {
        /// The blob.
        id: BlobId,
        /// The peer that gave it.
        from: PeerId,
    },
    /// No peer gave a blob.
    BlobFetchFailed {
        /// The blob.
        id: BlobId,
        /// Why.
        reason: String,
    },
    /// A message was refused.
    Rejected {
        /// The peer that forwarded it.
        from: PeerId,
        /// Why.
        reason: String,
        /// Whether the forwarder was penalised.
        penalised: bool,
    },
}

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
pub fn front(jobs: &[SettledJob]) -> Vec<FrontPoint> {
    let ok: Vec<&SettledJob> = jobs.iter().filter(|j| j.status == "success").collect();
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
    pub status: String,
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
    /// Why it failed (failure).
    pub failure: Option<String>,
    /// Executors that agreed.
    pub agreeing: Vec<String>,
    /// Executors that did not.
    pub dissenting: Vec<String>,
    /// The audit verdict, when the job was audited: `confirmed` (every auditor agreed),
    /// `upheld` (a dispute's jury agreed with the executors) or `overturned` (the jury did
    /// not: the outcome above is then the jury's, and `agreeing` its jurors).
    pub audit: Option<String>,
    /// When overturned: the executors who had agreed on the wrong outcome.
    pub overturned: Vec<String>,
}

impl SettledJob {
    fn new(job: &JobSpec, s: &hivemesh_protocol::Settlement) -> SettledJob {
        let payload = match &job.payload {
            JobPayload::Nas { genome } => ("nas".into(), hex(genome)),
            JobPayload::Loss { expression } => ("loss".into(), hex(expression)),
            JobPayload::Distill { start, end } => ("distill".into(), format!("{start}..{end}")),
        };
        let mut out = SettledJob {
            job: job.id().to_string(),
            generation: job.generation,
            index: job.index,
            payload,
            status: "success".into(),
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
                out.status = "failure".into();
                out.failure = Some(format!("{:?}: {}", f.kind, f.detail));
            }
        }
        out
    }

    fn void(job: &JobSpec) -> SettledJob {
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
        out.status = "void".into();
        out.failure = Some("no quorum by the deadline".into());
        out
    }
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    Submit(
        Box<CampaignSpec>,
        oneshot::Sender<Result<CampaignId, String>>,
    ),
    Status(oneshot::Sender<NodeStatus>),
    Campaign(CampaignId, oneshot::Sender<Option<CampaignStatus>>),
    Settled(CampaignId, oneshot::Sender<Option<Vec<SettledJob>>>),
    Jobs(
        CampaignId,
        oneshot::Sender<Option<(CampaignSpec, Vec<JobSpec>)>>,
    ),
    GossipScore(PeerId, oneshot::Sender<Option<f64>>),
    Scores(
        CampaignId,
        oneshot::Sender<Option<Vec<(PeerKey, PeerScore)>>>,
    ),
    PublishRaw(String, Vec<u8>, oneshot::Sender<Result<(), String>>),
    Blob(BlobId, oneshot::Sender<Result<Option<Vec<u8>>, String>>),
    PutBlob(Vec<u8>, oneshot::Sender<Result<BlobId, String>>),
    Block(PeerId, bool, oneshot::Sender<()>),
    FetchBlob(BlobId, oneshot::Sender<Result<Vec<u8>, String>>),
    PeerKeys(oneshot::Sender<Vec<PeerKey>>),
}

/// A handle to a running node. Cheap to clone; every call is answered by the event loop.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    peer_id: PeerId,
    key: PeerKey,
    metrics: Arc<Metrics>,
}

/// The node stopped before answering.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node has stopped")]
pub struct Stopped;

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// The node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's signing key.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// The node's metrics (counted by the event loop).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Subscribes to the node's events (from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Stopped> {
        self.ask(Command::ListenAddrs).await
    }

    /// Dials a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<Result<(), String>, Stopped> {
        self.ask(|tx| Command::Dial(addr, tx)).await
    }

    /// Signs and publishes a campaign, and starts following it.
    pub async fn submit(&self, spec: CampaignSpec) -> Result<Result<CampaignId, String>, Stopped> {
        self.ask(|tx| Command::Submit(Box::new(spec), tx)).await
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, Stopped> {
        self.ask(Command::Status).await
    }

    /// One campaign's status.
    pub async fn campaign(&self, id: CampaignId) -> Result<Option<CampaignStatus>, Stopped> {
        self.ask(|tx| Command::Campaign(id, tx)).await
    }

    /// A campaign's settled jobs.
    pub async fn settled(&self, id: CampaignId) -> Result<Option<Vec<SettledJob>>, Stopped> {
        self.ask(|tx| Command::Settled(id, tx)).await
    }

    /// A campaign's spec and every job derived so far (generation 0 and each generation its
    /// closures opened), in generation and index order.
    pub async fn jobs(
        &self,
        id: CampaignId,
    ) -> Result<Option<(CampaignSpec, Vec<JobSpec>)>, Stopped> {
        self.ask(|tx| Command::Jobs(id, tx)).await
    }

    /// Every peer's standing in a campaign, derived from its closures (the agreed ledger).
    pub async fn scores(
        &self,
        id: CampaignId,
    ) -> Result<Option<Vec<(PeerKey, PeerScore)>>, Stopped> {
        self.ask(|tx| Command::Scores(id, tx)).await
    }

    /// The signing keys of the peers connected now (candidates for a campaign's roster).
    pub async fn connected_keys(&self) -> Result<Vec<PeerKey>, Stopped> {
        self.ask(Command::PeerKeys).await
    }

    /// A blob held by this node (weights, shards), checked against its id.
    pub async fn blob(&self, id: BlobId) -> Result<Result<Option<Vec<u8>>, String>, Stopped> {
        self.ask(|tx| Command::Blob(id, tx)).await
    }

    /// Stores a blob (a reference model, a teacher), announces this node as its provider, and
    /// returns its id. At most [`MAX_BLOB_LEN`] bytes.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<Result<BlobId, String>, Stopped> {
        self.ask(|tx| Command::PutBlob(bytes, tx)).await
    }

    /// A blob from this node's store, or else fetched from the peers that provide it
    /// (hash-checked, then stored here).
    pub async fn fetch_blob(&self, id: BlobId) -> Result<Result<Vec<u8>, String>, Stopped> {
        self.ask(|tx| Command::FetchBlob(id, tx)).await
    }

    /// Stops talking to a peer (closes its connections, refuses new ones) or, with `blocked`
    /// false, talks to it again. For operators and for netsim's partitions.
    pub async fn block(&self, peer: PeerId, blocked: bool) -> Result<(), Stopped> {
        self.ask(|tx| Command::Block(peer, blocked, tx)).await
    }

    /// This node's gossipsub score of a peer.
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, Stopped> {
        self.ask(|tx| Command::GossipScore(peer, tx)).await
    }

    /// Publishes raw bytes on a gossip topic, unchecked (fault injection in tests and netsim).
    pub async fn publish_raw(
        &self,
        topic: String,
        bytes: Vec<u8>,
    ) -> Result<Result<(), String>, Stopped> {
        self.ask(|tx| Command::PublishRaw(topic, bytes, tx)).await
    }
}

/// A token bucket per peer.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: HashMap<PeerId, (f64, Instant)>,
}

impl RateLimiter {
    fn allow(&mut self, peer: PeerId, rate: f64) -> bool {
        let now = Instant::now();
        let burst = rate * 2.0;
        let (tokens, last) = self.buckets.entry(peer).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Campaign {
    spec: Arc<CampaignSpec>,
    peer: Peer,
    topic: IdentTopic,
}

struct JobDone {
    campaign: CampaignId,
    job: JobId,
    outcome: Result<Executed, String>,
}

/// A blob being fetched and who waits for it.
struct Fetching {
    fetch: BlobFetch,
    /// Jobs to start once it is here.
    jobs: Vec<(CampaignId, JobSpec)>,
    /// Clients to answer.
    waiters: Vec<oneshot::Sender<Result<Vec<u8>, String>>>,
}

/// The store as the executor's blob source.
struct StoreBlobs(Arc<Store>);

impl BlobSource for StoreBlobs {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.0.blob(id).ok().flatten()
    }
}

/// The node's event loop: owns the swarm, the store and the campaigns.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    key: Keypair,
    config: Config,
    store: Arc<Store>,
    executor: Arc<Executor>,
    campaigns: BTreeMap<CampaignId, Campaign>,
    topics: HashMap<TopicHash, CampaignId>,
    announce_topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    jobs_tx: mpsc::Sender<JobDone>,
    jobs_rx: mpsc::Receiver<JobDone>,
    job_slots: Arc<Semaphore>,
    running: usize,
    jobs_finished: u64,
    outbox: VecDeque<(IdentTopic, Vec<u8>)>,
    sync_cursor: HashMap<(PeerId, CampaignId), u64>,
    sync_turn: usize,
    gossip_rate: RateLimiter,
    request_rate: RateLimiter,
    blob_rate: RateLimiter,
    app_scores: HashMap<PeerId, f64>,
    listen_addrs: Vec<Multiaddr>,
    validated: u64,
    rejected: u64,
    metrics: Arc<Metrics>,
    fetches: HashMap<BlobId, Fetching>,
    blob_requests: HashMap<OutboundRequestId, BlobId>,
    blob_searches: HashMap<kad::QueryId, BlobId>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .field("campaigns", &self.campaigns.len())
            .finish_non_exhaustive()
    }
}

fn libp2p_key(key: &Keypair) -> Result<libp2p::identity::Keypair, NodeError> {
    libp2p::identity::Keypair::ed25519_from_bytes(key.secret_bytes())
        .map_err(|e| NodeError::Net(format!("identity: {e}")))
}

fn lie(mut result: JobResult) -> JobResult {
    if let Outcome::Success(m) = &mut result.outcome {
        m.correct = (m.correct + 1) % (m.total + 1);
    }
    result
}

/// Builds the node: opens the store, builds the swarm, starts listening and dialling. Run the
/// returned loop with [`EventLoop::run`], which first restores every stored campaign
/// (replaying its messages; subscribe to the events before, to see what the replay ends in).
pub fn start(config: Config, key: Keypair) -> Result<(Client, EventLoop), NodeError> {
    let store = Arc::new(Store::open(&config.data_dir)?);
    let p2p_key = libp2p_key(&key)?;
    let net = config.net.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(p2p_key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| NodeError::Net(format!("tcp: {e}")))?
        .with_quic()
        .with_behaviour(|k| Behaviour::new(k, &net))
        .map_err(|e| NodeError::Net(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let announce_topic = IdentTopic::new(CAMPAIGNS_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&announce_topic)
        .map_err(|e| NodeError::Net(format!("subscribe: {e}")))?;
    for addr in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }

    let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_RESULT_CAPACITY);
    let metrics = Arc::new(Metrics::new());
    let client = Client {
        tx,
        events: events.clone(),
        peer_id: *swarm.local_peer_id(),
        key: key.public(),
        metrics: Arc::clone(&metrics),
    };
    let mut ev = EventLoop {
        swarm,
        key,
        store,
        executor: Arc::new(Executor::new(config.limits)),
        job_slots: Arc::new(Semaphore::new(usize::from(config.jobs.max(1)))),
        config,
        campaigns: BTreeMap::new(),
        topics: HashMap::new(),
        announce_topic,
        commands,
        events,
        jobs_tx,
        jobs_rx,
        running: 0,
        jobs_finished: 0,
        outbox: VecDeque::new(),
        sync_cursor: HashMap::new(),
        sync_turn: 0,
        gossip_rate: RateLimiter::default(),
        request_rate: RateLimiter::default(),
        blob_rate: RateLimiter::default(),
        app_scores: HashMap::new(),
        listen_addrs: Vec::new(),
        validated: 0,
        rejected: 0,
        metrics,
        fetches: HashMap::new(),
        blob_requests: HashMap::new(),
        blob_searches: HashMap::new(),
    };
    // Provider records live in memory: announce what the store holds again.
    let held = ev.store.blob_ids(MAX_ANNOUNCED_BLOBS + 1)?;
    if held.len() > MAX_ANNOUNCED_BLOBS {
        tracing::warn!(
            "the store holds more than {MAX_ANNOUNCED_BLOBS} blobs: announcing the first \
             {MAX_ANNOUNCED_BLOBS} (the rest are served to peers who ask)"
        );
    }
    for id in held.iter().take(MAX_ANNOUNCED_BLOBS) {
        ev.announce_blob(id);
    }
    Ok((client, ev))
}

impl EventLoop {
    /// Runs until `shutdown` resolves. Jobs still training are abandoned (their results were
    /// not stored, so a restart runs them again).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        // Stored campaigns are replayed here, not in `start`, so that whoever subscribed to the
        // events in between sees what the replay concludes (closures, a finished campaign).
        match self.store.campaigns() {
            Ok(stored) => {
                for (id, signed) in stored {
                    if let Err(e) = self.restore_campaign(id, &signed) {
                        tracing::error!(campaign = %id, "cannot restore campaign: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("cannot list the stored campaigns: {e}"),
        }
        tokio::pin!(shutdown);
        let mut sync = tokio::time::interval(self.config.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(done) = self.jobs_rx.recv() => self.on_job_done(done),
                () = tokio::time::sleep_until(wake) => self.tick_all(),
                _ = sync.tick() => self.sync_round(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::error!("cannot flush the store: {e}");
        }
        tracing::info!("node stopped");
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn next_wakeup(&self) -> tokio::time::Instant {
        let now = unix_now();
        let soonest = self
            .campaigns
            .values()
            .filter(|c| !c.peer.finished())
            .filter_map(|c| c.peer.next_wakeup())
            .min();
        let wait = match soonest {
            Some(t) => Duration::from_millis(t.as_millis().saturating_sub(now.as_millis())),
            None => Duration::from_secs(1),
        };
        tokio::time::Instant::now() + wait.clamp(Duration::from_millis(1), Duration::from_secs(1))
    }

    fn tick_all(&mut self) {
        let ids: Vec<CampaignId> = self.campaigns.keys().copied().collect();
        for id in ids {
            if self.campaigns.get(&id).is_some_and(|c| !c.peer.finished()) {
                self.drive(id, PeerInput::Tick);
            }
        }
    }

    // ---------------------------------------------------------------- campaigns

    fn decode_campaign(bytes: &[u8], ctx: &Context) -> Result<Signed<CampaignSpec>, DecodeError> {
        match AnySigned::verify_and_decode(bytes, ctx)? {
            AnySigned::Campaign(s) => Ok(s),
            other => Err(DecodeError::KindMismatch {
                expected: Kind::Campaign,
                found: other.kind(),
            }),
        }
    }

    /// Starts following a campaign whose signed spec is stored, replaying its messages.
    fn restore_campaign(&mut self, id: CampaignId, signed: &[u8]) -> Result<(), String> {
        let spec = Self::decode_campaign(signed, &Context::sync(id))
            .map_err(|e| e.to_string())?
            .message()
            .clone();
        self.follow(spec)?;
        let mut from = 0;
        let mut replayed = 0u64;
        loop {
            let (msgs, next) = self
                .store
                .messages(&id, from, MAX_SYNC_BYTES)
                .map_err(|e| e.to_string())?;
            if msgs.is_empty() {
                break;
            }
            for bytes in msgs {
                match AnySigned::verify_and_decode(&bytes, &Context::sync(id)) {
                    Ok(msg) => {
                        for (_, reason, _) in self.drive(id, PeerInput::Replay(msg)) {
                            tracing::warn!(campaign = %id, "replay: stored message refused: {reason}");
                        }
                        replayed += 1;
                    }
                    Err(e) => tracing::warn!(campaign = %id, "skipping a stored message: {e}"),
                }
            }
            from = next;
        }
        tracing::info!(campaign = %id, replayed, "campaign restored from the store");
        self.drive(id, PeerInput::Tick);
        Ok(())
    }

    /// Creates the campaign's peer and subscribes to its topic.
    fn follow(&mut self, spec: CampaignSpec) -> Result<(), String> {
        let id = spec.id();
        if self.campaigns.contains_key(&id) {
            return Ok(());
        }
        if self.campaigns.len() >= MAX_CAMPAIGNS {
            return Err(format!(
                "this node already follows {MAX_CAMPAIGNS} campaigns"
            ));
        }
        let peer = Peer::new(
            spec.clone(),
            self.key.clone(),
            PeerConfig {
                capacity: self.config.jobs.max(1),
                audit: self.config.audit,
                ..PeerConfig::default()
            },
            unix_now(),
        )
        .map_err(|e| e.to_string())?;
        let topic = campaign_topic(&id);
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        gs.subscribe(&topic).map_err(|e| e.to_string())?;
        if let Err(e) = gs.set_topic_params(topic.clone(), topic_score_params()) {
            tracing::warn!("topic score params: {e}");
        }
        self.topics.insert(topic.hash(), id);
        let already: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic.hash()))
            .map(|(p, _)| *p)
            .collect();
        self.campaigns.insert(
            id,
            Campaign {
                spec: Arc::new(spec),
                peer,
                topic,
            },
        );
        self.metrics.campaigns.set(self.campaigns.len() as i64);
        self.emit(Event::CampaignAdded(id));
        for peer in already {
            self.emit(Event::Subscribed { peer, campaign: id });
        }
        Ok(())
    }

    /// A signed campaign spec from the network (`announced`) or a client: store it and follow.
    fn add_campaign(
        &mut self,
        signed: &Signed<CampaignSpec>,
        announce: bool,
    ) -> Result<(), String> {
        let id = signed.message().id();
        if self.campaigns.contains_key(&id) {
            return Ok(());
        }
        self.store
            .put_campaign(&id, signed.bytes())
            .map_err(|e| e.to_string())?;
        self.follow(signed.message().clone())?;
        tracing::info!(campaign = %id, name = %signed.message().name, "following campaign");
        if announce {
            self.publish(self.announce_topic.clone(), signed.bytes().to_vec());
        }
        self.drive(id, PeerInput::Tick);
        Ok(())
    }

    // ---------------------------------------------------------------- protocol driving

    /// Feeds one input to a campaign's peer and carries out everything that follows; returns
    /// the peer's verdicts on messages (rejections).
    fn drive(
        &mut self,
        id: CampaignId,
        input: PeerInput,
    ) -> Vec<(MessageId, DecodeError, PeerAction)> {
        let mut verdicts = Vec::new();
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(c) = self.campaigns.get_mut(&id) else {
                return verdicts;
            };
            let outputs = c.peer.handle(input, unix_now());
            let topic = c.topic.clone();
            for out in outputs {
                match out {
                    PeerOutput::Broadcast(msg) => {
                        if msg.kind() == Kind::AuditReport {
                            Metrics::count(&self.metrics.audits, "outcome", "reported");
                        }
                        if let Err(e) = self.store.append_messages(&id, [(msg.id(), msg.bytes())]) {
                            tracing::error!("cannot store own message: {e}");
                        }
                        self.publish(topic.clone(), msg.bytes().to_vec());
                    }
                    PeerOutput::Execute(job) => {
                        let job_id = job.id();
                        match self.store.result(&id, &job_id) {
                            Ok(Some(result)) => {
                                // Done before a restart: feed the stored result, never retrain.
                                queue.push_back(PeerInput::JobDone {
                                    job: job_id,
                                    result,
                                });
                            }
                            Ok(None) => self.start_job(id, job),
                            Err(e) => {
                                tracing::warn!(
                                    "stored result of {job_id} unreadable ({e}); running it again"
                                );
                                self.start_job(id, job);
                            }
                        }
                    }
                    PeerOutput::Rejected {
                        id: mid,
                        error,
                        action,
                    } => {
                        verdicts.push((mid, error, action));
                    }
                    PeerOutput::Closed { generation, root } => {
                        tracing::info!(campaign = %id, generation, root = %hex(&root), "generation closed");
                        self.count_closure(id, generation);
                        self.emit(Event::Closed {
                            campaign: id,
                            generation,
                            root,
                        });
                    }
                    PeerOutput::Finished => {
                        tracing::info!(campaign = %id, "campaign finished");
                        self.emit(Event::Finished(id));
                    }
                }
            }
        }
        verdicts
    }

    /// Starts a job the protocol asked for: at once when every blob it needs is held here,
    /// else after fetching the first missing one from peers.
    fn start_job(&mut self, campaign: CampaignId, job: JobSpec) {
        let Some(c) = self.campaigns.get(&campaign) else {
            return;
        };
        let missing = needed_blobs(&c.spec)
            .into_iter()
            .find(|(b, _)| !matches!(self.store.blob_len(b), Ok(Some(_))));
        match missing {
            None => self.spawn_job(campaign, job),
            Some((blob, what)) => {
                tracing::info!(job = %job.id(), %blob, "fetching the {what} from peers first");
                if let Err(reason) = self.fetch_blob(blob, Some((campaign, job.clone())), None) {
                    self.abandon(campaign, job.id(), format!("the {what}: {reason}"));
                }
            }
        }
    }

    /// Tells the protocol a job cannot run here (it frees the slot; others take the job over).
    fn abandon(&mut self, campaign: CampaignId, job: JobId, reason: String) {
        tracing::warn!(%campaign, %job, "cannot run job here: {reason}");
        Metrics::count(&self.metrics.jobs_run, "result", "abandoned");
        self.emit(Event::JobAbandoned {
            campaign,
            job,
            reason,
        });
        self.drive(campaign, PeerInput::JobAbandoned { job });
    }

    fn spawn_job(&mut self, campaign: CampaignId, job: JobSpec) {
        let Some(c) = self.campaigns.get(&campaign) else {
            return;
        };
        let spec = Arc::clone(&c.spec);
        let executor = Arc::clone(&self.executor);
        let blobs = StoreBlobs(Arc::clone(&self.store));
        let slots = Arc::clone(&self.job_slots);
        let tx = self.jobs_tx.clone();
        let fault = self.config.fault;
        let job_id = job.id();
        self.running += 1;
        self.metrics.jobs_running.set(self.running as i64);
        self.emit(Event::JobStarted {
            campaign,
            job: job_id,
        });
        tracing::info!(campaign = %campaign, job = %job_id, generation = job.generation, index = job.index, "job started");
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let ran = tokio::task::spawn_blocking(move || {
                executor.run(&spec, &job, &blobs, &mut |p| {
                    tracing::debug!(job = %job_id, step = p.step, "training");
                })
            })
            .await;
            let outcome = match ran {
                Ok(Ok(mut done)) => {
                    if fault == Some(Fault::Lie) {
                        done.result = lie(done.result);
                    }
                    Ok(done)
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the job panicked: {e}")),
            };
            let _ = tx
                .send(JobDone {
                    campaign,
                    job: job_id,
                    outcome,
                })
                .await;
        });
    }

    fn on_job_done(&mut self, done: JobDone) {
        self.running = self.running.saturating_sub(1);
        self.metrics.jobs_running.set(self.running as i64);
        let Executed { result, blobs } = match done.outcome {
            Ok(r) => r,
            Err(e) => {
                self.abandon(done.campaign, done.job, e);
                return;
            }
        };
        let kind = match result.outcome {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
        };
        Metrics::count(&self.metrics.jobs_run, "result", kind);
        self.metrics
            .training_seconds
            .inc_by(result.wall_time_ms as f64 / 1000.0);
        // Durable before anyone hears of it.
        if let Err(e) = self
            .store
            .put_result(&done.campaign, &done.job, &result, &blobs)
        {
            tracing::error!(job = %done.job, "cannot store result: {e}");
            return;
        }
        for (id, _) in &blobs {
            self.announce_blob(id);
        }
        self.jobs_finished += 1;
        tracing::info!(job = %done.job, "job finished");
        self.emit(Event::JobFinished {
            campaign: done.campaign,
            job: done.job,
        });
        self.drive(
            done.campaign,
            PeerInput::JobDone {
                job: done.job,
                result,
            },
        );
    }

    // ---------------------------------------------------------------- gossip

    fn publish(&mut self, topic: IdentTopic, bytes: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), bytes.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => {
                // Kept for when a peer subscribes; sync delivers it anyway.
                if self.outbox.len() >= OUTBOX_CAPACITY {
                    self.outbox.pop_front();
                }
                self.outbox.push_back((topic, bytes));
            }
            Err(e) => tracing::warn!("cannot publish: {e}"),
        }
    }

    fn flush_outbox(&mut self) {
        let pending: Vec<_> = self.outbox.drain(..).collect();
        for (topic, bytes) in pending {
            self.publish(topic, bytes);
        }
    }

    /// Verifies a campaign message and feeds it; the acceptance gossipsub should apply.
    fn on_campaign_message(
        &mut self,
        id: CampaignId,
        bytes: &[u8],
        ctx: &Context,
        from: PeerId,
    ) -> MessageAcceptance {
        let msg = match AnySigned::verify_and_decode(bytes, ctx) {
            Ok(m) => m,
            Err(e) => {
                let action = e.peer_action();
                return self.refuse(from, e.to_string(), e.label(), action);
            }
        };
        let mid = msg.id();
        if self.store.has_message(&mid).unwrap_or(false) {
            return MessageAcceptance::Accept;
        }
        let verdicts = self.drive(id, PeerInput::Message(msg.clone()));
        if let Some((_, error, action)) = verdicts.into_iter().find(|(m, _, _)| *m == mid) {
            return self.refuse(from, error.to_string(), error.label(), action);
        }
        if let Err(e) = self.store.append_messages_lazy(&id, [(mid, msg.bytes())]) {
            tracing::error!("cannot store message: {e}");
        }
        self.validated += 1;
        Metrics::count(&self.metrics.accepted, "kind", msg.kind().label());
        self.emit(Event::Accepted(mid));
        MessageAcceptance::Accept
    }

    fn refuse(
        &mut self,
        from: PeerId,
        reason: String,
        label: &'static str,
        action: PeerAction,
    ) -> MessageAcceptance {
        self.rejected += 1;
        Metrics::count(&self.metrics.rejected, "reason", label);
        let penalised = action == PeerAction::Reject;
        tracing::debug!(%from, penalised, "message refused: {reason}");
        self.emit(Event::Rejected {
            from,
            reason,
            penalised,
        });
        if penalised {
            MessageAcceptance::Reject
        } else {
            MessageAcceptance::Ignore
        }
    }

    fn on_announcement(&mut self, bytes: &[u8], ctx: &Context, from: PeerId) -> MessageAcceptance {
        match Self::decode_campaign(bytes, ctx) {
            Ok(signed) => match self.add_campaign(&signed, false) {
                Ok(()) => {
                    self.validated += 1;
                    Metrics::count(&self.metrics.accepted, "kind", Kind::Campaign.label());
                    MessageAcceptance::Accept
                }
                Err(e) => self.refuse(from, e, "campaign_refused", PeerAction::Ignore),
            },
            Err(e) => self.refuse(from, e.to_string(), e.label(), e.peer_action()),
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let rate = self.config.gossip_rate;
                let acceptance = if !self.gossip_rate.allow(propagation_source, rate) {
                    self.refuse(
                        propagation_source,
                        "over the per-peer gossip rate".into(),
                        "rate_limited",
                        PeerAction::Ignore,
                    )
                } else if message.topic == self.announce_topic.hash() {
                    self.on_announcement(
                        &message.data,
                        &Context::announcement(unix_now()),
                        propagation_source,
                    )
                } else if let Some(&id) = self.topics.get(&message.topic) {
                    self.on_campaign_message(
                        id,
                        &message.data,
                        &Context::gossip(id, unix_now()),
                        propagation_source,
                    )
                } else {
                    MessageAcceptance::Ignore
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                if let Some(&campaign) = self.topics.get(&topic) {
                    self.emit(Event::Subscribed {
                        peer: peer_id,
                        campaign,
                    });
                }
                self.flush_outbox();
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- sync

    fn sync_round(&mut self) {
        if let Err(e) = self.store.flush() {
            tracing::error!("cannot flush the store: {e}");
        }
        self.flush_outbox();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        self.sync_turn = self.sync_turn.wrapping_add(1);
        let peer = peers[self.sync_turn % peers.len()];
        let sync = &mut self.swarm.behaviour_mut().sync;
        sync.send_request(&peer, SyncRequest::Campaigns);
        for (id, c) in &self.campaigns {
            if !c.peer.finished() {
                let from = self.sync_cursor.get(&(peer, *id)).copied().unwrap_or(0);
                sync.send_request(
                    &peer,
                    SyncRequest::Messages {
                        campaign: *id,
                        from,
                    },
                );
            }
        }
    }

    fn penalise(&mut self, peer: PeerId, reason: String) {
        let score = self.app_scores.entry(peer).or_insert(0.0);
        *score += SYNC_REJECT_PENALTY;
        let s = *score;
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, s);
        self.emit(Event::Rejected {
            from: peer,
            reason,
            penalised: true,
        });
    }

    fn on_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.answer_sync(peer, request, channel);
                }
                request_response::Message::Response { response, .. } => {
                    self.on_sync_response(peer, response);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "sync request failed: {error}");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "sync answer failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn answer_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if !self.request_rate.allow(peer, REQUEST_RATE_PER_PEER) {
            return; // dropping the channel tells the peer no
        }
        let response = match request {
            SyncRequest::Campaigns => match self.store.campaigns() {
                Ok(list) => SyncResponse::Campaigns(
                    list.into_iter()
                        .take(MAX_SYNC_CAMPAIGNS)
                        .map(|(_, b)| b)
                        .collect(),
                ),
                Err(e) => {
                    tracing::error!("sync: {e}");
                    return;
                }
            },
            SyncRequest::Messages { campaign, from } => {
                if !self.campaigns.contains_key(&campaign) {
                    SyncResponse::Unknown
                } else {
                    match self.store.messages(&campaign, from, MAX_SYNC_BYTES) {
                        Ok((messages, next)) => SyncResponse::Messages {
                            campaign,
                            messages,
                            next,
                        },
                        Err(e) => {
                            tracing::error!("sync: {e}");
                            return;
                        }
                    }
                }
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    fn on_sync_response(&mut self, peer: PeerId, response: SyncResponse) {
        match response {
            SyncResponse::Campaigns(list) => {
                for bytes in list {
                    // History of any age, for a campaign not yet known.
                    let ctx = Context {
                        campaign: None,
                        ..Context::sync(CampaignId([0; 32]))
                    };
                    match Self::decode_campaign(&bytes, &ctx) {
                        Ok(signed) => {
                            if let Err(e) = self.add_campaign(&signed, false) {
                                tracing::debug!("not following a synced campaign: {e}");
                            }
                        }
                        Err(e) => self.penalise(peer, format!("sync: bad campaign: {e}")),
                    }
                }
            }
            SyncResponse::Messages {
                campaign,
                messages,
                next,
            } => {
                if !self.campaigns.contains_key(&campaign) {
                    return;
                }
                let full = !messages.is_empty();
                for bytes in messages {
                    if self.on_campaign_message(campaign, &bytes, &Context::sync(campaign), peer)
                        == MessageAcceptance::Reject
                    {
                        self.penalise(peer, "sync: invalid message".into());
                    }
                }
                self.sync_cursor.insert((peer, campaign), next);
                if full
                    && self
                        .campaigns
                        .get(&campaign)
                        .is_some_and(|c| !c.peer.finished())
                {
                    // More may follow: ask on at once.
                    self.swarm.behaviour_mut().sync.send_request(
                        &peer,
                        SyncRequest::Messages {
                            campaign,
                            from: next,
                        },
                    );
                }
            }
            SyncResponse::Unknown => {}
        }
    }

    // ---------------------------------------------------------------- blobs

    fn on_blob(&mut self, event: request_response::Event<BlobRequest, BlobResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.serve_blob(peer, request, channel),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(id) = self.blob_requests.remove(&request_id) else {
                    return;
                };
                let Some(f) = self.fetches.get_mut(&id) else {
                    return;
                };
                let step = match response {
                    BlobResponse::Chunk {
                        total,
                        offset,
                        data,
                    } => match f.fetch.on_chunk(peer, total, offset, data) {
                        Ok(step) => step,
                        Err(bad) => {
                            let next = f.fetch.next_step();
                            self.penalise(peer, format!("blob {id}: {bad}"));
                            Metrics::count(&self.metrics.rejected, "reason", "blob_hash");
                            next
                        }
                    },
                    BlobResponse::NotFound => f.fetch.on_missing(peer, "not found"),
                };
                self.advance_fetch(id, step, peer);
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(id) = self.blob_requests.remove(&request_id) else {
                    return;
                };
                if let Some(f) = self.fetches.get_mut(&id) {
                    let step = f.fetch.on_missing(peer, &error.to_string());
                    self.advance_fetch(id, step, peer);
                }
            }
            _ => {}
        }
    }

    fn serve_blob(
        &mut self,
        peer: PeerId,
        request: BlobRequest,
        channel: ResponseChannel<BlobResponse>,
    ) {
        if !self.blob_rate.allow(peer, BLOB_RATE_PER_PEER) {
            return; // dropping the channel tells the peer no
        }
        let response = match self
            .store
            .blob_chunk(&request.id, request.offset, BLOB_CHUNK)
        {
            Ok(Some((total, mut data))) => {
                if self.config.fault == Some(Fault::CorruptBlobs)
                    && let Some(b) = data.first_mut()
                {
                    *b ^= 0xff;
                }
                BlobResponse::Chunk {
                    total,
                    offset: request.offset.min(total),
                    data,
                }
            }
            Ok(None) => BlobResponse::NotFound,
            Err(e) => {
                tracing::error!("blob {}: {e}", request.id);
                BlobResponse::NotFound
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .blob
            .send_response(channel, response);
    }

    /// Announces this node as a provider of a blob it holds (a Kademlia provider record).
    fn announce_blob(&mut self, id: &BlobId) {
        let key = kad::RecordKey::new(id.as_bytes());
        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
            tracing::warn!(blob = %id, "cannot announce blob: {e}");
        }
    }

    /// Stores a blob given by a client and announces it.
    fn put_blob(&mut self, bytes: &[u8]) -> Result<BlobId, String> {
        if bytes.len() as u64 > MAX_BLOB_LEN {
            return Err(format!(
                "the blob is {} bytes, over the limit of {MAX_BLOB_LEN}",
                bytes.len()
            ));
        }
        let id = BlobId::of_bytes(bytes);
        self.store.put_blob(&id, bytes).map_err(|e| e.to_string())?;
        self.announce_blob(&id);
        Ok(id)
    }

    /// Fetches a blob from peers for a job to start and/or a client to answer. Fails at once
    /// (answering the waiter too) when too many fetches are under way; otherwise the outcome
    /// arrives later.
    fn fetch_blob(
        &mut self,
        id: BlobId,
        job: Option<(CampaignId, JobSpec)>,
        waiter: Option<oneshot::Sender<Result<Vec<u8>, String>>>,
    ) -> Result<(), String> {
        if let Some(f) = self.fetches.get_mut(&id) {
            f.jobs.extend(job);
            f.waiters.extend(waiter);
            return Ok(());
        }
        if self.fetches.len() >= MAX_FETCHES {
            let e = format!("{MAX_FETCHES} blob fetches are under way already; try again later");
            if let Some(w) = waiter {
                let _ = w.send(Err(e.clone()));
            }
            return Err(e);
        }
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(id.as_bytes()));
        self.blob_searches.insert(query, id);
        let mut fetch = BlobFetch::new(id, true);
        // Connected peers are asked too (after any provider found): in a small swarm they are
        // likely holders, and asking costs one round trip.
        fetch.add_candidates(self.swarm.connected_peers().copied(), false);
        let step = fetch.next_step();
        self.fetches.insert(
            id,
            Fetching {
                fetch,
                jobs: job.into_iter().collect(),
                waiters: waiter.into_iter().collect(),
            },
        );
        let me = *self.swarm.local_peer_id();
        self.advance_fetch(id, step, me);
        Ok(())
    }

    /// Carries out a fetch's next step (`from`: the peer that answered last).
    fn advance_fetch(&mut self, id: BlobId, step: Step, from: PeerId) {
        match step {
            Step::Request { peer, offset } => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_request(&peer, BlobRequest { id, offset });
                self.blob_requests.insert(rid, id);
            }
            Step::Wait => {}
            Step::Done(bytes) => {
                let Some(f) = self.fetches.remove(&id) else {
                    return;
                };
                if let Err(e) = self.store.put_blob(&id, &bytes) {
                    self.finish_fetch(f, Err(format!("cannot store blob {id}: {e}")));
                    return;
                }
                tracing::info!(blob = %id, bytes = bytes.len(), %from, "blob fetched");
                Metrics::count(&self.metrics.blob_fetches, "result", "ok");
                self.metrics.blob_bytes_fetched.inc_by(bytes.len() as u64);
                self.announce_blob(&id);
                self.emit(Event::BlobFetched { id, from });
                self.finish_fetch(f, Ok(bytes));
            }
            Step::Failed(reason) => {
                if let Some(f) = self.fetches.remove(&id) {
                    Metrics::count(&self.metrics.blob_fetches, "result", "failed");
                    self.emit(Event::BlobFetchFailed {
                        id,
                        reason: reason.clone(),
                    });
                    self.finish_fetch(f, Err(reason));
                }
            }
        }
    }

    /// Answers everyone waiting on a finished fetch: clients get the bytes or the error, jobs
    /// start (checking their other blobs) or are abandoned.
    fn finish_fetch(&mut self, f: Fetching, outcome: Result<Vec<u8>, String>) {
        self.blob_searches.retain(|_, b| *b != f.fetch.id());
        for w in f.waiters {
            let _ = w.send(outcome.clone());
        }
        for (campaign, job) in f.jobs {
            match &outcome {
                Ok(_) => self.start_job(campaign, job),
                Err(e) => self.abandon(campaign, job.id(), e.clone()),
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id: query,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => {
                let Some(&blob) = self.blob_searches.get(&query) else {
                    return;
                };
                if step.last {
                    self.blob_searches.remove(&query);
                }
                let Some(f) = self.fetches.get_mut(&blob) else {
                    return;
                };
                let me = *self.swarm.local_peer_id();
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    f.fetch
                        .add_candidates(providers.into_iter().filter(|p| *p != me), true);
                }
                if step.last {
                    f.fetch.search_done();
                }
                if f.fetch.current().is_none() {
                    let next = f.fetch.next_step();
                    self.advance_fetch(blob, next, me);
                }
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                addresses,
                ..
            } if self.swarm.connected_peers().count() < TARGET_PEERS
                && !self.swarm.is_connected(&peer) =>
            {
                // Below the target: connect to peers the DHT tells us about, so the gossip
                // mesh is not limited to the bootstrap tree.
                let addr = addresses.first().clone();
                let _ = self.swarm.dial(addr.clone().with_p2p(peer).unwrap_or(addr));
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- swarm

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .clone()
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or(address);
                tracing::info!(addr = %full, "listening");
                self.listen_addrs.push(full.clone());
                self.emit(Event::Listening(full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, "connected");
                if endpoint.is_dialer() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                }
                self.emit(Event::Connected(peer_id));
                let peers = self.swarm.connected_peers().count();
                self.metrics.peers.set(peers as i64);
                // A fetch still searching may find the blob at the newcomer.
                for f in self.fetches.values_mut() {
                    f.fetch.add_candidates([peer_id], false);
                }
                let idle: Vec<BlobId> = self
                    .fetches
                    .iter()
                    .filter(|(_, f)| f.fetch.current().is_none())
                    .map(|(id, _)| *id)
                    .collect();
                for id in idle {
                    if let Some(f) = self.fetches.get_mut(&id) {
                        let step = f.fetch.next_step();
                        self.advance_fetch(id, step, peer_id);
                    }
                }
                if peers < TARGET_PEERS {
                    // Learn more of the swarm (a no-op query cost when it is small).
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                // A new peer may hold what we miss: sync with it now.
                let sync = &mut self.swarm.behaviour_mut().sync;
                sync.send_request(&peer_id, SyncRequest::Campaigns);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                let peers = self.swarm.connected_peers().count();
                self.metrics.peers.set(peers as i64);
                if num_established == 0 {
                    self.emit(Event::Disconnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Blob(e)) => self.on_blob(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            _ => {}
        }
    }

    /// Counts a just-closed generation's settlements and audit verdicts in the metrics.
    fn count_closure(&self, id: CampaignId, generation: u32) {
        let Some(c) = self.campaigns.get(&id) else {
            return;
        };
        let closures = c.peer.closures();
        let Some((closure, _)) = closures.iter().find(|(cl, _)| cl.generation == generation) else {
            return;
        };
        for entry in &closure.entries {
            let status = match entry {
                Entry::Settled { settlement, .. } => match settlement.canonical {
                    Outcome::Success(_) => "success",
                    Outcome::Failure(_) => "failure",
                },
                Entry::Void { .. } => "void",
            };
            Metrics::count(&self.metrics.jobs_settled, "status", status);
        }
        for v in &closure.verdicts {
            let original = closures
                .iter()
                .flat_map(|(cl, _)| &cl.entries)
                .find_map(|e| match e {
                    Entry::Settled {
                        job, settlement, ..
                    } if *job == v.job => Some(settlement),
                    _ => None,
                });
            if let Some(o) = original {
                let label = verdict_label(v, o, &c.spec.tolerance);
                Metrics::count(&self.metrics.audits, "outcome", label);
            }
        }
    }

    // ---------------------------------------------------------------- commands

    fn campaign_status(&self, id: &CampaignId) -> Option<CampaignStatus> {
        let c = self.campaigns.get(id)?;
        let jobs = self.settled(id).unwrap_or_default();
        let spec = &c.spec;
        let (kind, generations) = match &spec.search {
            hivemesh_protocol::spec::Search::Nas(p) => ("nas", p.generations),
            hivemesh_protocol::spec::Search::Loss(p) => ("loss", p.generations),
            hivemesh_protocol::spec::Search::Distill(_) => ("distill", 1),
        };
        Some(CampaignStatus {
            id: id.to_string(),
            name: spec.name.clone(),
            kind: kind.into(),
            generation: c.peer.generation(),
            generations,
            finished: c.peer.finished(),
            members: c.peer.members().len(),
            messages: self.store.message_count(id).unwrap_or(0),
            settled: jobs.iter().filter(|j| j.status != "void").count(),
            results_held: self.store.result_count(id).unwrap_or(0),
            closures: c
                .peer
                .closures()
                .iter()
                .map(|(cl, _)| (cl.generation, hex(&cl.root())))
                .collect(),
            front: front(&jobs),
            summary: String::new(),
        })
    }

    /// Every job of a closed generation with its spec and its closure entry. Jobs are
    /// re-derived from the spec and the closures (deterministic and cheap); outcomes come from
    /// the closures, which every honest node agrees on (not from the local ledger, whose
    /// settlements may still gain late reveals).
    fn settled(&self, id: &CampaignId) -> Option<Vec<SettledJob>> {
        let c = self.campaigns.get(id)?;
        let jobs = derived_jobs(&c.spec, c.peer.closures().iter().map(|(cl, _)| &**cl));
        let verdicts = verdicts_by_job(c.peer.closures());
        let mut out = Vec::new();
        for (closure, _) in c.peer.closures() {
            for entry in &closure.entries {
                let Some(spec) = jobs.get(&entry.job()) else {
                    continue;
                };
                out.push(match entry {
                    Entry::Settled { settlement, .. } => match verdicts.get(&entry.job()) {
                        None => SettledJob::new(spec, settlement),
                        Some(v) => {
                            let label = verdict_label(v, settlement, &c.spec.tolerance);
                            match &v.jury {
                                Some(jury) if label == "overturned" => SettledJob {
                                    overturned: settlement
                                        .agreeing
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect(),
                                    audit: Some(label.into()),
                                    ..SettledJob::new(spec, jury)
                                },
                                _ => SettledJob {
                                    audit: Some(label.into()),
                                    ..SettledJob::new(spec, settlement)
                                },
                            }
                        }
                    },
                    Entry::Void { .. } => SettledJob::void(spec),
                });
            }
        }
        out.sort_by_key(|j| (j.generation, j.index));
        Some(out)
    }

    /// Every peer's standing in a campaign, from its closures: the same on every honest node.
    /// A job an audit overturned counts as the jury settled it: its jurors' outcome stands,
    /// the executors who had agreed on the overturned outcome fail the audit (penalised as
    /// such, credited nothing), and its original dissenters are neither credited nor
    /// penalised (they disagreed with a wrong outcome).
    fn standings(&self, id: &CampaignId) -> Option<Vec<(PeerKey, PeerScore)>> {
        let c = self.campaigns.get(id)?;
        let jobs = derived_jobs(&c.spec, c.peer.closures().iter().map(|(cl, _)| &**cl));
        let verdicts = verdicts_by_job(c.peer.closures());
        // Owned settlements and auditor sets for the overturned jobs, referenced below.
        let mut corrected: BTreeMap<JobId, (hivemesh_protocol::Settlement, BTreeSet<PeerKey>)> =
            BTreeMap::new();
        for (closure, _) in c.peer.closures() {
            for entry in &closure.entries {
                if let Entry::Settled {
                    job, settlement, ..
                } = entry
                    && let Some(v) = verdicts.get(job)
                    && let Some(jury) = &v.jury
                    && verdict_label(v, settlement, &c.spec.tolerance) == "overturned"
                {
                    let fixed = hivemesh_protocol::Settlement {
                        canonical: jury.canonical.clone(),
                        agreeing: jury.agreeing.clone(),
                        dissenting: settlement.agreeing.clone(),
                    };
                    let jurors: BTreeSet<PeerKey> = jury.agreeing.iter().copied().collect();
                    corrected.insert(*job, (fixed, jurors));
                }
            }
        }
        let none = BTreeSet::new();
        let mut records = Vec::new();
        for (closure, _) in c.peer.closures() {
            for entry in &closure.entries {
                if let (Entry::Settled { settlement, .. }, Some(spec)) =
                    (entry, jobs.get(&entry.job()))
                {
                    let (settlement, auditors) = match corrected.get(&entry.job()) {
                        Some((fixed, jurors)) => (fixed, jurors),
                        None => (settlement, &none),
                    };
                    records.push(JobRecord {
                        generation: closure.generation,
                        compute: spec.compute,
                        settlement,
                        claimers: &none,
                        auditors,
                    });
                }
            }
        }
        let mut scores = scoring::score(&records, &[], &ScoringRules::default());
        for (peer, n) in c.peer.failed_audits() {
            scores.entry(*peer).or_default().failed_audits = *n;
        }
        Some(scores.into_iter().collect())
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.listen_addrs.clone());
            }
            Command::Dial(addr, tx) => {
                if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
                let _ = tx.send(self.swarm.dial(addr).map_err(|e| e.to_string()));
            }
            Command::Submit(spec, tx) => {
                let result = (|| {
                    spec.validate().map_err(|e| e.to_string())?;
                    if spec.roster.len() < usize::from(spec.redundancy) {
                        return Err(format!(
                            "the roster has {} member(s) but every job wants {} executors: \
                             generation 0 would wait for job deadlines; lower `redundancy`, \
                             connect to more peers first, or list their keys in `roster`",
                            spec.roster.len(),
                            spec.redundancy
                        ));
                    }
                    if spec.roster.len() < usize::from(spec.quorum) {
                        return Err(format!(
                            "the roster has {} member(s) but a job needs {} agreeing executors: \
                             connect to more peers first, or list their keys in `roster`",
                            spec.roster.len(),
                            spec.quorum
                        ));
                    }
                    let signed =
                        Signed::sign_and_encode(*spec, &self.key).map_err(|e| e.to_string())?;
                    let id = signed.message().id();
                    self.add_campaign(&signed, true)?;
                    Ok(id)
                })();
                let _ = tx.send(result);
            }
            Command::Status(tx) => {
                let campaigns = self
                    .campaigns
                    .keys()
                    .filter_map(|id| self.campaign_status(id))
                    .collect();
                let _ = tx.send(NodeStatus {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    key: self.key.public().to_string(),
                    listen: self.listen_addrs.iter().map(ToString::to_string).collect(),
                    peers: self.swarm.connected_peers().count(),
                    jobs_running: self.running,
                    jobs_finished: self.jobs_finished,
                    messages_validated: self.validated,
                    messages_rejected: self.rejected,
                    audit: self.config.audit,
                    campaigns,
                });
            }
            Command::Campaign(id, tx) => {
                let mut status = self.campaign_status(&id);
                if let (Some(s), Some(c)) = (status.as_mut(), self.campaigns.get_mut(&id)) {
                    s.summary = c.peer.status_line();
                }
                let _ = tx.send(status);
            }
            Command::Settled(id, tx) => {
                let _ = tx.send(self.settled(&id));
            }
            Command::Jobs(id, tx) => {
                let jobs = self.campaigns.get(&id).map(|c| {
                    let mut jobs: Vec<JobSpec> =
                        derived_jobs(&c.spec, c.peer.closures().iter().map(|(cl, _)| &**cl))
                            .into_values()
                            .collect();
                    jobs.sort_by_key(|j| (j.generation, j.index));
                    ((*c.spec).clone(), jobs)
                });
                let _ = tx.send(jobs);
            }
            Command::Scores(id, tx) => {
                let _ = tx.send(self.standings(&id));
            }
            Command::PeerKeys(tx) => {
                let keys = self.swarm.connected_peers().filter_map(peer_key).collect();
                let _ = tx.send(keys);
            }
            Command::Blob(id, tx) => {
                let _ = tx.send(self.store.blob(&id).map_err(|e| e.to_string()));
            }
            Command::Block(peer, blocked, tx) => {
                let b = &mut self.swarm.behaviour_mut().blocked;
                if blocked {
                    b.block_peer(peer);
                } else {
                    b.unblock_peer(peer);
                }
                let _ = tx.send(());
            }
            Command::PutBlob(bytes, tx) => {
                let _ = tx.send(self.put_blob(&bytes));
            }
            Command::FetchBlob(id, tx) => match self.store.blob(&id) {
                Ok(Some(bytes)) => {
                    let _ = tx.send(Ok(bytes));
                }
                Ok(None) => {
                    // The fetch answers `tx`, also when it cannot start.
                    let _ = self.fetch_blob(id, None, Some(tx));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            },
            Command::GossipScore(peer, tx) => {
                let _ = tx.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::PublishRaw(topic, bytes, tx) => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), bytes)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = tx.send(r);
            }
        }
    }
}

/// Every audit verdict in the closures, by job.
fn verdicts_by_job(
    closures: &[(std::sync::Arc<Closure>, Vec<PeerKey>)],
) -> BTreeMap<JobId, &hivemesh_protocol::audit::Verdict> {
    closures
        .iter()
        .flat_map(|(cl, _)| &cl.verdicts)
        .map(|v| (v.job, v))
        .collect()
}

/// How an audit ended: `confirmed` (no dispute), `upheld` (the jury agreed with the
/// executors) or `overturned`.
fn verdict_label(
    v: &hivemesh_protocol::audit::Verdict,
    original: &hivemesh_protocol::Settlement,
    tolerance: &hivemesh_protocol::Tolerance,
) -> &'static str {
    match &v.jury {
        None => "confirmed",
        Some(_) if v.overturned(original, tolerance) => "overturned",
        Some(_) => "upheld",
    }
}

/// The ed25519 signing key inside a peer id (hivemesh peer ids embed their public key).
pub fn peer_key(peer: &PeerId) -> Option<PeerKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    Some(PeerKey(ed.to_bytes()))
}

/// The jobs of generation 0 and of every generation the closures open, by id.
fn derived_jobs<'a>(
    spec: &CampaignSpec,
    closures: impl Iterator<Item = &'a Closure>,
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
