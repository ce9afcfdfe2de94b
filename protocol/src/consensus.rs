//! Agreement on one generation's closure: Tendermint's algorithm (Buchman, Kwon & Milosevic,
//! *The latest gossip on BFT consensus*, 2018) as a sans-IO state machine. ADR 0003 gives the
//! safety and liveness argument and the assumptions.
//!
//! One [`Instance`] per generation. Voters are the generation's voting roster; anyone else
//! only watches for a decision (a closure with precommits from more than 2/3 of the voters).
//! The instance never reads a clock: `now` is passed in, timeouts are returned as deadlines
//! ([`Instance::next_timeout`]) and fired by [`Instance::tick`]. Whether a closure is valid and
//! what this peer would propose are asked of the caller through [`Env`].
//!
//! Rules, numbered as the lines of Algorithm 1 in the paper:
//! * L22/L28: on the round's proposal in step *propose*, prevote its root if it is valid and
//!   this peer is unlocked, locked on the same root, or the proposal's `valid_round` carries 2/3
//!   prevotes at or above the lock; else prevote nil;
//! * L34/L44/L47: timeouts once 2/3 of any prevotes / precommits are in; 2/3 nil prevotes →
//!   precommit nil;
//! * L36: 2/3 prevotes for a valid proposal's root → lock on it (if still in step *prevote*),
//!   precommit it, remember it as the valid value;
//! * L49: 2/3 precommits for a root whose closure is known, in any round → decide;
//! * L55: `f + 1` voters heard from in a higher round → skip to it.
//!
//! Stalls (ADR 0006): when more than `f` voters are silent the rules above never decide. A
//! voter that holds no precommit for a closure may then sign a *stall* (a [`Step::Stall`]
//! vote) and votes no more in the epoch; with stalls from more voters than a decision can do
//! without, the epoch cannot decide, and [`Instance::next_epoch`] restarts the vote among the
//! voters a creator's `Regenesis` names, at the next epoch's first round. Round `r` belongs to
//! epoch `r / EPOCH_ROUNDS`; an instance takes proposals and votes of its own epoch only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::closure::Closure;
use crate::envelope::{AnySigned, Signed};
use crate::id::{CampaignId, context, hash_canonical};
use crate::identity::{Keypair, PeerKey};
use crate::message::{Proposal, Step, Vote};
use crate::time::Timestamp;

/// What an instance asks of the peer that runs it.
pub trait Env {
    /// Whether `closure` is valid for this peer now (ADR 0003, "validity at a peer").
    fn valid(&mut self, closure: &Closure) -> bool;
    /// The closure this peer would propose now, if it has one (every job settled or past
    /// its deadline).
    fn build(&mut self) -> Option<Closure>;
}

/// What the instance wants done.
#[derive(Debug, Clone)]
pub enum Action {
    /// Gossip this message (already applied locally).
    Broadcast(AnySigned),
    /// The generation is decided.
    Decided {
        /// The closure.
        closure: Arc<Closure>,
        /// The round it was decided in.
        round: u32,
        /// The voters whose precommits decided it.
        certificate: Vec<PeerKey>,
    },
}

/// Why a consensus message was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not for this instance's campaign or generation.
    WrongInstance,
    /// The signer is not a voter (votes) or not the round's proposer (proposals).
    NotEntitled,
    /// The signer already sent a different message for this slot (equivocation).
    Conflicting,
    /// Already have it.
    Duplicate,
    /// From an epoch this instance is not in: an earlier one (too late to count) or a later
    /// one (the driver holds it until the epoch's `Regenesis` is adopted).
    OtherEpoch,
    /// For a round more than [`MAX_ROUNDS_AHEAD`] above this instance's: a voter could
    /// otherwise make every peer keep a vote for each of a million rounds.
    TooFarAhead,
}

/// Rounds above the current one whose proposals and votes an instance takes. Timeouts grow
/// with the round, so honest voters are never this far apart (round 1,000 comes after about
/// 500,000 base timeouts).
pub const MAX_ROUNDS_AHEAD: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Propose,
    Prevote,
    Precommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Propose(u32),
    Prevote(u32),
    Precommit(u32),
}

type Root = [u8; 32];

pub use crate::message::{EPOCH_ROUNDS, MAX_EPOCHS, epoch_of};

/// The vote on one generation's closure.
#[derive(Debug, Clone)]
pub struct Instance {
    campaign: CampaignId,
    generation: u32,
    /// The epoch voted in (0 until a stall hands the vote to fewer voters).
    epoch: u32,
    /// When this peer started voting in this epoch.
    started_at: Option<Timestamp>,
    /// Voters that signed a stall in this epoch.
    stalls: BTreeSet<PeerKey>,
    voters: Vec<PeerKey>,
    seed: [u8; 32],
    base_timeout_ms: u64,
    round: u32,
    phase: Phase,
    started: bool,
    locked: Option<(u32, Root)>,
    valid: Option<(u32, Root)>,
    decided: Option<Root>,
    /// The last round whose proposer was asked for, and its proposer (ranking the voters
    /// hashes each of them; a ready voter asks on every piece of new evidence).
    proposer_memo: Option<(u32, Option<PeerKey>)>,
    /// Each round's proposal and its closure's root (hashed once: a closure can be large).
    proposals: BTreeMap<u32, (Signed<Proposal>, Root)>,
    proposed: BTreeSet<u32>,
    closures: HashMap<Root, Arc<Closure>>,
    votes: BTreeMap<(u32, Step), BTreeMap<PeerKey, Option<Root>>>,
    heard: BTreeMap<u32, BTreeSet<PeerKey>>,
    messages: Vec<AnySigned>,
    timeouts: Vec<(Timestamp, Timeout)>,
    timeout_set: BTreeSet<(u32, Step)>,
    locked_rounds: BTreeSet<u32>,
    equivocators: BTreeSet<PeerKey>,
    validity: HashMap<Root, bool>,
    /// Whether a proposal or vote was accepted since the last look for a decision (L49):
    /// only those can complete one, and looking tallies every precommit.
    tally_dirty: bool,
    /// This peer's key, to recognise its own proposals and votes when they come back from its
    /// store after a restart: it never signs a second one for the same slot (that would be an
    /// equivocation), and a stored precommit for a root is its lock again.
    me: Option<PeerKey>,
    /// `me` is one of the voters.
    i_vote: bool,
}

