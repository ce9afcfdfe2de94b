//! The node's libp2p side: one [`Behaviour`] composing every protocol the node speaks, the
//! request–response wire types for ledger sync and blob transfer, and their size-limited
//! postcard codec.
//!
//! Protocols (all private to hivemesh, so a hivemesh swarm never merges with another one):
//! - gossipsub, topics `hivemesh/campaigns/1` (signed campaign specs) and
//!   `hivemesh/campaign/<id>/1` (a campaign's protocol messages). Messages carry no libp2p
//!   signature or author (our envelopes are signed by the node key already); ids are the blake3
//!   of the bytes, so the same message is deduplicated whoever forwards it; every message is
//!   validated by the application before it is forwarded, and a rejected one costs its
//!   forwarder gossipsub score;
//! - Kademlia `/hivemesh/kad/1`: peer routing, and provider records for blobs;
//! - identify `/hivemesh/id/1` and ping;
//! - request–response `/hivemesh/sync/1` (which campaigns a peer has; a campaign's stored
//!   messages from a sequence number) and `/hivemesh/blob/1` (a blob in chunks);
//! - connection limits.

use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hivemesh_protocol::envelope::MAX_ENVELOPE_LEN;
use hivemesh_protocol::id::CampaignId;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, allow_block_list, connection_limits, gossipsub, identify, identity, kad, ping,
    request_response,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod wire;

pub use wire::{
    BLOB_CHUNK, BlobRequest, BlobResponse, MAX_REQUEST_LEN, MAX_RESPONSE_LEN, MAX_SYNC_BYTES,
    MAX_SYNC_CAMPAIGNS, SyncRequest, SyncResponse, check_len, decode_blob_request,
    decode_blob_response, decode_body, decode_sync_request, decode_sync_response,
};

/// The gossipsub topic of campaign announcements.
pub const CAMPAIGNS_TOPIC: &str = "hivemesh/campaigns/1";
/// Kademlia's protocol name.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/kad/1");
/// Identify's protocol name.
pub const IDENTIFY_PROTOCOL: &str = "/hivemesh/id/1";
/// Ledger sync's protocol name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/sync/1");
/// Blob transfer's protocol name.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/blob/1");

/// Largest gossip message accepted on the wire: one signed envelope (which is itself limited per
/// kind), with room for gossipsub's framing.
pub const MAX_GOSSIP_LEN: usize = MAX_ENVELOPE_LEN + 1024;

/// The gossipsub topic of one campaign's messages.
pub fn campaign_topic(id: &CampaignId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("hivemesh/campaign/{id}/1"))
}

/// A length-prefixed postcard codec with a size limit on each side: a frame over the limit is
/// an error before any of it is buffered.
pub struct PostcardCodec<Req, Resp> {
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> std::fmt::Debug for PostcardCodec<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostcardCodec")
    }
}

impl<Req, Resp> Default for PostcardCodec<Req, Resp> {
    fn default() -> Self {
        PostcardCodec {
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for PostcardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read_frame<T, M>(io: &mut T, limit: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    check_len(len, limit)?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    decode_body(&buf, limit)
}

async fn write_frame<T, M>(io: &mut T, msg: &M, limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let buf =
        postcard::to_allocvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    check_len(buf.len(), limit)?;
    io.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    io.write_all(&buf).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for PostcardCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_LEN).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE_LEN).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, MAX_REQUEST_LEN).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &resp, MAX_RESPONSE_LEN).await
    }
}

/// Every protocol the node speaks, composed into one libp2p behaviour.
// Not every libp2p behaviour implements `Debug`.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Refuses connections past the configured limits (total and per peer).
    pub limits: connection_limits::Behaviour,
    /// Peers this node refuses to talk to (operator's choice; netsim partitions).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Campaign announcements and protocol messages, validated by the node before forwarding.
    pub gossipsub: gossipsub::Behaviour,
    /// Peer routing and blob provider records.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Learns peers' listen addresses and protocols (feeds Kademlia).
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round trips.
    pub ping: ping::Behaviour,
    /// Ledger sync: campaigns and their messages.
    pub sync: request_response::Behaviour<PostcardCodec<SyncRequest, SyncResponse>>,
    /// Blob transfer in chunks.
    pub blob: request_response::Behaviour<PostcardCodec<BlobRequest, BlobResponse>>,
}

/// Why the behaviour could not be built.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Knobs of the network side.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Gossipsub heartbeat.
    pub heartbeat: Duration,
    /// Request–response timeout.
    pub request_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_connections: 256,
            max_connections_per_peer: 2,
            heartbeat: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Gossipsub scoring: a message the application rejects costs its forwarder 100 points per
/// message on that topic (decaying by half every decay interval); peers below
/// `graylist_threshold` are ignored.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // Mesh delivery rates vary with job lengths: do not punish quiet peers.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    }
}

fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        // Loopback test clusters run every node on one IP.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(
        gossipsub::IdentTopic::new(CAMPAIGNS_TOPIC).hash(),
        topic_score_params(),
    );
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -100.0,
        publish_threshold: -200.0,
        graylist_threshold: -400.0,
        ..Default::default()
    };
    (params, thresholds)
}

impl Behaviour {
    /// Builds the behaviour for a node with this libp2p identity.
    pub fn new(key: &identity::Keypair, cfg: &NetConfig) -> Result<Behaviour, BoxError> {
        let peer_id = key.public().to_peer_id();
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
            })
            .max_transmit_size(MAX_GOSSIP_LEN)
            .heartbeat_interval(cfg.heartbeat)
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg)?;
        let (params, thresholds) = peer_score();
        gossipsub.with_peer_score(params, thresholds)?;

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(KAD_PROTOCOL),
        );
        // Small and loopback swarms: answer DHT queries without waiting to be seen as public.
        kad.set_mode(Some(kad::Mode::Server));

        let rr_cfg = request_response::Config::default().with_request_timeout(cfg.request_timeout);
        Ok(Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(cfg.max_connections))
                    .with_max_established_per_peer(Some(cfg.max_connections_per_peer)),
            ),
            blocked: allow_block_list::Behaviour::default(),
            gossipsub,
            kad,
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            sync: request_response::Behaviour::with_codec(
                PostcardCodec::default(),
                [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
                rr_cfg.clone(),
            ),
            blob: request_response::Behaviour::with_codec(
                PostcardCodec::default(),
                [(BLOB_PROTOCOL, request_response::ProtocolSupport::Full)],
                rr_cfg,
            ),
        })
    }
}
