//! Blobs: serving chunks to peers, storing blobs clients give, announcing held blobs as
//! Kademlia provider records, and fetching missing ones from peers (driving the sans-IO
//! [`BlobFetch`] of `crate::fetch`) for jobs and clients waiting on them.

use std::collections::HashMap;
use std::time::Instant;

use hivemesh_protocol::id::{BlobId, CampaignId};
use hivemesh_protocol::spec::JobSpec;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, kad};
use tokio::sync::oneshot;

use super::client::ClientError;
use super::{Event, EventLoop};
use crate::fault::Fault;
use crate::fetch::{BlobFetch, MAX_BLOB_LEN, MAX_FETCHES, Step};
use crate::metrics::Metrics;
use crate::net::{BLOB_CHUNK, BlobRequest, BlobResponse};
use crate::store::StoreError;

/// Blobs this node announces as a provider when it starts (the rest are still served).
pub const MAX_ANNOUNCED_BLOBS: usize = 4096;

/// Why a blob could not be fetched from peers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// [`MAX_FETCHES`] fetches are under way.
    #[error("{MAX_FETCHES} blob fetches are under way already; try again later")]
    Busy,
    /// No peer gave it (what the last one said).
    #[error("{0}")]
    NoPeer(String),
    /// It arrived but could not be stored.
    #[error("cannot store blob {id}: {reason}")]
    Store {
        /// The blob.
        id: BlobId,
        /// The store's error.
        reason: String,
    },
}

/// Who waits for a blob being fetched: a client's reply channel.
type Waiter = oneshot::Sender<Result<Vec<u8>, ClientError>>;

/// A blob being fetched and who waits for it.
struct Fetching {
    /// The fetch's state machine.
    fetch: BlobFetch,
    /// Jobs to start once it is here.
    jobs: Vec<(CampaignId, JobSpec)>,
    /// Clients to answer.
    waiters: Vec<Waiter>,
}

/// Blob fetches under way and the requests and queries that serve them.
#[derive(Default)]
pub(super) struct Blobs {
    /// Fetches by blob (at most [`MAX_FETCHES`]).
    fetches: HashMap<BlobId, Fetching>,
    /// Chunk requests in flight, to their blob.
    requests: HashMap<OutboundRequestId, BlobId>,
    /// Kademlia provider searches in flight, to their blob.
    searches: HashMap<kad::QueryId, BlobId>,
}

impl EventLoop {
    /// Announces the blobs the store holds (up to [`MAX_ANNOUNCED_BLOBS`]): provider records
    /// live in memory.
    pub(super) fn announce_held_blobs(&mut self) -> Result<(), StoreError> {
        let held = self.store.blob_ids(MAX_ANNOUNCED_BLOBS + 1)?;
        if held.len() > MAX_ANNOUNCED_BLOBS {
            tracing::warn!(
                "the store holds more than {MAX_ANNOUNCED_BLOBS} blobs: announcing the first \
                 {MAX_ANNOUNCED_BLOBS} (the rest are served to peers who ask)"
            );
        }
        for id in held.iter().take(MAX_ANNOUNCED_BLOBS) {
            self.announce_blob(id);
        }
        Ok(())
    }

