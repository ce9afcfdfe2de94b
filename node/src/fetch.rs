//! Fetching a content-addressed blob from peers, as a small sans-IO state machine (ADR 0008).
//!
//! The event loop finds candidate holders (Kademlia provider records first, then the peers it
//! is connected to); this machine decides whom to ask for what and checks every answer:
//!
//! 1. **Outboard.** One candidate, the *source*, is asked for the blob's size and its outboard
//!    (a chaining value per 256 KiB part, in pages). The whole outboard must merge into the
//!    blob id, or the source is dropped and the next candidate starts over. A size over the
//!    fetch's limit is refused at the first answer, before anything is stored.
//! 2. **Parts.** Other candidates are asked whether they hold the blob (a page of none); every
//!    holder of the right size becomes a provider. Missing parts are spread over the providers,
//!    a few in flight each, and every part is checked against its chaining value as it
//!    arrives: a part that does not verify drops its provider (the caller penalises it) and
//!    goes back in the queue; nothing unverified is ever written.
//!
//! The caller writes verified parts to disk ([`crate::store::Partial`]); after a restart it
//! hands the outboard and the parts already on disk to [`BlobFetch::resume`], and only the rest
//! is asked for.

use std::collections::{HashMap, HashSet, VecDeque};

use hivemesh_protocol::id::BlobId;
use libp2p_identity::PeerId;

use crate::blobtree::{self, Cv};

/// The largest blob a node fetches (the largest dataset a campaign may name, 64 GiB).
pub const MAX_BLOB_LEN: u64 = 64 << 30;
/// Blobs fetched at once (more wait for a free slot by failing fast; callers retry later).
pub const MAX_FETCHES: usize = 8;
/// Chaining values asked for per outboard page.
pub const PAGE: u32 = 8192;
/// Parts in flight per provider.
pub const PER_PROVIDER: usize = 16;
/// Parts in flight per fetch.
pub const IN_FLIGHT: usize = 32;
/// Providers a fetch uses at once (asked whether they hold it, then for parts).
pub const MAX_PROVIDERS: usize = 8;

/// What to ask a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The size and up to `max` outboard values from part `from` (`max` 0: only the size).
    Hashes {
        /// The first part.
        from: u64,
        /// How many values.
        max: u32,
    },
    /// One part.
    Part(u64),
}

/// A request the event loop should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Whom to ask.
    pub peer: PeerId,
    /// What for.
    pub want: Want,
}

/// Where a fetch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for answers or for the provider search.
    Going,
    /// Every part arrived and verified.
    Done,
    /// No candidate is left: what each said.
    Failed(String),
}

/// A peer answered against the rules (the caller penalises it; the fetch moves on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad blob answer: {reason}")]
pub struct BadChunk {
    /// What was wrong.
    pub reason: String,
}

/// The outboard being gathered from the source.
#[derive(Debug)]
struct Source {
    /// Who.
    peer: PeerId,
    /// The size it gave.
    total: Option<u64>,
    /// The values so far.
    cvs: Vec<Cv>,
    /// Whether a page request is in flight.
    asked: bool,
}

/// One blob being fetched.
#[derive(Debug)]
pub struct BlobFetch {
    /// The blob.
    id: BlobId,
    /// The most bytes it may have.
    limit: u64,
    /// Peers not asked yet.
    candidates: VecDeque<PeerId>,
    /// Peers asked already (never asked again).
    tried: HashSet<PeerId>,
    /// The outboard's source while there is no outboard.
    source: Option<Source>,
    /// The size and verified outboard.
    outboard: Option<(u64, Vec<Cv>)>,
    /// Peers asked whether they hold it.
    probing: HashSet<PeerId>,
    /// Holders of the right size.
    providers: Vec<PeerId>,
    /// Which parts are done.
    done: Vec<bool>,
    /// Parts missing and not in flight.
    queue: VecDeque<u64>,
    /// Parts in flight, to whom.
    in_flight: HashMap<u64, PeerId>,
    /// Whether a provider search is under way.
    searching: bool,
    /// What dropped peers said.
    failures: Vec<String>,
}

