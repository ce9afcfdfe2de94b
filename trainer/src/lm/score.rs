//! Scoring a continuation: the log-likelihood of a target text given a prompt, by teacher
//! forcing (one forward pass over the prompt and the target). What a `prompt` campaign's
//! fitness rests on (issue 27).

use burn::prelude::Backend;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::Lm;
use crate::error::TrainError;

/// `log p(target | prompt)` in nats (summed over the target's tokens) under `model`, from one
/// forward pass over `prompt ++ target` (all but its last token). The prompt needs at least
/// one token, every token must be in the vocabulary, and the two together must fit the
/// model's context plus one (the error names the limit).
pub fn target_loglik<B: Backend>(
    model: &Lm<B>,
    prompt: &[u32],
    target: &[u32],
) -> Result<f64, TrainError> {
    let c = model.config();
    let bad = |w: String| Err(TrainError::Options(w));
    if prompt.is_empty() || target.is_empty() {
        return bad("a prompt and a target of at least one token each are needed".into());
    }
    if prompt.len() + target.len() > c.context + 1 {
        return bad(format!(
            "a prompt of {} and a target of {} tokens do not fit the model's context of {} (prompt + target ≤ {})",
            prompt.len(),
            target.len(),
            c.context,
            c.context + 1
        ));
    }
    if let Some(t) = prompt
        .iter()
        .chain(target)
        .find(|&&t| t as usize >= c.vocab)
    {
        return bad(format!(
            "token {t} is outside the vocabulary of {}",
            c.vocab
        ));
    }
    let seq: Vec<i64> = prompt
        .iter()
        .chain(&target[..target.len() - 1])
        .map(|&t| i64::from(t))
        .collect();
    let n = seq.len();
    let device = model.tok.val().device();
    let input: Tensor<B, 2, Int> = Tensor::from_data(TensorData::new(seq, [1, n]), &device);
    let logp = log_softmax(model.forward(input).reshape([n, c.vocab]), 1);
    // Rows prompt.len() − 1 .. n predict the target's tokens.
    let from = prompt.len() - 1;
    let rows = logp.slice([from..n, 0..c.vocab]);
    let idx: Vec<i64> = target.iter().map(|&t| i64::from(t)).collect();
    let idx: Tensor<B, 2, Int> =
        Tensor::from_data(TensorData::new(idx, [target.len(), 1]), &device);
    let picked: Vec<f32> = rows
        .gather(1, idx)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| TrainError::Artifact(format!("log-likelihoods: {e:?}")))?;
    Ok(picked.iter().map(|&v| f64::from(v)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use crate::lm::LmConfig;

    fn model() -> Lm<Cpu> {
        let c = LmConfig {
            vocab: 7,
            context: 6,
            layers: 1,
            heads: 1,
            width: 8,
        };
        Lm::new(&c, 3, &Default::default()).expect("valid")
    }

    /// The same sum from the logits of each prefix, one forward pass each.
    fn by_prefixes(m: &Lm<Cpu>, prompt: &[u32], target: &[u32]) -> f64 {
        let mut seq = prompt.to_vec();
        let mut total = 0.0;
        for &t in target {
            let x: Vec<i64> = seq.iter().map(|&v| i64::from(v)).collect();
            let n = x.len();
            let input =
                Tensor::<Cpu, 2, Int>::from_data(TensorData::new(x, [1, n]), &Default::default());
            let logp = log_softmax(m.forward(input).reshape([n, 7]), 1);
            let row: Vec<f32> = logp
                .slice([n - 1..n, 0..7])
                .into_data()
                .to_vec()
                .expect("f32");
            total += f64::from(row[t as usize]);
            seq.push(t);
        }
        total
    }

    #[test]
    fn teacher_forcing_equals_scoring_each_prefix() {
        let m = model();
        let (p, t) = ([1, 2, 3], [4, 0, 6]);
        let one = target_loglik(&m, &p, &t).expect("fits");
        assert!(one < 0.0);
        assert!((one - by_prefixes(&m, &p, &t)).abs() < 1e-4, "{one}");
        // A different prompt, a different score; the same call, the same bits.
        assert_ne!(one, target_loglik(&m, &[5, 5, 5], &t).expect("fits"));
        assert_eq!(one, target_loglik(&m, &p, &t).expect("fits"));
    }

    #[test]
    fn what_does_not_fit_is_refused_with_the_limit() {
        let m = model();
        let e = target_loglik(&m, &[1, 2, 3, 4], &[1, 2, 3, 4]).unwrap_err();
        assert!(e.to_string().contains("context of 6"), "{e}");
        let e = target_loglik(&m, &[1], &[9]).unwrap_err();
        assert!(e.to_string().contains("token 9"), "{e}");
        assert!(target_loglik(&m, &[], &[1]).is_err());
        // The most that fits: prompt + target = context + 1.
        assert!(target_loglik(&m, &[1, 2, 3, 4], &[1, 2, 3]).is_ok());
    }
}
