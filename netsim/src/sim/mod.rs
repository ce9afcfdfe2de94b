//! netsim tier 1: a seeded discrete-event simulator running many [`Peer`]s on a virtual clock.
//!
//! Each node is a real `hivemesh-protocol` [`Peer`] with its own ed25519 key. The network is
//! modelled as gossip that reaches every reachable node after a random latency, loses single
//! deliveries with some probability, and is repaired by anti-entropy: every node periodically
//! pulls the messages it lacks from a random reachable node (the node's sync protocol).
//! With `evidence_shards` set, job evidence travels on sharded topics instead (the voters and
//! the nodes ranked for a job of the shard receive it, heartbeats go to the voters, and sync
//! repairs from the voters; ADR 0003, "Scale"). Partitions cut delivery and sync between
//! groups until they heal. A crashed node loses its memory but keeps its store (the messages
//! it had), and restarts from it. Joiners start empty and catch up by sync.
//!
//! Executors are stubs: a job's "true" outcome is a seeded function of its id, so every
//! finalised result can be checked. Byzantine nodes follow a [`Behaviour`].
//!
//! Every message a node sends is encoded and signed for real; the simulator verifies each
//! distinct message once (every receiver would reach the same verdict) unless the scenario
//! turns verification off for scale runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use hivemesh_protocol::derive::DerivationCache;
use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::peer::{Peer, PeerConfig};
use hivemesh_protocol::spec::Schedule;
use hivemesh_protocol::{
    AnySigned, BackendClass, CampaignId, CampaignSpec, Claim, Context, DatasetRef, JobId,
    JobPayload, JobResult, JobSpec, Keypair, Kind, LrSchedule, Metrics, NasParams, NasSpace,
    Optimizer, Outcome, PeerKey, Search, Signed, Strategy, Timestamp, Tolerance, TrainingBudget,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::scenario::{Behaviour, Fault, Scenario};

mod node;
mod report;

use node::{Bits, Node, View};

pub use report::{AuditStats, RunReport, describe};

/// A scheduled event. Indices are `u32` so that an event is 12 bytes: a broadcast schedules one
/// delivery per receiver, and at scale the queue holds millions of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Deliver { to: u32, msg: u32 },
    JobDone { node: u32, pending: u32 },
    Wake { node: u32 },
    Sync { node: u32 },
    Fault { index: u32, restart: bool },
    Heal { index: u32 },
    Join { index: u32 },
    Spam { node: u32 },
}

/// The event queue: one bucket of events per virtual millisecond, each in the order pushed.
/// Pops in (time, push order), as a binary heap keyed by (time, sequence number) would, but
/// pushing and popping cost O(1) within a millisecond and O(log buckets) across them, where a
/// heap of every pending delivery costs O(log events) with a cache miss per level.
#[derive(Default)]
struct Calendar {
    /// The time of `current`.
    at: u64,
    /// Events due at `at`, in push order.
    current: std::collections::VecDeque<Event>,
    /// Later events by time.
    later: BTreeMap<u64, Vec<Event>>,
}

impl Calendar {
    fn push(&mut self, at: u64, e: Event) {
        debug_assert!(at >= self.at, "an event scheduled in the past");
        if at == self.at {
            self.current.push_back(e);
        } else {
            self.later.entry(at).or_default().push(e);
        }
    }

    fn pop(&mut self) -> Option<(u64, Event)> {
        loop {
            if let Some(e) = self.current.pop_front() {
                return Some((self.at, e));
            }
            let (at, bucket) = self.later.pop_first()?;
            self.at = at;
            self.current = bucket.into();
        }
    }

    /// The next event, without taking it (nor moving the clock: pushing at any time from the
    /// last popped event's on stays in order).
    fn peek(&self) -> Option<(u64, Event)> {
        match self.current.front() {
            Some(&e) => Some((self.at, e)),
            None => self
                .later
                .first_key_value()
                .and_then(|(&at, bucket)| bucket.first().map(|&e| (at, e))),
        }
    }
}

impl Event {
    /// Whether the event acts on more than one node's state (a sync reads another node's
    /// store; faults, heals, joins and spam change the network): such an event ends a window
    /// and is handled on its own.
    fn is_barrier(&self) -> bool {
        !matches!(
            self,
            Event::Deliver { .. } | Event::JobDone { .. } | Event::Wake { .. }
        )
    }
}

/// One input to one node.
enum Work {
    /// Logged message delivered by gossip or sync.
    Deliver(u32),
    /// Logged message replayed from the node's store at a restart.
    Replay(u32),
    /// An execution finished (taken from `Sim::pending` when the event was popped).
    JobDone(Option<Box<(JobId, JobResult)>>),
    /// The node's timer (acts only if it is still the one set).
    Wake,
    /// Let the node act (after starting).
    Tick,
}

