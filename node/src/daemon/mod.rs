//! The running node: a [`Client`] handle, the [`EventLoop`] that owns the swarm, the store and
//! one protocol `Peer` per campaign, and the [`Event`]s it reports.
//!
//! The event loop is the only owner of mutable state. It waits, fairly (a ready source is
//! picked at random, so no flood starves the others), on: shutdown; commands from clients;
//! finished jobs; timers (the earliest protocol wakeup, the sync timer, chores: the status
//! snapshot and bootstrap redials);
//! and remote input (the swarm). The API reads the status snapshot, refreshed every
//! [`STATUS_SNAPSHOT_EVERY`], without waiting on the loop. Each concern keeps its state in its own
//! module and sub-struct:
//! - [`client`]: the [`Client`], its commands and [`ClientError`], the [`Event`]s;
//! - [`campaigns`]: following, restoring and adding campaigns, driving their protocol peers;
//! - [`gossip`]: publishing and validating gossip;
//! - [`sync`]: ledger sync requests and responses;
//! - [`blobs`]: serving, storing, announcing and fetching blobs;
//! - [`jobs`]: starting, running and abandoning jobs;
//! - [`pending`]: writes that failed (a full disk), kept and retried;
//! - [`rate_limit`]: per-peer token buckets;
//! - [`status`]: the read models the API serves.
//!
//! Training runs on the blocking pool (`spawn_blocking`), at most `--jobs` at once, and reports
//! back over a bounded channel.
//!
//! Every message from the network is verified (frame, signature, campaign binding, age) before
//! the protocol sees it; the protocol's verdict decides whether gossipsub forwards it (accept),
//! drops it (ignore) or drops it and penalises the forwarder (reject). Own messages and
//! accepted messages are stored before they are published, results before they are fed to the
//! protocol; a restarted node replays its store (see [`crate::store`]).

pub mod blobs;
pub mod campaigns;
pub mod client;
mod devices;
pub mod gossip;
pub mod jobs;
pub mod pending;
pub mod rate_limit;
pub mod redial;
pub mod status;
pub mod sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hivemesh_protocol::identity::{Keypair, PeerKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use tokio::sync::{broadcast, mpsc, watch};

pub use self::blobs::{FetchError, FetchProgress, MAX_ANNOUNCED_BLOBS, MAX_PUT_LEN};
pub use self::campaigns::{CampaignError, MAX_CAMPAIGNS};
pub use self::client::{COMMAND_CAPACITY, Client, ClientError, EVENT_CAPACITY, Event};
pub use self::gossip::OUTBOX_CAPACITY;
pub use self::jobs::{JOB_RESULT_CAPACITY, JobError};
pub use self::pending::{PENDING_MESSAGES, PENDING_RESULTS};
pub use self::rate_limit::{BLOB_RATE_PER_PEER, GOSSIP_RATE_PER_PEER, REQUEST_RATE_PER_PEER};
pub use self::status::{
    CampaignStatus, ClientPrivacyStatus, ClientStandingStatus, FrontPoint, NodeStatus,
    PrivacyStatus, SettledJob, front,
};
pub use crate::fault::Fault;

use self::blobs::Blobs;
use self::campaigns::Campaigns;
use self::client::Command;
use self::gossip::Gossip;
use self::jobs::Jobs;
use self::pending::PendingWrites;
use self::rate_limit::Limits;
use self::redial::Redial;
use self::sync::SyncState;
use crate::admission::Admission;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::net::{Behaviour, BehaviourEvent, NetConfig, SyncRequest};
use crate::store::{DataDirLock, Store, StoreError, StoreFaults, StoreOptions};

/// How often the event loop refreshes the status snapshot the API serves.
pub const STATUS_SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// Connections a node seeks out (through Kademlia) for a well-knit gossip mesh.
pub const TARGET_PEERS: usize = 4;

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
    /// A private dataset (`--private-data NAME=PATH`) cannot be offered.
    #[error("--private-data {name}={path}: {reason}; the node does not start without it")]
    PrivateData {
        /// Its name.
        name: String,
        /// Its file.
        path: String,
        /// Why.
        reason: String,
    },
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
    /// Jobs run at once (without `devices`).
    pub jobs: u16,
    /// The devices jobs run on, one job each (`--devices`); `None`: `jobs` slots shared by
    /// every campaign, each job on its backend's first device.
    pub devices: Option<Vec<hivemesh_trainer::backend::Device>>,
    /// Audit mode (re-execute sampled jobs first).
    pub audit: bool,
    /// How often to pull missing ledger messages from a connected peer.
    pub sync_interval: Duration,
    /// Network knobs.
    pub net: NetConfig,
    /// What this node follows and the limits of the jobs it runs (the operator's policy).
    pub admission: Admission,
    /// Gossip messages accepted per forwarding peer per second (more are ignored).
    pub gossip_rate: f64,
    /// Misbehaviour to inject (tests only).
    pub fault: Option<Fault>,
    /// Take over a store recorded under another key (`--new-identity`); otherwise a node whose
    /// key is not the store's owner is refused.
    pub new_identity: bool,
    /// Disk faults to inject into the store (tests only).
    pub store_faults: StoreFaults,
    /// Most bytes of blobs kept (`None`: the store's default); fetched blobs no followed
    /// campaign needs are evicted to make room.
    pub blob_quota: Option<u64>,
    /// Private datasets offered to federated campaigns, by name (`--private-data NAME=PATH`),
    /// with how to read each (`--private-shape`): read here, used by this node's jobs only,
    /// never sent (ADR 0010).
    pub private_data: BTreeMap<String, (PathBuf, hivemesh_trainer::data::ReadOptions)>,
    /// The most example-level ε a federated campaign may spend of this node's private data
    /// (`--private-max-epsilon`): a campaign without DP-SGD, or whose ε budget is missing or
    /// larger, gets no slots here (infinite: any campaign, none refused).
    pub private_max_epsilon: f64,
}

