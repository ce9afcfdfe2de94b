//! Prompt search against random search at equal model calls (issue 27's figure), with the
//! swarm's own search state (the protocol's `prompt` kind: NSGA-II or random proposals, the
//! cache, the budget) and the executor's scoring (teacher forcing under the teacher), without
//! the network: every generation's jobs are scored here and told back as agreed outcomes.
//!
//! ```text
//! cargo run --release -p hivemesh-node --example prompt_search -- \
//!     --teacher target/lm.safetensors --target "my lord" --calls 200 --seeds 5
//! ```
//!
//! Prints, per seed, the best log-likelihood and the hypervolume of the front
//! (`[−log p, length]`, reference point: the worst score either strategy saw + 1 nat, and
//! `max_len + 1`) of both strategies, and how many proposals the cache answered.

use std::collections::BTreeMap;

use clap::Parser;
use hivemesh_evolve::hypervolume::hypervolume;
use hivemesh_node::campaign_file::PromptFile;
use hivemesh_node::executor::prompt::teacher;
use hivemesh_protocol::kinds::prompt::loglik_name;
use hivemesh_protocol::kinds::{JobPayload, KindRules, Told};
use hivemesh_protocol::message::{Metrics, Outcome};
use hivemesh_protocol::spec::{PromptParams, Search};
use hivemesh_trainer::lm::target_loglik;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// HyperCycle's example prompt space: words from a list.
const WORDS: &str = "the king queen good sir madam come speak answer what say to him her and I \
                     thou my lord noble gracious yes no pray you O farewell welcome sweet honour";

#[derive(Parser)]
struct Args {
    /// The teacher (`hivemesh model train-lm --out`).
    #[arg(long)]
    teacher: std::path::PathBuf,
    /// The target text.
    #[arg(long, default_value = "my lord")]
    target: String,
    /// Words, separated by spaces (each followed by a space in the prompt).
    #[arg(long, default_value = WORDS)]
    words: String,
    /// Model calls per run.
    #[arg(long, default_value_t = 200)]
    calls: u64,
    /// Proposals per generation.
    #[arg(long, default_value_t = 16)]
    population: u32,
    /// The longest prompt, in words.
    #[arg(long, default_value_t = 6)]
    max_len: u16,
    /// Seeds (runs per strategy).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
}

/// One run's result.
struct Run {
    best: f64,
    best_text: String,
    front: Vec<Vec<f64>>,
    counters: BTreeMap<&'static str, u64>,
}

fn run(p: &PromptParams, bytes: &[u8], seed: u64, decode: &dyn Fn(&[u32]) -> String) -> Run {
    let model = teacher(p, bytes).expect("the teacher");
    let mut state = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scored: Vec<(Vec<u32>, f64)> = Vec::new();
    loop {
        let jobs = state.ask(&mut rng);
        if jobs.is_empty() {
            break;
        }
        let outcomes: Vec<Outcome> = jobs
            .iter()
            .map(|j| {
                let JobPayload::Prompt { prompts } = j else {
                    unreachable!("prompt jobs")
                };
                let mut extra = BTreeMap::new();
                for (i, g) in prompts.iter().enumerate() {
                    let tokens = p.tokens(g).expect("in the alphabet");
                    let ll = target_loglik(&model, &tokens, &p.target).expect("scored");
                    extra.insert(loglik_name(i), (ll * 1e6).round() as i64);
                    scored.push((g.clone(), ll));
                }
                Outcome::Success(Metrics {
                    correct: 0,
                    total: prompts.len() as u64,
                    params: 0,
                    flops: 0,
                    extra,
                    artifacts: vec![],
                })
            })
            .collect();
        let told: Vec<Told<'_>> = jobs
            .iter()
            .zip(&outcomes)
            .map(|(payload, o)| Told {
                payload,
                outcome: Some(o),
            })
            .collect();
        state.tell(&told).expect("told");
        if state.finished() {
            break;
        }
    }
    let (g, best) = scored
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .expect("scored");
    Run {
        best,
        best_text: decode(&p.tokens(&g).expect("tokens")),
        front: scored
            .iter()
            .map(|(g, ll)| vec![-ll, g.len() as f64])
            .collect(),
        counters: state.counters().into_iter().collect(),
    }
}

