//! A causal transformer language model (issue 27): GPT-style, pre-norm blocks of multi-head
//! causal self-attention and an MLP, learned positions, a final layer norm and an output head
//! tied to the token embedding (nanoGPT's architecture, without dropout).
//!
//! * [`LmConfig`]: the shape, with exact parameter and FLOP counts (the architecture IR's
//!   [`hivemesh_evolve::arch::Transformer`]);
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
/// The shape of a language model: the architecture IR's sequence model (exact params and
/// FLOPs live there, beside the image models').
pub use hivemesh_evolve::arch::Transformer as LmConfig;
pub use hivemesh_evolve::arch::{
    MAX_LM_CONTEXT as MAX_CONTEXT, MAX_LM_LAYERS as MAX_LAYERS, MAX_LM_VOCAB as MAX_VOCAB,
    MAX_LM_WIDTH as MAX_WIDTH,
};
pub use model::Lm;
pub use score::target_loglik;
pub use train::{
    LmRun, LmTrainConfig, evaluate, generate, load_lm, read_lm_meta, save_lm, train_lm,
};

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
