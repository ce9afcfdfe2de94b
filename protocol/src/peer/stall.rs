//! Stalled closure votes (ADR 0006): a voter that hears too few voters for too long signs a
//! stall; the campaign's creator, holding enough stalls that the epoch cannot decide, hands the
//! vote to the voters that stalled (a [`Regenesis`]); every peer checks it against the stalls
//! it holds and moves the vote to the next epoch. The voters left out are dropped from the
//! members at the generation's closure.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use crate::consensus::{MAX_EPOCHS, epoch_of};
use crate::envelope::{AnySigned, Signed};
use crate::error::DecodeError;
use crate::identity::PeerKey;
use crate::message::{Kind, Regenesis};
use crate::time::Timestamp;

use super::{Peer, PeerOutput};

/// Round timeouts a voter waits, after it started voting in an epoch, before it stalls (if
/// it has heard fewer voters than a quorum by then).
pub const STALL_AFTER_TIMEOUTS: u64 = 30;

/// Round timeouts the creator waits for more stalls once it holds enough to regenesis (a
/// voter that stalls later is left out of the new voters).
pub const REGENESIS_GRACE_TIMEOUTS: u64 = 2;

/// Regeneses held for an epoch this peer has not reached or stalls it does not hold yet.
const MAX_PENDING_REGENESES: usize = 4;

/// The stall state of the current generation's vote.
#[derive(Debug, Default)]
pub(super) struct StallState {
    /// Regeneses that cannot be checked yet (a later epoch, or stalls not held yet).
    pending: Vec<Signed<Regenesis>>,
    /// Proposals and votes of epochs after the current one, replayed when it is reached (at
    /// most `max_future_messages`).
    ahead: VecDeque<AnySigned>,
    /// Voters the generation's regeneses left out: dropped from the next members.
    pub(super) dismissed: BTreeSet<PeerKey>,
    /// (Creator) When it first held enough stalls in the current epoch.
    ready_at: Option<(u32, Timestamp)>,
}

impl StallState {
    /// A new generation: nothing stalled.
    pub(super) fn clear(&mut self) {
        *self = StallState::default();
    }
}

impl Peer {
    /// The campaign's creator, if the driver named it (only it may sign a [`Regenesis`]).
    pub fn creator(&self) -> Option<PeerKey> {
        self.creator
    }

    /// Names the campaign's creator (the signer of its announcement), whose regeneses this
    /// peer follows when a closure vote stalls. Without it a stalled vote stays stalled.
    pub fn with_creator(mut self, creator: PeerKey) -> Self {
        self.creator = Some(creator);
        self.admission.members_changed(&[creator]);
        self
    }

    /// The current generation's vote epoch and how many voters stalled in it.
    pub fn stall_state(&self) -> (u32, usize) {
        let i = &self.voting.instance;
        (i.epoch(), i.stalls().len())
    }

    /// How long a voter waits before it stalls.
    fn stall_after(&self) -> Duration {
        Duration::from_millis(
            self.spec
                .schedule
                .round_timeout_ms
                .saturating_mul(STALL_AFTER_TIMEOUTS),
        )
    }

