//! The `hivemesh-netsim` command: see `hivemesh-netsim --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hivemesh_netsim::demo::{self, DemoConfig};
use hivemesh_node::fault::Fault;
use hivemesh_protocol::standings::JobStatus;

/// mimalloc instead of the system allocator: the simulator allocates and frees millions of
/// small messages and maps across threads (glibc's malloc was ~12 % of a scale run's CPU;
/// BENCHMARKS.md has the A/B).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Simulate hivemesh swarms on one machine.
///
/// `cluster` (the default) runs real nodes (libp2p on loopback, redb stores, real training on
/// the embedded digits set or any dataset) through one campaign with Byzantine nodes, kills and
/// partitions, and writes a report folder (report.md, report.json, Pareto-front and progress
/// plots). `sim` runs tier-1 scenarios: thousands of protocol instances on a virtual clock
/// with stub training. `demo` runs one generation of stub jobs through the protocol core.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: `cluster` with these options.
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a campaign on a cluster of real nodes in this process and write a report (the
    /// default: 8 nodes, one of them lying, NAS on the embedded digits set).
    Cluster(ClusterArgs),
    /// Run the protocol-core demonstration (stub executors, no network).
    Demo(DemoArgs),
    /// Compare the fronts of cluster reports by hypervolume (error, params and FLOPs
    /// minimised, one common reference): e.g. NSGA-II against random search at the same
    /// number of evaluations.
    Compare {
        /// `report.json` files (or their folders).
        reports: Vec<PathBuf>,
    },
    /// Run a tier-1 scenario (TOML, see netsim/scenarios/) under each of its seeds and
    /// print a report; exits 1 if an honest node did not finish or honest nodes disagree.
    Sim(SimArgs),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// The scenario file.
    scenario: std::path::PathBuf,
    /// Run only these seeds (default: the scenario's list).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Worker threads for the simulated nodes (default: every core). The results are the
    /// same for any number; only the wall time changes.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Byzantine nodes (the highest-numbered; the creator, node 0, is always honest).
    #[arg(long, default_value_t = 1)]
    byzantine: usize,
    /// How the Byzantine nodes misbehave: `lie` (all return the same wrong results, so two
    /// can form a quorum), `corrupt-blobs` (serve corrupt copies of blobs), `noise` (a
    /// training round's update is random noise, sketched like a real one; other results lie),
    /// or, as clients of a federated campaign: `sign-flip`, `scale` (x10), `garbage`
    /// (Gaussian, 10x the update's RMS), `label-flip` (train on their private data with the
    /// labels flipped) or `free-rider` (a zero update).
    #[arg(long, value_enum, default_value_t = Fault::Lie)]
    strategy: Fault,
    /// Honest nodes in audit mode (nodes 1..=N).
    #[arg(long, default_value_t = 0)]
    auditors: usize,
    /// A campaign file (see examples/*.toml) [default: examples/nas-digits.toml, built in].
    #[arg(long)]
    campaign: Option<PathBuf>,
    /// Executors per job (r), replacing the file's.
    #[arg(long, default_value_t = 3)]
    redundancy: u8,
    /// Agreeing executors needed (q), replacing the file's.
    #[arg(long)]
    quorum: Option<u8>,
    /// Candidates per generation, replacing the file's.
    #[arg(long)]
    population: Option<u32>,
    /// Generations, replacing the file's.
    #[arg(long)]
    generations: Option<u32>,
    /// Fraction of settled jobs re-executed by auditors, replacing the file's.
    #[arg(long)]
    audit_rate: Option<f64>,
    /// Most extra executors per job beyond r (idle helpers and takeovers past a deadline),
    /// replacing the file's.
    #[arg(long)]
    max_extra: Option<u8>,
    /// Generation 0's job deadline in seconds (later deadlines adapt to observed job times).
    #[arg(long, default_value_t = 30)]
    job_deadline_s: u64,
    /// Kill a node with kill -9 semantics: NODE@WHEN (for good) or NODE@WHEN+DOWN (restart
    /// from its store DOWN seconds later). WHEN is seconds after submission, or gN: when
    /// generation N first closes. Repeatable. Example: --kill 0@g0 (the creator, for good,
    /// once generation 0 closed), --kill 3@5+10.
    #[arg(long, value_parser = parse_kill)]
    kill: Vec<hivemesh_netsim::cluster::Kill>,
    /// Split the cluster into two halves: AT+HEAL (seconds after submission, seconds until
    /// it heals).
    #[arg(long, value_parser = parse_partition)]
    partition: Option<hivemesh_netsim::cluster::Partition>,
    /// Gossipsub heartbeat of every node, in milliseconds (longer: slower gossip repair).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Jobs each node trains at once.
    #[arg(long, default_value_t = 1)]
    jobs_per_node: u16,
    /// Seed of the node identities.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// The report folder (created; its report files are replaced).
    #[arg(long, default_value = "netsim-report")]
    out: PathBuf,
    /// Skip the overhead measurement (re-running every settled job on one executor).
    #[arg(long)]
    no_overhead: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Keep every node's data folder (store and, with --processes, node.log) after the run; its
    /// path is printed.
    #[arg(long)]
    keep_data: bool,
    /// Run every node as its own `hivemesh run` process on 127.0.0.1 (real processes, real
    /// SIGKILLs, driven through their HTTP APIs, partitions through their block lists) instead
    /// of all in this process.
    #[arg(long)]
    processes: bool,
    /// The `hivemesh` binary for --processes [default: the one next to this executable,
    /// built by `cargo build --release -p hivemesh-node`].
    #[arg(long, requires = "processes")]
    hivemesh: Option<PathBuf>,
    /// A federated campaign's private data: this dataset file's training split is dealt
    /// among the nodes (each offers only its part, under the campaign's `private_data`
    /// name; they accept the campaign whatever privacy it asks, as `--private-max-epsilon
    /// inf` does). Any format `hivemesh dataset add` reads.
    #[arg(long)]
    private_data: Option<PathBuf>,
    /// The shape of --private-data's samples where its format needs one (CSV, image
    /// folders): CxHxW or a length.
    #[arg(long, requires = "private_data")]
    private_shape: Option<String>,
    /// Deal --private-data by Dirichlet(ALPHA) class proportions (0.1: each node holds
    /// mostly a class or two; 100: near IID) instead of equal random parts.
    #[arg(long, requires = "private_data", default_value_t = 0.0)]
    dirichlet: f64,
}

