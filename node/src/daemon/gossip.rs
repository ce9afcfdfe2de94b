//! Gossip: publishing (with an outbox for when no peer listens yet) and validating what
//! arrives before gossipsub forwards it — rate limit, signature and campaign binding, then the
//! protocol's verdict decide accept, ignore or reject. Persistent junk (ignored without blame
//! one by one) costs application score past a small rate, and a peer whose gossip score falls
//! below the graylist threshold is disconnected and banned for a while.

use std::collections::VecDeque;
use std::time::Instant;

use hivemesh_protocol::envelope::{AnySigned, Context};
use hivemesh_protocol::error::PeerAction;
use hivemesh_protocol::id::CampaignId;
use hivemesh_protocol::message::Kind;
use hivemesh_protocol::peer::PeerInput;
use libp2p::PeerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};

use super::campaigns::{CampaignError, decode_campaign};
use super::rate_limit::JUNK_PENALTY;
use super::{Event, EventLoop};
use crate::metrics::Metrics;
use crate::net::GRAYLIST_THRESHOLD;
use crate::unix_now;

/// Own messages kept for publishing while no peer is subscribed yet.
pub const OUTBOX_CAPACITY: usize = 4096;

/// What the node publishes later and what it counted.
#[derive(Debug, Default)]
pub(super) struct Gossip {
    /// Own messages waiting for a subscriber, oldest first (at most [`OUTBOX_CAPACITY`]).
    outbox: VecDeque<(IdentTopic, Vec<u8>)>,
    /// Messages validated since start (gossip and sync).
    pub(super) validated: u64,
    /// Messages refused since start.
    pub(super) rejected: u64,
}

