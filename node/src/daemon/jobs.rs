//! Running jobs the protocol asks for: starting them (after fetching the blobs they need),
//! training them on the blocking pool behind a semaphore, abandoning the ones that cannot run
//! here, and feeding finished ones back to the protocol.

use std::sync::Arc;

use hivemesh_protocol::id::{BlobId, CampaignId, JobId};
use hivemesh_protocol::message::Outcome;
use hivemesh_protocol::peer::PeerInput;
use hivemesh_protocol::spec::JobSpec;
use tokio::sync::mpsc;

use super::devices::Slots;
use super::pending::PendingResult;
use super::{Event, EventLoop};
use crate::executor::{
    BlobSource, ExecError, Executed, Executor, garble, job_blobs, lie, needed_blobs,
};
use crate::fault::Fault;
use crate::metrics::Metrics;
use crate::store::Store;

/// Finished jobs queued to the event loop.
pub const JOB_RESULT_CAPACITY: usize = 64;

/// Why a job spawned here produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The executor cannot run it here.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The training task panicked.
    #[error("the job panicked: {0}")]
    Panicked(String),
    /// No device here runs its backend (`--devices` lists none of its class).
    #[error("no device here runs {0:?} jobs (see --devices)")]
    NoDevice(hivemesh_protocol::BackendClass),
}

/// A job that finished on the blocking pool.
pub(super) struct JobDone {
    /// Its campaign.
    campaign: CampaignId,
    /// The job.
    job: JobId,
    /// What it produced.
    outcome: Result<Executed, JobError>,
}

/// The jobs running here and the channel they report on.
pub(super) struct Jobs {
    /// Runs jobs (shared with the blocking tasks).
    pub(super) executor: Arc<Executor>,
    /// The job slots (`--jobs` or `--devices`).
    slots: Arc<Slots>,
    /// Where finished jobs report (cloned into each task).
    tx: mpsc::Sender<JobDone>,
    /// What the event loop reads finished jobs from.
    pub(super) rx: mpsc::Receiver<JobDone>,
    /// Jobs started and not finished.
    pub(super) running: usize,
    /// Jobs finished since start.
    pub(super) finished: u64,
}

impl Jobs {
    /// Jobs run by `executor` in `slots`.
    pub(super) fn new(executor: Executor, slots: Slots) -> Jobs {
        let (tx, rx) = mpsc::channel(JOB_RESULT_CAPACITY);
        Jobs {
            executor: Arc::new(executor),
            slots: Arc::new(slots),
            tx,
            rx,
            running: 0,
            finished: 0,
        }
    }
}

/// The store as the executor's blob source.
pub(super) struct StoreBlobs(pub(super) Arc<Store>);

impl BlobSource for StoreBlobs {
    fn blob(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.0.blob(id).ok().flatten()
    }

    fn file(&self, id: &BlobId) -> Option<(std::path::PathBuf, u64)> {
        self.0.blobs().file(id)
    }
}

impl EventLoop {
    /// The protocol asks for a job: a result stored before a restart is fed back at once (the
    /// input returned), else the job starts.
    pub(super) fn on_execute(&mut self, id: CampaignId, job: JobSpec) -> Option<PeerInput> {
        let job_id = job.id();
        match self.store.result(&id, &job_id) {
            // Done before a restart: feed the stored result, never retrain.
            Ok(Some(result)) => {
                return Some(PeerInput::JobDone {
                    job: job_id,
                    result,
                });
            }
            Ok(None) => self.start_job(id, job),
            Err(e) => {
                tracing::warn!("stored result of {job_id} unreadable ({e}); running it again");
                self.start_job(id, job);
            }
        }
        None
    }

    /// Starts a job the protocol asked for: at once when every blob it needs is held here,
    /// else after fetching the first missing one from peers.
    pub(super) fn start_job(&mut self, campaign: CampaignId, job: JobSpec) {
        let Some(c) = self.campaigns.map.get(&campaign) else {
            return;
        };
        let missing = needed_blobs(&c.spec)
            .into_iter()
            .chain(job_blobs(&c.spec, &job))
            .find(|(b, _)| !matches!(self.store.blob_len(b), Ok(Some(_))));
        match missing {
            None => self.spawn_job(campaign, job),
            Some((blob, what)) => {
                let held = StoreBlobs(Arc::clone(&self.store));
                if let Err(e) = self.jobs.executor.precheck(&c.spec, &job, &held) {
                    self.abandon(campaign, job.id(), e.to_string());
                    return;
                }
                tracing::info!(job = %job.id(), %blob, "fetching the {what} from peers first");
                if let Err(reason) = self.fetch_blob(blob, Some((campaign, job.clone())), None) {
                    self.abandon(campaign, job.id(), format!("the {what}: {reason}"));
                }
            }
        }
    }

