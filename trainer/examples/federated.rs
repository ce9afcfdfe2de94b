//! Issue 26's figures on one machine, with the functions a federated campaign's clients and
//! nodes run: each client trains the round's model on its own part of the training split
//! (`run_segment`, DP-SGD when a target ε is given), its update is attacked if it is one of the
//! attackers, the round's updates are combined by the chosen rule (`Aggregator`) and applied
//! (FedAvg), and the final model is tested. ε is the protocol's accountant's
//! (`hivemesh_protocol::privacy`), σ solved for the target over the planned rounds.
//!
//! ```text
//! cargo run --release -p hivemesh-trainer --example federated -- --mnist ../shared/data/mnist \
//!     --clients 10 --rounds 10 --epsilon 2 --dirichlet 0.3
//! cargo run --release -p hivemesh-trainer --example federated -- --mnist DIR \
//!     --attackers 3 --attack sign-flip --aggregate median
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hivemesh_evolve::arch::Shape;
use hivemesh_protocol::privacy::{Accountant, Mechanism, noise_for};
use hivemesh_trainer::attack::Attack;
use hivemesh_trainer::data::partition::partition;
use hivemesh_trainer::data::{Dataset, digits, load_mnist};
use hivemesh_trainer::private::DpSgd;
use hivemesh_trainer::rounds::{
    Aggregator, Combine, Outer, SegmentJob, TrainState, Update, evaluate_weights, initial_weights,
    run_segment,
};
use hivemesh_trainer::scatter::{ScatterSpec, Scattering};
use hivemesh_trainer::train::{Budget, Limits, OptimizerKind, Schedule, sub_seed};
use hivemesh_trainer::zoo::{linear, mlp};
use hivemesh_trainer::{Cpu, CpuAutodiff};
use rayon::prelude::*;

/// Federated rounds on MNIST (or the embedded digits).
#[derive(Parser)]
struct Args {
    /// MNIST folder (IDX files); the embedded digits without it.
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Clients (all take part in every round).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Rounds.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Local steps per round.
    #[arg(long, default_value_t = 50)]
    local_steps: u32,
    /// Batch size (DP-SGD: the expected batch, the sampling rate is batch / client records).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Local Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Hidden width of the 784-W-10 MLP (0: a linear model).
    #[arg(long, default_value_t = 128)]
    hidden: u32,
    /// Train on scattering features (J = 2, L = 8, group-normalised: `hivemesh_trainer::
    /// scatter`) instead of pixels.
    #[arg(long)]
    scatter: bool,
    /// Local SGD with this momentum instead of Adam.
    #[arg(long)]
    sgd_momentum: Option<f32>,
    /// Target example-level ε (δ below) for each client over all rounds; 0: no DP.
    #[arg(long, default_value_t = 0.0)]
    epsilon: f64,
    /// δ.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// DP-SGD's per-record clipping norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Dirichlet α of the label skew across clients (0: IID, an equal random split).
    #[arg(long, default_value_t = 0.0)]
    dirichlet: f64,
    /// `mean`, `median`, `trimmed:K`, `krum:F` (Multi-Krum keeping n - F) or `clip:R`
    /// (CenteredClip, radius R x the median distance).
    #[arg(long, default_value = "mean")]
    aggregate: String,
    /// Each update scaled to at most this L2 norm first (0: none).
    #[arg(long, default_value_t = 0.0)]
    norm_bound: f64,
    /// Attacking clients (the last ones).
    #[arg(long, default_value_t = 0)]
    attackers: usize,
    /// `sign-flip`, `scale` (x10), `garbage` (Gaussian, 10x the update's RMS), `label-flip`
    /// (trains on 9 - y) or `free-rider` (a zero update).
    #[arg(long, default_value = "sign-flip")]
    attack: String,
    /// Seed of the split and the clients' randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn combine(rule: &str, clients: usize) -> Result<Combine> {
    let arg = |s: &str| -> Result<f64> { s.parse().with_context(|| format!("--aggregate {rule}")) };
    Ok(match rule.split_once(':') {
        None if rule == "mean" => Combine::Mean,
        None if rule == "median" => Combine::Median,
        Some(("trimmed", k)) => Combine::Trimmed(arg(k)? as usize),
        Some(("krum", f)) => {
            let f = arg(f)? as usize;
            Combine::MultiKrum {
                byzantine: f,
                keep: clients.saturating_sub(f).max(1),
            }
        }
        Some(("clip", r)) => Combine::CenteredClip {
            radius: arg(r)? as f32,
            iterations: 3,
        },
        _ => bail!("--aggregate {rule}: use mean, median, trimmed:K, krum:F or clip:R"),
    })
}

