//! # hivemesh-tests
//!
//! Multi-crate integration tests live in `tests/tests/it/` (one binary). This library holds helpers they share:
//! deterministic identities and message builders today; multi-node harnesses (nodes on loopback
//! that wait on events with a timeout, never sleep-and-retry) once the node exists.

pub mod raw_peer;

use hivemesh_protocol::Keypair;

/// The identity of test peer `i`: deterministic, so failures reproduce.
pub fn test_key(i: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&i.to_le_bytes());
    secret[31] = 0x5a;
    Keypair::from_secret_bytes(secret)
}

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hivemesh_node::daemon::{self, Client, Config, Event};
use hivemesh_node::executor::{CODE_VERSION, builtin_digits};
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, LrSchedule, NasParams, NasSpace, Optimizer, Schedule, Search,
    Strategy, TrainingBudget,
};
use hivemesh_protocol::{CampaignId, PeerKey, Timestamp, Tolerance};
use libp2p::Multiaddr;
use tokio::sync::{broadcast, oneshot};

/// A directory under the system temp dir, removed (with its contents) on drop, except when the
/// test is failing (panicking): then it is kept, and its path printed, for a post-mortem (node
/// logs, stores).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hivemesh-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a post-mortem: {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node running on loopback in this process.
#[derive(Debug)]
pub struct TestNode {
    /// Its handle.
    pub client: Client,
    /// Its events, subscribed before it started.
    pub events: broadcast::Receiver<Event>,
    /// Its listen addresses (with `/p2p/`).
    pub addrs: Vec<Multiaddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// Stops the node and waits for its loop to end (the store is closed after this).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task");
        }
    }
}

/// The default test node config: loopback TCP on a free port, fast sync.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::new(dir.to_path_buf());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
    c.sync_interval = Duration::from_millis(500);
    c
}

/// Starts a node with `config` and identity `i`, and waits until it listens.
pub async fn start_node(i: u64, config: Config) -> TestNode {
    let (client, event_loop) = daemon::start(config, test_key(i)).expect("node starts");
    let mut events = client.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(event_loop.run(async {
        let _ = stopped.await;
    }));
    let first = wait_for(&mut events, Duration::from_secs(10), |e| match e {
        Event::Listening(a) => Some(a.clone()),
        _ => None,
    })
    .await;
    TestNode {
        client,
        events,
        addrs: vec![first],
        stop: Some(stop),
        task: Some(task),
    }
}

/// Waits for the first event `pick` accepts; panics after `timeout` (a guard against hangs,
/// not a synchronisation device).
pub async fn wait_for<T>(
    events: &mut broadcast::Receiver<Event>,
    timeout: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("test subscriber lagged by {n} events")
                }
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .expect("timed out waiting for a node event")
}

/// A small NAS campaign on the embedded digits set: `population` MLPs per generation, trained
/// for a few dozen steps, run by `roster` (sorted here) with redundancy 3, quorum 2.
pub fn digits_nas_spec(
    roster: &[PeerKey],
    population: u32,
    generations: u32,
    seed: u64,
) -> CampaignSpec {
    let mut roster = roster.to_vec();
    roster.sort();
    roster.dedup();
    CampaignSpec {
        name: format!("test: NAS on digits ({population}x{generations})"),
        created_at: Timestamp(1_763_000_000_000),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![16, 32],
            },
            strategy: Strategy::Nsga2,
            population,
            generations,
        }),
        dataset: builtin_digits(),
        budget: TrainingBudget {
            epochs: 1,
            max_steps: Some(30),
            batch_size: 32,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-2,
            schedule: LrSchedule::Constant,
        },
        seed,
        redundancy: 3,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: CODE_VERSION.into(),
        roster,
        schedule: Schedule::default(),
    }
}

/// Generous guard for a whole campaign in a debug build on 2 cores.
pub const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts `n` nodes on loopback, each bootstrapping to the first; `tweak` adjusts each config.
pub async fn cluster(
    tag: &str,
    n: usize,
    mut tweak: impl FnMut(usize, &mut Config),
) -> (Vec<TempDir>, Vec<TestNode>) {
    let dirs: Vec<TempDir> = (0..n).map(|i| TempDir::new(&format!("{tag}{i}"))).collect();
    let mut nodes: Vec<TestNode> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cfg = test_config(dir.path());
        if let Some(first) = nodes.first() {
            cfg.bootstrap = first.addrs.clone();
        }
        tweak(i, &mut cfg);
        nodes.push(start_node(i as u64, cfg).await);
    }
    (dirs, nodes)
}

/// Waits until `node` saw campaign `id` finish; returns the closures it saw on the way.
pub async fn wait_finished(node: &mut TestNode, id: CampaignId) -> Vec<(u32, [u8; 32])> {
    let mut closed = Vec::new();
    wait_for(&mut node.events, CAMPAIGN_TIMEOUT, |e| match e {
        Event::Closed {
            campaign,
            generation,
            root,
        } if *campaign == id => {
            closed.push((*generation, *root));
            None
        }
        Event::Finished(c) if *c == id => Some(()),
        _ => None,
    })
    .await;
    closed
}

/// Waits until `node` holds a proven hivemesh connection to every peer in `keys` (so a campaign
/// it submits next reaches them at once, not through a later sync).
pub async fn wait_hivemesh_peers(node: &mut TestNode, keys: &[PeerKey]) {
    loop {
        let have = node.client.connected_keys().await.expect("node up");
        if keys.iter().all(|k| have.contains(k)) {
            return;
        }
        // The receiver holds every event since the node started: one emitted between the
        // check above and this wait still wakes it.
        wait_for(&mut node.events, Duration::from_secs(30), |e| {
            matches!(e, Event::SpeaksHivemesh(_)).then_some(())
        })
        .await;
    }
}

/// The reference model of the loss-search tests: a 64-16-10 MLP for the digits set (the
/// postcard architecture IR a loss campaign names by blob id).
pub fn digits_reference_model() -> Vec<u8> {
    hivemesh_node::campaign_file::zoo_model(
        "mlp-16",
        hivemesh_evolve::arch::Shape::Image { c: 1, h: 8, w: 8 },
        10,
    )
    .expect("zoo model")
}

/// A small loss-search campaign on the digits set: `population` expressions per generation
/// train the reference model `reference` (a blob id) for a few dozen steps.
pub fn digits_loss_spec(
    roster: &[PeerKey],
    reference: hivemesh_protocol::BlobId,
    population: u32,
    generations: u32,
    seed: u64,
) -> CampaignSpec {
    CampaignSpec {
        name: format!("test: loss search on digits ({population}x{generations})"),
        search: Search::Loss(hivemesh_protocol::spec::LossParams {
            population,
            generations,
            max_depth: 3,
            max_size: 12,
            reference_model: reference,
            constant_tuning_steps: 1,
        }),
        ..digits_nas_spec(roster, population, generations, seed)
    }
}

/// The bearer token [`serve_api`] serves with.
pub const API_TOKEN: &str = "t0ken-for-the-test-0123456789abcdef";

/// Serves `client`'s node's HTTP API on a free loopback port (token [`API_TOKEN`]) until the
/// test ends; returns its address.
pub async fn serve_api(client: Client) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = hivemesh_node::http::ApiState::new(client, API_TOKEN.to_string());
    tokio::spawn(hivemesh_node::http::serve(
        listener,
        state,
        std::future::pending(),
    ));
    addr
}