fn seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..1e7).contains(&v) {
        return Err(format!("{v} seconds is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

fn parse_kill(s: &str) -> Result<hivemesh_netsim::cluster::Kill, String> {
    let (node, rest) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?}: use NODE@SECONDS or NODE@SECONDS+DOWN"))?;
    let node = node
        .parse()
        .map_err(|_| format!("{node:?} is not a node index"))?;
    let (when, down) = match rest.split_once('+') {
        Some((a, d)) => (a, Some(seconds(d)?)),
        None => (rest, None),
    };
    let (at, after_generation) = match when.strip_prefix('g') {
        Some(g) => (
            std::time::Duration::ZERO,
            Some(
                g.parse()
                    .map_err(|_| format!("{when:?}: use gN, N a generation"))?,
            ),
        ),
        None => (seconds(when)?, None),
    };
    Ok(hivemesh_netsim::cluster::Kill {
        node,
        at,
        after_generation,
        down,
    })
}

fn parse_partition(s: &str) -> Result<hivemesh_netsim::cluster::Partition, String> {
    let (at, heal) = s
        .split_once('+')
        .ok_or_else(|| format!("{s:?}: use AT+HEAL (seconds)"))?;
    Ok(hivemesh_netsim::cluster::Partition {
        at: seconds(at)?,
        heal: seconds(heal)?,
    })
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// How many of them report wrong results.
    #[arg(long, default_value_t = 1)]
    byzantine: usize,
    /// Jobs in the generation.
    #[arg(long, default_value_t = 24)]
    jobs: usize,
    /// Executors per job (r).
    #[arg(long, default_value_t = 3)]
    redundancy: u8,
    /// Agreeing executors needed to settle a job (q).
    #[arg(long, default_value_t = 2)]
    quorum: u8,
    /// Seed for keys, metrics and message orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        let d = DemoConfig::default();
        DemoArgs {
            peers: d.peers,
            byzantine: d.byzantine,
            jobs: d.jobs,
            redundancy: d.redundancy,
            quorum: d.quorum,
            seed: d.seed,
        }
    }
}

fn main() -> ExitCode {
    // Node logs of a cluster run, off unless asked for (RUST_LOG=hivemesh_node=info).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let err: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", hivemesh_node::error_text(err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let a = match cli.command.unwrap_or(Command::Cluster(cli.cluster)) {
        Command::Demo(a) => a,
        Command::Sim(s) => return sim(&s),
        Command::Cluster(c) => return cluster(c),
        Command::Compare { reports } => return compare(&reports),
    };
    let cfg = DemoConfig {
        peers: a.peers,
        byzantine: a.byzantine,
        jobs: a.jobs,
        redundancy: a.redundancy,
        quorum: a.quorum,
        seed: a.seed,
    };
    println!(
        "hivemesh-netsim demo: {} nodes ({} Byzantine), {} stub jobs, r={} q={}, seed {}",
        cfg.peers, cfg.byzantine, cfg.jobs, cfg.redundancy, cfg.quorum, cfg.seed
    );
    println!(
        "note: no training yet; executors return seeded stub metrics (real campaigns: see README status)"
    );
    let r = demo::run(&cfg)?;
    println!("campaign {}", r.campaign);
    println!(
        "{} signed messages, verified by every node at {:.0} signatures/s",
        r.messages, r.verified_per_sec
    );
    println!(
        "settled {}/{} jobs; wrong results settled: {}",
        r.settled, cfg.jobs, r.wrong_settled
    );
    println!("peer      byzantine  agreed  dissented  points  reputation");
    for (p, byz, s) in &r.scores {
        println!(
            "{}  {:<9}  {:>6}  {:>9}  {:>6}  {:>10}",
            p.short(),
            if *byz { "yes" } else { "no" },
            s.agreed,
            s.dissented,
            s.points,
            s.reputation
        );
    }
    if r.distinct_roots == 1 {
        println!(
            "ledger agreement: all {} nodes hold the same settlement root",
            cfg.peers
        );
        Ok(())
    } else {
        anyhow::bail!(
            "ledger agreement FAILED: {} different settlement roots across {} nodes",
            r.distinct_roots,
            cfg.peers
        )
    }
}

