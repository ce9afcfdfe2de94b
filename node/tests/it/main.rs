//! The node's integration tests, as one binary: the executor on real jobs, the `hivemesh`
//! binary killed and restarted, and the store on disk.

mod executor;
mod federated;
mod kill;
mod lm;
mod store;
