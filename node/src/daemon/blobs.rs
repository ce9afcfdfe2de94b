//! Blobs: serving outboards and parts to peers, storing blobs clients give, announcing held
//! blobs as Kademlia provider records, and fetching missing ones from several peers at once
//! (driving the sans-IO [`BlobFetch`] of `crate::fetch`, writing verified parts to disk as they
//! arrive) for jobs and clients waiting on them (ADR 0008).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use hivemesh_protocol::closure::Entry;
use hivemesh_protocol::envelope::Signed;
use hivemesh_protocol::id::{BlobId, CampaignId, JobId};
use hivemesh_protocol::message::Reveal;
use hivemesh_protocol::outcome::Outcome;
use hivemesh_protocol::spec::{JobPayload, JobSpec, Search};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, kad};
use tokio::sync::{mpsc, oneshot};

use super::client::ClientError;
use super::jobs::StoreBlobs;
use super::{Event, EventLoop};
use crate::blobtree;
use crate::fault::Fault;
use crate::fetch::{Ask, BlobFetch, MAX_BLOB_LEN, MAX_FETCHES, State, Want};
use crate::metrics::Metrics;
use crate::net::{BlobRequest, BlobResponse, MAX_HASHES};
use crate::store::{BlobError, Partial, StoreError};

/// Blobs this node announces as a provider when it starts (the rest are still served).
pub const MAX_ANNOUNCED_BLOBS: usize = 4096;
/// The largest blob a client may give in one piece (weights, teachers; datasets are converted
/// into blobs of up to this size by `POST /datasets`).
pub const MAX_PUT_LEN: u64 = 256 * 1024 * 1024;

/// Why a blob could not be fetched from peers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// [`MAX_FETCHES`] fetches are under way.
    #[error("{MAX_FETCHES} blob fetches are under way already; try again later")]
    Busy,
    /// No peer gave it (what the last ones said).
    #[error("{0}")]
    NoPeer(String),
    /// It could not be stored (the disk, or the blob quota).
    #[error("cannot store blob {id}: {reason}")]
    Store {
        /// The blob.
        id: BlobId,
        /// The store's error.
        reason: String,
    },
}

/// Who waits for a blob being fetched: a client's reply channel, for the bytes or the file.
pub(super) enum Waiter {
    /// The whole blob in memory (at most the store's read-whole limit).
    Bytes(oneshot::Sender<Result<Vec<u8>, ClientError>>),
    /// Where it is on disk, and its size.
    File(oneshot::Sender<Result<(std::path::PathBuf, u64), ClientError>>),
}

impl Waiter {
    /// Answers from the store (the blob is held), or with `err`.
    fn answer(self, store: &crate::store::Store, id: &BlobId, err: Option<ClientError>) {
        match (self, err) {
            (Waiter::Bytes(w), Some(e)) => {
                let _ = w.send(Err(e));
            }
            (Waiter::File(w), Some(e)) => {
                let _ = w.send(Err(e));
            }
            (Waiter::Bytes(w), None) => {
                let r = match store.blob(id) {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err(FetchError::NoPeer(format!("blob {id} vanished")).into()),
                    Err(e) => Err(e.into()),
                };
                let _ = w.send(r);
            }
            (Waiter::File(w), None) => {
                let r = store
                    .blobs()
                    .file(id)
                    .ok_or_else(|| FetchError::NoPeer(format!("blob {id} vanished")).into());
                let _ = w.send(r);
            }
        }
    }
}

/// A blob being fetched and who waits for it.
struct Fetching {
    /// The fetch's state machine.
    fetch: BlobFetch,
    /// The file its verified parts go to, once the outboard verified.
    partial: Option<Partial>,
    /// The peer that gave the outboard (reported when it is done).
    source: Option<PeerId>,
    /// The peers that gave verified parts.
    providers: HashSet<PeerId>,
    /// Bytes of verified parts received.
    fetched: u64,
    /// Jobs to start once it is here.
    jobs: Vec<(CampaignId, JobSpec)>,
    /// Clients to answer.
    waiters: Vec<Waiter>,
    /// Its resumed file's parts are being re-checked off the event loop: nothing is asked
    /// until they are ([`EventLoop::on_partial_opened`]).
    opening: bool,
}

