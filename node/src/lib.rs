//! # hivemesh-node
//!
//! The `hivemesh` binary that contributors and validators run, one per GPU host.
//!
//! It will own (see the `node` issue): the libp2p swarm (TCP+noise+yamux and QUIC, Kademlia,
//! gossipsub with message validation, identify, ping, request-response for blobs and ledger
//! sync), the event loop that feeds `hivemesh-protocol` and carries out its outputs, job
//! execution off the event loop, the redb store, the HTTP API and audit mode. It holds no
//! protocol rules of its own.
//!
//! Today it owns the node's identity on disk ([`identity`]) and job execution ([`executor`]:
//! a protocol job spec run by the trainer, as a result to publish).

pub mod api_client;
pub mod campaign_file;
pub mod config;
pub mod daemon;
pub mod executor;
pub mod http;
pub mod identity;
pub mod net;
pub mod store;
