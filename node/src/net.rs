//! The node's libp2p side: one [`Behaviour`] composing every protocol the node speaks, the
//! request–response wire types for ledger sync and blob transfer, and their size-limited
//! postcard codec.
//!
//! Connections: TCP with TLS 1.3 ([`tls`], AES-GCM first) or noise, then yamux; QUIC.
//!
//! Protocols (all private to hivemesh, so a hivemesh swarm never merges with another one):
//! - gossipsub, topics `hivemesh/campaigns/1` (signed campaign specs) and
//!   `hivemesh/campaign/<id>/1` (a campaign's protocol messages). Messages carry no libp2p
//!   signature or author (our envelopes are signed by the node key already); ids are the blake3
//!   of the bytes, so the same message is deduplicated whoever forwards it; every message is
//!   validated by the application before it is forwarded, and a rejected one costs its
//!   forwarder gossipsub score (the third on a topic graylists it, see [`topic_score_params`]);
//! - Kademlia `/hivemesh/kad/1`: peer routing, and provider records for blobs;
//! - identify `/hivemesh/id/1` and ping;
//! - request–response `/hivemesh/sync/1` (which campaigns a peer has; a campaign's stored
//!   messages from a sequence number) and `/hivemesh/blob/2` (a blob: its outboard, then parts
//!   checked against it, from several providers at once; ADR 0008);
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

mod blob_codec;
pub mod tls;
mod wire;

pub use blob_codec::BlobCodec;

pub use wire::{
    BlobRequest, BlobResponse, MAX_HASHES, MAX_REQUEST_LEN, MAX_RESPONSE_LEN, MAX_SYNC_BYTES,
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
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/hivemesh/blob/2");

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

/// Reads a frame's length prefix and refuses a length over `limit`.
async fn read_len<T>(io: &mut T, limit: usize) -> io::Result<usize>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    check_len(len, limit)?;
    Ok(len)
}

async fn read_frame<T, M>(io: &mut T, limit: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let len = read_len(io, limit).await?;
    // Zeroed once and filled in place (`read_to_end` would zero it too, then grow it by a
    // copy to look for the end).
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    decode_body(&buf, limit)
}

async fn write_frame<T, M>(io: &mut T, msg: &M, limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    write_pieces(io, &[&encode(msg)?], limit).await
}

