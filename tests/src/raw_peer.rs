//! A bare libp2p peer that speaks gossipsub like a node (same protocol ids and configuration,
//! from `hivemesh_node::net`) but none of the rest: the attacker of the gossip-hardening tests.
//! Besides ordinary gossipsub it can write hand-made gossipsub RPC frames on a fresh gossipsub
//! stream (a request–response behaviour that only opens `/meshsub/1.1.0` streams), to send what
//! libp2p's own gossipsub would not (an IHAVE of any size).

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use hivemesh_node::daemon::Event;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{StreamProtocol, Swarm, gossipsub, noise, request_response, tcp, yamux};
use tokio::sync::broadcast;

/// The gossipsub protocol the raw frames are written under (one a node accepts).
pub const MESHSUB: StreamProtocol = StreamProtocol::new("/meshsub/1.1.0");

/// Gossipsub, and a way to write raw gossipsub frames.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct RawBehaviour {
    /// Gossipsub configured as a node's (no scoring of its own).
    pub gossipsub: gossipsub::Behaviour,
    /// Opens a gossipsub stream and writes the given bytes on it.
    pub raw: request_response::Behaviour<RawFrames>,
}

/// Writes a request's bytes as they are and closes the stream; expects no answer.
#[derive(Debug, Clone, Default)]
pub struct RawFrames;

impl request_response::Codec for RawFrames {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("outbound only"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// A raw peer with a fresh identity, on loopback TCP like the test nodes.
pub fn raw_peer() -> Swarm<RawBehaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            let config = hivemesh_node::net::gossipsub_config(Duration::from_millis(500))
                .expect("gossipsub config");
            RawBehaviour {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Anonymous,
                    config,
                )
                .expect("gossipsub"),
                raw: request_response::Behaviour::with_codec(
                    RawFrames,
                    [(MESHSUB, request_response::ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Drives the swarm until `pick` accepts one of its events; panics after `timeout` (a guard).
pub async fn until_swarm<T>(
    swarm: &mut Swarm<RawBehaviour>,
    timeout: Duration,
    mut pick: impl FnMut(&SwarmEvent<RawBehaviourEvent>) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            let e = swarm.select_next_some().await;
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .expect("timed out waiting for a raw peer event")
}

/// Waits for the first node event `pick` accepts while driving the raw peer's swarm (its
/// connection must keep being served); panics after `timeout` (a guard).
pub async fn until_node<T>(
    swarm: &mut Swarm<RawBehaviour>,
    events: &mut broadcast::Receiver<Event>,
    timeout: Duration,
    pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let drive = async {
        loop {
            swarm.select_next_some().await;
        }
    };
    tokio::select! {
        t = crate::wait_for(events, timeout, pick) => t,
        () = drive => unreachable!("a swarm's event stream never ends"),
    }
}

/// Protobuf, just enough of it for gossipsub RPCs: a varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn field(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint((tag << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// One gossipsub RPC frame (varint length, then the RPC) with an IHAVE of `ids` for `topic`
/// (`RPC.control = 3`, `ControlMessage.ihave = 1`, `ControlIHave.topic_id = 1`, `.message_ids =
/// 2`).
pub fn ihave_frame(topic: &str, ids: &[[u8; 32]]) -> Vec<u8> {
    let mut ihave = Vec::new();
    field(1, topic.as_bytes(), &mut ihave);
    for id in ids {
        field(2, id, &mut ihave);
    }
    let mut control = Vec::new();
    field(1, &ihave, &mut control);
    let mut rpc = Vec::new();
    field(3, &control, &mut rpc);
    frame(&rpc)
}

/// One gossipsub RPC frame publishing `data` on `topic`, anonymously (`RPC.publish = 2`,
/// `Message.data = 2`, `Message.topic = 4`).
pub fn publish_frame(topic: &str, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    field(2, data, &mut msg);
    field(4, topic.as_bytes(), &mut msg);
    let mut rpc = Vec::new();
    field(2, &msg, &mut rpc);
    frame(&rpc)
}

fn frame(rpc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(rpc.len() as u64, &mut out);
    out.extend_from_slice(rpc);
    out
}
