//! # hivemesh-tests
//!
//! Multi-crate integration tests live in `tests/tests/`. This library holds helpers they share:
//! deterministic identities and message builders today; multi-node harnesses (nodes on loopback
//! that wait on events with a timeout, never sleep-and-retry) once the node exists.

use hivemesh_protocol::Keypair;

/// The identity of test peer `i`: deterministic, so failures reproduce.
pub fn test_key(i: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&i.to_le_bytes());
    secret[31] = 0x5a;
    Keypair::from_secret_bytes(secret)
}
