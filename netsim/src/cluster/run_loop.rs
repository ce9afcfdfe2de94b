//! The cluster's run loop: a [`RunLoop`] owning what the run learns, with one handler per
//! event source: the fault schedule ([`RunLoop::on_fault_due`], in `faults.rs`), completions
//! of node calls in flight ([`RunLoop::on_done`]), node events ([`RunLoop::on_node_event`])
//! and the progress tick ([`RunLoop::on_tick`]).
//!
//! Node calls that can wait (kills, restarts, block lists, dials, reading settled jobs) run
//! as tasks in a [`JoinSet`]; their completions are one more event source, so a slow node
//! never holds up the fault schedule or the ticks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivemesh_protocol::CampaignId;
use hivemesh_protocol::standings::JobStatus;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use super::ClusterError;
use super::config::{ClusterConfig, Role};
use super::faults::{BlockFailure, Schedule};
use super::nodes::{Brief, Events, NodeEvent, NodeMessage, Running};
use super::outcome::FaultEvent;
use crate::plot::Sample;

/// How often the progress bar's message is refreshed (and the end conditions checked).
const TICK: Duration = Duration::from_millis(500);

/// A generation's closure as the cluster saw it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClosedGeneration {
    /// Its root (hex), as the first node to close it saw it.
    pub(super) root: String,
    /// Seconds after submission the first node closed it.
    pub(super) first_s: f64,
    /// Seconds after submission the last node closed it.
    pub(super) last_s: f64,
    /// The nodes that closed it.
    pub(super) nodes: BTreeSet<usize>,
}

/// A generation's settled jobs, as the first node to close it counted them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct GenerationTally {
    /// Jobs settled (success or failure).
    pub(super) settled: usize,
    /// Best accuracy.
    pub(super) best: f64,
}

/// What the loop learns over the run.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Closed generations.
    pub(super) closed: BTreeMap<u32, ClosedGeneration>,
    /// Settled jobs per closed generation.
    pub(super) generations: BTreeMap<u32, GenerationTally>,
    /// Progress samples, in time order.
    pub(super) samples: Vec<Sample>,
    /// Job executions started across the cluster.
    pub(super) executions: u64,
    /// Job executions started per node.
    pub(super) per_node: Vec<u64>,
    /// Faults applied.
    pub(super) faults: Vec<FaultEvent>,
    /// CPU seconds of child processes that were killed (`--processes`).
    pub(super) killed_cpu: f64,
    /// Nodes whose current life saw the campaign finish.
    pub(super) finished: BTreeSet<usize>,
}

/// How the loop ended.
pub(super) struct Ended {
    /// Whether the timeout struck first.
    pub(super) timed_out: bool,
    /// Seconds from submission to the end.
    pub(super) wall_s: f64,
    /// The nodes, by index (`None`: down).
    pub(super) nodes: Vec<Option<Running>>,
    /// What the loop learned.
    pub(super) tally: Tally,
}

/// A node call that finished.
pub(super) enum Done {
    /// A node was killed.
    Killed {
        /// Which.
        node: usize,
        /// CPU seconds its process had used.
        cpu: f64,
        /// When to restart it (`None`: for good).
        down: Option<Duration>,
    },
    /// A node was restarted (or failed to).
    Restarted {
        /// Which.
        node: usize,
        /// The new life.
        started: Result<Running, ClusterError>,
    },
    /// A partition was made or healed; the nodes that refused.
    Blocked(Vec<BlockFailure>),
    /// A node's settled jobs, read when it first closed a generation.
    Briefed(Briefing),
}

/// A node's settled jobs when it was the first to close `generation`.
pub(super) struct Briefing {
    /// The generation.
    pub(super) generation: u32,
    /// Its closure root (hex).
    pub(super) root: String,
    /// Seconds after submission it closed.
    pub(super) at_s: f64,
    /// The node's settled jobs, if it answered.
    pub(super) jobs: Option<Vec<Brief>>,
}

/// The progress bar and the lines above it.
pub(super) struct Output {
    /// The bar, when progress is shown.
    bar: Option<indicatif::ProgressBar>,
}