/// `msg`'s postcard encoding.
fn encode<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame whose body is `pieces` one after the other (at most `limit` bytes in
/// all), then closes the stream.
async fn write_pieces<T>(io: &mut T, pieces: &[&[u8]], limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    check_len(len, limit)?;
    io.write_all(&(len as u32).to_be_bytes()).await?;
    for p in pieces {
        io.write_all(p).await?;
    }
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
    pub blob: request_response::Behaviour<BlobCodec>,
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
    /// Most incoming connections still in their handshake (noise, yamux): more are closed at
    /// once, so connections that never finish it cannot take every descriptor.
    pub max_pending_incoming: u32,
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
            max_pending_incoming: 64,
            heartbeat: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Most message ids one IHAVE carries, and most ids asked for in IWANTs, per peer per heartbeat
/// (gossipsub's `max_control_messages_sent`; its default is 5,000, which makes IHAVEs of
/// ~170 kB that a 16 KiB control cap refuses).
pub const MAX_IHAVE_IDS: usize = 1_000;
/// IHAVE messages taken from one peer per heartbeat (gossipsub's default).
pub const MAX_IHAVE_MESSAGES: usize = 10;
/// Bytes one message id takes inside an IHAVE or IWANT: a 32-byte blake3 digest behind a tag
/// and a length byte.
const ID_WIRE_LEN: usize = 32 + 2;
/// Largest control part (IHAVE, IWANT, GRAFT, PRUNE, subscriptions) of one gossipsub RPC that is
/// read; an RPC over it kills the sender's stream for the rest of the connection. gossipsub
/// 0.50's default is 16 KiB: about 470 ids, which a busy topic reaches, so honest IHAVEs broke
/// streams. A full IHAVE of [`MAX_IHAVE_IDS`] is 34 kB (plus a ~90-byte topic), an IWANT the
/// same, the subscriptions of every campaign a node follows ~6 kB: 128 KiB holds all of them in
/// one RPC with room to spare (a default-configured peer's IHAVE up to ~3,800 ids too). It is
/// no new exposure: the RPC as a whole is already bounded by [`MAX_GOSSIP_LEN`].
pub const MAX_CONTROL_BYTES: usize = 128 * 1024;
const _: () = assert!(2 * MAX_IHAVE_IDS * ID_WIRE_LEN + 16 * 1024 <= MAX_CONTROL_BYTES);
const _: () = assert!(MAX_CONTROL_BYTES <= MAX_GOSSIP_LEN);

/// Peer score below which a peer's gossip (IHAVE) is ignored and none is sent to it.
pub const GOSSIP_THRESHOLD: f64 = -100.0;
/// Peer score below which own messages are not published to a peer.
pub const PUBLISH_THRESHOLD: f64 = -200.0;
/// Peer score below which everything a peer sends is ignored; the node also disconnects and
/// bans such a peer for a while (`daemon::rate_limit::BAN_DURATION`).
pub const GRAYLIST_THRESHOLD: f64 = -400.0;
/// Most positive score all topics together give a peer (P1 + P2 over every topic).
pub const TOPIC_SCORE_CAP: f64 = 80.0;
/// How often scores decay (gossipsub's default).
const DECAY_INTERVAL: Duration = Duration::from_secs(1);
/// The per-[`DECAY_INTERVAL`] factor that halves a counter every `half_life`.
fn halving_every(half_life: Duration) -> f64 {
    0.5f64.powf(DECAY_INTERVAL.as_secs_f64() / half_life.as_secs_f64())
}

/// Gossipsub scoring of one topic (set for the announcement topic at construction and for each
/// campaign topic when the node subscribes to it).
///
/// Credit a peer can bank, per topic (topic weight 1):
/// - P1, time in the mesh: 0.01 per second, capped at 3,000 s: at most 30;
/// - P2, first deliveries of messages the node accepted: 1 each, capped at 50 (halving every
///   10 minutes): at most 50;
/// - and over all topics together at most [`TOPIC_SCORE_CAP`] = 80.
///
/// P4, messages the node rejected (bad signature, malformed, breaking a protocol rule): −100 ×
/// n² for n on one topic (n halving every 10 minutes). So n rejected messages leave a peer with
/// at most 80 − 100·n²: −20 at n = 1, −320 at n = 2 (still above [`GRAYLIST_THRESHOLD`]
/// = −400), −820 at n = 3. **A peer is graylisted — and disconnected and banned by the node — at
/// its 3rd rejected message on a topic, however long it sat in the mesh and however much it
/// delivered first** (at its 5th at worst when it spreads them over topics: each costs at
/// least 100); [`rejects_to_graylist`] computes the figure from these parameters. A fresh peer
/// (no credit) is graylisted at the 3rd as well (−100, −400, −900).
///
/// P3 (mesh delivery rate) and P3b are off: delivery rates vary with job lengths, and quiet
/// peers are not at fault.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3_000.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: halving_every(Duration::from_secs(600)),
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: halving_every(Duration::from_secs(600)),
        ..Default::default()
    }
}

/// The most positive score the topics can give a peer under `params`.
pub fn max_topic_credit(params: &gossipsub::PeerScoreParams) -> f64 {
    let per_topic: f64 = params
        .topics
        .values()
        .map(|t| {
            t.topic_weight
                * (t.time_in_mesh_cap * t.time_in_mesh_weight
                    + t.first_message_deliveries_cap * t.first_message_deliveries_weight)
        })
        .sum();
    if params.topic_score_cap > 0.0 {
        per_topic.min(params.topic_score_cap)
    } else {
        per_topic
    }
}