    /// When this peer would next stall or regenesis, if it may.
    pub(super) fn stall_wakeup(&self) -> Option<Timestamp> {
        let i = &self.voting.instance;
        if i.decided().is_some() {
            return None;
        }
        let grace = self.spec.schedule.round_timeout_ms * REGENESIS_GRACE_TIMEOUTS;
        let regenesis = self
            .stall
            .ready_at
            .filter(|(e, _)| *e == i.epoch())
            .map(|(_, at)| at.saturating_add(Duration::from_millis(grace)));
        let stall = i
            .started_at()
            .filter(|_| i.voters().contains(&self.me) && !i.stalls().contains(&self.me))
            .map(|at| at.saturating_add(self.stall_after()));
        match (regenesis, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stalls if this peer has voted for `stall_after` and heard fewer voters than a quorum;
    /// as the creator, signs a regenesis once enough voters stalled.
    pub(super) fn stall_phase(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        let i = &self.voting.instance;
        if i.decided().is_some() || !i.started() {
            return;
        }
        let due = i
            .started_at()
            .is_some_and(|at| now >= at.saturating_add(self.stall_after()));
        if due && i.heard_voters() < i.quorum() && !i.stalls().contains(&self.me) {
            self.vote_with(now, out, |i, key, _| i.stall(key, now));
        }
        self.regenesis_if_due(now, out);
    }

    /// (Creator) Signs the next epoch's regenesis once the stalls prove the epoch cannot
    /// decide and every voter heard from stalled, or the grace time passed.
    fn regenesis_if_due(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        if self.creator != Some(self.me) || self.replaying {
            return;
        }
        let i = &self.voting.instance;
        let epoch = i.epoch();
        if i.stalls().len() < i.stalls_needed() || epoch + 1 >= MAX_EPOCHS {
            return;
        }
        let ready_at = match self.stall.ready_at {
            Some((e, at)) if e == epoch => at,
            _ => {
                self.stall.ready_at = Some((epoch, now));
                now
            }
        };
        let grace = self.spec.schedule.round_timeout_ms * REGENESIS_GRACE_TIMEOUTS;
        let all_stalled = i.stalls().len() >= i.heard_voters();
        if !all_stalled && now < ready_at.saturating_add(Duration::from_millis(grace)) {
            return;
        }
        let regenesis = Regenesis {
            campaign: self.campaign(),
            generation: self.chain.cur.number,
            epoch: epoch + 1,
            voters: i.stalls().iter().copied().collect(),
            issued_at: now,
        };
        if let Ok(s) = Signed::sign_and_encode(regenesis, &self.key) {
            self.liveness.spoke = true;
            out.push(PeerOutput::Broadcast(AnySigned::Regenesis(s.clone())));
            self.on_regenesis(s, now, out);
        }
    }

    /// Holds a proposal or vote of the next epoch of the current generation (whether it took
    /// it: held, or unused when it is further ahead or the hold is full).
    pub(super) fn hold_if_ahead(&mut self, m: &AnySigned, out: &mut Vec<PeerOutput>) -> bool {
        let round = match m {
            AnySigned::Proposal(p) => p.message().round,
            AnySigned::Vote(v) => v.message().round,
            _ => return false,
        };
        let epoch = self.voting.instance.epoch();
        if epoch_of(round) <= epoch {
            return false;
        }
        if epoch_of(round) == epoch + 1 && self.stall.ahead.len() < self.config.max_future_messages
        {
            self.stall.ahead.push_back(m.clone());
        } else {
            out.push(super::unused(m.id(), m.kind()));
        }
        true
    }

    /// A regenesis for the current generation: adopted if it is the creator's, for the next
    /// epoch, and backed by stalls held here; held if it may become so; else refused.
    pub(super) fn on_regenesis(
        &mut self,
        r: Signed<Regenesis>,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        if self.creator != Some(r.signer()) {
            // Without the creator known nothing can be adopted; from anyone else, it breaks
            // the rule that only the creator regeneses.
            if self.creator.is_some() {
                let error = DecodeError::Invalid {
                    kind: Kind::Regenesis,
                    reason: "not signed by the campaign's creator".into(),
                };
                out.push(PeerOutput::Rejected {
                    id: r.id(),
                    action: error.peer_action(),
                    error,
                });
            }
            return;
        }
        let i = &self.voting.instance;
        let m = r.message();
        if m.epoch <= i.epoch() || i.decided().is_some() {
            // Adopted already, or too late: nothing to keep.
            out.push(super::unused(r.id(), Kind::Regenesis));
            return;
        }
        if m.epoch > i.epoch() + 1 || !m.voters.iter().all(|p| i.stalls().contains(p)) {
            if self.stall.pending.len() < MAX_PENDING_REGENESES
                && !self.stall.pending.iter().any(|p| p.id() == r.id())
            {
                self.stall.pending.push(r);
            }
            return;
        }
        if m.voters.len() < i.stalls_needed() {
            let error = DecodeError::Invalid {
                kind: Kind::Regenesis,
                reason: format!(
                    "{} voters; the epoch can still decide unless {} stalled",
                    m.voters.len(),
                    i.stalls_needed()
                ),
            };
            out.push(PeerOutput::Rejected {
                id: r.id(),
                action: error.peer_action(),
                error,
            });
            return;
        }
        self.adopt_regenesis(r, now, out);
    }

    /// Moves the vote to the regenesis's epoch and replays what arrived for it early.
    fn adopt_regenesis(&mut self, r: Signed<Regenesis>, now: Timestamp, out: &mut Vec<PeerOutput>) {
        let voters = r.message().voters.clone();
        let left_out: Vec<PeerKey> = self
            .voting
            .instance
            .voters()
            .iter()
            .filter(|p| voters.binary_search(p).is_err())
            .copied()
            .collect();
        self.stall.dismissed.extend(left_out);
        self.stall.ready_at = None;
        let msg = AnySigned::Regenesis(r);
        self.vote_with(now, out, |i, key, env| {
            i.next_epoch(voters, msg, key, env, now)
        });
        let ahead: Vec<AnySigned> = self.stall.ahead.drain(..).collect();
        let generation = self.chain.cur.number;
        for m in ahead {
            if self.chain.cur.number != generation || self.chain.finished {
                break;
            }
            self.on_message(m, now, out);
        }
        self.retry_pending_regeneses(now, out);
    }

    /// Checks the held regeneses again (after a stall arrived or an epoch was adopted).
    pub(super) fn retry_pending_regeneses(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        if self.stall.pending.is_empty() {
            return;
        }
        let generation = self.chain.cur.number;
        for r in std::mem::take(&mut self.stall.pending) {
            if self.chain.cur.number == generation && !self.chain.finished {
                self.on_regenesis(r, now, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::message::{Step, Vote};
    use crate::peer::{PeerConfig, PeerInput};
    use crate::spec::tests::sample_spec;

    fn key(i: u8) -> Keypair {
        Keypair::from_secret_bytes([i; 32])
    }

    /// Peer 2's view of a campaign whose roster is peers 1, 2 and 3, created by peer 1.
    fn peer_two() -> (Peer, Timestamp) {
        let mut spec = sample_spec();
        spec.roster = vec![key(1).public(), key(2).public(), key(3).public()];
        spec.roster.sort();
        let now = Timestamp(spec.created_at.0 + 1);
        let peer = Peer::new(spec, key(2), PeerConfig::default(), now)
            .expect("valid")
            .with_creator(key(1).public());
        (peer, now)
    }

    fn regenesis(peer: &Peer, by: &Keypair, voters: &[PeerKey]) -> AnySigned {
        let r = Regenesis {
            campaign: peer.campaign(),
            generation: 0,
            epoch: 1,
            voters: voters.to_vec(),
            issued_at: peer.last_now,
        };
        AnySigned::Regenesis(Signed::sign_and_encode(r, by).expect("valid"))
    }

    fn stall(peer: &Peer, by: &Keypair) -> AnySigned {
        let v = Vote {
            campaign: peer.campaign(),
            generation: 0,
            round: 0,
            step: Step::Stall,
            root: None,
            issued_at: peer.last_now,
        };
        AnySigned::Vote(Signed::sign_and_encode(v, by).expect("valid"))
    }

    fn rejected(out: &[PeerOutput]) -> bool {
        out.iter().any(|o| {
            matches!(
                o,
                PeerOutput::Rejected {
                    error: DecodeError::Invalid {
                        kind: Kind::Regenesis,
                        ..
                    },
                    ..
                }
            )
        })
    }

    #[test]
    fn only_the_creators_regenesis_backed_by_stalls_held_here_moves_the_vote() {
        let (mut peer, now) = peer_two();
        let one = [key(1).public()];
        // Three voters need all three votes; a stall from one proves the epoch cannot decide.
        assert_eq!(peer.voting.instance.stalls_needed(), 1);
        let forged = regenesis(&peer, &key(3), &one);
        assert!(rejected(&peer.handle(PeerInput::Message(forged), now)));
        assert_eq!(peer.stall_state(), (0, 0));
        // The creator's, before the stall it names arrived here: held, not adopted.
        let r = regenesis(&peer, &key(1), &one);
        assert!(!rejected(&peer.handle(PeerInput::Message(r), now)));
        assert_eq!(peer.stall_state(), (0, 0));
        assert_eq!(peer.voters().len(), 3);
        // The stall arrives: the held regenesis is adopted; peer 1 votes alone from now on,
        // and peers 2 and 3 leave the members at this generation's closure.
        peer.handle(PeerInput::Message(stall(&peer, &key(1))), now);
        assert_eq!(peer.stall_state(), (1, 0));
        assert_eq!(peer.voters(), &one[..]);
        let dismissed: Vec<PeerKey> = peer.stall.dismissed.iter().copied().collect();
        let mut want = vec![key(2).public(), key(3).public()];
        want.sort();
        assert_eq!(dismissed, want);
        assert!(
            peer.consensus_messages()
                .any(|m| matches!(m, AnySigned::Regenesis(_))),
            "a syncing peer gets the regenesis"
        );
    }

    #[test]
    fn a_regenesis_naming_fewer_voters_than_the_stalls_needed_is_refused() {
        let mut spec = sample_spec();
        spec.roster = (1..=4).map(|i| key(i).public()).collect();
        spec.roster.sort();
        let now = Timestamp(spec.created_at.0 + 1);
        let mut peer = Peer::new(spec, key(2), PeerConfig::default(), now)
            .expect("valid")
            .with_creator(key(1).public());
        // Four voters, quorum three: two stalls are needed.
        assert_eq!(peer.voting.instance.stalls_needed(), 2);
        peer.handle(PeerInput::Message(stall(&peer, &key(1))), now);
        let r = regenesis(&peer, &key(1), &[key(1).public()]);
        assert!(rejected(&peer.handle(PeerInput::Message(r), now)));
        assert_eq!(peer.stall_state(), (0, 1));
    }
}