impl EventLoop {
    /// Publishes on a topic, keeping the message for later when no peer listens.
    pub(super) fn publish(&mut self, topic: IdentTopic, bytes: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), bytes.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
            | Err(gossipsub::PublishError::AllQueuesFull(_)) => {
                // Kept for when a peer subscribes; sync delivers it anyway.
                if self.gossip.outbox.len() >= OUTBOX_CAPACITY {
                    self.gossip.outbox.pop_front();
                }
                self.gossip.outbox.push_back((topic, bytes));
            }
            Err(e) => tracing::warn!("cannot publish: {e}"),
        }
    }

    /// Tries to publish everything in the outbox again.
    pub(super) fn flush_outbox(&mut self) {
        let pending: Vec<_> = self.gossip.outbox.drain(..).collect();
        for (topic, bytes) in pending {
            self.publish(topic, bytes);
        }
    }

    /// A gossipsub event.
    pub(super) fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let acceptance = self.validate(propagation_source, &message);
                let rejected = matches!(acceptance, MessageAcceptance::Reject);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if rejected {
                    // The rejection counted against its score just now.
                    self.check_score(propagation_source, Instant::now());
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                if let Some(&campaign) = self.campaigns.topics.get(&topic) {
                    self.emit(Event::Subscribed {
                        peer: peer_id,
                        campaign,
                    });
                }
                self.flush_outbox();
            }
            _ => {}
        }
    }

    /// What gossipsub should do with a message `from` forwarded.
    fn validate(&mut self, from: PeerId, message: &gossipsub::Message) -> MessageAcceptance {
        if !self.limits.gossip.allow(from, Instant::now()) {
            self.refuse(
                from,
                "over the per-peer gossip rate".into(),
                "rate_limited",
                PeerAction::Ignore,
            )
        } else if message.topic == self.campaigns.announce_topic.hash() {
            self.on_announcement(&message.data, &Context::announcement(unix_now()), from)
        } else if let Some(&id) = self.campaigns.topics.get(&message.topic) {
            self.on_campaign_message(id, &message.data, &Context::gossip(id, unix_now()), from)
        } else {
            MessageAcceptance::Ignore
        }
    }

    /// Verifies a campaign message and feeds it; the acceptance gossipsub should apply.
    pub(super) fn on_campaign_message(
        &mut self,
        id: CampaignId,
        bytes: &[u8],
        ctx: &Context,
        from: PeerId,
    ) -> MessageAcceptance {
        let msg = match AnySigned::verify_and_decode(bytes, ctx) {
            Ok(m) => m,
            Err(e) => {
                let action = e.peer_action();
                self.count_junk(from, action);
                return self.refuse(from, e.to_string(), e.label(), action);
            }
        };
        let mid = msg.id();
        if self.store.has_message(&mid).unwrap_or(false) {
            return MessageAcceptance::Accept;
        }
        let verdicts = self.drive(id, PeerInput::Message(msg.clone()));
        if let Some((_, error, action)) = verdicts.into_iter().find(|(m, _, _)| *m == mid) {
            return self.refuse(from, error.to_string(), error.label(), action);
        }
        self.store_message(id, mid, msg.bytes(), false);
        if let AnySigned::Reveal(r) = &msg {
            self.prefetch_step_blobs(id, r);
        }
        self.gossip.validated += 1;
        Metrics::count(&self.metrics.accepted, "kind", msg.kind().label());
        self.emit(Event::Accepted(mid));
        MessageAcceptance::Accept
    }

    /// Counts and reports a refused message; the acceptance its peer action means.
    fn refuse(
        &mut self,
        from: PeerId,
        reason: String,
        label: &'static str,
        action: PeerAction,
    ) -> MessageAcceptance {
        self.gossip.rejected += 1;
        Metrics::count(&self.metrics.rejected, "reason", label);
        let penalised = action == PeerAction::Reject;
        tracing::debug!(%from, penalised, "message refused: {reason}");
        self.emit(Event::Rejected {
            from,
            reason,
            penalised,
        });
        if penalised {
            MessageAcceptance::Reject
        } else {
            MessageAcceptance::Ignore
        }
    }

    /// A campaign announced on the announcement topic: follow it.
    fn on_announcement(&mut self, bytes: &[u8], ctx: &Context, from: PeerId) -> MessageAcceptance {
        match decode_campaign(bytes, ctx) {
            Ok(signed) => match self.add_campaign(&signed, false) {
                Ok(()) => {
                    self.gossip.validated += 1;
                    Metrics::count(&self.metrics.accepted, "kind", Kind::Campaign.label());
                    MessageAcceptance::Accept
                }
                // Valid, but not for this node's policy: forwarded for the peers it suits.
                Err(CampaignError::NotAccepted(why)) => {
                    tracing::debug!("not following an announced campaign: {why}");
                    MessageAcceptance::Accept
                }
                Err(e) => self.refuse(from, e.to_string(), "campaign_refused", PeerAction::Ignore),
            },
            Err(e) => {
                self.count_junk(from, e.peer_action());
                self.refuse(from, e.to_string(), e.label(), e.peer_action())
            }
        }
    }

    /// Gossip that failed to decode but is dropped without blame (another version, stale,
    /// dated ahead): past [`super::rate_limit::JUNK_RATE_PER_PEER`], each costs its forwarder
    /// [`JUNK_PENALTY`] of application score.
    fn count_junk(&mut self, from: PeerId, action: PeerAction) {
        let now = Instant::now();
        if action != PeerAction::Ignore || self.limits.junk.allow(from, now) {
            return;
        }
        self.lower_app_score(from, JUNK_PENALTY, now);
    }

    /// Adds `penalty` (negative) to `peer`'s application score, hands the new score to
    /// gossipsub, and bans the peer if its score fell below the graylist threshold.
    pub(super) fn lower_app_score(&mut self, peer: PeerId, penalty: f64, now: Instant) {
        let score = self.limits.app_scores.entry(peer).or_insert(0.0);
        *score += penalty;
        let s = *score;
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, s);
        self.check_score(peer, now);
    }

    /// Disconnects and bans `peer` for [`super::rate_limit::BAN_DURATION`] if its gossip score
    /// is below the graylist threshold (gossipsub only ignores such a peer; it would stay
    /// connected, costing a connection slot and validation work on everything else it sends).
    pub(super) fn check_score(&mut self, peer: PeerId, now: Instant) {
        let Some(score) = self.swarm.behaviour().gossipsub.peer_score(&peer) else {
            return;
        };
        if score >= GRAYLIST_THRESHOLD || self.limits.bans.is_banned(&peer) {
            return;
        }
        let released = self.limits.bans.ban(peer, now);
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        blocked.block_peer(peer);
        if let Some(p) = released {
            blocked.unblock_peer(p);
        }
        tracing::info!(%peer, score, "peer banned: gossip score below the graylist threshold");
        Metrics::count(&self.metrics.rejected, "reason", "banned");
        self.emit(Event::Banned { peer, score });
    }

    /// Lifts the bans that have ended and bans connected peers whose score fell below the
    /// graylist threshold (behaviour penalties and application scores change outside message
    /// validation).
    pub(super) fn review_scores(&mut self, now: Instant) {
        for p in self.limits.bans.expired(now) {
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            self.check_score(p, now);
        }
    }
}
