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
