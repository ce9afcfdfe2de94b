//! What the nodes hold after the run: each node's view, the agreed settled jobs, standings
//! and jobs (from the first running honest node), the blobs a re-run needs, and the agreed
//! distillation shards ([`collect_shards`]). With `--processes` the children are stopped and
//! their stores opened here, offline.

use std::collections::BTreeMap;

use hivemesh_node::daemon::{Client, SettledJob};
use hivemesh_node::executor::{job_blobs, needed_blobs};
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{CampaignKind, CampaignSpec, JobSpec};
use hivemesh_protocol::standings::JobStatus;
use hivemesh_protocol::{CampaignId, PeerKey, PeerScore};
use hivemesh_trainer::distill::ShardLabels;
use hivemesh_trainer::lm::distill::TextLabels;

use super::ClusterError;
use super::config::{ClusterConfig, Role};
use super::nodes::{Handle, Running, open_offline};
use super::outcome::{NodeView, ShardFile, ShardView};
use super::run_loop::Tally;

/// A node's message counters as its process last reported them.
#[derive(Debug, Clone, Copy, Default)]
struct MessageCounts {
    /// Messages validated.
    validated: u64,
    /// Messages refused.
    rejected: u64,
}

/// What the stopped children used and last said.
#[derive(Debug, Default)]
struct Stopped {
    /// CPU seconds of every child, killed ones included.
    cpu: f64,
    /// Each child's last message counters.
    counts: BTreeMap<usize, MessageCounts>,
}

/// A campaign's spec and every job of it, as a node derived them.
#[derive(Debug, Clone)]
pub(super) struct Rerun {
    /// The spec.
    pub(super) spec: CampaignSpec,
    /// Every job.
    pub(super) jobs: Vec<JobSpec>,
}

/// What the agreed ledger holds (read at the first running honest node).
#[derive(Debug, Default)]
pub(super) struct Agreed {
    /// The settled jobs.
    pub(super) jobs: Vec<SettledJob>,
    /// Every peer's standing.
    pub(super) scores: Vec<(PeerKey, PeerScore)>,
    /// The campaign's spec and jobs, for the overhead re-run.
    pub(super) rerun: Option<Rerun>,
    /// The blobs those jobs need.
    pub(super) blobs: BTreeMap<BlobId, Vec<u8>>,
    /// The campaign's status there (a prompt campaign's spending and front).
    pub(super) status: Option<hivemesh_node::daemon::CampaignStatus>,
    /// Whether a node knew the campaign's settled jobs (if not, the next honest node is
    /// asked).
    found: bool,
}

/// Everything read from the nodes after the run.
pub(super) struct Collected {
    /// Every node's view, by index.
    pub(super) views: Vec<NodeView>,
    /// The agreed ledger.
    pub(super) agreed: Agreed,
    /// The agreed shards' bytes, from whichever node held each.
    pub(super) shard_bytes: BTreeMap<BlobId, Vec<u8>>,
    /// CPU seconds the cluster used (`None` where it cannot be measured).
    pub(super) swarm_cpu: Option<f64>,
}

/// One line per running node on where it stands (for a timeout).
pub(super) async fn states(
    cfg: &ClusterConfig,
    id: CampaignId,
    nodes: &[Option<Running>],
) -> String {
    let mut states = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n
            && let Some(line) = n.handle.state_line(id).await
        {
            states.push_str(&format!("node {i} ({:?}): {line}\n", cfg.role(i)));
        }
    }
    states
}

