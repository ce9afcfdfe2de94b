//! Verified streaming of blobs (ADR 0008): a blob's id is the plain blake3 hash of its bytes,
//! and blake3 is a Merkle tree, so a blob of several parts can be checked part by part.
//!
//! A blob is cut into parts of [`PART`] bytes (256 blake3 chunks; the last part may be
//! shorter). The *outboard* is the chaining value of every part, in order: 32 bytes per 256 KiB,
//! 128 KiB for a GiB. A fetcher gets the outboard first and checks that it merges into the root
//! hash, which is the blob id; from then on every part is checked against its own chaining
//! value as it arrives, from whichever provider sent it, and written to its place on disk. A
//! blob of one part has no outboard: its one part is checked against the id directly.
//!
//! The parts are exactly subtrees of blake3's tree (its left subtree is the largest power of two
//! of chunks below the whole, so with parts of a power-of-two size every split falls between
//! parts), which is what lets [`root`] rebuild the id with `blake3::hazmat`.

use std::io::Read;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use hivemesh_protocol::id::BlobId;

/// Bytes per part (a power of two, at least blake3's 1 KiB chunk).
pub const PART: u64 = 256 * 1024;

/// A part's chaining value.
pub type Cv = ChainingValue;

/// How many parts a blob of `total` bytes has (at least one, also when empty).
pub fn parts(total: u64) -> u64 {
    total.div_ceil(PART).max(1)
}

/// Part `index`'s byte range in a blob of `total` bytes.
pub fn part_range(total: u64, index: u64) -> std::ops::Range<u64> {
    let start = (index * PART).min(total);
    start..(start + PART).min(total)
}

/// The chaining value of part `index` (its bytes `data`).
pub fn part_cv(index: u64, data: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * PART);
    h.update(data);
    h.finalize_non_root()
}

/// The root hash over two or more parts' chaining values (`None` for fewer: a one-part blob's
/// id is the hash of its bytes).
pub fn root(cvs: &[Cv]) -> Option<BlobId> {
    if cvs.len() < 2 {
        return None;
    }
    let k = left_len(cvs.len());
    let (l, r) = (subtree(&cvs[..k]), subtree(&cvs[k..]));
    Some(BlobId(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()))
}

/// The largest power of two below `n` (n ≥ 2): how many parts blake3's left subtree holds.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree(cvs: &[Cv]) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let k = left_len(cvs.len());
    merge_subtrees_non_root(&subtree(&cvs[..k]), &subtree(&cvs[k..]), Mode::Hash)
}

/// Whether `cvs` is the outboard of blob `id` of `total` bytes.
pub fn outboard_matches(id: &BlobId, total: u64, cvs: &[Cv]) -> bool {
    let n = parts(total);
    if n == 1 {
        return cvs.is_empty();
    }
    cvs.len() as u64 == n && root(cvs).as_ref() == Some(id)
}

/// Whether `data` is part `index` of blob `id` of `total` bytes with outboard `cvs` (already
/// checked with [`outboard_matches`]).
pub fn part_matches(id: &BlobId, total: u64, cvs: &[Cv], index: u64, data: &[u8]) -> bool {
    let range = part_range(total, index);
    if index >= parts(total) || data.len() as u64 != range.end - range.start {
        return false;
    }
    if parts(total) == 1 {
        return BlobId::of_bytes(data) == *id;
    }
    cvs.get(index as usize) == Some(&part_cv(index, data))
}

/// Computes a blob's id and outboard while its bytes stream past (an upload, a file).
#[derive(Debug, Default)]
pub struct Outboarder {
    /// Bytes of the part being filled.
    part: Vec<u8>,
    /// Chaining values of the full parts so far.
    cvs: Vec<Cv>,
    /// The plain hash of everything (the id when the blob has one part).
    whole: blake3::Hasher,
    /// Bytes seen.
    len: u64,
}

impl Outboarder {
    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        // The plain hash matters only while the blob fits one part.
        if self.len <= PART {
            self.whole.update(data);
        }
        while !data.is_empty() {
            if self.part.len() as u64 == PART {
                self.flush();
            }
            let take = (PART as usize - self.part.len()).min(data.len());
            self.part.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    fn flush(&mut self) {
        let cv = part_cv(self.cvs.len() as u64, &self.part);
        self.cvs.push(cv);
        self.part.clear();
    }

    /// The blob's size so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id, the size and the outboard (empty for a one-part blob).
    pub fn finish(mut self) -> (BlobId, u64, Vec<Cv>) {
        if self.len <= PART {
            return (
                BlobId(*self.whole.finalize().as_bytes()),
                self.len,
                Vec::new(),
            );
        }
        if !self.part.is_empty() {
            self.flush();
        }
        let id = root(&self.cvs).expect("two or more parts");
        (id, self.len, self.cvs)
    }
}

/// The id, size and outboard of everything `r` yields.
pub fn outboard_of(mut r: impl Read) -> std::io::Result<(BlobId, u64, Vec<Cv>)> {
    let mut o = Outboarder::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(o.finish());
        }
        o.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: u64) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_outboard_rebuilds_the_plain_blake3_id_at_every_size() {
        let p = PART;
        for n in [
            0,
            1,
            1024,
            p - 1,
            p,
            p + 1,
            2 * p,
            2 * p + 1,
            3 * p,
            3 * p + 1000,
            4 * p,
            5 * p + 17,
            8 * p,
            9 * p - 1,
        ] {
            let data = bytes(n);
            let id = BlobId::of_bytes(&data);
            let (got, len, cvs) = outboard_of(&data[..]).expect("reads");
            assert_eq!((got, len), (id, n), "{n} bytes");
            assert!(outboard_matches(&id, n, &cvs), "{n} bytes");
            assert_eq!(cvs.len() as u64, if n <= p { 0 } else { parts(n) });
            for i in 0..parts(n) {
                let r = part_range(n, i);
                let part = &data[r.start as usize..r.end as usize];
                assert!(part_matches(&id, n, &cvs, i, part), "part {i} of {n}");
                if !part.is_empty() {
                    let mut bad = part.to_vec();
                    bad[0] ^= 1;
                    assert!(!part_matches(&id, n, &cvs, i, &bad), "bad part {i} of {n}");
                }
            }
        }
    }

    #[test]
    fn a_wrong_outboard_size_or_index_is_refused() {
        let data = bytes(3 * PART);
        let id = BlobId::of_bytes(&data);
        let (_, n, mut cvs) = outboard_of(&data[..]).expect("reads");
        assert!(!outboard_matches(&id, n + 1, &cvs), "another size");
        assert!(!part_matches(&id, n, &cvs, 3, &[]), "no part 3");
        assert!(!part_matches(&id, n, &cvs, 0, &data[..10]), "a short part");
        cvs.swap(0, 1);
        assert!(!outboard_matches(&id, n, &cvs), "parts swapped");
        assert!(!outboard_matches(&id, n, &cvs[..2]), "a part missing");
        // Feeding in odd pieces gives the same as one buffer.
        let mut o = Outboarder::default();
        for piece in data.chunks(77_777) {
            o.update(piece);
        }
        assert_eq!(o.finish().0, id);
    }
}
