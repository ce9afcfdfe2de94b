//! The `hivemesh` command: see `hivemesh --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hivemesh_node::identity;

/// hivemesh: a peer-to-peer swarm that searches for better neural networks and computes ML work
/// everyone can trust.
///
/// Run one node per GPU host. Today this binary manages the node's identity; joining the swarm
/// (`hivemesh run`), campaigns and the HTTP API arrive with the node milestone (see README.md).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Where the node keeps its identity, store and blobs.
    #[arg(long, env = "HIVEMESH_DATA_DIR", default_value_os_t = default_data_dir(), global = true)]
    data_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node's identity: an ed25519 key that signs its results and is its libp2p
    /// peer id. Written to DATA_DIR/identity.key with mode 0600.
    Keygen {
        /// Replace an existing identity (its reputation is lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the node's public key (how peers and ledgers name it).
    Id,
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("hivemesh");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/hivemesh");
    }
    PathBuf::from("hivemesh-data")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { force } => {
            let key = identity::generate()?;
            let path = identity::save(&cli.data_dir, &key, force)?;
            println!("wrote {}", path.display());
            println!("peer key {}", key.public());
        }
        Command::Id => {
            let key = match identity::load(&cli.data_dir) {
                Err(identity::IdentityError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    anyhow::bail!(
                        "no identity in {}: run `hivemesh keygen` first (or pass --data-dir)",
                        cli.data_dir.display()
                    )
                }
                other => other?,
            };
            println!("{}", key.public());
        }
    }
    Ok(())
}