/// Stops every running node.
pub(super) async fn stop_all(nodes: Vec<Option<Running>>) {
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

/// Stops every child process (noting its CPU seconds and counters) and opens its store here.
async fn stop_processes(
    cfg: &ClusterConfig,
    nodes: &mut [Option<Running>],
    killed_cpu: f64,
) -> Result<Stopped, ClusterError> {
    let mut out = Stopped {
        cpu: killed_cpu,
        ..Stopped::default()
    };
    let mut reopen = Vec::new();
    for (i, slot) in nodes.iter_mut().enumerate() {
        let Some(n) = slot.take() else { continue };
        if let Handle::Process(p) = &n.handle
            && let Ok(st) = p.get_json("/status").await
        {
            let counts = MessageCounts {
                validated: st["messages_validated"].as_u64().unwrap_or(0),
                rejected: st["messages_rejected"].as_u64().unwrap_or(0),
            };
            out.counts.insert(i, counts);
        }
        out.cpu += n.stop().await;
        reopen.push(i);
    }
    for i in reopen {
        nodes[i] = Some(open_offline(cfg, i).await?);
    }
    Ok(out)
}

impl Agreed {
    /// Reads the ledger as `n` (node `i`) holds it; blobs add to those already read.
    async fn read(
        &mut self,
        n: &Client,
        i: usize,
        id: CampaignId,
        spec: &CampaignSpec,
    ) -> Result<(), ClusterError> {
        let stopped = |_| ClusterError::Stopped(i);
        let jobs = n.settled(id).await.map_err(stopped)?;
        self.found = jobs.is_some();
        self.jobs = jobs.unwrap_or_default();
        self.scores = n.scores(id).await.map_err(stopped)?.unwrap_or_default();
        self.status = n.campaign(id).await.map_err(stopped)?;
        self.rerun = n
            .jobs(id)
            .await
            .map_err(stopped)?
            .map(|(spec, jobs)| Rerun { spec, jobs });
        // The campaign's blobs, and each job's own (a training round's base and updates).
        let per_job = self
            .rerun
            .iter()
            .flat_map(|r| r.jobs.iter().flat_map(|j| job_blobs(spec, j)));
        let wanted: Vec<BlobId> = needed_blobs(spec)
            .into_iter()
            .chain(per_job)
            .map(|(b, _)| b)
            .collect();
        for b in wanted {
            if !self.blobs.contains_key(&b)
                && let Ok(Some(bytes)) = n.blob(b).await
            {
                self.blobs.insert(b, bytes);
            }
        }
        Ok(())
    }
}

/// Reads every node after the run: stops children first (`--processes`), then asks each
/// node in this process for its view, and the first running honest node for the ledger.
pub(super) async fn collect(
    cfg: &ClusterConfig,
    id: CampaignId,
    spec: &CampaignSpec,
    keys: &[PeerKey],
    nodes: &mut [Option<Running>],
    tally: &Tally,
    cpu0: Option<f64>,
) -> Result<Collected, ClusterError> {
    let stopped = if cfg.processes.is_some() {
        Some(stop_processes(cfg, nodes, tally.killed_cpu).await?)
    } else {
        None
    };
    let swarm_cpu = match &stopped {
        Some(s) => Some(s.cpu),
        None => match (cpu0, super::overhead::process_cpu_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
    };
    let counts = stopped.map(|s| s.counts).unwrap_or_default();
    let mut views = Vec::new();
    let mut agreed = Agreed::default();
    for (i, n) in nodes.iter().enumerate() {
        let role = cfg.role(i);
        let mut view = NodeView {
            index: i,
            role,
            key: keys[i].to_string(),
            up: false,
            finished: false,
            closures: Vec::new(),
            jobs_trained: tally.per_node[i],
            messages_validated: 0,
            messages_rejected: 0,
        };
        if let Some(n) = n.as_ref().and_then(Running::client) {
            let c = n.campaign(id).await.map_err(|_| ClusterError::Stopped(i))?;
            let st = n.status().await.map_err(|_| ClusterError::Stopped(i))?;
            if role != Role::Byzantine && !agreed.found {
                agreed.read(n, i, id, spec).await?;
            }
            let c0 = counts.get(&i).copied();
            view.up = true;
            view.finished = tally.finished.contains(&i);
            view.closures = c.map(|c| c.closures).unwrap_or_default();
            view.messages_validated = c0.map_or(st.messages_validated, |s| s.validated);
            view.messages_rejected = c0.map_or(st.messages_rejected, |s| s.rejected);
        }
        views.push(view);
    }
    let shard_bytes = shard_bytes(cfg, nodes, &agreed.jobs).await;
    Ok(Collected {
        views,
        agreed,
        shard_bytes,
        swarm_cpu,
    })
}

/// Distillation: the agreed shards' bytes, from whichever running node holds each (honest
/// nodes first).
async fn shard_bytes(
    cfg: &ClusterConfig,
    nodes: &[Option<Running>],
    jobs: &[SettledJob],
) -> BTreeMap<BlobId, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut order: Vec<&Client> = Vec::new();
    for honest_first in [true, false] {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n.as_ref().and_then(Running::client)
                && (cfg.role(i) != Role::Byzantine) == honest_first
            {
                order.push(n);
            }
        }
    }
    for j in jobs
        .iter()
        .filter(|j| j.payload.0 == CampaignKind::Distill.name())
    {
        let Some(b) = j.artifacts.first().and_then(|a| a.parse::<BlobId>().ok()) else {
            continue;
        };
        for n in &order {
            if let Ok(Some(bytes)) = n.blob(b).await
                && BlobId::of_bytes(&bytes) == b
            {
                out.insert(b, bytes);
                break;
            }
        }
    }
    out
}

/// The distillation shards of a run, and the verified ones' files.
#[derive(Debug, Default)]
pub(super) struct Shards {
    /// Every shard, by first sample.
    pub(super) views: Vec<ShardView>,
    /// The verified shards' files.
    pub(super) files: Vec<ShardFile>,
}

/// The distillation shards of `jobs` (the agreed settled jobs), checked against the bytes
/// found at the nodes: each must hash to its agreed id and parse as a shard of its range (an
/// image shard of samples, or a text shard of windows).
pub(super) fn collect_shards(jobs: &[SettledJob], bytes: &BTreeMap<BlobId, Vec<u8>>) -> Shards {
    let mut out = Shards::default();
    for j in jobs
        .iter()
        .filter(|j| j.payload.0 == CampaignKind::Distill.name())
    {
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
        // An image shard (HMKD) of samples, or a text shard (HMTK) of windows.
        let image = found.is_some_and(|b| {
            ShardLabels::from_bytes(b)
                .is_ok_and(|s| s.start == start && s.len() as u64 == end - start)
        });
        let text = found.is_some_and(|b| {
            TextLabels::from_bytes(b)
                .is_ok_and(|s| s.start == start && s.windows() as u64 == end - start)
        });
        let verified = j.status == JobStatus::Success && (image || text);
        let ext = if text { "hmtk" } else { "hmkd" };
        let file = verified.then(|| format!("{start:09}-{end:09}.{ext}"));
        if let (Some(name), Some(b)) = (&file, found) {
            out.files.push(ShardFile {
                name: name.clone(),
                bytes: b.clone(),
            });
        }
        out.views.push(ShardView {
            job: j.job.clone(),
            start,
            end,
            status: j.status,
            blob,
            agreeing: j.agreeing.len(),
            teacher_accuracy: j.accuracy,
            verified,
            file,
        });
    }
    out.views.sort_by_key(|v| v.start);
    out
}