impl Output {
    /// A bar over `total` jobs, or nothing when `show` is off.
    pub(super) fn new(show: bool, total: usize) -> Output {
        let bar = show.then(|| {
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
        Output { bar }
    }

    /// A line above the bar on a terminal, plainly to stderr otherwise (CI logs, pipes).
    pub(super) fn say(&self, line: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            Some(_) => eprintln!("{line}"),
            None => {}
        }
    }

    fn position(&self, settled: u64) {
        if let Some(b) = &self.bar {
            b.set_position(settled);
        }
    }

    fn message(&self, m: impl FnOnce() -> String) {
        if let Some(b) = &self.bar {
            b.set_message(m());
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The campaign being run, as the loop needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Campaign {
    /// Its id.
    pub(super) id: CampaignId,
    /// Jobs it settles in all.
    pub(super) total: usize,
    /// Generations it runs.
    pub(super) generations: u32,
}

/// The run loop's state.
pub(super) struct RunLoop {
    /// The run's configuration (shared with restart tasks).
    pub(super) cfg: Arc<ClusterConfig>,
    /// The campaign.
    pub(super) campaign: Campaign,
    /// When it was submitted.
    pub(super) t0: Instant,
    /// Honest nodes (the loop waits for them).
    honest: Vec<usize>,
    /// The nodes, by index (`None`: down, or restarting).
    pub(super) nodes: Vec<Option<Running>>,
    /// Every node's peer id, by index.
    pub(super) peer_ids: Vec<PeerId>,
    /// Where nodes send their events (handed to restarted ones).
    pub(super) events: Events,
    /// Faults to come.
    pub(super) schedule: Schedule,
    /// Nodes being restarted.
    pub(super) restarting: BTreeSet<usize>,
    /// Nodes killed for good.
    pub(super) gone_for_good: BTreeSet<usize>,
    /// Node calls in flight.
    pub(super) in_flight: JoinSet<Done>,
    /// Held while a partition is made or healed, so that a heal never overtakes its split.
    pub(super) partition_lock: Arc<tokio::sync::Mutex<()>>,
    /// The progress bar.
    pub(super) out: Output,
    /// What the run learned so far.
    pub(super) tally: Tally,
}

impl RunLoop {
    /// A loop over the started `nodes`, with the campaign submitted at `t0`.
    pub(super) fn new(
        cfg: Arc<ClusterConfig>,
        campaign: Campaign,
        nodes: Vec<Option<Running>>,
        events: Events,
        t0: Instant,
    ) -> RunLoop {
        let honest = (0..cfg.nodes)
            .filter(|i| cfg.role(*i) != Role::Byzantine)
            .collect();
        let peer_ids = nodes.iter().flatten().map(|n| n.peer_id).collect();
        let tally = Tally {
            per_node: vec![0; cfg.nodes],
            ..Tally::default()
        };
        RunLoop {
            schedule: Schedule::new(&cfg),
            out: Output::new(cfg.progress, campaign.total),
            cfg,
            campaign,
            t0,
            honest,
            nodes,
            peer_ids,
            events,
            restarting: BTreeSet::new(),
            gone_for_good: BTreeSet::new(),
            in_flight: JoinSet::new(),
            partition_lock: Arc::default(),
            tally,
        }
    }

    /// Runs until every honest node that is not gone for good is up and finished, or the
    /// timeout.
    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<NodeMessage>,
    ) -> Result<Ended, ClusterError> {
        let mut ticker = tokio::time::interval(TICK);
        let timed_out = loop {
            if self.done() {
                break false;
            }
            if self.t0.elapsed() > self.cfg.timeout {
                break true;
            }
            let fault_at = self.schedule.next_at(self.t0);
            tokio::select! {
                biased;
                () = sleep_until(fault_at) => self.on_fault_due(),
                Some(done) = self.in_flight.join_next() => self.on_done(done)?,
                Some(m) = events.recv() => self.on_node_event(m),
                _ = ticker.tick() => self.on_tick(),
            }
        };
        if timed_out {
            self.in_flight.shutdown().await;
        } else {
            while let Some(done) = self.in_flight.join_next().await {
                self.on_done(done)?;
            }
        }
        let wall_s = self.t0.elapsed().as_secs_f64();
        self.out.finish();
        Ok(Ended {
            timed_out,
            wall_s,
            nodes: self.nodes,
            tally: self.tally,
        })
    }

    /// Whether no honest node is left to wait for. A node that is down until a restart is
    /// waited for even if it had finished: it must finish again from its store (and an old
    /// life's late event may have said so).
    fn done(&self) -> bool {
        self.honest.iter().all(|i| {
            self.gone_for_good.contains(i)
                || (self.tally.finished.contains(i) && self.nodes[*i].is_some())
        })
    }

    /// Runs `call` as a task whose completion comes back to [`RunLoop::on_done`].
    pub(super) fn spawn(&mut self, call: impl Future<Output = Done> + Send + 'static) {
        self.in_flight.spawn(call);
    }

    /// A node call finished.
    fn on_done(&mut self, done: Result<Done, JoinError>) -> Result<(), ClusterError> {
        let done = match done {
            Ok(d) => d,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Ok(()),
        };
        match done {
            Done::Killed { node, cpu, down } => self.on_killed(node, cpu, down),
            Done::Restarted { node, started } => self.on_restarted(node, started?),
            Done::Blocked(failures) => self.on_blocked(failures)?,
            Done::Briefed(b) => self.on_briefed(b),
        }
        Ok(())
    }

    /// A node said something about a campaign.
    fn on_node_event(&mut self, m: NodeMessage) {
        if m.campaign != self.campaign.id {
            return;
        }
        let i = m.from.node;
        match m.event {
            NodeEvent::Closed { generation, root } => self.on_closed(i, generation, root),
            NodeEvent::Finished => {
                if self.nodes[i]
                    .as_ref()
                    .is_some_and(|n| n.life == m.from.life)
                {
                    self.tally.finished.insert(i);
                }
            }
            NodeEvent::Started(n) => {
                self.tally.executions += n;
                self.tally.per_node[i] += n;
            }
            NodeEvent::Abandoned { job, reason } => {
                let job = &job[..12.min(job.len())];
                self.out
                    .say(format!("node {i} handed back job {job}: {reason}"));
            }
        }
    }

    /// Node `i` closed `generation`: the first to close it schedules the kills waiting for
    /// it and has its settled jobs read for the progress line.
    fn on_closed(&mut self, i: usize, generation: u32, root: String) {
        let t = self.t0.elapsed().as_secs_f64();
        let entry = self
            .tally
            .closed
            .entry(generation)
            .or_insert_with(|| ClosedGeneration {
                root: root.clone(),
                first_s: t,
                last_s: t,
                nodes: BTreeSet::new(),
            });
        entry.last_s = t;
        entry.nodes.insert(i);
        if entry.nodes.len() != 1 {
            return;
        }
        self.schedule
            .after_generation(&self.cfg, generation, self.t0);
        if let Some(Some(n)) = self.nodes.get(i) {
            let handle = n.handle.clone();
            let id = self.campaign.id;
            self.spawn(async move {
                Done::Briefed(Briefing {
                    generation,
                    root,
                    at_s: t,
                    jobs: handle.briefs(id).await,
                })
            });
        }
    }

    /// The first closer's settled jobs: a progress sample and a line.
    fn on_briefed(&mut self, b: Briefing) {
        let Some(jobs) = b.jobs else { return };
        let settled = settled_count(&jobs);
        let best = best_accuracy(&jobs);
        let in_gen: Vec<Brief> = jobs
            .into_iter()
            .filter(|j| j.generation == b.generation)
            .collect();
        let tally = GenerationTally {
            settled: settled_count(&in_gen),
            best: best_accuracy(&in_gen),
        };
        self.tally.generations.insert(b.generation, tally);
        let t = b.at_s;
        let samples = &mut self.tally.samples;
        let at = samples.partition_point(|s| s.seconds <= t);
        samples.insert(
            at,
            Sample {
                seconds: t,
                settled,
                best,
            },
        );
        self.out.position(settled.min(self.campaign.total) as u64);
        let root = &b.root[..12.min(b.root.len())];
        let generations = self.campaign.generations;
        if b.generation < generations {
            self.out.say(format!(
                "{t:7.1}s  generation {}/{generations} closed (root {root}): {settled} jobs settled, best accuracy {best:.4}",
                b.generation + 1,
            ));
        } else {
            self.out
                .say(format!("{t:7.1}s  audits judged (root {root})"));
        }
    }

    /// The progress bar's message.
    fn on_tick(&self) {
        self.out.message(|| {
            format!(
                "{} executions, {}/{} nodes finished",
                self.tally.executions,
                self.tally.finished.len(),
                self.honest.len()
            )
        });
    }
}

/// Jobs settled (success or failure) among `jobs`.
fn settled_count(jobs: &[Brief]) -> usize {
    jobs.iter().filter(|j| j.status != JobStatus::Void).count()
}

/// The best accuracy among `jobs`' successes (0 if none).
fn best_accuracy(jobs: &[Brief]) -> f64 {
    jobs.iter()
        .filter(|j| j.status == JobStatus::Success)
        .map(|j| j.accuracy)
        .fold(0.0, f64::max)
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
