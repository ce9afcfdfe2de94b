//! A byte-pair encoding learnt from a corpus: merges of adjacent tokens, most frequent first,
//! over the corpus's character tokens (ties broken by the smaller pair, so the same text always
//! gives the same merges).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The most merges a BPE may learn (a file or a command line cannot ask for more).
pub const MAX_MERGES: usize = 1 << 16;

/// Merges learnt over a base vocabulary of `base` tokens: merge `i` makes token `base + i` from
/// its pair.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bpe {
    /// The base vocabulary's size (characters).
    pub base: u32,
    /// The pairs merged, in order.
    pub merges: Vec<(u32, u32)>,
}

impl Bpe {
    /// Learns up to `merges` merges (fewer if no pair occurs twice) from `tokens`, a sequence
    /// over `base` base tokens.
    pub fn learn(tokens: &[u32], base: u32, merges: usize) -> Bpe {
        let mut seq = tokens.to_vec();
        let mut out = Bpe {
            base,
            merges: Vec::new(),
        };
        for _ in 0..merges.min(MAX_MERGES) {
            let mut counts: HashMap<(u32, u32), u32> = HashMap::new();
            for w in seq.windows(2) {
                *counts.entry((w[0], w[1])).or_default() += 1;
            }
            // Most frequent; on a tie, the smallest pair (HashMap order must not decide).
            let best = counts
                .into_iter()
                .filter(|(_, n)| *n >= 2)
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some((pair, _)) = best else {
                break;
            };
            let id = base + out.merges.len() as u32;
            seq = merge(&seq, pair, id);
            out.merges.push(pair);
        }
        out
    }

    /// The vocabulary's size: the base tokens and one per merge.
    pub fn vocab(&self) -> usize {
        self.base as usize + self.merges.len()
    }

    /// `tokens` (base tokens) encoded: each merge applied in the order learnt.
    pub fn encode(&self, tokens: &[u32]) -> Vec<u32> {
        let mut seq = tokens.to_vec();
        for (i, pair) in self.merges.iter().enumerate() {
            seq = merge(&seq, *pair, self.base + i as u32);
        }
        seq
    }

    /// Base tokens of `ids` (ids at or above the vocabulary are dropped).
    pub fn decode(&self, ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        for &id in ids {
            self.expand(id, &mut out);
        }
        out
    }

    /// Appends the base tokens of `id` (with an explicit stack: a file's chain of 65,536
    /// merges must not overflow the thread's stack).
    fn expand(&self, id: u32, out: &mut Vec<u32>) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if id < self.base {
                out.push(id);
            } else if let Some(&(a, b)) = self.merges.get((id - self.base) as usize) {
                // A merge only names earlier tokens (`is_valid`), so this ends.
                stack.push(b);
                stack.push(a);
            }
        }
    }

    /// Whether every merge names earlier tokens only (a file that does not is refused).
    pub fn is_valid(&self) -> bool {
        self.merges.len() <= MAX_MERGES
            && self
                .merges
                .iter()
                .enumerate()
                .all(|(i, (a, b))| *a < self.base + i as u32 && *b < self.base + i as u32)
    }
}

/// `seq` with each non-overlapping occurrence of `pair` (left to right) replaced by `id`.
fn merge(seq: &[u32], pair: (u32, u32), id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(seq.len());
    let mut i = 0;
    while i < seq.len() {
        if i + 1 < seq.len() && (seq[i], seq[i + 1]) == pair {
            out.push(id);
            i += 2;
        } else {
            out.push(seq[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_learnt_most_frequent_first_and_round_trip() {
        // "abab c abab": (a,b) ×4 first, then (ab,ab) ×2.
        let t: Vec<u32> = "ababcabab".bytes().map(|b| u32::from(b - b'a')).collect();
        let bpe = Bpe::learn(&t, 3, 10);
        assert_eq!(bpe.merges, vec![(0, 1), (3, 3)]);
        assert_eq!(bpe.vocab(), 5);
        let e = bpe.encode(&t);
        assert_eq!(e, vec![4, 2, 4]);
        assert_eq!(bpe.decode(&e), t);
        assert!(bpe.is_valid());
        // The same text, the same merges; a pair named before it exists is refused.
        assert_eq!(Bpe::learn(&t, 3, 10), bpe);
        let bad = Bpe {
            base: 3,
            merges: vec![(0, 4)],
        };
        assert!(!bad.is_valid());
    }

    #[test]
    fn a_long_chain_of_merges_decodes_without_recursion() {
        // Each merge appends token 0 to the previous one: the last token is 65,537 zeros.
        let mut merges = vec![(0, 0)];
        merges.extend((0..MAX_MERGES as u32 - 1).map(|i| (1 + i, 0)));
        let bpe = Bpe { base: 1, merges };
        assert!(bpe.is_valid());
        let out = bpe.decode(&[MAX_MERGES as u32]);
        assert_eq!(out.len(), MAX_MERGES + 1);
        assert!(out.iter().all(|&t| t == 0));
    }

    #[test]
    fn ties_go_to_the_smaller_pair() {
        // (0,1) and (2,3) occur twice each: (0,1) is merged first.
        let bpe = Bpe::learn(&[0, 1, 2, 3, 0, 1, 2, 3], 4, 1);
        assert_eq!(bpe.merges, vec![(0, 1)]);
    }
}
