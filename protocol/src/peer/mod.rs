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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::agreement::settle_digested;
use crate::assign::{eligible, position_below, rank, voters, weight};
use crate::audit::{self, PendingAudit, Verdict, judge};
use crate::closure::{Closure, Entry, credited, generation_seed, lower_median, next_deadline};
use crate::consensus::{Action, Env, Instance};
use crate::derive::{Derivation, DerivationCache, DeriveError};
use crate::envelope::{AnySigned, Signed};
use crate::error::{DecodeError, PeerAction};
use crate::id::{CampaignId, JobId, MessageId, context, hash_canonical};
use crate::identity::{Keypair, PeerKey};
use crate::ledger::{Input, Ledger, LedgerConfig, Output};
use crate::message::{
    AuditReport, Claim, Commitment, Heartbeat, JobResult, Reveal, commitment_digest,
};
use crate::spec::{CampaignSpec, JobSpec};
use crate::time::Timestamp;

/// Settings of one peer (local choices, not campaign rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Jobs this peer runs at once.
    pub capacity: u16,
    /// Most consensus messages buffered for generations this peer has not reached.
    pub max_future_messages: usize,
    /// Most peers admitted to the members per generation.
    pub max_joins_per_generation: usize,
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

#[derive(Debug, Clone)]
struct OwnJob {
    result: JobResult,
    salt: [u8; 32],
    revealed: bool,
}

/// The state of the current generation that closure validation needs.
#[derive(Debug, Clone)]
struct Generation {
    number: u32,
    seed: [u8; 32],
    previous: [u8; 32],
    started_at: Timestamp,
    deadline_ms: u64,
    members: Members,
    /// Shared with the derivation (and, in a simulator, with every peer).
    jobs: Arc<BTreeMap<JobId, JobSpec>>,
}

/// A generation's members (sorted): the spec's roster in generation 0, later the previous
/// closure's list, shared with the closure rather than copied (at 10,000 members a copy per
/// peer is 320 KB).
#[derive(Debug, Clone)]
enum Members {
    Roster(Vec<PeerKey>),
    Closure(Arc<Closure>),
}

impl std::ops::Deref for Members {
    type Target = [PeerKey];
    fn deref(&self) -> &[PeerKey] {
        match self {
            Members::Roster(v) => v,
            Members::Closure(c) => &c.members,
        }
    }
}

/// One participant of one campaign.
#[derive(Debug)]
pub struct Peer {
    key: Keypair,
    me: PeerKey,
    spec: CampaignSpec,
    campaign: CampaignId,
    config: PeerConfig,
    ledger: Ledger,
    /// Shared with other peers through a [`DerivationCache`] (copied on write).
    derivation: Arc<Derivation>,
    cur: Generation,
    instance: Instance,
    closures: Vec<(Arc<Closure>, Vec<PeerKey>)>,
    history: Vec<AnySigned>,
    running: BTreeSet<JobId>,
    taken: BTreeSet<JobId>,
    own: BTreeMap<JobId, OwnJob>,
    future: VecDeque<AnySigned>,
    agreed: BTreeMap<PeerKey, u64>,
    offences: BTreeMap<PeerKey, u64>,
    /// Audits failed per peer (as an overturned executor or a contradicted auditor).
    failed_audits: BTreeMap<PeerKey, u64>,
    /// Settled jobs sampled for audit that have no verdict yet.
    pending: BTreeMap<JobId, PendingAudit>,
    /// Every settled job's audit rate and whether it was sampled.
    audit_draws: BTreeMap<JobId, (u32, bool)>,
    /// Audits and jury duties this peer took (running or reported).
    audits_taken: BTreeSet<JobId>,
    /// Audits and jury duties running.
    auditing: BTreeSet<JobId>,
    /// The job-less generation after the last one, in which outstanding audits are judged.
    epilogue: bool,
    /// The generation in which a message signed by each peer last reached this one, by
    /// [`seen_key`].
    last_seen: HashMap<u64, u32>,
    /// Whether this peer sent anything in the current generation.
    spoke: bool,
    last_heartbeat: Option<Timestamp>,
    /// Heartbeats sent in generation `.0` (a joiner's back-off).
    heartbeats_sent: (u32, u32),
    last_now: Timestamp,
    /// The jobs of the generation this peer may ever run (rank below `r + max_extra`), as
    /// `(rank, index, job)` in that order; computed once per generation.
    my_jobs: Option<Vec<(usize, u32, JobId)>>,
    /// The current generation's jobs that are settled in the ledger, kept up to date from its
    /// outputs so that "is every job settled?" is not a scan of the generation per message.
    settled_now: HashSet<JobId>,
    /// Shared with other peers of the campaign in this process (simulators), if set.
    derive_cache: Option<DerivationCache>,
    finished: bool,
    /// Handling a [`PeerInput::Replay`]: take the message in, act on nothing.
    replaying: bool,
    /// Whether an own job may have become ready to reveal since the last look: a commitment
    /// on one arrived, one finished, or time passed (its deadline). Looking asks the ledger
    /// about every unrevealed own job, too dear to do for every message.
    reveal_check: bool,
    /// Voters proven to have signed two different proposals or votes for one slot in the
    /// closure votes of earlier generations (the current one's are in `instance`).
    vote_equivocators: BTreeSet<PeerKey>,
}

/// The assignment weight of each peer, from the agreed results and offences recorded in the
/// closures so far.
fn reputation<'a>(
    agreed: &'a BTreeMap<PeerKey, u64>,
    offences: &'a BTreeMap<PeerKey, u64>,
) -> impl Fn(&PeerKey) -> u64 + 'a {
    |p| {
        weight(
            agreed.get(p).copied().unwrap_or(0),
            offences.get(p).copied().unwrap_or(0),
        )
    }
}

