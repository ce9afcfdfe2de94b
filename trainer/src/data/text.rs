//! Plain UTF-8 text (gzip or plain) for language-model corpora, as character tokens.

use std::ops::Range;
use std::path::Path;

use hivemesh_evolve::arch::Shape;

use super::{Dataset, read_maybe_gz};
use crate::error::DataError;

/// A text corpus as character tokens: the sorted set of distinct characters is the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCorpus {
    /// Distinct characters, sorted.
    pub vocab: Vec<char>,
    /// The text as indices into `vocab`.
    pub tokens: Vec<u32>,
}

impl TextCorpus {
    /// Tokenises UTF-8 text.
    pub fn from_text(path: &Path, bytes: &[u8]) -> Result<TextCorpus, DataError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::Corrupt {
            path: path.to_path_buf(),
            offset: e.valid_up_to() as u64,
            reason: "not UTF-8 text".into(),
        })?;
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        let tokens = text
            .chars()
            .map(|c| vocab.binary_search(&c).unwrap_or(0) as u32)
            .collect();
        Ok(TextCorpus { vocab, tokens })
    }

    /// Reads a text file (gzip or plain).
    pub fn load(path: &Path) -> Result<TextCorpus, DataError> {
        TextCorpus::from_text(path, &read_maybe_gz(path)?)
    }

    /// The text again.
    pub fn text(&self) -> String {
        self.tokens
            .iter()
            .map(|&t| self.vocab[t as usize])
            .collect()
    }

    /// The content id: the blake3 hash of its canonical dataset blob (ADR 0008).
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        super::blob::write_text(&self.text(), &mut h).expect("hashing cannot fail");
        *h.finalize().as_bytes()
    }

    /// Next-character prediction samples for positions `range`: each sample is the one-hot
    /// encoding of `context` characters (an image of `vocab` channels, 1 × `context`) and its
    /// label is the character that follows. Needs a vocabulary of at most 256 characters.
    pub fn windows(&self, context: usize, range: Range<usize>) -> Result<Dataset, DataError> {
        let v = self.vocab.len();
        if !(2..=256).contains(&v) {
            return Err(DataError::Invalid(format!(
                "a vocabulary of {v} characters (2 to 256 supported)"
            )));
        }
        let last = self.tokens.len().saturating_sub(context);
        if context == 0 || range.start > range.end || range.end > last {
            return Err(DataError::Invalid(format!(
                "windows {}..{} of context {context} do not fit a corpus of {} tokens",
                range.start,
                range.end,
                self.tokens.len()
            )));
        }
        let n = range.len();
        let mut pixels = vec![0u8; n * v * context];
        let mut labels = Vec::with_capacity(n);
        for (k, p) in range.enumerate() {
            let sample = &mut pixels[k * v * context..(k + 1) * v * context];
            for t in 0..context {
                // channel-major: [vocab][1][context]
                sample[self.tokens[p + t] as usize * context + t] = 1;
            }
            labels.push(self.tokens[p + context] as u16);
        }
        let shape = Shape::Image {
            c: v as u32,
            h: 1,
            w: context as u32,
        };
        let name = format!("text-windows-{context}");
        Dataset::of_bytes(&name, shape, v as u32, 1, pixels, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Values;

    #[test]
    fn text_windows_one_hot_the_context_and_label_the_next_char() {
        let c = TextCorpus::from_text(Path::new("t"), b"abcab").expect("text");
        assert_eq!(c.vocab, vec!['a', 'b', 'c']);
        assert_eq!(c.text(), "abcab");
        let w = c.windows(2, 0..3).expect("fits");
        assert_eq!(w.len(), 3);
        assert_eq!(w.labels, vec![2, 0, 1]); // "ab"->c, "bc"->a, "ca"->b
        // sample 0: 'a' at t=0 (channel 0), 'b' at t=1 (channel 1)
        let Values::U8 { data, .. } = &w.values else {
            panic!("one-hot bytes");
        };
        assert_eq!(&data[..6], &[1, 0, 0, 1, 0, 0]);
        assert!(c.windows(2, 0..4).is_err());
    }

    #[test]
    fn text_that_is_not_utf8_names_the_offset() {
        let e = TextCorpus::from_text(Path::new("t.txt"), b"ab\xffc").expect_err("not UTF-8");
        assert!(e.to_string().contains("t.txt at offset 2"), "{e}");
    }
}
