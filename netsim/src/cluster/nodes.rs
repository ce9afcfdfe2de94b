//! The cluster's nodes: started in this process or as `hivemesh run` child processes
//! ([`start_node`]), opened offline to read their stores ([`open_offline`]), and the
//! cloneable [`Handle`] the run loop's tasks call them through.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hivemesh_node::daemon::{self, Client, Config, Event, NodeError};
use hivemesh_protocol::{CampaignId, Keypair};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::ClusterError;
use super::config::{ClusterConfig, Role};
use crate::processes::{self, Proc};

/// Node events forwarded to the cluster's loop.
pub(super) const EVENT_CAPACITY: usize = 4096;

/// How often a child process's API is polled for its events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// How long a restarted in-process node waits for its store to be released.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The identity of cluster node `i` under `seed`.
pub fn node_key(seed: u64, i: usize) -> Keypair {
    let h = blake3::hash(format!("hivemesh-netsim cluster {seed} {i}").as_bytes());
    Keypair::from_secret_bytes(*h.as_bytes())
}

/// What the cluster hears from a node about the campaign.
#[derive(Debug, Clone)]
pub(super) enum NodeEvent {
    /// A generation closed here.
    Closed {
        /// The generation.
        generation: u32,
        /// Its closure root (hex).
        root: String,
    },
    /// The campaign finished here.
    Finished,
    /// This many more job executions started here.
    Started(u64),
    /// A job was handed back.
    Abandoned {
        /// The job id (hex).
        job: String,
        /// Why.
        reason: String,
    },
}

/// Which node an event is from, and which of its lives (a restart is a new life: a late
/// event of the killed one must not count for the new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Source {
    /// The node's index.
    pub(super) node: usize,
    /// Its life number.
    pub(super) life: u64,
}

/// One event of one node about one campaign.
#[derive(Debug, Clone)]
pub(super) struct NodeMessage {
    /// Who sent it.
    pub(super) from: Source,
    /// Which campaign it is about.
    pub(super) campaign: CampaignId,
    /// What happened.
    pub(super) event: NodeEvent,
}

/// Where nodes send their [`NodeMessage`]s.
pub(super) type Events = mpsc::Sender<NodeMessage>;

/// A fresh life number for a node being started.
fn next_life() -> u64 {
    static LIVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    LIVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A running node: in this process, or a `hivemesh run` child process.
pub(super) struct Running {
    /// Its libp2p address.
    pub(super) addr: Multiaddr,
    /// Its peer id.
    pub(super) peer_id: PeerId,
    /// How to call it (cloneable, for tasks).
    pub(super) handle: Handle,
    /// This life's number (see [`Source`]).
    pub(super) life: u64,
    /// What keeps it alive.
    owner: Owner,
    /// Polls a child process's API for events.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// What owns a running node.
enum Owner {
    /// An event loop in this process.
    InProcess {
        /// Dropping or sending stops the loop cleanly.
        stop: oneshot::Sender<()>,
        /// The loop's task.
        task: tokio::task::JoinHandle<()>,
    },
    /// A child process.
    Process(Proc),
}

/// How to call a node: its client, or a child's HTTP API. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) enum Handle {
    /// A node in this process.
    InProcess(Client),
    /// A child process.
    Process(processes::Api),
}

/// A settled job, as much as the progress lines need.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct Brief {
    /// Its generation.
    pub(super) generation: u32,
    /// How it ended.
    pub(super) status: hivemesh_protocol::standings::JobStatus,
    /// Its accuracy (success).
    pub(super) accuracy: f64,
}

impl Handle {
    /// The in-process client, if the node runs here.
    pub(super) fn client(&self) -> Option<&Client> {
        match self {
            Handle::InProcess(client) => Some(client),
            Handle::Process(_) => None,
        }
    }

