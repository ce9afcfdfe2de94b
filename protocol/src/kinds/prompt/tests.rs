use std::collections::BTreeSet;

use rand_core::SeedableRng;

use super::*;
use crate::outcome::{Failure, FailureKind, Metrics};

/// Words `a`..: word `i` is the tokens `[i % 5, (i + 1) % 5]`, so some gene sequences spell
/// the same tokens.
fn params(words: usize) -> PromptParams {
    PromptParams {
        teacher: BlobId::of_bytes(b"teacher"),
        vocab: 5,
        context: 32,
        target: vec![1, 2, 3],
        words: (0..words as u32)
            .map(|i| vec![i % 5, (i + 1) % 5])
            .collect(),
        min_len: 1,
        max_len: 4,
        population: 8,
        generations: 30,
        batch: 3,
        max_calls: 1000,
        max_tokens: 1_000_000,
        strategy: PromptStrategy::Nsga2,
    }
}

/// A stand-in model: the log-likelihood (micro-nats) falls with the prompt's distance from
/// a hidden token sequence.
fn score(hidden: &[u32], tokens: &[u32]) -> i64 {
    let wrong = hidden.iter().zip(tokens).filter(|(a, b)| a != b).count()
        + hidden.len().abs_diff(tokens.len());
    -(wrong as i64) * 1_000_000 - 1
}

fn success(lls: &[i64]) -> Outcome {
    Outcome::Success(Metrics {
        correct: 0,
        total: lls.len() as u64,
        params: 0,
        flops: 0,
        extra: lls
            .iter()
            .enumerate()
            .map(|(i, &ll)| (loglik_name(i), ll))
            .collect(),
        artifacts: vec![],
    })
}

/// Runs a campaign to its end with the stand-in model; returns every token sequence a job
/// scored (in order), the state's counters and the best log-likelihood seen.
fn run(p: &PromptParams, seed: u64) -> Ran {
    run_against(p, seed, &[3, 4, 0, 1, 2, 3])
}

