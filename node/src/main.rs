//! The `hivemesh` command: see `hivemesh --help`.

mod lm_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use hivemesh_node::api_client::{self, ApiResponse};
use hivemesh_node::config::{self, FileConfig};
use hivemesh_node::daemon::{self, Config};
use hivemesh_node::files::{Access, write_atomic};
use hivemesh_node::store::{DataDirLock, STORE_FILE};
use hivemesh_node::submit::{BlobRef, Resolve, Submission, UploadError};
use hivemesh_node::{http, identity};
use hivemesh_protocol::id::BlobId;
use hivemesh_trainer::data::{ReadOptions, read_dataset};
use hivemesh_trainer::export::ExportFiles;
use hivemesh_trainer::rounds::model_weights;
use libp2p::Multiaddr;

/// mimalloc instead of the system allocator: training and the swarm allocate many short-lived
/// buffers on several threads (BENCHMARKS.md, "netsim cluster": overhead).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ends the process quietly when stdout is closed (`hivemesh status | head`),
/// as a SIGPIPE would, instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// hivemesh: a peer-to-peer swarm that searches for better neural networks and computes ML work
/// everyone can trust.
///
/// Run one node per GPU host with `hivemesh run`; submit and follow campaigns with
/// `hivemesh campaign …` (these talk to the running node's HTTP API on 127.0.0.1).
///
/// Settings come from, in order of precedence: command-line flags, HIVEMESH_* environment
/// variables, the config file (DATA_DIR/config.toml or --config), built-in defaults.
/// Logs: RUST_LOG (e.g. RUST_LOG=hivemesh_node=debug).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Where the node keeps its identity, store and API token.
    #[arg(long, env = "HIVEMESH_DATA_DIR", default_value_os_t = default_data_dir(), global = true)]
    data_dir: PathBuf,

    /// A TOML config file (default: DATA_DIR/config.toml if it exists). Keys: listen, bootstrap,
    /// jobs, audit, http, http_public, sync_interval_ms, blob_quota_mb.
    #[arg(long, env = "HIVEMESH_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node's identity: an ed25519 key that signs its results and is its libp2p
    /// peer id. Written to DATA_DIR/identity.key with mode 0600. Refused while a node runs on
    /// DATA_DIR.
    Keygen {
        /// Replace an existing identity (its reputation is lost; the store keeps the old key as
        /// its owner until `run --new-identity`).
        #[arg(long)]
        force: bool,
    },
    /// Print the node's public key (how peers and ledgers name it).
    Id,
    /// Join the swarm: take jobs, train, publish signed results, serve the HTTP API.
    Run(RunArgs),
    /// Submit and follow campaigns (through the running node's API).
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Store and fetch content-addressed blobs (reference models, teachers, weights) through
    /// the running node.
    #[command(subcommand)]
    Blob(BlobCmd),
    /// Upload datasets: convert a file (CSV, NumPy, MNIST IDX, an image folder, CIFAR-10,
    /// text) into its canonical blob, which executors fetch from peers.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// The running node's state: peers, jobs, campaigns.
    Status(ApiArgs),
    /// Language models on this machine: train a small transformer on a text corpus, sample
    /// from it (no node needed).
    #[command(subcommand)]
    Model(lm_cli::ModelCmd),
}

