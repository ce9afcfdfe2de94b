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
}

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

/// The vote on one generation's closure.
#[derive(Debug, Clone)]
pub struct Instance {
    campaign: CampaignId,
    generation: u32,
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
        self.base_timeout_ms.saturating_mul(u64::from(round) + 1)
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
                if !self.is_voter(&v.signer()) {
                    return Err(Refusal::NotEntitled);
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
        if !self.is_voter(&key.public()) {
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
        if self.proposed.contains(&round)
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
            // L49: 2/3 precommits for a known closure, any round → decide.
            let mut decision = None;
            let look = std::mem::take(&mut self.tally_dirty);
            for ((round, step), votes) in self.votes.iter().filter(|_| look) {
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
                    decision = Some((*round, root, certificate));
                    break;
                }
            }
            if let Some((round, root, certificate)) = decision {
                self.decided = Some(root);
                self.timeouts.clear();
                if let Some(c) = self.closures.get(&root) {
                    out.push(Action::Decided {
                        closure: Arc::clone(c),
                        round,
                        certificate,
                    });
                }
                return;
            }
            let me = key.map(Keypair::public).filter(|p| self.is_voter(p));
            if me.is_none() {
                // Watchers only decide.
                return;
            }
            // L55: f + 1 voters heard from in a higher round → skip to it.
            let f = self.f();
            if let Some(r) = self
                .heard
                .range(self.round + 1..)
                .rev()
                .find(|(_, who)| who.len() > f)
                .map(|(r, _)| *r)
            {
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
            {
                let decision = match vr {
                    None => Some(
                        self.is_valid(&root, env) && self.locked.is_none_or(|(_, l)| l == root),
                    ),
                    Some(vr) if self.count(vr, Step::Prevote, Some(root)) >= q => Some(
                        self.is_valid(&root, env)
                            && self.locked.is_none_or(|(lr, l)| lr <= vr || l == root),
                    ),
                    Some(_) => None,
                };
                if let Some(yes) = decision {
                    self.vote(Step::Prevote, yes.then_some(root), key, now, out);
                    self.phase = Phase::Prevote;
                    continue;
                }
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
