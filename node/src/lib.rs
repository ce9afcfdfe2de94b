//! # hivemesh-node
//!
//! The `hivemesh` binary that contributors and validators run, one per GPU host.
//!
//! Modules:
//! - [`daemon`]: the running node: [`daemon::Client`], [`daemon::EventLoop`] (owns the swarm,
//!   the store and one protocol `Peer` per campaign) and [`daemon::Event`]s;
//! - [`net`]: the libp2p behaviour (gossipsub, Kademlia, identify, ping, sync and blob
//!   request–response, connection limits) and its wire types;
//! - [`store`]: the redb database (campaigns, messages, job results, blobs);
//! - [`executor`]: a protocol job run by the trainer (one module per campaign kind);
//! - [`submit`]: campaign submission (blobs named by reference, roster); [`fault`]: test faults;
//! - [`http`]: the HTTP API and its manifest; [`api_client`]: the CLI's client for it;
//! - [`campaign_file`]: campaign TOML files; [`config`]: the node's config file and API token;
//! - [`identity`]: the node's key on disk; [`files`]: writing files without following links.
//!
//! It holds no protocol rules of its own: see `docs/node.md` for the design.

/// Lower-case hex of bytes (closure roots, genomes, tokens, key files).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wall clock as a protocol timestamp (the node passes time into the protocol from here).
pub fn unix_now() -> hivemesh_protocol::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    hivemesh_protocol::Timestamp::from_millis(ms)
}

pub mod admission;
pub mod api_client;
pub mod blobtree;
pub mod campaign_file;
pub mod config;
pub mod daemon;
pub mod executor;
pub mod fault;
pub mod fetch;
pub mod files;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod store;
pub mod submit;

/// An error and its causes on one line, each said once: a cause whose text the message
/// already holds (a message that embeds its source) is not repeated, and an empty one is
/// skipped. What the binaries print for a failure.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod error_text_tests {
    #[test]
    fn causes_are_said_once() {
        let inner = std::io::Error::other("disk on fire");
        let e = crate::config::ConfigError::Io {
            path: "/x/config.toml".into(),
            source: inner,
        };
        assert_eq!(
            super::error_text(&e),
            "cannot read config /x/config.toml: disk on fire"
        );
    }
}