/// Rejected messages on one topic after which a peer holding the most credit the topics give
/// ([`max_topic_credit`]) is below [`GRAYLIST_THRESHOLD`] (P4 squared, before any decay).
pub fn rejects_to_graylist() -> u32 {
    let (params, thresholds) = peer_score();
    let t = topic_score_params();
    let credit = max_topic_credit(&params);
    (1..)
        .find(|&n| {
            let n = f64::from(n);
            credit + t.topic_weight * t.invalid_message_deliveries_weight * n * n
                < thresholds.graylist_threshold
        })
        .unwrap_or(u32::MAX)
}

/// Peer scoring and its thresholds (see [`topic_score_params`] for the arithmetic).
pub fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        topic_score_cap: TOPIC_SCORE_CAP,
        // Penalties the node gives outside gossip (invalid sync messages, corrupt blob chunks,
        // persistent junk), one point each.
        app_specific_weight: 1.0,
        // Loopback test clusters run every node on one IP.
        ip_colocation_factor_weight: 0.0,
        // Broken IWANT promises and GRAFTs during backoff (gossipsub's defaults, explicit).
        behaviour_penalty_weight: -10.0,
        behaviour_penalty_threshold: 0.0,
        behaviour_penalty_decay: 0.2,
        decay_interval: DECAY_INTERVAL,
        // A disconnected (banned) peer's score is kept this long, so it returns as it left.
        retain_score: Duration::from_secs(3600),
        ..Default::default()
    };
    params.topics.insert(
        gossipsub::IdentTopic::new(CAMPAIGNS_TOPIC).hash(),
        topic_score_params(),
    );
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        // No peer exchange; opportunistic grafting towards peers that delivered well.
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}

/// The gossipsub configuration of every hivemesh node: no libp2p signatures or authors (our
/// envelopes are signed), content ids, validation by the application before forwarding, and
/// explicit limits sized for our envelopes and for honest IHAVEs on busy topics.
pub fn gossipsub_config(heartbeat: Duration) -> Result<gossipsub::Config, BoxError> {
    Ok(gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        .max_transmit_size(MAX_GOSSIP_LEN)
        .max_control_message_size(MAX_CONTROL_BYTES)
        .max_control_messages_sent(MAX_IHAVE_IDS)
        .max_ihave_messages_heartbeat(MAX_IHAVE_MESSAGES)
        .heartbeat_interval(heartbeat)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))?)
}

impl Behaviour {
    /// Builds the behaviour for a node with this libp2p identity.
    pub fn new(key: &identity::Keypair, cfg: &NetConfig) -> Result<Behaviour, BoxError> {
        let peer_id = key.public().to_peer_id();
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Anonymous,
            gossipsub_config(cfg.heartbeat)?,
        )?;
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
                    .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
                    .with_max_pending_incoming(Some(cfg.max_pending_incoming)),
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
                BlobCodec,
                [(BLOB_PROTOCOL, request_response::ProtocolSupport::Full)],
                rr_cfg,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_rejected_messages_outweigh_the_most_credit_a_peer_can_bank() {
        let (params, thresholds) = peer_score();
        assert!(params.validate().is_ok());
        assert!(thresholds.validate().is_ok());
        assert!(topic_score_params().validate().is_ok());
        assert!((max_topic_credit(&params) - TOPIC_SCORE_CAP).abs() < 1e-9);
        assert_eq!(rejects_to_graylist(), 3);
    }

    #[test]
    fn control_limits_hold_an_honest_ihave_of_a_busy_topic() {
        let c = gossipsub_config(Duration::from_millis(500)).expect("valid");
        assert_eq!(c.max_control_message_size(), MAX_CONTROL_BYTES);
        assert_eq!(c.max_control_messages_sent(), MAX_IHAVE_IDS);
        assert_eq!(c.max_ihave_messages_heartbeat(), MAX_IHAVE_MESSAGES);
        // The largest IHAVE this node sends fits what every node reads, with the topic.
        let topic = campaign_topic(&CampaignId([0xab; 32])).hash().into_string();
        assert!(MAX_IHAVE_IDS * ID_WIRE_LEN + topic.len() + 8 <= c.max_control_message_size());
        assert!(c.max_control_message_size() >= 64 * 1024);
        assert!(c.max_control_message_size() <= c.max_transmit_size());
    }
}