impl BlobFetch {
    /// A fetch of `id` of at most `limit` bytes; `searching` says whether a provider search is
    /// under way.
    pub fn new(id: BlobId, limit: u64, searching: bool) -> BlobFetch {
        BlobFetch {
            id,
            limit: limit.min(MAX_BLOB_LEN),
            candidates: VecDeque::new(),
            tried: HashSet::new(),
            source: None,
            outboard: None,
            probing: HashSet::new(),
            providers: Vec::new(),
            done: Vec::new(),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            searching,
            failures: Vec::new(),
        }
    }

    /// The blob.
    pub fn id(&self) -> BlobId {
        self.id
    }

    /// The size, once known from a verified outboard.
    pub fn total(&self) -> Option<u64> {
        self.outboard.as_ref().map(|(t, _)| *t)
    }

    /// The verified outboard (empty before it is known, and for a one-part blob).
    pub fn outboard(&self) -> &[Cv] {
        self.outboard.as_ref().map_or(&[], |(_, c)| c.as_slice())
    }

    /// Bytes verified so far.
    pub fn have(&self) -> u64 {
        let Some(total) = self.total() else {
            return 0;
        };
        (0..self.done.len() as u64)
            .filter(|&i| self.done[i as usize])
            .map(|i| {
                let r = blobtree::part_range(total, i);
                r.end - r.start
            })
            .sum()
    }