/// A node's input at virtual time `at`; `seq` orders inputs of the same millisecond (the order
/// their events were pushed).
struct Item {
    at: u64,
    seq: u64,
    work: Work,
}

/// What a node's handling of one input leaves for the simulator: everything that touches
/// shared state (the message log, the network's RNG, the event queue), applied in input order.
enum Effect {
    Broadcast(AnySigned),
    /// The node was asked to run this job; with `run`, its result (what this node's
    /// behaviour makes of the true outcome) is ready after a drawn job time.
    Execute {
        id: JobId,
        job: JobSpec,
        run: Option<Outcome>,
    },
    /// A result ready without running (stored before a restart, or copied): done 1 ms later.
    Ready(JobId, JobResult),
    Closed {
        generation: u32,
    },
    Finished,
    Wake(u64),
}

/// The effects of one input, with the input's order key.
struct Batch {
    at: u64,
    seq: u64,
    node: u32,
    effects: Vec<Effect>,
}

/// The simulator.
#[allow(missing_debug_implementations)]
pub struct Sim {
    sc: Scenario,
    spec: CampaignSpec,
    /// `spec.id()`, computed once.
    campaign: CampaignId,
    other_campaign_claim: Option<Vec<u8>>,
    rng: ChaCha8Rng,
    now: u64,
    queue: Calendar,
    nodes: Vec<Node>,
    log: Vec<Arc<AnySigned>>,
    /// Per logged message: `None` if it goes to every node, else the (generation, shard) whose
    /// subscriber list it goes to (`evidence_shards > 0`; shard `evidence_shards` is the
    /// membership topic of heartbeats).
    log_route: Vec<Option<(u32, u32)>>,
    /// Per generation, per evidence shard: the nodes that receive it (sorted).
    routes: HashMap<u32, Vec<Arc<[u32]>>>,
    /// Each job's generation and shard.
    job_route: HashMap<JobId, (u32, u32)>,
    /// Node index by key.
    node_of: HashMap<PeerKey, u32>,
    /// Shared job derivation (`share_derivation`).
    derivations: Option<DerivationCache>,
    log_ids: HashMap<hivemesh_protocol::MessageId, usize>,
    /// Results of executions under way (boxed: a window's inputs are sorted by node).
    pending: Vec<Option<Box<(JobId, JobResult)>>>,
    rejected_at_ingress: usize,
    jobs_by_id: HashMap<JobId, JobSpec>,
    /// Each node's speed now (job times are divided by it) and at the start.
    speeds: Vec<(f64, f64)>,
    /// Executions honest nodes started.
    executions: usize,
    first_entered: BTreeMap<u32, u64>,
    events: u64,
    check_finished: bool,
    /// Worker threads for the nodes of a window (`None`: this thread).
    pool: Option<rayon::ThreadPool>,
    /// Running on a worker of `pool` (taken out of it by `run`).
    parallel: bool,
}

/// The evidence shard of a job: its id's first four bytes modulo the shard count.
fn shard_of(job: &JobId, shards: u32) -> u32 {
    let b = job.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % shards.max(1)
}

/// The true outcome of a job (what an honest executor reports).
pub fn true_outcome(job: &JobSpec) -> Outcome {
    let h = blake3::hash(&postcard_job(job));
    let b = h.as_bytes();
    let genes: u64 = match &job.payload {
        JobPayload::Nas { genome } => genome.iter().map(|&g| u64::from(g)).sum(),
        _ => 0,
    };
    let correct = 600 + (genes * 37 + u64::from(b[0])) % 390;
    Outcome::Success(Metrics {
        correct,
        total: 1000,
        params: 1000 + genes * 512 + u64::from(b[1]),
        flops: 2000 + genes * 1024 + u64::from(b[2]),
        extra: BTreeMap::new(),
        artifacts: Vec::new(),
    })
}

fn postcard_job(job: &JobSpec) -> Vec<u8> {
    job.id().as_bytes().to_vec()
}

fn perturb(o: &Outcome, by: u64) -> Outcome {
    match o {
        Outcome::Success(m) => {
            let mut m = m.clone();
            m.correct = (m.correct + by) % m.total.max(1);
            Outcome::Success(m)
        }
        f => f.clone(),
    }
}