/// [`run`] with the stand-in model preferring `hidden`.
fn run_against(p: &PromptParams, seed: u64, hidden: &[u32]) -> Ran {
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scored = Vec::new();
    let mut best = i64::MIN;
    for _ in 0..p.generations {
        let jobs = s.ask(&mut rng);
        if jobs.is_empty() {
            break;
        }
        let outcomes: Vec<Outcome> = jobs
            .iter()
            .map(|j| {
                let JobPayload::Prompt { prompts } = j else {
                    panic!("a prompt job")
                };
                assert!(!prompts.is_empty() && prompts.len() <= p.batch as usize);
                let lls: Vec<i64> = prompts
                    .iter()
                    .map(|g| {
                        let t = p.tokens(g).expect("genes in the alphabet");
                        scored.push(t.clone());
                        score(hidden, &t)
                    })
                    .collect();
                best = best.max(*lls.iter().max().expect("one"));
                success(&lls)
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
        s.tell(&told).expect("told");
        if s.finished() {
            break;
        }
    }
    (scored, s.counters(), best)
}

/// What a run scored (token sequences, in order), the state's counters, the best score.
type Ran = (Vec<Vec<u32>>, Vec<(&'static str, u64)>, i64);

fn counter(c: &[(&'static str, u64)], name: &str) -> u64 {
    c.iter().find(|(n, _)| *n == name).expect("counter").1
}

#[test]
fn no_prompt_is_scored_twice_and_the_cache_answers_repeats() {
    let p = params(6);
    let (scored, counters, _) = run(&p, 1);
    let distinct: BTreeSet<&Vec<u32>> = scored.iter().collect();
    assert_eq!(
        distinct.len(),
        scored.len(),
        "a token sequence was scored twice"
    );
    assert_eq!(counter(&counters, "model_calls"), scored.len() as u64);
    // Six words over five tokens, prompts of 1 to 4 words: the search keeps proposing
    // prompts it has scored, and the cache answers them.
    assert!(counter(&counters, "cache_hits") > 0, "{counters:?}");
    let tokens: u64 = scored.iter().map(|t| p.call_tokens(t)).sum();
    assert_eq!(counter(&counters, "tokens"), tokens);
}

#[test]
fn the_campaign_stops_at_its_call_and_token_budgets() {
    let mut p = params(40);
    p.max_calls = 21;
    let (scored, counters, _) = run(&p, 2);
    assert_eq!(scored.len(), 21, "every paid call is made, none beyond");
    assert_eq!(counter(&counters, "model_calls"), 21);
    let mut p = params(40);
    p.max_tokens = 100;
    let (scored, counters, _) = run(&p, 3);
    let spent: u64 = scored.iter().map(|t| p.call_tokens(t)).sum();
    assert!(spent <= 100 && spent > 100 - 11, "{spent} tokens");
    assert_eq!(counter(&counters, "tokens"), spent);
    let (calls, tokens) = p.projected();
    assert_eq!(calls, 8 * 30);
    assert_eq!(tokens, 100, "the token budget caps the projection");
}

#[test]
fn the_same_outcomes_give_the_same_jobs() {
    let p = params(12);
    assert_eq!(run(&p, 4).0, run(&p, 4).0);
}

#[test]
fn the_genetic_search_beats_random_prompts_at_equal_calls() {
    // 200 words over 50 tokens (some spell the same pair); the hidden sequence is six words.
    let mut p = params(0);
    p.vocab = 50;
    p.context = 64;
    p.words = (0..200u32)
        .map(|i| vec![i % 50, (i * 7 + 3) % 50])
        .collect();
    p.max_len = 8;
    p.population = 20;
    p.generations = 100;
    p.max_calls = 400;
    let (mut ga_sum, mut random_sum, mut wins) = (0, 0, 0);
    for seed in 0..5 {
        p.strategy = PromptStrategy::Nsga2;
        let ga = run_against(&p, seed, &[5, 1, 9, 0, 33, 1, 17, 22, 4, 3, 40, 12]).2;
        p.strategy = PromptStrategy::Random;
        let random = run_against(&p, seed, &[5, 1, 9, 0, 33, 1, 17, 22, 4, 3, 40, 12]).2;
        wins += usize::from(ga > random);
        (ga_sum, random_sum) = (ga_sum + ga, random_sum + random);
    }
    assert!(
        wins >= 3 && ga_sum > random_sum,
        "NSGA-II beat random search in {wins} of 5 seeds ({ga_sum} vs {random_sum})"
    );
}

#[test]
fn outcomes_without_one_loglik_per_prompt_score_as_failed() {
    assert_eq!(logliks(&success(&[-5, -7]), 2), Some(vec![-5, -7]));
    assert_eq!(logliks(&success(&[-5, -7]), 3), None, "one missing");
    assert_eq!(logliks(&success(&[-5, -7, -1]), 2), None, "one too many");
    assert_eq!(
        logliks(&success(&[-5, 7]), 2),
        None,
        "a probability above 1"
    );
    let f = Outcome::Failure(Failure {
        kind: FailureKind::InvalidJob,
        detail: String::new(),
    });
    assert_eq!(logliks(&f, 1), None);
}

#[test]
fn validation_names_the_limit() {
    params(6).validate().expect("valid");
    let mut p = params(6);
    p.target = vec![1; 30];
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("context of 32"), "{e}");
    let mut p = params(6);
    p.words[2] = vec![9];
    assert!(p.validate().unwrap_err().to_string().contains("words"));
    let mut p = params(6);
    p.target = vec![5];
    assert!(p.validate().unwrap_err().to_string().contains("target"));
    let mut p = params(6);
    p.batch = MAX_BATCH + 1;
    assert!(p.validate().unwrap_err().to_string().contains("batch"));
    let mut p = params(0);
    p.vocab = 100_000;
    p.context = 8192;
    p.target = (0..5000).map(|i| 20_000 + i).collect();
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("announcement"), "{e}");
    let mut p = params(6);
    p.max_tokens = 3;
    assert!(p.validate().unwrap_err().to_string().contains("max_tokens"));
}

#[test]
fn free_token_prompts_are_the_genes() {
    let p = params(0);
    assert_eq!(p.alphabet(), 5);
    assert_eq!(p.tokens(&[4, 0]), Some(vec![4, 0]));
    assert_eq!(p.tokens(&[5]), None);
    let w = params(3);
    assert_eq!(w.tokens(&[2, 0]), Some(vec![2, 3, 0, 1]));
    assert_eq!(w.tokens(&[3]), None);
}