#[derive(Debug, Subcommand)]
enum BlobCmd {
    /// Store a file in the node and announce the node as its provider; prints the blob id
    /// (what a campaign file's `reference_model` or `teacher` names). Campaign files may also
    /// say `teacher = "file:PATH"`: `campaign submit` then uploads the file itself.
    Put {
        /// The file (at most 256 MiB).
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write a blob to a file: from the node's store, or else fetched from the peers that
    /// provide it (hash-checked).
    Get {
        /// The blob id (64 hex digits).
        id: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetCmd {
    /// Convert a dataset into its canonical blob, store it in the running node and announce
    /// it; prints the dataset id (what `dataset = "blob:ID"` names), samples, shape and
    /// classes. A campaign file may instead say `dataset = "file:PATH"`: `campaign submit`
    /// then converts and uploads it itself.
    Add {
        /// A file (CSV/TSV, .npz, text, a CIFAR-10 .bin batch, a dataset blob) or a folder
        /// (MNIST's four IDX files, x.npy + y.npy, CIFAR-10's batches, or class folders of
        /// images).
        path: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How to read a dataset file.
#[derive(Debug, Args)]
struct ReadArgs {
    /// The format: mnist, csv, npy, npz, image-folder, cifar10, text or blob [default: from
    /// the path].
    #[arg(long)]
    format: Option<String>,
    /// CSV: the label column, a header name or a 0-based index [default: the last column].
    #[arg(long)]
    label: Option<String>,
    /// CSV: whether the first row names the columns [default: guessed].
    #[arg(long)]
    header: Option<bool>,
    /// A sample's shape, CxHxW or a length (CSV: how to view the features; image folders:
    /// the size every image is resized to, required).
    #[arg(long)]
    shape: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A libp2p address to listen on; repeat for several [default: /ip4/0.0.0.0/tcp/4077 and
    /// /ip4/0.0.0.0/udp/4077/quic-v1].
    #[arg(long, env = "HIVEMESH_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// A peer to join through, as a multiaddr ending in /p2p/<peer id>; repeat for several.
    #[arg(long, env = "HIVEMESH_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Jobs to train at once, each on its campaign's backend (the CPU, or the first GPU for
    /// CUDA campaigns) [default: 1]. Peers see these slots in this node's claims.
    #[arg(long, env = "HIVEMESH_JOBS", conflicts_with = "devices")]
    jobs: Option<u16>,
    /// The devices to train on, one job at a time each: `cpu`, `cuda` (the first GPU) or
    /// `cuda:N`, comma-separated (e.g. `cpu,cuda:0,cuda:1`). A campaign's jobs run on the
    /// devices of its backend; a node listing none for a campaign's backend does not run its
    /// jobs. Each device is checked at start: a GPU that is not there is an error.
    #[arg(long, env = "HIVEMESH_DEVICES", value_delimiter = ',')]
    devices: Vec<hivemesh_trainer::backend::Device>,
    /// Audit mode: re-execute jobs sampled for audit before taking jobs, and publish signed
    /// audit reports (validators).
    #[arg(long, env = "HIVEMESH_AUDIT")]
    audit: bool,
    /// Where to serve the HTTP API [default: 127.0.0.1:8077].
    #[arg(long, env = "HIVEMESH_HTTP")]
    http: Option<SocketAddr>,
    /// Allow --http on a non-loopback address (the API then answers anyone who can reach it;
    /// only POST needs the token).
    #[arg(long, env = "HIVEMESH_HTTP_PUBLIC")]
    http_public: bool,
    /// Do not serve the HTTP API.
    #[arg(long, conflicts_with_all = ["http", "http_public"])]
    no_http: bool,
    /// How often to pull missing ledger messages from a peer, in milliseconds [default: 5000].
    #[arg(long, env = "HIVEMESH_SYNC_INTERVAL_MS")]
    sync_interval_ms: Option<u64>,
    /// Most disk space for blobs (datasets, models, shards), in MiB [default: 32768]. Blobs
    /// fetched from peers that no followed campaign needs are evicted to make room; a blob
    /// that still does not fit is refused before anything is written.
    #[arg(long, env = "HIVEMESH_BLOB_QUOTA_MB")]
    blob_quota_mb: Option<u64>,
    /// Gossipsub heartbeat in milliseconds [default: 500]; longer means slower mesh repair
    /// and gossip.
    #[arg(long, env = "HIVEMESH_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Test clusters only: misbehave on purpose (`lie`: publish wrong results;
    /// `corrupt-blobs`: serve corrupt blobs; `noise`: publish random-noise training updates).
    /// Peers will catch and penalise this node.
    #[arg(long, env = "HIVEMESH_FAULT", hide = true, value_enum)]
    fault: Option<daemon::Fault>,
    /// Start although identity.key is not the key the store belongs to (it was replaced or
    /// deleted): the store is kept and recorded under the new key, and peers see a new node.
    #[arg(long)]
    new_identity: bool,
    /// Offer a private dataset to federated campaigns as NAME=PATH (any format `hivemesh
    /// dataset add` reads, guessed from the file name; CSV labels in the last column); repeat
    /// for several. The data is read at start (a file that does not load stops the node, with
    /// the reason), trained on by this node's jobs only, and never sent: only updates leave,
    /// private as the campaign's privacy settings make them. This node joins a federated
    /// campaign only if it offers the campaign's `private_data` name.
    #[arg(long = "private-data", value_name = "NAME=PATH")]
    private_data: Vec<String>,
    /// The shape of one sample of a private dataset whose format has none (CSV, .npy), as
    /// NAME=CxHxW (e.g. digits=1x8x8) or NAME=LENGTH; repeat for several.
    #[arg(long = "private-shape", value_name = "NAME=SHAPE")]
    private_shape: Vec<String>,
    /// The most example-level ε a federated campaign may spend of this node's private data
    /// [default: 10]: a campaign without DP-SGD, or without an ε budget, or with a larger one,
    /// gets no slots here. `inf` accepts any campaign (its updates may then reveal records).
    #[arg(long = "private-max-epsilon", value_name = "EPSILON")]
    private_max_epsilon: Option<f64>,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// The node's API address [default: the one `hivemesh run` wrote to DATA_DIR/api.addr,
    /// else 127.0.0.1:8077].
    #[arg(long, env = "HIVEMESH_API")]
    api: Option<SocketAddr>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CampaignCmd {
    /// Sign and publish a campaign described by a TOML file (see examples/*.toml); prints its id.
    Submit {
        /// The campaign file.
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One campaign's state.
    Status {
        /// The campaign id (64 hex digits).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follow a campaign until it finishes, printing progress.
    Watch {
        /// The campaign id.
        id: String,
        /// Seconds between polls.
        #[arg(long, default_value_t = 2)]
        every: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write a campaign's agreed results (results.json, results.csv), the best model's weights
    /// (best-weights.bin) and every front model as front/<k>-<job>/{arch.json (the IR),
    /// weights.safetensors, model.py (a PyTorch module)} to a directory; weights are fetched
    /// from peers when this node does not hold them.
    Export {
        /// The campaign id.
        id: String,
        /// The directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
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
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, each cause once, without a backtrace.
            let err: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", hivemesh_node::error_text(err));
            ExitCode::FAILURE
        }
    }
}

fn load_identity(data_dir: &Path) -> anyhow::Result<hivemesh_protocol::Keypair> {
    match identity::load(data_dir) {
        Err(identity::IdentityError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            bail!(
                "no identity in {}: run `hivemesh keygen` first (or pass --data-dir)",
                data_dir.display()
            )
        }
        other => Ok(other?),
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { force } => keygen(&cli.data_dir, force),
        Command::Id => {
            say!("{}", load_identity(&cli.data_dir)?.public());
            Ok(())
        }
        Command::Run(args) => {
            let file = config::load(&cli.data_dir, cli.config.as_deref())?;
            run(&cli.data_dir, args, file)
        }
        Command::Model(cmd) => lm_cli::run(cmd),
        Command::Campaign(cmd) => runtime()?.block_on(campaign(&cli.data_dir, cmd)),
        Command::Blob(cmd) => runtime()?.block_on(blob(&cli.data_dir, cmd)),
        Command::Dataset(DatasetCmd::Add { path, read, api }) => {
            runtime()?.block_on(dataset_add(&cli.data_dir, &path, read, &api))
        }
        Command::Status(api) => runtime()?.block_on(async {
            let r = get(&cli.data_dir, &api, "/status").await?;
            if api.json {
                say!("{}", r.text());
                return Ok(());
            }
            let s: serde_json::Value = serde_json::from_slice(&r.body)?;
            say!("peer id   {}", s["peer_id"].as_str().unwrap_or("?"));
            say!("key       {}", s["key"].as_str().unwrap_or("?"));
            say!("peers     {}", s["peers"]);
            say!(
                "jobs      {} running, {} finished",
                s["jobs_running"],
                s["jobs_finished"]
            );
            say!(
                "messages  {} validated, {} rejected",
                s["messages_validated"],
                s["messages_rejected"]
            );
            let mib = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
            say!(
                "blobs     {:.1} MiB of {:.0} MiB",
                mib(&s["blob_store"][0]),
                mib(&s["blob_store"][1])
            );
            for f in s["fetches"].as_array().into_iter().flatten() {
                let have = mib(&f["have"]);
                let line = match f["total"].as_u64() {
                    Some(t) if t > 0 => format!(
                        "{have:.1} of {:.1} MiB ({:.0}%)",
                        mib(&f["total"]),
                        100.0 * f["have"].as_u64().unwrap_or(0) as f64 / t as f64
                    ),
                    _ => "finding holders".into(),
                };
                say!("fetching  {} {line}", f["id"].as_str().unwrap_or("?"));
            }
            for c in s["campaigns"].as_array().into_iter().flatten() {
                if let Ok(c) = serde_json::from_value::<CampaignView>(c.clone()) {
                    say!("{}", c.line());
                }
            }
            Ok(())
        }),
    }
}

/// The devices of `--devices` (or the config file's `devices`), each checked to be there;
/// `None` when neither lists any.
fn node_devices(
    args: &RunArgs,
    file: &FileConfig,
) -> anyhow::Result<Option<Vec<hivemesh_trainer::backend::Device>>> {
    let devices = if !args.devices.is_empty() {
        args.devices.clone()
    } else {
        match &file.devices {
            None => return Ok(None),
            Some(names) => names
                .iter()
                .map(|n| n.parse())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("config file: devices: {e}"))?,
        }
    };
    if devices.is_empty() {
        bail!("--devices lists no device: give cpu, cuda or cuda:N, or leave it out");
    }
    if args.jobs.is_some() || (file.jobs.is_some() && args.devices.is_empty()) {
        bail!("--jobs and --devices both set: --devices gives one job slot per device; drop one");
    }
    let mut seen = std::collections::HashSet::new();
    for d in &devices {
        if *d != hivemesh_trainer::backend::Device::Cpu && !seen.insert(*d) {
            bail!("--devices lists {d} twice: each GPU is one slot; list it once");
        }
        d.check()
            .map_err(|e| anyhow::anyhow!("--devices: {d}: {e}"))?;
    }
    Ok(Some(devices))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The node's config and the HTTP API's address (`None`: no API) from flags, environment and
/// config file.
/// `--private-data`, `--private-shape` and `--private-max-epsilon` into `cfg`.
fn private_config(
    private_data: &[String],
    private_shape: &[String],
    max_epsilon: Option<f64>,
    cfg: &mut Config,
) -> anyhow::Result<()> {
    let mut shapes = std::collections::BTreeMap::new();
    for s in private_shape {
        let Some((name, shape)) = s.split_once('=') else {
            bail!("--private-shape {s}: give NAME=CxHxW (e.g. digits=1x8x8) or NAME=LENGTH");
        };
        shapes.insert(name.to_string(), shape.to_string());
    }
    for offer in private_data {
        let Some((name, path)) = offer.split_once('=') else {
            bail!("--private-data {offer}: give NAME=PATH (e.g. clinic=./records.csv)");
        };
        let opts = ReadOptions {
            shape: shapes.remove(name),
            ..ReadOptions::default()
        };
        if cfg
            .private_data
            .insert(name.to_string(), (PathBuf::from(path), opts))
            .is_some()
        {
            bail!("--private-data: {name} is given twice");
        }
    }
    if let Some(e) = max_epsilon {
        if e.is_nan() || e <= 0.0 {
            bail!("--private-max-epsilon must be above 0 (inf accepts any campaign)");
        }
        cfg.private_max_epsilon = e;
    }
    if let Some(name) = shapes.keys().next() {
        bail!("--private-shape {name}=…: no --private-data {name}=PATH to apply it to");
    }
    Ok(())
}

fn node_config(
    data_dir: &Path,
    args: RunArgs,
    file: FileConfig,
) -> anyhow::Result<(Config, Option<SocketAddr>)> {
    let mut cfg = Config::new(data_dir.to_path_buf());
    cfg.devices = node_devices(&args, &file)?;
    cfg.listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(l) = file.listen {
        l
    } else {
        vec![
            "/ip4/0.0.0.0/tcp/4077".parse()?,
            "/ip4/0.0.0.0/udp/4077/quic-v1".parse()?,
        ]
    };
    cfg.bootstrap = if !args.bootstrap.is_empty() {
        args.bootstrap
    } else {
        file.bootstrap.unwrap_or_default()
    };
    cfg.jobs = args.jobs.or(file.jobs).unwrap_or(1);
    if cfg.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    cfg.audit = args.audit || file.audit.unwrap_or(false);
    if let Some(ms) = args.sync_interval_ms.or(file.sync_interval_ms) {
        if ms == 0 {
            bail!("--sync-interval-ms must be at least 1");
        }
        cfg.sync_interval = Duration::from_millis(ms);
    }
    if let Some(mb) = args.blob_quota_mb.or(file.blob_quota_mb) {
        if mb == 0 {
            bail!("--blob-quota-mb must be at least 1");
        }
        cfg.blob_quota = Some(mb.saturating_mul(1 << 20));
    }
    if let Some(ms) = args.heartbeat_ms {
        if ms == 0 {
            bail!("--heartbeat-ms must be at least 1");
        }
        cfg.net.heartbeat = Duration::from_millis(ms);
    }
    if let Some(accept) = &file.accept {
        cfg.admission = accept
            .admission()
            .map_err(|e| anyhow::anyhow!("config file: {e}"))?;
    }
    cfg.fault = args.fault;
    private_config(
        &args.private_data,
        &args.private_shape,
        args.private_max_epsilon,
        &mut cfg,
    )?;
    cfg.new_identity = args.new_identity;
    if let Some(f) = cfg.fault {
        tracing::warn!(fault = ?f, "this node misbehaves on purpose (HIVEMESH_FAULT): test clusters only");
    }
    let http_addr = if args.no_http {
        None
    } else {
        Some(
            args.http
                .or(file.http)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8077))),
        )
    };
    let http_public = args.http_public || file.http_public.unwrap_or(false);
    if let Some(a) = http_addr
        && !a.ip().is_loopback()
        && !http_public
    {
        bail!(
            "--http {a} is not a loopback address: pass --http-public to serve the API to the network"
        );
    }

    Ok((cfg, http_addr))
}

/// `hivemesh keygen`: a new key, written while no node runs on the data directory.
fn keygen(data_dir: &Path, force: bool) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(data_dir)
        .context("keygen changes the identity only while no node uses the data directory")?;
    let key = identity::generate()?;
    let path = identity::save(data_dir, &key, force)?;
    say!("wrote {}", path.display());
    say!("peer key {}", key.public());
    if force && data_dir.join(STORE_FILE).exists() {
        say!("the store still belongs to the old key: start the node with `run --new-identity`");
    }
    Ok(())
}

/// The key `run` uses (the data directory is locked): loaded, or created when there is none
/// yet. A missing key beside an existing store is refused unless `new_identity`: the store's
/// history belongs to the lost key.
fn run_key(data_dir: &Path, new_identity: bool) -> anyhow::Result<hivemesh_protocol::Keypair> {
    match identity::load(data_dir) {
        Err(identity::IdentityError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let store = data_dir.join(STORE_FILE);
            if store.exists() && !new_identity {
                bail!(
                    "{} is missing but {} holds this node's history under its key: restore identity.key from a backup, or pass --new-identity to continue under a new key (peers then see a new node)",
                    identity::key_path(data_dir).display(),
                    store.display()
                );
            }
            let key = identity::generate()?;
            let path = identity::save(data_dir, &key, false)?;
            eprintln!("created a new identity in {}", path.display());
            Ok(key)
        }
        other => Ok(other?),
    }
}

fn run(data_dir: &Path, args: RunArgs, file: FileConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One node per data directory, decided before the key is read or created: two nodes
    // started together cannot race to create two keys.
    let lock = DataDirLock::acquire(data_dir)?;
    let key = run_key(data_dir, args.new_identity)?;
    let (cfg, http_addr) = node_config(data_dir, args, file)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let (client, event_loop) = daemon::start_locked(cfg.clone(), key.clone(), lock)?;
        say!("hivemesh node {}", client.peer_id());
        say!("key {}", key.public());
        say!("data {}", data_dir.display());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut http_task = None;
        if let Some(addr) = http_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve the HTTP API on {addr}"))?;
            let bound = listener.local_addr()?;
            let token = config::api_token(data_dir)?;
            std::fs::write(data_dir.join(config::API_ADDR_FILE), bound.to_string())
                .context("cannot write DATA_DIR/api.addr")?;
            say!(
                "api http://{bound} (POST token in {})",
                data_dir.join(config::API_TOKEN_FILE).display()
            );
            let state = http::ApiState::new(client.clone(), token);
            let mut rx = stop_rx.clone();
            http_task = Some(tokio::spawn(http::serve(listener, state, async move {
                let _ = rx.wait_for(|s| *s).await;
            })));
        }
        let mut events = client.subscribe();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let daemon::Event::Listening(a) = e {
                    say!("listening {a}");
                }
            }
        });
        let node = tokio::spawn(event_loop.run({
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }));
        shutdown_signal().await;
        eprintln!("stopping (jobs in flight are resumed at the next start)");
        let _ = stop_tx.send(true);
        let _ = node.await;
        if let Some(t) = http_task {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn api_addr(data_dir: &Path, api: &ApiArgs) -> SocketAddr {
    if let Some(a) = api.api {
        return a;
    }
    std::fs::read_to_string(data_dir.join(config::API_ADDR_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8077)))
}

async fn get(data_dir: &Path, api: &ApiArgs, path: &str) -> anyhow::Result<ApiResponse> {
    let addr = api_addr(data_dir, api);
    let r = api_client::request(addr, "GET", path, &[], &[]).await?;
    if r.status != 200 {
        bail!("{} {path}: {}", r.status, r.error_message());
    }
    Ok(r)
}

/// The fields of a campaign status the CLI prints.
#[derive(Debug, serde::Deserialize)]
struct CampaignView {
    id: String,
    name: String,
    kind: String,
    generation: u32,
    generations: u32,
    finished: bool,
    members: usize,
    settled: usize,
    results_held: u64,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    front: Vec<FrontView>,
    #[serde(default)]
    privacy: Option<PrivacyView>,
    #[serde(default)]
    clients: Vec<StandingView>,
    #[serde(default)]
    counters: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    prompts: Vec<PromptView>,
}

/// A prompt on a prompt campaign's front as the CLI prints it.
#[derive(Debug, serde::Deserialize)]
struct PromptView {
    text: Option<String>,
    genes: Vec<u32>,
    loglik: f64,
    generation: u32,
}

impl CampaignView {
    /// A prompt campaign's spending and front.
    fn prompt_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let n = |k: &str| self.counters.get(k).copied().unwrap_or(0);
        if self.counters.contains_key("model_calls") {
            out.push(format!(
                "spent: {} of {} model calls, {} of {} tokens; {} proposals answered by the cache",
                n("model_calls"),
                n("max_calls"),
                n("tokens"),
                n("max_tokens"),
                n("cache_hits")
            ));
        }
        if !self.prompts.is_empty() {
            out.push("prompts (log p(target | prompt) up, length down):".into());
        }
        for p in &self.prompts {
            let text = p
                .text
                .clone()
                .map_or_else(|| format!("{:?}", p.genes), |t| format!("{t:?}"));
            out.push(format!(
                "  {:>10.4} nats  {:>3} long  gen {}  {text}",
                p.loglik,
                p.genes.len(),
                p.generation
            ));
        }
        out
    }
}

/// A federated client's standing as the CLI prints it.
#[derive(Debug, serde::Deserialize)]
struct StandingView {
    client: String,
    rounds: u32,
    strikes: u32,
    benched_until: Option<u32>,
}

impl StandingView {
    fn line(&self) -> String {
        let bench = self
            .benched_until
            .map_or_else(String::new, |r| format!(", benched until round {r}"));
        format!(
            "  client {}: {} rounds, {} strikes{bench}",
            &self.client[..12.min(self.client.len())],
            self.rounds,
            self.strikes
        )
    }
}

/// A federated campaign's privacy as the CLI prints it.
#[derive(Debug, serde::Deserialize)]
struct PrivacyView {
    delta: f64,
    budget: Option<f64>,
    #[serde(default)]
    campaign_epsilon: Vec<f64>,
    #[serde(default)]
    clients: Vec<ClientPrivacyView>,
}

#[derive(Debug, serde::Deserialize)]
struct ClientPrivacyView {
    client: String,
    rounds: u32,
    epsilon: f64,
}

impl PrivacyView {
    /// Lines: the campaign's client-level ε per round, each client's example-level ε.
    fn lines(&self) -> Vec<String> {
        let budget = self
            .budget
            .map_or_else(|| "no budget".to_string(), |b| format!("budget ε = {b}"));
        let mut out = vec![format!("privacy (δ = {:e}, {budget}):", self.delta)];
        if !self.campaign_epsilon.is_empty() {
            let per_round: Vec<String> = self
                .campaign_epsilon
                .iter()
                .map(|e| format!("{e:.3}"))
                .collect();
            out.push(format!(
                "  client level, campaign ε after each round: {}",
                per_round.join(", ")
            ));
        }
        for c in &self.clients {
            out.push(format!(
                "  example level, client {}: ε = {:.3} after {} rounds",
                &c.client[..12.min(c.client.len())],
                c.epsilon,
                c.rounds
            ));
        }
        out
    }
}

#[derive(Debug, serde::Deserialize)]
struct FrontView {
    job: String,
    generation: u32,
    accuracy: f64,
    params: u64,
    flops: u64,
}

impl CampaignView {
    fn line(&self) -> String {
        let state = if self.finished {
            "finished".to_string()
        } else {
            format!("generation {}/{}", self.generation + 1, self.generations)
        };
        format!(
            "{} {} [{}] {state}, {} members, {} jobs settled, {} run here",
            &self.id[..16.min(self.id.len())],
            self.name,
            self.kind,
            self.members,
            self.settled,
            self.results_held
        )
    }
}

/// The `Authorization` header value for mutating API calls (the token in DATA_DIR/api.token).
fn bearer(data_dir: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(data_dir.join(config::API_TOKEN_FILE)).with_context(|| {
            format!(
                "cannot read the API token in {} (is this the node's --data-dir?)",
                data_dir.display()
            )
        })?;
    Ok(format!("Bearer {}", token.trim()))
}

/// What an upload sends: bytes in memory, or a file streamed from disk.
enum Body<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file, never held whole.
    File(&'a Path),
}

/// Posts `body` to `endpoint` with the API token; the node's JSON answer, or an error naming
/// `what` and the node's reason.
async fn upload(
    data_dir: &Path,
    api: &ApiArgs,
    endpoint: &str,
    what: &str,
    body: Body<'_>,
) -> anyhow::Result<serde_json::Value> {
    let auth = bearer(data_dir)?;
    let addr = api_addr(data_dir, api);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    let r = match body {
        Body::Bytes(bytes) => api_client::request(addr, "POST", endpoint, &headers, bytes).await?,
        Body::File(f) => api_client::upload_file(addr, "POST", endpoint, &headers, f).await?,
    };
    if r.status != 201 {
        bail!(
            "the node refused {what} ({}): {}",
            r.status,
            r.error_message()
        );
    }
    Ok(serde_json::from_slice(&r.body)?)
}

/// Uploads a file as a blob (streamed); returns its id.
async fn put_blob(data_dir: &Path, api: &ApiArgs, file: &Path) -> anyhow::Result<String> {
    let what = file.display().to_string();
    let v = upload(data_dir, api, "/blobs", &what, Body::File(file)).await?;
    Ok(v["id"].as_str().unwrap_or("?").to_string())
}

/// Uploads `file`'s bytes as a blob; returns its id.
async fn put_blob_bytes(
    data_dir: &Path,
    api: &ApiArgs,
    file: &Path,
    bytes: Vec<u8>,
) -> anyhow::Result<BlobId> {
    let what = file.display().to_string();
    let v = upload(data_dir, api, "/blobs", &what, Body::Bytes(&bytes)).await?;
    let id = v["id"].as_str().unwrap_or("?");
    id.parse()
        .with_context(|| format!("the node answered POST /blobs with {id:?}, not a blob id"))
}

/// Uploads the `file:PATH` blobs a campaign file names (`[loss] reference_model`,
/// `[distill] teacher`; PATH relative to the campaign file's folder) and names them by id;
/// `zoo:` models are left for the node to build.
async fn upload_file_blobs(
    data_dir: &Path,
    api: &ApiArgs,
    campaign: &Path,
    sub: &mut Submission,
) -> anyhow::Result<()> {
    let files = Resolve {
        zoo: false,
        files: Some(campaign.parent().unwrap_or(Path::new("."))),
    };
    sub.upload_blobs(files, |blob, bytes| {
        let (path, dataset) = match &blob.source {
            BlobRef::File(p) => (p.clone(), false),
            BlobRef::Dataset { path, .. } => (path.clone(), true),
            BlobRef::Zoo(_) => (PathBuf::new(), false),
        };
        async move {
            if dataset {
                let v = post_dataset(data_dir, api, &path, bytes).await?;
                let id: BlobId = v["id"].as_str().unwrap_or("?").parse()?;
                eprintln!(
                    "uploaded the dataset {} as blob {id}: {}",
                    path.display(),
                    v["summary"].as_str().unwrap_or("")
                );
                return anyhow::Ok(id);
            }
            let id = put_blob_bytes(data_dir, api, &path, bytes).await?;
            eprintln!("uploaded {} as blob {id}", path.display());
            anyhow::Ok(id)
        }
    })
    .await
    .map_err(|e| match e {
        UploadError::Prepare(e) => anyhow::Error::from(e),
        UploadError::Put(e) => e,
    })?;
    Ok(())
}

/// `hivemesh dataset add`: converts here, posts the canonical blob, prints what it is.
async fn dataset_add(
    data_dir: &Path,
    path: &Path,
    read: ReadArgs,
    api: &ApiArgs,
) -> anyhow::Result<()> {
    let opts = ReadOptions {
        format: read
            .format
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("--format: {e}"))?,
        label: read.label,
        header: read.header,
        shape: read.shape,
    };
    eprintln!("reading {} …", path.display());
    let dataset = read_dataset(path, &opts)?;
    // The blob goes to a temporary file and is streamed from there (not held twice).
    let tmp = data_dir.join(format!("dataset-upload-{}.hmds", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        dataset.blob.write_to(&mut w)?;
        std::io::Write::flush(&mut w)
    });
    let v = match written {
        Ok(()) => post_dataset_file(data_dir, api, path, &tmp).await,
        Err(e) => Err(anyhow::anyhow!("cannot write {}: {e}", tmp.display())),
    };
    let _ = std::fs::remove_file(&tmp);
    let v = v?;
    if api.json {
        say!("{v}");
        return Ok(());
    }
    say!("{}", v["id"].as_str().unwrap_or("?"));
    eprintln!("{}: {}", path.display(), dataset.blob.summary());
    eprintln!("{} bytes as a dataset blob", v["bytes"]);
    if let Some(names) = &dataset.class_names {
        let shown: Vec<String> = names
            .iter()
            .take(20)
            .enumerate()
            .map(|(i, n)| format!("{i}={n}"))
            .collect();
        let more = if names.len() > 20 { ", …" } else { "" };
        eprintln!("classes: {}{more}", shown.join(", "));
    }
    Ok(())
}

