//! The workspace's cross-crate integration tests, as one binary (each test binary links
//! libp2p and burn, so one binary links once): real nodes on loopback, the HTTP API, the
//! netsim cluster, identity and ledgers, and the wire checked against a raw libp2p peer.

mod blobs_and_audits;
mod cluster;
mod federated;
mod http_api;
mod identity_and_ledgers;
mod language_models;
mod libp2p_identity;
mod swarm;
mod train;
