//! Fetching a content-addressed blob from peers, as a small sans-IO state machine.
//!
//! The event loop finds candidate holders (Kademlia provider records first, then the peers it
//! is connected to), and this machine decides whom to ask for which chunk next and checks
//! every answer: chunks must arrive in order, the announced size must not change or exceed
//! [`MAX_BLOB_LEN`], and the assembled bytes must hash to the blob's id. A peer that breaks a
//! rule is dropped (and the caller penalises it); the fetch goes on with the next candidate,
//! from the start, so bytes from a liar are never mixed with anyone else's.

use std::collections::{HashSet, VecDeque};

use hivemesh_protocol::id::BlobId;
use libp2p_identity::PeerId;

/// The largest blob a node fetches (weights, teachers, shards): the whole blob is held in
/// memory while it is assembled and checked.
pub const MAX_BLOB_LEN: u64 = 256 * 1024 * 1024;
/// Blobs fetched at once (more wait for a free slot by failing fast; callers retry later).
pub const MAX_FETCHES: usize = 8;

/// What the event loop should do next for a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask `peer` for the chunk starting at `offset`.
    Request {
        /// Whom to ask.
        peer: PeerId,
        /// The first byte wanted.
        offset: u64,
    },
    /// Nothing to do until a provider search answers.
    Wait,
    /// The blob arrived whole and hashes to its id.
    Done(Vec<u8>),
    /// Every candidate was tried: no peer gave the blob.
    Failed(String),
}

/// The peer being asked answered against the rules (the caller penalises it; the fetch
/// moves on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad blob chunk: {reason}")]
pub struct BadChunk {
    /// What was wrong.
    pub reason: String,
}

/// One blob being fetched.
#[derive(Debug)]
pub struct BlobFetch {
    id: BlobId,
    candidates: VecDeque<PeerId>,
    tried: HashSet<PeerId>,
    current: Option<PeerId>,
    buf: Vec<u8>,
    total: Option<u64>,
    searching: bool,
    failures: Vec<String>,
}

impl BlobFetch {
    /// A fetch of `id`; `searching` says whether a provider search is under way.
    pub fn new(id: BlobId, searching: bool) -> BlobFetch {
        BlobFetch {
            id,
            candidates: VecDeque::new(),
            tried: HashSet::new(),
            current: None,
            buf: Vec::new(),
            total: None,
            searching,
            failures: Vec::new(),
        }
    }

    /// The blob.
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// The peer being asked now.
    pub fn current(&self) -> Option<PeerId> {
        self.current
    }

    /// Adds candidate holders: `preferred` ones (provider records) are asked before the ones
    /// already queued, others after. Peers tried already are not asked again.
    pub fn add_candidates(&mut self, peers: impl IntoIterator<Item = PeerId>, preferred: bool) {
        for p in peers {
            if self.tried.contains(&p) || self.current == Some(p) || self.candidates.contains(&p) {
                continue;
            }
            if preferred {
                self.candidates.push_front(p);
            } else {
                self.candidates.push_back(p);
            }
        }
    }

    /// The provider search ended (found, finished or timed out).
    pub fn search_done(&mut self) {
        self.searching = false;
    }

    /// What to do now: keep asking the current peer, ask the next candidate, wait for the
    /// provider search, or give up.
    pub fn next_step(&mut self) -> Step {
        if let Some(peer) = self.current {
            return Step::Request {
                peer,
                offset: self.buf.len() as u64,
            };
        }
        match self.candidates.pop_front() {
            Some(peer) => {
                self.tried.insert(peer);
                self.current = Some(peer);
                self.buf.clear();
                self.total = None;
                Step::Request { peer, offset: 0 }
            }
            None if self.searching => Step::Wait,
            None => Step::Failed(if self.failures.is_empty() {
                format!("no peer holds blob {}", self.id)
            } else {
                format!(
                    "no peer gave blob {} ({})",
                    self.id,
                    self.failures.join("; ")
                )
            }),
        }
    }

    /// `peer` does not have the blob, or the request failed: try the next candidate.
    pub fn on_missing(&mut self, peer: PeerId, why: &str) -> Step {
        if self.current == Some(peer) {
            self.failures.push(format!("{peer}: {why}"));
            self.current = None;
        }
        self.next_step()
    }