    /// Adds candidate holders: `preferred` ones (provider records) are asked before the ones
    /// already queued, others after. Peers asked already are not asked again.
    pub fn add_candidates(&mut self, peers: impl IntoIterator<Item = PeerId>, preferred: bool) {
        for p in peers {
            if self.tried.contains(&p) || self.candidates.contains(&p) {
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

    /// Starts from an outboard kept on disk (already checked with
    /// [`blobtree::outboard_matches`]) and the parts already written.
    pub fn resume(&mut self, total: u64, cvs: Vec<Cv>, done: &[bool]) {
        self.outboard = Some((total, cvs));
        self.done = done.to_vec();
        self.queue = (0..done.len() as u64)
            .filter(|&i| !done[i as usize])
            .collect();
    }

    /// Where the fetch stands.
    pub fn state(&self) -> State {
        if self.outboard.is_some() && self.queue.is_empty() && self.in_flight.is_empty() {
            return State::Done;
        }
        let working = self.source.is_some()
            || !self.probing.is_empty()
            || !self.providers.is_empty()
            || !self.candidates.is_empty()
            || self.searching;
        if working {
            return State::Going;
        }
        State::Failed(if self.failures.is_empty() {
            format!("no peer holds blob {}", self.id)
        } else {
            format!(
                "no peer gave blob {} ({})",
                self.id,
                self.failures.join("; ")
            )
        })
    }

    /// The requests to send now.
    pub fn poll(&mut self) -> Vec<Ask> {
        let mut out = Vec::new();
        if self.outboard.is_none() {
            self.poll_source(&mut out);
            return out;
        }
        while self.providers.len() + self.probing.len() < MAX_PROVIDERS && !self.queue.is_empty() {
            let Some(peer) = self.candidates.pop_front() else {
                break;
            };
            self.tried.insert(peer);
            self.probing.insert(peer);
            out.push(Ask {
                peer,
                want: Want::Hashes { from: 0, max: 0 },
            });
        }
        self.assign_parts(&mut out);
        out
    }

    fn poll_source(&mut self, out: &mut Vec<Ask>) {
        if self.source.is_none() {
            let Some(peer) = self.candidates.pop_front() else {
                return;
            };
            self.tried.insert(peer);
            self.source = Some(Source {
                peer,
                total: None,
                cvs: Vec::new(),
                asked: false,
            });
        }
        if let Some(s) = self.source.as_mut().filter(|s| !s.asked) {
            s.asked = true;
            out.push(Ask {
                peer: s.peer,
                want: Want::Hashes {
                    from: s.cvs.len() as u64,
                    max: PAGE,
                },
            });
        }
    }

    fn assign_parts(&mut self, out: &mut Vec<Ask>) {
        let mut load: HashMap<PeerId, usize> = HashMap::new();
        for p in self.in_flight.values() {
            *load.entry(*p).or_default() += 1;
        }
        let mut k = 0;
        while self.in_flight.len() < IN_FLIGHT && !self.queue.is_empty() {
            // The least loaded provider below its limit, in turn.
            let free = (0..self.providers.len())
                .map(|j| self.providers[(k + j) % self.providers.len()])
                .find(|p| load.get(p).copied().unwrap_or(0) < PER_PROVIDER);
            let Some(peer) = free else {
                break;
            };
            k += 1;
            let index = self.queue.pop_front().expect("not empty");
            self.in_flight.insert(index, peer);
            *load.entry(peer).or_default() += 1;
            out.push(Ask {
                peer,
                want: Want::Part(index),
            });
        }
    }

    /// A size and outboard page from `peer`. `Ok(true)` when the outboard just completed and
    /// verified (the caller prepares the file and may [`BlobFetch::resume`] from what is on
    /// disk before polling again).
    pub fn on_hashes(
        &mut self,
        peer: PeerId,
        total: u64,
        from: u64,
        cvs: Vec<Cv>,
    ) -> Result<bool, BadChunk> {
        if total > self.limit {
            return Err(self.drop_peer(
                peer,
                format!("size {total} is over this fetch's limit of {}", self.limit),
            ));
        }
        if self.probing.remove(&peer) {
            return match self.total() {
                Some(t) if t == total => {
                    self.providers.push(peer);
                    Ok(false)
                }
                _ => Err(self.drop_peer(peer, format!("gave size {total}"))),
            };
        }
        let Some(s) = self.source.as_mut().filter(|s| s.peer == peer && s.asked) else {
            return Ok(false); // late, or not asked
        };
        s.asked = false;
        let parts = blobtree::parts(total);
        let wanted = if parts == 1 { 0 } else { parts };
        let broken = if s.total.is_some_and(|t| t != total) {
            Some(format!("size changed to {total}"))
        } else if from != s.cvs.len() as u64 {
            Some(format!("page from {from}, asked from {}", s.cvs.len()))
        } else if cvs.len() as u64 > u64::from(PAGE) || from + cvs.len() as u64 > wanted {
            Some(format!("{} values past the {wanted} parts", cvs.len()))
        } else if cvs.is_empty() && from < wanted {
            Some("an empty page before the end".into())
        } else {
            None
        };
        if let Some(reason) = broken {
            return Err(self.drop_peer(peer, reason));
        }
        s.total = Some(total);
        s.cvs.extend(cvs);
        if (s.cvs.len() as u64) < wanted {
            return Ok(false);
        }
        let Some(s) = self.source.take() else {
            return Ok(false);
        };
        if !blobtree::outboard_matches(&self.id, total, &s.cvs) {
            return Err(self.drop_peer(peer, "the outboard does not make the blob id".into()));
        }
        let n = parts as usize;
        self.outboard = Some((total, s.cvs));
        self.done = vec![false; n];
        self.queue = (0..parts).collect();
        self.providers.push(peer);
        Ok(true)
    }

    /// Part `index` from `peer`: `Ok(true)` when it verified (write it), `Ok(false)` for an
    /// answer not asked for (late, or from a peer dropped already).
    pub fn on_part(&mut self, peer: PeerId, index: u64, data: &[u8]) -> Result<bool, BadChunk> {
        if self.in_flight.get(&index) != Some(&peer) {
            return Ok(false);
        }
        let Some((total, cvs)) = &self.outboard else {
            return Ok(false);
        };
        if !blobtree::part_matches(&self.id, *total, cvs, index, data) {
            return Err(self.drop_peer(peer, format!("part {index} does not verify")));
        }
        self.in_flight.remove(&index);
        self.done[index as usize] = true;
        Ok(true)
    }

    /// Writing a verified part failed here (a disk error): it goes back in the queue.
    pub fn unwritten(&mut self, index: u64) {
        if let Some(d) = self.done.get_mut(index as usize) {
            *d = false;
            self.queue.push_back(index);
        }
    }

    /// `peer` does not have the blob, or a request to it failed: it is not asked again.
    pub fn on_missing(&mut self, peer: PeerId, why: &str) {
        self.drop_peer(peer, why.to_string());
    }

    /// Forgets `peer` as source, prober and provider; its parts in flight go back in the queue.
    fn drop_peer(&mut self, peer: PeerId, reason: String) -> BadChunk {
        if self.source.as_ref().is_some_and(|s| s.peer == peer) {
            self.source = None;
        }
        self.probing.remove(&peer);
        self.providers.retain(|p| *p != peer);
        let back: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, p)| **p == peer)
            .map(|(i, _)| *i)
            .collect();
        for i in back {
            self.in_flight.remove(&i);
            self.queue.push_front(i);
        }
        self.failures.push(format!("{peer}: {reason}"));
        if self.failures.len() > 16 {
            self.failures.remove(0);
        }
        BadChunk { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobtree::{PART, outboard_of, part_range};

    fn peer() -> PeerId {
        PeerId::random()
    }

    fn blob(n: u64) -> (Vec<u8>, BlobId, Vec<Cv>) {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
        let (id, _, cvs) = outboard_of(&data[..]).expect("outboard");
        (data, id, cvs)
    }

    fn part(data: &[u8], i: u64) -> Vec<u8> {
        let r = part_range(data.len() as u64, i);
        data[r.start as usize..r.end as usize].to_vec()
    }

    /// Answers every request honestly from `data` until nothing is asked; returns the parts
    /// each peer served.
    fn serve(f: &mut BlobFetch, data: &[u8], cvs: &[Cv]) -> HashMap<PeerId, usize> {
        let mut served = HashMap::new();
        let mut asks = f.poll();
        while !asks.is_empty() {
            for a in asks {
                match a.want {
                    Want::Hashes { from, max } => {
                        let to = (from as usize + max as usize).min(cvs.len());
                        let page = cvs[from as usize..to].to_vec();
                        f.on_hashes(a.peer, data.len() as u64, from, page)
                            .expect("ok");
                    }
                    Want::Part(i) => {
                        assert!(f.on_part(a.peer, i, &part(data, i)).expect("verifies"));
                        *served.entry(a.peer).or_default() += 1;
                    }
                }
            }
            asks = f.poll();
        }
        served
    }

    #[test]
    fn parts_come_from_every_provider_and_the_blob_completes() {
        let (data, id, cvs) = blob(40 * PART + 9);
        let peers: Vec<PeerId> = (0..3).map(|_| peer()).collect();
        let mut f = BlobFetch::new(id, 1 << 30, false);
        f.add_candidates(peers.clone(), true);
        let served = serve(&mut f, &data, &cvs);
        assert_eq!(f.state(), State::Done);
        assert_eq!(f.have(), data.len() as u64);
        assert_eq!(served.values().sum::<usize>(), 41);
        assert!(
            peers
                .iter()
                .all(|p| served.get(p).copied().unwrap_or(0) > 5),
            "{served:?}"
        );
    }

    #[test]
    fn a_one_part_blob_is_checked_against_its_id() {
        let (data, id, cvs) = blob(1000);
        assert!(cvs.is_empty());
        let (liar, honest) = (peer(), peer());
        let mut f = BlobFetch::new(id, 1 << 20, false);
        f.add_candidates([liar, honest], false);
        let asks = f.poll();
        assert_eq!(asks[0].peer, liar);
        assert!(f.on_hashes(liar, 1000, 0, Vec::new()).expect("size"));
        let asks = f.poll();
        assert!(
            asks.contains(&Ask {
                peer: liar,
                want: Want::Part(0)
            }),
            "{asks:?}"
        );
        assert!(
            asks.contains(&Ask {
                peer: honest,
                want: Want::Hashes { from: 0, max: 0 }
            }),
            "the other candidate is asked whether it holds it: {asks:?}"
        );
        let mut forged = data.clone();
        forged[3] ^= 1;
        assert!(f.on_part(liar, 0, &forged).is_err(), "a forged part");
        // The honest peer says it holds the blob, then serves the part.
        assert!(!f.on_hashes(honest, 1000, 0, Vec::new()).expect("probe"));
        serve(&mut f, &data, &cvs);
        assert_eq!(f.state(), State::Done);
    }

    #[test]
    fn a_forged_outboard_or_part_drops_its_peer_and_nothing_unverified_counts() {
        let (data, id, cvs) = blob(5 * PART);
        let (liar, honest) = (peer(), peer());
        let mut f = BlobFetch::new(id, 1 << 30, false);
        f.add_candidates([liar, honest], false);
        f.poll();
        let mut forged = cvs.clone();
        forged[2][0] ^= 1;
        let e = f
            .on_hashes(liar, data.len() as u64, 0, forged)
            .expect_err("forged");
        assert!(e.reason.contains("outboard"), "{e}");
        serve(&mut f, &data, &cvs);
        assert_eq!(f.state(), State::Done);
        // A provider that sends a bad part loses it back to the queue.
        let other = peer();
        let mut f = BlobFetch::new(id, 1 << 30, false);
        f.add_candidates([honest, other], false);
        f.poll();
        f.on_hashes(honest, data.len() as u64, 0, cvs.clone())
            .expect("outboard");
        let asks = f.poll();
        let first = asks
            .iter()
            .find(|a| matches!(a.want, Want::Part(_)))
            .expect("a part");
        let Want::Part(i) = first.want else {
            unreachable!()
        };
        assert!(f.on_part(first.peer, i, &part(&data, (i + 1) % 5)).is_err());
        assert_eq!(f.have(), 0);
        assert_eq!(
            f.on_part(first.peer, i, &part(&data, i)),
            Ok(false),
            "dropped already"
        );
    }

    #[test]
    fn sizes_over_the_limit_or_changing_are_refused_at_once() {
        let (data, id, cvs) = blob(3 * PART);
        let p = peer();
        let mut f = BlobFetch::new(id, PART, false);
        f.add_candidates([p], true);
        f.poll();
        let e = f
            .on_hashes(p, data.len() as u64, 0, cvs.clone())
            .expect_err("too big");
        assert!(e.reason.contains("limit"), "{e}");
        match f.state() {
            State::Failed(why) => assert!(why.contains("limit"), "{why}"),
            s => panic!("{s:?}"),
        }
        // A page that does not start where asked.
        let mut f = BlobFetch::new(id, 1 << 30, false);
        f.add_candidates([p], true);
        f.poll();
        assert!(
            f.on_hashes(p, data.len() as u64, 1, cvs[1..].to_vec())
                .is_err()
        );
    }

    #[test]
    fn a_resumed_fetch_asks_only_for_the_missing_parts() {
        let (data, id, cvs) = blob(6 * PART);
        let p = peer();
        let mut f = BlobFetch::new(id, 1 << 30, false);
        f.resume(
            data.len() as u64,
            cvs.clone(),
            &[true, true, false, true, false, true],
        );
        f.add_candidates([p], true);
        let served = serve(&mut f, &data, &cvs);
        assert_eq!(served.get(&p), Some(&2));
        assert_eq!(f.state(), State::Done);
    }

    #[test]
    fn waits_for_the_search_then_fails_with_the_reasons() {
        let (_, id, _) = blob(10);
        let p = peer();
        let mut f = BlobFetch::new(id, 1 << 20, true);
        assert!(f.poll().is_empty());
        assert_eq!(f.state(), State::Going);
        f.add_candidates([p], true);
        assert_eq!(f.poll().len(), 1);
        f.on_missing(p, "not found");
        f.add_candidates([p], true);
        assert!(f.poll().is_empty(), "a peer is asked once");
        f.search_done();
        match f.state() {
            State::Failed(why) => assert!(why.contains("not found"), "{why}"),
            s => panic!("{s:?}"),
        }
    }
}
