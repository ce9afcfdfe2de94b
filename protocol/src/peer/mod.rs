//! One participant of one campaign, as a sans-IO state machine: the ledger, job derivation,
//! assignment, commit–reveal of its own results, and the closure vote, wired together.
//!
//! [`Peer::handle`] takes a verified message, a finished job, or a clock tick, and returns what
//! to do: gossip a message, start a job, report a closed generation. The node binary drives one
//! `Peer` per campaign over libp2p; `netsim` drives thousands on a virtual clock.
//!
//! Life of a generation at this peer:
//! 1. derive the generation's jobs ([`crate::derive`]) and register them with the ledger;
//! 2. run the jobs it is eligible for ([`crate::assign`]): its top-`r` ranks first, further
//!    ranks as deadlines pass or when idle (bounded by `max_extra_executors`); claim each;
//! 3. when a job finishes, gossip a commitment; reveal once `q` peers have committed to the job
//!    or the job deadline passed (commit–reveal: nobody can copy a result before committing);
//! 4. once every job has settled (or the void deadline passed), start voting on the closure
//!    ([`crate::consensus`]); on a decision, record it and go to 1 with the next generation.
//!
//! The state is split by concern, each in its own file with its own tests:
//! * `generation`: the current generation (members, jobs, deadlines), the decided closures
//!   and the closure vote, and moving to the next generation on a decision;
//! * `execution`: this peer's own jobs: taking them, commit–reveal of their results,
//!   abandoning them;
//! * `liveness`: who was heard from when, heartbeats, silent members;
//! * `audits`: sampling settled jobs for audit, audits and jury duties, applying verdicts;
//! * `reputation`: agreed results, offences and failed audits, and the assignment weights
//!   they give;
//! * `proposal`: the consensus environment ([`Env`]): building a closure and checking one,
//!   with a typed `ProposalFault`.

mod admission;
mod audits;
mod execution;
mod generation;
mod liveness;
mod proposal;
mod reputation;
mod scheduling;
mod stall;

use scheduling::Board;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::assign::rank;
use crate::audit::PendingAudit;
use crate::closure::Closure;
use crate::consensus::{Action, Env, Instance, Refusal};
use crate::derive::{DerivationCache, DeriveError};
use crate::envelope::{AnySigned, Signed};
use crate::error::{DecodeError, PeerAction};
use crate::id::{CampaignId, JobId, MessageId};
use crate::identity::{Keypair, PeerKey};
use crate::ledger::{Input, Ledger, LedgerConfig, Output};
use crate::message::{AuditReport, JobResult};
use crate::spec::{CampaignSpec, JobSpec};
use crate::time::Timestamp;

use admission::{Admission, Admit};
use audits::Audits;
use execution::Execution;
use generation::{GenerationState, Voting};
use liveness::Liveness;
use proposal::PeerEnv;
use reputation::Reputation;
use stall::StallState;
pub use stall::{REGENESIS_GRACE_TIMEOUTS, STALL_AFTER_TIMEOUTS};
/// Settings of one peer (local choices, not campaign rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Jobs this peer runs at once.
    pub capacity: u16,
    /// Most consensus messages buffered for generations this peer has not reached.
    pub max_future_messages: usize,
    /// Most peers admitted to the members per generation.
    pub max_joins_per_generation: usize,
    /// Most non-members whose heartbeats are held as pending joiners (and most that enter the
    /// pool per generation): bounds what fresh keys can make a campaign keep.
    pub max_pending_joiners: usize,
    /// How often to send a heartbeat while not yet a member (joining), in milliseconds.
    pub join_heartbeat_ms: u64,
    /// Audit mode: re-execute every job sampled for audit that this peer did not execute, before
    /// taking jobs of its own, and report (validators run nodes this way).
    pub audit: bool,
    /// Ledger limits.
    pub ledger: LedgerConfig,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            capacity: 1,
            max_future_messages: 10_000,
            max_joins_per_generation: 64,
            max_pending_joiners: 128,
            join_heartbeat_ms: 5_000,
            audit: false,
            ledger: LedgerConfig::default(),
        }
    }
}