    /// A chunk from `peer`. `Ok` with the next step, or the rule the peer broke (the fetch
    /// has dropped it; call [`BlobFetch::next_step`] to go on).
    pub fn on_chunk(
        &mut self,
        peer: PeerId,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Step, BadChunk> {
        if self.current != Some(peer) {
            // A late answer from a peer already given up on.
            return Ok(self.next_step());
        }
        let have = self.buf.len() as u64;
        let broken = if total > MAX_BLOB_LEN {
            Some(format!("size {total} is over the limit of {MAX_BLOB_LEN}"))
        } else if self.total.is_some_and(|t| t != total) {
            Some(format!(
                "size changed from {} to {total}",
                self.total.unwrap_or(0)
            ))
        } else if offset != have {
            Some(format!("chunk at {offset}, expected {have}"))
        } else if have + data.len() as u64 > total {
            Some(format!("chunk runs past the size {total}"))
        } else if data.is_empty() && have < total {
            Some("empty chunk before the end".into())
        } else {
            None
        };
        if let Some(reason) = broken {
            return Err(self.drop_current(peer, reason));
        }
        self.total = Some(total);
        self.buf.extend_from_slice(&data);
        if (self.buf.len() as u64) < total {
            return Ok(Step::Request {
                peer,
                offset: self.buf.len() as u64,
            });
        }
        if BlobId::of_bytes(&self.buf) != self.id {
            return Err(self.drop_current(peer, "bytes do not hash to the blob id".into()));
        }
        self.current = None;
        Ok(Step::Done(std::mem::take(&mut self.buf)))
    }

    fn drop_current(&mut self, peer: PeerId, reason: String) -> BadChunk {
        self.current = None;
        self.buf = Vec::new();
        self.total = None;
        self.failures.push(format!("{peer}: {reason}"));
        BadChunk { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn assembles_chunks_in_order_and_checks_the_hash() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let id = BlobId::of_bytes(&bytes);
        let p = peer();
        let mut f = BlobFetch::new(id, false);
        f.add_candidates([p], true);
        assert_eq!(f.next_step(), Step::Request { peer: p, offset: 0 });
        let step = f.on_chunk(p, 1000, 0, bytes[..400].to_vec()).expect("ok");
        assert_eq!(
            step,
            Step::Request {
                peer: p,
                offset: 400
            }
        );
        let step = f.on_chunk(p, 1000, 400, bytes[400..].to_vec()).expect("ok");
        assert_eq!(step, Step::Done(bytes));
    }

    #[test]
    fn a_liar_is_dropped_and_the_next_holder_starts_over() {
        let bytes = b"the real teacher weights".to_vec();
        let id = BlobId::of_bytes(&bytes);
        let (liar, honest) = (peer(), peer());
        let mut f = BlobFetch::new(id, false);
        f.add_candidates([honest], false);
        f.add_candidates([liar], true);
        assert_eq!(
            f.next_step(),
            Step::Request {
                peer: liar,
                offset: 0
            },
            "provider records first"
        );
        let mut forged = bytes.clone();
        forged[0] ^= 1;
        let bad = f
            .on_chunk(liar, forged.len() as u64, 0, forged)
            .expect_err("hash mismatch");
        assert!(bad.reason.contains("hash"), "{bad}");
        assert_eq!(
            f.next_step(),
            Step::Request {
                peer: honest,
                offset: 0
            }
        );
        let done = f
            .on_chunk(honest, bytes.len() as u64, 0, bytes.clone())
            .expect("ok");
        assert_eq!(done, Step::Done(bytes));
    }

    #[test]
    fn broken_chunks_are_refused() {
        let id = BlobId::of_bytes(b"0123456789");
        let cases: Vec<(u64, u64, Vec<u8>, &str)> = vec![
            (MAX_BLOB_LEN + 1, 0, vec![0], "over the limit"),
            (10, 3, vec![0; 3], "expected 0"),
            (4, 0, vec![0; 5], "runs past"),
            (10, 0, vec![], "empty chunk"),
        ];
        for (total, offset, data, what) in cases {
            let p = peer();
            let mut f = BlobFetch::new(id, false);
            f.add_candidates([p], true);
            f.next_step();
            let e = f.on_chunk(p, total, offset, data).expect_err(what);
            assert!(e.reason.contains(what), "{what}: {e}");
            assert!(
                matches!(f.next_step(), Step::Failed(_)),
                "{what}: nobody left"
            );
        }
        // The size may not change between chunks.
        let p = peer();
        let mut f = BlobFetch::new(id, false);
        f.add_candidates([p], true);
        f.next_step();
        f.on_chunk(p, 10, 0, b"01234".to_vec()).expect("ok");
        let e = f
            .on_chunk(p, 11, 5, b"56789".to_vec())
            .expect_err("resized");
        assert!(e.reason.contains("size changed"), "{e}");
    }

    #[test]
    fn waits_for_the_search_then_fails_with_the_reasons() {
        let id = BlobId::of_bytes(b"x");
        let p = peer();
        let mut f = BlobFetch::new(id, true);
        assert_eq!(f.next_step(), Step::Wait);
        f.add_candidates([p], true);
        assert_eq!(f.next_step(), Step::Request { peer: p, offset: 0 });
        assert_eq!(f.on_missing(p, "not found"), Step::Wait);
        f.add_candidates([p], true);
        assert_eq!(f.next_step(), Step::Wait, "a peer is asked once");
        f.search_done();
        match f.next_step() {
            Step::Failed(why) => assert!(why.contains("not found"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn late_answers_from_dropped_peers_are_ignored() {
        let bytes = b"abc".to_vec();
        let id = BlobId::of_bytes(&bytes);
        let (a, b) = (peer(), peer());
        let mut f = BlobFetch::new(id, false);
        f.add_candidates([a, b], false);
        f.next_step();
        f.on_missing(a, "timeout");
        assert_eq!(
            f.on_chunk(a, 3, 0, bytes.clone()).expect("ignored"),
            Step::Request { peer: b, offset: 0 }
        );
        assert_eq!(
            f.on_chunk(b, 3, 0, bytes.clone()).expect("ok"),
            Step::Done(bytes)
        );
    }
}