impl Config {
    /// Job slots for a campaign whose jobs run on `backend`: one per listed device of that
    /// class with `devices` (0: this node cannot run it), else `jobs`.
    pub fn slots_for(&self, backend: hivemesh_protocol::BackendClass) -> u16 {
        match &self.devices {
            None => self.jobs.max(1),
            Some(list) => {
                let n = list
                    .iter()
                    .filter(|d| devices::class_of(**d) == backend)
                    .count();
                u16::try_from(n).unwrap_or(u16::MAX)
            }
        }
    }

    /// Defaults for a node keeping its state in `data_dir` (no listen addresses, no bootstrap
    /// peers, one job at a time).
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            jobs: 1,
            devices: None,
            audit: false,
            sync_interval: Duration::from_secs(5),
            net: NetConfig::default(),
            admission: Admission::default(),
            gossip_rate: GOSSIP_RATE_PER_PEER,
            fault: None,
            new_identity: false,
            store_faults: StoreFaults::default(),
            blob_quota: None,
            private_data: BTreeMap::new(),
            private_max_epsilon: DEFAULT_PRIVATE_MAX_EPSILON,
        }
    }
}

/// The default of [`Config::private_max_epsilon`].
pub const DEFAULT_PRIVATE_MAX_EPSILON: f64 = 10.0;

/// Why this node does not give its private data to a federated campaign with `p`'s privacy
/// settings under a limit of `max_epsilon` (`None`: it does).
pub fn private_data_refusal(
    p: &hivemesh_protocol::spec::FederatedParams,
    max_epsilon: f64,
) -> Option<String> {
    if max_epsilon.is_infinite() {
        return None;
    }
    match (p.example_privacy, p.epsilon_budget) {
        (None, _) => Some(format!(
            "it trains on private data {:?} without example-level privacy (DP-SGD)",
            p.private_data
        )),
        (Some(_), None) => Some("it states no ε budget".into()),
        (Some(_), Some(b)) if b > max_epsilon => Some(format!(
            "its ε budget {b} is above this node's --private-max-epsilon {max_epsilon}"
        )),
        _ => None,
    }
}