    /// A blob request–response event: a request to serve or a chunk of a fetch.
    pub(super) fn on_blob(&mut self, event: request_response::Event<BlobRequest, BlobResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.serve_blob(peer, request, channel),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.on_blob_response(peer, request_id, response),
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(id) = self.blobs.requests.remove(&request_id) else {
                    return;
                };
                if let Some(f) = self.blobs.fetches.get_mut(&id) {
                    let step = f.fetch.on_missing(peer, &error.to_string());
                    self.advance_fetch(id, step, peer);
                }
            }
            _ => {}
        }
    }

    /// A peer's answer to one of our chunk requests.
    fn on_blob_response(
        &mut self,
        peer: PeerId,
        request: OutboundRequestId,
        response: BlobResponse,
    ) {
        let Some(id) = self.blobs.requests.remove(&request) else {
            return;
        };
        let Some(f) = self.blobs.fetches.get_mut(&id) else {
            return;
        };
        let step = match response {
            BlobResponse::Chunk {
                total,
                offset,
                data,
            } => match f.fetch.on_chunk(peer, total, offset, data) {
                Ok(step) => step,
                Err(bad) => {
                    let next = f.fetch.next_step();
                    self.penalise(peer, format!("blob {id}: {bad}"));
                    Metrics::count(&self.metrics.rejected, "reason", "blob_hash");
                    next
                }
            },
            BlobResponse::NotFound => f.fetch.on_missing(peer, "not found"),
        };
        self.advance_fetch(id, step, peer);
    }

    /// Serves one chunk of a held blob (within the blob request rate).
    fn serve_blob(
        &mut self,
        peer: PeerId,
        request: BlobRequest,
        channel: ResponseChannel<BlobResponse>,
    ) {
        if !self.limits.blobs.allow(peer, Instant::now()) {
            return; // dropping the channel tells the peer no
        }
        let response = match self
            .store
            .blob_chunk(&request.id, request.offset, BLOB_CHUNK)
        {
            Ok(Some((total, mut data))) => {
                if self.config.fault == Some(Fault::CorruptBlobs)
                    && let Some(b) = data.first_mut()
                {
                    *b ^= 0xff;
                }
                BlobResponse::Chunk {
                    total,
                    offset: request.offset.min(total),
                    data,
                }
            }
            Ok(None) => BlobResponse::NotFound,
            Err(e) => {
                tracing::error!("blob {}: {e}", request.id);
                BlobResponse::NotFound
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .blob
            .send_response(channel, response);
    }

    /// Announces this node as a provider of a blob it holds (a Kademlia provider record).
    pub(super) fn announce_blob(&mut self, id: &BlobId) {
        let key = kad::RecordKey::new(id.as_bytes());
        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
            tracing::warn!(blob = %id, "cannot announce blob: {e}");
        }
    }

    /// Stores a blob given by a client and announces it.
    pub(super) fn put_blob(&mut self, bytes: &[u8]) -> Result<BlobId, ClientError> {
        if bytes.len() as u64 > MAX_BLOB_LEN {
            return Err(ClientError::TooLarge { len: bytes.len() });
        }
        let id = BlobId::of_bytes(bytes);
        self.store.put_blob(&id, bytes)?;
        self.announce_blob(&id);
        Ok(id)
    }

    /// A client wants a blob: from the store, or else fetched from peers (the fetch answers).
    pub(super) fn get_or_fetch_blob(&mut self, id: BlobId, reply: Waiter) {
        match self.store.blob(&id) {
            Ok(Some(bytes)) => {
                let _ = reply.send(Ok(bytes));
            }
            // The fetch answers `reply`, also when it cannot start.
            Ok(None) => {
                let _ = self.fetch_blob(id, None, Some(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Fetches a blob from peers for a job to start and/or a client to answer. Fails at once
    /// (answering the waiter too) when too many fetches are under way; otherwise the outcome
    /// arrives later.
    pub(super) fn fetch_blob(
        &mut self,
        id: BlobId,
        job: Option<(CampaignId, JobSpec)>,
        waiter: Option<Waiter>,
    ) -> Result<(), FetchError> {
        if let Some(f) = self.blobs.fetches.get_mut(&id) {
            f.jobs.extend(job);
            f.waiters.extend(waiter);
            return Ok(());
        }
        if self.blobs.fetches.len() >= MAX_FETCHES {
            if let Some(w) = waiter {
                let _ = w.send(Err(FetchError::Busy.into()));
            }
            return Err(FetchError::Busy);
        }
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(id.as_bytes()));
        self.blobs.searches.insert(query, id);
        let mut fetch = BlobFetch::new(id, true);
        // Connected peers are asked too (after any provider found): in a small swarm they are
        // likely holders, and asking costs one round trip.
        fetch.add_candidates(self.swarm.connected_peers().copied(), false);
        let step = fetch.next_step();
        self.blobs.fetches.insert(
            id,
            Fetching {
                fetch,
                jobs: job.into_iter().collect(),
                waiters: waiter.into_iter().collect(),
            },
        );
        let me = *self.swarm.local_peer_id();
        self.advance_fetch(id, step, me);
        Ok(())
    }

    /// A newly connected peer may hold what a fetch still searches for: add it as a candidate
    /// and move idle fetches on.
    pub(super) fn offer_peer_to_fetches(&mut self, peer: PeerId) {
        for f in self.blobs.fetches.values_mut() {
            f.fetch.add_candidates([peer], false);
        }
        let idle: Vec<BlobId> = self
            .blobs
            .fetches
            .iter()
            .filter(|(_, f)| f.fetch.current().is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(f) = self.blobs.fetches.get_mut(&id) {
                let step = f.fetch.next_step();
                self.advance_fetch(id, step, peer);
            }
        }
    }

    /// Providers found (or the search ended) for a blob being fetched.
    pub(super) fn on_providers(
        &mut self,
        query: kad::QueryId,
        result: kad::GetProvidersResult,
        last: bool,
    ) {
        let Some(&blob) = self.blobs.searches.get(&query) else {
            return;
        };
        if last {
            self.blobs.searches.remove(&query);
        }
        let Some(f) = self.blobs.fetches.get_mut(&blob) else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            f.fetch
                .add_candidates(providers.into_iter().filter(|p| *p != me), true);
        }
        if last {
            f.fetch.search_done();
        }
        if f.fetch.current().is_none() {
            let next = f.fetch.next_step();
            self.advance_fetch(blob, next, me);
        }
    }

    /// Carries out a fetch's next step (`from`: the peer that answered last).
    fn advance_fetch(&mut self, id: BlobId, step: Step, from: PeerId) {
        match step {
            Step::Request { peer, offset } => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_request(&peer, BlobRequest { id, offset });
                self.blobs.requests.insert(rid, id);
            }
            Step::Wait => {}
            Step::Done(bytes) => {
                let Some(f) = self.blobs.fetches.remove(&id) else {
                    return;
                };
                if let Err(e) = self.store.put_blob(&id, &bytes) {
                    let reason = e.to_string();
                    self.finish_fetch(f, Err(FetchError::Store { id, reason }));
                    return;
                }
                tracing::info!(blob = %id, bytes = bytes.len(), %from, "blob fetched");
                Metrics::count(&self.metrics.blob_fetches, "result", "ok");
                self.metrics.blob_bytes_fetched.inc_by(bytes.len() as u64);
                self.announce_blob(&id);
                self.emit(Event::BlobFetched { id, from });
                self.finish_fetch(f, Ok(bytes));
            }
            Step::Failed(reason) => {
                if let Some(f) = self.blobs.fetches.remove(&id) {
                    Metrics::count(&self.metrics.blob_fetches, "result", "failed");
                    self.emit(Event::BlobFetchFailed {
                        id,
                        reason: reason.clone(),
                    });
                    self.finish_fetch(f, Err(FetchError::NoPeer(reason)));
                }
            }
        }
    }

    /// Answers everyone waiting on a finished fetch: clients get the bytes or the error, jobs
    /// start (checking their other blobs) or are abandoned.
    fn finish_fetch(&mut self, f: Fetching, outcome: Result<Vec<u8>, FetchError>) {
        self.blobs.searches.retain(|_, b| *b != f.fetch.id());
        for w in f.waiters {
            let _ = w.send(outcome.clone().map_err(ClientError::from));
        }
        for (campaign, job) in f.jobs {
            match &outcome {
                Ok(_) => self.start_job(campaign, job),
                Err(e) => self.abandon(campaign, job.id(), e.to_string()),
            }
        }
    }
}
