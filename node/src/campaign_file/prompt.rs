//! `[prompt]`: a prompt search (issue 27) — the prompt under which a language model (the
//! teacher) is most likely to say a target text.
//!
//! ```toml
//! [prompt]
//! teacher = "file:lm.safetensors"   # `hivemesh model train-lm` makes one; or a blob id
//! target = "my lord"                # the output to reverse-engineer
//! words = ["the", "king", "good"]   # the prompt space (left out: any of the model's tokens)
//! separator = " "                   # follows every word
//! min_len = 1                       # words (or tokens) per prompt
//! max_len = 6
//! population = 16
//! generations = 20
//! batch = 8                         # prompts per job (at most 16)
//! max_calls = 200                   # the budget in model calls …
//! max_tokens = 20000                # … and in tokens read (default: what max_calls can read)
//! ```
//!
//! The target and the words are turned into the teacher's tokens when the campaign is built
//! (the node submitting it must hold the teacher): a character the teacher does not know, a
//! target that does not fit its context beside the longest prompt, or a teacher that is not a
//! language model is refused then, with the reason.

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{PromptParams, PromptStrategy, Search};
use hivemesh_trainer::Cpu;
use hivemesh_trainer::lm::{Tokenizer, load_lm};
use serde::Deserialize;

use super::{CampaignFileError, field};

/// The blob-naming key of `[prompt]`.
pub const BLOB_FIELD: (&str, &str) = ("prompt", "teacher");

/// `[prompt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFile {
    /// The teacher: a language model's blob id (hex), or `file:PATH` (uploaded by `campaign
    /// submit`).
    pub teacher: String,
    /// The target output text.
    pub target: String,
    /// The words prompts are made of; empty: the teacher's tokens.
    #[serde(default)]
    pub words: Vec<String>,
    /// Text that follows every word (default: a space).
    #[serde(default = "default_separator")]
    pub separator: String,
    /// The shortest prompt, in words (or tokens).
    #[serde(default = "default_min_len")]
    pub min_len: u16,
    /// The longest prompt.
    #[serde(default = "default_max_len")]
    pub max_len: u16,
    /// Prompts proposed per generation.
    pub population: u32,
    /// Generations at most.
    pub generations: u32,
    /// Prompts per job (1 to 16).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// The budget in model calls (default: every proposal of every generation).
    pub max_calls: Option<u64>,
    /// The budget in tokens read (default: what `max_calls` calls can read).
    pub max_tokens: Option<u64>,
    /// `nsga2` (default) or `random` (the yardstick).
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// The teacher's tokenizer and shape, once read ([`PromptFile::resolve`]).
    #[serde(skip)]
    pub resolved: Option<Teacher>,
}

/// What a prompt campaign needs of its teacher to be built.
#[derive(Debug, Clone)]
pub struct Teacher {
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its context.
    pub context: u32,
}

fn default_separator() -> String {
    " ".into()
}
fn default_min_len() -> u16 {
    1
}
fn default_max_len() -> u16 {
    8
}
fn default_batch() -> u32 {
    8
}
fn default_strategy() -> String {
    "nsga2".into()
}

impl PromptFile {
    /// Reads the teacher (`bytes`, the blob the file names): refused when it is not a
    /// language model.
    pub fn resolve(&mut self, bytes: &[u8]) -> Result<(), CampaignFileError> {
        let (model, tokenizer) = load_lm::<Cpu>(bytes, &Default::default())
            .map_err(|e| field("prompt.teacher", e.to_string()))?;
        self.resolved = Some(Teacher {
            tokenizer,
            context: model.config().context as u32,
        });
        Ok(())
    }

    /// The teacher's blob id, when the file names it by id.
    pub fn teacher_id(&self) -> Option<BlobId> {
        self.teacher.parse().ok()
    }

