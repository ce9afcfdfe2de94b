//! One simulated node: its protocol peer, the messages it holds, and how it handles a
//! window's inputs (on any worker thread: it touches nothing but itself).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use hivemesh_protocol::message::commitment_digest;
use hivemesh_protocol::peer::{Peer, PeerInput, PeerOutput};
use hivemesh_protocol::{
    AnySigned, Commitment, JobId, JobResult, JobSpec, Keypair, Signed, Timestamp,
};

use super::{Batch, Effect, Item, Work, perturb, true_outcome};
use crate::scenario::Behaviour;

/// What every node may read while nodes run in parallel.
pub(super) struct View<'a> {
    /// Every distinct message so far, by log index.
    pub(super) log: &'a [Arc<AnySigned>],
    /// The campaign's id.
    pub(super) campaign: hivemesh_protocol::CampaignId,
}

/// A bit set over log indices: the messages a node holds.
pub(super) struct Bits(pub(super) Vec<u64>);

impl Bits {
    /// Indices set here, below `len`.
    pub(super) fn ones(&self, len: usize) -> Vec<usize> {
        self.missing_from(&Bits(Vec::new()), len)
    }

    /// Indices set here and not in `other`, below `len`.
    pub(super) fn missing_from(&self, other: &Bits, len: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for (w, &word) in self.0.iter().enumerate() {
            let mut x = word & !other.0.get(w).copied().unwrap_or(0);
            while x != 0 {
                let i = w * 64 + x.trailing_zeros() as usize;
                if i >= len {
                    return out;
                }
                out.push(i);
                x &= x - 1;
            }
        }
        out
    }

    pub(super) fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    pub(super) fn set(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }
}

pub(super) struct Node {
    /// Its index in `Sim::nodes`.
    pub(super) index: u32,
    /// Its signing key.
    pub(super) key: Keypair,
    /// Its protocol participant (`None` while down or not yet joined).
    pub(super) peer: Option<Peer>,
    /// How it misbehaves, if it does.
    pub(super) behaviour: Option<Behaviour>,
    /// The messages it holds (its store).
    pub(super) have: Bits,
    /// Whether it is running.
    pub(super) up: bool,
    /// Its partition group (nodes in different groups cannot reach each other).
    pub(super) group: usize,
    /// When its next timer falls due.
    pub(super) wake_at: Option<u64>,
    /// Per generation: when it closed and with which root.
    pub(super) closed_at: BTreeMap<u32, (u64, [u8; 32])>,
    /// Jobs a copier waits to copy a result for.
    pub(super) waiting_copy: BTreeSet<JobId>,
    /// Results of the jobs it finished: its store keeps them, so that after a restart a job
    /// is not run again (a second run's different wall time would be a second, conflicting
    /// commitment), as in the node.
    pub(super) results: HashMap<JobId, JobResult>,
    /// Messages refused at its ingress.
    pub(super) rejected: usize,
    /// Messages delivered to it (not counting replays).
    pub(super) delivered: u64,
    /// Of those, job evidence (claims, commitments, reveals): what sharded topics route.
    pub(super) evidence_delivered: u64,
}

impl Node {
    /// Handles this node's inputs of one window, in `(at, seq)` order, with the timers they
    /// set that fall due before `end` (timer inputs get `seq` from `next_seq` on); returns
    /// what each input left to do. Touches nothing but this node, so the nodes of a window
    /// can run on several threads; the result does not depend on how they are spread.
    pub(super) fn step(
        &mut self,
        view: &View<'_>,
        items: impl Iterator<Item = Item>,
        end: u64,
        next_seq: u64,
    ) -> Vec<Batch> {
        let mut out = Vec::new();
        let mut timer: Option<(u64, u64)> = None;
        let mut next_seq = next_seq;
        let mut items = items.peekable();
        loop {
            let due = timer.filter(|&t| items.peek().is_none_or(|i| t < (i.at, i.seq)));
            let (at, seq, work) = match due {
                Some((at, seq)) => {
                    timer = None;
                    (at, seq, Work::Wake)
                }
                None => match items.next() {
                    Some(i) => (i.at, i.seq, i.work),
                    None => break,
                },
            };
            let mut effects = Vec::new();
            if self.handle(view, at, work, &mut effects) {
                // The peer's next timer: kept here if it falls due in this window, else
                // scheduled (an earlier one replaces a later one; a stale one is ignored).
                if let Some(w) = self
                    .peer
                    .as_ref()
                    .and_then(Peer::next_wakeup)
                    .map(|t| t.as_millis().max(at + 1))
                    && self.wake_at.is_none_or(|x| w < x || x <= at)
                {
                    self.wake_at = Some(w);
                    if w < end {
                        timer = Some((w, next_seq));
                        next_seq += 1;
                    } else {
                        effects.push(Effect::Wake(w));
                    }
                }
            }
            if !effects.is_empty() {
                out.push(Batch {
                    at,
                    seq,
                    node: self.index,
                    effects,
                });
            }
        }
        out
    }

