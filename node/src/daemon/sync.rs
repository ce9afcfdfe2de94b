//! Ledger sync (`/hivemesh/sync/1`): asking a connected peer for its campaigns and for the
//! messages of each campaign from a cursor, answering such requests, and penalising peers that
//! send invalid history.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use hivemesh_protocol::envelope::Context;
use hivemesh_protocol::id::CampaignId;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::request_response::{self, ResponseChannel};

use super::campaigns::decode_campaign;
use super::{Event, EventLoop};
use crate::net::{MAX_SYNC_BYTES, MAX_SYNC_CAMPAIGNS, SyncRequest, SyncResponse};

/// Application-score cost of one invalid message received over sync.
const SYNC_REJECT_PENALTY: f64 = -100.0;

/// Where sync stands with each peer.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// The next sequence number to ask each peer for, per campaign (in *its* store).
    cursor: HashMap<(PeerId, CampaignId), u64>,
    /// Round-robin position among the connected peers.
    turn: usize,
    /// Connected peers that proved they speak hivemesh: their identify, over hivemesh's own
    /// identify protocol, lists the sync protocol. Only they may be put on a genesis roster
    /// (a peer that never votes would stall generation 0). Bounded by the connection limit.
    pub(super) speakers: HashSet<PeerId>,
}

impl EventLoop {
    /// The sync timer: retry failed store writes, flush the store, retry the outbox, sync with
    /// the next connected peer.
    pub(super) fn sync_round(&mut self) {
        self.retry_pending_writes();
        if let Err(e) = self.store.flush() {
            tracing::error!("cannot flush the store: {e}");
        }
        self.flush_outbox();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        self.sync.turn = self.sync.turn.wrapping_add(1);
        let peer = peers[self.sync.turn % peers.len()];
        let sync = &mut self.swarm.behaviour_mut().sync;
        sync.send_request(&peer, SyncRequest::Campaigns);
        for (id, c) in &self.campaigns.map {
            if !c.peer.finished() {
                let from = self.sync.cursor.get(&(peer, *id)).copied().unwrap_or(0);
                sync.send_request(
                    &peer,
                    SyncRequest::Messages {
                        campaign: *id,
                        from,
                    },
                );
            }
        }
    }

    /// Lowers a peer's application score for invalid input and reports it.
    pub(super) fn penalise(&mut self, peer: PeerId, reason: String) {
        self.lower_app_score(peer, SYNC_REJECT_PENALTY, std::time::Instant::now());
        self.emit(Event::Rejected {
            from: peer,
            reason,
            penalised: true,
        });
    }

    /// A sync request–response event.
    pub(super) fn on_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.answer_sync(peer, request, channel);
                }
                request_response::Message::Response { response, .. } => {
                    self.on_sync_response(peer, response);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "sync request failed: {error}");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "sync answer failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Answers a peer's sync request from the store (within the request rate).
    fn answer_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if !self.limits.requests.allow(peer, Instant::now()) {
            return; // dropping the channel tells the peer no
        }
        let response = match request {
            SyncRequest::Campaigns => match self.store.campaigns() {
                Ok(list) => SyncResponse::Campaigns(
                    list.into_iter()
                        .take(MAX_SYNC_CAMPAIGNS)
                        .map(|(_, b)| b)
                        .collect(),
                ),
                Err(e) => {
                    tracing::error!("sync: {e}");
                    return;
                }
            },
            SyncRequest::Messages { campaign, from } => {
                if !self.campaigns.map.contains_key(&campaign) {
                    SyncResponse::Unknown
                } else {
                    match self.store.messages(&campaign, from, MAX_SYNC_BYTES) {
                        Ok((messages, next)) => SyncResponse::Messages {
                            campaign,
                            messages,
                            next,
                        },
                        Err(e) => {
                            tracing::error!("sync: {e}");
                            return;
                        }
                    }
                }
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    /// A peer's answer: campaigns to follow, or a page of a campaign's messages.
    fn on_sync_response(&mut self, peer: PeerId, response: SyncResponse) {
        match response {
            SyncResponse::Campaigns(list) => self.on_synced_campaigns(peer, list),
            SyncResponse::Messages {
                campaign,
                messages,
                next,
            } => self.on_synced_messages(peer, campaign, messages, next),
            SyncResponse::Unknown => {}
        }
    }

    /// Signed campaign specs from a peer: follow the new ones.
    fn on_synced_campaigns(&mut self, peer: PeerId, list: Vec<Vec<u8>>) {
        for bytes in list {
            // History of any age, for a campaign not yet known.
            let ctx = Context {
                campaign: None,
                ..Context::sync(CampaignId([0; 32]))
            };
            match decode_campaign(&bytes, &ctx) {
                Ok(signed) => {
                    if let Err(e) = self.add_campaign(&signed, false) {
                        tracing::debug!("not following a synced campaign: {e}");
                    }
                }
                Err(e) => self.penalise(peer, format!("sync: bad campaign: {e}")),
            }
        }
    }

    /// A page of a campaign's messages from a peer: validate each, move the cursor, and ask
    /// on at once when the page was not empty.
    fn on_synced_messages(
        &mut self,
        peer: PeerId,
        campaign: CampaignId,
        messages: Vec<Vec<u8>>,
        next: u64,
    ) {
        if !self.campaigns.map.contains_key(&campaign) {
            return;
        }
        let full = !messages.is_empty();
        for bytes in messages {
            if self.on_campaign_message(campaign, &bytes, &Context::sync(campaign), peer)
                == MessageAcceptance::Reject
            {
                self.penalise(peer, "sync: invalid message".into());
            }
        }
        self.sync.cursor.insert((peer, campaign), next);
        if full && self.campaigns.running(&campaign) {
            // More may follow: ask on at once.
            self.swarm.behaviour_mut().sync.send_request(
                &peer,
                SyncRequest::Messages {
                    campaign,
                    from: next,
                },
            );
        }
    }
}
