//! # hivemesh-netsim
//!
//! Simulation of hivemesh swarms, for researchers trying a search before the real swarm and
//! for proving the protocol under faults. Two tiers:
//! * tier 1 ([`sim`], [`scenario`]): a seeded discrete-event simulator running many
//!   `hivemesh-protocol` instances on a virtual clock, with latency, loss, partitions,
//!   crashes, joins and Byzantine behaviours, driven by TOML scenarios and stub executors;
//! * tier 2 ([`cluster`]): real `hivemesh` nodes (libp2p on loopback, redb stores, real
//!   training) in this process, running one campaign under injected faults (Byzantine
//!   executors, kill -9 and restart, partitions), ending in a report folder ([`report`],
//!   [`plot`]). This is the README's main job.
//!
//! [`demo`] runs one generation of stub jobs through the protocol core (signing,
//! verification, commit–reveal, settlement, scoring) without a network.

pub mod cluster;
pub mod demo;
pub mod plot;
pub mod processes;
pub mod report;
pub mod scenario;
pub mod sim;
