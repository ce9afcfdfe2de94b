//! Whose messages a campaign keeps: bounded state per key.
//!
//! Anyone can make a key and sign a valid message with it, so a campaign that kept (and whose
//! driver stored and forwarded) every validly signed message would grow by one message per
//! fresh key, forever. The rule here:
//! * a signer that was a member of some generation so far (the roster, every closure's members)
//!   is *known*: its messages go on to the ledger and the closure vote, whose own per-signer
//!   limits bound them;
//! * a non-member announces itself with a heartbeat (with capacity): it is held as a *pending
//!   joiner* in a pool of at most `max` keys. When the pool is full, a heartbeat from a lower key
//!   displaces the highest one (proposers admit joiners in key order, so the pool keeps exactly
//!   those a proposer would pick first, and every node holding the same heartbeats holds the
//!   same pool, whatever the arrival order). At most `max` keys enter the pool per generation, so
//!   however keys are ground or sorted, a generation adds at most `max` non-member messages;
//! * every other message from a signer neither known nor pending is unwanted;
//! * a finished campaign needs no heartbeats, claims, proposals or votes; it still takes
//!   commitments, reveals and audit reports from known signers (late evidence keeps scores
//!   complete).
//!
//! Unwanted messages are dropped without blame ([`crate::error::PeerAction::Ignore`]): another
//! node's view of the members (a generation ahead or behind) may differ honestly.

use std::collections::BTreeSet;

use crate::envelope::AnySigned;
use crate::error::Unwanted;
use crate::identity::PeerKey;

/// Who this peer keeps messages from.
#[derive(Debug, Default)]
pub(super) struct Admission {
    /// Every key that was a member of a generation this peer entered (and this peer's own).
    known: BTreeSet<PeerKey>,
    /// Non-members whose heartbeat the ledger holds, at most `max` of them.
    pending: BTreeSet<PeerKey>,
    /// The generation `admitted` counts for, and how many keys entered the pool in it.
    admitted: (u32, usize),
}

/// What [`Admission::screen`] decided on a message that may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Keep it.
    Keep,
    /// Keep it, and forget the heartbeat of this pending joiner (displaced from the pool).
    Displace(PeerKey),
}

impl Admission {
    /// Knows `me` and the first generation's members.
    pub(super) fn new(me: PeerKey, members: &[PeerKey]) -> Admission {
        let mut a = Admission::default();
        a.known.insert(me);
        a.members_changed(members);
        a
    }

    /// A generation with these members was entered: they are known from now on.
    pub(super) fn members_changed(&mut self, members: &[PeerKey]) {
        for p in members {
            self.pending.remove(p);
            self.known.insert(*p);
        }
    }

    /// Pending joiners held now.
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether to keep `m`, received in `generation` (the campaign `finished` or not), with a
    /// pool of at most `max` pending joiners.
    pub(super) fn screen(
        &mut self,
        m: &AnySigned,
        generation: u32,
        finished: bool,
        max: usize,
    ) -> Result<Admit, Unwanted> {
        let signer = m.signer();
        if finished {
            return match m {
                AnySigned::Commitment(_) | AnySigned::Reveal(_) | AnySigned::AuditReport(_)
                    if self.known.contains(&signer) =>
                {
                    Ok(Admit::Keep)
                }
                AnySigned::Commitment(_) | AnySigned::Reveal(_) | AnySigned::AuditReport(_) => {
                    Err(Unwanted::UnknownSigner)
                }
                _ => Err(Unwanted::Finished),
            };
        }
        if self.known.contains(&signer) || self.pending.contains(&signer) {
            return Ok(Admit::Keep);
        }
        match m {
            AnySigned::Heartbeat(h) if h.message().capacity > 0 => {
                self.join(signer, generation, max)
            }
            _ => Err(Unwanted::UnknownSigner),
        }
    }

