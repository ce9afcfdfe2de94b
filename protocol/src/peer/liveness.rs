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
        let (capacity, job_ms) = self.advert();
        let hb = Heartbeat {
            campaign: self.campaign(),
            generation,
            running: self.exec.running.len() as u16,
            capacity,
            job_ms,
            issued_at: now,
        };
        self.sign_and_send(hb, AnySigned::Heartbeat, now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::peer;
    use crate::id::CampaignId;
    use crate::peer::reputation::tests::settled;

    #[test]
    fn a_peer_silent_for_the_window_is_silent_and_a_heard_one_is_not() {
        let mut l = Liveness::default();
        l.heard(&peer(1), 3);
        // Heard in generation 3.
        assert!(!l.silent_since(&peer(1), 0, 3));
        assert!(
            !l.silent_since(&peer(1), 1, 4),
            "heard in the generation before"
        );
        assert!(l.silent_since(&peer(1), 0, 4), "nothing in generation 4");
        assert!(l.silent_since(&peer(1), 1, 5), "nothing in 4 and 5");
        // Never heard: silent once the window lies past generation 0.
        assert!(!l.silent_since(&peer(2), 1, 1), "too early to tell");
        assert!(l.silent_since(&peer(2), 1, 2));
        assert!(!l.silent_since(&peer(2), 0, 0));
        // Hearing it again resets the window.
        l.heard(&peer(1), 5);
        assert!(!l.silent_since(&peer(1), 1, 6));
    }

    #[test]
    fn a_closure_shows_its_executors_and_certificate_alive() {
        let mut l = Liveness::default();
        l.heard(&peer(1), 9);
        let closure = Closure {
            campaign: CampaignId([7; 32]),
            generation: 4,
            previous: [0; 32],
            entries: vec![settled(1, &[1, 2], &[1, 2], &[3])],
            verdicts: Vec::new(),
            members: Vec::new(),
            deadline_ms: 1,
        };
        l.shown_alive(&closure, &[peer(5)]);
        for p in [2, 3, 5] {
            assert!(
                !l.silent_since(&peer(p), 0, 4),
                "peer {p} shown in generation 4"
            );
            assert!(l.silent_since(&peer(p), 0, 5));
        }
        assert!(
            !l.silent_since(&peer(1), 0, 9),
            "a later message is not moved back"
        );
        assert!(l.silent_since(&peer(6), 0, 4), "not shown");
    }

    #[test]
    fn a_joiner_backs_off_its_heartbeats_within_a_generation() {
        let mut l = Liveness::default();
        let t = Timestamp(1_000_000);
        assert_eq!(l.join_heartbeat_due(0, 100), Timestamp::ZERO, "at once");
        l.heartbeat_sent(0, t);
        assert_eq!(l.join_heartbeat_due(0, 100), Timestamp(t.0 + 200));
        l.heartbeat_sent(0, t);
        assert_eq!(l.join_heartbeat_due(0, 100), Timestamp(t.0 + 400));
        for _ in 0..10 {
            l.heartbeat_sent(0, t);
        }
        assert_eq!(
            l.join_heartbeat_due(0, 100),
            Timestamp(t.0 + 6_400),
            "at most 64x"
        );
        assert_eq!(
            l.join_heartbeat_due(1, 100),
            Timestamp::ZERO,
            "a new generation: at once"
        );
        l.heartbeat_sent(1, t);
        assert_eq!(
            l.join_heartbeat_due(1, 100),
            Timestamp(t.0 + 200),
            "count restarts"
        );
    }
}
