//! Per-peer token buckets (gossip, sync requests, blob chunk requests, ignored junk) and
//! temporary bans, with the time passed in so they are tested without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Gossip messages accepted per forwarding peer per second (more are ignored, not forwarded).
pub const GOSSIP_RATE_PER_PEER: f64 = 500.0;
/// Sync requests answered per peer per second.
pub const REQUEST_RATE_PER_PEER: f64 = 50.0;
/// Blob requests answered per peer per second (a part is 256 KiB: 512 MiB/s; each part is
/// read and checked against its outboard before it is sent).
pub const BLOB_RATE_PER_PEER: f64 = 2048.0;
/// Junk (gossip dropped without blame before the protocol sees it: another version, stale,
/// dated ahead) taken from one peer per second before each one costs it [`JUNK_PENALTY`].
pub const JUNK_RATE_PER_PEER: f64 = 5.0;
/// Application score a peer loses per junk message past [`JUNK_RATE_PER_PEER`]: with the most
/// credit gossip gives (80), the 24th such message takes it below the graylist threshold
/// (−400), and the node bans it.
pub const JUNK_PENALTY: f64 = -20.0;
/// How long a peer whose score fell below the graylist threshold stays disconnected.
pub const BAN_DURATION: Duration = Duration::from_secs(600);
/// Most peers banned at once; past it, the ban ending first is lifted early.
pub const MAX_BANNED: usize = 1024;
/// Peers a limiter tracks at once (connection limits allow 256 peers); past it, idle buckets
/// (which would be full anyway) and then the longest-unused one are forgotten.
pub const MAX_TRACKED_PEERS: usize = 1024;

/// One peer's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left (at most the burst).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

/// A token bucket per peer: `rate` tokens a second, bursts of up to twice that.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens a bucket holds.
    burst: f64,
    /// Buckets by peer, at most [`MAX_TRACKED_PEERS`].
    buckets: HashMap<PeerId, Bucket>,
}

impl RateLimiter {
    /// A limiter allowing `rate` per second per peer, bursts of `2 * rate`.
    pub fn new(rate: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: rate * 2.0,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `peer`'s bucket at time `now`; false when it is empty.
    pub fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= MAX_TRACKED_PEERS {
            self.forget_one(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(peer).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = b.last.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Peers tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Makes room for one more peer: drops every bucket that has refilled (forgetting it
    /// changes nothing), else the one unused longest.
    fn forget_one(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= MAX_TRACKED_PEERS
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(p, _)| *p)
        {
            self.buckets.remove(&oldest);
        }
    }
}

/// Peers the node banned for their score, each until when (at most [`MAX_BANNED`]). Operator
/// blocks are not here: lifting a ban never lifts one of those.
#[derive(Debug, Default)]
pub struct Bans {
    /// When each ban ends.
    until: HashMap<PeerId, Instant>,
}

impl Bans {
    /// Bans `peer` from `now` for [`BAN_DURATION`]; returns a peer whose ban was lifted early to
    /// make room.
    pub fn ban(&mut self, peer: PeerId, now: Instant) -> Option<PeerId> {
        let mut released = None;
        if !self.until.contains_key(&peer) && self.until.len() >= MAX_BANNED {
            released = self.until.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p);
            if let Some(p) = released {
                self.until.remove(&p);
            }
        }
        self.until.insert(peer, now + BAN_DURATION);
        released
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.until.contains_key(peer)
    }

    /// The peers whose ban has ended by `now`, forgotten here.
    pub fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let done: Vec<PeerId> = (self.until.iter())
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            self.until.remove(p);
        }
        done
    }

    /// Forgets `peer`'s ban (the operator blocked or unblocked it: theirs to lift).
    pub fn forget(&mut self, peer: &PeerId) {
        self.until.remove(peer);
    }