/// The cluster configuration `a` asks for.
fn cluster_config(a: &ClusterArgs) -> anyhow::Result<hivemesh_netsim::cluster::ClusterConfig> {
    use anyhow::Context as _;
    use hivemesh_netsim::cluster::{self, ClusterConfig, Overrides};
    let (campaign, campaign_dir) = match &a.campaign {
        Some(f) => (
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
            f.parent().map(PathBuf::from).unwrap_or_default(),
        ),
        None => (cluster::DEFAULT_CAMPAIGN.to_string(), PathBuf::from(".")),
    };
    let data_dir = std::env::temp_dir().join(format!("hivemesh-cluster-{}", std::process::id()));
    let mut cfg = ClusterConfig::new(data_dir);
    cfg.nodes = a.nodes;
    cfg.byzantine = a.byzantine;
    cfg.strategy = a.strategy;
    cfg.auditors = a.auditors;
    cfg.campaign = campaign;
    cfg.campaign_dir = campaign_dir;
    cfg.overrides = Overrides {
        redundancy: Some(a.redundancy),
        quorum: a.quorum,
        population: a.population,
        generations: a.generations,
        audit_rate: a.audit_rate,
        job_deadline_s: Some(a.job_deadline_s),
        max_extra_executors: a.max_extra,
    };
    cfg.kills = a.kill.clone();
    cfg.keep_data = a.keep_data;
    cfg.partition = a.partition.clone();
    cfg.delay = a.heartbeat_ms.map(std::time::Duration::from_millis);
    cfg.jobs_per_node = a.jobs_per_node;
    cfg.seed = a.seed;
    cfg.timeout = std::time::Duration::from_secs(a.timeout_s);
    cfg.progress = !a.quiet;
    cfg.measure_overhead = !a.no_overhead;
    if let Some(source) = &a.private_data {
        if !(a.dirichlet.is_finite() && a.dirichlet >= 0.0) {
            anyhow::bail!("--dirichlet {}: give 0 (IID) or a positive α", a.dirichlet);
        }
        cfg.private = Some(hivemesh_netsim::cluster::PrivateSplit {
            source: source.clone(),
            read: hivemesh_trainer::data::read::ReadOptions {
                shape: a.private_shape.clone(),
                ..Default::default()
            },
            alpha: a.dirichlet,
        });
    }
    if a.processes {
        cfg.processes = Some(
            a.hivemesh
                .clone()
                .unwrap_or_else(hivemesh_netsim::processes::default_bin),
        );
    }
    Ok(cfg)
}

fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let cfg = cluster_config(&a)?;
    println!(
        "hivemesh-netsim cluster: {} real nodes on loopback{} ({} Byzantine: {}; {} auditors), r={}, seed {}",
        cfg.nodes,
        if a.processes {
            ", one process each"
        } else {
            ""
        },
        cfg.byzantine,
        a.strategy,
        cfg.auditors,
        a.redundancy,
        cfg.seed
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(hivemesh_netsim::cluster::run(&cfg));
    if cfg.keep_data {
        eprintln!("node data kept in {}", cfg.data_dir.display());
    }
    let report = result?;
    let files = hivemesh_netsim::report::write_all(&a.out, &report)?;
    print_outcome(&report, &files[0])
}