    /// Tells the protocol a job cannot run here (it frees the slot; others take the job over).
    pub(super) fn abandon(&mut self, campaign: CampaignId, job: JobId, reason: String) {
        tracing::warn!(%campaign, %job, "cannot run job here: {reason}");
        Metrics::count(&self.metrics.jobs_run, "result", "abandoned");
        self.emit(Event::JobAbandoned {
            campaign,
            job,
            reason,
        });
        self.drive(campaign, PeerInput::JobAbandoned { job });
    }

    /// Trains a job on the blocking pool (once a slot is free); it reports on `jobs.tx`.
    fn spawn_job(&mut self, campaign: CampaignId, job: JobSpec) {
        let Some(c) = self.campaigns.map.get(&campaign) else {
            return;
        };
        let spec = Arc::clone(&c.spec);
        let executor = Arc::clone(&self.jobs.executor);
        let blobs = StoreBlobs(Arc::clone(&self.store));
        let slots = Arc::clone(&self.jobs.slots);
        let tx = self.jobs.tx.clone();
        let fault = self.config.fault;
        let job_id = job.id();
        self.jobs.running += 1;
        self.metrics.jobs_running.set(self.jobs.running as i64);
        self.emit(Event::JobStarted {
            campaign,
            job: job_id,
        });
        tracing::info!(campaign = %campaign, job = %job_id, generation = job.generation, index = job.index, "job started");
        tokio::spawn(async move {
            let class = job.backend;
            let outcome = match slots.acquire(class).await {
                None => Err(JobError::NoDevice(class)),
                Some(lease) => {
                    let device = lease.device;
                    let ran = tokio::task::spawn_blocking(move || {
                        let done = executor.run(&spec, &job, device, &blobs, &mut |p| {
                            tracing::debug!(job = %job_id, step = p.step, %device, "training");
                        });
                        done.map(|d| match fault {
                            Some(Fault::Lie) => Executed {
                                result: lie(d.result),
                                ..d
                            },
                            Some(Fault::Noise) => garble(&spec, &job, d),
                            _ => d,
                        })
                    })
                    .await;
                    drop(lease);
                    match ran {
                        Ok(Ok(done)) => Ok(done),
                        Ok(Err(e)) => Err(JobError::Exec(e)),
                        Err(e) => Err(JobError::Panicked(e.to_string())),
                    }
                }
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

    /// A job finished: store its result and blobs, announce them, feed the protocol.
    pub(super) fn on_job_done(&mut self, done: JobDone) {
        self.jobs.running = self.jobs.running.saturating_sub(1);
        self.metrics.jobs_running.set(self.jobs.running as i64);
        let Executed { result, blobs } = match done.outcome {
            Ok(r) => r,
            Err(e) => {
                self.abandon(done.campaign, done.job, e.to_string());
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
        let held = PendingResult {
            campaign: done.campaign,
            job: done.job,
            result,
            blobs,
        };
        if let Err(e) = self
            .store
            .put_result(&held.campaign, &held.job, &held.result, &held.blobs)
        {
            tracing::error!(job = %held.job, "cannot store result (kept to retry): {e}");
            self.hold_result(held);
            return;
        }
        self.acknowledge_result(held);
    }

    /// A stored result: announce its blobs, tell subscribers, feed the protocol.
    pub(super) fn acknowledge_result(&mut self, stored: PendingResult) {
        let PendingResult {
            campaign,
            job,
            result,
            blobs,
        } = stored;
        for (id, _) in &blobs {
            self.announce_blob(id);
        }
        self.jobs.finished += 1;
        tracing::info!(%job, "job finished");
        self.emit(Event::JobFinished { campaign, job });
        self.drive(campaign, PeerInput::JobDone { job, result });
    }
}