    /// The protocol's search (the teacher must be a blob id, read by
    /// [`PromptFile::resolve`]).
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let teacher = self
            .teacher
            .parse::<BlobId>()
            .map_err(|e| field("prompt.teacher", e.to_string()))?;
        let t = self.resolved.as_ref().ok_or_else(|| {
            field(
                "prompt.teacher",
                "the node building the campaign must hold the teacher to read its tokens",
            )
        })?;
        let encode = |what: &'static str, text: &str| {
            t.tokenizer
                .encode(text)
                .map_err(|e| field(what, format!("{text:?}: {e}")))
        };
        let target = encode("prompt.target", &self.target)?;
        let words = self
            .words
            .iter()
            .map(|w| encode("prompt.words", &format!("{w}{}", self.separator)))
            .collect::<Result<Vec<_>, _>>()?;
        let strategy = match self.strategy.as_str() {
            "nsga2" => PromptStrategy::Nsga2,
            "random" => PromptStrategy::Random,
            other => {
                return Err(field(
                    "prompt.strategy",
                    format!("{other:?}: use nsga2 or random"),
                ));
            }
        };
        let mut p = PromptParams {
            teacher,
            vocab: t.tokenizer.vocab() as u32,
            context: t.context,
            target,
            words,
            min_len: self.min_len,
            max_len: self.max_len,
            population: self.population,
            generations: self.generations,
            batch: self.batch,
            max_calls: self.max_calls.unwrap_or_else(|| {
                u64::from(self.population).saturating_mul(u64::from(self.generations))
            }),
            max_tokens: 0,
            strategy,
        };
        p.max_tokens = self
            .max_tokens
            .unwrap_or_else(|| p.max_calls.saturating_mul(p.longest_call()));
        Ok(Search::Prompt(p))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hivemesh_trainer::lm::{Lm, LmConfig, save_lm};

    /// A small untrained language model over printable ASCII with `context` positions, as a
    /// file.
    pub(crate) fn tiny_teacher(context: usize) -> Vec<u8> {
        let chars: Vec<char> = (32u8..127).map(char::from).collect();
        let c = LmConfig {
            vocab: chars.len(),
            context,
            layers: 1,
            heads: 1,
            width: 8,
        };
        let m = Lm::<Cpu>::new(&c, 1, &Default::default()).expect("model");
        save_lm(&m, &Tokenizer::chars(chars)).expect("file")
    }

    fn file(extra: &str) -> PromptFile {
        let text = format!(
            "teacher = \"{}\"\ntarget = \"my lord\"\npopulation = 4\ngenerations = 2\n{extra}",
            BlobId::of_bytes(b"t")
        );
        toml::from_str(&text).expect("TOML")
    }

    fn search(mut f: PromptFile, teacher: &[u8]) -> Result<PromptParams, CampaignFileError> {
        f.resolve(teacher)?;
        match f.to_search()? {
            Search::Prompt(p) => {
                hivemesh_protocol::kinds::KindRules::validate(&p)?;
                Ok(p)
            }
            _ => unreachable!("a prompt search"),
        }
    }

    #[test]
    fn words_and_target_become_the_teachers_tokens() {
        let p = search(file("words = [\"a\", \"bc\"]"), &tiny_teacher(64)).expect("valid");
        // Printable ASCII from the space: 'a' is 65, ' ' is 0.
        assert_eq!(p.words, vec![vec![65, 0], vec![66, 67, 0]]);
        assert_eq!(p.target.len(), 7);
        assert_eq!((p.vocab, p.context), (95, 64));
        // The default budgets: every proposal, each at the longest prompt.
        assert_eq!(p.max_calls, 8);
        assert_eq!(p.max_tokens, 8 * (8 * 3 + 7));
        let free = search(file(""), &tiny_teacher(64)).expect("valid");
        assert!(free.words.is_empty());
        assert_eq!(free.alphabet(), 95);
    }

    #[test]
    fn a_teacher_that_is_no_language_model_or_too_short_is_refused_with_the_reason() {
        let e = search(file(""), b"not a model").expect_err("no model");
        assert!(e.to_string().contains("prompt.teacher"), "{e}");
        let e = search(file("max_len = 8"), &tiny_teacher(12)).expect_err("context");
        assert!(e.to_string().contains("context of 12"), "{e}");
        let e = search(file("words = [\"é\"]"), &tiny_teacher(64)).expect_err("character");
        assert!(
            e.to_string().contains("prompt.words")
                && e.to_string().contains("not in the vocabulary"),
            "{e}"
        );
        let e = search(file("strategy = \"hill\""), &tiny_teacher(64)).expect_err("strategy");
        assert!(e.to_string().contains("prompt.strategy"), "{e}");
    }
}