fn main() {
    let a = Args::parse();
    let bytes = std::fs::read(&a.teacher).expect("the teacher file");
    let words: Vec<String> = a.words.split_whitespace().map(String::from).collect();
    let (_, tokenizer) = hivemesh_trainer::lm::read_lm_meta(&bytes).expect("a language model");
    let decode = |t: &[u32]| tokenizer.decode(t);
    let mut file: PromptFile = toml::from_str(&format!(
        "teacher = \"{}\"\ntarget = {:?}\nwords = {:?}\npopulation = {}\ngenerations = 100000\n\
         max_len = {}\nmax_calls = {}\n",
        hivemesh_protocol::BlobId::of_bytes(&bytes),
        a.target,
        words,
        a.population,
        a.max_len,
        a.calls
    ))
    .expect("a [prompt] table");
    file.resolve(&bytes).expect("the teacher");
    let Ok(Search::Prompt(mut p)) = file.to_search() else {
        panic!("a prompt search")
    };
    if let Err(e) = p.validate() {
        eprintln!("the search is refused: {e}");
        std::process::exit(2);
    }
    println!(
        "target {:?}, {} words, prompts of 1..={} words, {} calls per run, population {}",
        a.target,
        words.len(),
        a.max_len,
        a.calls,
        a.population
    );
    println!(
        "| seed | best log p, NSGA-II | best log p, random | HV NSGA-II | HV random | cache hits (NSGA-II / random) | best prompt (NSGA-II) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    let mut sums = [0.0f64; 4];
    let mut hits = [0u64; 2];
    for seed in 0..a.seeds {
        p.strategy = hivemesh_protocol::spec::PromptStrategy::Nsga2;
        let ga = run(&p, &bytes, seed, &decode);
        p.strategy = hivemesh_protocol::spec::PromptStrategy::Random;
        let random = run(&p, &bytes, seed, &decode);
        let worst = ga
            .front
            .iter()
            .chain(&random.front)
            .map(|x| x[0])
            .fold(0.0f64, f64::max);
        let reference = [worst + 1.0, f64::from(a.max_len) + 1.0];
        let hv = |r: &Run| hypervolume(&r.front, &reference).expect("2 objectives");
        let (hg, hr) = (hv(&ga), hv(&random));
        println!(
            "| {seed} | {:.3} | {:.3} | {hg:.2} | {hr:.2} | {} / {} | {:?} |",
            ga.best,
            random.best,
            ga.counters["cache_hits"],
            random.counters["cache_hits"],
            ga.best_text
        );
        for (s, v) in sums.iter_mut().zip([ga.best, random.best, hg, hr]) {
            *s += v;
        }
        hits[0] += ga.counters["cache_hits"];
        hits[1] += random.counters["cache_hits"];
        assert_eq!(
            ga.counters["model_calls"], a.calls,
            "the budget is spent exactly"
        );
    }
    let n = a.seeds as f64;
    println!(
        "| mean | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} / {:.1} | |",
        sums[0] / n,
        sums[1] / n,
        sums[2] / n,
        sums[3] / n,
        hits[0] as f64 / n,
        hits[1] as f64 / n
    );
    let calls = a.calls as f64 * n;
    println!(
        "cache: NSGA-II proposed {:.0} prompts per run and the cache answered {:.1} % of them \
         (random: {:.1} %)",
        (calls + hits[0] as f64) / n,
        100.0 * hits[0] as f64 / (calls + hits[0] as f64),
        100.0 * hits[1] as f64 / (calls + hits[1] as f64)
    );
}
