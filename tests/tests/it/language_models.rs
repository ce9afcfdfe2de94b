//! Language models on real nodes (issue 27, ADR 0011).
//!
//! - `prompt` campaigns: three nodes search for the prompt, made of words from a list, under
//!   which a small language model they all fetch is most likely to say a target. Every node
//!   ends on the same closures, no prompt is scored twice in the swarm, the campaign stops at
//!   its budget of model calls, and the status states what was spent and the front of prompts
//!   as text.
//! - text distillation: three nodes label windows of a text corpus that only the submitter
//!   held with the teacher's top-k next-token distributions; the agreed shards are the bytes
//!   the teacher gives locally.

use std::collections::BTreeSet;

use hivemesh_node::submit::{Submission, build_spec};
use hivemesh_protocol::BlobId;
use hivemesh_protocol::kinds::prompt::logliks;
use hivemesh_protocol::message::Outcome;
use hivemesh_protocol::spec::{JobPayload, Search};
use hivemesh_protocol::standings::JobStatus;
use hivemesh_tests::{cluster, test_key, wait_finished};
use hivemesh_trainer::data::{DatasetBlob, TextCorpus};
use hivemesh_trainer::lm::distill::label_text;
use hivemesh_trainer::lm::{LmConfig, LmTrainConfig, Tokenizer, load_lm, save_lm, train_lm};
use hivemesh_trainer::{Cpu, CpuAutodiff};

/// The corpus the teacher learns from.
fn corpus() -> String {
    "the king said my lord. the queen said my lady. good sir, my lord is come. ".repeat(40)
}

/// A small character model trained briefly on [`corpus`] (about a second).
fn teacher() -> Vec<u8> {
    let text = corpus();
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let tokenizer = Tokenizer::chars(chars);
    let tokens = tokenizer.encode(&text).expect("in the vocabulary");
    let c = LmConfig {
        vocab: tokenizer.vocab(),
        context: 32,
        layers: 1,
        heads: 2,
        width: 16,
    };
    let cfg = LmTrainConfig {
        steps: 120,
        batch: 8,
        warmup: 10,
        eval_every: 0,
        eval_batches: 1,
        ..LmTrainConfig::nanogpt()
    };
    let (model, _) =
        train_lm::<CpuAutodiff>(&c, &cfg, &tokens, &Default::default(), &mut |_, _, _| {})
            .expect("trains");
    save_lm(&model, &tokenizer).expect("file")
}

/// The spec node 0 builds for a campaign file of nodes 0–2, redundancy 2, named `name`, with
/// the top-level `extra` lines and the kind's `section`, from the blobs `held`.
fn build(
    name: &str,
    extra: &str,
    section: &str,
    held: &[(BlobId, Vec<u8>)],
) -> hivemesh_protocol::spec::CampaignSpec {
    let roster: Vec<String> = (0..3).map(|i| test_key(i).public().to_string()).collect();
    let file = format!(
        "name = {name:?}\nredundancy = 2\nquorum = 2\nroster = {roster:?}\n{extra}{section}"
    );
    let sub = Submission::parse(&file).expect("a campaign file");
    let held: std::collections::BTreeMap<BlobId, Vec<u8>> = held.iter().cloned().collect();
    build_spec(
        &sub.file,
        test_key(0).public(),
        &[],
        hivemesh_node::unix_now(),
        &held,
    )
    .expect("built")
}