    /// Blocks or unblocks a peer: through the client, or a child's HTTP API.
    pub(super) async fn block(
        &self,
        i: usize,
        peer: PeerId,
        blocked: bool,
    ) -> Result<(), ClusterError> {
        match self {
            Handle::InProcess(client) => client
                .block(peer, blocked)
                .await
                .map_err(|_| ClusterError::Stopped(i)),
            Handle::Process(p) => {
                p.block(&peer, blocked)
                    .await
                    .map_err(|e| ClusterError::Process {
                        node: i,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Dials `addr` (best effort: a refused dial is repaired by gossip and sync later).
    pub(super) async fn dial(&self, addr: Multiaddr) {
        match self {
            Handle::InProcess(client) => {
                let _ = client.dial(addr).await;
            }
            Handle::Process(p) => {
                let _ = p.dial(&addr).await;
            }
        }
    }

    /// The node's settled jobs in `id`, briefly.
    pub(super) async fn briefs(&self, id: CampaignId) -> Option<Vec<Brief>> {
        match self {
            Handle::InProcess(client) => client.settled(id).await.ok().flatten().map(|jobs| {
                jobs.iter()
                    .map(|j| Brief {
                        generation: j.generation,
                        status: j.status,
                        accuracy: j.accuracy,
                    })
                    .collect()
            }),
            Handle::Process(p) => {
                let v = p.get_json(&format!("/campaigns/{id}/results")).await.ok()?;
                serde_json::from_value(v).ok()
            }
        }
    }

    /// One line on where the node stands in the campaign.
    pub(super) async fn state_line(&self, id: CampaignId) -> Option<String> {
        match self {
            Handle::InProcess(client) => client.campaign(id).await.ok().flatten().map(|c| {
                format!(
                    "generation {} finished {}: {}",
                    c.generation, c.finished, c.summary
                )
            }),
            Handle::Process(p) => {
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

    /// Stores a blob at the node; its id (hex).
    pub(super) async fn put_blob(&self, bytes: Vec<u8>) -> Result<String, ClusterError> {
        match self {
            Handle::InProcess(client) => client
                .put_blob(bytes)
                .await
                .map(|id| id.to_string())
                .map_err(ClusterError::from),
            Handle::Process(p) => {
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
}

impl Running {
    /// The in-process client, if the node runs here.
    pub(super) fn client(&self) -> Option<&Client> {
        self.handle.client()
    }

    /// `kill -9`; the CPU seconds a child process had used.
    pub(super) async fn kill(self) -> f64 {
        if let Some(w) = self.watcher {
            w.abort();
        }
        match self.owner {
            Owner::InProcess { stop, task } => {
                // The loop is dropped where it stands, nothing is flushed.
                task.abort();
                let _ = task.await;
                drop(stop);
                0.0
            }
            Owner::Process(p) => {
                let cpu = p.cpu_seconds().unwrap_or(0.0);
                p.kill().await;
                cpu
            }
        }
    }

    /// A clean stop; the CPU seconds a child process had used.
    pub(super) async fn stop(self) -> f64 {
        if let Some(w) = self.watcher {
            w.abort();
        }
        match self.owner {
            Owner::InProcess { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
                0.0
            }
            Owner::Process(p) => {
                let cpu = p.cpu_seconds().unwrap_or(0.0);
                p.stop(Duration::from_secs(30)).await;
                cpu
            }
        }
    }

    /// Starts polling a child process's API for `id`'s events (in-process nodes push theirs).
    pub(super) fn watch(&mut self, i: usize, id: CampaignId, events: &Events) {
        let Handle::Process(api) = &self.handle else {
            return;
        };
        let from = Source {
            node: i,
            life: self.life,
        };
        self.watcher = Some(tokio::spawn(poll_process(
            api.addr,
            from,
            id,
            events.clone(),
        )));
    }
}

/// What a child process has already reported (its API is polled, it pushes nothing).
#[derive(Debug, Default)]
struct Reported {
    /// Closures sent.
    closures: BTreeSet<(u32, String)>,
    /// Whether `Finished` was sent.
    finished: bool,
    /// Job executions started, as far as sent.
    started: u64,
}

impl Reported {
    /// What the child's API says now that was not sent yet.
    async fn news(&mut self, api: std::net::SocketAddr, id: CampaignId) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        if let Ok(c) = processes::get_json_at(api, &format!("/campaigns/{id}")).await {
            for pair in c["closures"].as_array().into_iter().flatten() {
                if let (Some(g), Some(root)) = (pair[0].as_u64(), pair[1].as_str())
                    && self.closures.insert((g as u32, root.to_string()))
                {
                    out.push(NodeEvent::Closed {
                        generation: g as u32,
                        root: root.to_string(),
                    });
                }
            }
            if !self.finished && c["finished"].as_bool() == Some(true) {
                self.finished = true;
                out.push(NodeEvent::Finished);
            }
        }
        if let Ok(st) = processes::get_json_at(api, "/status").await {
            let n = st["jobs_running"].as_u64().unwrap_or(0)
                + st["jobs_finished"].as_u64().unwrap_or(0);
            if n > self.started {
                out.push(NodeEvent::Started(n - self.started));
                self.started = n;
            }
        }
        out
    }
}

/// Polls a child's API at `api` and forwards what is new, until the loop stops listening.
async fn poll_process(api: std::net::SocketAddr, from: Source, id: CampaignId, events: Events) {
    let mut reported = Reported::default();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        for event in reported.news(api, id).await {
            let m = NodeMessage {
                from,
                campaign: id,
                event,
            };
            if events.send(m).await.is_err() {
                return;
            }
        }
    }
}

/// Starts node `i`: in this process, or as a child process with `--processes`.
pub(super) async fn start_node(
    cfg: &ClusterConfig,
    i: usize,
    bootstrap: Vec<Multiaddr>,
    events: &Events,
) -> Result<Running, ClusterError> {
    let life = next_life();
    let Some(bin) = &cfg.processes else {
        return start_in_process(cfg, Source { node: i, life }, bootstrap, events.clone()).await;
    };
    let dir = cfg.data_dir.join(format!("node{i}"));
    let key = node_key(cfg.seed, i);
    let role = cfg.role(i);
    let fault = (role == Role::Byzantine).then(|| cfg.strategy.as_flag());
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
        handle: Handle::Process(p.api_client()),
        owner: Owner::Process(p),
        life,
        watcher: None,
    })
}

/// A node config for node `i` listening on a free loopback port.
fn loopback_config(cfg: &ClusterConfig, i: usize) -> Config {
    let mut c = Config::new(cfg.data_dir.join(format!("node{i}")));
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
    c
}

/// Runs `ev` on a task until the returned sender is used or dropped.
fn spawn_loop(ev: daemon::EventLoop) -> Owner {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ev.run(async {
        let _ = stopped.await;
    }));
    Owner::InProcess { stop, task }
}

/// Opens node `i`'s store in this process, connected to no one, to read what it holds (after
/// its child process stopped).
pub(super) async fn open_offline(cfg: &ClusterConfig, i: usize) -> Result<Running, ClusterError> {
    let (client, ev) = daemon::start(loopback_config(cfg, i), node_key(cfg.seed, i))
        .map_err(|source| ClusterError::Node { node: i, source })?;
    Ok(Running {
        addr: Multiaddr::empty(),
        peer_id: client.peer_id(),
        handle: Handle::InProcess(client),
        owner: spawn_loop(ev),
        life: 0,
        watcher: None,
    })
}

/// Starts `c` as node `i`, retrying while its store is still held by a job the previous
/// (killed) instance left running on the blocking pool.
async fn start_daemon(
    c: &Config,
    key: &Keypair,
    i: usize,
) -> Result<(Client, daemon::EventLoop), ClusterError> {
    let give_up = Instant::now() + STORE_LOCK_WAIT;
    loop {
        match daemon::start(c.clone(), key.clone()) {
            Ok(x) => return Ok(x),
            Err(NodeError::Store(hivemesh_node::store::StoreError::Locked { .. }))
                if Instant::now() < give_up =>
            {
                // The killed instance's last job still holds the store: wait for it.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(source) => return Err(ClusterError::Node { node: i, source }),
        }
    }
}

/// Starts node `from.node` in this process and forwards its campaign events.
async fn start_in_process(
    cfg: &ClusterConfig,
    from: Source,
    bootstrap: Vec<Multiaddr>,
    events: Events,
) -> Result<Running, ClusterError> {
    let i = from.node;
    let mut c = loopback_config(cfg, i);
    c.bootstrap = bootstrap;
    c.jobs = cfg.jobs_per_node.max(1);
    c.sync_interval = Duration::from_secs(1);
    if let Some(d) = cfg.delay {
        c.net.heartbeat = d;
    }
    if cfg.private.is_some()
        && let Some(name) = super::private::private_name(&cfg.campaign)
    {
        let opts = hivemesh_trainer::data::read::ReadOptions::default();
        c.private_data
            .insert(name, (super::private::part_path(cfg, i), opts));
        // The cluster's operator owns every part: its nodes take part in the campaign
        // whatever privacy it asks (a real node's default refuses campaigns without DP-SGD).
        c.private_max_epsilon = f64::INFINITY;
    }
    match cfg.role(i) {
        Role::Byzantine => c.fault = Some(cfg.strategy),
        Role::Auditor => c.audit = true,
        Role::Honest => {}
    }
    let (client, ev) = start_daemon(&c, &node_key(cfg.seed, i), i).await?;
    let mut rx = client.subscribe();
    let owner = spawn_loop(ev);
    let addr = loop {
        match rx.recv().await {
            Ok(Event::Listening(a)) => break a,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return Err(ClusterError::Stopped(i)),
        }
    };
    tokio::spawn(forward_events(rx, from, events));
    Ok(Running {
        addr,
        peer_id: client.peer_id(),
        handle: Handle::InProcess(client),
        owner,
        life: from.life,
        watcher: None,
    })
}

/// The campaign event the cluster hears of `e`, if any.
fn campaign_event(e: Event) -> Option<(CampaignId, NodeEvent)> {
    Some(match e {
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
        _ => return None,
    })
}

/// Forwards an in-process node's campaign events until either side goes away.
async fn forward_events(mut rx: broadcast::Receiver<Event>, from: Source, events: Events) {
    loop {
        match rx.recv().await {
            Ok(e) => {
                let Some((campaign, event)) = campaign_event(e) else {
                    continue;
                };
                let m = NodeMessage {
                    from,
                    campaign,
                    event,
                };
                if events.send(m).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
