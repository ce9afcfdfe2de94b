//! Redialling bootstrap peers: a bootstrap peer that goes away (restarted, crashed, a network
//! blip) is dialled again after 1 s, then 2, 4, … up to 60 s between tries, until it is back;
//! the backoff starts over once it is. Without it a restarted bootstrap peer was found again
//! only by chance (Kademlia's periodic bootstrap, about five minutes).
//!
//! Only bootstrap addresses that name their peer (`…/p2p/<peer id>`) are redialled: the peer
//! id is how a connection is recognised as theirs. Time is passed in.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The first wait before a redial.
pub const FIRST_REDIAL: Duration = Duration::from_secs(1);
/// The longest wait between redials.
pub const MAX_REDIAL: Duration = Duration::from_secs(60);

/// One bootstrap peer.
#[derive(Debug)]
struct Entry {
    /// Its address.
    addr: Multiaddr,
    /// Its peer id (from the address).
    peer: PeerId,
    /// Whether a connection to it is open.
    connected: bool,
    /// When to dial it next while it is not connected.
    next: Instant,
    /// The wait after the next dial.
    backoff: Duration,
}

/// The bootstrap peers and when to dial each again.
#[derive(Debug, Default)]
pub(super) struct Redial {
    /// One entry per bootstrap address with a peer id.
    entries: Vec<Entry>,
}

impl Redial {
    /// Tracks `bootstrap` (dialled once at start, `now`).
    pub(super) fn new(bootstrap: &[Multiaddr], now: Instant) -> Redial {
        let entries = bootstrap
            .iter()
            .filter_map(|addr| match addr.iter().last() {
                Some(Protocol::P2p(peer)) => Some(Entry {
                    addr: addr.clone(),
                    peer,
                    connected: false,
                    next: now + FIRST_REDIAL,
                    backoff: FIRST_REDIAL * 2,
                }),
                _ => None,
            })
            .collect();
        Redial { entries }
    }

    /// `peer` connected: no redials while it stays, and the backoff starts over.
    pub(super) fn connected(&mut self, peer: &PeerId) {
        for e in self.entries.iter_mut().filter(|e| e.peer == *peer) {
            e.connected = true;
            e.backoff = FIRST_REDIAL;
        }
    }

    /// `peer`'s last connection closed at `now`: dial it again after the backoff.
    pub(super) fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        for e in self.entries.iter_mut().filter(|e| e.peer == *peer) {
            e.connected = false;
            e.next = now + e.backoff;
            e.backoff = (e.backoff * 2).min(MAX_REDIAL);
        }
    }

    /// The addresses to dial at `now`; each is scheduled again after its (doubled) backoff in
    /// case the dial fails.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut() {
            if !e.connected && e.next <= now {
                out.push(e.addr.clone());
                e.next = now + e.backoff;
                e.backoff = (e.backoff * 2).min(MAX_REDIAL);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_bootstrap_peer_is_redialled_with_a_doubling_backoff() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4077/p2p/{peer}")
            .parse()
            .expect("addr");
        let nameless: Multiaddr = "/ip4/127.0.0.1/tcp/4078".parse().expect("addr");
        let t0 = Instant::now();
        let mut r = Redial::new(&[addr.clone(), nameless], t0);
        r.connected(&peer);
        assert!(r.due(t0 + Duration::from_secs(100)).is_empty(), "connected");
        r.disconnected(&peer, t0);
        assert!(r.due(t0).is_empty());
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(r.due(s(1)), vec![addr.clone()], "after 1 s");
        assert!(r.due(s(2)).is_empty());
        assert_eq!(r.due(s(3)), vec![addr.clone()], "then 2 s later");
        assert_eq!(r.due(s(7)), vec![addr.clone()], "then 4 s later");
        // Back: the backoff starts over.
        r.connected(&peer);
        r.disconnected(&peer, s(100));
        assert_eq!(r.due(s(101)), vec![addr]);
        // The wait never exceeds the cap.
        let mut t = s(101);
        for _ in 0..20 {
            t += MAX_REDIAL;
            assert_eq!(r.due(t).len(), 1);
        }
    }
}