/// What a peer is told.
#[derive(Debug, Clone)]
pub enum PeerInput {
    /// A verified message from the network or from sync.
    Message(AnySigned),
    /// A message from this peer's own store, replayed after a restart (in stored order). It is
    /// taken in exactly like [`PeerInput::Message`] (evidence, proposals, votes, decisions,
    /// generations advancing) but the peer does not act on it: it signs nothing and starts no
    /// job. Acting mid-replay would answer an old state with new messages that conflict with
    /// its own later ones still in the store (a second proposal or vote for the same slot is
    /// an equivocation). Send a [`PeerInput::Tick`] after the last one to resume.
    Replay(AnySigned),
    /// A job this peer was asked to run has finished.
    JobDone {
        /// The job.
        job: JobId,
        /// Its result.
        result: JobResult,
    },
    /// A job this peer was asked to run cannot be run here after all (a blob it needs cannot
    /// be found, the dataset is missing, the host is out of memory): the slot is freed and the
    /// job is not taken again. Its claim stands, so the next-ranked peers take it over as the
    /// deadlines pass, exactly as for a peer that went silent.
    JobAbandoned {
        /// The job.
        job: JobId,
    },
    /// Time passed (call at [`Peer::next_wakeup`] at the latest).
    Tick,
}

/// What a peer asks its driver to do.
#[derive(Debug, Clone)]
pub enum PeerOutput {
    /// Gossip this message to the campaign's topic.
    Broadcast(AnySigned),
    /// Run this job and report [`PeerInput::JobDone`].
    Execute(JobSpec),
    /// A message broke a rule: drop it and act against the forwarder.
    Rejected {
        /// The message.
        id: MessageId,
        /// The rule.
        error: DecodeError,
        /// What to do with the forwarder.
        action: PeerAction,
    },
    /// A generation closed.
    Closed {
        /// The generation.
        generation: u32,
        /// Its closure root.
        root: [u8; 32],
        /// Its jobs (what the closure's entries name), for a driver acting on the results it
        /// settled.
        jobs: Arc<BTreeMap<JobId, JobSpec>>,
    },
    /// The campaign's last generation closed.
    Finished,
}

/// Why a peer could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The campaign spec is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// Jobs cannot be derived from it.
    #[error(transparent)]
    Derive(#[from] DeriveError),
}

/// One participant of one campaign.
#[derive(Debug)]
pub struct Peer {
    /// This peer's signing key.
    key: Keypair,
    /// Its public key (`key.public()`, kept at hand).
    me: PeerKey,
    /// The campaign's rules (its id is the ledger's).
    spec: CampaignSpec,
    /// Local settings.
    config: PeerConfig,
    /// The evidence held on the campaign's jobs: claims, commitments, reveals, audit reports,
    /// heartbeats.
    ledger: Ledger,
    /// The generation being worked on, and the job derivation that leads to the next.
    chain: GenerationState,
    /// The current generation's closure vote and the decided closures before it.
    voting: Voting,
    /// This peer's own jobs: taken, running, committed, revealed.
    exec: Execution,
    /// What this peer has seen of the generation's claims and of each peer's speed.
    board: Board,
    /// Who was heard from in which generation, and this peer's own heartbeats.
    liveness: Liveness,
    /// Whose messages are kept: members, and a bounded pool of pending joiners.
    admission: Admission,
    /// Settled jobs sampled for audit, and the audits and jury duties this peer took.
    audits: Audits,
    /// Agreed results, offences and failed audits per peer, from the closures so far.
    reputation: Reputation,
    /// The latest time passed to [`Peer::handle`].
    last_now: Timestamp,
    /// Handling a [`PeerInput::Replay`]: take the message in, act on nothing.
    replaying: bool,
    /// The campaign's creator (the announcement's signer), if the driver named it: the only
    /// key whose regenesis of a stalled vote counts.
    creator: Option<PeerKey>,
    /// The current generation's stalls, held regeneses and dismissed voters.
    stall: StallState,
}