/// `u` as the attack `attack` sends it (`none` and `label-flip`: as it is).
fn attacked(u: &Update, attack: &str, seed: u64) -> Update {
    let a = match attack {
        "sign-flip" => Attack::SignFlip,
        "scale" => Attack::Scale,
        "free-rider" => Attack::FreeRider,
        "garbage" => Attack::Garbage,
        _ => return u.clone(),
    };
    a.apply(u, seed)
}

/// Each client's DP-SGD settings (its sampling rate from its own record count, σ solved for
/// the target over all rounds), or none without a target.
fn dp_settings(a: &Args, parts: &[Vec<u32>]) -> Result<Vec<Option<DpSgd>>> {
    parts
        .iter()
        .enumerate()
        .map(|(k, p)| -> Result<Option<DpSgd>> {
            if a.epsilon <= 0.0 {
                return Ok(None);
            }
            let q = (f64::from(a.batch) / p.len().max(1) as f64).min(1.0);
            let steps = u64::from(a.local_steps) * u64::from(a.rounds);
            let sigma = noise_for(a.epsilon, a.delta, q, steps)?;
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(a.seed + k as u64).to_le_bytes());
            Ok(Some(DpSgd {
                clip: a.clip,
                noise_multiplier: sigma as f32,
                sample_rate: q,
                steps: u64::from(a.local_steps),
                secret,
            }))
        })
        .collect()
}

/// What every round needs: the data (and its label-flipped copy), the clients' parts and
/// DP settings, the local budget.
struct Setup {
    data: Dataset,
    flipped: Dataset,
    parts: Vec<Vec<u32>>,
    dp: Vec<Option<DpSgd>>,
    budget: Budget,
}

/// Round `r`'s updates from `state`, as the clients send them (attackers' attacked).
fn client_updates(a: &Args, s: &Setup, state: &TrainState, r: u32) -> Result<Vec<Update>> {
    let honest = a.clients.saturating_sub(a.attackers);
    (0..a.clients)
        .into_par_iter()
        .map(|k| -> Result<Update> {
            let attacker = k >= honest;
            let source = if attacker && a.attack == "label-flip" {
                &s.flipped
            } else {
                &s.data
            };
            // A fresh secret per round (the same every round would repeat the noise).
            let private = s.dp[k].map(|d| {
                let mut secret = d.secret;
                secret[8..12].copy_from_slice(&r.to_le_bytes());
                DpSgd { secret, ..d }
            });
            let job = SegmentJob {
                start: &state.weights,
                data: source,
                samples: &s.parts[k],
                evaluate_on: &[],
                budget: &s.budget,
                seed: a.seed * 1000 + u64::from(r) * 100 + k as u64,
                private: private.as_ref(),
            };
            let seg = run_segment::<CpuAutodiff>(
                &job,
                &Limits::default(),
                &Default::default(),
                &mut |_| {},
            )?;
            let u = Update::between(&state.weights, &seg.trained);
            Ok(if attacker {
                attacked(&u, &a.attack, u64::from(r))
            } else {
                u
            })
        })
        .collect()
}