/// Whether `p`'s audit reports count: a member (`members` sorted) that never failed an audit.
fn may_report(members: &[PeerKey], failed_audits: &BTreeMap<PeerKey, u64>, p: &PeerKey) -> bool {
    members.binary_search(p).is_ok() && !failed_audits.contains_key(p)
}

/// A peer's key in `last_seen`: its first 8 bytes. Every message updates the map, and a
/// small key keeps it small; matching another key's 64 bits takes some 2^64 tries of key
/// generation, and would only make the two peers share a liveness signal.
fn seen_key(p: &PeerKey) -> u64 {
    let b = p.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
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
        let campaign = spec.id();
        let derivation = match &derive_cache {
            Some(cache) => {
                cache.validate(&spec)?;
                cache.start(&spec)?
            }
            None => {
                spec.validate()?;
                let mut d = Derivation::new(&spec)?;
                d.generation_zero();
                Arc::new(d)
            }
        };
        let jobs = derivation.jobs_by_id();
        let seed = generation_seed(&campaign, 0, &[0; 32]);
        let members = spec.roster.clone();
        let instance = Instance::new(
            campaign,
            0,
            voters(&members, &seed),
            seed,
            spec.schedule.round_timeout_ms,
            Some(key.public()),
        );
        let mut ledger = Ledger::new(spec.clone(), config.ledger);
        ledger
            .register_generation(Arc::clone(&jobs), now)
            .for_each(drop);
        let mut peer = Peer {
            me: key.public(),
            key,
            campaign,
            config,
            ledger,
            derivation,
            cur: Generation {
                number: 0,
                seed,
                previous: [0; 32],
                started_at: now,
                deadline_ms: spec.schedule.job_deadline_ms,
                members: Members::Roster(members),
                jobs,
            },
            spec,
            instance,
            closures: Vec::new(),
            history: Vec::new(),
            running: BTreeSet::new(),
            taken: BTreeSet::new(),
            own: BTreeMap::new(),
            future: VecDeque::new(),
            agreed: BTreeMap::new(),
            offences: BTreeMap::new(),
            failed_audits: BTreeMap::new(),
            pending: BTreeMap::new(),
            audit_draws: BTreeMap::new(),
            audits_taken: BTreeSet::new(),
            auditing: BTreeSet::new(),
            epilogue: false,
            replaying: false,
            reveal_check: false,
            vote_equivocators: BTreeSet::new(),
            last_seen: HashMap::new(),
            spoke: false,
            last_heartbeat: None,
            heartbeats_sent: (0, 0),
            last_now: now,
            my_jobs: None,
            settled_now: HashSet::new(),
            derive_cache,
            finished: false,
        };
        peer.recount_settled();
        Ok(peer)
    }

    /// This peer's key.
    pub fn key(&self) -> PeerKey {
        self.me
    }

    /// The campaign.
    pub fn campaign(&self) -> CampaignId {
        self.campaign
    }

    /// The generation being worked on.
    pub fn generation(&self) -> u32 {
        self.cur.number
    }

    /// Whether the last generation has closed.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Every decided closure with its certificate, oldest first.
    pub fn closures(&self) -> &[(Arc<Closure>, Vec<PeerKey>)] {
        &self.closures
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Peers this one has seen sign two different proposals or votes for one slot of a closure
    /// vote (round and step), in any generation so far. An honest peer never does, not even
    /// across a crash and restart (see [`PeerInput::Replay`]).
    pub fn vote_equivocators(&self) -> BTreeSet<PeerKey> {
        let mut all = self.vote_equivocators.clone();
        all.extend(self.instance.equivocators().iter().copied());
        all
    }

    /// The members of the current generation.
    pub fn members(&self) -> &[PeerKey] {
        &self.cur.members
    }

    /// Agreed results per peer over all closures (the reputation that weights assignment).
    pub fn agreed_results(&self) -> &BTreeMap<PeerKey, u64> {
        &self.agreed
    }

    /// Offences recorded against each peer over all closures: dissents and failed audits.
    pub fn offences(&self) -> &BTreeMap<PeerKey, u64> {
        &self.offences
    }

    /// Failed audits per peer over all closures.
    pub fn failed_audits(&self) -> &BTreeMap<PeerKey, u64> {
        &self.failed_audits
    }

    /// Settled jobs sampled for audit and not judged yet.
    pub fn pending_audits(&self) -> &BTreeMap<JobId, PendingAudit> {
        &self.pending
    }

    /// Audits and jury duties this peer has taken on (running or reported).
    pub fn audits_taken(&self) -> &BTreeSet<JobId> {
        &self.audits_taken
    }

    /// For every settled job (when the campaign audits): the rate it was sampled at, in parts
    /// per million, and whether it was sampled.
    pub fn audit_draws(&self) -> &BTreeMap<JobId, (u32, bool)> {
        &self.audit_draws
    }

    /// A one-line summary of where this peer stands (for diagnostics).
    pub fn status_line(&mut self) -> String {
        let settled = self
            .cur
            .jobs
            .keys()
            .filter(|j| self.ledger.settlement(j).is_some())
            .count();
        let unsettled: Vec<String> = self
            .cur
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
            let theirs = instance.current_proposal().map(|c| env.check(c));
            env.build().map(|c| {
                let ok = env.valid(&c);
                (c.root()[0], ok, theirs)
            })
        };
        format!(
            "{} built {:?} proposer {:?} gen {} round {} started {} settled {}/{} running {} own {:?} unsettled {:?}",
            self.instance.summary(),
            built,
            self.instance
                .proposer(self.instance.round())
                .map(|p| p.short()),
            self.cur.number,
            self.instance.round(),
            self.instance.started(),
            settled,
            self.cur.jobs.len(),
            self.running.len(),
            self.own
                .iter()
                .map(|(j, o)| (j.short(), o.revealed))
                .collect::<Vec<_>>(),
            unsettled
        )
    }

    /// Jobs (audits included) this peer is running.
    pub fn running(&self) -> usize {
        self.running.len() + self.auditing.len()
    }

    /// Every message a syncing peer needs from this one: the consensus history and the
    /// current generation's votes (ledger evidence is synced by the driver from its store).
    pub fn consensus_messages(&self) -> impl Iterator<Item = &AnySigned> {
        self.history.iter().chain(self.instance.messages())
    }

    /// How many ranks may ever run a job: `r + max_extra`.
    fn executor_bound(&self) -> usize {
        usize::from(self.spec.redundancy) + usize::from(self.spec.schedule.max_extra_executors)
    }

    /// The voters of the current generation.
    pub fn voters(&self) -> &[PeerKey] {
        self.instance.voters()
    }

    /// For each job of the current generation, the members that may ever run it: the first
    /// `r + max_extra` of its ranking (reputation-weighted, as this peer assigns). A driver that
    /// routes a job's evidence by interest (sharded topics) sends it to these and the voters.
    pub fn ranked_executors(&self) -> Vec<(JobId, Vec<PeerKey>)> {
        let bound = self.executor_bound();
        let w = reputation(&self.agreed, &self.offences);
        self.cur
            .jobs
            .keys()
            .map(|id| {
                let mut top = rank(id, &self.cur.seed, &self.cur.members, &w);
                top.truncate(bound);
                (*id, top)
            })
            .collect()
    }

    /// When the peer next needs a [`PeerInput::Tick`] (deadlines, timeouts, heartbeats).
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if self.finished {
            return None;
        }
        // Called after every input: no allocation.
        let mut t = self.instance.next_timeout();
        let mut earliest = |x: Timestamp| t = Some(t.map_or(x, |y| y.min(x)));
        // Deadlines: each passing widens eligibility, lets reveals go out, or voids jobs. The
        // first one still ahead is the next.
        let d = self.cur.deadline_ms.max(1);
        let extra = u64::from(self.spec.schedule.max_extra_executors);
        if let Some(at) = (1..=extra + 2)
            .map(|k| {
                self.cur
                    .started_at
                    .saturating_add(Duration::from_millis(d.saturating_mul(k)))
            })
            .find(|at| *at > self.last_now)
        {
            earliest(at);
        }
        if !self.is_member() {
            earliest(self.join_heartbeat_due());
        }
        t
    }

    /// When a joiner next announces itself: at once in each generation it enters as a
    /// non-member, then again after 2x, 4x, … (at most 64x) `join_heartbeat_ms` in case the
    /// heartbeat was lost. Members admit every joiner whose heartbeat they hold, however old,
    /// and sync repairs losses, so repeating at a fixed rate only floods the swarm: with a
    /// thousand joiners and a slow generation 0 it was most of the messages.
    fn join_heartbeat_due(&self) -> Timestamp {
        let (generation, sent) = self.heartbeats_sent;
        match self.last_heartbeat {
            Some(last) if generation == self.cur.number && sent > 0 => {
                let backoff = self.config.join_heartbeat_ms << sent.min(6);
                last.saturating_add(Duration::from_millis(backoff))
            }
            _ => Timestamp::ZERO,
        }
    }

    fn is_member(&self) -> bool {
        self.cur.members.binary_search(&self.me).is_ok()
    }

    fn void_deadline(&self) -> Timestamp {
        let k = u64::from(self.spec.schedule.max_extra_executors) + 2;
        self.cur.started_at.saturating_add(Duration::from_millis(
            self.cur.deadline_ms.saturating_mul(k),
        ))
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: PeerInput, now: Timestamp) -> Vec<PeerOutput> {
        let mut out = Vec::new();
        self.last_now = self.last_now.max(now);
        if self.finished {
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
            PeerInput::JobDone { job, result } if self.auditing.remove(&job) => {
                let report = AuditReport {
                    campaign: self.campaign,
                    job,
                    result,
                    issued_at: now,
                };
                self.sign_and_send(report, AnySigned::AuditReport, now, &mut out);
                self.instance.evidence_changed();
            }
            PeerInput::JobDone { job, result } => {
                self.reveal_check = true;
                self.on_job_done(job, result, now, &mut out);
            }
            PeerInput::JobAbandoned { job } => {
                // `taken` and `audits_taken` keep it, so it is not picked up again.
                self.running.remove(&job);
                self.auditing.remove(&job);
            }
            PeerInput::Tick => {
                self.reveal_check = true;
                self.vote_with(now, &mut out, |i, key, env| i.tick(key, env, now));
            }
        }
        self.step(now, &mut out);
        out
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

    fn split(&mut self, now: Timestamp) -> (&mut Instance, PeerEnv<'_>) {
        let void_at = self.void_deadline();
        let env = PeerEnv {
            key: &self.key,
            ledger: &self.ledger,
            cur: &self.cur,
            spec: &self.spec,
            pending: &self.pending,
            failed_audits: &self.failed_audits,
            epilogue: self.epilogue,
            last_seen: &self.last_seen,
            max_joins: self.config.max_joins_per_generation,
            now,
            void_at,
        };
        (&mut self.instance, env)
    }

    /// Recomputes `settled_now` from the ledger (when a generation starts).
    fn recount_settled(&mut self) {
        let ledger = &self.ledger;
        self.settled_now = self
            .cur
            .jobs
            .keys()
            .filter(|j| ledger.settlement(j).is_some())
            .copied()
            .collect();
    }

    fn ingest_evidence(&mut self, m: AnySigned, now: Timestamp, out: &mut Vec<PeerOutput>) -> bool {
        if let AnySigned::Commitment(c) = &m
            && self.own.contains_key(&c.message().job)
        {
            self.reveal_check = true;
        }
        let mut changed = false;
        for o in self.ledger.handle(Input::Message(m), now) {
            match o {
                Output::Rejected { id, error, action } => {
                    out.push(PeerOutput::Rejected { id, error, action });
                }
                Output::Settled { job, .. } => {
                    if self.cur.jobs.contains_key(&job) {
                        self.settled_now.insert(job);
                    }
                    changed = true;
                }
                Output::Unsettled { job } => {
                    self.settled_now.remove(&job);
                    changed = true;
                }
                Output::Accepted { .. } | Output::Equivocation(_) => changed = true,
                Output::Ignored { .. } | Output::AuditMismatch { .. } => {}
            }
        }
        changed
    }

    fn on_message(&mut self, m: AnySigned, now: Timestamp, out: &mut Vec<PeerOutput>) {
        self.last_seen
            .insert(seen_key(&m.signer()), self.cur.number);
        let slot = match &m {
            AnySigned::Proposal(p) => Some((p.message().campaign, p.message().closure.generation)),
            AnySigned::Vote(v) => Some((v.message().campaign, v.message().generation)),
            _ => None,
        };
        let Some((campaign, generation)) = slot else {
            // Evidence for the ledger; new evidence may make a proposal valid.
            if self.ingest_evidence(m, now, out) {
                self.instance.evidence_changed();
                if self.instance.evidence_matters() {
                    self.vote_with(now, out, |i, key, env| i.poke(key, env, now));
                }
            }
            return;
        };
        if campaign != self.campaign {
            let error = DecodeError::WrongCampaign {
                expected: self.campaign,
                found: campaign,
            };
            out.push(PeerOutput::Rejected {
                id: m.id(),
                action: error.peer_action(),
                error,
            });
            return;
        }
        if generation > self.cur.number {
            if self.future.len() < self.config.max_future_messages {
                self.future.push_back(m);
            }
            return;
        }
        if generation == self.cur.number {
            self.vote_with(now, out, |i, key, env| {
                i.handle(m, key, env, now).unwrap_or_default()
            });
        }
    }

    fn sign_and_send<T: crate::message::Message>(
        &mut self,
        msg: T,
        wrap: fn(Signed<T>) -> AnySigned,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        if let Ok(s) = Signed::sign_and_encode(msg, &self.key) {
            self.spoke = true;
            let any = wrap(s);
            self.ingest_evidence(any.clone(), now, out);
            out.push(PeerOutput::Broadcast(any));
        }
    }

    fn on_job_done(
        &mut self,
        job: JobId,
        result: JobResult,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        if !self.running.remove(&job) || !self.cur.jobs.contains_key(&job) {
            return;
        }
        let salt = hash_canonical(context::COMMITMENT, &(self.key.secret_bytes(), job));
        let digest = commitment_digest(&job, &self.me, &result, &salt);
        // After a restart the store may hold our commitment and reveal already: say neither
        // again (a reveal witnessing other committers than the first would contradict it).
        let revealed = self.ledger.has_revealed(&job, &self.me);
        self.own.insert(
            job,
            OwnJob {
                result,
                salt,
                revealed,
            },
        );
        if self.ledger.has_committed(&job, &self.me) {
            return;
        }
        let c = Commitment {
            campaign: self.campaign,
            job,
            digest,
            issued_at: now,
        };
        self.sign_and_send(c, AnySigned::Commitment, now, out);
        self.instance.evidence_changed();
    }

    /// Lists the jobs this peer may run this generation (`my_jobs`), once per generation.
    fn list_my_jobs(&mut self) {
        let bound = self.executor_bound();
        let w = reputation(&self.agreed, &self.offences);
        let (cur, me) = (&self.cur, &self.me);
        if self.my_jobs.is_none()
            && let Some(cache) = &self.derive_cache
        {
            if cur.members.binary_search(me).is_err() {
                self.my_jobs = Some(Vec::new());
                return;
            }
            let jobs: Vec<(JobId, u32)> = cur.jobs.iter().map(|(id, s)| (*id, s.index)).collect();
            self.my_jobs =
                Some(cache.jobs_ranked_below(&cur.seed, &cur.members, &w, &jobs, bound, me));
            return;
        }
        self.my_jobs.get_or_insert_with(|| {
            let mut mine: Vec<(usize, u32, JobId)> = cur
                .jobs
                .iter()
                .filter_map(|(id, spec)| {
                    let pos = position_below(id, &cur.seed, &cur.members, &w, me, bound)?;
                    Some((pos, spec.index, *id))
                })
                .collect();
            mine.sort();
            mine
        });
    }

    fn step(&mut self, now: Timestamp, out: &mut Vec<PeerOutput>) {
        if self.finished {
            return;
        }
        let q = usize::from(self.spec.quorum);
        let r = usize::from(self.spec.redundancy);
        let elapsed = now.saturating_since(self.cur.started_at).as_millis() as u64;
        let past_deadline = elapsed >= self.cur.deadline_ms;
        // Reveal: once all r executors committed, or q did and the deadline passed.
        let to_reveal: Vec<JobId> = if std::mem::take(&mut self.reveal_check) {
            self.own
                .iter()
                .filter(|(j, o)| {
                    !o.revealed && {
                        let c = self.ledger.commitment_count(j);
                        c >= r || (past_deadline && c >= q)
                    }
                })
                .map(|(j, _)| *j)
                .collect()
        } else {
            Vec::new()
        };
        for job in to_reveal {
            let witnessed = self.ledger.punctual_committers(&job, &self.me);
            if let Some(o) = self.own.get_mut(&job) {
                o.revealed = true;
                let reveal = Reveal {
                    campaign: self.campaign,
                    job,
                    result: o.result.clone(),
                    salt: o.salt,
                    witnessed,
                    issued_at: now,
                };
                self.sign_and_send(reveal, AnySigned::Reveal, now, out);
                self.instance.evidence_changed();
            }
        }
        // Joiners announce themselves; a member that has said nothing this generation by its
        // deadline shows it is alive (silent members are evicted).
        let member = self.is_member();
        if !member || (!self.spoke && past_deadline) {
            let due = member || now >= self.join_heartbeat_due();
            if due {
                self.last_heartbeat = Some(now);
                if self.heartbeats_sent.0 != self.cur.number {
                    self.heartbeats_sent = (self.cur.number, 0);
                }
                self.heartbeats_sent.1 += 1;
                let hb = Heartbeat {
                    campaign: self.campaign,
                    generation: self.cur.number,
                    running: self.running.len() as u16,
                    capacity: self.config.capacity,
                    issued_at: now,
                };
                self.sign_and_send(hb, AnySigned::Heartbeat, now, out);
            }
        }
        // Jury duty comes first (a dispute blocks a verdict); then, in audit mode, audits.
        self.take_audits(true, out);
        if self.config.audit {
            self.take_audits(false, out);
        }
        // Take jobs, members only.
        if self.is_member() && self.running() < usize::from(self.config.capacity) {
            let extra = usize::from(self.spec.schedule.max_extra_executors);
            let n = self.cur.members.len();
            let idle = self.running.is_empty();
            let limit = eligible(r, extra, elapsed, self.cur.deadline_ms, false, n);
            let idle_limit = eligible(r, extra, elapsed, self.cur.deadline_ms, idle, n);
            self.list_my_jobs();
            // `my_jobs` is in rank order and loses each job this peer takes.
            let bound = limit.max(idle_limit);
            let candidates: Vec<JobId> = self
                .my_jobs
                .iter()
                .flatten()
                .take_while(|(pos, _, _)| *pos < bound)
                .filter(|(pos, _, id)| {
                    // An idle peer helps jobs that wait for executors: fewer than r have
                    // claimed it (its ranked executors are busy) and it is not yet committed
                    // by a quorum. Where r peers already run it, a slow or silent one is
                    // replaced through the deadline rule instead.
                    !self.taken.contains(id)
                        && self.ledger.settlement(id).is_none()
                        && (*pos < limit
                            || (*pos < idle_limit
                                && self.ledger.commitment_count(id) < q
                                && self.ledger.claim_count(id) < r))
                })
                .map(|(_, _, id)| *id)
                .collect();
            for id in candidates {
                if self.running() >= usize::from(self.config.capacity) {
                    break;
                }
                let Some(spec) = self.cur.jobs.get(&id).cloned() else {
                    continue;
                };
                self.taken.insert(id);
                self.running.insert(id);
                let claim = Claim {
                    campaign: self.campaign,
                    job: id,
                    issued_at: now,
                };
                self.sign_and_send(claim, AnySigned::Claim, now, out);
                out.push(PeerOutput::Execute(spec));
                if let Some(mine) = &mut self.my_jobs {
                    mine.retain(|(_, _, j)| *j != id);
                }
            }
        }
        // Ready to close: every job settled (in the epilogue: every audit judged), or the void
        // deadline passed.
        if !self.instance.started() {
            let ready = if self.epilogue {
                let (_, env) = self.split(now);
                env.pending.values().all(|a| env.verdict(a).is_some())
            } else {
                self.settled_now.len() == self.cur.jobs.len()
            };
            if ready || now >= self.void_deadline() {
                self.vote_with(now, out, |i, key, env| i.start(key, env, now));
            }
        }
    }

    /// Starts jury duties (`jury` true: disputed jobs whose jury includes this peer) or, in
    /// audit mode, audits (every sampled job this peer did not execute), within capacity.
    fn take_audits(&mut self, jury: bool, out: &mut Vec<PeerOutput>) {
        let capacity = usize::from(self.config.capacity);
        if self.running() >= capacity || self.pending.is_empty() {
            return;
        }
        let todo: Vec<JobId> = self
            .pending
            .iter()
            .filter(|(j, a)| {
                !self.audits_taken.contains(j)
                    && a.executors.binary_search(&self.me).is_err()
                    && !self.ledger.has_committed(j, &self.me)
                    && (!jury || a.jury.binary_search(&self.me).is_ok() && self.disputed(a))
            })
            .map(|(j, _)| *j)
            .collect();
        for job in todo {
            if self.running() >= capacity {
                break;
            }
            let Some(a) = self.pending.get(&job) else {
                continue;
            };
            out.push(PeerOutput::Execute(a.spec.clone()));
            self.audits_taken.insert(job);
            self.auditing.insert(job);
        }
    }

    /// Whether a report on `a` held here disagrees with its closure.
    fn disputed(&self, a: &PendingAudit) -> bool {
        let reports = self.ledger.audit_results(&a.spec.id());
        audit::disputed(
            a,
            &reports,
            |p| self.eligible_auditor(p),
            &self.spec.tolerance,
        )
    }

    fn eligible_auditor(&self, p: &PeerKey) -> bool {
        may_report(&self.cur.members, &self.failed_audits, p)
    }

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

    fn on_decided(
        &mut self,
        closure: Arc<Closure>,
        certificate: Vec<PeerKey>,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        let root = Closure::root_shared(&closure);
        for e in &closure.entries {
            if let Entry::Settled {
                settlement,
                credited,
                ..
            } = e
            {
                for p in credited {
                    *self.agreed.entry(*p).or_default() += 1;
                }
                for p in &settlement.dissenting {
                    *self.offences.entry(*p).or_default() += 1;
                }
            }
        }
        for v in &closure.verdicts {
            if let Some(a) = self.pending.remove(&v.job) {
                self.apply_verdict(&a, v);
                self.ledger.retire([v.job]);
            }
        }
        out.push(PeerOutput::Closed {
            generation: closure.generation,
            root,
        });
        let next: Arc<BTreeMap<JobId, JobSpec>> = if self.epilogue {
            Arc::default()
        } else {
            let derived = match &self.derive_cache {
                Some(cache) => cache.advance_shared(&mut self.derivation, &closure, root),
                None => Arc::make_mut(&mut self.derivation)
                    .advance(&closure)
                    .map(drop),
            };
            match derived {
                Ok(()) => self.derivation.jobs_by_id(),
                Err(_) => Arc::default(),
            }
        };
        let seed = closure.seed_from(&root);
        let members = Members::Closure(Arc::clone(&closure));
        self.sample_audits(&closure, &seed, &members);
        // The closure is final: the evidence on its jobs is no longer needed, except on jobs
        // sampled for audit (their verdict retires them).
        self.ledger
            .retire_generation(&self.cur.jobs, self.pending.keys().copied());
        let deadline = closure.deadline_ms;
        self.history
            .extend(self.instance.messages().iter().cloned());
        // Who the closure shows alive in its generation — executors whose results it lists
        // and the voters who decided it — counts as heard from, as a message would: the
        // signal is then the same at every peer, not only at those that received the
        // messages (with sharded evidence, a voter drawn for the next generation did not).
        let shown = closure
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Settled { settlement, .. } => {
                    Some(settlement.agreeing.iter().chain(&settlement.dissenting))
                }
                Entry::Void { .. } => None,
            })
            .flatten()
            .chain(&certificate);
        for p in shown {
            let g = self
                .last_seen
                .entry(seen_key(p))
                .or_insert(closure.generation);
            *g = (*g).max(closure.generation);
        }
        self.closures.push((closure, certificate));
        self.vote_equivocators
            .extend(self.instance.equivocators().iter().copied());
        self.running.clear();
        self.taken.clear();
        self.my_jobs = None;
        self.own.clear();
        self.spoke = false;
        self.cur = Generation {
            number: self.cur.number + 1,
            seed,
            previous: root,
            started_at: now,
            deadline_ms: deadline,
            members: members.clone(),
            jobs: Arc::clone(&next),
        };
        let voters = match &self.derive_cache {
            Some(cache) => cache.voters(&members, &seed),
            None => voters(&members, &seed),
        };
        self.instance = Instance::new(
            self.campaign,
            self.cur.number,
            voters,
            seed,
            self.spec.schedule.round_timeout_ms,
            Some(self.me),
        );
        if next.is_empty() {
            if self.epilogue || self.pending.is_empty() {
                self.finished = true;
                out.push(PeerOutput::Finished);
                return;
            }
            // One more, job-less generation to judge the last generations' audits.
            self.epilogue = true;
        }
        self.ledger
            .register_generation(Arc::clone(&next), now)
            .for_each(drop);
        self.recount_settled();
        // Replay consensus messages that arrived early.
        let future: Vec<AnySigned> = self.future.drain(..).collect();
        for m in future {
            if self.finished {
                break;
            }
            self.on_message(m, now, out);
        }
    }

    /// Penalties and credits of a verdict (a function of the closure chain alone).
    fn apply_verdict(&mut self, a: &PendingAudit, v: &Verdict) {
        let fail = |p: &PeerKey, s: &mut Self| {
            *s.failed_audits.entry(*p).or_default() += 1;
            *s.offences.entry(*p).or_default() += 1;
        };
        for p in &v.contradicted {
            fail(p, self);
        }
        if v.overturned(&a.original, &self.spec.tolerance) {
            // The accusation stands: the agreeing executors lose their credit and fail.
            for p in &a.original.agreeing {
                fail(p, self);
            }
            for p in &a.credited {
                if let Some(n) = self.agreed.get_mut(p) {
                    *n = n.saturating_sub(1);
                }
            }
            for p in &v.upheld_by {
                *self.agreed.entry(*p).or_default() += 1;
            }
            // Its dissenters disagreed with a wrong outcome: their dissent is no offence.
            for p in &a.original.dissenting {
                if let Some(n) = self.offences.get_mut(p) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        if let Some(jury) = &v.jury {
            for p in &jury.agreeing {
                *self.agreed.entry(*p).or_default() += 1;
            }
            for p in &jury.dissenting {
                *self.offences.entry(*p).or_default() += 1;
            }
        }
    }

    /// Samples the settled jobs of a just-decided closure for audit (seeded by the closure).
    fn sample_audits(&mut self, closure: &Closure, seed: &[u8; 32], members: &[PeerKey]) {
        if self.spec.audit_rate_ppm == 0 {
            return;
        }
        let size =
            usize::from(self.spec.redundancy) + usize::from(self.spec.schedule.max_extra_executors);
        for e in &closure.entries {
            let Entry::Settled {
                job,
                settlement,
                credited,
                ..
            } = e
            else {
                continue;
            };
            let flagged = settlement
                .agreeing
                .iter()
                .any(|p| self.failed_audits.contains_key(p));
            let rate_ppm = audit::rate(self.spec.audit_rate_ppm, flagged);
            let Some(spec) = self.cur.jobs.get(job) else {
                continue;
            };
            let drawn = audit::sampled(seed, job, rate_ppm);
            self.audit_draws.insert(*job, (rate_ppm, drawn));
            if !drawn {
                continue;
            }
            let mut executors: Vec<PeerKey> = settlement
                .agreeing
                .iter()
                .chain(&settlement.dissenting)
                .copied()
                .collect();
            executors.sort();
            let jury = audit::jury(
                job,
                seed,
                members,
                reputation(&self.agreed, &self.offences),
                &executors,
                size,
            );
            self.pending.insert(
                *job,
                PendingAudit {
                    spec: spec.clone(),
                    generation: closure.generation,
                    original: settlement.clone(),
                    credited: credited.clone(),
                    executors,
                    jury,
                    rate_ppm,
                },
            );
        }
    }
}

/// The peer's side of [`Env`]: validity and proposals from its ledger.
struct PeerEnv<'a> {
    key: &'a Keypair,
    ledger: &'a Ledger,
    cur: &'a Generation,
    spec: &'a CampaignSpec,
    pending: &'a BTreeMap<JobId, PendingAudit>,
    failed_audits: &'a BTreeMap<PeerKey, u64>,
    epilogue: bool,
    last_seen: &'a HashMap<u64, u32>,
    max_joins: usize,
    now: Timestamp,
    void_at: Timestamp,
}