impl Peer {
    /// A participant of the campaign `spec`, starting at `now`.
    pub fn new(
        spec: CampaignSpec,
        key: Keypair,
        config: PeerConfig,
        now: Timestamp,
    ) -> Result<Self, PeerError> {
        Self::build(spec, key, config, now, None)
    }

    /// Like [`new`](Self::new), sharing job derivation with the other peers of this campaign
    /// that hold `cache` (a simulator running many peers in one process): each generation is
    /// derived once. Results are the same as without it.
    pub fn with_derivation_cache(
        spec: CampaignSpec,
        key: Keypair,
        config: PeerConfig,
        now: Timestamp,
        cache: DerivationCache,
    ) -> Result<Self, PeerError> {
        Self::build(spec, key, config, now, Some(cache))
    }

    fn build(
        spec: CampaignSpec,
        key: Keypair,
        config: PeerConfig,
        now: Timestamp,
        derive_cache: Option<DerivationCache>,
    ) -> Result<Self, PeerError> {
        let chain = GenerationState::first(&spec, now, derive_cache)?;
        let voting = Voting::new(chain.first_instance(&spec, key.public()));
        let mut ledger = Ledger::new(spec.clone(), config.ledger);
        ledger
            .register_generation(Arc::clone(&chain.cur.jobs), now)
            .for_each(drop);
        let admission = Admission::new(key.public(), &chain.cur.members);
        let mut peer = Peer {
            me: key.public(),
            key,
            spec,
            config,
            ledger,
            chain,
            voting,
            exec: Execution::default(),
            board: Board::default(),
            liveness: Liveness::default(),
            admission,
            audits: Audits::default(),
            reputation: Reputation::default(),
            last_now: now,
            replaying: false,
            creator: None,
            stall: StallState::default(),
        };
        peer.chain.recount_settled(&peer.ledger);
        peer.plan_generation();
        Ok(peer)
    }

    /// This peer's key.
    pub fn key(&self) -> PeerKey {
        self.me
    }

    /// The campaign.
    pub fn campaign(&self) -> CampaignId {
        self.ledger.campaign()
    }

    /// The generation being worked on.
    pub fn generation(&self) -> u32 {
        self.chain.cur.number
    }

    /// Whether the last generation has closed.
    pub fn finished(&self) -> bool {
        self.chain.finished
    }

    /// A job of the current generation.
    pub fn current_job(&self, id: &JobId) -> Option<&JobSpec> {
        self.chain.cur.jobs.get(id)
    }

    /// The search's record of the campaign's clients after the closures so far (a federated
    /// campaign's rounds, strikes and bench; empty for other kinds).
    pub fn standings(&self) -> Vec<crate::kinds::ClientStanding> {
        self.chain.derivation.standings()
    }

