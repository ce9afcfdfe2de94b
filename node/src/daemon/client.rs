//! The node's handle: [`Client`] sends [`Command`]s to the event loop and awaits the reply;
//! every call fails with one error type, [`ClientError`]. [`Event`]s go out to subscribers.
//! The event loop's side of each command is here too ([`EventLoop::on_command`] and one short
//! handler per command).

use std::sync::Arc;

use hivemesh_protocol::envelope::Signed;
use hivemesh_protocol::error::EncodeError;
use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::scoring::PeerScore;
use hivemesh_protocol::spec::{CampaignSpec, JobSpec};
use libp2p::gossipsub::IdentTopic;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::blobs::{FetchError, Waiter};
use super::campaigns::CampaignError;
use super::status::{self, CampaignStatus, NodeStatus, SettledJob};
use super::{EventLoop, peer_key};
use crate::daemon::MAX_PUT_LEN;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::submit::Refusal;

/// Commands queued from clients to the event loop.
pub const COMMAND_CAPACITY: usize = 64;
/// Events buffered per subscriber (a slow subscriber misses the oldest).
pub const EVENT_CAPACITY: usize = 1024;

/// Why a [`Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node stopped before answering.
    #[error("the node has stopped")]
    Stopped,
    /// A submitted campaign was refused (invalid spec, roster too small).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The campaign could not be followed (too many campaigns, the protocol refused it).
    #[error(transparent)]
    Campaign(#[from] CampaignError),
    /// A campaign spec could not be signed.
    #[error(transparent)]
    Sign(#[from] EncodeError),
    /// A blob over [`MAX_PUT_LEN`].
    #[error("the blob is {len} bytes, over the limit of {MAX_PUT_LEN}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A streamed upload was refused or broke off (nothing of it is kept).
    #[error("upload: {0}")]
    Upload(String),
    /// A blob could not be fetched from peers.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// libp2p refused to dial the address.
    #[error(transparent)]
    Dial(#[from] libp2p::swarm::DialError),
    /// Gossipsub refused to publish.
    #[error(transparent)]
    Publish(#[from] libp2p::gossipsub::PublishError),
}

/// A reply channel.
type Reply<T> = oneshot::Sender<T>;

/// What a client asks the event loop.
pub(super) enum Command {
    /// The listen addresses.
    ListenAddrs {
        /// Where the answer goes.
        reply: Reply<Vec<Multiaddr>>,
    },
    /// Dial an address.
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Where the answer goes.
        reply: Reply<Result<(), ClientError>>,
    },
    /// Sign, publish and follow a campaign.
    Submit {
        /// The unsigned spec.
        spec: Box<CampaignSpec>,
        /// Where the answer goes.
        reply: Reply<Result<CampaignId, ClientError>>,
    },
    /// The node's status.
    Status {
        /// Where the answer goes.
        reply: Reply<NodeStatus>,
    },
    /// One campaign's status.
    Campaign {
        /// The campaign.
        id: CampaignId,
        /// Where the answer goes.
        reply: Reply<Option<CampaignStatus>>,
    },
    /// A campaign's settled jobs.
    Settled {
        /// The campaign.
        id: CampaignId,
        /// Where the answer goes.
        reply: Reply<Option<Vec<SettledJob>>>,
    },
    /// A campaign's spec and derived jobs.
    Jobs {
        /// The campaign.
        id: CampaignId,
        /// Where the answer goes.
        reply: Reply<Option<(CampaignSpec, Vec<JobSpec>)>>,
    },
    /// A peer's gossipsub score.
    GossipScore {
        /// The peer.
        peer: PeerId,
        /// Where the answer goes.
        reply: Reply<Option<f64>>,
    },
    /// Every peer's standing in a campaign.
    Scores {
        /// The campaign.
        id: CampaignId,
        /// Where the answer goes.
        reply: Reply<Option<Vec<(PeerKey, PeerScore)>>>,
    },
    /// Publish raw bytes (fault injection).
    PublishRaw {
        /// The gossip topic.
        topic: String,
        /// The bytes.
        bytes: Vec<u8>,
        /// Where the answer goes.
        reply: Reply<Result<(), ClientError>>,
    },
    /// A held blob.
    Blob {
        /// The blob.
        id: BlobId,
        /// Where the answer goes.
        reply: Reply<Result<Option<Vec<u8>>, ClientError>>,
    },
    /// Store a blob.
    PutBlob {
        /// The bytes.
        bytes: Vec<u8>,
        /// Where the answer goes.
        reply: Reply<Result<BlobId, ClientError>>,
    },
    /// Block or unblock a peer.
    Block {
        /// The peer.
        peer: PeerId,
        /// Block (true) or unblock.
        blocked: bool,
        /// Where the answer goes.
        reply: Reply<()>,
    },
    /// A blob, fetched from peers if not held.
    FetchBlob {
        /// The blob.
        id: BlobId,
        /// Where the answer goes.
        reply: Reply<Result<Vec<u8>, ClientError>>,
    },
    /// Announce a blob stored without the loop (an upload).
    Announce {
        /// The blob.
        id: BlobId,
        /// Where the answer goes.
        reply: Reply<()>,
    },
    /// A blob's file, fetched from peers if not held.
    FetchBlobFile {
        /// The blob.
        id: BlobId,
        /// Where the answer goes.
        reply: Reply<Result<(std::path::PathBuf, u64), ClientError>>,
    },
    /// The connected peers' keys.
    PeerKeys {
        /// Where the answer goes.
        reply: Reply<Vec<PeerKey>>,
    },
}

/// What the node reports to subscribers.
#[derive(Debug, Clone)]
pub enum Event {
    /// Listening on a new address (with `/p2p/<peer id>`).
    Listening(Multiaddr),
    /// Connected to a peer.
    Connected(PeerId),
    /// A connected peer proved it speaks hivemesh (its identify lists the sync protocol): it
    /// may now be put on a genesis roster.
    SpeaksHivemesh(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A peer's gossip score fell below the graylist threshold: its connections were closed and
    /// new ones are refused for [`super::rate_limit::BAN_DURATION`].
    Banned {
        /// The peer.
        peer: PeerId,
        /// Its score then.
        score: f64,
    },
    /// A network message was validated, fed to the protocol and stored.
    Accepted(MessageId),
    /// A peer subscribed to a campaign's gossip topic.
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The campaign.
        campaign: CampaignId,
    },
    /// A campaign was submitted here or learned from a peer.
    CampaignAdded(CampaignId),
    /// A job started running here.
    JobStarted {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
    },
    /// A job finished here (its result is stored and published).
    JobFinished {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
    },
    /// A finished job's result could not be stored (the disk is full, the store refuses
    /// writes): it is held, neither published nor acknowledged, and stored at a later retry
    /// (then [`Event::JobFinished`] follows).
    ResultHeld {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
    },
    /// A generation closed.
    Closed {
        /// The campaign.
        campaign: CampaignId,
        /// The generation.
        generation: u32,
        /// Its closure root.
        root: [u8; 32],
    },
    /// A campaign's last generation closed.
    Finished(CampaignId),
    /// A job could not be run here after all (a blob it needs cannot be found, the dataset is
    /// missing, ...); the protocol lets the next-ranked peers take it over.
    JobAbandoned {
        /// The campaign.
        campaign: CampaignId,
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// A blob was fetched from peers, verified and stored.
    BlobFetched {
        /// The blob.
        id: BlobId,
        /// The peer that gave its outboard (its size and part hashes).
        from: PeerId,
        /// The peers that gave verified parts.
        providers: Vec<PeerId>,
        /// Bytes fetched now (less than its size when an earlier fetch left parts on disk).
        fetched: u64,
    },
    /// No peer gave a blob.
    BlobFetchFailed {
        /// The blob.
        id: BlobId,
        /// Why.
        reason: String,
    },
    /// A message was refused.
    Rejected {
        /// The peer that forwarded it.
        from: PeerId,
        /// Why.
        reason: String,
        /// Whether the forwarder was penalised.
        penalised: bool,
    },
}

/// A handle to a running node. Cheap to clone; every call is answered by the event loop.
#[derive(Clone, Debug)]
pub struct Client {
    /// Commands to the event loop.
    pub(super) tx: mpsc::Sender<Command>,
    /// The event broadcast (to subscribe to).
    pub(super) events: broadcast::Sender<Event>,
    /// The node's libp2p peer id.
    pub(super) peer_id: PeerId,
    /// The node's signing key.
    pub(super) key: PeerKey,
    /// The node's metrics.
    pub(super) metrics: Arc<Metrics>,
    /// The latest status snapshot (refreshed by the event loop every
    /// [`super::STATUS_SNAPSHOT_EVERY`]; `None` until it runs).
    pub(super) snapshot: watch::Receiver<Option<Arc<NodeStatus>>>,
    /// The store (uploads stream into its blob files without passing through the loop).
    pub(super) store: Arc<crate::store::Store>,
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// The node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's signing key.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// The node's status as of the last snapshot (at most
    /// [`super::STATUS_SNAPSHOT_EVERY`] old), read without waiting on the event loop: what the
    /// API serves, so that clients polling it cannot slow protocol work. [`Client::status`]
    /// asks the loop for an exact one.
    pub async fn status_snapshot(&self) -> Result<Arc<NodeStatus>, ClientError> {
        if self.snapshot.has_changed().is_err() {
            return Err(ClientError::Stopped);
        }
        let latest = self.snapshot.borrow().clone();
        match latest {
            // Uploads write the store without the loop: its health is read fresh.
            Some(s) if s.store_error != self.store.last_error() => {
                let mut fresh = (*s).clone();
                fresh.store_error = self.store.last_error();
                Ok(Arc::new(fresh))
            }
            Some(s) => Ok(s),
            None => self.status().await.map(Arc::new),
        }
    }

    /// The node's metrics (counted by the event loop).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Subscribes to the node's events (from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, ClientError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), ClientError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Signs and publishes a campaign, and starts following it.
    pub async fn submit(&self, spec: CampaignSpec) -> Result<CampaignId, ClientError> {
        let spec = Box::new(spec);
        self.ask(|reply| Command::Submit { spec, reply }).await?
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// One campaign's status.
    pub async fn campaign(&self, id: CampaignId) -> Result<Option<CampaignStatus>, ClientError> {
        self.ask(|reply| Command::Campaign { id, reply }).await
    }

    /// A campaign's settled jobs.
    pub async fn settled(&self, id: CampaignId) -> Result<Option<Vec<SettledJob>>, ClientError> {
        self.ask(|reply| Command::Settled { id, reply }).await
    }

    /// A campaign's spec and every job derived so far (generation 0 and each generation its
    /// closures opened), in generation and index order.
    pub async fn jobs(
        &self,
        id: CampaignId,
    ) -> Result<Option<(CampaignSpec, Vec<JobSpec>)>, ClientError> {
        self.ask(|reply| Command::Jobs { id, reply }).await
    }

    /// Every peer's standing in a campaign, derived from its closures (the agreed ledger).
    pub async fn scores(
        &self,
        id: CampaignId,
    ) -> Result<Option<Vec<(PeerKey, PeerScore)>>, ClientError> {
        self.ask(|reply| Command::Scores { id, reply }).await
    }

    /// The signing keys of the connected peers that proved they speak hivemesh (see
    /// [`Event::SpeaksHivemesh`]): the candidates for a genesis roster.
    pub async fn connected_keys(&self) -> Result<Vec<PeerKey>, ClientError> {
        self.ask(|reply| Command::PeerKeys { reply }).await
    }

    /// A blob held by this node (weights, shards), checked against its id; `None` when not
    /// held.
    pub async fn blob(&self, id: BlobId) -> Result<Option<Vec<u8>>, ClientError> {
        self.ask(|reply| Command::Blob { id, reply }).await?
    }

    /// Stores a blob (a reference model, a teacher), announces this node as its provider, and
    /// returns its id. At most [`MAX_PUT_LEN`] bytes.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobId, ClientError> {
        self.ask(|reply| Command::PutBlob { bytes, reply }).await?
    }

    /// Streams an upload into the blob store (hashed on the way; never whole in memory), then
    /// announces it; returns its id and size. `expected` (a Content-Length) is reserved
    /// before anything is written; an upload past `limit` bytes or the quota is refused and
    /// leaves nothing. A stream that ends in an error stores nothing.
    pub async fn put_blob_stream<S, E>(
        &self,
        mut body: S,
        expected: Option<u64>,
        limit: u64,
    ) -> Result<(BlobId, u64), ClientError>
    where
        S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        let store = Arc::clone(&self.store);
        let (tx, mut rx) = mpsc::channel::<Option<axum::body::Bytes>>(8);
        let writer = tokio::task::spawn_blocking(move || {
            let blobs = store.blobs();
            let mut up = store.noted(blobs.begin_upload(expected, limit))?;
            while let Some(item) = rx.blocking_recv() {
                let written = match item {
                    Some(chunk) => blobs.upload_write(&mut up, &chunk),
                    None => {
                        blobs.abort_upload(up);
                        return Ok(None);
                    }
                };
                if let Err(e) = written {
                    blobs.abort_upload(up);
                    return store.noted(Err(e));
                }
            }
            store.noted(blobs.finish_upload(up)).map(Some)
        });
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let item = match chunk {
                Ok(c) => Some(c),
                Err(e) => {
                    broken = Some(e.to_string());
                    None
                }
            };
            let stop = item.is_none();
            if tx.send(item).await.is_err() || stop {
                break; // the writer stopped (an error it reports below) or the body broke
            }
        }
        drop(tx);
        let stored = writer
            .await
            .map_err(|e| ClientError::Upload(e.to_string()))?
            .map_err(|e| ClientError::Upload(e.to_string()))?;
        let Some((id, len)) = stored.filter(|_| broken.is_none()) else {
            return Err(ClientError::Upload(format!(
                "the upload broke off: {}",
                broken.unwrap_or_default()
            )));
        };
        self.ask(|reply| Command::Announce { id, reply }).await?;
        Ok((id, len))
    }

    /// A blob from this node's store, or else fetched from the peers that provide it
    /// (hash-checked, then stored here).
    pub async fn fetch_blob(&self, id: BlobId) -> Result<Vec<u8>, ClientError> {
        self.ask(|reply| Command::FetchBlob { id, reply }).await?
    }

    /// Where a blob's bytes are on this node's disk, and its size: held already, or fetched
    /// from the peers that provide it first (verified part by part). For blobs too large to
    /// read whole (datasets).
    pub async fn fetch_blob_file(
        &self,
        id: BlobId,
    ) -> Result<(std::path::PathBuf, u64), ClientError> {
        self.ask(|reply| Command::FetchBlobFile { id, reply })
            .await?
    }

    /// Removes a blob uploaded here that turned out to be unusable (a dataset that does not
    /// decode).
    pub fn remove_blob(&self, id: &BlobId) {
        self.store.blobs().remove(id);
    }

    /// Where a blob held by this node is on disk, and its size (`None`: not held).
    pub fn blob_file(&self, id: &BlobId) -> Option<(std::path::PathBuf, u64)> {
        self.store.blobs().file(id)
    }

    /// Stops talking to a peer (closes its connections, refuses new ones) or, with `blocked`
    /// false, talks to it again. For operators and for netsim's partitions.
    pub async fn block(&self, peer: PeerId, blocked: bool) -> Result<(), ClientError> {
        self.ask(|reply| Command::Block {
            peer,
            blocked,
            reply,
        })
        .await
    }

    /// This node's gossipsub score of a peer.
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, ClientError> {
        self.ask(|reply| Command::GossipScore { peer, reply }).await
    }

    /// Publishes raw bytes on a gossip topic, unchecked (fault injection in tests and netsim).
    pub async fn publish_raw(&self, topic: String, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ask(|reply| Command::PublishRaw {
            topic,
            bytes,
            reply,
        })
        .await?
    }
}

impl EventLoop {
    /// Answers a client's command; one that may change what `/status` shows (a submission,
    /// a stored blob, a dial, a block) refreshes the snapshot at once, so a client reads its
    /// own write.
    pub(super) fn on_command(&mut self, cmd: Command) {
        let changes = matches!(
            cmd,
            Command::Dial { .. }
                | Command::Submit { .. }
                | Command::PutBlob { .. }
                | Command::Block { .. }
                | Command::PublishRaw { .. }
        );
        self.answer(cmd);
        if changes {
            self.publish_status();
        }
    }

    /// Carries out a command and sends its reply.
    fn answer(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(addr));
            }
            Command::Submit { spec, reply } => {
                let _ = reply.send(self.submit(*spec));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.node_status());
            }
            Command::Campaign { id, reply } => {
                let _ = reply.send(self.campaign_status(&id));
            }
            Command::Settled { id, reply } => {
                let _ = reply.send(self.campaigns.map.get(&id).map(status::settled));
            }
            Command::Jobs { id, reply } => {
                let _ = reply.send(self.campaigns.map.get(&id).map(status::jobs));
            }
            Command::Scores { id, reply } => {
                let _ = reply.send(self.campaigns.map.get(&id).map(status::standings));
            }
            Command::PeerKeys { reply } => {
                let keys = self.sync.speakers.iter().filter_map(peer_key).collect();
                let _ = reply.send(keys);
            }
            Command::Blob { id, reply } => {
                let _ = reply.send(self.store.blob(&id).map_err(ClientError::from));
            }
            Command::Block {
                peer,
                blocked,
                reply,
            } => {
                self.block(peer, blocked);
                let _ = reply.send(());
            }
            Command::PutBlob { bytes, reply } => {
                let _ = reply.send(self.put_blob(&bytes));
            }
            Command::FetchBlob { id, reply } => self.get_or_fetch_blob(id, Waiter::Bytes(reply)),
            Command::Announce { id, reply } => {
                self.announce_blob(&id);
                let _ = reply.send(());
            }
            Command::FetchBlobFile { id, reply } => {
                self.get_or_fetch_blob(id, Waiter::File(reply));
            }
            Command::GossipScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::PublishRaw {
                topic,
                bytes,
                reply,
            } => {
                let _ = reply.send(self.publish_raw(topic, bytes));
            }
        }
    }

    /// Dials an address (learning the peer's address for Kademlia first).
    fn dial(&mut self, addr: Multiaddr) -> Result<(), ClientError> {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        Ok(self.swarm.dial(addr)?)
    }

    /// Checks, signs, stores, announces and follows a campaign submitted here.
    fn submit(&mut self, spec: CampaignSpec) -> Result<CampaignId, ClientError> {
        crate::submit::check_roster(&spec)?;
        let signed = Signed::sign_and_encode(spec, &self.campaigns.key)?;
        let id = signed.message().id();
        self.add_campaign(&signed, true)?;
        Ok(id)
    }

    /// Publishes a fresh status snapshot for [`Client::status_snapshot`].
    pub(super) fn publish_status(&mut self) {
        let now = Arc::new(self.node_status());
        self.status_tx.send_replace(Some(now));
    }

    /// The node as a whole.
    fn node_status(&self) -> NodeStatus {
        let campaigns = self
            .campaigns
            .map
            .iter()
            .map(|(id, c)| status::campaign_status(id, c, &self.store))
            .collect();
        NodeStatus {
            peer_id: self.swarm.local_peer_id().to_string(),
            key: self.campaigns.key.public().to_string(),
            listen: self.listen_addrs.iter().map(ToString::to_string).collect(),
            peers: self.swarm.connected_peers().count(),
            hivemesh_peers: self.sync.speakers.len(),
            jobs_running: self.jobs.running,
            jobs_finished: self.jobs.finished,
            messages_validated: self.gossip.validated,
            messages_rejected: self.gossip.rejected,
            audit: self.config.audit,
            store_error: self.store.last_error(),
            pending_writes: self.pending_writes(),
            fetches: self.blobs.progress(),
            blob_store: self.store.blobs().usage(),
            campaigns,
        }
    }

    /// One campaign, with the protocol's summary line.
    fn campaign_status(&mut self, id: &CampaignId) -> Option<CampaignStatus> {
        let c = self.campaigns.map.get_mut(id)?;
        let mut s = status::campaign_status(id, c, &self.store);
        s.summary = c.peer.status_line();
        Some(s)
    }

    /// Blocks or unblocks a peer.
    fn block(&mut self, peer: PeerId, blocked: bool) {
        // The operator's decision from now on: a ban ending must not lift it.
        self.limits.bans.forget(&peer);
        let b = &mut self.swarm.behaviour_mut().blocked;
        if blocked {
            b.block_peer(peer);
        } else {
            b.unblock_peer(peer);
        }
    }

    /// Publishes raw bytes on a topic, unchecked.
    fn publish_raw(&mut self, topic: String, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(IdentTopic::new(topic), bytes)
            .map(|_| ())
            .map_err(ClientError::from)
    }
}