impl PeerEnv<'_> {
    /// Jobs each member runs in turn: `⌈jobs · r / members⌉`.
    fn load(&self) -> u64 {
        let work = self.cur.jobs.len() as u64 * u64::from(self.spec.redundancy);
        work.div_ceil(self.cur.members.len().max(1) as u64)
    }

    /// The closure entry for `job` from the executors' results listed in `only`, or, without
    /// a list, the one this peer would propose: from the results whose commitment arrived
    /// before any reveal (no copies) if those reach a quorum, else from all results.
    fn settle_job(&self, job: &JobId, only: Option<&BTreeSet<PeerKey>>) -> Option<Entry> {
        if only.is_none() {
            return self
                .settle_with(job, None, true)
                .or_else(|| self.settle_with(job, None, false));
        }
        self.settle_with(job, only, false)
    }

    fn settle_with(
        &self,
        job: &JobId,
        only: Option<&BTreeSet<PeerKey>>,
        punctual: bool,
    ) -> Option<Entry> {
        let results = self.ledger.executor_results(job);
        let chosen: Vec<_> = results
            .iter()
            .filter(|r| match only {
                Some(set) => set.contains(&r.peer),
                None => !(punctual && r.late),
            })
            .collect();
        if only.is_some_and(|set| set.len() != chosen.len()) {
            return None;
        }
        let evidence = chosen
            .iter()
            .map(|r| (r.peer, r.digest, r.outcome))
            .collect();
        let settlement = settle_digested(
            evidence,
            usize::from(self.spec.quorum),
            &self.spec.tolerance,
        )?;
        let agreeing: Vec<_> = chosen
            .iter()
            .filter(|r| settlement.agreeing.binary_search(&r.peer).is_ok())
            .collect();
        let wall_time_ms = lower_median(agreeing.iter().map(|r| r.wall_time_ms).collect());
        let credited = credited(&settlement.agreeing, |p| {
            agreeing
                .iter()
                .find(|r| r.peer == *p)
                .map_or(&[][..], |r| r.witnessed)
        });
        Some(Entry::Settled {
            job: *job,
            settlement,
            wall_time_ms,
            credited,
        })
    }

    /// The verdict this peer would give on `audit` (see [`judge`]).
    fn verdict(&self, audit: &PendingAudit) -> Option<Verdict> {
        let reports = self.ledger.audit_results(&audit.spec.id());
        judge(
            audit,
            &reports,
            |p| may_report(&self.cur.members, self.failed_audits, p),
            usize::from(self.spec.quorum),
            &self.spec.tolerance,
        )
    }

    fn next_members(&self) -> Vec<PeerKey> {
        let mut members: BTreeSet<PeerKey> = self.cur.members.iter().copied().collect();
        let mut joins = 0;
        for hb in self.ledger.heartbeats() {
            let p = hb.signer();
            if hb.message().capacity == 0 {
                members.remove(&p);
            } else if !members.contains(&p) && joins < self.max_joins {
                members.insert(p);
                joins += 1;
            }
        }
        // Evict members silent here for this generation and the one before (at most as many
        // as may join; never this peer, never the whole roster).
        let silent: Vec<PeerKey> = self
            .cur
            .members
            .iter()
            .filter(|p| **p != self.key.public() && self.silent_since(p, 1))
            .take(self.max_joins)
            .copied()
            .collect();
        if silent.len() < members.len() {
            for p in silent {
                members.remove(&p);
            }
        }
        members.into_iter().collect()
    }

    /// Whether no message from `p` reached this peer in the current generation nor in the
    /// `back` generations before it (never, before generation `back`).
    fn silent_since(&self, p: &PeerKey, back: u32) -> bool {
        self.cur.number > back
            && self
                .last_seen
                .get(&seen_key(p))
                .is_none_or(|g| g + back < self.cur.number)
    }
}

