//! Time as the protocol sees it: a number handed in by the caller, never read from a clock.

use core::time::Duration;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as told to the protocol by its caller.
///
/// The protocol never reads a clock: the node passes wall-clock time, the simulator passes
/// virtual time. Signed messages carry the signer's `Timestamp` so receivers can drop stale
/// gossip.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is (zero if `earlier` is later).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl core::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(10);
        assert_eq!(t.saturating_add(Duration::from_millis(5)).as_millis(), 15);
        assert_eq!(
            Timestamp(u64::MAX - 1).saturating_add(Duration::from_secs(9)),
            Timestamp(u64::MAX)
        );
        assert_eq!(t.saturating_since(Timestamp(4)), Duration::from_millis(6));
        assert_eq!(t.saturating_since(Timestamp(40)), Duration::ZERO);
    }
}