    /// Peers banned now.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether nobody is banned.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// The limiters of a node, the application scores it gave peers and its bans.
#[derive(Debug)]
pub struct Limits {
    /// Gossip messages per forwarding peer.
    pub gossip: RateLimiter,
    /// Sync requests per peer.
    pub requests: RateLimiter,
    /// Blob chunk requests per peer.
    pub blobs: RateLimiter,
    /// Junk gossip per peer taken without penalty.
    pub junk: RateLimiter,
    /// The gossipsub application score this node gave each peer it caught misbehaving outside
    /// gossip (invalid sync messages, corrupt blob chunks) or sending persistent junk.
    pub app_scores: HashMap<PeerId, f64>,
    /// Peers banned for their score.
    pub bans: Bans,
}

impl Limits {
    /// Limiters with a gossip rate of `gossip_rate` per peer per second.
    pub fn new(gossip_rate: f64) -> Limits {
        Limits {
            gossip: RateLimiter::new(gossip_rate),
            requests: RateLimiter::new(REQUEST_RATE_PER_PEER),
            blobs: RateLimiter::new(BLOB_RATE_PER_PEER),
            junk: RateLimiter::new(JUNK_RATE_PER_PEER),
            app_scores: HashMap::new(),
            bans: Bans::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_is_refused_then_refills() {
        let mut r = RateLimiter::new(5.0);
        let p = PeerId::random();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(r.allow(p, t0), "burst token {i}");
        }
        assert!(!r.allow(p, t0), "over the burst");
        assert!(!r.allow(p, t0 + Duration::from_millis(100)), "half a token");
        assert!(
            r.allow(p, t0 + Duration::from_millis(200)),
            "one token back"
        );
        assert!(!r.allow(p, t0 + Duration::from_millis(200)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for i in 0..10 {
            assert!(r.allow(p, later), "refilled token {i}");
        }
        assert!(!r.allow(p, later));
    }

    #[test]
    fn peers_have_their_own_buckets() {
        let mut r = RateLimiter::new(1.0);
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!(r.allow(a, t0) && r.allow(a, t0));
        assert!(!r.allow(a, t0));
        assert!(r.allow(b, t0) && r.allow(b, t0), "b is not charged for a");
        assert!(!r.allow(b, t0));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let mut r = RateLimiter::new(1.0);
        let p = PeerId::random();
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(r.allow(p, t0) && r.allow(p, t0));
        assert!(!r.allow(p, t0 - Duration::from_secs(5)));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let mut r = RateLimiter::new(1.0);
        let t0 = Instant::now();
        let first = PeerId::random();
        assert!(r.allow(first, t0));
        for i in 1..(MAX_TRACKED_PEERS + 50) {
            assert!(r.allow(PeerId::random(), t0 + Duration::from_millis(i as u64)));
            assert!(r.tracked() <= MAX_TRACKED_PEERS);
        }
        assert_eq!(r.tracked(), MAX_TRACKED_PEERS);
        // The first peer was forgotten (unused longest): it starts with a full bucket again.
        assert!(r.allow(first, t0 + Duration::from_secs(1)));
        assert!(r.tracked() <= MAX_TRACKED_PEERS);
    }

    #[test]
    fn bans_end_after_their_duration_and_are_bounded() {
        let mut b = Bans::default();
        let t0 = Instant::now();
        let first = PeerId::random();
        assert_eq!(b.ban(first, t0), None);
        assert!(b.is_banned(&first));
        assert!(
            b.expired(t0 + BAN_DURATION - Duration::from_secs(1))
                .is_empty()
        );
        for i in 1..MAX_BANNED {
            assert_eq!(
                b.ban(PeerId::random(), t0 + Duration::from_millis(i as u64)),
                None
            );
        }
        // Full: the ban ending first (the first peer's) is lifted to make room.
        assert_eq!(
            b.ban(PeerId::random(), t0 + Duration::from_secs(5)),
            Some(first)
        );
        assert_eq!(b.len(), MAX_BANNED);
        assert!(!b.is_banned(&first));
        let lifted = b.expired(t0 + BAN_DURATION + Duration::from_secs(2));
        assert_eq!(lifted.len(), MAX_BANNED - 1, "all but the latest");
        assert_eq!(
            b.expired(t0 + BAN_DURATION + Duration::from_secs(5)).len(),
            1
        );
        assert!(b.is_empty());
    }

    #[test]
    fn an_operator_block_is_never_lifted_by_a_ban_ending() {
        let mut b = Bans::default();
        let t0 = Instant::now();
        let p = PeerId::random();
        b.ban(p, t0);
        b.forget(&p);
        assert!(b.expired(t0 + BAN_DURATION).is_empty());
    }
}