impl PeerEnv<'_> {
    /// Why `c` is not valid here, if it is not.
    fn check(&self, c: &Closure) -> Result<(), String> {
        if c.campaign != self.ledger.campaign()
            || c.generation != self.cur.number
            || c.previous != self.cur.previous
            || c.entries.len() != self.cur.jobs.len()
        {
            return Err("header".into());
        }
        for (e, job) in c.entries.iter().zip(self.cur.jobs.keys()) {
            if e.job() != *job {
                return Err("job set".into());
            }
            match e {
                Entry::Settled { settlement, .. } => {
                    let listed: BTreeSet<PeerKey> = settlement
                        .agreeing
                        .iter()
                        .chain(&settlement.dissenting)
                        .copied()
                        .collect();
                    if self.settle_job(job, Some(&listed)).as_ref() != Some(e) {
                        return Err(format!(
                            "job {}: the {} listed results do not give this entry here",
                            job.short(),
                            listed.len()
                        ));
                    }
                }
                Entry::Void { .. } => {
                    if self.now < self.void_at || self.settle_job(job, None).is_some() {
                        return Err(format!("void {}", job.short()));
                    }
                }
            }
        }
        if c.verdicts.windows(2).any(|w| w[0].job >= w[1].job) {
            return Err("verdicts not in job order".into());
        }
        for v in &c.verdicts {
            let Some(a) = self.pending.get(&v.job) else {
                return Err(format!("verdict on {}, not awaiting audit", v.job.short()));
            };
            if self.verdict(a).as_ref() != Some(v) {
                return Err(format!("verdict on {} differs here", v.job.short()));
            }
        }
        // The epilogue exists to judge audits: it may leave one out only after its deadline,
        // and only one this peer cannot judge either (like a void job).
        if self.epilogue {
            for (job, a) in self.pending {
                if c.verdicts.binary_search_by(|v| v.job.cmp(job)).is_err()
                    && (self.now < self.void_at || self.verdict(a).is_some())
                {
                    return Err(format!("no verdict on {}", job.short()));
                }
            }
        }
        // Membership changes must be backed by heartbeats this peer holds.
        let current: BTreeSet<&PeerKey> = self.cur.members.iter().collect();
        let next: BTreeSet<&PeerKey> = c.members.iter().collect();
        let beats: BTreeMap<PeerKey, u16> = self
            .ledger
            .heartbeats()
            .map(|h| (h.signer(), h.message().capacity))
            .collect();
        let joined = next.difference(&current).count();
        if joined > self.max_joins {
            return Err("too many joins".into());
        }
        for p in next.difference(&current) {
            if beats.get(*p).is_none_or(|c| *c == 0) {
                return Err(format!("join of {} without a heartbeat here", p.short()));
            }
        }
        for p in current.difference(&next) {
            // A leave, or silence here for this whole generation (the proposer waits for two).
            if beats.get(*p) != Some(&0) && !self.silent_since(p, 0) {
                return Err(format!(
                    "removal of {} without a leave or silence here",
                    p.short()
                ));
            }
        }
        let evicted = current
            .difference(&next)
            .filter(|p| beats.get(**p) != Some(&0))
            .count();
        if evicted > self.max_joins || next.is_empty() {
            return Err("too many evictions".into());
        }
        let want = next_deadline(
            &c.entries,
            self.cur.deadline_ms,
            self.load(),
            &self.spec.schedule,
        );
        if c.deadline_ms != want {
            return Err(format!("deadline {} want {want}", c.deadline_ms));
        }
        Ok(())
    }
}