/// The run's summary lines; an error if the run failed its checks.
fn print_outcome(
    report: &hivemesh_netsim::cluster::ClusterReport,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let settled = report
        .jobs
        .iter()
        .filter(|j| j.status != JobStatus::Void)
        .count();
    println!(
        "campaign {} finished in {:.1} s: {settled} jobs settled, {} executions",
        &report.campaign[..16],
        report.wall_s,
        report.executions
    );
    if let Some(best) = report.front.first() {
        println!(
            "best: accuracy {:.4} with {} params ({} points on the front)",
            best.accuracy,
            best.params,
            report.front.len()
        );
    }
    if let Some(best) = report.prompts.first() {
        let n = |k: &str| report.counters.get(k).copied().unwrap_or(0);
        println!(
            "best prompt: {:?}, log p(target | prompt) = {:.4} nats ({} of {} model calls, {} \
             cache hits)",
            best.text.as_deref().unwrap_or("?"),
            best.loglik,
            n("model_calls"),
            n("max_calls"),
            n("cache_hits")
        );
    }
    println!(
        "cheaters detected {:?}, missed {:?}, paid {:?}; honest penalised {:?}; wrong results standing {}",
        report.grade.cheaters_detected,
        report.grade.cheaters_missed,
        report.grade.cheaters_paid,
        report.grade.honest_penalised,
        report.grade.wrong_results
    );
    if let Some(o) = &report.overhead {
        println!(
            "overhead: {:.1} CPU s in the swarm / ({} x {:.1} CPU s on one executor, {:.1} s wall) = {:.2}",
            o.swarm_cpu_s, o.redundancy, o.single_cpu_s, o.single_wall_s, o.ratio
        );
    }
    println!("report: {}", file.display());
    let up = report.node_views.iter().filter(|v| v.up).count();
    if report.ok() {
        println!("ledger agreement: all {up} running nodes hold the same closures");
        Ok(())
    } else {
        anyhow::bail!(
            "cluster run FAILED its checks (finished {}, agreement {}, wrong results {}): see {}",
            report.finished,
            report.grade.agreement,
            report.grade.wrong_results,
            file.display()
        )
    }
}

/// A report being compared.
struct Compared {
    /// Its `report.json`.
    file: PathBuf,
    /// The campaign's name.
    name: String,
    /// Its settled successful jobs.
    objectives: Vec<hivemesh_netsim::report::Objectives>,
}

fn compare(paths: &[PathBuf]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if paths.len() < 2 {
        anyhow::bail!("give at least two reports to compare");
    }
    let mut sets = Vec::new();
    for p in paths {
        let file = if p.is_dir() {
            p.join("report.json")
        } else {
            p.clone()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster report", file.display()))?;
        sets.push(Compared {
            file,
            name: v["name"].as_str().unwrap_or("?").to_string(),
            objectives: hivemesh_netsim::report::objectives_of(&v),
        });
    }
    let hv = hivemesh_netsim::report::hypervolumes(
        &sets
            .iter()
            .map(|c| c.objectives.clone())
            .collect::<Vec<_>>(),
    );
    println!(
        "report                                   jobs   best acc   hypervolume   ratio to the first"
    );
    for (c, h) in sets.iter().zip(&hv) {
        let best = c.objectives.iter().map(|x| x.accuracy).fold(0.0, f64::max);
        println!(
            "{:<40} {:>4}   {best:.4}     {h:.5}       {:.3}   ({})",
            c.file.display(),
            c.objectives.len(),
            if hv[0] > 0.0 { h / hv[0] } else { f64::NAN },
            c.name,
        );
    }
    Ok(())
}

fn sim(a: &SimArgs) -> anyhow::Result<()> {
    let sc = hivemesh_netsim::scenario::Scenario::load(&a.scenario)?;
    let seeds = if a.seeds.is_empty() {
        sc.seeds.clone()
    } else {
        a.seeds.clone()
    };
    let byz: usize = sc.byzantine.iter().map(|b| b.count).sum();
    let threads = match a.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    println!(
        "scenario {}: {} nodes ({} Byzantine), {} generations x {} jobs, r={} q={}, seeds {:?}, {} threads",
        sc.name,
        sc.nodes,
        byz,
        sc.generations,
        sc.population,
        sc.redundancy,
        sc.quorum,
        seeds,
        threads
    );
    let mut failed = Vec::new();
    for seed in seeds {
        let started = std::time::Instant::now();
        let r = hivemesh_netsim::sim::run_threads(&sc, seed, threads)?;
        print!("{}", hivemesh_netsim::sim::describe(&r));
        println!("  wall time {:.2} s", started.elapsed().as_secs_f64());
        if !r.sound() {
            failed.push(seed);
        }
    }
    if failed.is_empty() {
        println!("all runs: every honest node finished with the same closure roots");
        Ok(())
    } else {
        anyhow::bail!("runs with seeds {failed:?} did not finish in agreement")
    }
}
