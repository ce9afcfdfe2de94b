//! The `hivemesh-netsim` command: see `hivemesh-netsim --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hivemesh_netsim::demo::{self, DemoConfig};

/// Simulate hivemesh swarms on one machine.
///
/// Today: `demo` (the default) runs one generation of stub jobs through the real protocol core
/// (ed25519 signing, batch verification, commit-reveal, settlement, scoring) on simulated nodes
/// that each receive the messages in a different order, with Byzantine executors among them,
/// and checks that every node ends with the same ledger. Real training campaigns (`cluster`) and
/// the tier-1 scenario simulator (`sim`) arrive with later milestones.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the protocol-core demonstration (no training yet: executors are stubs).
    Demo(DemoArgs),
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let a = match cli.command.unwrap_or(Command::Demo(DemoArgs::default())) {
        Command::Demo(a) => a,
        Command::Sim(s) => return sim(&s),
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
    let r = demo::run(&cfg).map_err(anyhow::Error::msg)?;
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

fn sim(a: &SimArgs) -> anyhow::Result<()> {
    let sc = hivemesh_netsim::scenario::Scenario::load(&a.scenario)?;
    let seeds = if a.seeds.is_empty() {
        sc.seeds.clone()
    } else {
        a.seeds.clone()
    };
    let byz: usize = sc.byzantine.iter().map(|b| b.count).sum();
    println!(
        "scenario {}: {} nodes ({} Byzantine), {} generations x {} jobs, r={} q={}, seeds {:?}",
        sc.name, sc.nodes, byz, sc.generations, sc.population, sc.redundancy, sc.quorum, seeds
    );
    let mut failed = Vec::new();
    for seed in seeds {
        let started = std::time::Instant::now();
        let r = hivemesh_netsim::sim::run(&sc, seed).map_err(anyhow::Error::msg)?;
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