    /// A heartbeat from a non-member not held yet: into the pool if it has room this
    /// generation, displacing the highest key when full.
    fn join(&mut self, signer: PeerKey, generation: u32, max: usize) -> Result<Admit, Unwanted> {
        if self.admitted.0 != generation {
            self.admitted = (generation, 0);
        }
        if self.admitted.1 >= max {
            return Err(Unwanted::JoinersFull);
        }
        let admit = if self.pending.len() < max {
            Admit::Keep
        } else {
            match self.pending.last() {
                Some(highest) if signer < *highest => Admit::Displace(*highest),
                _ => return Err(Unwanted::JoinersFull),
            }
        };
        if let Admit::Displace(p) = admit {
            self.pending.remove(&p);
        }
        self.pending.insert(signer);
        self.admitted.1 += 1;
        Ok(admit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Signed;
    use crate::id::{CampaignId, JobId};
    use crate::identity::Keypair;
    use crate::message::{Claim, Heartbeat};
    use crate::time::Timestamp;

    fn key(i: u32) -> Keypair {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_le_bytes());
        b[31] = 0x5a;
        Keypair::from_secret_bytes(b)
    }

    fn beat(k: &Keypair, capacity: u16) -> AnySigned {
        let hb = Heartbeat {
            campaign: CampaignId([3; 32]),
            generation: 0,
            running: 0,
            capacity,
            job_ms: 0,
            issued_at: Timestamp(1),
        };
        AnySigned::Heartbeat(Signed::sign_and_encode(hb, k).expect("valid"))
    }

    fn claim(k: &Keypair) -> AnySigned {
        let c = Claim {
            campaign: CampaignId([3; 32]),
            job: JobId([4; 32]),
            slots: 1,
            job_ms: 0,
            issued_at: Timestamp(1),
        };
        AnySigned::Claim(Signed::sign_and_encode(c, k).expect("valid"))
    }

    #[test]
    fn members_are_kept_and_strangers_only_join_through_the_pool() {
        let me = key(0);
        let member = key(1);
        let mut a = Admission::new(me.public(), &[member.public()]);
        assert_eq!(a.screen(&claim(&member), 0, false, 4), Ok(Admit::Keep));
        assert_eq!(a.screen(&claim(&me), 0, false, 4), Ok(Admit::Keep));
        let stranger = key(2);
        assert_eq!(
            a.screen(&claim(&stranger), 0, false, 4),
            Err(Unwanted::UnknownSigner),
            "no heartbeat, no claim"
        );
        assert_eq!(
            a.screen(&beat(&stranger, 0), 0, false, 4),
            Err(Unwanted::UnknownSigner),
            "a leave from a non-member means nothing"
        );
        assert_eq!(a.screen(&beat(&stranger, 1), 0, false, 4), Ok(Admit::Keep));
        assert_eq!(
            a.screen(&claim(&stranger), 0, false, 4),
            Ok(Admit::Keep),
            "a pending joiner's evidence goes on to the ledger's per-signer caps"
        );
        // Admitted by a closure: known from then on, out of the pool.
        a.members_changed(&[member.public(), stranger.public()]);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.screen(&claim(&stranger), 1, false, 4), Ok(Admit::Keep));
    }