/// Reads the private datasets `offers` names (any format `hivemesh dataset add` reads, guessed
/// from the file name, read as each one's options say), refusing the first that does not load, is not labelled samples or has
/// a bad name, with the reason.
pub fn load_private_data(
    offers: &BTreeMap<String, (PathBuf, hivemesh_trainer::data::ReadOptions)>,
) -> Result<BTreeMap<String, hivemesh_trainer::data::Dataset>, NodeError> {
    use hivemesh_trainer::data::DatasetBlob;
    use hivemesh_trainer::data::read::read_dataset;
    let mut loaded = BTreeMap::new();
    for (name, (path, opts)) in offers {
        let bad = |reason: String| NodeError::PrivateData {
            name: name.clone(),
            path: path.display().to_string(),
            reason,
        };
        let valid = !name.is_empty()
            && name.len() <= hivemesh_protocol::kinds::federated::MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(bad("a name is 1 to 64 bytes of a-z, 0-9, - and _".into()));
        }
        match read_dataset(path, opts) {
            Ok(r) => match r.blob {
                DatasetBlob::Samples(d) if !d.is_empty() => {
                    loaded.insert(name.clone(), d);
                }
                DatasetBlob::Samples(_) => return Err(bad("it holds no samples".into())),
                DatasetBlob::Text(_) => {
                    return Err(bad(
                        "a text corpus: federated campaigns train on labelled samples".into(),
                    ));
                }
            },
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(loaded)
}

/// This node's secret for private randomness (DP sampling and noise), from its key: no one
/// else can redraw its noise, and a restarted node draws the same.
fn private_secret(key: &Keypair) -> [u8; 32] {
    blake3::derive_key(
        "hivemesh 2026-12 node private randomness",
        &key.secret_bytes(),
    )
}

/// Refuses a listen address whose fixed port another socket already holds. libp2p's TCP
/// transport sets `SO_REUSEPORT` on its listeners, so a second node (or any program that sets it
/// too) would otherwise share the port silently and take half of the incoming connections. A
/// socket bound without it fails while any other holds the port; it is dropped at once. Port 0
/// (any free port) and addresses that are not IP with TCP or UDP are left to the transport.
fn ensure_port_free(addr: &Multiaddr) -> Result<(), NodeError> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let taken = match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port)).err(),
        Some(Protocol::Udp(port)) if port != 0 => std::net::UdpSocket::bind((ip, port)).err(),
        _ => None,
    };
    match taken {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError::Listen {
            addr: addr.clone(),
            reason: "the port is taken (another hivemesh node or another program listens on it): \
                     stop it, or pass --listen with another port"
                .into(),
        }),
        _ => Ok(()),
    }
}

/// The node's event loop: owns the swarm, the store and the campaigns.
pub struct EventLoop {
    /// The libp2p swarm (gossipsub, Kademlia, identify, ping, sync, blobs).
    swarm: Swarm<Behaviour>,
    /// How the node was started.
    config: Config,
    /// The store (shared with training tasks, which read blobs from it).
    store: Arc<Store>,
    /// Counted here, rendered by the API.
    metrics: Arc<Metrics>,
    /// Commands from clients.
    commands: mpsc::Receiver<Command>,
    /// Events to subscribers.
    events: broadcast::Sender<Event>,
    /// Where the status snapshot the API serves is published.
    status_tx: watch::Sender<Option<Arc<NodeStatus>>>,
    /// The addresses the swarm listens on (with `/p2p/<peer id>`).
    listen_addrs: Vec<Multiaddr>,
    /// The campaigns followed, with their protocol peers.
    campaigns: Campaigns,
    /// Jobs running here.
    jobs: Jobs,
    /// The gossip outbox and message counters.
    gossip: Gossip,
    /// Sync cursors.
    sync: SyncState,
    /// Per-peer rate limits and penalties.
    limits: Limits,
    /// Blob fetches under way.
    blobs: Blobs,
    /// Bootstrap peers to dial again when they go away.
    redial: Redial,
    /// Writes that failed (a full disk), retried on the sync timer.
    pending: PendingWrites,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .field("campaigns", &self.campaigns.map.len())
            .finish_non_exhaustive()
    }
}

fn libp2p_key(key: &Keypair) -> Result<libp2p::identity::Keypair, NodeError> {
    libp2p::identity::Keypair::ed25519_from_bytes(key.secret_bytes())
        .map_err(|e| NodeError::Net(format!("identity: {e}")))
}

/// Builds the swarm, listening on `config.listen` and dialling `config.bootstrap`.
fn build_swarm(
    config: &Config,
    key: &Keypair,
    campaigns: &Campaigns,
) -> Result<Swarm<Behaviour>, NodeError> {
    let net = config.net.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(libp2p_key(key)?)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            (crate::net::tls::Config::new, libp2p::noise::Config::new),
            libp2p::yamux::Config::default,
        )
        .map_err(|e| NodeError::Net(format!("tcp: {e}")))?
        .with_quic()
        .with_behaviour(|k| Behaviour::new(k, &net))
        .map_err(|e| NodeError::Net(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    // Every fixed port is checked before the node binds any (its own listeners on one port,
    // IPv4 and IPv6, must not look like another's).
    for addr in &config.listen {
        ensure_port_free(addr)?;
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen {
                addr: addr.clone(),
                reason: crate::error_text(&e),
            })?;
    }
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&campaigns.announce_topic)
        .map_err(|e| NodeError::Net(format!("subscribe: {e}")))?;
    for addr in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }
    Ok(swarm)
}

