//! Tier 2: a cluster of real hivemesh nodes in this process, on loopback TCP (libp2p with
//! noise and yamux, gossipsub, Kademlia, redb stores, real training), running one campaign
//! under injected faults, and what it ends with: a [`ClusterReport`].
//!
//! Faults that apply to real nodes:
//! * **Byzantine executors** ([`Byzantine`]): wrong results (`lie`: every node set to lie
//!   returns the same wrong count, so two of them can form a quorum), or corrupt blobs
//!   (`corrupt-blobs`: they serve flipped bytes to peers fetching a reference model or teacher),
//!   or garbage updates (`noise`: a training round's update is random noise, sketched like a
//!   real one; other results lie);
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

mod collect;
mod config;
mod faults;
mod grade;
mod nodes;
mod outcome;
mod overhead;
mod private;
mod rounds;
mod run_loop;
mod submission;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh_node::daemon::{self, NodeError};
use hivemesh_protocol::PeerKey;
use hivemesh_protocol::standings::JobStatus;
use libp2p::Multiaddr;
use tokio::sync::mpsc;

pub use config::{ClusterConfig, DEFAULT_CAMPAIGN, Kill, Overrides, Partition, Role};
/// How a Byzantine node misbehaves: the node's own [`Fault`](hivemesh_node::fault::Fault).
pub use hivemesh_node::fault::Fault as Byzantine;
pub use nodes::node_key;
pub use outcome::{
    ClusterReport, FaultEvent, GenerationView, NodeView, Overhead, ShardFile, ShardView, Standing,
};
pub use overhead::process_cpu_seconds;
pub use private::{PrivateSplit, private_name};
pub use rounds::{RoundLine, round_lines};

use collect::Collected;
pub use grade::Grade;
use grade::GradeInput;
use nodes::{EVENT_CAPACITY, Events, NodeMessage, Running, start_node};
use run_loop::{Campaign, Ended, RunLoop};
use submission::{Submitted, generations_of, kind_of, submit_campaign, total_jobs};

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
    /// The campaign file's blobs could not be prepared.
    #[error("cluster: {0}")]
    Submit(#[from] hivemesh_node::submit::SubmitError),
    /// The creator would refuse the campaign (invalid, or a roster too small for its jobs).
    #[error("cluster: the campaign cannot run: {0}")]
    Refusal(#[from] hivemesh_node::submit::Refusal),
    /// The creator (node 0) refused a call.
    #[error("cluster: {0}")]
    Refused(hivemesh_node::daemon::ClientError),
    /// The campaign did not finish in time.
    #[error("the campaign did not finish within {after:?}; where each node stood:\n{states}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// Each running node's protocol state, one line each.
        states: String,
    },
}

impl From<hivemesh_node::daemon::ClientError> for ClusterError {
    /// A call to node 0: stopped, or refused for a reason of its own.
    fn from(e: hivemesh_node::daemon::ClientError) -> ClusterError {
        match e {
            hivemesh_node::daemon::ClientError::Stopped => ClusterError::Stopped(0),
            other => ClusterError::Refused(other),
        }
    }
}

/// A started cluster with its campaign submitted.
struct Setup {
    /// The nodes, by index.
    nodes: Vec<Option<Running>>,
    /// Every node's signing key, by index (the roster).
    keys: Vec<PeerKey>,
    /// The campaign.
    submitted: Submitted,
    /// Where nodes send their events.
    events: Events,
    /// Where the loop hears them.
    heard: mpsc::Receiver<NodeMessage>,
    /// This process's CPU seconds before submission.
    cpu0: Option<f64>,
    /// When the campaign was submitted.
    t0: Instant,
}

/// Starts every node, each bootstrapping from up to three earlier ones: a tree with a back
/// edge, connected from the start, a few hops across.
async fn start_nodes(
    cfg: &ClusterConfig,
    events: &Events,
) -> Result<Vec<Option<Running>>, ClusterError> {
    let mut nodes: Vec<Option<Running>> = Vec::new();
    for i in 0..cfg.nodes {
        let mut boot: Vec<Multiaddr> = Vec::new();
        for j in [0, i / 2, i.saturating_sub(1)] {
            if j < i
                && let Some(Some(n)) = nodes.get(j)
                && !boot.contains(&n.addr)
            {
                boot.push(n.addr.clone());
            }
        }
        nodes.push(Some(start_node(cfg, i, boot, events).await?));
    }
    Ok(nodes)
}

/// Starts the nodes and submits the campaign at the creator; every node is then watched.
async fn setup(cfg: &ClusterConfig) -> Result<Setup, ClusterError> {
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    if let Some(split) = &cfg.private {
        let sizes = private::deal(cfg, split)?;
        if cfg.progress {
            eprintln!("private data dealt (α {}): {sizes:?} records", split.alpha);
        }
    }
    let (events, heard) = mpsc::channel(EVENT_CAPACITY);
    let mut nodes = start_nodes(cfg, &events).await?;
    let keys: Vec<PeerKey> = (0..cfg.nodes)
        .map(|i| node_key(cfg.seed, i).public())
        .collect();
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    let creator = nodes[0].as_ref().ok_or(ClusterError::Stopped(0))?;
    let submitted = submit_campaign(cfg, &creator.handle, &keys).await?;
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some(n) = n {
            n.watch(i, submitted.id, &events);
        }
    }
    Ok(Setup {
        nodes,
        keys,
        submitted,
        events,
        heard,
        cpu0,
        t0,
    })
}