/// How a fetch under way is doing, for the status and the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FetchProgress {
    /// The blob.
    pub id: String,
    /// Bytes verified and written.
    pub have: u64,
    /// Its size, once known.
    pub total: Option<u64>,
}

/// A resumed fetch's file, its parts re-checked.
pub(super) type Opened = (BlobId, Partial);

/// Blob fetches under way and the requests and queries that serve them.
pub(super) struct Blobs {
    /// Resumed files whose parts were re-checked on the blocking pool, back to the event loop
    /// (one per fetch at a time; a full channel holds a blocking thread, never the loop).
    pub(super) opened: (mpsc::Sender<Opened>, mpsc::Receiver<Opened>),
    /// Fetches by blob (at most [`MAX_FETCHES`]).
    fetches: HashMap<BlobId, Fetching>,
    /// Requests in flight, to their blob.
    requests: HashMap<OutboundRequestId, BlobId>,
    /// Kademlia provider searches in flight, to their blob.
    searches: HashMap<kad::QueryId, BlobId>,
    /// Blobs to fetch ahead of need once fetches finish (at most [`MAX_PREFETCHES`]).
    prefetches: VecDeque<(BlobId, CampaignId, Option<PeerId>)>,
}

impl Default for Blobs {
    fn default() -> Self {
        Blobs {
            opened: mpsc::channel(MAX_FETCHES),
            fetches: HashMap::new(),
            requests: HashMap::new(),
            searches: HashMap::new(),
            prefetches: VecDeque::new(),
        }
    }
}

/// The most blobs waiting to be fetched ahead of need (a secure round of 255 clients' keys,
/// shares, masked updates and reveals is about 1,000).
pub const MAX_PREFETCHES: usize = 1024;

impl Blobs {
    /// The fetches under way.
    pub(super) fn progress(&self) -> Vec<FetchProgress> {
        let mut v: Vec<FetchProgress> = self
            .fetches
            .iter()
            .map(|(id, f)| FetchProgress {
                id: id.to_string(),
                have: f.fetch.have(),
                total: f.fetch.total(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
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

    /// A blob request–response event: a request to serve, or an answer to a fetch.
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
                    f.fetch.on_missing(peer, &error.to_string());
                }
                self.advance_fetch(id);
            }
            _ => {}
        }
    }