/// Builds the node: opens the store, builds the swarm, starts listening and dialling, and
/// announces the blobs it holds. Run the returned loop with [`EventLoop::run`], which first
/// restores every stored campaign (replaying its messages; subscribe to the events before, to
/// see what the replay ends in).
pub fn start(config: Config, key: Keypair) -> Result<(Client, EventLoop), NodeError> {
    let lock = DataDirLock::acquire(&config.data_dir)?;
    start_locked(config, key, lock)
}

/// [`start`] with the data directory already locked (`hivemesh run` locks it before it loads or
/// creates the key). The store must belong to `key` (see [`Store::claim_owner`]).
pub fn start_locked(
    config: Config,
    key: Keypair,
    lock: DataDirLock,
) -> Result<(Client, EventLoop), NodeError> {
    let metrics = Arc::new(Metrics::new());
    let options = StoreOptions {
        write_failures: metrics.store_write_failures.clone(),
        faults: config.store_faults.clone(),
        blob_quota: config.blob_quota,
    };
    let mut private = load_private_data(&config.private_data)?;
    if config.fault == Some(Fault::LabelFlip) {
        private.values_mut().for_each(|d| d.flip_labels());
    }
    let attack = config.fault.and_then(Fault::client_attack);
    let store = Arc::new(Store::open_with(lock, options)?);
    store.claim_owner(&key.public(), config.new_identity)?;
    let campaigns = Campaigns::new(key.clone());
    let swarm = build_swarm(&config, &key, &campaigns)?;
    let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (status_tx, snapshot) = watch::channel(None);
    let client = Client {
        tx,
        events: events.clone(),
        peer_id: *swarm.local_peer_id(),
        key: key.public(),
        metrics: Arc::clone(&metrics),
        snapshot,
        store: Arc::clone(&store),
    };
    let mut ev = EventLoop {
        swarm,
        store,
        metrics,
        commands,
        events,
        status_tx,
        listen_addrs: Vec::new(),
        campaigns,
        jobs: Jobs::new(
            Executor::new(&config.admission)
                .with_private_data(private, private_secret(&key))
                .with_attack(attack),
            devices::Slots::new(config.jobs, config.devices.as_deref()),
        ),
        gossip: Gossip::default(),
        sync: SyncState::default(),
        limits: Limits::new(config.gossip_rate),
        blobs: Blobs::default(),
        redial: Redial::new(&config.bootstrap, std::time::Instant::now()),
        pending: PendingWrites::default(),
        config,
    };
    ev.announce_held_blobs()?;
    Ok((client, ev))
}

impl EventLoop {
    /// Runs until `shutdown` resolves. Jobs still training are abandoned (their results were
    /// not stored, so a restart runs them again).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        // Stored campaigns are replayed here, not in `start`, so that whoever subscribed to the
        // events in between sees what the replay concludes (closures, a finished campaign).
        self.restore_campaigns();
        tokio::pin!(shutdown);
        let mut sync = tokio::time::interval(self.config.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chores = tokio::time::interval(STATUS_SNAPSHOT_EVERY);
        chores.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = tokio::time::Instant::now();
        loop {
            let wake = self.campaigns.next_wakeup(last_tick);
            // Fair: when several sources are ready, one is picked at random, so a flood on one
            // (API commands, a chatty peer) gets its share and no more.
            tokio::select! {
                () = &mut shutdown => break,
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(done) = self.jobs.rx.recv() => self.on_job_done(done),
                Some((id, p)) = self.blobs.opened.1.recv() => self.on_partial_opened(id, p),
                () = tokio::time::sleep_until(wake) => {
                    last_tick = tokio::time::Instant::now();
                    self.tick_all();
                }
                _ = sync.tick() => self.on_sync_tick(),
                _ = chores.tick() => self.on_chores(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        // Training threads watch this flag and end within one optimiser step, so the runtime
        // (which waits for its blocking threads) lets the process exit within seconds.
        self.jobs.executor.stop_all();
        if let Err(e) = self.store.flush() {
            tracing::error!("cannot flush the store: {e}");
        }
        tracing::info!("node stopped");
    }

    /// The sync timer: a sync round, and a review of peer scores and bans.
    /// Every [`STATUS_SNAPSHOT_EVERY`]: refresh the status snapshot, redial bootstrap peers
    /// that are due.
    fn on_chores(&mut self) {
        self.publish_status();
        for addr in self.redial.due(std::time::Instant::now()) {
            tracing::debug!(%addr, "redialling a bootstrap peer");
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, "cannot redial: {e}");
            }
        }
    }

    fn on_sync_tick(&mut self) {
        self.sync_round();
        self.review_scores(std::time::Instant::now());
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Routes a swarm event to the handler of its protocol.
    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.on_new_listen_addr(address),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => self.on_connected(peer_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => self.on_disconnected(peer_id, num_established),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Blob(e)) => self.on_blob(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            _ => {}
        }
    }

    fn on_new_listen_addr(&mut self, address: Multiaddr) {
        let full = address
            .clone()
            .with_p2p(*self.swarm.local_peer_id())
            .unwrap_or(address);
        tracing::info!(addr = %full, "listening");
        self.listen_addrs.push(full.clone());
        self.emit(Event::Listening(full));
    }

    fn on_connected(&mut self, peer: PeerId, endpoint: &libp2p::core::ConnectedPoint) {
        tracing::debug!(%peer, "connected");
        if endpoint.is_dialer() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, endpoint.get_remote_address().clone());
        }
        self.redial.connected(&peer);
        self.emit(Event::Connected(peer));
        let peers = self.swarm.connected_peers().count();
        self.metrics.peers.set(peers as i64);
        // A fetch still searching may find the blob at the newcomer.
        self.offer_peer_to_fetches(peer);
        if peers < TARGET_PEERS {
            // Learn more of the swarm (a no-op query cost when it is small).
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        // A new peer may hold what we miss: sync with it now.
        let sync = &mut self.swarm.behaviour_mut().sync;
        sync.send_request(&peer, SyncRequest::Campaigns);
    }