    /// Handles one input; returns whether the peer handled it (so its timer may have moved).
    pub(super) fn handle(
        &mut self,
        view: &View<'_>,
        at: u64,
        work: Work,
        effects: &mut Vec<Effect>,
    ) -> bool {
        let now = Timestamp::from_millis(at);
        let input = match work {
            Work::Deliver(m) => {
                if !self.up || self.have.get(m as usize) {
                    return false;
                }
                self.have.set(m as usize);
                self.delivered += 1;
                let msg = &view.log[m as usize];
                if matches!(
                    &**msg,
                    AnySigned::Claim(_) | AnySigned::Commitment(_) | AnySigned::Reveal(_)
                ) {
                    self.evidence_delivered += 1;
                }
                // A copier waiting for this job's reveal copies it (after handling it).
                if let AnySigned::Reveal(r) = &**msg
                    && self.waiting_copy.remove(&r.message().job)
                {
                    let copied = Effect::Ready(r.message().job, r.message().result.clone());
                    let handled =
                        self.handle_input(PeerInput::Message((**msg).clone()), now, effects);
                    effects.push(copied);
                    return handled;
                }
                PeerInput::Message((**msg).clone())
            }
            Work::Replay(m) => PeerInput::Replay((*view.log[m as usize]).clone()),
            Work::JobDone(done) => {
                let Some(done) = done else {
                    return false;
                };
                let (job, result) = *done;
                if !self.up {
                    return false;
                }
                if self.behaviour == Some(Behaviour::Equivocate) {
                    // A second, different commitment for the same job.
                    let other = JobResult {
                        outcome: perturb(&result.outcome, 1),
                        wall_time_ms: result.wall_time_ms,
                    };
                    let c = Commitment {
                        campaign: view.campaign,
                        job,
                        digest: commitment_digest(&job, &self.key.public(), &other, &[7; 32]),
                        issued_at: now,
                    };
                    if let Ok(s) = Signed::sign_and_encode(c, &self.key) {
                        effects.push(Effect::Broadcast(AnySigned::Commitment(s)));
                    }
                }
                self.results.insert(job, result.clone());
                PeerInput::JobDone { job, result }
            }
            Work::Wake => {
                if self.wake_at != Some(at) {
                    return false;
                }
                self.wake_at = None;
                PeerInput::Tick
            }
            Work::Tick => PeerInput::Tick,
        };
        self.handle_input(input, now, effects)
    }

    pub(super) fn handle_input(
        &mut self,
        input: PeerInput,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> bool {
        let Some(peer) = self.peer.as_mut() else {
            return false;
        };
        for o in peer.handle(input, now) {
            match o {
                PeerOutput::Broadcast(m) => effects.push(Effect::Broadcast(m)),
                PeerOutput::Execute(job) => self.execute(job, effects),
                PeerOutput::Closed {
                    generation, root, ..
                } => {
                    self.closed_at.insert(generation, (now.as_millis(), root));
                    effects.push(Effect::Closed { generation });
                }
                PeerOutput::Finished => effects.push(Effect::Finished),
                PeerOutput::Rejected { .. } => {}
            }
        }
        true
    }

    /// What this node's behaviour makes of running `job`.
    pub(super) fn execute(&mut self, job: JobSpec, effects: &mut Vec<Effect>) {
        let id = job.id();
        if let Some(result) = self.results.get(&id) {
            // Finished before a restart: the stored result, never a second run.
            effects.push(Effect::Execute { id, job, run: None });
            effects.push(Effect::Ready(id, result.clone()));
            return;
        }
        let truth = true_outcome(&job);
        let auditing = self
            .peer
            .as_ref()
            .is_some_and(|p| p.pending_audits().contains_key(&id));
        let outcome = match self.behaviour {
            None | Some(Behaviour::Spam | Behaviour::Forge | Behaviour::Replay) => truth,
            Some(Behaviour::Slander) if auditing => perturb(&truth, 999),
            Some(Behaviour::Slander) => truth,
            Some(Behaviour::Equivocate) => truth,
            Some(Behaviour::Wrong) => perturb(&truth, 1 + u64::from(self.index)),
            Some(Behaviour::Collude) => perturb(&truth, 777),
            Some(Behaviour::Withhold) => {
                effects.push(Effect::Execute { id, job, run: None });
                return;
            }
            Some(Behaviour::Copy) => {
                self.waiting_copy.insert(id);
                effects.push(Effect::Execute { id, job, run: None });
                return;
            }
        };
        effects.push(Effect::Execute {
            id,
            job,
            run: Some(outcome),
        });
    }
}
