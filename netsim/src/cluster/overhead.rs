//! The overhead measurement: every settled job run once more on one executor in this
//! process, its CPU seconds set against the swarm's (`swarm / (r × single)`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use hivemesh_node::daemon::{Config, SettledJob};
use hivemesh_node::executor::Executor;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{CampaignSpec, JobSpec};
use hivemesh_protocol::standings::JobStatus;

use super::outcome::Overhead;
use crate::processes;

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; `None` where
/// there is no procfs.
pub fn process_cpu_seconds() -> Option<f64> {
    processes::cpu_seconds_of("/proc/self/stat")
}

/// What the overhead is measured from.
pub(super) struct Measure<'a> {
    /// CPU seconds the swarm used.
    pub(super) swarm_cpu_s: f64,
    /// The campaign's spec.
    pub(super) spec: CampaignSpec,
    /// Every job of the campaign (the settled ones are re-run).
    pub(super) all: Vec<JobSpec>,
    /// The agreed settled jobs.
    pub(super) settled: &'a [SettledJob],
    /// The blobs the jobs need.
    pub(super) blobs: BTreeMap<BlobId, Vec<u8>>,
    /// Job executions in the swarm.
    pub(super) executions: u64,
    /// Executors per job (r) of the submitted campaign.
    pub(super) redundancy: u8,
    /// Whether to say what is happening on stderr.
    pub(super) progress: bool,
}

/// One executor's CPU and wall seconds.
#[derive(Debug, Clone, Copy)]
struct Single {
    /// CPU seconds.
    cpu_s: f64,
    /// Wall seconds.
    wall_s: f64,
}

/// Runs `todo` once on one executor; `None` where CPU time cannot be measured.
fn run_once(
    spec: &CampaignSpec,
    todo: &[JobSpec],
    blobs: &BTreeMap<BlobId, Vec<u8>>,
) -> Option<Single> {
    let ex = Executor::new(&Config::new(PathBuf::new()).admission);
    let c0 = process_cpu_seconds();
    let w0 = Instant::now();
    for j in todo {
        // A job that cannot run here (a blob no node still held) leaves the figure unmeasured
        // rather than too small.
        ex.run(
            spec,
            j,
            hivemesh_trainer::backend::Device::Cpu,
            blobs,
            &mut |_| {},
        )
        .ok()?;
    }
    match (c0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(Single {
            cpu_s: b - a,
            wall_s: w0.elapsed().as_secs_f64(),
        }),
        _ => None,
    }
}

/// Re-runs the settled (not void) jobs once on one executor and sets the swarm's CPU against
/// it; `None` when nothing settled or the CPU time cannot be measured.
pub(super) async fn measure(m: Measure<'_>) -> Option<Overhead> {
    let settled_ids: BTreeSet<&str> = m
        .settled
        .iter()
        .filter(|j| j.status != JobStatus::Void)
        .map(|j| j.job.as_str())
        .collect();
    let settled = m
        .settled
        .iter()
        .filter(|j| j.status != JobStatus::Void)
        .count();
    if settled == 0 {
        return None;
    }
    let todo: Vec<JobSpec> = m
        .all
        .into_iter()
        .filter(|j| settled_ids.contains(j.id().to_string().as_str()))
        .collect();
    if m.progress {
        eprintln!(
            "measuring the overhead: running the {} settled jobs once on one executor...",
            todo.len()
        );
    }
    let spec = m.spec;
    let redundancy = m.redundancy;
    let blobs = m.blobs;
    let single = tokio::task::spawn_blocking(move || run_once(&spec, &todo, &blobs))
        .await
        .ok()
        .flatten()?;
    (single.cpu_s > 0.0).then(|| Overhead {
        swarm_cpu_s: m.swarm_cpu_s,
        single_cpu_s: single.cpu_s,
        single_wall_s: single.wall_s,
        redundancy,
        ratio: m.swarm_cpu_s / (f64::from(redundancy) * single.cpu_s),
        executions_per_job: m.executions as f64 / settled as f64,
    })
}