    fn on_disconnected(&mut self, peer: PeerId, num_established: u32) {
        let peers = self.swarm.connected_peers().count();
        self.metrics.peers.set(peers as i64);
        if num_established == 0 {
            self.redial.disconnected(&peer, std::time::Instant::now());
            self.sync.speakers.remove(&peer);
            self.emit(Event::Disconnected(peer));
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            if info.protocols.contains(&crate::net::SYNC_PROTOCOL)
                && peer_key(&peer_id).is_some()
                && self.swarm.is_connected(&peer_id)
                && self.sync.speakers.insert(peer_id)
            {
                self.emit(Event::SpeaksHivemesh(peer_id));
            }
            for addr in info.listen_addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
    }

    /// A Kademlia event: providers for a blob fetch, or a new peer to dial while below
    /// [`TARGET_PEERS`].
    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => self.on_providers(id, result, step.last),
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
}

/// The peer id of a hivemesh signing key (`None`: not a valid ed25519 point).
pub fn peer_id_of(key: &PeerKey) -> Option<PeerId> {
    let ed = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(PeerId::from_public_key(&ed.into()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use hivemesh_protocol::spec::{
        Aggregate, ExamplePrivacy, Features, FederatedParams, OuterStep,
    };

    /// A node gives its private data only to campaigns that train it with DP-SGD within its ε
    /// limit (infinite: any).
    #[test]
    fn private_data_goes_only_to_campaigns_within_the_nodes_epsilon() {
        let mut p = FederatedParams {
            model: hivemesh_protocol::BlobId::of_bytes(b"m"),
            private_data: "wards".into(),
            rounds: 2,
            clients_per_round: 2,
            min_clients: 1,
            local_steps: 10,
            example_privacy: None,
            client_privacy: None,
            delta: 1e-5,
            epsilon_budget: None,
            norm_bound: 0.0,
            aggregate: Aggregate::Mean,
            outer: OuterStep::Average,
            secure: None,
            features: Features::Values,
        };
        let why = private_data_refusal(&p, 10.0).expect("no DP: refused");
        assert!(why.contains("without example-level privacy"), "{why}");
        assert_eq!(private_data_refusal(&p, f64::INFINITY), None);
        p.example_privacy = Some(ExamplePrivacy {
            clip: 1.0,
            noise_multiplier: 1.0,
            sample_rate: 0.1,
        });
        assert!(private_data_refusal(&p, 10.0).is_some(), "no budget");
        p.epsilon_budget = Some(12.0);
        let why = private_data_refusal(&p, 10.0).expect("over the limit");
        assert!(why.contains("--private-max-epsilon"), "{why}");
        p.epsilon_budget = Some(8.0);
        assert_eq!(private_data_refusal(&p, 10.0), None);
    }
}