impl Instance {
    /// The vote of `generation`, among `voters` (sorted, distinct), seeded by the generation's
    /// seed (it orders proposers), as seen by the peer `me` (`None`: a pure observer).
    pub fn new(
        campaign: CampaignId,
        generation: u32,
        mut voters: Vec<PeerKey>,
        seed: [u8; 32],
        base_timeout_ms: u64,
        me: Option<PeerKey>,
    ) -> Self {
        voters.sort();
        voters.dedup();
        let i_vote = me.is_some_and(|m| voters.binary_search(&m).is_ok());
        Instance {
            campaign,
            generation,
            epoch: 0,
            started_at: None,
            stalls: BTreeSet::new(),
            voters,
            seed,
            base_timeout_ms: base_timeout_ms.max(1),
            round: 0,
            phase: Phase::Propose,
            started: false,
            locked: None,
            valid: None,
            decided: None,
            proposer_memo: None,
            proposals: BTreeMap::new(),
            proposed: BTreeSet::new(),
            closures: HashMap::new(),
            votes: BTreeMap::new(),
            heard: BTreeMap::new(),
            messages: Vec::new(),
            timeouts: Vec::new(),
            timeout_set: BTreeSet::new(),
            locked_rounds: BTreeSet::new(),
            equivocators: BTreeSet::new(),
            tally_dirty: true,
            validity: HashMap::new(),
            me,
            i_vote,
        }
    }

    /// The generation voted on.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The voters.
    pub fn voters(&self) -> &[PeerKey] {
        &self.voters
    }

    /// The current round.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Whether this peer has started voting (it was ready to close the generation).
    pub fn started(&self) -> bool {
        self.started
    }

    /// A diagnostic summary of the current round.
    pub fn summary(&self) -> String {
        let r = self.round;
        let tally = |step| {
            let mut t: BTreeMap<String, usize> = BTreeMap::new();
            if let Some(v) = self.votes.get(&(r, step)) {
                for root in v.values() {
                    *t.entry(root.map_or("nil".into(), |x| format!("{:02x}", x[0])))
                        .or_default() += 1;
                }
            }
            t
        };
        format!(
            "phase {:?} locked {:?} valid {:?} proposal {:?} prevotes {:?} precommits {:?} timeouts {}",
            self.phase,
            self.locked.map(|(r, x)| (r, x[0])),
            self.valid.map(|(r, x)| (r, x[0])),
            self.proposals
                .get(&r)
                .map(|(p, root)| (root[0], p.message().valid_round)),
            tally(Step::Prevote),
            tally(Step::Precommit),
            self.timeouts.len()
        )
    }

    /// The closure proposed in the current round, if any.
    pub fn current_proposal(&self) -> Option<&Closure> {
        self.proposals
            .get(&self.round)
            .map(|(p, _)| &*p.message().closure)
    }

    /// The decided closure root.
    pub fn decided(&self) -> Option<Root> {
        self.decided
    }

