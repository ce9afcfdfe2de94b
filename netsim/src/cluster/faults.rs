//! Injecting faults into a running cluster: the [`Schedule`] of kills, restarts and the
//! partition, and the run loop's handlers that apply them ([`RunLoop::on_fault_due`]) and
//! take their completions. Every node call runs as a task: a slow node never delays the next
//! fault.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use super::ClusterError;
use super::config::ClusterConfig;
use super::nodes::{Handle, Running, start_node};
use super::outcome::FaultEvent;
use super::run_loop::{Done, RunLoop};

/// How long a kill waits for a node that is being restarted.
const KILL_RETRY: Duration = Duration::from_millis(100);

/// A scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// `kill -9` a node; restart it `down` later (`None`: for good).
    Kill {
        /// Which.
        node: usize,
        /// How long it stays down.
        down: Option<Duration>,
    },
    /// Start a killed node again from its store.
    Restart(usize),
    /// Cut the cluster in two halves.
    Split,
    /// Heal the cut.
    Heal,
}

/// A fault and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scheduled {
    /// After submission.
    at: Duration,
    /// What.
    action: Action,
}

/// The faults of a run, in time order; the ones before `next` have fired.
#[derive(Debug, Clone, Default)]
pub(super) struct Schedule {
    /// Every fault so far scheduled.
    items: Vec<Scheduled>,
    /// The next to fire.
    next: usize,
}

impl Schedule {
    /// The faults known at submission: timed kills and the partition.
    pub(super) fn new(cfg: &ClusterConfig) -> Schedule {
        let mut s = Schedule::default();
        for k in cfg.kills.iter().filter(|k| k.after_generation.is_none()) {
            s.push(
                k.at,
                Action::Kill {
                    node: k.node,
                    down: k.down,
                },
            );
        }
        if let Some(p) = &cfg.partition {
            s.push(p.at, Action::Split);
            s.push(p.at + p.heal, Action::Heal);
        }
        s.sort();
        s
    }

    fn push(&mut self, at: Duration, action: Action) {
        self.items.push(Scheduled { at, action });
    }

    /// Orders the faults still to come (stable: equal times keep their order).
    fn sort(&mut self) {
        self.items[self.next..].sort_by_key(|s| s.at);
    }

    /// Schedules `action` `after` from now (`t0` the submission).
    fn push_in(&mut self, t0: std::time::Instant, after: Duration, action: Action) {
        self.push(t0.elapsed() + after, action);
        self.sort();
    }

    /// When the next fault is due.
    pub(super) fn next_at(&self, t0: std::time::Instant) -> Option<tokio::time::Instant> {
        self.items
            .get(self.next)
            .map(|s| tokio::time::Instant::from_std(t0 + s.at))
    }

    /// Schedules the kills that wait for `generation`'s first closure (now).
    pub(super) fn after_generation(
        &mut self,
        cfg: &ClusterConfig,
        generation: u32,
        t0: std::time::Instant,
    ) {
        for k in cfg
            .kills
            .iter()
            .filter(|k| k.after_generation == Some(generation))
        {
            let action = Action::Kill {
                node: k.node,
                down: k.down,
            };
            self.push(t0.elapsed() + k.at, action);
        }
        self.sort();
    }

    /// Takes the next fault (it is due).
    fn pop(&mut self) -> Option<Action> {
        let s = self.items.get(self.next)?;
        self.next += 1;
        Some(s.action)
    }
}

/// A node that refused a block-list change.
#[derive(Debug)]
pub(super) struct BlockFailure {
    /// Which.
    pub(super) node: usize,
    /// Its life when asked (a node killed since may refuse: that is no failure).
    pub(super) life: u64,
    /// What it answered.
    pub(super) error: ClusterError,
}

/// Whether nodes `i` and `j` are on different sides of the cut.
fn across(half: usize, i: usize, j: usize) -> bool {
    (i < half) != (j < half)
}

/// Sets (`true`) or clears the cut at `node` (index `i`): it blocks or unblocks every peer
/// of the other half.
async fn set_cut(
    i: usize,
    node: &Handle,
    peers: &[PeerId],
    half: usize,
    blocked: bool,
) -> Result<(), ClusterError> {
    for (j, p) in peers.iter().enumerate() {
        if across(half, i, j) {
            node.block(i, *p, blocked).await?;
        }
    }
    Ok(())
}

/// A running node, as a partition task needs it.
struct Member {
    /// Its index.
    index: usize,
    /// Its life.
    life: u64,
    /// How to call it.
    handle: Handle,
    /// The node it dials when the cut heals.
    dial: Option<Multiaddr>,
}

impl RunLoop {
    /// The next fault is due: apply it and log it.
    pub(super) fn on_fault_due(&mut self) {
        let Some(action) = self.schedule.pop() else {
            return;
        };
        let at_s = self.t0.elapsed().as_secs_f64();
        if let Some(what) = self.apply(action) {
            self.out.say(format!("{at_s:7.1}s  fault: {what}"));
            self.tally.faults.push(FaultEvent { at_s, what });
        }
        self.schedule.sort();
    }

    /// Starts one fault; what it does (`None`: put off).
    fn apply(&mut self, action: Action) -> Option<String> {
        match action {
            Action::Kill { node, down } => self.kill(node, down),
            Action::Restart(i) => Some(self.restart(i)),
            Action::Split => Some(self.partition(true)),
            Action::Heal => Some(self.partition(false)),
        }
    }

