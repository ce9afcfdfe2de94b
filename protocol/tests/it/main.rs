//! The protocol's integration tests, as one binary: envelopes, the ledger, and property tests.

mod common;
mod envelope;
mod federated;
mod ledger;
mod props;
