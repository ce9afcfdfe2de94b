//! A causal transformer language model (issue 27): GPT-style, pre-norm blocks of multi-head
//! causal self-attention and an MLP, learned positions, a final layer norm and an output head
//! tied to the token embedding (nanoGPT's architecture, without dropout).
//!
//! * [`LmConfig`]: the shape, with exact parameter and FLOP counts;
//! * [`model`]: the burn module, initialised from a seed (bit-identical on the CPU backend);
//! * [`train`]: AdamW with warm-up and cosine decay on random windows of a token stream,
//!   evaluation in nats per token, greedy and seeded sampling, safetensors files;
//! * [`score`]: the log-likelihood of a target given a prompt (teacher forcing);
//! * [`distill`]: a teacher's top-k labels over token windows as a shard, a student trained on
//!   them.
//!
//! Tokens are the corpus's characters ([`crate::data::TextCorpus`]), optionally merged by a
//! [`Bpe`] learnt from it; a [`Tokenizer`] holds both and travels in the model's file.

pub mod bpe;
pub mod distill;
pub mod model;
pub mod score;
pub mod train;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

pub use bpe::Bpe;
pub use model::Lm;
pub use score::target_loglik;
pub use train::{
    LmRun, LmTrainConfig, evaluate, generate, load_lm, read_lm_meta, save_lm, train_lm,
};

/// The most layers, heads, width, context and vocabulary an [`LmConfig`] may ask for (a
/// file or a command line cannot make the trainer allocate without bound).
pub const MAX_LAYERS: usize = 48;
/// See [`MAX_LAYERS`].
pub const MAX_WIDTH: usize = 4096;
/// See [`MAX_LAYERS`].
pub const MAX_CONTEXT: usize = 8192;
/// See [`MAX_LAYERS`].
pub const MAX_VOCAB: usize = 1 << 20;

/// Text to tokens and back: the characters of the vocabulary (sorted), then a BPE's merges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokenizer {
    /// Each base token's character, sorted.
    pub chars: Vec<char>,
    /// Merges over the characters, if any.
    #[serde(default)]
    pub bpe: Option<Bpe>,
}

impl Tokenizer {
    /// Characters only.
    pub fn chars(chars: Vec<char>) -> Tokenizer {
        Tokenizer { chars, bpe: None }
    }

    /// Tokens in all.
    pub fn vocab(&self) -> usize {
        self.bpe.as_ref().map_or(self.chars.len(), Bpe::vocab)
    }

    /// Whether the parts agree (the BPE's base is the characters, its merges name earlier
    /// tokens, the characters are sorted and distinct).
    pub fn is_valid(&self) -> bool {
        self.chars.windows(2).all(|w| w[0] < w[1])
            && self
                .bpe
                .as_ref()
                .is_none_or(|b| b.base as usize == self.chars.len() && b.is_valid())
    }

    /// Base tokens (characters) encoded (merged).
    pub fn encode_tokens(&self, base: &[u32]) -> Vec<u32> {
        self.bpe
            .as_ref()
            .map_or_else(|| base.to_vec(), |b| b.encode(base))
    }

    /// `text` as tokens; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        let mut base = Vec::with_capacity(text.len());
        for (i, ch) in text.chars().enumerate() {
            match self.chars.binary_search(&ch) {
                Ok(k) => base.push(k as u32),
                Err(_) => {
                    return Err(TrainError::Options(format!(
                        "character {i} ({ch:?}) is not in the vocabulary"
                    )));
                }
            }
        }
        Ok(self.encode_tokens(&base))
    }

    /// Tokens as text (unknown ids are dropped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let base = self
            .bpe
            .as_ref()
            .map_or_else(|| ids.to_vec(), |b| b.decode(ids));
        base.iter()
            .filter_map(|&t| self.chars.get(t as usize))
            .collect()
    }
}

/// The shape of a language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmConfig {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// The longest sequence (positions learned).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block (divides `width`).
    pub heads: usize,
    /// The residual stream's width.
    pub width: usize,
}

impl LmConfig {
    /// nanoGPT's CPU character-level configuration (4 layers, 4 heads, width 128, context 64)
    /// for a vocabulary of `vocab` tokens.
    pub fn small(vocab: usize) -> LmConfig {
        LmConfig {
            vocab,
            context: 64,
            layers: 4,
            heads: 4,
            width: 128,
        }
    }

    /// Checks the shape, naming what is wrong.
    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Options(format!("language model: {what}")));
        if !(2..=MAX_VOCAB).contains(&self.vocab) {
            return bad(format!("a vocabulary of {} (2 to {MAX_VOCAB})", self.vocab));
        }
        if !(1..=MAX_CONTEXT).contains(&self.context) {
            return bad(format!(
                "a context of {} (1 to {MAX_CONTEXT})",
                self.context
            ));
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return bad(format!("{} layers (1 to {MAX_LAYERS})", self.layers));
        }
        if !(1..=MAX_WIDTH).contains(&self.width) {
            return bad(format!("a width of {} (1 to {MAX_WIDTH})", self.width));
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads do not divide the width {}",
                self.heads, self.width
            ));
        }
        Ok(())
    }

    /// Trainable parameters: embeddings (the head is tied to the token embedding), per block
    /// two layer norms (scale and shift), the attention's joint q/k/v and output projections
    /// and the MLP's two layers (hidden width `4 × width`), all with biases, and the final
    /// layer norm.
    pub fn params(&self) -> u64 {
        let (v, t, d) = (self.vocab as u64, self.context as u64, self.width as u64);
        let block = 2 * (2 * d)      // two layer norms
            + d * 3 * d + 3 * d       // q, k, v
            + d * d + d               // attention output
            + d * 4 * d + 4 * d       // MLP in
            + 4 * d * d + d; // MLP out
        v * d + t * d + self.layers as u64 * block + 2 * d
    }

    /// Forward FLOPs (multiply-adds count 2) to process one sequence of the full context,
    /// counting the matrix products only (projections, attention scores and mixing, the
    /// head): per token `2 × (12 d² L + v d)` for the weights plus `2 × 2 t d L` per token
    /// for attention over the whole `t × t` score matrix (the causal half is not skipped).
    pub fn flops_per_sequence(&self) -> u64 {
        let (v, t, d, l) = (
            self.vocab as u64,
            self.context as u64,
            self.width as u64,
            self.layers as u64,
        );
        let weights = 2 * (12 * d * d * l + v * d);
        let attention = 2 * 2 * t * d * l;
        t * (weights + attention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_flops_match_hand_counts() {
        // nanoGPT's character model on Shakespeare (65 characters): counted by hand.
        // embeddings 65·128 + 64·128 = 16,512; a block: LN 512 + qkv 49,536 + proj 16,512
        // + fc 66,048 + out 65,664 = 198,272; four of them 793,088; final LN 256.
        let c = LmConfig::small(65);
        assert_eq!(c.params(), 16_512 + 793_088 + 256);
        // Per token: 2·(12·128²·4 + 65·128) = 1,589,504; attention 2·2·64·128·4 = 131,072.
        assert_eq!(c.flops_per_sequence(), 64 * (1_589_504 + 131_072));
    }

    #[test]
    fn shapes_are_checked_with_the_reason() {
        let mut c = LmConfig::small(65);
        assert!(c.check().is_ok());
        c.heads = 3;
        assert!(c.check().unwrap_err().to_string().contains("3 heads"));
        c = LmConfig::small(1);
        assert!(c.check().unwrap_err().to_string().contains("vocabulary"));
        c = LmConfig::small(65);
        c.layers = 1000;
        assert!(c.check().unwrap_err().to_string().contains("layers"));
    }
}