/// Removes the nodes' data unless asked to keep it.
fn clean_up(cfg: &ClusterConfig) {
    if !cfg.keep_data {
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
}

/// The timeout struck: where each node stood; the nodes are stopped.
async fn give_up(
    cfg: &ClusterConfig,
    id: hivemesh_protocol::CampaignId,
    nodes: Vec<Option<Running>>,
) -> ClusterError {
    let states = collect::states(cfg, id, &nodes).await;
    collect::stop_all(nodes).await;
    clean_up(cfg);
    ClusterError::Timeout {
        after: cfg.timeout,
        states,
    }
}

/// Runs a cluster to the end of its campaign (or the timeout) and reports.
pub async fn run(cfg: &ClusterConfig) -> Result<ClusterReport, ClusterError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg.clone());
    let mut s = setup(&cfg).await?;
    let spec = &s.submitted.spec;
    let campaign = Campaign {
        id: s.submitted.id,
        total: total_jobs(spec),
        generations: generations_of(spec),
    };
    let nodes = std::mem::take(&mut s.nodes);
    let run_loop = RunLoop::new(cfg.clone(), campaign, nodes, s.events.clone(), s.t0);
    let mut ended = run_loop.run(s.heard).await?;
    if ended.timed_out {
        return Err(give_up(&cfg, campaign.id, ended.nodes).await);
    }
    let collected = collect::collect(
        &cfg,
        campaign.id,
        &s.submitted.spec,
        &s.keys,
        &mut ended.nodes,
        &ended.tally,
        s.cpu0,
    )
    .await?;
    let nodes = std::mem::take(&mut ended.nodes);
    collect::stop_all(nodes).await;
    let report = report(&cfg, &s.submitted, &s.keys, ended, collected).await;
    clean_up(&cfg);
    Ok(report)
}

/// The report of a finished run: graded, with the overhead measured when asked for.
async fn report(
    cfg: &ClusterConfig,
    submitted: &Submitted,
    keys: &[PeerKey],
    ended: Ended,
    collected: Collected,
) -> ClusterReport {
    let Collected {
        views,
        agreed,
        shard_bytes,
        swarm_cpu,
    } = collected;
    let spec = &submitted.spec;
    let roles = cfg.roles();
    let up: Vec<&[(u32, String)]> = views
        .iter()
        .filter(|v| v.up)
        .map(|v| v.closures.as_slice())
        .collect();
    let grade = grade::grade(&GradeInput {
        roles: &roles,
        keys,
        scores: &agreed.scores,
        strategy: cfg.strategy,
        agreeing: agreed.jobs.iter().map(|j| j.agreeing.as_slice()).collect(),
        closures: up,
    });
    let jobs = agreed.jobs;
    let (counters, prompts, privacy) = agreed
        .status
        .map(|c| (c.counters, c.prompts, c.privacy))
        .unwrap_or_default();
    let shards = collect::collect_shards(&jobs, &shard_bytes);
    let tally = ended.tally;
    let overhead = match (cfg.measure_overhead, swarm_cpu, agreed.rerun) {
        (true, Some(swarm_cpu_s), Some(rerun)) => {
            overhead::measure(overhead::Measure {
                swarm_cpu_s,
                spec: rerun.spec,
                all: rerun.jobs,
                settled: &jobs,
                blobs: agreed.blobs,
                executions: tally.executions,
                redundancy: spec.redundancy,
                progress: cfg.progress,
            })
            .await
        }
        _ => None,
    };
    let settled = jobs.iter().filter(|j| j.status != JobStatus::Void).count();
    let generations = generation_views(&tally);
    let jobs_for_rounds = jobs.clone();
    ClusterReport {
        campaign: submitted.id.to_string(),
        name: spec.name.clone(),
        kind: kind_of(spec).into(),
        nodes: cfg.nodes,
        redundancy: spec.redundancy,
        quorum: spec.quorum,
        strategy: cfg.strategy,
        finished: !ended.timed_out,
        wall_s: ended.wall_s,
        generations,
        node_views: views,
        front: daemon::front(&jobs),
        jobs,
        grade,
        executions: tally.executions,
        jobs_per_minute: settled as f64 / (ended.wall_s / 60.0).max(1e-9),
        progress: tally.samples,
        faults: tally.faults,
        overhead,
        shards: shards.views,
        shard_blobs: shards.files,
        rounds: round_lines(&jobs_for_rounds),
        counters,
        prompts,
        privacy,
    }
}

/// Every closed generation as the report shows it.
fn generation_views(tally: &run_loop::Tally) -> Vec<GenerationView> {
    tally
        .closed
        .iter()
        .map(|(g, c)| {
            let t = tally.generations.get(g).copied();
            GenerationView {
                generation: *g,
                root: c.root.clone(),
                first_closed_s: c.first_s,
                last_closed_s: c.last_s,
                settled: t.map_or(0, |t| t.settled),
                best_accuracy: t.map_or(0.0, |t| t.best),
            }
        })
        .collect()
}
