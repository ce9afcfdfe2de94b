//! Reputation from the closure chain: agreed results, offences and failed audits per peer, and
//! the assignment weights they give. Every honest peer derives the same from the same closures.

use std::collections::BTreeMap;

use crate::assign::weight;
use crate::closure::{Closure, Entry};
use crate::identity::PeerKey;

/// What the closures so far say of each peer.
#[derive(Debug, Default)]
pub(super) struct Reputation {
    /// Agreed (credited) results per peer.
    pub(super) agreed: BTreeMap<PeerKey, u64>,
    /// Offences per peer: dissents and failed audits.
    pub(super) offences: BTreeMap<PeerKey, u64>,
    /// Audits failed per peer (as an overturned executor or a contradicted auditor).
    pub(super) failed_audits: BTreeMap<PeerKey, u64>,
}

impl Reputation {
    /// The assignment weight of each peer, from its agreed results and offences.
    pub(super) fn weights(&self) -> impl Fn(&PeerKey) -> u64 + '_ {
        |p| {
            weight(
                self.agreed.get(p).copied().unwrap_or(0),
                self.offences.get(p).copied().unwrap_or(0),
            )
        }
    }

    /// Records a decided closure's settled entries: a credit for each credited executor, an
    /// offence for each dissenter.
    pub(super) fn record_closure(&mut self, closure: &Closure) {
        for e in &closure.entries {
            if let Entry::Settled {
                settlement,
                credited,
                ..
            } = e
            {
                for p in credited {
                    self.credit(p);
                }
                for p in &settlement.dissenting {
                    self.offence(p);
                }
            }
        }
    }

    /// One more agreed result for `p`.
    pub(super) fn credit(&mut self, p: &PeerKey) {
        *self.agreed.entry(*p).or_default() += 1;
    }

    /// One agreed result fewer for `p` (a credit taken back).
    pub(super) fn uncredit(&mut self, p: &PeerKey) {
        if let Some(n) = self.agreed.get_mut(p) {
            *n = n.saturating_sub(1);
        }
    }

    /// One more offence for `p`.
    pub(super) fn offence(&mut self, p: &PeerKey) {
        *self.offences.entry(*p).or_default() += 1;
    }

    /// One offence fewer for `p` (a dissent that proved right).
    pub(super) fn pardon(&mut self, p: &PeerKey) {
        if let Some(n) = self.offences.get_mut(p) {
            *n = n.saturating_sub(1);
        }
    }

    /// `p` failed an audit: an offence, and its later jobs are audited more often.
    pub(super) fn failed_audit(&mut self, p: &PeerKey) {
        *self.failed_audits.entry(*p).or_default() += 1;
        self.offence(p);
    }

    /// Whether `p` ever failed an audit.
    pub(super) fn has_failed(&self, p: &PeerKey) -> bool {
        self.failed_audits.contains_key(p)
    }

    /// Whether `p`'s audit reports count: a member (`members` sorted) that never failed an
    /// audit.
    pub(super) fn may_report(&self, members: &[PeerKey], p: &PeerKey) -> bool {
        members.binary_search(p).is_ok() && !self.has_failed(p)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::agreement::Settlement;
    use crate::agreement::tests::{metrics, peer};
    use crate::assign::{BASE_WEIGHT, MAX_WEIGHT};
    use crate::id::{CampaignId, JobId};

    /// A settled entry for `job`: `agreeing` agreed, of whom `credited` earn credit;
    /// `dissenting` dissented.
    pub(in crate::peer) fn settled(
        job: u8,
        agreeing: &[u8],
        credited: &[u8],
        dissenting: &[u8],
    ) -> Entry {
        let keys = |ids: &[u8]| ids.iter().map(|i| peer(*i)).collect::<Vec<_>>();
        Entry::Settled {
            job: JobId([job; 32]),
            settlement: Settlement {
                canonical: metrics(900),
                agreeing: keys(agreeing),
                dissenting: keys(dissenting),
            },
            wall_time_ms: 10,
            credited: keys(credited),
        }
    }

    fn closure(entries: Vec<Entry>) -> Closure {
        Closure {
            campaign: CampaignId([7; 32]),
            generation: 0,
            previous: [0; 32],
            entries,
            verdicts: Vec::new(),
            members: Vec::new(),
            deadline_ms: 1,
        }
    }

    #[test]
    fn a_closure_credits_the_credited_and_charges_the_dissenters() {
        let mut rep = Reputation::default();
        let entries = vec![
            // Peer 3 agreed but copied: no credit.
            settled(1, &[1, 2, 3], &[1, 2], &[4]),
            settled(2, &[1, 2], &[1, 2], &[]),
            Entry::Void {
                job: JobId([3; 32]),
                reason: crate::closure::VoidReason::NoClaim,
            },
        ];
        rep.record_closure(&closure(entries));
        assert_eq!(rep.agreed.get(&peer(1)), Some(&2));
        assert_eq!(rep.agreed.get(&peer(2)), Some(&2));
        assert_eq!(rep.agreed.get(&peer(3)), None, "agreeing is not credited");
        assert_eq!(rep.offences.get(&peer(4)), Some(&1));
        assert!(rep.failed_audits.is_empty(), "dissent is no failed audit");
    }

    #[test]
    fn weights_grow_with_agreed_results_and_fall_to_one_on_an_offence() {
        let mut rep = Reputation::default();
        for _ in 0..8 {
            rep.credit(&peer(1));
        }
        for _ in 0..1000 {
            rep.credit(&peer(2));
        }
        rep.credit(&peer(3));
        rep.offence(&peer(3));
        let w = rep.weights();
        assert_eq!(w(&peer(9)), BASE_WEIGHT, "a newcomer");
        assert_eq!(w(&peer(1)), BASE_WEIGHT + 2);
        assert_eq!(w(&peer(2)), MAX_WEIGHT, "capped");
        assert_eq!(w(&peer(3)), 1, "an offender");
    }

    #[test]
    fn a_failed_audit_is_an_offence_and_bars_reports() {
        let mut rep = Reputation::default();
        let members = vec![peer(1), peer(2)];
        assert!(rep.may_report(&members, &peer(1)));
        assert!(!rep.may_report(&members, &peer(3)), "not a member");
        rep.failed_audit(&peer(1));
        assert!(rep.has_failed(&peer(1)));
        assert_eq!(rep.offences.get(&peer(1)), Some(&1));
        assert!(!rep.may_report(&members, &peer(1)));
        assert!(rep.may_report(&members, &peer(2)));
    }

    #[test]
    fn taking_back_credit_or_offences_stops_at_zero() {
        let mut rep = Reputation::default();
        rep.uncredit(&peer(1));
        rep.pardon(&peer(1));
        assert!(rep.agreed.is_empty() && rep.offences.is_empty());
        rep.offence(&peer(1));
        rep.pardon(&peer(1));
        rep.pardon(&peer(1));
        assert_eq!(rep.offences.get(&peer(1)), Some(&0));
        assert_eq!(
            rep.weights()(&peer(1)),
            BASE_WEIGHT,
            "a pardoned dissent weighs nothing"
        );
    }
}