fn spec_for(sc: &Scenario, roster: Vec<PeerKey>, name: &str) -> CampaignSpec {
    CampaignSpec {
        name: format!("netsim: {name}"),
        created_at: Timestamp::from_millis(1_700_000_000_000),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 4,
                widths: vec![16, 32, 64, 128],
            },
            strategy: Strategy::Nsga2,
            population: sc.population,
            generations: sc.generations,
        }),
        dataset: DatasetRef {
            id: hivemesh_protocol::BlobId::of_bytes(b"netsim stub data"),
            name: "stub".into(),
            sources: vec!["builtin:stub".into()],
            bytes: 1 << 20,
        },
        budget: TrainingBudget {
            epochs: 1,
            max_steps: None,
            batch_size: 64,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-3,
            schedule: LrSchedule::Constant,
        },
        seed: 7,
        redundancy: sc.redundancy,
        quorum: sc.quorum,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: (sc.audit_rate * 1e6).round() as u32,
        backend: BackendClass::CpuNdarray,
        code_version: "netsim-stub/1".into(),
        roster,
        schedule: Schedule {
            job_deadline_ms: sc.job_deadline_ms,
            min_deadline_ms: sc.job_deadline_ms.min(1_000),
            max_deadline_ms: sc.job_deadline_ms.max(1_000) * 10,
            max_extra_executors: sc.max_extra,
            round_timeout_ms: sc.round_timeout_ms,
        },
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        lo + rng.next_u64() % (hi - lo + 1)
    }
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
}

/// Why a simulation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// More Byzantine nodes than nodes besides the creator.
    #[error(
        "Byzantine nodes would include the creator (node 0): lower the Byzantine counts or add nodes"
    )]
    ByzantineCreator,
    /// The scenario makes an invalid campaign.
    #[error("the scenario's campaign is invalid: {0}")]
    Spec(#[from] hivemesh_protocol::SpecError),
    /// The worker threads could not start.
    #[error("cannot start {threads} simulator threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// What the thread pool said.
        reason: String,
    },
}

/// The simulated nodes, all down until started.
fn new_nodes(keys: Vec<Keypair>, behaviours: Vec<Option<Behaviour>>) -> Vec<Node> {
    keys.into_iter()
        .zip(behaviours)
        .enumerate()
        .map(|(index, (key, behaviour))| Node {
            index: index as u32,
            key,
            peer: None,
            behaviour,
            have: Bits(Vec::new()),
            up: false,
            group: 0,
            wake_at: None,
            closed_at: BTreeMap::new(),
            waiting_copy: BTreeSet::new(),
            results: HashMap::new(),
            rejected: 0,
            delivered: 0,
            evidence_delivered: 0,
        })
        .collect()
}

/// Each node's speed (now, at the start): log-uniform in `[1, speed_spread]`, drawn from its
/// own stream of the seed (the run's main stream is untouched, so scenarios without a spread
/// run exactly as before).
fn speeds(sc: &Scenario, seed: u64, total: usize) -> Vec<(f64, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
    (0..total)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let s = (u * sc.speed_spread.ln()).exp();
            (s, s)
        })
        .collect()
}