impl Env for PeerEnv<'_> {
    fn valid(&mut self, c: &Closure) -> bool {
        self.check(c).is_ok()
    }

    fn build(&mut self) -> Option<Closure> {
        let mut entries = Vec::with_capacity(self.cur.jobs.len());
        for job in self.cur.jobs.keys() {
            match self.settle_job(job, None) {
                Some(e) => entries.push(e),
                None if self.now >= self.void_at => entries.push(Entry::Void { job: *job }),
                None => return None,
            }
        }
        let verdicts: Vec<Verdict> = self
            .pending
            .values()
            .filter_map(|a| self.verdict(a))
            .collect();
        if self.epilogue && self.now < self.void_at && verdicts.len() < self.pending.len() {
            return None;
        }
        let deadline_ms = next_deadline(
            &entries,
            self.cur.deadline_ms,
            self.load(),
            &self.spec.schedule,
        );
        Some(Closure {
            campaign: self.ledger.campaign(),
            generation: self.cur.number,
            previous: self.cur.previous,
            entries,
            verdicts,
            members: self.next_members(),
            deadline_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::sample_spec;

    fn executed(out: &[PeerOutput]) -> Vec<JobId> {
        out.iter()
            .filter_map(|o| match o {
                PeerOutput::Execute(j) => Some(j.id()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_abandoned_job_frees_its_slot_and_is_not_taken_again() {
        let key = Keypair::from_secret_bytes([1; 32]);
        let mut spec = sample_spec();
        spec.redundancy = 1;
        spec.quorum = 1;
        spec.roster = vec![key.public()];
        let config = PeerConfig {
            capacity: 1,
            ..PeerConfig::default()
        };
        let now = Timestamp(spec.created_at.0 + 1);
        let mut peer = Peer::new(spec, key, config, now).expect("valid");
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