/// The ε the largest-spending client spent over all rounds, and the largest σ.
fn privacy_line(a: &Args, dp: &[Option<DpSgd>]) -> String {
    if dp.iter().all(Option::is_none) {
        return "no DP (ε = ∞)".into();
    }
    let spent = dp
        .iter()
        .flatten()
        .map(|d| {
            let mut acc = Accountant::new();
            acc.add(&Mechanism {
                sample_rate: d.sample_rate,
                noise_multiplier: f64::from(d.noise_multiplier),
                steps: d.steps * u64::from(a.rounds),
            });
            acc.epsilon(a.delta)
        })
        .fold(0.0f64, f64::max);
    let sigma = dp
        .iter()
        .flatten()
        .map(|d| d.noise_multiplier)
        .fold(0.0f32, f32::max);
    format!(
        "ε spent (largest client) {spent:.3} at δ = {}, σ up to {sigma:.3}",
        a.delta
    )
}

/// MNIST or the digits, as scattering features with `--scatter`.
fn load(a: &Args) -> Result<Dataset> {
    let data = match &a.mnist {
        Some(dir) => load_mnist(dir).with_context(|| format!("MNIST from {}", dir.display()))?,
        None => digits(),
    };
    if !a.scatter {
        return Ok(data);
    }
    let Shape::Image { h, w, .. } = data.shape else {
        bail!("--scatter needs images");
    };
    let t = Instant::now();
    let f = Scattering::new(ScatterSpec::DEFAULT, h, w)?.dataset(&data)?;
    eprintln!(
        "scattering features {:?} of {} samples in {:.1} s",
        f.shape,
        f.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(f)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let data = load(&a)?;
    if !["sign-flip", "scale", "garbage", "label-flip", "free-rider"].contains(&a.attack.as_str()) {
        bail!(
            "--attack {}: use sign-flip, scale, garbage, label-flip or free-rider",
            a.attack
        );
    }
    let how = combine(&a.aggregate, a.clients)?;
    let splits = data.default_splits();
    let parts = partition(&data, &splits.train, a.clients, a.dirichlet, a.seed);
    let mut flipped = data.clone();
    flipped.flip_labels();
    let smallest = parts.iter().map(Vec::len).min().unwrap_or(0);
    let dp = dp_settings(&a, &parts)?;
    let arch = match a.hidden {
        0 => linear(data.shape, data.classes),
        h => mlp(data.shape, h, data.classes),
    };
    let mut state = TrainState::fresh(initial_weights(&arch, sub_seed(a.seed, "init"))?);
    let budget = Budget {
        epochs: u32::MAX,
        max_steps: Some(u64::from(a.local_steps)),
        batch_size: a.batch,
        optimizer: match a.sgd_momentum {
            Some(momentum) => OptimizerKind::Sgd { momentum },
            None => OptimizerKind::Adam,
        },
        learning_rate: a.lr,
        schedule: Schedule::Constant,
    };
    let split = if a.dirichlet > 0.0 {
        format!("Dirichlet α = {}", a.dirichlet)
    } else {
        "IID".into()
    };
    eprintln!(
        "{} clients ({smallest} to {} records; {split}), {} rounds x {} local steps, \
         aggregate {}, {} {} attackers, target ε {}",
        a.clients,
        parts.iter().map(Vec::len).max().unwrap_or(0),
        a.rounds,
        a.local_steps,
        a.aggregate,
        a.attackers,
        a.attack,
        a.epsilon,
    );
    let t0 = Instant::now();
    let setup = Setup {
        data,
        flipped,
        parts,
        dp,
        budget,
    };
    let mut last = (0, 0);
    for r in 0..a.rounds {
        let updates = client_updates(&a, &setup, &state, r)?;
        let mut agg = Aggregator::new(how);
        for mut u in updates {
            if a.norm_bound > 0.0 {
                u.bound_norm(a.norm_bound);
            }
            agg.push(&u);
        }
        state = agg.step(&state, Outer::Average);
        last = evaluate_weights::<Cpu>(
            &state.weights,
            &setup.data,
            &splits.test,
            &Default::default(),
        )?;
        let (correct, total) = last;
        eprintln!(
            "round {r}: test accuracy {:.4} ({:.0} s)",
            correct as f64 / total as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    let (correct, total) = last;
    println!(
        "final test accuracy {:.4} ({correct}/{total}); {}; {:.0} s",
        correct as f64 / total as f64,
        privacy_line(&a, &setup.dp),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
