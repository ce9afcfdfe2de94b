//! Prompt-search jobs (issue 27): score a batch of prompts under the campaign's teacher, a
//! language model. Each prompt's genes become tokens (words or the teacher's tokens), and its
//! fitness is the log-likelihood of the target given the prompt, by teacher forcing (one
//! forward pass over prompt and target, [`hivemesh_trainer::lm::target_loglik`]). The outcome
//! reports each prompt's log-likelihood in micro-nats as the extra `ll00`, `ll01`, …
//! ([`loglik_name`]), the prompts as `total`, the teacher's params, and the FLOPs the batch
//! cost.
//!
//! Scoring runs on the CPU backend whatever the campaign's class: it is one forward pass of a
//! small model, and the CPU's bits are the ones every executor agrees on.

use std::collections::BTreeMap;

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::kinds::prompt::loglik_name;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::PromptParams;
use hivemesh_trainer::lm::{Lm, LmConfig, load_lm, target_loglik};
use hivemesh_trainer::{Cpu, TrainError};

use super::{BlobSource, ExecError, Ran, failure, fetch, train_failure};

/// The blobs a prompt job needs: the teacher.
pub fn needed_blobs(p: &PromptParams) -> Vec<(BlobId, &'static str)> {
    vec![(p.teacher, "teacher")]
}

/// The teacher model of `p` from its (verified) bytes, checked against the campaign's shape:
/// `Err` with the reason when it is not a language model or not the one the campaign
/// describes (every executor sees the same bytes, so the job fails alike everywhere).
pub fn teacher(p: &PromptParams, bytes: &[u8]) -> Result<Lm<Cpu>, String> {
    let (model, _) = load_lm::<Cpu>(bytes, &Default::default()).map_err(|e| e.to_string())?;
    let c = model.config();
    if c.vocab != p.vocab as usize || c.context != p.context as usize {
        return Err(format!(
            "the teacher has a vocabulary of {} and a context of {}; the campaign says {} and {}",
            c.vocab, c.context, p.vocab, p.context
        ));
    }
    Ok(model)
}

/// Scores `prompts` (genes) under the teacher.
pub(super) fn run(
    p: &PromptParams,
    prompts: &[Vec<u32>],
    blobs: &dyn BlobSource,
    limits: &hivemesh_trainer::train::Limits,
) -> Result<Ran, ExecError> {
    let invalid = |detail: String| Ok(Ran::nothing(failure(FailureKind::InvalidJob, detail)));
    if prompts.is_empty() || prompts.len() > p.batch as usize {
        return invalid(format!(
            "{} prompts in a job of at most {}",
            prompts.len(),
            p.batch
        ));
    }
    let bytes = fetch(blobs, &p.teacher, "teacher")?;
    let model = match teacher(p, &bytes) {
        Ok(m) => m,
        Err(e) => return invalid(format!("teacher: {e}")),
    };
    let c = model.config();
    check_memory(&c, limits)?;
    let per_token = c.flops_per_sequence() / c.context.max(1) as u64;
    let mut extra = BTreeMap::new();
    let mut flops = 0u64;
    for (i, genes) in prompts.iter().enumerate() {
        let Some(tokens) = p.tokens(genes) else {
            return invalid(format!(
                "prompt {i}: a gene outside the alphabet of {}",
                p.alphabet()
            ));
        };
        if let Err(e) = limits.stop.check(i as u64) {
            return Ok(Ran::nothing(train_failure(e)?));
        }
        let ll = match target_loglik(&model, &tokens, &p.target) {
            Ok(ll) => ll,
            Err(e) => return invalid(format!("prompt {i}: {e}")),
        };
        if !ll.is_finite() {
            let detail = format!("prompt {i}: a log-likelihood of {ll}");
            return Ok(Ran::nothing(failure(FailureKind::NonFinite, detail)));
        }
        extra.insert(loglik_name(i), (ll * 1e6).round() as i64);
        flops = flops.saturating_add(per_token.saturating_mul(p.call_tokens(&tokens)));
    }
    Ok(Ran::nothing(Outcome::Success(Metrics {
        correct: 0,
        total: prompts.len() as u64,
        params: c.params(),
        flops,
        extra,
        artifacts: vec![],
    })))
}

/// Refuses (for another peer to take) a teacher whose forward pass would exceed this node's
/// memory limit: its weights, and per layer the attention scores and a dozen activations of
/// the full context (a generous bound of what one forward pass holds).
pub(super) fn check_memory(
    c: &LmConfig,
    limits: &hivemesh_trainer::train::Limits,
) -> Result<(), ExecError> {
    let (t, d) = (c.context as u64, c.width as u64);
    let per_layer = 4 * (t * t * c.heads as u64 + 12 * t * d);
    let needed = 4 * c.params() + per_layer * c.layers as u64 + 4 * t * c.vocab as u64;
    match limits.memory_budget {
        Some(budget) if needed > budget => Err(ExecError::OverLimit(TrainError::MemoryBudget {
            needed,
            budget,
        })),
        _ => Ok(()),
    }
}

/// One prompt on a prompt campaign's front.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PromptPoint {
    /// The prompt as the teacher's text (`null` when the node does not hold the teacher).
    pub text: Option<String>,
    /// Its genes (word indices, or tokens).
    pub genes: Vec<u32>,
    /// `log p(target | prompt)`, nats.
    pub loglik: f64,
    /// The generation that scored it.
    pub generation: u32,
}