/// Streams a canonical dataset blob file to `POST /datasets`; returns the node's description.
async fn post_dataset_file(
    data_dir: &Path,
    api: &ApiArgs,
    file: &Path,
    blob: &Path,
) -> anyhow::Result<serde_json::Value> {
    let what = format!("the dataset {}", file.display());
    upload(
        data_dir,
        api,
        "/datasets?format=blob",
        &what,
        Body::File(blob),
    )
    .await
}

/// Posts a canonical dataset blob to `POST /datasets`; returns the node's description.
async fn post_dataset(
    data_dir: &Path,
    api: &ApiArgs,
    file: &Path,
    blob: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let what = format!("the dataset {}", file.display());
    upload(
        data_dir,
        api,
        "/datasets?format=blob",
        &what,
        Body::Bytes(&blob),
    )
    .await
}

/// Streams blob `id` (fetched by the node from its peers if need be) into `out` through an
/// exclusive temporary file beside it, checking its hash; `out` is replaced (a link there is
/// replaced, not followed) only when the bytes match.
async fn get_blob_to_file(
    data_dir: &Path,
    api: &ApiArgs,
    id: &BlobId,
    out: &Path,
) -> anyhow::Result<u64> {
    let (file, tmp) = hivemesh_node::files::create_temp(out, Access::Public)
        .with_context(|| format!("cannot write beside {}", out.display()))?;
    let mut f = tokio::fs::File::from_std(file);
    let got = api_client::download_to(
        api_addr(data_dir, api),
        &format!("/blobs/{id}?fetch=true"),
        &mut f,
    )
    .await;
    let synced = f.sync_all().await;
    drop(f);
    let checked = match got {
        Ok(Ok((hash, len))) if BlobId(*hash.as_bytes()) == *id => synced
            .map(|()| len)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display())),
        Ok(Ok(_)) => Err(anyhow::anyhow!(
            "the node sent bytes that do not hash to {id}: nothing written"
        )),
        Ok(Err(r)) => Err(anyhow::anyhow!(
            "the node has no blob {id} ({}): {}",
            r.status,
            r.error_message()
        )),
        Err(e) => Err(e.into()),
    };
    match checked {
        Ok(len) => {
            std::fs::rename(&tmp, out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok(len)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

async fn blob(data_dir: &Path, cmd: BlobCmd) -> anyhow::Result<()> {
    match cmd {
        BlobCmd::Put { file, api } => {
            say!("{}", put_blob(data_dir, &api, &file).await?);
            Ok(())
        }
        BlobCmd::Get { id, out, api } => {
            let want: BlobId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("blob id {id:?}: {e}"))?;
            let len = get_blob_to_file(data_dir, &api, &want, &out).await?;
            say!("wrote {len} bytes to {}", out.display());
            Ok(())
        }
    }
}

/// `campaign submit FILE`: upload the file's blobs, post it, print its id (and what a
/// budgeted campaign may spend).
async fn submit(data_dir: &Path, file: &Path, api: &ApiArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Check locally first: a clear error without a round trip.
    let mut sub = Submission::parse(&text).with_context(|| file.display().to_string())?;
    upload_file_blobs(data_dir, api, file, &mut sub).await?;
    let text = sub.text();
    let auth = bearer(data_dir)?;
    let addr = api_addr(data_dir, api);
    let r = api_client::request(
        addr,
        "POST",
        "/campaigns",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/toml"),
        ],
        text.as_bytes(),
    )
    .await?;
    if r.status != 201 {
        bail!(
            "the node refused the campaign ({}): {}",
            r.status,
            r.error_message()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    if api.json {
        say!("{}", r.text());
    } else {
        say!("{}", v["id"].as_str().unwrap_or("?"));
        if let Some(p) = v.get("projected").filter(|p| !p.is_null()) {
            eprintln!(
                "projected: at most {} model calls and {} tokens (the campaign stops \
                 at its budget; `campaign status` shows what is spent)",
                p["model_calls"], p["tokens"]
            );
        }
    }
    Ok(())
}

async fn campaign(data_dir: &Path, cmd: CampaignCmd) -> anyhow::Result<()> {
    match cmd {
        CampaignCmd::Submit { file, api } => submit(data_dir, &file, &api).await,
        CampaignCmd::Status { id, api } => {
            let r = get(data_dir, &api, &format!("/campaigns/{id}")).await?;
            if api.json {
                say!("{}", r.text());
                return Ok(());
            }
            let c: CampaignView = serde_json::from_slice(&r.body)?;
            say!("{}", c.line());
            if !c.front.is_empty() {
                say!("front (accuracy up, params and FLOPs down):");
                for p in &c.front {
                    say!(
                        "  {:.4}  {:>9} params  {:>10} FLOPs  gen {}  job {}",
                        p.accuracy,
                        p.params,
                        p.flops,
                        p.generation,
                        &p.job[..16.min(p.job.len())]
                    );
                }
            }
            if !c.summary.is_empty() {
                say!("protocol: {}", c.summary);
            }
            for line in c.privacy.iter().flat_map(PrivacyView::lines) {
                say!("{line}");
            }
            if !c.clients.is_empty() {
                say!("clients (rounds sampled, strikes from later rounds' flags):");
                for s in &c.clients {
                    say!("{}", s.line());
                }
            }
            for line in c.prompt_lines() {
                say!("{line}");
            }
            Ok(())
        }
        CampaignCmd::Watch { id, every, api } => {
            let mut last = String::new();
            loop {
                let r = get(data_dir, &api, &format!("/campaigns/{id}")).await?;
                let c: CampaignView = serde_json::from_slice(&r.body)?;
                let line = c.line();
                if line != last {
                    say!("{line}");
                    last = line;
                }
                if c.finished {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(every.max(1))).await;
            }
        }
        CampaignCmd::Export { id, out, api } => export(data_dir, &id, &out, &api).await,
    }
}

async fn export(data_dir: &Path, id: &str, out: &Path, api: &ApiArgs) -> anyhow::Result<()> {
    let status = get(data_dir, api, &format!("/campaigns/{id}")).await?;
    let results = get(data_dir, api, &format!("/campaigns/{id}/results")).await?;
    let scores = get(data_dir, api, &format!("/campaigns/{id}/scores")).await?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&results.body)?;
    let doc = serde_json::json!({
        "campaign": serde_json::from_slice::<serde_json::Value>(&status.body)?,
        "results": jobs,
        "scores": serde_json::from_slice::<serde_json::Value>(&scores.body)?,
    });
    write_new(
        &out.join("results.json"),
        serde_json::to_string_pretty(&doc)?.as_bytes(),
    )?;

    let mut csv = String::from(
        "job,generation,index,kind,payload,status,correct,total,accuracy,params,flops,agreeing,dissenting,artifact\n",
    );
    for j in &jobs {
        let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| j[k].as_u64().unwrap_or(0);
        let count = |k: &str| j[k].as_array().map_or(0, Vec::len);
        let artifact = j["artifacts"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        let acc = j["accuracy"].as_f64().unwrap_or(0.0);
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{acc:.6},{},{},{},{},{artifact}\n",
            s("job"),
            n("generation"),
            n("index"),
            j["payload"][0].as_str().unwrap_or(""),
            j["payload"][1].as_str().unwrap_or(""),
            s("status"),
            n("correct"),
            n("total"),
            n("params"),
            n("flops"),
            count("agreeing"),
            count("dissenting"),
        ));
    }
    write_new(&out.join("results.csv"), csv.as_bytes())?;
    say!("wrote {} settled jobs to {}", jobs.len(), out.display());
    // The best model is the front's first (best accuracy first; a `train` campaign's front is
    // its final model); its weights file is written whatever blob holds it.
    let top = &doc["campaign"]["front"][0];
    if let (Some(acc), Some(blob)) = (top["accuracy"].as_f64(), top["artifact"].as_str()) {
        let addr = api_addr(data_dir, api);
        let path = format!("/blobs/{blob}?fetch=true");
        let r = api_client::request(addr, "GET", &path, &[], &[]).await?;
        if r.status == 200 {
            let weights = model_weights(&r.body).map_or(r.body.clone(), |w| w.to_bytes());
            write_new(&out.join("best-weights.bin"), &weights)?;
            say!("best model: accuracy {acc:.4}, weights {blob} -> best-weights.bin");
        } else {
            say!(
                "best model: accuracy {acc:.4}, weights {blob} (neither this node nor its peers gave them: {})",
                r.error_message()
            );
        }
    }
    export_front(data_dir, api, &doc["campaign"]["front"], out).await
}

/// Writes `front/<k>-<job>/{arch.json, weights.safetensors, model.py}` for every front entry
/// whose weights this node holds or its peers give (see `hivemesh_trainer::export`).
async fn export_front(
    data_dir: &Path,
    api: &ApiArgs,
    front: &serde_json::Value,
    out: &Path,
) -> anyhow::Result<()> {
    let front = front.as_array().map(Vec::as_slice).unwrap_or_default();
    let addr = api_addr(data_dir, api);
    let mut written = 0;
    for (k, p) in front.iter().enumerate() {
        let job = p["job"].as_str().unwrap_or_default();
        let Some(blob) = p["artifact"].as_str() else {
            say!("front entry {k} (job {job}) has no weights artifact");
            continue;
        };
        let path = format!("/blobs/{blob}?fetch=true");
        let r = api_client::request(addr, "GET", &path, &[], &[]).await?;
        if r.status != 200 {
            say!("front entry {k}: weights {blob}: {}", r.error_message());
            continue;
        }
        let files = tokio::task::spawn_blocking(move || {
            model_weights(&r.body).and_then(|w| ExportFiles::of(&w))
        })
        .await?;
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                say!("front entry {k}: blob {blob} is not a model's weights: {e}");
                continue;
            }
        };
        let dir = out.join("front").join(http::export::folder_name(k, job));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, bytes) in files.files() {
            write_new(&dir.join(name), bytes)?;
        }
        written += 1;
    }
    if !front.is_empty() {
        say!(
            "front: {written} of {} models -> {} (arch.json, weights.safetensors, model.py)",
            front.len(),
            out.join("front").display()
        );
    }
    Ok(())
}

/// Writes a file atomically through an exclusively created temporary file, so an interrupted
/// export leaves no torn file and a symlink planted at the target or a temporary name is never
/// written through (see `hivemesh_node::files`).
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, Access::Public)
        .with_context(|| format!("cannot write {}", path.display()))
}