    /// `kill -9` node `i`; a restart is scheduled once it is down.
    fn kill(&mut self, i: usize, down: Option<Duration>) -> Option<String> {
        if self.restarting.contains(&i) {
            // Kill it once it is up again.
            let action = Action::Kill { node: i, down };
            self.schedule.push_in(self.t0, KILL_RETRY, action);
            return None;
        }
        let Some(n) = self.nodes[i].take() else {
            return Some(format!("node {i} is already down"));
        };
        self.tally.finished.remove(&i);
        self.spawn(async move {
            Done::Killed {
                node: i,
                cpu: n.kill().await,
                down,
            }
        });
        Some(match down {
            Some(d) => format!("kill -9 node {i} (restart in {:.0} s)", d.as_secs_f64()),
            None => {
                self.gone_for_good.insert(i);
                format!("kill -9 node {i} (for good)")
            }
        })
    }

    /// A killed node is down.
    pub(super) fn on_killed(&mut self, i: usize, cpu: f64, down: Option<Duration>) {
        self.tally.killed_cpu += cpu;
        if let Some(d) = down {
            self.schedule.push_in(self.t0, d, Action::Restart(i));
        }
    }

    /// Starts node `i` again from its store, bootstrapping from the first running nodes.
    fn restart(&mut self, i: usize) -> String {
        let boot: Vec<Multiaddr> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.addr.clone())
            .take(3)
            .collect();
        let cfg = self.cfg.clone();
        let events = self.events.clone();
        self.restarting.insert(i);
        self.spawn(async move {
            Done::Restarted {
                node: i,
                started: start_node(&cfg, i, boot, &events).await,
            }
        });
        format!("node {i} restarted from its store")
    }

    /// A restarted node is up.
    pub(super) fn on_restarted(&mut self, i: usize, mut n: Running) {
        self.restarting.remove(&i);
        n.watch(i, self.campaign.id, &self.events);
        self.nodes[i] = Some(n);
        self.tally.finished.remove(&i);
    }

    /// Makes (`split`) or heals the cut between the two halves of the cluster.
    fn partition(&mut self, split: bool) -> String {
        let (nodes, half) = (self.cfg.nodes, self.cfg.nodes / 2);
        let addrs: Vec<Option<Multiaddr>> = self
            .nodes
            .iter()
            .map(|n| n.as_ref().map(|n| n.addr.clone()))
            .collect();
        let members: Vec<Member> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.as_ref()?;
                // Reconnect across the cut: each node dials one node of the other half.
                let other = if i < half {
                    half + i % (nodes - half)
                } else {
                    (i - half) % half.max(1)
                };
                Some(Member {
                    index: i,
                    life: n.life,
                    handle: n.handle.clone(),
                    dial: addrs.get(other).cloned().flatten(),
                })
            })
            .collect();
        let peers = self.peer_ids.clone();
        let lock = self.partition_lock.clone();
        self.spawn(async move {
            let _held = lock.lock().await;
            let mut failures = Vec::new();
            for m in &members {
                if let Err(error) = set_cut(m.index, &m.handle, &peers, half, split).await {
                    failures.push(BlockFailure {
                        node: m.index,
                        life: m.life,
                        error,
                    });
                }
            }
            if !split {
                for m in &members {
                    if let Some(a) = &m.dial {
                        m.handle.dial(a.clone()).await;
                    }
                }
            }
            Done::Blocked(failures)
        });
        if split {
            format!("partition: nodes 0..{half} | {half}..{nodes}")
        } else {
            "partition healed".to_string()
        }
    }

    /// A partition was made or healed: a refusal from a node still in the same life fails
    /// the run.
    pub(super) fn on_blocked(&mut self, failures: Vec<BlockFailure>) -> Result<(), ClusterError> {
        for f in failures {
            if self.nodes[f.node]
                .as_ref()
                .is_some_and(|n| n.life == f.life)
            {
                return Err(f.error);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Kill, Partition};

    fn cfg() -> ClusterConfig {
        let mut c = ClusterConfig::new("unused".into());
        c.kills = vec![
            Kill {
                node: 2,
                at: Duration::from_secs(5),
                after_generation: None,
                down: Some(Duration::from_secs(1)),
            },
            Kill {
                node: 3,
                at: Duration::ZERO,
                after_generation: Some(0),
                down: None,
            },
        ];
        c.partition = Some(Partition {
            at: Duration::from_secs(1),
            heal: Duration::from_secs(2),
        });
        c
    }

    #[test]
    fn the_schedule_fires_in_time_order_and_adds_generation_kills_on_closure() {
        let c = cfg();
        let t0 = std::time::Instant::now();
        let mut s = Schedule::new(&c);
        assert_eq!(s.pop(), Some(Action::Split));
        assert_eq!(s.pop(), Some(Action::Heal));
        s.after_generation(&c, 0, t0);
        // Due now: before the kill at 5 s.
        assert_eq!(
            s.pop(),
            Some(Action::Kill {
                node: 3,
                down: None
            })
        );
        assert_eq!(
            s.pop(),
            Some(Action::Kill {
                node: 2,
                down: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(s.pop(), None);
        assert!(s.next_at(t0).is_none());
    }

    #[test]
    fn the_cut_separates_the_halves() {
        assert!(across(2, 0, 2) && across(2, 3, 1));
        assert!(!across(2, 0, 1) && !across(2, 2, 3));
    }
}
