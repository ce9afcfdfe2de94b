//! Per-peer token buckets (gossip, sync requests, blob chunk requests), with the time passed in
//! so they are tested without a clock.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Gossip messages accepted per forwarding peer per second (more are ignored, not forwarded).
pub const GOSSIP_RATE_PER_PEER: f64 = 500.0;
/// Sync requests answered per peer per second.
pub const REQUEST_RATE_PER_PEER: f64 = 50.0;
/// Blob chunk requests answered per peer per second (256 KiB each: 50 MiB/s).
pub const BLOB_RATE_PER_PEER: f64 = 200.0;
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

/// The three limiters of a node and the application scores it gave peers.
#[derive(Debug)]
pub struct Limits {
    /// Gossip messages per forwarding peer.
    pub gossip: RateLimiter,
    /// Sync requests per peer.
    pub requests: RateLimiter,
    /// Blob chunk requests per peer.
    pub blobs: RateLimiter,
    /// The gossipsub application score this node gave each peer it caught misbehaving outside
    /// gossip (invalid sync messages, corrupt blob chunks).
    pub app_scores: HashMap<PeerId, f64>,
}

impl Limits {
    /// Limiters with a gossip rate of `gossip_rate` per peer per second.
    pub fn new(gossip_rate: f64) -> Limits {
        Limits {
            gossip: RateLimiter::new(gossip_rate),
            requests: RateLimiter::new(REQUEST_RATE_PER_PEER),
            blobs: RateLimiter::new(BLOB_RATE_PER_PEER),
            app_scores: HashMap::new(),
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
}