    /// What the search has counted after the closures so far (a prompt campaign's model
    /// calls, tokens, cache hits and budgets; empty for other kinds).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.chain.derivation.counters()
    }

    /// Every decided closure with its certificate, oldest first.
    pub fn closures(&self) -> &[(Arc<Closure>, Vec<PeerKey>)] {
        &self.voting.closures
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Peers this one has seen sign two different proposals or votes for one slot of a closure
    /// vote (round and step), in any generation so far. An honest peer never does, not even
    /// across a crash and restart (see [`PeerInput::Replay`]).
    pub fn vote_equivocators(&self) -> BTreeSet<PeerKey> {
        self.voting.equivocators()
    }

    /// The members of the current generation.
    pub fn members(&self) -> &[PeerKey] {
        &self.chain.cur.members
    }

    /// Agreed results per peer over all closures (the reputation that weights assignment).
    pub fn agreed_results(&self) -> &BTreeMap<PeerKey, u64> {
        &self.reputation.agreed
    }

    /// Offences recorded against each peer over all closures: dissents and failed audits.
    pub fn offences(&self) -> &BTreeMap<PeerKey, u64> {
        &self.reputation.offences
    }

    /// Failed audits per peer over all closures.
    pub fn failed_audits(&self) -> &BTreeMap<PeerKey, u64> {
        &self.reputation.failed_audits
    }

    /// Settled jobs sampled for audit and not judged yet.
    pub fn pending_audits(&self) -> &BTreeMap<JobId, PendingAudit> {
        &self.audits.pending
    }

    /// Audits and jury duties this peer has taken on (running or reported).
    pub fn audits_taken(&self) -> &BTreeSet<JobId> {
        &self.audits.taken
    }

    /// For every settled job (when the campaign audits): the rate it was sampled at, in parts
    /// per million, and whether it was sampled.
    pub fn audit_draws(&self) -> &BTreeMap<JobId, (u32, bool)> {
        &self.audits.draws
    }

    /// A one-line summary of where this peer stands (for diagnostics).
    pub fn status_line(&mut self) -> String {
        let cur = &self.chain.cur;
        let settled = cur
            .jobs
            .keys()
            .filter(|j| self.ledger.settlement(j).is_some())
            .count();
        let unsettled: Vec<String> = cur
            .jobs
            .keys()
            .filter(|j| self.ledger.settlement(j).is_none())
            .map(|j| {
                format!(
                    "{}(c{} r{})",
                    j.short(),
                    self.ledger.commitment_count(j),
                    self.ledger.executor_results(j).len()
                )
            })
            .collect();
        let now = self.last_now;
        let built = {
            let (instance, mut env) = self.split(now);
            let theirs = instance
                .current_proposal()
                .map(|c| env.check(c).map_err(|fault| fault.to_string()));
            env.build().map(|c| {
                let ok = env.valid(&c);
                (c.root()[0], ok, theirs)
            })
        };
        let instance = &self.voting.instance;
        format!(
            "{} built {:?} proposer {:?} gen {} round {} started {} settled {}/{} running {} own {:?} unsettled {:?}",
            instance.summary(),
            built,
            instance.proposer(instance.round()).map(|p| p.short()),
            self.chain.cur.number,
            instance.round(),
            instance.started(),
            settled,
            self.chain.cur.jobs.len(),
            self.exec.running.len(),
            self.exec.own_summary(),
            unsettled
        )
    }

    /// Jobs (audits included) this peer is running.
    pub fn running(&self) -> usize {
        self.exec.running.len() + self.audits.running.len()
    }

    /// Every message a syncing peer needs from this one: the consensus history and the
    /// current generation's votes (ledger evidence is synced by the driver from its store).
    pub fn consensus_messages(&self) -> impl Iterator<Item = &AnySigned> {
        self.voting
            .history
            .iter()
            .chain(self.voting.instance.messages())
    }

    /// The voters of the current generation.
    pub fn voters(&self) -> &[PeerKey] {
        self.voting.instance.voters()
    }

    /// For each job of the current generation, the members that may run it as owners or extra
    /// executors: the first `r + max_extra` of its ranking (reputation-weighted, as this peer
    /// assigns). A driver that routes a job's evidence by interest (sharded topics: the
    /// simulator's) sends it to these and the voters; a peer ranked deeper that steals the job
    /// (see `steal_bound`) is not on that route, so its own result may go unrevealed there.
    pub fn ranked_executors(&self) -> Vec<(JobId, Vec<PeerKey>)> {
        let bound = self.executor_bound();
        let w = self.reputation.weights();
        let cur = &self.chain.cur;
        cur.jobs
            .iter()
            .map(|(id, spec)| {
                let mut top = match spec.payload.pinned() {
                    Some(p) => vec![*p],
                    None => rank(id, &cur.seed, &cur.members, &w),
                };
                top.truncate(bound);
                (*id, top)
            })
            .collect()
    }

    /// When the peer next needs a [`PeerInput::Tick`] (deadlines, timeouts, heartbeats).
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if self.chain.finished {
            return None;
        }
        // Called after every input: no allocation.
        let mut t = self.voting.instance.next_timeout();
        let mut earliest = |x: Timestamp| t = Some(t.map_or(x, |y| y.min(x)));
        // Deadlines: each passing widens eligibility, lets reveals go out, or voids jobs. The
        // first one still ahead is the next.
        let cur = &self.chain.cur;
        let d = cur.deadline().max(1);
        let extra = u64::from(self.spec.schedule.max_extra_executors);
        let elapsed = self.last_now.saturating_since(cur.started_at).as_millis() as u64;
        let k = elapsed / d + 1;
        if k <= cur.plan.last_due + extra + 1 {
            earliest(
                cur.started_at
                    .saturating_add(Duration::from_millis(d.saturating_mul(k))),
            );
        }
        if !self.is_member() {
            earliest(self.join_heartbeat_due());
        }
        if let Some(at) = self.stall_wakeup() {
            earliest(at);
        }
        t
    }

    /// How many ranks may ever run a job: `r + max_extra`.
    fn executor_bound(&self) -> usize {
        usize::from(self.spec.redundancy) + usize::from(self.spec.schedule.max_extra_executors)
    }

    /// How far down a job's ranking a peer may be to take one of its `r` places from owners
    /// that would reach it late (ADR 0007): twice [`Peer::executor_bound`]. Stealing adds no
    /// executor, so it may reach deeper than replication; deep enough that a peer several
    /// times faster than the others can keep busy in a generation without history. A campaign
    /// without extra executors (`max_extra_executors = 0`) pins every job to its `r` ranked
    /// owners: nobody else runs it, stolen or not, so colluders cannot reach jobs they are not
    /// ranked for by being fast.
    fn steal_bound(&self) -> usize {
        if self.spec.schedule.max_extra_executors == 0 {
            self.executor_bound()
        } else {
            2 * self.executor_bound()
        }
    }

    fn is_member(&self) -> bool {
        self.chain.cur.members.binary_search(&self.me).is_ok()
    }

    /// Whether the campaign keeps `m` (see `admission`); a pending joiner displaced from the
    /// pool loses its heartbeat here.
    fn admit(&mut self, m: &AnySigned) -> Result<(), crate::error::Unwanted> {
        let (generation, finished) = (self.chain.cur.number, self.chain.finished);
        let max = self.config.max_pending_joiners;
        if let Admit::Displace(p) = self.admission.screen(m, generation, finished, max)? {
            self.ledger.forget_heartbeat(&p);
        }
        Ok(())
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: PeerInput, now: Timestamp) -> Vec<PeerOutput> {
        let mut out = Vec::new();
        self.last_now = self.last_now.max(now);
        if let PeerInput::Message(m) | PeerInput::Replay(m) = &input
            && let Err(reason) = self.admit(m)
        {
            let error = DecodeError::Unwanted {
                kind: m.kind(),
                reason,
            };
            out.push(PeerOutput::Rejected {
                id: m.id(),
                action: error.peer_action(),
                error,
            });
            return out;
        }
        if self.chain.finished {
            if let PeerInput::Message(m) | PeerInput::Replay(m) = input {
                // Still record evidence (late reveals, audits) so scores stay complete.
                self.ingest_evidence(m, now, &mut out);
            }
            return out;
        }
        match input {
            PeerInput::Message(m) => self.on_message(m, now, &mut out),
            PeerInput::Replay(m) => {
                self.replaying = true;
                self.on_message(m, now, &mut out);
                self.replaying = false;
                return out;
            }
            PeerInput::JobDone { job, result } if self.audits.running.remove(&job) => {
                let report = AuditReport {
                    campaign: self.campaign(),
                    job,
                    result,
                    issued_at: now,
                };
                self.sign_and_send(report, AnySigned::AuditReport, now, &mut out);
                self.voting.instance.evidence_changed();
            }
            PeerInput::JobDone { job, result } => {
                self.exec.reveal_check = true;
                self.on_job_done(job, result, now, &mut out);
            }
            PeerInput::JobAbandoned { job } => {
                // What was taken stays taken, so it is not picked up again.
                self.exec.running.remove(&job);
                self.audits.running.remove(&job);
            }
            PeerInput::Tick => {
                self.exec.reveal_check = true;
                self.vote_with(now, &mut out, |i, key, env| i.tick(key, env, now));
            }
        }
        self.step(now, &mut out);
        out
    }

    /// Acts on the current state, one phase after the other: reveal own results that are
    /// ready, send a heartbeat if due, take audits and jury duties, take jobs, and start the
    /// closure vote once the generation is ready to close.
    fn step(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        if self.chain.finished {
            return;
        }
        let elapsed = now.saturating_since(self.chain.cur.started_at).as_millis() as u64;
        let past_deadline = elapsed >= self.chain.cur.deadline();
        self.reveal_ready(now, elapsed, out);
        self.heartbeat_if_due(now, past_deadline, out);
        self.take_audits_phase(out);
        self.take_jobs(now, elapsed, out);
        self.start_vote_if_ready(now, out);
        self.stall_phase(now, out);
    }

    /// Runs one step of the closure vote with this peer's key (none while replaying: then it
    /// only watches) and environment, and carries out what it asks.
    fn vote_with(
        &mut self,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
        step: impl FnOnce(&mut Instance, Option<&Keypair>, &mut PeerEnv<'_>) -> Vec<Action>,
    ) {
        let replaying = self.replaying;
        let actions = {
            let (instance, mut env) = self.split(now);
            let key = (!replaying).then_some(env.key);
            step(instance, key, &mut env)
        };
        self.apply(actions, now, out);
    }

    /// The closure vote and the environment it asks, borrowed side by side.
    fn split(&mut self, now: Timestamp) -> (&mut Instance, PeerEnv<'_>) {
        let void_at = self.chain.void_deadline(&self.spec);
        let env = PeerEnv {
            key: &self.key,
            ledger: &self.ledger,
            cur: &self.chain.cur,
            spec: &self.spec,
            pending: &self.audits.pending,
            reputation: &self.reputation,
            epilogue: self.chain.epilogue,
            liveness: &self.liveness,
            max_joins: self.config.max_joins_per_generation,
            dismissed: &self.stall.dismissed,
            now,
            void_at,
        };
        (&mut self.voting.instance, env)
    }

    /// Carries out the closure vote's actions (a decision ends the list: the instance that
    /// asked for the rest is gone).
    fn apply(&mut self, actions: Vec<Action>, now: Timestamp, out: &mut Vec<PeerOutput>) {
        for a in actions {
            match a {
                Action::Broadcast(m) => out.push(PeerOutput::Broadcast(m)),
                Action::Decided {
                    closure,
                    certificate,
                    ..
                } => {
                    self.on_decided(closure, certificate, now, out);
                    return;
                }
            }
        }
    }

    /// Takes evidence into the ledger; whether it changed anything there.
    fn ingest_evidence(&mut self, m: AnySigned, now: Timestamp, out: &mut Vec<PeerOutput>) -> bool {
        if let AnySigned::Commitment(c) = &m
            && self.exec.own.contains_key(&c.message().job)
        {
            self.exec.reveal_check = true;
        }
        let mut changed = false;
        let kind = m.kind();
        let seen = self.board_event(&m);
        let mut accepted = false;
        let mut newly_settled = Vec::new();
        for o in self.ledger.handle(Input::Message(m), now) {
            match o {
                Output::Rejected { id, error, action } => {
                    out.push(PeerOutput::Rejected { id, error, action });
                }
                Output::Settled { job, .. } => {
                    if self.chain.cur.jobs.contains_key(&job) && self.chain.settled_now.insert(job)
                    {
                        newly_settled.push(job);
                    }
                    changed = true;
                }
                Output::Unsettled { job } => {
                    self.chain.settled_now.remove(&job);
                    changed = true;
                }
                Output::Accepted { .. } => {
                    accepted = true;
                    changed = true;
                }
                Output::Equivocation(_) => changed = true,
                Output::Ignored { id, reason } if reason.keeps_nothing() => {
                    out.push(unused(id, kind));
                }
                Output::Ignored { .. } | Output::AuditMismatch { .. } => {}
            }
        }
        if accepted && let Some(seen) = &seen {
            self.board_accepted(seen, now);
        }
        for job in newly_settled {
            self.calibrate(&job);
        }
        changed
    }

    /// A verified message: evidence goes to the ledger, proposals and votes to the closure vote
    /// of their generation (held back if it is still ahead).
    fn on_message(&mut self, m: AnySigned, now: Timestamp, out: &mut Vec<PeerOutput>) {
        self.liveness.heard(&m.signer(), self.chain.cur.number);
        let slot = match &m {
            AnySigned::Proposal(p) => Some((p.message().campaign, p.message().closure.generation)),
            AnySigned::Vote(v) => Some((v.message().campaign, v.message().generation)),
            AnySigned::Regenesis(r) => Some((r.message().campaign, r.message().generation)),
            _ => None,
        };
        let Some((campaign, generation)) = slot else {
            // Evidence for the ledger; new evidence may make a proposal valid.
            if self.ingest_evidence(m, now, out) {
                self.voting.instance.evidence_changed();
                if self.voting.instance.evidence_matters() {
                    self.vote_with(now, out, |i, key, env| i.poke(key, env, now));
                }
            }
            return;
        };
        if campaign != self.campaign() {
            let error = DecodeError::WrongCampaign {
                expected: self.campaign(),
                found: campaign,
            };
            out.push(PeerOutput::Rejected {
                id: m.id(),
                action: error.peer_action(),
                error,
            });
            return;
        }
        if generation > self.chain.cur.number {
            if self.voting.future.len() < self.config.max_future_messages {
                self.voting.future.push_back(m);
            } else {
                out.push(unused(m.id(), m.kind()));
            }
            return;
        }
        if generation != self.chain.cur.number {
            // A decided generation: its closure and certificate are final.
            out.push(unused(m.id(), m.kind()));
            return;
        }
        if let AnySigned::Regenesis(r) = m {
            self.on_regenesis(r, now, out);
            return;
        }
        if self.hold_if_ahead(&m, out) {
            return;
        }
        let stall =
            matches!(&m, AnySigned::Vote(v) if v.message().step == crate::message::Step::Stall);
        let (id, kind) = (m.id(), m.kind());
        let mut refused = None;
        self.vote_with(now, out, |i, key, env| {
            i.handle(m, key, env, now).unwrap_or_else(|r| {
                refused = Some(r);
                Vec::new()
            })
        });
        // A conflicting one is kept: it proves an equivocation.
        if matches!(
            refused,
            Some(
                Refusal::Duplicate
                    | Refusal::NotEntitled
                    | Refusal::OtherEpoch
                    | Refusal::TooFarAhead
            )
        ) {
            out.push(unused(id, kind));
        }
        if stall {
            self.retry_pending_regeneses(now, out);
        }
    }

    /// Signs one of this peer's own messages, takes it into the ledger and gossips it.
    fn sign_and_send<T: crate::message::Message>(
        &mut self,
        msg: T,
        wrap: fn(Signed<T>) -> AnySigned,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        if let Ok(s) = Signed::sign_and_encode(msg, &self.key) {
            self.liveness.spoke = true;
            let any = wrap(s);
            self.ingest_evidence(any.clone(), now, out);
            out.push(PeerOutput::Broadcast(any));
        }
    }
}