/// The token sequences the agreed successful jobs scored, in order (each job must carry one
/// score per prompt).
fn scored_prompts(
    settled: &[hivemesh_node::daemon::SettledJob],
    jobs: &[hivemesh_protocol::spec::JobSpec],
    p: &hivemesh_protocol::spec::PromptParams,
) -> Vec<Vec<u32>> {
    let mut scored: Vec<Vec<u32>> = Vec::new();
    for j in settled.iter().filter(|j| j.status == JobStatus::Success) {
        let spec = jobs
            .iter()
            .find(|s| s.id().to_string() == j.job)
            .expect("derived");
        let JobPayload::Prompt { prompts } = &spec.payload else {
            panic!("a prompt job")
        };
        let outcome = Outcome::Success(hivemesh_protocol::message::Metrics {
            correct: j.correct,
            total: j.total,
            params: j.params,
            flops: j.flops,
            extra: j.extra.clone(),
            artifacts: vec![],
        });
        assert!(
            logliks(&outcome, prompts.len()).is_some(),
            "one score per prompt"
        );
        scored.extend(
            prompts
                .iter()
                .map(|g| p.tokens(g).expect("in the alphabet")),
        );
    }
    scored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_search_prompts_within_a_budget_and_score_none_twice() {
    let (_dirs, mut nodes) = cluster("prompt", 3, |_, _| {}).await;
    let bytes = teacher();
    let id = nodes[0]
        .client
        .put_blob(bytes.clone())
        .await
        .expect("stored");
    let section = format!(
        "[prompt]\nteacher = \"{id}\"\ntarget = \"my lord\"\n\
         words = [\"the\", \"king\", \"queen\", \"said\", \"my\", \"lord\", \"lady\", \"good\", \"sir,\", \"is\"]\n\
         max_len = 4\npopulation = 8\ngenerations = 10\nbatch = 4\nmax_calls = 30\n"
    );
    let spec = build("test: prompt search", "", &section, &[(id, bytes)]);
    let Search::Prompt(p) = spec.search.clone() else {
        panic!("a prompt search")
    };
    assert_eq!(p.projected().0, 30, "the budget caps the projection");
    let campaign = nodes[0].client.submit(spec).await.expect("accepted");
    let mut roots = Vec::new();
    for n in nodes.iter_mut() {
        roots.push(wait_finished(n, campaign).await);
    }
    assert!(
        roots.iter().all(|r| *r == roots[0]),
        "one ledger: {roots:?}"
    );
    assert!(roots[0].len() < 10, "the budget ended the campaign early");

    // Every prompt the swarm scored, from the agreed outcomes: none twice, within budget.
    let settled = nodes[1]
        .client
        .settled(campaign)
        .await
        .expect("up")
        .expect("known");
    let (_, jobs) = nodes[1]
        .client
        .jobs(campaign)
        .await
        .expect("up")
        .expect("known");
    let scored = scored_prompts(&settled, &jobs, &p);
    let distinct: BTreeSet<&Vec<u32>> = scored.iter().collect();
    assert_eq!(distinct.len(), scored.len(), "a prompt was scored twice");
    let status = nodes[2]
        .client
        .campaign(campaign)
        .await
        .expect("up")
        .expect("known");
    let calls = status.counters["model_calls"];
    assert_eq!(calls as usize, scored.len(), "{:?}", status.counters);
    assert!((25..=30).contains(&calls), "spent {calls} of 30 calls");
    assert_eq!(status.counters["max_calls"], 30);
    let texts: Vec<&str> = status
        .prompts
        .iter()
        .filter_map(|p| p.text.as_deref())
        .collect();
    assert_eq!(texts.len(), status.prompts.len(), "the front as text");
    let best = &status.prompts[0];
    assert!(best.loglik < 0.0 && best.genes.len() <= 4, "{best:?}");
    for n in &nodes[..2] {
        let theirs = n
            .client
            .campaign(campaign)
            .await
            .expect("up")
            .expect("known");
        assert_eq!(theirs.counters, status.counters, "every node counts alike");
        assert_eq!(theirs.prompts, status.prompts);
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_label_a_text_corpus_only_the_submitter_held() {
    let (_dirs, mut nodes) = cluster("textkd", 3, |_, _| {}).await;
    let bytes = teacher();
    let teacher_id = nodes[0]
        .client
        .put_blob(bytes.clone())
        .await
        .expect("stored");
    let text = corpus();
    let corpus =
        TextCorpus::from_text(std::path::Path::new("corpus.txt"), text.as_bytes()).expect("UTF-8");
    let data = DatasetBlob::Text(corpus).encode();
    let data_id = nodes[0]
        .client
        .put_blob(data.clone())
        .await
        .expect("stored");
    let section = format!(
        "[distill]\nteacher = \"{teacher_id}\"\ntop_k = 3\nshard_size = 10\nsamples = 30\n"
    );
    let dataset = format!("dataset = \"blob:{data_id}\"\n");
    let held = [(teacher_id, bytes.clone()), (data_id, data)];
    let spec = build("test: text distillation", &dataset, &section, &held);
    let campaign = nodes[0].client.submit(spec).await.expect("accepted");
    let mut roots = Vec::new();
    for n in nodes.iter_mut() {
        roots.push(wait_finished(n, campaign).await);
    }
    assert!(
        roots.iter().all(|r| *r == roots[0]),
        "one ledger: {roots:?}"
    );
    let settled = nodes[2]
        .client
        .settled(campaign)
        .await
        .expect("up")
        .expect("known");
    assert_eq!(settled.len(), 3);
    // The teacher, run here over the same windows, gives the agreed shards byte for byte.
    let (model, tokenizer) = load_lm::<Cpu>(&bytes, &Default::default()).expect("a model");
    let tokens = tokenizer.encode(&text).expect("tokens");
    for (k, j) in settled.iter().enumerate() {
        assert_eq!(j.status, JobStatus::Success, "{j:?}");
        let id: BlobId = j.artifacts[0].parse().expect("an id");
        let shard = nodes[2].client.fetch_blob(id).await.expect("fetched");
        let mine =
            label_text(&model, &tokens, k as u64 * 10..(k as u64 + 1) * 10, 3, 16).expect("labels");
        assert_eq!(shard, mine.to_bytes(), "shard {k}");
        assert_eq!(j.total, 10 * 32, "a position per token of 10 windows");
        // A teacher trained on this text predicts most of its next characters.
        assert!(j.accuracy > 0.3, "teacher top-1 {}", j.accuracy);
    }
    for n in nodes {
        n.stop().await;
    }
}
