//! Who was heard from when (the signal that evicts silent members), and this peer's own
//! heartbeats: a joiner announcing itself, a member showing it is alive.

use std::collections::HashMap;
use std::time::Duration;

use crate::closure::{Closure, Entry};
use crate::envelope::AnySigned;
use crate::identity::PeerKey;
use crate::message::Heartbeat;
use crate::time::Timestamp;

use super::{Peer, PeerOutput};

/// A peer's key in `last_seen`: its first 8 bytes. Every message updates the map, and a
/// small key keeps it small; matching another key's 64 bits takes some 2^64 tries of key
/// generation, and would only make the two peers share a liveness signal.
fn seen_key(p: &PeerKey) -> u64 {
    let b = p.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// What this peer knows of who is alive, and what it said itself.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// The generation in which a message signed by each peer last reached this one, by
    /// [`seen_key`].
    last_seen: HashMap<u64, u32>,
    /// Whether this peer sent anything in the current generation.
    pub(super) spoke: bool,
    /// When this peer last sent a heartbeat.
    last_heartbeat: Option<Timestamp>,
    /// Heartbeats sent in generation `.0` (a joiner's back-off).
    heartbeats_sent: (u32, u32),
}

impl Liveness {
    /// A message signed by `p` reached this peer in `generation`.
    pub(super) fn heard(&mut self, p: &PeerKey, generation: u32) {
        self.last_seen.insert(seen_key(p), generation);
    }

    /// Whether no message from `p` reached this peer in `current` nor in the `back`
    /// generations before it (never, before generation `back`).
    pub(super) fn silent_since(&self, p: &PeerKey, back: u32, current: u32) -> bool {
        current > back
            && self
                .last_seen
                .get(&seen_key(p))
                .is_none_or(|g| g + back < current)
    }

    /// Who a decided closure shows alive in its generation — executors whose results it lists
    /// and the voters who decided it (`certificate`) — counts as heard from, as a message
    /// would: the signal is then the same at every peer, not only at those that received the
    /// messages (with sharded evidence, a voter drawn for the next generation did not).
    pub(super) fn shown_alive(&mut self, closure: &Closure, certificate: &[PeerKey]) {
        let shown = closure
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Settled { settlement, .. } => {
                    Some(settlement.agreeing.iter().chain(&settlement.dissenting))
                }
                Entry::Void { .. } => None,
            })
            .flatten()
            .chain(certificate);
        for p in shown {
            let g = self
                .last_seen
                .entry(seen_key(p))
                .or_insert(closure.generation);
            *g = (*g).max(closure.generation);
        }
    }

    /// When a joiner next announces itself in `generation`: at once in each generation it
    /// enters as a non-member, then again after 2x, 4x, … (at most 64x) `interval_ms` in case
    /// the heartbeat was lost. Members admit every joiner whose heartbeat they hold, however
    /// old, and sync repairs losses, so repeating at a fixed rate only floods the swarm: with a
    /// thousand joiners and a slow generation 0 it was most of the messages.
    pub(super) fn join_heartbeat_due(&self, generation: u32, interval_ms: u64) -> Timestamp {
        let (sent_in, sent) = self.heartbeats_sent;
        match self.last_heartbeat {
            Some(last) if sent_in == generation && sent > 0 => {
                let backoff = interval_ms << sent.min(6);
                last.saturating_add(Duration::from_millis(backoff))
            }
            _ => Timestamp::ZERO,
        }
    }

    /// Records a heartbeat sent at `now` in `generation`.
    fn heartbeat_sent(&mut self, generation: u32, now: Timestamp) {
        self.last_heartbeat = Some(now);
        if self.heartbeats_sent.0 != generation {
            self.heartbeats_sent = (generation, 0);
        }
        self.heartbeats_sent.1 += 1;
    }
}

impl Peer {
    /// When this peer, while not a member, next announces itself.
    pub(super) fn join_heartbeat_due(&self) -> Timestamp {
        self.liveness
            .join_heartbeat_due(self.chain.cur.number, self.config.join_heartbeat_ms)
    }

    /// Phase 2 of a step: joiners announce themselves; a member that has said nothing this
    /// generation by its deadline shows it is alive (silent members are evicted).
    pub(super) fn heartbeat_if_due(
        &mut self,
        now: Timestamp,
        past_deadline: bool,
        out: &mut Vec<PeerOutput>,
    ) {
        let member = self.is_member();
        if member && (self.liveness.spoke || !past_deadline) {
            return;
        }
        if !member && now < self.join_heartbeat_due() {
            return;
        }
        let generation = self.chain.cur.number;
        self.liveness.heartbeat_sent(generation, now);
        let hb = Heartbeat {
            campaign: self.campaign(),
            generation,
            running: self.exec.running.len() as u16,
            capacity: self.config.capacity,
            issued_at: now,
        };
        self.sign_and_send(hb, AnySigned::Heartbeat, now, out);
    }
}