/// The verdict on a message the campaign takes nothing from: not stored, not forwarded, no
/// blame.
fn unused(id: MessageId, kind: crate::message::Kind) -> PeerOutput {
    let error = DecodeError::Unwanted {
        kind,
        reason: crate::error::Unwanted::Unused,
    };
    PeerOutput::Rejected {
        id,
        action: error.peer_action(),
        error,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::tests::sample_spec;

    /// The jobs `out` asks to run.
    pub(crate) fn executed(out: &[PeerOutput]) -> Vec<JobId> {
        out.iter()
            .filter_map(|o| match o {
                PeerOutput::Execute(j) => Some(j.id()),
                _ => None,
            })
            .collect()
    }

    /// A campaign run by one peer alone (key `[1; 32]`), with redundancy `r` and quorum `q`,
    /// and that peer at the campaign's start.
    pub(crate) fn solo(r: u8, q: u8, capacity: u16) -> (Peer, Timestamp) {
        let key = Keypair::from_secret_bytes([1; 32]);
        let mut spec = sample_spec();
        spec.redundancy = r;
        spec.quorum = q;
        spec.roster = vec![key.public()];
        let config = PeerConfig {
            capacity,
            ..PeerConfig::default()
        };
        let now = Timestamp(spec.created_at.0 + 1);
        (Peer::new(spec, key, config, now).expect("valid"), now)
    }

    /// Whether `out` says the message `id` adds nothing.
    fn is_unused(out: &[PeerOutput], id: MessageId) -> bool {
        out.iter().any(|o| {
            matches!(o, PeerOutput::Rejected {
                id: i,
                error: DecodeError::Unwanted { reason: crate::error::Unwanted::Unused, .. },
                ..
            } if *i == id)
        })
    }

    #[test]
    fn copies_and_votes_for_decided_generations_are_marked_unused() {
        use crate::message::{Claim, Step, Vote};
        let (mut peer, now) = solo(1, 1, 1);
        let key = Keypair::from_secret_bytes([1; 32]);
        let job = executed(&peer.handle(PeerInput::Tick, now))[0];
        // The peer claimed the job itself: a second claim with another timestamp is a copy.
        let claim = Claim {
            campaign: peer.campaign(),
            job,
            slots: 1,
            job_ms: 0,
            issued_at: Timestamp(now.0 + 5),
        };
        let copy = AnySigned::Claim(Signed::sign_and_encode(claim, &key).expect("valid"));
        let out = peer.handle(PeerInput::Message(copy.clone()), now);
        assert!(is_unused(&out, copy.id()), "{out:?}");
        // Generation 0 closes (void); a vote for it afterwards is not needed by anyone.
        let void_at = peer.chain.void_deadline(&peer.spec);
        peer.handle(PeerInput::Tick, void_at);
        assert_eq!(peer.generation(), 1);
        let vote = Vote {
            campaign: peer.campaign(),
            generation: 0,
            round: 7,
            step: Step::Prevote,
            root: None,
            issued_at: void_at,
        };
        let late = AnySigned::Vote(Signed::sign_and_encode(vote, &key).expect("valid"));
        let out = peer.handle(PeerInput::Message(late.clone()), void_at);
        assert!(is_unused(&out, late.id()), "{out:?}");
        // A vote for the current generation from a voter is used.
        let vote = Vote {
            campaign: peer.campaign(),
            generation: 1,
            round: 0,
            step: Step::Prevote,
            root: None,
            issued_at: void_at,
        };
        let current = AnySigned::Vote(Signed::sign_and_encode(vote, &key).expect("valid"));
        let out = peer.handle(PeerInput::Message(current.clone()), void_at);
        assert!(!is_unused(&out, current.id()), "{out:?}");
    }

    #[test]
    fn an_abandoned_job_frees_its_slot_and_is_not_taken_again() {
        let (mut peer, now) = solo(1, 1, 1);
        let first = executed(&peer.handle(PeerInput::Tick, now));
        assert_eq!(first.len(), 1, "one slot, one job");
        assert!(
            executed(&peer.handle(PeerInput::Tick, now)).is_empty(),
            "the slot is held while the job runs"
        );
        let next = executed(&peer.handle(PeerInput::JobAbandoned { job: first[0] }, now));
        assert_eq!(next.len(), 1, "the freed slot takes another job");
        assert_ne!(next[0], first[0], "the abandoned job is not taken again");
        assert_eq!(peer.running(), 1);
    }
}