    /// A peer's answer to one of our requests.
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
        let outcome = match response {
            BlobResponse::Hashes { total, from, cvs } => {
                match f.fetch.on_hashes(peer, total, from, cvs) {
                    Ok(true) => {
                        f.source = Some(peer);
                        self.open_partial(id);
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(bad) => Err(bad),
                }
            }
            BlobResponse::Part { index, data } => match f.fetch.on_part(peer, index, &data) {
                Ok(true) => {
                    f.providers.insert(peer);
                    f.fetched += data.len() as u64;
                    // `on_part` checked it against the outboard the partial file was opened with.
                    let written = f
                        .partial
                        .as_mut()
                        .map(|p| p.write_checked_part(index, &data));
                    if let Some(Err(e)) = written {
                        tracing::error!(blob = %id, "cannot write part {index}: {e}");
                        f.fetch.unwritten(index);
                    }
                    self.metrics.blob_bytes_fetched.inc_by(data.len() as u64);
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(bad) => Err(bad),
            },
            BlobResponse::NotFound => {
                f.fetch.on_missing(peer, "not found");
                Ok(())
            }
        };
        if let Err(bad) = outcome {
            self.penalise(peer, format!("blob {id}: {bad}"));
            Metrics::count(&self.metrics.rejected, "reason", "blob_hash");
        }
        self.advance_fetch(id);
    }

    /// The outboard verified: opens (or resumes) the file its parts go to, which reserves
    /// the room; a full store fails the fetch before anything is written.
    fn open_partial(&mut self, id: BlobId) {
        let Some(f) = self.blobs.fetches.get_mut(&id) else {
            return;
        };
        let Some(total) = f.fetch.total() else {
            return;
        };
        let cvs = f.fetch.outboard().to_vec();
        match self.store.blobs().partial(&id, total, cvs.clone()) {
            Ok(mut p) if p.needs_recheck() => {
                // Reading and hashing a resumed file of several GiB takes seconds: not here.
                f.opening = true;
                let tx = self.blobs.opened.0.clone();
                tokio::task::spawn_blocking(move || {
                    p.recheck();
                    let _ = tx.blocking_send((id, p));
                });
            }
            Ok(p) => {
                f.fetch.resume(total, cvs, p.done());
                f.partial = Some(p);
            }
            Err(e) => {
                let reason = e.to_string();
                if let Some(f) = self.blobs.fetches.remove(&id) {
                    self.fail_fetch(f, FetchError::Store { id, reason });
                }
            }
        }
    }

    /// Serves an outboard page or a part of a held blob (within the blob request rate).
    fn serve_blob(
        &mut self,
        peer: PeerId,
        request: BlobRequest,
        channel: ResponseChannel<BlobResponse>,
    ) {
        if !self.limits.blobs.allow(peer, Instant::now()) {
            return; // dropping the channel tells the peer no
        }
        let id = request.id();
        let blobs = self.store.blobs();
        let response = match request {
            BlobRequest::Hashes { from, max, .. } => blobs
                .hashes(&id, from, max.min(MAX_HASHES) as usize)
                .map(|h| h.map(|(total, cvs)| BlobResponse::Hashes { total, from, cvs })),
            BlobRequest::Part { index, .. } => blobs.part(&id, index).map(|p| {
                p.map(|(_, mut data)| {
                    if self.config.fault == Some(Fault::CorruptBlobs)
                        && let Some(b) = data.first_mut()
                    {
                        *b ^= 0xff;
                    }
                    BlobResponse::Part { index, data }
                })
            }),
        };
        let response = response.unwrap_or_else(|e: BlobError| {
            tracing::error!("blob {id}: {e}");
            None
        });
        let _ = self
            .swarm
            .behaviour_mut()
            .blob
            .send_response(channel, response.unwrap_or(BlobResponse::NotFound));
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
        if bytes.len() as u64 > MAX_PUT_LEN {
            return Err(ClientError::TooLarge { len: bytes.len() });
        }
        let id = BlobId::of_bytes(bytes);
        self.store.put_blob(&id, bytes)?;
        self.announce_blob(&id);
        Ok(id)
    }

    /// A client wants a blob (its bytes or its file): from the store, or else fetched from
    /// peers (the fetch answers).
    pub(super) fn get_or_fetch_blob(&mut self, id: BlobId, reply: Waiter) {
        if self.store.blobs().len(&id).is_some() {
            reply.answer(&self.store, &id, None);
            return;
        }
        // The fetch answers `reply`, also when it cannot start.
        let _ = self.fetch_blob(id, None, Some(reply));
    }

    /// The most bytes a fetch of `id` may bring: the declared size of a followed campaign's
    /// dataset; else, for a job, [`MAX_PUT_LEN`] (reference models, teachers) or what the
    /// job's kind sizes its blobs to from what is held here (a training round's states, from
    /// the model), whichever is larger; else (the operator asked, through the API)
    /// [`MAX_BLOB_LEN`]; always within the blob quota.
    fn fetch_limit(&self, id: &BlobId, job: Option<&CampaignId>) -> u64 {
        if let Some(c) = self
            .campaigns
            .map
            .values()
            .find(|c| c.spec.dataset.id == *id)
        {
            return c.spec.dataset.bytes.min(MAX_BLOB_LEN);
        }
        let Some(c) = job.and_then(|campaign| self.campaigns.map.get(campaign)) else {
            return if job.is_some() {
                MAX_PUT_LEN
            } else {
                MAX_BLOB_LEN
            };
        };
        let held = StoreBlobs(Arc::clone(&self.store));
        self.jobs
            .executor
            .job_blob_limit(&c.spec, &held)
            .map_or(MAX_PUT_LEN, |l| l.max(MAX_PUT_LEN))
            .min(MAX_BLOB_LEN)
    }

    /// Tells the store which blobs followed unfinished campaigns need (never evicted).
    fn pin_needed_blobs(&self) {
        let pins: HashSet<BlobId> = self
            .campaigns
            .map
            .values()
            .filter(|c| !c.peer.finished())
            .flat_map(|c| crate::executor::needed_blobs(&c.spec))
            .map(|(id, _)| id)
            .collect();
        self.store.blobs().set_pins(pins);
    }

    /// Fetches a blob from peers for a job to start and/or a client to answer. Fails at once
    /// (answering the waiter too) when too many fetches are under way; otherwise the outcome
    /// arrives later. A fetch cut short by a restart resumes from the parts on disk.
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
                w.answer(&self.store, &id, Some(FetchError::Busy.into()));
            }
            return Err(FetchError::Busy);
        }
        let limit = self.fetch_limit(&id, job.as_ref().map(|(c, _)| c));
        self.begin_fetch(id, limit, None, job, waiter);
        Ok(())
    }

    /// Fetches `id`, a result a followed campaign will need, ahead of any job asking for it
    /// (see [`EventLoop::prefetch_step_blobs`]): nothing if it is held or under way, or if
    /// half of [`MAX_FETCHES`] are under way (the rest stays for jobs and clients).
    /// `holder` (the result's signer) is asked first. When it cannot start now it waits its
    /// turn (see [`Blobs::prefetches`]).
    fn prefetch_blob(&mut self, id: BlobId, campaign: CampaignId, holder: Option<PeerId>) {
        if self.store.blobs().len(&id).is_some() || self.blobs.fetches.contains_key(&id) {
            return;
        }
        if self.blobs.fetches.len() >= MAX_FETCHES / 2 {
            let q = &mut self.blobs.prefetches;
            if q.len() < MAX_PREFETCHES && !q.iter().any(|(b, _, _)| *b == id) {
                q.push_back((id, campaign, holder));
            }
            return;
        }
        let limit = self.fetch_limit(&id, Some(&campaign));
        tracing::debug!(blob = %id, %campaign, "prefetching a secure round's result");
        self.begin_fetch(id, limit, holder, None, None);
    }

    /// Starts the waiting prefetches there is room for (those of campaigns still followed).
    fn next_prefetches(&mut self) {
        while self.blobs.fetches.len() < MAX_FETCHES / 2 {
            let Some((id, campaign, holder)) = self.blobs.prefetches.pop_front() else {
                return;
            };
            // A finished campaign's last results are still wanted (the copy a node following
            // it keeps): only a campaign no longer followed drops its queue.
            if self.campaigns.map.contains_key(&campaign) {
                self.prefetch_blob(id, campaign, holder);
            }
        }
    }

    /// Starts fetching `id` (at most `limit` bytes) for `job` and/or `waiter`: providers
    /// searched, `holder` and connected peers asked, parts on disk resumed.
    fn begin_fetch(
        &mut self,
        id: BlobId,
        limit: u64,
        holder: Option<PeerId>,
        job: Option<(CampaignId, JobSpec)>,
        waiter: Option<Waiter>,
    ) {
        self.pin_needed_blobs();
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(id.as_bytes()));
        self.blobs.searches.insert(query, id);
        let mut fetch = BlobFetch::new(id, limit, true);
        // The holder first (added after the connected peers, a connected holder would keep
        // its place among them).
        fetch.add_candidates(holder, true);
        // Connected peers are asked too (after any provider found): in a small swarm they are
        // likely holders, and asking costs one round trip.
        fetch.add_candidates(self.swarm.connected_peers().copied(), false);
        self.blobs.fetches.insert(
            id,
            Fetching {
                fetch,
                partial: None,
                source: None,
                providers: HashSet::new(),
                fetched: 0,
                jobs: job.into_iter().collect(),
                waiters: waiter.into_iter().collect(),
                opening: false,
            },
        );
        self.resume_partial(id, limit);
        self.advance_fetch(id);
    }

    /// With secure aggregation, each step's result (keys, sealed shares, a masked update, a
    /// reveal) is held by its one client until someone fetches it, and every later step and
    /// the next round's start model need it: a client gone right after its step would take
    /// the round with it. So every node following the campaign fetches such a result as soon
    /// as its reveal is accepted (one blob per result, for jobs of the current generation
    /// only; the others when their generation closes: [`EventLoop::prefetch_closed_step_blobs`]).
    pub(super) fn prefetch_step_blobs(&mut self, campaign: CampaignId, reveal: &Signed<Reveal>) {
        let holder = super::peer_id_of(&reveal.signer());
        let reveal = reveal.message();
        let Some(c) = self.campaigns.map.get(&campaign) else {
            return;
        };
        let Search::Federated(p) = &c.spec.search else {
            return;
        };
        let Outcome::Success(m) = &reveal.result.outcome else {
            return;
        };
        let secure_step = c
            .peer
            .current_job(&reveal.job)
            .is_some_and(|j| matches!(&j.payload, JobPayload::Federated(f) if f.client.is_some()));
        if p.secure.is_none() || !secure_step {
            return;
        }
        // The step's own blob (a masked update's second artifact is the start model it
        // trained from, which every client builds for itself).
        if let Some(id) = m.artifacts.first().copied() {
            self.prefetch_blob(id, campaign, holder);
        }
    }

    /// A secure federated campaign's generation closed: fetch each step result it settled
    /// that is not held. The reveal-time prefetch ([`EventLoop::prefetch_step_blobs`]) sees
    /// only reveals of jobs of the generation this node is in; a reveal that came before this
    /// node entered the generation, or after it closed, is caught here. The closure is agreed,
    /// so it names only results its executors committed to: no peer can make a node fetch
    /// arbitrary blobs through it. `jobs` are the closed generation's.
    pub(super) fn prefetch_closed_step_blobs(
        &mut self,
        campaign: CampaignId,
        generation: u32,
        jobs: &BTreeMap<JobId, JobSpec>,
    ) {
        let Some(c) = self.campaigns.map.get(&campaign) else {
            return;
        };
        if !matches!(&c.spec.search, Search::Federated(p) if p.secure.is_some()) {
            return;
        }
        let Some((closure, _)) = c
            .peer
            .closures()
            .iter()
            .rev()
            .find(|(cl, _)| cl.generation == generation)
        else {
            return;
        };
        let is_step = |job: &JobId| {
            jobs.get(job).is_some_and(
                |j| matches!(&j.payload, JobPayload::Federated(f) if f.client.is_some()),
            )
        };
        let wanted: Vec<(BlobId, Option<PeerId>)> = closure
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Settled {
                    job, settlement, ..
                } if is_step(job) => match &settlement.canonical {
                    Outcome::Success(m) => m.artifacts.first().map(|id| {
                        let holder = settlement.agreeing.first().and_then(super::peer_id_of);
                        (*id, holder)
                    }),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for (id, holder) in wanted {
            self.prefetch_blob(id, campaign, holder);
        }
    }

    /// Picks up an earlier fetch of `id` whose outboard is on disk (after a restart).
    fn resume_partial(&mut self, id: BlobId, limit: u64) {
        let Some((total, cvs)) = self.store.blobs().partial_outboard(&id) else {
            return;
        };
        if total > limit || !blobtree::outboard_matches(&id, total, &cvs) {
            return;
        }
        if let Some(f) = self.blobs.fetches.get_mut(&id) {
            f.fetch.resume(total, cvs, &[]);
            tracing::info!(blob = %id, bytes = total, "resuming an unfinished fetch");
        }
        self.open_partial(id);
    }

    /// A newly connected peer may hold what a fetch still searches for: add it as a candidate
    /// and move the fetches on.
    pub(super) fn offer_peer_to_fetches(&mut self, peer: PeerId) {
        let ids: Vec<BlobId> = self.blobs.fetches.keys().copied().collect();
        for id in ids {
            if let Some(f) = self.blobs.fetches.get_mut(&id) {
                f.fetch.add_candidates([peer], false);
            }
            self.advance_fetch(id);
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
        self.advance_fetch(blob);
    }

    /// A resumed file's parts were re-checked: the fetch asks for the rest. A fetch that ended
    /// meanwhile keeps the verified parts on disk for a later try (as [`Self::fail_fetch`]).
    pub(super) fn on_partial_opened(&mut self, id: BlobId, p: Partial) {
        match self.blobs.fetches.get_mut(&id) {
            Some(f) if f.opening && f.partial.is_none() => {
                f.opening = false;
                let (total, cvs) = (f.fetch.total().unwrap_or(0), f.fetch.outboard().to_vec());
                f.fetch.resume(total, cvs, p.done());
                f.partial = Some(p);
                self.advance_fetch(id);
            }
            // Another try of the same blob opened the file already.
            Some(_) => {}
            None if p.done().iter().all(|d| !d) => self.store.blobs().abandon(p),
            None => {}
        }
    }

    /// Sends what a fetch asks for next, or finishes it.
    fn advance_fetch(&mut self, id: BlobId) {
        let Some(f) = self.blobs.fetches.get_mut(&id) else {
            return;
        };
        if f.opening {
            return;
        }
        let asks = f.fetch.poll();
        let state = f.fetch.state();
        for Ask { peer, want } in asks {
            let request = match want {
                Want::Hashes { from, max } => BlobRequest::Hashes { id, from, max },
                Want::Part(index) => BlobRequest::Part { id, index },
            };
            let rid = self.swarm.behaviour_mut().blob.send_request(&peer, request);
            self.blobs.requests.insert(rid, id);
        }
        match state {
            State::Going => {}
            State::Done => {
                if let Some(f) = self.blobs.fetches.remove(&id) {
                    self.complete_fetch(id, f);
                }
            }
            State::Failed(reason) => {
                if let Some(f) = self.blobs.fetches.remove(&id) {
                    self.fail_fetch(f, FetchError::NoPeer(reason));
                }
            }
        }
    }

    /// Every part is on disk: the blob joins the store, is announced, and who waited is told.
    fn complete_fetch(&mut self, id: BlobId, mut f: Fetching) {
        let total = f.fetch.total().unwrap_or(0);
        let stored = match f.partial.take() {
            Some(p) => self.store.blobs().finish(p).map_err(|e| e.to_string()),
            None => Err("no file was opened for it".to_string()),
        };
        if let Err(reason) = stored {
            self.fail_fetch(f, FetchError::Store { id, reason });
            return;
        }
        let from = f.source.unwrap_or(*self.swarm.local_peer_id());
        tracing::info!(blob = %id, bytes = total, %from, "blob fetched");
        Metrics::count(&self.metrics.blob_fetches, "result", "ok");
        self.announce_blob(&id);
        let mut providers: Vec<PeerId> = f.providers.iter().copied().collect();
        providers.sort();
        self.emit(Event::BlobFetched {
            id,
            from,
            providers,
            fetched: f.fetched,
        });
        self.blobs.searches.retain(|_, b| *b != id);
        for w in f.waiters {
            w.answer(&self.store, &id, None);
        }
        for (campaign, job) in f.jobs {
            self.start_job(campaign, job);
        }
        self.next_prefetches();
    }

    /// Tells everyone waiting on a fetch that failed; jobs are abandoned (others run them).
    fn fail_fetch(&mut self, f: Fetching, e: FetchError) {
        let id = f.fetch.id();
        Metrics::count(&self.metrics.blob_fetches, "result", "failed");
        self.emit(Event::BlobFetchFailed {
            id,
            reason: e.to_string(),
        });
        self.blobs.searches.retain(|_, b| *b != id);
        // A fetch that got nowhere keeps nothing; one with verified parts keeps them for a
        // later try (the room stays reserved until then).
        if let Some(p) = f.partial
            && p.done().iter().all(|d| !d)
        {
            self.store.blobs().abandon(p);
        }
        for w in f.waiters {
            w.answer(&self.store, &id, Some(e.clone().into()));
        }
        for (campaign, job) in f.jobs {
            self.abandon(campaign, job.id(), e.to_string());
        }
        self.next_prefetches();
    }
}