    /// The epoch voted in (0 unless a stall handed the vote to fewer voters).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// When this peer started voting in this epoch, if it has.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.started_at
    }

    /// Voters that signed a stall in this epoch.
    pub fn stalls(&self) -> &BTreeSet<PeerKey> {
        &self.stalls
    }

    /// Stalls that prove this epoch cannot decide: more than a decision can do without,
    /// `n − quorum + 1`. Every decision needs `quorum` precommits, so it would need a voter
    /// that stalled, and an honest one never precommits a closure in an epoch it stalled in.
    pub fn stalls_needed(&self) -> usize {
        self.voters.len() + 1 - self.quorum()
    }

    /// How many voters (this peer included) a proposal or vote of this epoch came from.
    pub fn heard_voters(&self) -> usize {
        let mut heard: BTreeSet<&PeerKey> = self.heard.values().flatten().collect();
        heard.extend(&self.stalls);
        heard.len()
    }

    /// Signs this peer's stall, if it may: it votes here, has not decided or stalled, and holds
    /// no precommit for a closure in this epoch (its lock). It votes no more in this epoch.
    pub fn stall(&mut self, key: Option<&Keypair>, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(key) = key else { return out };
        let me = key.public();
        if !self.is_voter(&me)
            || self.decided.is_some()
            || self.stalls.contains(&me)
            || self.locked.is_some()
        {
            return out;
        }
        let vote = Vote {
            campaign: self.campaign,
            generation: self.generation,
            round: self.round,
            step: Step::Stall,
            root: None,
            issued_at: now,
        };
        self.publish(vote, AnySigned::Vote, key, &mut out);
        self.timeouts.clear();
        out
    }

    /// Moves the vote to the next epoch among `voters` (a `Regenesis` the caller checked,
    /// kept in `msg` for peers that sync): its first round, nothing locked, nothing heard.
    /// Proposals and votes of the epoch before are refused from now on.
    pub fn next_epoch(
        &mut self,
        mut voters: Vec<PeerKey>,
        msg: AnySigned,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
    ) -> Vec<Action> {
        voters.sort();
        voters.dedup();
        self.epoch += 1;
        self.i_vote = self.me.is_some_and(|m| voters.binary_search(&m).is_ok());
        self.voters = voters;
        self.round = self.epoch.saturating_mul(EPOCH_ROUNDS);
        self.phase = Phase::Propose;
        self.locked = None;
        self.valid = None;
        self.proposer_memo = None;
        self.proposals.clear();
        self.proposed.clear();
        self.closures.clear();
        self.votes.clear();
        self.heard.clear();
        self.timeouts.clear();
        self.timeout_set.clear();
        self.locked_rounds.clear();
        self.validity.clear();
        self.stalls.clear();
        self.tally_dirty = true;
        self.messages.push(msg);
        let mut out = Vec::new();
        if self.started {
            self.started_at = Some(now);
            let round = self.round;
            self.start_round(round, key, env, now, &mut out);
            self.progress(key, env, now, &mut out);
        }
        out
    }

    /// Voters proven to have signed two different votes for one round and step.
    pub fn equivocators(&self) -> &BTreeSet<PeerKey> {
        &self.equivocators
    }

    /// Every proposal and vote this instance used (what a syncing peer needs).
    pub fn messages(&self) -> &[AnySigned] {
        &self.messages
    }

    /// Most voters that may be Byzantine: `⌊(n − 1) / 3⌋`.
    pub fn f(&self) -> usize {
        self.voters.len().saturating_sub(1) / 3
    }

    /// Votes needed for a quorum: `⌊2n / 3⌋ + 1`.
    pub fn quorum(&self) -> usize {
        2 * self.voters.len() / 3 + 1
    }

    /// The proposer of `round`.
    pub fn proposer(&self, round: u32) -> Option<PeerKey> {
        self.voters
            .iter()
            .max_by_key(|p| hash_canonical(context::PROPOSER, &(&self.seed, round, p)))
            .copied()
    }

    /// [`Instance::proposer`], remembered for the last round asked.
    fn proposer_of(&mut self, round: u32) -> Option<PeerKey> {
        if let Some((r, p)) = self.proposer_memo
            && r == round
        {
            return p;
        }
        let p = self.proposer(round);
        self.proposer_memo = Some((round, p));
        p
    }

    /// Whether new evidence can change what this instance does for this peer (`me`): only a
    /// voter's check of the current round's proposal, or its own proposal when it is ready and
    /// the round is its turn, reads the evidence (votes, timeouts and decisions do not).
    pub fn evidence_matters(&mut self) -> bool {
        let Some(me) = self.me.filter(|_| self.i_vote) else {
            return false;
        };
        if self.decided.is_some() {
            return false;
        }
        let round = self.round;
        self.proposals.contains_key(&round) || (self.started && self.proposer_of(round) == Some(me))
    }

    fn is_voter(&self, p: &PeerKey) -> bool {
        self.voters.binary_search(p).is_ok()
    }

    /// When the next timeout fires, if one is pending.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.timeouts.iter().map(|t| t.0).min()
    }

    /// Forgets cached validity verdicts (call when new evidence arrived).
    pub fn evidence_changed(&mut self) {
        self.validity.retain(|_, v| *v);
    }

    fn timeout_ms(&self, round: u32) -> u64 {
        let k = round.saturating_sub(self.epoch * EPOCH_ROUNDS);
        self.base_timeout_ms.saturating_mul(u64::from(k) + 1)
    }

    /// Starts voting (round 0) once this peer is ready to close the generation.
    pub fn start(
        &mut self,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if self.started || self.decided.is_some() {
            return out;
        }
        self.started = true;
        self.started_at = Some(now);
        let round = self.round;
        self.start_round(round, key, env, now, &mut out);
        self.progress(key, env, now, &mut out);
        out
    }

    /// Feeds a proposal or vote (already verified).
    pub fn handle(
        &mut self,
        msg: AnySigned,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
    ) -> Result<Vec<Action>, Refusal> {
        self.accept(msg)?;
        let mut out = Vec::new();
        self.progress(key, env, now, &mut out);
        Ok(out)
    }

    /// Re-evaluates the rules (after new evidence, or when this peer became ready).
    pub fn poke(
        &mut self,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.progress(key, env, now, &mut out);
        out
    }

    /// Fires due timeouts.
    pub fn tick(
        &mut self,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let (due, later): (Vec<_>, Vec<_>) = self.timeouts.drain(..).partition(|t| t.0 <= now);
        self.timeouts = later;
        for (_, t) in due {
            if self.decided.is_some() {
                break;
            }
            match t {
                Timeout::Propose(r) if r == self.round && self.phase == Phase::Propose => {
                    self.vote(Step::Prevote, None, key, now, &mut out);
                    self.phase = Phase::Prevote;
                }
                Timeout::Prevote(r) if r == self.round && self.phase == Phase::Prevote => {
                    self.vote(Step::Precommit, None, key, now, &mut out);
                    self.phase = Phase::Precommit;
                }
                Timeout::Precommit(r) if r == self.round => {
                    self.start_round(r + 1, key, env, now, &mut out);
                }
                _ => {}
            }
        }
        self.progress(key, env, now, &mut out);
        out
    }

    fn accept(&mut self, msg: AnySigned) -> Result<(), Refusal> {
        match &msg {
            AnySigned::Proposal(p) => {
                let m = p.message();
                if m.campaign != self.campaign || m.closure.generation != self.generation {
                    return Err(Refusal::WrongInstance);
                }
                if epoch_of(m.round) != self.epoch {
                    return Err(Refusal::OtherEpoch);
                }
                if m.round > self.round.saturating_add(MAX_ROUNDS_AHEAD) {
                    return Err(Refusal::TooFarAhead);
                }
                if self.proposer_of(m.round) != Some(p.signer()) {
                    return Err(Refusal::NotEntitled);
                }
                if let Some((existing, _)) = self.proposals.get(&m.round) {
                    if existing.id() == p.id() {
                        return Err(Refusal::Duplicate);
                    }
                    self.equivocators.insert(p.signer());
                    return Err(Refusal::Conflicting);
                }
                let root = Closure::root_shared(&m.closure);
                self.closures
                    .entry(root)
                    .or_insert_with(|| Arc::clone(&m.closure));
                self.heard.entry(m.round).or_default().insert(p.signer());
                self.proposals.insert(m.round, (p.clone(), root));
                if self.me == Some(p.signer()) {
                    // Our own, from before a restart.
                    self.proposed.insert(m.round);
                }
            }
            AnySigned::Vote(v) => {
                let m = v.message();
                if m.campaign != self.campaign || m.generation != self.generation {
                    return Err(Refusal::WrongInstance);
                }
                if epoch_of(m.round) != self.epoch {
                    return Err(Refusal::OtherEpoch);
                }
                if m.round > self.round.saturating_add(MAX_ROUNDS_AHEAD) {
                    return Err(Refusal::TooFarAhead);
                }
                if !self.is_voter(&v.signer()) {
                    return Err(Refusal::NotEntitled);
                }
                if m.step == Step::Stall {
                    self.accept_stall(v.signer())?;
                    self.messages.push(msg);
                    return Ok(());
                }
                if m.step == Step::Precommit
                    && m.root.is_some()
                    && self.stalls.contains(&v.signer())
                {
                    // A precommit for a closure after a stall in the same epoch: provable.
                    self.equivocators.insert(v.signer());
                    return Err(Refusal::Conflicting);
                }
                let slot = self.votes.entry((m.round, m.step)).or_default();
                match slot.get(&v.signer()) {
                    Some(r) if *r == m.root => return Err(Refusal::Duplicate),
                    Some(_) => {
                        self.equivocators.insert(v.signer());
                        return Err(Refusal::Conflicting);
                    }
                    None => {
                        slot.insert(v.signer(), m.root);
                    }
                }
                self.heard.entry(m.round).or_default().insert(v.signer());
                if self.me == Some(v.signer())
                    && m.step == Step::Precommit
                    && let Some(root) = m.root
                    && self.locked.is_none_or(|(r, _)| r < m.round)
                {
                    // Our own precommit, from before a restart: we are locked on it again.
                    self.locked = Some((m.round, root));
                }
            }
            _ => return Err(Refusal::WrongInstance),
        }
        self.messages.push(msg);
        self.tally_dirty = true;
        Ok(())
    }

    /// A stall from voter `p`: recorded, unless `p` precommitted a closure in this epoch
    /// (then it signed two things that cannot both be true, which is recorded instead).
    fn accept_stall(&mut self, p: PeerKey) -> Result<(), Refusal> {
        if self.stalls.contains(&p) {
            return Err(Refusal::Duplicate);
        }
        let precommitted = self.votes.iter().any(|((_, step), v)| {
            *step == Step::Precommit && v.get(&p).is_some_and(Option::is_some)
        });
        if precommitted {
            self.equivocators.insert(p);
            return Err(Refusal::Conflicting);
        }
        self.stalls.insert(p);
        Ok(())
    }

    fn count(&self, round: u32, step: Step, root: Option<Root>) -> usize {
        self.votes
            .get(&(round, step))
            .map_or(0, |s| s.values().filter(|r| **r == root).count())
    }

    fn count_any(&self, round: u32, step: Step) -> usize {
        self.votes.get(&(round, step)).map_or(0, BTreeMap::len)
    }

    fn is_valid(&mut self, root: &Root, env: &mut dyn Env) -> bool {
        if let Some(v) = self.validity.get(root) {
            return *v;
        }
        let Some(c) = self.closures.get(root) else {
            return false;
        };
        let v = env.valid(c);
        self.validity.insert(*root, v);
        v
    }

    fn vote(
        &mut self,
        step: Step,
        root: Option<Root>,
        key: Option<&Keypair>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = key else { return };
        if !self.is_voter(&key.public()) || self.stalls.contains(&key.public()) {
            return;
        }
        if self
            .votes
            .get(&(self.round, step))
            .is_some_and(|s| s.contains_key(&key.public()))
        {
            // Voted in this slot already (before a restart): a second vote would equivocate.
            return;
        }
        let vote = Vote {
            campaign: self.campaign,
            generation: self.generation,
            round: self.round,
            step,
            root,
            issued_at: now,
        };
        self.publish(vote, AnySigned::Vote, key, out);
    }

    /// Signs one of this peer's own messages, applies it, and asks for it to be gossiped.
    fn publish<T: crate::message::Message>(
        &mut self,
        msg: T,
        wrap: fn(Signed<T>) -> AnySigned,
        key: &Keypair,
        out: &mut Vec<Action>,
    ) {
        if let Ok(signed) = Signed::sign_and_encode(msg, key) {
            let msg = wrap(signed);
            if self.accept(msg.clone()).is_ok() {
                out.push(Action::Broadcast(msg));
            }
        }
    }

    fn schedule(&mut self, now: Timestamp, t: Timeout) {
        let r = match t {
            Timeout::Propose(r) | Timeout::Prevote(r) | Timeout::Precommit(r) => r,
        };
        let at = now.saturating_add(core::time::Duration::from_millis(self.timeout_ms(r)));
        self.timeouts.push((at, t));
    }

    fn start_round(
        &mut self,
        round: u32,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.round = round;
        self.phase = Phase::Propose;
        // Validity can change with time (deadlines) as well as evidence: re-ask each round.
        self.validity.retain(|_, v| *v);
        if !self.started {
            return;
        }
        self.try_propose(key, env, now, out);
        self.schedule(now, Timeout::Propose(round));
    }

    fn try_propose(
        &mut self,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = key else { return };
        let round = self.round;
        if self.stalls.contains(&key.public())
            || self.proposed.contains(&round)
            || self.phase != Phase::Propose
            || self.proposer_of(round) != Some(key.public())
        {
            return;
        }
        if self.proposals.contains_key(&round) {
            // Proposed this round already (before a restart).
            self.proposed.insert(round);
            return;
        }
        let (valid_round, closure) = match self.valid {
            Some((vr, root)) => match self.closures.get(&root) {
                Some(c) => (Some(vr), Arc::clone(c)),
                None => return,
            },
            None => match env.build() {
                Some(c) => (None, Arc::new(c)),
                None => return,
            },
        };
        self.proposed.insert(round);
        let proposal = Proposal {
            campaign: self.campaign,
            round,
            valid_round,
            closure,
            issued_at: now,
        };
        self.publish(proposal, AnySigned::Proposal, key, out);
    }

    /// L49: 2/3 (`q`) precommits for a root whose closure is known, in any round: that round,
    /// the root and the certificate. Looked for only when a proposal or vote was accepted
    /// since the last look.
    fn find_decision(&mut self, q: usize) -> Option<(u32, Root, Vec<PeerKey>)> {
        if !std::mem::take(&mut self.tally_dirty) {
            return None;
        }
        for ((round, step), votes) in &self.votes {
            if *step != Step::Precommit {
                continue;
            }
            let mut tally: BTreeMap<Root, Vec<PeerKey>> = BTreeMap::new();
            for (p, r) in votes {
                if let Some(r) = r {
                    tally.entry(*r).or_default().push(*p);
                }
            }
            if let Some((root, certificate)) = tally
                .into_iter()
                .find(|(root, v)| v.len() >= q && self.closures.contains_key(root))
            {
                return Some((*round, root, certificate));
            }
        }
        None
    }

    /// L49: 2/3 precommits for a known closure, in any round → decide. Whether it decided.
    fn decide(&mut self, q: usize, out: &mut Vec<Action>) -> bool {
        let Some((round, root, certificate)) = self.find_decision(q) else {
            return false;
        };
        self.decided = Some(root);
        self.timeouts.clear();
        if let Some(c) = self.closures.get(&root) {
            out.push(Action::Decided {
                closure: Arc::clone(c),
                round,
                certificate,
            });
        }
        true
    }

    /// L55: the highest round above ours that `f + 1` voters were heard from (skip to it).
    fn higher_round(&self) -> Option<u32> {
        let f = self.f();
        self.heard
            .range(self.round + 1..)
            .rev()
            .find(|(_, who)| who.len() > f)
            .map(|(r, _)| *r)
    }

    /// L22 / L28: how to prevote on this round's proposal of `root` (valid round `vr`):
    /// `Some(true)` for it, `Some(false)` nil, `None` not yet (its valid round lacks a polka).
    fn prevote_on(
        &mut self,
        root: Root,
        vr: Option<u32>,
        q: usize,
        env: &mut dyn Env,
    ) -> Option<bool> {
        match vr {
            None => Some(self.is_valid(&root, env) && self.locked.is_none_or(|(_, l)| l == root)),
            Some(vr) if self.count(vr, Step::Prevote, Some(root)) >= q => Some(
                self.is_valid(&root, env)
                    && self.locked.is_none_or(|(lr, l)| lr <= vr || l == root),
            ),
            Some(_) => None,
        }
    }

    fn progress(
        &mut self,
        key: Option<&Keypair>,
        env: &mut dyn Env,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let q = self.quorum();
        loop {
            if self.decided.is_some() {
                return;
            }
            if self.decide(q, out) {
                return;
            }
            let me = key
                .map(Keypair::public)
                .filter(|p| self.is_voter(p) && !self.stalls.contains(p));
            if me.is_none() {
                // Watchers (and a voter that stalled) only decide.
                return;
            }
            if let Some(r) = self.higher_round() {
                self.start_round(r, key, env, now, out);
                continue;
            }
            let round = self.round;
            if self.started {
                self.try_propose(key, env, now, out);
            }
            let proposal = self
                .proposals
                .get(&round)
                .map(|(p, root)| (*root, p.message().valid_round));
            // L22 / L28.
            if self.phase == Phase::Propose
                && let Some((root, vr)) = proposal
                && let Some(yes) = self.prevote_on(root, vr, q, env)
            {
                self.vote(Step::Prevote, yes.then_some(root), key, now, out);
                self.phase = Phase::Prevote;
                continue;
            }
            // L34: 2/3 of any prevotes → prevote timeout.
            if self.phase == Phase::Prevote
                && self.count_any(round, Step::Prevote) >= q
                && self.timeout_set.insert((round, Step::Prevote))
            {
                self.schedule(now, Timeout::Prevote(round));
            }
            // L36: 2/3 prevotes for the valid proposal's root.
            if let Some((root, _)) = proposal
                && self.phase >= Phase::Prevote
                && !self.locked_rounds.contains(&round)
                && self.count(round, Step::Prevote, Some(root)) >= q
                && self.is_valid(&root, env)
            {
                self.locked_rounds.insert(round);
                if self.phase == Phase::Prevote {
                    self.locked = Some((round, root));
                    self.vote(Step::Precommit, Some(root), key, now, out);
                    self.phase = Phase::Precommit;
                }
                self.valid = Some((round, root));
                continue;
            }
            // L44: 2/3 nil prevotes → precommit nil.
            if self.phase == Phase::Prevote && self.count(round, Step::Prevote, None) >= q {
                self.vote(Step::Precommit, None, key, now, out);
                self.phase = Phase::Precommit;
                continue;
            }
            // L47: 2/3 of any precommits → precommit timeout.
            if self.count_any(round, Step::Precommit) >= q
                && self.timeout_set.insert((round, Step::Precommit))
            {
                self.schedule(now, Timeout::Precommit(round));
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const TIMEOUT_MS: u64 = 100;
    const T0: Timestamp = Timestamp(1_000_000);

    fn campaign() -> CampaignId {
        CampaignId([7; 32])
    }

    /// A (job-less) closure of generation 0, told apart by its deadline.
    fn closure(deadline_ms: u64) -> Closure {
        Closure {
            campaign: campaign(),
            generation: 0,
            previous: [0; 32],
            entries: Vec::new(),
            verdicts: Vec::new(),
            members: Vec::new(),
            deadline_ms,
        }
    }

    fn keys() -> Vec<Keypair> {
        (1..=4)
            .map(|i| Keypair::from_secret_bytes([i; 32]))
            .collect()
    }

    /// The vote among `keys` as `me` sees it.
    fn instance(keys: &[Keypair], me: &Keypair) -> Instance {
        Instance::new(
            campaign(),
            0,
            keys.iter().map(Keypair::public).collect(),
            [3; 32],
            TIMEOUT_MS,
            Some(me.public()),
        )
    }

    /// A canned environment: it proposes `proposal` and holds every closure valid except
    /// those in `invalid`.
    struct FakeEnv {
        proposal: Option<Closure>,
        invalid: BTreeSet<Root>,
        asked: usize,
    }

    impl FakeEnv {
        fn proposing(c: &Closure) -> Self {
            FakeEnv {
                proposal: Some(c.clone()),
                invalid: BTreeSet::new(),
                asked: 0,
            }
        }
    }

    impl Env for FakeEnv {
        fn valid(&mut self, closure: &Closure) -> bool {
            self.asked += 1;
            !self.invalid.contains(&closure.root())
        }
        fn build(&mut self) -> Option<Closure> {
            self.proposal.clone()
        }
    }

    fn vote(key: &Keypair, round: u32, step: Step, root: Option<Root>) -> AnySigned {
        let v = Vote {
            campaign: campaign(),
            generation: 0,
            round,
            step,
            root,
            issued_at: T0,
        };
        AnySigned::Vote(Signed::sign_and_encode(v, key).expect("valid vote"))
    }

    fn proposal(key: &Keypair, round: u32, valid_round: Option<u32>, c: &Closure) -> AnySigned {
        let p = Proposal {
            campaign: campaign(),
            round,
            valid_round,
            closure: Arc::new(c.clone()),
            issued_at: T0,
        };
        AnySigned::Proposal(Signed::sign_and_encode(p, key).expect("valid proposal"))
    }

    /// The votes among `actions`, as `(round, step, root)`.
    fn votes(actions: &[Action]) -> Vec<(u32, Step, Option<Root>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast(AnySigned::Vote(v)) => {
                    let m = v.message();
                    Some((m.round, m.step, m.root))
                }
                _ => None,
            })
            .collect()
    }

    fn key_of(keys: &[Keypair], p: PeerKey) -> &Keypair {
        keys.iter().find(|k| k.public() == p).expect("a voter")
    }

    /// A voter that proposes in none of the rounds `0..rounds`.
    fn non_proposer(keys: &[Keypair], rounds: u32) -> &Keypair {
        let probe = instance(keys, &keys[0]);
        let proposers: Vec<PeerKey> = (0..rounds).filter_map(|r| probe.proposer(r)).collect();
        keys.iter()
            .find(|k| !proposers.contains(&k.public()))
            .expect("more voters than rounds")
    }

    /// One voter of a test network.
    struct Node {
        key: Keypair,
        instance: Instance,
        env: FakeEnv,
        /// The round and root it decided.
        decided: Option<(u32, Root)>,
    }

    /// A tiny message bus: every broadcast reaches every other node, time passes only when
    /// told.
    struct Net {
        nodes: Vec<Node>,
        queue: VecDeque<(usize, AnySigned)>,
        now: Timestamp,
    }

    impl Net {
        /// The voters `keys`, of whom those in `silent` say and hear nothing; each proposes `c`.
        fn new(keys: &[Keypair], silent: &[PeerKey], c: &Closure) -> Self {
            let nodes = keys
                .iter()
                .filter(|k| !silent.contains(&k.public()))
                .map(|k| Node {
                    key: k.clone(),
                    instance: instance(keys, k),
                    env: FakeEnv::proposing(c),
                    decided: None,
                })
                .collect();
            Net {
                nodes,
                queue: VecDeque::new(),
                now: T0,
            }
        }

        fn take(&mut self, from: usize, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Broadcast(m) => self.queue.push_back((from, m)),
                    Action::Decided { closure, round, .. } => {
                        self.nodes[from].decided = Some((round, closure.root()));
                    }
                }
            }
        }

        /// Delivers every message, and those they cause, until none is left.
        fn deliver(&mut self) {
            while let Some((from, m)) = self.queue.pop_front() {
                for to in 0..self.nodes.len() {
                    if to == from {
                        continue;
                    }
                    let n = &mut self.nodes[to];
                    let actions = n
                        .instance
                        .handle(m.clone(), Some(&n.key), &mut n.env, self.now)
                        .unwrap_or_default();
                    self.take(to, actions);
                }
            }
        }

        fn start(&mut self) {
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                let actions = n.instance.start(Some(&n.key), &mut n.env, self.now);
                self.take(i, actions);
            }
            self.deliver();
        }

        /// Moves time to the earliest pending timeout and fires it everywhere; false if none.
        fn advance(&mut self) -> bool {
            let Some(next) = self
                .nodes
                .iter()
                .filter_map(|n| n.instance.next_timeout())
                .min()
            else {
                return false;
            };
            self.now = next;
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                let actions = n.instance.tick(Some(&n.key), &mut n.env, self.now);
                self.take(i, actions);
            }
            self.deliver();
            true
        }

        fn all_decided(&self) -> bool {
            self.nodes.iter().all(|n| n.decided.is_some())
        }
    }

    /// A regenesis message standing in for the creator's (the instance keeps it for sync).
    fn regenesis_msg(voters: &[PeerKey]) -> AnySigned {
        let r = crate::message::Regenesis {
            campaign: campaign(),
            generation: 0,
            epoch: 1,
            voters: voters.to_vec(),
            issued_at: T0,
        };
        let key = Keypair::from_secret_bytes([9; 32]);
        AnySigned::Regenesis(Signed::sign_and_encode(r, &key).expect("valid regenesis"))
    }

    #[test]
    fn a_vote_stalled_by_silent_voters_decides_in_the_next_epoch_among_those_that_stalled() {
        // Four voters need three votes; two are silent, so nothing the two live ones do can
        // decide, whatever the timeouts.
        let keys = keys();
        let c = closure(1);
        let silent = [keys[2].public(), keys[3].public()];
        let mut net = Net::new(&keys, &silent, &c);
        net.start();
        for _ in 0..20 {
            net.advance();
        }
        assert!(!net.nodes.iter().any(|n| n.decided.is_some()));
        assert_eq!(net.nodes[0].instance.stalls_needed(), 2);
        for i in 0..net.nodes.len() {
            let n = &mut net.nodes[i];
            let actions = n.instance.stall(Some(&n.key), net.now);
            assert_eq!(votes(&actions).len(), 1, "one stall each");
            assert!(
                votes(&actions)
                    .iter()
                    .all(|v| v.1 == Step::Stall && v.2.is_none())
            );
            net.take(i, actions);
        }
        net.deliver();
        let mut live: Vec<PeerKey> = net.nodes.iter().map(|n| n.key.public()).collect();
        live.sort();
        for n in &net.nodes {
            assert_eq!(
                n.instance.stalls().iter().copied().collect::<Vec<_>>(),
                live
            );
        }
        // A stalled voter votes no more in the epoch.
        let n = &mut net.nodes[0];
        let late = n
            .instance
            .tick(Some(&n.key), &mut n.env, Timestamp(u64::MAX / 2));
        assert!(votes(&late).is_empty(), "voted after its stall: {late:?}");
        // The next epoch: the two that stalled vote alone, from its first round.
        for i in 0..net.nodes.len() {
            let n = &mut net.nodes[i];
            let msg = regenesis_msg(&live);
            let actions =
                n.instance
                    .next_epoch(live.clone(), msg, Some(&n.key), &mut n.env, net.now);
            assert_eq!(n.instance.epoch(), 1);
            assert_eq!(n.instance.round(), EPOCH_ROUNDS);
            net.take(i, actions);
        }
        net.deliver();
        while !net.all_decided() && net.advance() {}
        for n in &net.nodes {
            let (round, root) = n.decided.expect("decided in the next epoch");
            assert_eq!(root, c.root());
            assert_eq!(epoch_of(round), 1);
        }
    }

    #[test]
    fn a_locked_voter_does_not_stall_and_a_closure_precommit_beside_a_stall_is_caught() {
        let keys = keys();
        let c = closure(1);
        let me = &keys[0];
        let mut i = instance(&keys, me);
        let mut env = FakeEnv::proposing(&c);
        i.start(Some(me), &mut env, T0);
        // Locked: a polka for the proposal of round 0 makes it precommit (and lock).
        let proposer = key_of(&keys, i.proposer(0).expect("voters"));
        if proposer.public() != me.public() {
            let _ = i.handle(proposal(proposer, 0, None, &c), Some(me), &mut env, T0);
        }
        for k in &keys[1..3] {
            let _ = i.handle(
                vote(k, 0, Step::Prevote, Some(c.root())),
                Some(me),
                &mut env,
                T0,
            );
        }
        assert!(i.locked.is_some(), "{}", i.summary());
        assert!(
            i.stall(Some(me), T0).is_empty(),
            "a locked voter signed a stall"
        );
        // Another voter precommits a closure, then stalls: both signed, so it is caught.
        let other = &keys[1];
        let _ = i.handle(
            vote(other, 0, Step::Precommit, Some(c.root())),
            Some(me),
            &mut env,
            T0,
        );
        let stall = vote(other, 0, Step::Stall, None);
        assert_eq!(
            i.handle(stall, Some(me), &mut env, T0).err(),
            Some(Refusal::Conflicting)
        );
        assert!(i.equivocators().contains(&other.public()));
        assert!(i.stalls().is_empty());
        // Nor one a thousand rounds ahead.
        let far = vote(&keys[2], MAX_ROUNDS_AHEAD + 1, Step::Prevote, None);
        assert_eq!(
            i.handle(far, Some(me), &mut env, T0).err(),
            Some(Refusal::TooFarAhead)
        );
        // A vote of a later epoch is not for this instance yet.
        let ahead = vote(&keys[2], EPOCH_ROUNDS, Step::Prevote, None);
        assert_eq!(
            i.handle(ahead, Some(me), &mut env, T0).err(),
            Some(Refusal::OtherEpoch)
        );
    }

    #[test]
    fn four_honest_voters_decide_the_proposal_in_round_zero() {
        let keys = keys();
        let c = closure(1);
        let mut net = Net::new(&keys, &[], &c);
        net.start();
        for n in &net.nodes {
            assert_eq!(n.decided, Some((0, c.root())), "{}", n.instance.summary());
            assert_eq!(n.instance.decided(), Some(c.root()));
        }
        assert_eq!(net.now, T0, "no timeout was needed");
    }

    #[test]
    fn a_silent_proposer_is_replaced_by_the_next_round() {
        let keys = keys();
        let c = closure(1);
        let probe = instance(&keys, &keys[0]);
        let silent = probe.proposer(0).expect("voters");
        // The first round whose proposer speaks.
        let round = (1..)
            .find(|r| probe.proposer(*r) != Some(silent))
            .expect("another proposer");
        let mut net = Net::new(&keys, &[silent], &c);
        net.start();
        assert!(
            net.nodes.iter().all(|n| n.decided.is_none()),
            "nothing is decided without a proposal"
        );
        for _ in 0..20 {
            if net.all_decided() || !net.advance() {
                break;
            }
        }
        for n in &net.nodes {
            assert_eq!(
                n.decided,
                Some((round, c.root())),
                "{}",
                n.instance.summary()
            );
        }
        assert!(net.now > T0, "only timeouts move the vote on");
    }

    #[test]
    fn a_locked_voter_prevotes_nil_until_a_polka_unlocks_it() {
        let keys = keys();
        let probe = instance(&keys, &keys[0]);
        let proposer = |r| key_of(&keys, probe.proposer(r).expect("voters"));
        let v = non_proposer(&keys, 3);
        let others: Vec<&Keypair> = keys.iter().filter(|k| k.public() != v.public()).collect();
        let (x, y) = (closure(1), closure(2));
        let (rx, ry) = (x.root(), y.root());
        let mut env = FakeEnv::proposing(&x);
        let mut i = instance(&keys, v);
        let key = Some(v);
        let now = T0;
        assert!(
            i.start(key, &mut env, now).is_empty(),
            "not its turn to propose"
        );
        // Round 0: x is proposed and gets a polka: v prevotes, locks on and precommits x.
        let a = i.handle(proposal(proposer(0), 0, None, &x), key, &mut env, now);
        assert_eq!(votes(&a.unwrap()), vec![(0, Step::Prevote, Some(rx))]);
        let mut a = Vec::new();
        for o in &others[..2] {
            a.extend(
                i.handle(vote(o, 0, Step::Prevote, Some(rx)), key, &mut env, now)
                    .unwrap(),
            );
        }
        assert_eq!(votes(&a), vec![(0, Step::Precommit, Some(rx))]);
        // The others precommit nil: round 0 times out into round 1.
        for o in &others[..2] {
            i.handle(vote(o, 0, Step::Precommit, None), key, &mut env, now)
                .unwrap();
        }
        let now = i.next_timeout().expect("a precommit timeout");
        let a = i.tick(key, &mut env, now);
        assert!(votes(&a).is_empty());
        assert_eq!(i.round(), 1);
        // Round 1: y is proposed; locked on x, v prevotes nil.
        let a = i.handle(proposal(proposer(1), 1, None, &y), key, &mut env, now);
        assert_eq!(votes(&a.unwrap()), vec![(1, Step::Prevote, None)]);
        // Two others prevote y (no polka yet), then two move to round 2: v follows them.
        for o in &others[..2] {
            i.handle(vote(o, 1, Step::Prevote, Some(ry)), key, &mut env, now)
                .unwrap();
        }
        for o in &others[..2] {
            i.handle(vote(o, 2, Step::Prevote, None), key, &mut env, now)
                .unwrap();
        }
        assert_eq!(i.round(), 2);
        // Round 2 re-proposes y as valid in round 1: without 2/3 prevotes for it there, v
        // stays locked and waits.
        let a = i.handle(proposal(proposer(2), 2, Some(1), &y), key, &mut env, now);
        assert!(votes(&a.unwrap()).is_empty(), "no polka for y yet");
        // The third prevote for y in round 1 completes the polka: v may prevote y.
        let late = vote(others[2], 1, Step::Prevote, Some(ry));
        let a = i.handle(late, key, &mut env, now);
        assert_eq!(votes(&a.unwrap()), vec![(2, Step::Prevote, Some(ry))]);
    }

    #[test]
    fn an_equivocating_voter_or_proposer_is_recorded() {
        let keys = keys();
        let probe = instance(&keys, &keys[0]);
        let p0 = key_of(&keys, probe.proposer(0).expect("voters"));
        let v = non_proposer(&keys, 1);
        let others: Vec<&Keypair> = keys
            .iter()
            .filter(|k| k.public() != v.public() && k.public() != p0.public())
            .collect();
        let (x, y) = (closure(1), closure(2));
        let mut env = FakeEnv::proposing(&x);
        let mut i = instance(&keys, v);
        let key = Some(v);
        // A repeated vote is a duplicate, not an equivocation.
        let honest = vote(others[0], 0, Step::Prevote, Some(x.root()));
        i.handle(honest.clone(), key, &mut env, T0).unwrap();
        assert_eq!(
            i.handle(honest, key, &mut env, T0).unwrap_err(),
            Refusal::Duplicate
        );
        assert!(i.equivocators().is_empty());
        // Two different prevotes for one round: the second is refused and its signer recorded.
        let e = others[1];
        i.handle(vote(e, 0, Step::Prevote, Some(x.root())), key, &mut env, T0)
            .unwrap();
        let second = vote(e, 0, Step::Prevote, Some(y.root()));
        assert_eq!(
            i.handle(second, key, &mut env, T0).unwrap_err(),
            Refusal::Conflicting
        );
        assert_eq!(
            i.equivocators().iter().collect::<Vec<_>>(),
            vec![&e.public()]
        );
        // The same voter's vote in another step is no conflict.
        i.handle(vote(e, 0, Step::Precommit, None), key, &mut env, T0)
            .unwrap();
        // Two different proposals for one round.
        i.handle(proposal(p0, 0, None, &x), key, &mut env, T0)
            .unwrap();
        let other = proposal(p0, 0, None, &y);
        assert_eq!(
            i.handle(other, key, &mut env, T0).unwrap_err(),
            Refusal::Conflicting
        );
        assert!(i.equivocators().contains(&p0.public()));
        assert_eq!(i.equivocators().len(), 2);
        // A non-voter is not entitled to vote.
        let outsider = Keypair::from_secret_bytes([9; 32]);
        let refused = i.handle(vote(&outsider, 0, Step::Prevote, None), key, &mut env, T0);
        assert_eq!(refused.unwrap_err(), Refusal::NotEntitled);
    }

    #[test]
    fn a_proposal_the_env_holds_invalid_gets_a_nil_prevote() {
        let keys = keys();
        let probe = instance(&keys, &keys[0]);
        let p0 = key_of(&keys, probe.proposer(0).expect("voters"));
        let v = non_proposer(&keys, 1);
        let x = closure(1);
        let prevote = |invalid: bool| {
            let mut env = FakeEnv::proposing(&x);
            if invalid {
                env.invalid.insert(x.root());
            }
            let mut i = instance(&keys, v);
            i.start(Some(v), &mut env, T0);
            let a = i.handle(proposal(p0, 0, None, &x), Some(v), &mut env, T0);
            assert!(env.asked > 0, "validity is asked of the env");
            votes(&a.unwrap())
        };
        assert_eq!(prevote(true), vec![(0, Step::Prevote, None)]);
        assert_eq!(prevote(false), vec![(0, Step::Prevote, Some(x.root()))]);
    }
}