/// The prompts no other scored prompt beats on both log-likelihood (up) and length (down),
/// best first, from the campaign's `jobs` and their agreed `outcomes` (by job); `tokenizer`
/// turns them into text.
pub fn front(
    p: &PromptParams,
    scored: &[(&hivemesh_protocol::spec::JobSpec, &Outcome)],
    tokenizer: Option<&hivemesh_trainer::lm::Tokenizer>,
) -> Vec<PromptPoint> {
    let mut all: Vec<PromptPoint> = Vec::new();
    for (job, outcome) in scored {
        let hivemesh_protocol::spec::JobPayload::Prompt { prompts } = &job.payload else {
            continue;
        };
        let Some(lls) = hivemesh_protocol::kinds::prompt::logliks(outcome, prompts.len()) else {
            continue;
        };
        for (genes, ll) in prompts.iter().zip(lls) {
            all.push(PromptPoint {
                text: tokenizer
                    .zip(p.tokens(genes))
                    .map(|(t, ids)| t.decode(&ids)),
                genes: genes.clone(),
                loglik: ll as f64 / 1e6,
                generation: job.generation,
            });
        }
    }
    let beats = |a: &PromptPoint, b: &PromptPoint| {
        a.loglik >= b.loglik
            && a.genes.len() <= b.genes.len()
            && (a.loglik > b.loglik || a.genes.len() < b.genes.len())
    };
    let mut out: Vec<PromptPoint> = all
        .iter()
        .filter(|b| !all.iter().any(|a| beats(a, b)))
        .cloned()
        .collect();
    out.sort_by(|a, b| b.loglik.total_cmp(&a.loglik).then(a.genes.cmp(&b.genes)));
    out.dedup_by(|a, b| a.genes == b.genes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign_file::prompt::tests::tiny_teacher;
    use hivemesh_protocol::spec::PromptStrategy;

    fn params(teacher: BlobId) -> PromptParams {
        PromptParams {
            teacher,
            vocab: 95,
            context: 64,
            target: vec![77, 89, 0, 76],
            words: vec![vec![65, 0], vec![66, 67, 0]],
            min_len: 1,
            max_len: 4,
            population: 4,
            generations: 1,
            batch: 4,
            max_calls: 10,
            max_tokens: 1000,
            strategy: PromptStrategy::Nsga2,
        }
    }

    fn score(p: &PromptParams, bytes: &[u8], prompts: &[Vec<u32>]) -> Outcome {
        let blobs: BTreeMap<BlobId, Vec<u8>> = [(BlobId::of_bytes(bytes), bytes.to_vec())].into();
        run(p, prompts, &blobs, &Default::default())
            .expect("runs here")
            .outcome
    }

    fn failure_of(o: &Outcome) -> (FailureKind, String) {
        match o {
            Outcome::Failure(f) => (f.kind, f.detail.clone()),
            Outcome::Success(_) => panic!("a failure, got {o:?}"),
        }
    }

    #[test]
    fn a_batch_is_scored_the_same_twice_one_loglik_per_prompt() {
        let bytes = tiny_teacher(64);
        let p = params(BlobId::of_bytes(&bytes));
        let prompts = vec![vec![0], vec![1, 0, 1]];
        let a = score(&p, &bytes, &prompts);
        assert_eq!(a, score(&p, &bytes, &prompts), "bit-identical");
        let lls = hivemesh_protocol::kinds::prompt::logliks(&a, 2).expect("two scores");
        assert!(lls.iter().all(|&l| l < 0), "{lls:?}");
        assert_ne!(lls[0], lls[1]);
    }

    #[test]
    fn a_gene_or_token_outside_the_vocabulary_or_another_teacher_is_an_invalid_job() {
        let bytes = tiny_teacher(64);
        let p = params(BlobId::of_bytes(&bytes));
        let (kind, detail) = failure_of(&score(&p, &bytes, &[vec![0], vec![2]]));
        assert_eq!(kind, FailureKind::InvalidJob);
        assert!(
            detail.contains("prompt 1") && detail.contains("alphabet"),
            "{detail}"
        );
        // A word list naming a token the teacher does not have (a spec no honest node would
        // build, but a job must still fail alike everywhere).
        let mut bad = params(p.teacher);
        bad.words.push(vec![150]);
        let (kind, detail) = failure_of(&score(&bad, &bytes, &[vec![2]]));
        assert_eq!(kind, FailureKind::InvalidJob);
        assert!(detail.contains("outside the vocabulary of 95"), "{detail}");
        // A free-token campaign that claims another teacher's vocabulary.
        let mut free = params(p.teacher);
        free.words.clear();
        free.vocab = 200;
        let (kind, detail) = failure_of(&score(&free, &bytes, &[vec![150]]));
        assert_eq!(kind, FailureKind::InvalidJob);
        assert!(detail.contains("a vocabulary of 95"), "{detail}");
        let junk = b"not a model".to_vec();
        let (kind, detail) =
            failure_of(&score(&params(BlobId::of_bytes(&junk)), &junk, &[vec![0]]));
        assert_eq!(kind, FailureKind::InvalidJob);
        assert!(detail.contains("not a hivemesh language model"), "{detail}");
    }
}