impl Sim {
    /// A simulation of `sc` under `seed`.
    pub fn new(sc: &Scenario, seed: u64) -> Result<Self, SimError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let total = sc.nodes + sc.joins.iter().map(|j| j.count).sum::<usize>();
        let keys: Vec<Keypair> = (0..total)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut b);
                Keypair::from_secret_bytes(b)
            })
            .collect();
        let mut behaviours: Vec<Option<Behaviour>> = vec![None; total];
        let mut next = sc.nodes;
        for b in &sc.byzantine {
            for _ in 0..b.count {
                next -= 1;
                if next == 0 {
                    return Err(SimError::ByzantineCreator);
                }
                behaviours[next] = Some(b.behaviour);
            }
        }
        let mut roster: Vec<PeerKey> = keys[..sc.nodes].iter().map(Keypair::public).collect();
        roster.sort();
        roster.truncate(hivemesh_protocol::spec::MAX_ROSTER);
        let spec = spec_for(sc, roster.clone(), &sc.name);
        spec.validate()?;
        let other = spec_for(sc, roster, "another campaign");
        let other_claim = Signed::sign_and_encode(
            Claim {
                campaign: other.id(),
                job: JobId([9; 32]),
                slots: 1,
                job_ms: 0,
                issued_at: Timestamp::from_millis(0),
            },
            &keys[0],
        )
        .ok()
        .map(|s| s.bytes().to_vec());
        let nodes = new_nodes(keys, behaviours);
        let mut sim = Sim {
            sc: sc.clone(),
            campaign: spec.id(),
            spec,
            other_campaign_claim: other_claim,
            rng,
            now: 0,
            queue: Calendar::default(),
            node_of: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.key.public(), i as u32))
                .collect(),
            nodes,
            log: Vec::new(),
            log_route: Vec::new(),
            routes: HashMap::new(),
            job_route: HashMap::new(),
            derivations: sc.share_derivation.then(DerivationCache::default),
            log_ids: HashMap::new(),
            pending: Vec::new(),
            rejected_at_ingress: 0,
            jobs_by_id: HashMap::new(),
            speeds: speeds(sc, seed, total),
            executions: 0,
            first_entered: BTreeMap::new(),
            events: 0,
            check_finished: false,
            pool: None,
            parallel: false,
        };
        sim.start_nodes(0..sc.nodes);
        sim.schedule_faults_and_joins();
        Ok(sim)
    }

    /// Queues the scenario's crashes, restarts, partitions, heals and joins.
    fn schedule_faults_and_joins(&mut self) {
        let faults = self.sc.faults.clone();
        let joins: Vec<u64> = self.sc.joins.iter().map(|j| j.at_ms).collect();
        for (index, f) in faults.iter().enumerate() {
            let index = index as u32;
            match f {
                Fault::Crash {
                    at_ms, restart_ms, ..
                } => {
                    self.push(
                        *at_ms,
                        Event::Fault {
                            index,
                            restart: false,
                        },
                    );
                    if let Some(r) = restart_ms {
                        self.push(
                            *r,
                            Event::Fault {
                                index,
                                restart: true,
                            },
                        );
                    }
                }
                Fault::Slow { at_ms, .. } => {
                    self.push(
                        *at_ms,
                        Event::Fault {
                            index,
                            restart: false,
                        },
                    );
                }
                Fault::Partition { at_ms, heal_ms, .. } => {
                    self.push(
                        *at_ms,
                        Event::Fault {
                            index,
                            restart: false,
                        },
                    );
                    self.push(*heal_ms, Event::Heal { index });
                }
            }
        }
        for (index, at_ms) in joins.into_iter().enumerate() {
            let index = index as u32;
            self.push(at_ms, Event::Join { index });
        }
    }

    fn push(&mut self, at: u64, e: Event) {
        self.queue.push(at, e);
    }

    /// With sharded evidence: the receivers of each shard of node `i`'s current generation,
    /// computed once per generation from the first node to enter it (every honest node derives
    /// the same ranking from the same closure).
    fn ensure_route(&mut self, i: usize) {
        let shards = self.sc.evidence_shards;
        if shards == 0 {
            return;
        }
        let Some(peer) = self.nodes[i].peer.as_ref() else {
            return;
        };
        let g = peer.generation();
        if self.routes.contains_key(&g) {
            return;
        }
        let mut base: Vec<u32> = peer
            .voters()
            .iter()
            .filter_map(|p| self.node_of.get(p).copied())
            .collect();
        base.extend(
            (0..self.nodes.len())
                .filter(|&n| self.audit_mode(n))
                .map(|n| n as u32),
        );
        // One list per shard, then the membership topic (heartbeats): voters only, as the
        // roster rule and eviction are checked by voters alone.
        let mut lists = vec![base; shards as usize + 1];
        for (job, executors) in peer.ranked_executors() {
            let shard = shard_of(&job, shards);
            self.job_route.insert(job, (g, shard));
            lists[shard as usize].extend(executors.iter().filter_map(|p| self.node_of.get(p)));
        }
        let lists = lists
            .into_iter()
            .map(|mut l| {
                l.sort_unstable();
                l.dedup();
                Arc::from(l)
            })
            .collect();
        self.routes.insert(g, lists);
    }

    /// The membership topic's receivers in generation `g` (the voters and audit-mode nodes),
    /// the last list of `routes` (see `log_route`).
    fn membership(&self, g: u32) -> Option<Arc<[u32]>> {
        self.routes.get(&g).and_then(|l| l.last().cloned())
    }

    /// The receivers of logged message `m`, or `None` for every node.
    fn receivers(&self, m: usize) -> Option<Arc<[u32]>> {
        let (g, shard) = self.log_route.get(m).copied().flatten()?;
        self.routes.get(&g).map(|l| l[shard as usize].clone())
    }

    fn audit_mode(&self, i: usize) -> bool {
        (1..=self.sc.auditors).contains(&i) || self.nodes[i].behaviour == Some(Behaviour::Slander)
    }

    /// Brings node `i` up (from its store after a crash) without letting it act yet.
    fn boot(&mut self, i: usize) {
        let config = PeerConfig {
            capacity: self.capacity_of(i),
            join_heartbeat_ms: self.sc.sync_interval_ms,
            max_joins_per_generation: self.nodes.len(),
            audit: self.audit_mode(i),
            ..PeerConfig::default()
        };
        let (spec, key, now) = (
            self.spec.clone(),
            self.nodes[i].key.clone(),
            Timestamp::from_millis(self.now),
        );
        let peer = match &self.derivations {
            Some(cache) => Peer::with_derivation_cache(spec, key, config, now, cache.clone()),
            None => Peer::new(spec, key, config, now),
        };
        let Ok(peer) = peer else { return };
        // Node 0 created the campaign: its regenesis ends a stalled vote (ADR 0006).
        let peer = peer.with_creator(self.nodes[0].key.public());
        self.nodes[i].peer = Some(peer);
        self.nodes[i].up = true;
        self.nodes[i].wake_at = None;
        self.nodes[i].waiting_copy.clear();
        // Restart from the store: replay what this node had, in arrival-log order.
        let had: Vec<usize> = self.nodes[i].have.ones(self.log.len());
        self.ensure_route(i);
        self.run_now(i, had.into_iter().map(|m| Work::Replay(m as u32)).collect());
        let jitter = uniform(&mut self.rng, 0, self.sc.sync_interval_ms);
        self.push(self.now + jitter, Event::Sync { node: i as u32 });
        if self.nodes[i].behaviour == Some(Behaviour::Spam)
            || self.nodes[i].behaviour == Some(Behaviour::Forge)
            || self.nodes[i].behaviour == Some(Behaviour::Replay)
        {
            self.push(self.now + 1_000, Event::Spam { node: i as u32 });
        }
    }

    /// Starts node `i` and lets it act.
    fn start_node(&mut self, i: usize) {
        self.boot(i);
        self.run_now(i, vec![Work::Tick]);
    }

    /// Starts nodes together: every one is up before any acts, so what the first sends at
    /// the start (heartbeats, claims) reaches the others too.
    fn start_nodes(&mut self, nodes: std::ops::Range<usize>) {
        for i in nodes.clone() {
            self.boot(i);
        }
        for i in nodes {
            self.run_now(i, vec![Work::Tick]);
        }
    }

    /// Runs the nodes of a window on `threads` worker threads (1: on the calling thread).
    pub fn threads(mut self, threads: usize) -> Result<Self, SimError> {
        self.pool = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("netsim-{i}"))
                .build()
                .map_err(|e| SimError::Threads {
                    threads,
                    reason: e.to_string(),
                })?;
            Some(pool)
        } else {
            None
        };
        Ok(self)
    }

    /// Runs to completion (or the time limit) and reports.
    ///
    /// Events are taken in windows: every delivery, finished job and timer due before the
    /// window's end, which is at most the minimum latency after its start, or an event that
    /// touches more than one node (a barrier, handled on its own). Within a window the nodes
    /// are independent: what one sends cannot reach another before the window ends, so each
    /// node's inputs run in order on its own (on the worker threads), and what they leave to
    /// do is then applied in the order a one-event-at-a-time loop would have: by time, then
    /// push order. The run is the same for any number of threads.
    pub fn run(mut self) -> RunReport {
        // The whole loop runs on a worker of the pool: a window's nodes then start on this
        // thread at once, and only the other workers are woken (and go idle) per window.
        match self.pool.take() {
            Some(pool) => {
                self.parallel = true;
                pool.install(move || self.run_loop())
            }
            None => self.run_loop(),
        }
    }

    fn run_loop(mut self) -> RunReport {
        let window = self.sc.latency_ms.min.max(1);
        while let Some((t0, first)) = self.queue.peek() {
            if t0 > self.sc.max_time_ms {
                break;
            }
            if first.is_barrier() {
                self.queue.pop();
                self.now = t0;
                self.events += 1;
                self.barrier(first);
            } else {
                self.window((t0 + window).min(self.sc.max_time_ms + 1));
            }
            if self.check_finished && self.all_honest_finished() {
                break;
            }
            self.check_finished = false;
        }
        if std::env::var_os("NETSIM_DEBUG").is_some() {
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if let Some(p) = n.peer.as_mut().filter(|p| !p.finished()) {
                    eprintln!("node {i}: {}", p.status_line());
                }
            }
        }
        self.report()
    }

    /// Handles an event that acts on more than one node.
    fn barrier(&mut self, e: Event) {
        match e {
            Event::Sync { node } => self.sync(node as usize),
            Event::Fault { index, restart } => self.fault(index as usize, restart),
            Event::Heal { .. } => {
                for n in &mut self.nodes {
                    n.group = 0;
                }
            }
            Event::Join { index } => {
                let index = index as usize;
                let before = self.sc.nodes
                    + self.sc.joins[..index]
                        .iter()
                        .map(|j| j.count)
                        .sum::<usize>();
                self.start_nodes(before..before + self.sc.joins[index].count);
            }
            Event::Spam { node } => self.spam(node as usize),
            Event::Deliver { .. } | Event::JobDone { .. } | Event::Wake { .. } => {
                unreachable!("not a barrier")
            }
        }
    }

    /// Takes the node events due before `end` (or before the first barrier event), runs each
    /// node's share, and applies the effects in order.
    fn window(&mut self, end: u64) {
        let mut end = end;
        let mut last = self.now;
        // The inputs, then grouped by node (a stable sort keeps each node's in pop order).
        let mut inputs: Vec<(u32, Item)> = Vec::new();
        while let Some((at, e)) = self.queue.peek() {
            if at >= end {
                break;
            }
            if e.is_barrier() {
                // Events at `at` pushed before it are in this window; the barrier and what
                // follows it are not, and nothing this window does may land before it.
                end = at;
                break;
            }
            self.queue.pop();
            self.events += 1;
            last = at;
            let (node, work) = match e {
                Event::Deliver { to, msg } => (to, Work::Deliver(msg)),
                Event::JobDone { node, pending } => (
                    node,
                    Work::JobDone(
                        self.pending
                            .get_mut(pending as usize)
                            .and_then(Option::take),
                    ),
                ),
                Event::Wake { node } => (node, Work::Wake),
                _ => unreachable!("barriers end the window"),
            };
            let seq = inputs.len() as u64;
            inputs.push((node, Item { at, seq, work }));
        }
        // A barrier right at the start: the loop in `run` takes it next.
        if inputs.is_empty() {
            return;
        }
        // Timers set within the window order after every event of their millisecond.
        let seq = inputs.len() as u64;
        inputs.sort_by_key(|&(node, _)| node);
        let view = View {
            log: &self.log,
            campaign: self.campaign,
        };
        // Each node with inputs, with its share of them.
        let mut work: Vec<(&mut Node, &mut [(u32, Item)])> = Vec::new();
        let mut nodes: &mut [Node] = &mut self.nodes;
        let mut base = 0usize;
        let mut rest: &mut [(u32, Item)] = &mut inputs;
        while let Some(&(node, _)) = rest.first() {
            let count = rest.iter().take_while(|(n, _)| *n == node).count();
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(count);
            rest = tail;
            let node = node as usize;
            let (_, after) = std::mem::take(&mut nodes).split_at_mut(node - base);
            let (n, after) = after
                .split_first_mut()
                .expect("event for a node that exists");
            nodes = after;
            base = node + 1;
            work.push((n, mine));
        }
        let run = |(n, items): (&mut Node, &mut [(u32, Item)])| {
            let items = items.iter_mut().map(|(_, i)| Item {
                at: i.at,
                seq: i.seq,
                work: std::mem::replace(&mut i.work, Work::Wake),
            });
            n.step(&view, items, end, seq)
        };
        let mut batches: Vec<Batch> = if self.parallel && work.len() > 1 {
            use rayon::prelude::*;
            work.into_par_iter().flat_map_iter(run).collect()
        } else {
            work.into_iter().flat_map(run).collect()
        };
        batches.sort_unstable_by_key(|b| (b.at, b.seq, b.node));
        self.apply(batches, end);
        self.now = self.now.max(last);
    }

    /// Job slots of node `i`.
    fn capacity_of(&self, i: usize) -> u16 {
        self.sc
            .slots
            .iter()
            .find(|s| s.node == i)
            .map_or(self.sc.capacity, |s| s.count)
    }

    /// A job's time on a node of speed 1 (`per_job_times`): drawn from the job id, so every
    /// executor of the job gets the same.
    fn job_base_ms(&self, job: &JobId) -> u64 {
        let h = blake3::hash(&[job.as_bytes().as_slice(), b"netsim job time"].concat());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        let span = self.sc.job_time_ms.max - self.sc.job_time_ms.min + 1;
        self.sc.job_time_ms.min + u64::from_le_bytes(b) % span
    }

    fn honest(&self, i: usize) -> bool {
        self.nodes[i].behaviour.is_none()
    }

    fn all_honest_finished(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| !self.honest(i) || !n.up || n.peer.as_ref().is_some_and(Peer::finished))
    }

    fn fault(&mut self, index: usize, restart: bool) {
        match self.sc.faults[index].clone() {
            Fault::Crash { node, .. } => {
                if restart {
                    if !self.nodes[node].up {
                        self.start_node(node);
                    }
                } else {
                    self.nodes[node].up = false;
                    self.nodes[node].peer = None;
                    self.check_finished = true;
                }
            }
            Fault::Slow { node, factor, .. } => {
                self.speeds[node].0 /= f64::from(factor.max(1));
            }
            Fault::Partition { groups, .. } => {
                for n in &mut self.nodes {
                    n.group = groups.len() + 1;
                }
                for (g, members) in groups.iter().enumerate() {
                    for &m in members {
                        self.nodes[m].group = g + 1;
                    }
                }
            }
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[b].up && self.nodes[a].group == self.nodes[b].group
    }

    /// Verifies (once) and logs a message; returns its log index, or `None` if rejected.
    fn intern(&mut self, msg: AnySigned) -> Option<usize> {
        let id = msg.id();
        if let Some(&i) = self.log_ids.get(&id) {
            return Some(i);
        }
        if self.sc.verify {
            let ctx = Context::sync(self.campaign);
            if AnySigned::verify_and_decode(msg.bytes(), &ctx).is_err() {
                self.rejected_at_ingress += 1;
                return None;
            }
        }
        let job = match &msg {
            AnySigned::Claim(s) => Some(s.message().job),
            AnySigned::Commitment(s) => Some(s.message().job),
            AnySigned::Reveal(s) => Some(s.message().job),
            _ => None,
        };
        let route = match (&msg, job) {
            (_, Some(j)) => self.job_route.get(&j).copied(),
            (AnySigned::Heartbeat(h), None) => {
                let g = h.message().generation;
                self.routes
                    .contains_key(&g)
                    .then_some((g, self.sc.evidence_shards))
            }
            _ => None,
        };
        let i = self.log.len();
        self.log_route.push(route);
        self.log.push(Arc::new(msg));
        self.log_ids.insert(id, i);
        Some(i)
    }

    /// Logs `msg` from node `from` and schedules its deliveries, none before `floor`.
    fn broadcast(&mut self, from: usize, msg: AnySigned, floor: u64) {
        let Some(m) = self.intern(msg) else { return };
        self.nodes[from].have.set(m);
        let receivers = self.receivers(m);
        let count = receivers.as_ref().map_or(self.nodes.len(), |r| r.len());
        for k in 0..count {
            let to = receivers.as_ref().map_or(k, |r| r[k] as usize);
            if to == from || !self.reachable(from, to) {
                continue;
            }
            if chance(&mut self.rng, self.sc.loss) {
                continue;
            }
            let lat = uniform(
                &mut self.rng,
                self.sc.latency_ms.min,
                self.sc.latency_ms.max,
            );
            self.push(
                (self.now + lat).max(floor),
                Event::Deliver {
                    to: to as u32,
                    msg: m as u32,
                },
            );
        }
    }

    /// Raw bytes from a misbehaving node: checked as a receiver's gossip validator would.
    fn broadcast_bytes(&mut self, from: usize, bytes: &[u8]) {
        let ctx = Context::gossip(self.campaign, Timestamp::from_millis(self.now));
        match AnySigned::verify_and_decode(bytes, &ctx) {
            Ok(m) => self.broadcast(from, m, self.now),
            Err(_) => {
                // Each reachable neighbour rejects it and penalises the sender; it spreads no
                // further.
                self.rejected_at_ingress += 1;
                self.nodes[from].rejected += 1;
            }
        }
    }

    /// Runs node `i`'s `work` now, on its own (a barrier event or a start), and applies what
    /// it left to do.
    fn run_now(&mut self, i: usize, work: Vec<Work>) {
        let at = self.now;
        let items = work.into_iter().enumerate().map(|(seq, work)| Item {
            at,
            seq: seq as u64,
            work,
        });
        let view = View {
            log: &self.log,
            campaign: self.campaign,
        };
        // `end` = now: every timer the node sets goes to the queue.
        let batches = self.nodes[i].step(&view, items, self.now, 0);
        self.apply(batches, self.now);
    }

    /// Applies nodes' effects in order; nothing is scheduled before `floor` (the end of the
    /// window the effects come from: those inputs are done).
    fn apply(&mut self, batches: Vec<Batch>, floor: u64) {
        for b in batches {
            self.now = b.at;
            let i = b.node as usize;
            for e in b.effects {
                match e {
                    Effect::Broadcast(m) => self.broadcast(i, m, floor),
                    Effect::Execute { id, job, run } => {
                        self.jobs_by_id.entry(id).or_insert(job);
                        let Some(outcome) = run else { continue };
                        if self.honest(i) {
                            self.executions += 1;
                        }
                        let base = if self.sc.per_job_times {
                            self.job_base_ms(&id)
                        } else {
                            uniform(
                                &mut self.rng,
                                self.sc.job_time_ms.min,
                                self.sc.job_time_ms.max,
                            )
                        };
                        let took = ((base as f64 / self.speeds[i].0).round() as u64).max(1);
                        let result = JobResult {
                            outcome,
                            wall_time_ms: took,
                        };
                        self.job_done_at((self.now + took).max(floor), i, id, result);
                    }
                    Effect::Ready(job, result) => {
                        self.job_done_at((self.now + 1).max(floor), i, job, result);
                    }
                    Effect::Closed { generation } => {
                        if i == 0 && std::env::var_os("NETSIM_DEBUG").is_some() {
                            eprintln!(
                                "node 0 closed generation {generation} at {} ms holding {} heartbeats",
                                self.now,
                                self.nodes[0]
                                    .peer
                                    .as_ref()
                                    .map_or(0, |p| p.ledger().heartbeats().count())
                            );
                        }
                        self.first_entered.entry(generation + 1).or_insert(self.now);
                        self.ensure_route(i);
                    }
                    Effect::Finished => self.check_finished = true,
                    Effect::Wake(at) => self.push(at.max(floor), Event::Wake { node: b.node }),
                }
            }
        }
    }

    fn job_done_at(&mut self, at: u64, node: usize, job: JobId, result: JobResult) {
        let p = self.pending.len();
        self.pending.push(Some(Box::new((job, result))));
        self.push(
            at,
            Event::JobDone {
                node: node as u32,
                pending: p as u32,
            },
        );
    }

    fn sync(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let next = self.now + self.sc.sync_interval_ms;
        let finished = self.nodes[i].peer.as_ref().is_some_and(Peer::finished);
        if !finished {
            self.push(next, Event::Sync { node: i as u32 });
        }
        // With sharded evidence a node repairs from peers that hold its topics, as gossipsub
        // repairs within a topic's mesh: the current generation's voters hold every topic.
        // Flooded, any peer will do.
        let voters = self.nodes[i]
            .peer
            .as_ref()
            .filter(|_| self.sc.evidence_shards > 0)
            .and_then(|p| self.membership(p.generation()));
        let mut candidates: Vec<usize> = voters
            .iter()
            .flat_map(|v| v.iter().map(|&j| j as usize))
            .filter(|&j| j != i && self.reachable(i, j))
            .collect();
        if candidates.is_empty() {
            candidates = (0..self.nodes.len())
                .filter(|&j| j != i && self.reachable(i, j))
                .collect();
        }
        if candidates.is_empty() {
            return;
        }
        let j = candidates[(self.rng.next_u64() % candidates.len() as u64) as usize];
        // The topics node `i` subscribes to, per generation with routes (looked up once per
        // sync: `j` may hold tens of thousands of messages `i` lacks, most on other topics).
        let subscribed: Vec<(u32, Vec<bool>)> = self
            .routes
            .iter()
            .map(|(&g, lists)| {
                let mine = lists
                    .iter()
                    .map(|l| l.binary_search(&(i as u32)).is_ok())
                    .collect();
                (g, mine)
            })
            .collect();
        let interested = |m: usize| match self.log_route.get(m).copied().flatten() {
            None => true,
            Some((g, shard)) => subscribed
                .iter()
                .find(|(h, _)| *h == g)
                .is_none_or(|(_, mine)| mine[shard as usize]),
        };
        let missing: Vec<Work> = self.nodes[j]
            .have
            .missing_from(&self.nodes[i].have, self.log.len())
            .into_iter()
            .filter(|&m| interested(m))
            .map(|m| Work::Deliver(m as u32))
            .collect();
        self.run_now(i, missing);
    }

    fn spam(&mut self, i: usize) {
        if !self.nodes[i].up || self.nodes[i].peer.as_ref().is_some_and(Peer::finished) {
            return;
        }
        match self.nodes[i].behaviour {
            Some(Behaviour::Spam) => {
                let mut junk = vec![0u8; 64 + (self.rng.next_u64() % 512) as usize];
                self.rng.fill_bytes(&mut junk);
                self.broadcast_bytes(i, &junk);
                // An oversized but well-framed reveal, signed for real.
                let big = vec![0u8; Kind::Reveal.max_body_len() + 1];
                let bytes = seal(Kind::Reveal as u8, &big, &self.nodes[i].key);
                self.broadcast_bytes(i, &bytes);
            }
            Some(Behaviour::Forge) => {
                // Claims in another node's name: the signature cannot match.
                let victim = self.nodes[0].key.public();
                let claim = Claim {
                    campaign: self.campaign,
                    job: JobId([self.rng.next_u32() as u8; 32]),
                    slots: 1,
                    job_ms: 0,
                    issued_at: Timestamp::from_millis(self.now),
                };
                if let Ok(s) = Signed::sign_and_encode(claim, &self.nodes[i].key) {
                    let mut bytes = s.bytes().to_vec();
                    let n = bytes.len();
                    bytes[n - 96..n - 64].copy_from_slice(victim.as_bytes());
                    self.broadcast_bytes(i, &bytes);
                }
            }
            Some(Behaviour::Replay) => {
                if let Some(b) = self.other_campaign_claim.clone() {
                    self.broadcast_bytes(i, &b);
                }
            }
            _ => return,
        }
        self.push(self.now + 1_000, Event::Spam { node: i as u32 });
    }
}

/// Runs `sc` under `seed`.
/// Runs `sc` under `seed` on this thread.
pub fn run(sc: &Scenario, seed: u64) -> Result<RunReport, SimError> {
    run_threads(sc, seed, 1)
}

/// Runs `sc` under `seed` with the nodes of each window spread over `threads` threads; the
/// report is the same for any number.
pub fn run_threads(sc: &Scenario, seed: u64, threads: usize) -> Result<RunReport, SimError> {
    let mut r = Sim::new(sc, seed)?.threads(threads)?.run();
    r.seed = seed;
    Ok(r)
}
