//! # hivemesh-netsim
//!
//! Simulation of hivemesh swarms, for researchers trying a search before the real swarm and
//! for proving the protocol under faults.
//!
//! It will own two tiers (see the consensus and end-to-end issues):
//! * tier 1: a seeded discrete-event simulator running thousands of `hivemesh-protocol`
//!   instances on a virtual clock, with latency, loss, partitions, crashes, joins and
//!   Byzantine behaviours, driven by TOML scenarios;
//! * tier 2: clusters of real nodes (one process or many) with fault injection, ending in a
//!   report.
//!
//! Today it holds [`demo`]: one generation of stub jobs run through the real protocol core
//! (signing, verification, commit–reveal, settlement, scoring) on several simulated nodes, each
//! receiving the messages in its own order, with a Byzantine executor among them.

pub mod cluster;
pub mod demo;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod sim;