    #[test]
    fn the_pool_keeps_the_lowest_keys_and_admits_at_most_max_per_generation() {
        let mut a = Admission::new(key(0).public(), &[]);
        let mut keys: Vec<Keypair> = (10..30).map(key).collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.public()));
        // Sorted high to low: every one would displace the last, but the generation's
        // admissions stop at `max`.
        let kept: Vec<_> = keys
            .iter()
            .map(|k| a.screen(&beat(k, 1), 0, false, 4))
            .collect();
        assert_eq!(kept.iter().filter(|r| r.is_ok()).count(), 4);
        assert!(
            kept[4..].iter().all(|r| *r == Err(Unwanted::JoinersFull)),
            "{kept:?}"
        );
        // Next generation: lower keys displace the highest, up to `max` again.
        let mut displaced = 0;
        for k in &keys[4..] {
            match a.screen(&beat(k, 1), 1, false, 4) {
                Ok(Admit::Displace(p)) => {
                    assert!(p > k.public(), "only a higher key is displaced");
                    displaced += 1;
                }
                Ok(Admit::Keep) => panic!("the pool is full"),
                Err(e) => assert_eq!(e, Unwanted::JoinersFull),
            }
            assert!(a.pending() <= 4);
        }
        assert_eq!(displaced, 4);
    }

    #[test]
    fn a_full_pool_refuses_a_higher_key() {
        let mut a = Admission::new(key(0).public(), &[]);
        let mut keys: Vec<Keypair> = (40..46).map(key).collect();
        keys.sort_by_key(Keypair::public);
        for k in &keys[..3] {
            assert_eq!(a.screen(&beat(k, 1), 0, false, 3), Ok(Admit::Keep));
        }
        assert_eq!(
            a.screen(&beat(&keys[5], 1), 1, false, 3),
            Err(Unwanted::JoinersFull)
        );
    }

    #[test]
    fn a_finished_campaign_takes_only_late_evidence_from_known_signers() {
        let member = key(1);
        let mut a = Admission::new(key(0).public(), &[member.public()]);
        assert_eq!(
            a.screen(&beat(&member, 1), 3, true, 4),
            Err(Unwanted::Finished)
        );
        assert_eq!(
            a.screen(&beat(&key(2), 1), 3, true, 4),
            Err(Unwanted::Finished)
        );
        assert_eq!(
            a.screen(&claim(&member), 3, true, 4),
            Err(Unwanted::Finished)
        );
        assert_eq!(a.pending(), 0);
    }

    /// Heartbeats from `n` fresh keys (numbered from `first`) for `peer`'s campaign, highest key first (the order that
    /// would make a pool keeping the lowest keys take every one); how many the peer kept.
    fn flood(peer: &mut crate::peer::Peer, first: u32, n: u32, now: Timestamp) -> usize {
        use crate::peer::{PeerInput, PeerOutput};
        let mut keys: Vec<Keypair> = (first..first + n).map(key).collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.public()));
        keys.iter()
            .filter(|k| {
                let hb = Heartbeat {
                    campaign: peer.campaign(),
                    generation: peer.generation(),
                    running: 0,
                    capacity: 1,
                    job_ms: 0,
                    issued_at: now,
                };
                let m = AnySigned::Heartbeat(Signed::sign_and_encode(hb, k).expect("valid"));
                let out = peer.handle(PeerInput::Message(m), now);
                !out.iter().any(|o| {
                    matches!(
                        o,
                        PeerOutput::Rejected {
                            error: crate::error::DecodeError::Unwanted { .. },
                            ..
                        }
                    )
                })
            })
            .count()
    }

    #[test]
    fn fresh_keys_flooding_heartbeats_keep_a_bounded_pool_live_and_nothing_when_finished() {
        let (mut peer, now) = crate::peer::tests::solo(1, 1, 1);
        let max = peer.config.max_pending_joiners;
        let kept = flood(&mut peer, 1000, 300, now);
        eprintln!("live campaign: {kept} of 300 fresh-key heartbeats kept (pool {max})");
        assert_eq!(kept, max, "a generation admits at most the pool's size");
        assert_eq!(peer.ledger().heartbeat_count(), max);
        assert_eq!(
            flood(&mut peer, 2000, 300, now),
            0,
            "the generation's admissions are spent"
        );
        // A campaign that finished (every generation closed void at its deadline; no joiners,
        // who would never vote).
        let (mut peer, _) = crate::peer::tests::solo(1, 1, 1);
        while !peer.finished() {
            let at = peer.chain.void_deadline(&peer.spec);
            peer.handle(crate::peer::PeerInput::Tick, at);
        }
        let held = peer.ledger().heartbeat_count();
        let at = peer.last_now;
        let kept = flood(&mut peer, 3000, 300, at);
        eprintln!("finished campaign: {kept} of 300 fresh-key heartbeats kept");
        assert_eq!(kept, 0);
        assert_eq!(peer.ledger().heartbeat_count(), held);
    }
}
