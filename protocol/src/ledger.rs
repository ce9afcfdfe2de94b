//! The ledger of one campaign: a sans-IO state machine over verified messages.
//!
//! `Ledger::handle(input, now)` ingests verified messages and locally derived job specs,
//! de-duplicates, enforces commit–reveal, detects equivocation, and emits settlements and
//! verdicts. The final state — settlements, scores, [`Ledger::settlement_root`] — is a function
//! of the *set* of messages ingested, never of their order: wherever the ledger must choose
//! between equivalent messages it keeps the one with the lowest [`MessageId`].
//!
//! Evidence rules for one job:
//! * an executor's result counts once it has exactly one commitment and one reveal (compared
//!   without their timestamps) and the reveal opens the commitment;
//! * two different commitments, two different reveals, or a reveal that does not open the
//!   commitment are an equivocation: both signed messages are kept as proof, and the signer's
//!   result for that job is discarded;
//! * audit reports count as evidence beside executors' results (one vote per peer), so an
//!   audit that agrees with a dissenting minority, plus tie-breakers, can overturn a colluding
//!   quorum; a report from a peer that also executed the job is ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque, btree_map};
use std::sync::Arc;

use crate::agreement::{Settlement, agree, settle_digested};
use crate::envelope::{AnySigned, Signed};
use crate::error::{DecodeError, PeerAction};
use crate::id::{CampaignId, JobId, MessageId};
use crate::identity::PeerKey;
use crate::message::{AuditReport, Claim, Commitment, Heartbeat, Kind, Message, Reveal};
use crate::outcome::Outcome;
use crate::outcome::Tolerance;
use crate::scoring::{JobRecord, PeerScore, ScoringRules, score};
use crate::small::{SmallMap, SmallSet};
use crate::spec::{CampaignSpec, JobSpec};
use crate::time::Timestamp;

/// Limits and weights of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Most distinct signers whose messages are kept per job (executors, auditors and
    /// tie-breakers together); messages from further signers are ignored.
    pub max_signers_per_job: usize,
    /// Most messages kept per signer for jobs not yet derived locally.
    pub max_unregistered_per_signer: usize,
    /// Scoring weights.
    pub scoring: ScoringRules,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_signers_per_job: 64,
            max_unregistered_per_signer: 256,
            scoring: ScoringRules::default(),
        }
    }
}

/// What the ledger is told.
#[derive(Debug, Clone)]
pub enum Input {
    /// A verified message from the network, sync, or this node itself.
    Message(AnySigned),
    /// A job this node derived (jobs are never announced; every node derives the same ones).
    RegisterJob(JobSpec),
}

/// One executor's counted result on a job.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorResult<'a> {
    /// The executor.
    pub peer: PeerKey,
    /// What it revealed.
    pub outcome: &'a Outcome,
    /// The outcome's digest.
    pub digest: [u8; 32],
    /// Its reported wall time.
    pub wall_time_ms: u64,
    /// Its commitment reached this node after another executor's reveal.
    pub late: bool,
    /// The commitments its reveal says it held before any result was public.
    pub witnessed: &'a [PeerKey],
}

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// The very message (same id) is stored already.
    Duplicate,
    /// An equivalent message (same content, other timestamp) is already kept.
    Equivalent,
    /// The job already has the most signers kept.
    JobFull,
    /// The signer has the most messages kept for jobs not yet derived.
    TooManyUnregistered,
    /// The signer already equivocated on this job; further statements add nothing.
    AlreadyEquivocated,
    /// The campaign spec this ledger was built from.
    OwnCampaign,
    /// A closure proposal or vote: handled by `consensus`, not the ledger.
    Consensus,
    /// Evidence on a job of a closed generation whose evidence was retired
    /// ([`Ledger::retire`]): the closure has the final word on it.
    Retired,
    /// A statement on a job pinned to another executor ([`crate::kinds::JobPayload::pinned`]): only that
    /// executor's claims and results count, and pinned jobs are not audited.
    NotTheExecutor,
}

/// How much later than the kept one a peer's heartbeat must be issued to replace it (unless it
/// is a leave).
pub const MIN_HEARTBEAT_GAP_MS: u64 = 1_000;

impl IgnoreReason {
    /// Whether the ledger keeps nothing of a message ignored for this reason (and a driver
    /// need not store or forward it): everything but the messages that are some other part's
    /// business (consensus, the campaign spec).
    pub fn keeps_nothing(self) -> bool {
        !matches!(self, IgnoreReason::Consensus | IgnoreReason::OwnCampaign)
    }
}

/// What kind of provable misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offence {
    /// Two different commitments for one job.
    ConflictingCommitments,
    /// Two different reveals (results or salts) for one job.
    ConflictingReveals,
    /// A reveal that does not open the signer's commitment.
    RevealMismatch,
    /// Two different audit reports for one job.
    ConflictingAudits,
}

/// Two signed messages by one peer that cannot both be honest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EquivocationProof {
    /// The signer.
    pub peer: PeerKey,
    /// The job.
    pub job: JobId,
    /// What they did.
    pub offence: Offence,
    /// The two messages (lowest id first).
    pub messages: [MessageId; 2],
}

/// What the ledger asks its driver to do or know.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The message was new evidence and is stored: accept and forward it.
    Accepted {
        /// Its id.
        id: MessageId,
        /// Its kind.
        kind: Kind,
    },
    /// The message was not stored; drop it without blame.
    Ignored {
        /// Its id.
        id: MessageId,
        /// Why.
        reason: IgnoreReason,
    },
    /// The message breaks a rule; drop it and take `action` against the forwarder.
    Rejected {
        /// Its id.
        id: MessageId,
        /// The rule.
        error: DecodeError,
        /// What to do with the forwarder.
        action: PeerAction,
    },
    /// A job settled, or its settlement changed with new evidence.
    Settled {
        /// The job.
        job: JobId,
        /// The settlement.
        settlement: Settlement,
        /// When (the `now` of the input that settled it).
        at: Timestamp,
    },
    /// New evidence (an equivocation, a contesting audit) undid a job's settlement.
    Unsettled {
        /// The job.
        job: JobId,
    },
    /// A peer signed conflicting statements: penalise it (not the forwarder).
    Equivocation(EquivocationProof),
    /// An audit report disagrees with the job's settlement: a dispute is open.
    AuditMismatch {
        /// The job.
        job: JobId,
        /// The auditor.
        auditor: PeerKey,
    },
}

/// A job-bound message let in by [`Ledger::admit`]: its job's entry, and the parts of the
/// ledger storing it may change.
struct Admitted<'a> {
    entry: &'a mut JobEntry,
    registered: bool,
    outputs: &'a mut VecDeque<Output>,
    unregistered: &'a mut HashMap<PeerKey, usize>,
}

impl Admitted<'_> {
    /// The message is stored (`new`: not in place of an equivalent one of the signer's): it
    /// counts against the signer's cap while its job is not derived.
    fn accepted(&mut self, id: MessageId, kind: Kind, signer: PeerKey, new: bool) {
        if new && !self.registered {
            *self.unregistered.entry(signer).or_default() += 1;
        }
        self.outputs.push_back(Output::Accepted { id, kind });
    }
}

/// Up to two distinct statements by one peer on one job; two means equivocation.
#[derive(Debug, Clone)]
struct Statements<T> {
    /// Distinct statements, lowest id kept among equivalent ones; at most two.
    kept: Vec<Signed<T>>,
}

impl<T> Default for Statements<T> {
    fn default() -> Self {
        Statements { kept: Vec::new() }
    }
}

enum AddOutcome {
    /// The very message (same id) is kept already.
    Duplicate,
    New,
    Replaced,
    Equivalent,
    Conflict([MessageId; 2]),
    AlreadyConflicting,
}

impl<T: Clone> Statements<T> {
    /// Adds `msg`; `same` says whether two statements are equivalent (timestamps aside).
    fn add(&mut self, msg: Signed<T>, same: impl Fn(&T, &T) -> bool) -> AddOutcome {
        if self.kept.iter().any(|k| k.id() == msg.id()) {
            return AddOutcome::Duplicate;
        }
        if self.kept.len() >= 2 {
            return AddOutcome::AlreadyConflicting;
        }
        if let Some(existing) = self
            .kept
            .iter_mut()
            .find(|e| same(e.message(), msg.message()))
        {
            if msg.id() < existing.id() {
                *existing = msg;
                return AddOutcome::Replaced;
            }
            return AddOutcome::Equivalent;
        }
        self.kept.push(msg);
        self.kept.sort_by_key(|s| s.id());
        if self.kept.len() == 2 {
            AddOutcome::Conflict([self.kept[0].id(), self.kept[1].id()])
        } else {
            AddOutcome::New
        }
    }

    fn single(&self) -> Option<&Signed<T>> {
        match self.kept.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// A message kind of which a peer may make at most one (distinct) statement per job.
trait Statement: Message {
    /// What two distinct statements of this kind amount to.
    const OFFENCE: Offence;
    /// The job it is about.
    fn job(&self) -> JobId;
    /// Same content apart from the timestamp.
    fn equivalent(&self, other: &Self) -> bool;
    /// Where a job keeps statements of this kind.
    fn statements(entry: &mut JobEntry) -> &mut SmallMap<PeerKey, Statements<Self>>;
}

impl Statement for Commitment {
    const OFFENCE: Offence = Offence::ConflictingCommitments;
    fn job(&self) -> JobId {
        self.job
    }
    fn equivalent(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
    fn statements(entry: &mut JobEntry) -> &mut SmallMap<PeerKey, Statements<Self>> {
        &mut entry.commitments
    }
}

impl Statement for Reveal {
    const OFFENCE: Offence = Offence::ConflictingReveals;
    fn job(&self) -> JobId {
        self.job
    }
    fn equivalent(&self, other: &Self) -> bool {
        self.result == other.result && self.salt == other.salt && self.witnessed == other.witnessed
    }
    fn statements(entry: &mut JobEntry) -> &mut SmallMap<PeerKey, Statements<Self>> {
        &mut entry.reveals
    }
}

impl Statement for AuditReport {
    const OFFENCE: Offence = Offence::ConflictingAudits;
    fn job(&self) -> JobId {
        self.job
    }
    fn equivalent(&self, other: &Self) -> bool {
        self.result == other.result
    }
    fn statements(entry: &mut JobEntry) -> &mut SmallMap<PeerKey, Statements<Self>> {
        &mut entry.audits
    }
}

/// A peer's evidence on a job as it currently counts, with its outcome's digest cached.
#[derive(Debug, Clone)]
struct Counted {
    digest: [u8; 32],
    outcome: Outcome,
    auditor: bool,
    wall_time_ms: u64,
    witnessed: Vec<PeerKey>,
}

/// What the ledger keeps of a derived (registered) job: what scoring needs of its spec.
#[derive(Debug, Clone, Copy)]
struct Registered {
    generation: u32,
    compute: u64,
    /// The one executor whose results count ([`crate::kinds::JobPayload::pinned`]).
    pinned: Option<PeerKey>,
}

/// How a job settles: the quorum, the campaign's tolerance, and the one executor whose
/// results count when the kind pins the job (its quorum is then 1).
#[derive(Debug, Clone, Copy)]
struct SettleRule {
    q: usize,
    tol: Tolerance,
    pinned: Option<PeerKey>,
}

/// The evidence held on one job. Created on the first message about the job, not when the job
/// is registered: at a thousand-job generation most peers hold evidence on a few jobs only
/// (evidence travels on sharded topics), and an empty entry per job per peer would be most of
/// a simulated swarm's memory.
#[derive(Debug, Clone, Default)]
struct JobEntry {
    signers: SmallSet<PeerKey>,
    claims: SmallMap<PeerKey, Signed<Claim>>,
    commitments: SmallMap<PeerKey, Statements<Commitment>>,
    reveals: SmallMap<PeerKey, Statements<Reveal>>,
    audits: SmallMap<PeerKey, Statements<AuditReport>>,
    equivocators: SmallMap<PeerKey, EquivocationProof>,
    /// What each peer's statements currently count as (derived from the maps above).
    counted: SmallMap<PeerKey, Counted>,
    settlement: Option<Settlement>,
    mismatches_reported: SmallSet<PeerKey>,
    /// Executors whose commitment reached this node after another executor's reveal (they
    /// could have copied it). Arrival order is local knowledge: it only guides what an honest
    /// proposer puts in a closure, never a verdict that other nodes must share.
    late: SmallSet<PeerKey>,
}

/// What a peer's statements on a job amount to.
enum Standing {
    /// Nothing counts (yet).
    Nothing,
    /// This outcome counts, as an execution or as an audit.
    Counts(Counted),
    /// The reveal does not open the commitment: these two messages prove it.
    BadOpening([MessageId; 2]),
}

impl JobEntry {
    /// Derives what `peer`'s statements count as:
    /// * an executor's result counts once it has exactly one commitment and one reveal and the
    ///   reveal opens the commitment;
    /// * an audit counts when the peer has exactly one audit report and no reveal.
    fn standing(&self, peer: &PeerKey) -> Standing {
        if self.equivocators.contains_key(peer) {
            return Standing::Nothing;
        }
        if let Some(reveals) = self.reveals.get(peer) {
            let (Some(c), Some(r)) = (
                self.commitments.get(peer).and_then(Statements::single),
                reveals.single(),
            ) else {
                return Standing::Nothing;
            };
            if !r.message().opens(peer, c.message()) {
                let mut ids = [c.id(), r.id()];
                ids.sort();
                return Standing::BadOpening(ids);
            }
            let outcome = r.message().result.outcome.clone();
            return Standing::Counts(Counted {
                digest: outcome.digest(),
                outcome,
                auditor: false,
                wall_time_ms: r.message().result.wall_time_ms,
                witnessed: r.message().witnessed.clone(),
            });
        }
        match self.audits.get(peer).and_then(Statements::single) {
            Some(a) => {
                let outcome = a.message().result.outcome.clone();
                Standing::Counts(Counted {
                    digest: outcome.digest(),
                    outcome,
                    auditor: true,
                    wall_time_ms: a.message().result.wall_time_ms,
                    witnessed: Vec::new(),
                })
            }
            None => Standing::Nothing,
        }
    }
}

/// The jobs of one generation, registered at once and shared with whoever derived them (a
/// thousand simulated peers of a campaign hold one copy, and registering or retiring a
/// thousand-job generation costs nothing per job).
#[derive(Debug, Clone)]
struct GenerationJobs {
    jobs: Arc<BTreeMap<JobId, JobSpec>>,
    /// Retired by [`Ledger::retire_generation`]: its jobs count as retired except those in
    /// `Ledger::kept`.
    retired: bool,
}

/// Where a job stands.
enum Status {
    /// Not derived (yet): its messages are held under the per-signer cap.
    Unknown,
    /// Derived and open.
    Registered(Registered),
    /// Its evidence was retired.
    Retired,
}

/// The ledger of one campaign.
#[derive(Debug, Clone)]
pub struct Ledger {
    campaign: CampaignId,
    spec: CampaignSpec,
    config: LedgerConfig,
    /// Jobs registered one by one ([`Ledger::register`]).
    registered: HashMap<JobId, Registered>,
    /// Jobs registered a generation at a time ([`Ledger::register_generation`]), oldest first.
    generations: Vec<GenerationJobs>,
    /// Jobs of retired generations that stay open (an audit still needs their evidence).
    kept: HashSet<JobId>,
    /// Evidence by job (boxed: a voter inserts a thousand entries a generation, and a B-tree
    /// node shifts its values on insert).
    jobs: BTreeMap<JobId, Box<JobEntry>>,
    /// Jobs whose evidence was retired one by one, by the first 8 bytes of their id (a job id
    /// is a hash fixed by closures nobody can grind, so 64 bits do not collide in practice).
    retired: HashSet<u64>,
    /// Equivocations proven on retired jobs.
    retired_equivocations: Vec<EquivocationProof>,
    unregistered: HashMap<PeerKey, usize>,
    heartbeats: BTreeMap<PeerKey, Signed<Heartbeat>>,
    outputs: VecDeque<Output>,
}

impl Ledger {
    /// An empty ledger for the campaign `spec`.
    pub fn new(spec: CampaignSpec, config: LedgerConfig) -> Self {
        Ledger {
            campaign: spec.id(),
            spec,
            config,
            registered: HashMap::new(),
            generations: Vec::new(),
            kept: HashSet::new(),
            jobs: BTreeMap::new(),
            retired: HashSet::new(),
            retired_equivocations: Vec::new(),
            unregistered: HashMap::new(),
            heartbeats: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The campaign.
    pub fn campaign(&self) -> CampaignId {
        self.campaign
    }

    /// The campaign spec.
    pub fn spec(&self) -> &CampaignSpec {
        &self.spec
    }

    /// Feeds one input; returns what to do about it.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> impl Iterator<Item = Output> + '_ {
        match input {
            Input::Message(m) => self.on_message(m, now),
            Input::RegisterJob(spec) => self.on_register_job(spec, now),
        }
        self.outputs.drain(..)
    }

    /// Registers a derived job whose id (`spec.id()`) the caller already has, as
    /// [`Input::RegisterJob`] does; returns the outputs (a settlement its stored evidence now
    /// makes).
    pub fn register(
        &mut self,
        id: JobId,
        spec: &JobSpec,
        now: Timestamp,
    ) -> impl Iterator<Item = Output> + '_ {
        debug_assert_eq!(id, spec.id(), "register: the id must be the spec's");
        self.register_with_id(id, spec, now);
        self.outputs.drain(..)
    }

    /// Registers a whole generation of derived jobs (keyed by id; every one of this
    /// campaign), as [`Ledger::register`] would one by one; returns the outputs. The map is
    /// kept, not copied: the work is per job this ledger holds evidence on, not per job.
    pub fn register_generation(
        &mut self,
        jobs: Arc<BTreeMap<JobId, JobSpec>>,
        now: Timestamp,
    ) -> impl Iterator<Item = Output> + '_ {
        debug_assert!(jobs.values().all(|j| j.campaign == self.campaign));
        // Jobs that were known before stay as they are (registered or retired).
        let new: Vec<JobId> = common_keys(&self.jobs, &jobs)
            .into_iter()
            .filter(|id| matches!(self.status(id), Status::Unknown))
            .collect();
        self.generations.push(GenerationJobs {
            jobs,
            retired: false,
        });
        for id in new {
            self.registered_now(id, now);
        }
        self.outputs.drain(..)
    }

    /// Retires the jobs of the generation registered as `jobs` (the same map given to
    /// [`Ledger::register_generation`]) but those in `keep`, as [`Ledger::retire`] would; the
    /// kept ones stay open until retired one by one.
    pub fn retire_generation(
        &mut self,
        jobs: &Arc<BTreeMap<JobId, JobSpec>>,
        keep: impl IntoIterator<Item = JobId>,
    ) {
        let Some(g) = (self.generations.iter_mut())
            .filter(|g| !g.retired)
            .find(|g| Arc::ptr_eq(&g.jobs, jobs) || g.jobs == *jobs)
        else {
            return;
        };
        g.retired = true;
        let jobs = Arc::clone(&g.jobs);
        self.kept
            .extend(keep.into_iter().filter(|id| jobs.contains_key(id)));
        let gone: Vec<JobId> = common_keys(&self.jobs, &jobs)
            .into_iter()
            .filter(|id| !self.kept.contains(id))
            .collect();
        for id in gone {
            if let Some(entry) = self.jobs.remove(&id) {
                self.retired_equivocations
                    .extend(entry.equivocators.into_values());
            }
        }
    }

    /// Where `job` stands.
    fn status(&self, job: &JobId) -> Status {
        if !self.retired.is_empty() && self.retired.contains(&retired_key(job)) {
            return Status::Retired;
        }
        if let Some(r) = self.registered.get(job) {
            return Status::Registered(*r);
        }
        for g in self.generations.iter().rev() {
            if let Some(spec) = g.jobs.get(job) {
                if g.retired && !self.kept.contains(job) {
                    return Status::Retired;
                }
                return Status::Registered(Registered {
                    generation: spec.generation,
                    compute: spec.compute,
                    pinned: spec.payload.pinned().copied(),
                });
            }
        }
        Status::Unknown
    }

    fn is_registered(&self, job: &JobId) -> bool {
        matches!(self.status(job), Status::Registered(_))
    }

    fn on_register_job(&mut self, spec: JobSpec, now: Timestamp) {
        self.register_with_id(spec.id(), &spec, now);
    }

    fn register_with_id(&mut self, id: JobId, spec: &JobSpec, now: Timestamp) {
        if spec.campaign != self.campaign {
            return;
        }
        if !matches!(self.status(&id), Status::Unknown) {
            return;
        }
        self.registered.insert(
            id,
            Registered {
                generation: spec.generation,
                compute: spec.compute,
                pinned: spec.payload.pinned().copied(),
            },
        );
        self.registered_now(id, now);
    }

    /// The evidence held on a job that was just registered: its signers' messages no longer
    /// count against their cap for unknown jobs, and it may settle.
    fn registered_now(&mut self, id: JobId, now: Timestamp) {
        let Some(entry) = self.jobs.get(&id) else {
            return;
        };
        for signer in entry.signers.iter() {
            if let Some(n) = self.unregistered.get_mut(signer) {
                *n = n.saturating_sub(count_messages(entry, signer));
            }
        }
        self.resettle(id, now);
    }

    fn on_message(&mut self, msg: AnySigned, now: Timestamp) {
        let id = msg.id();
        match msg {
            AnySigned::Campaign(s) => {
                if s.message().id() == self.campaign {
                    self.ignore(id, IgnoreReason::OwnCampaign);
                } else {
                    self.reject_wrong_campaign(id, s.message().id());
                }
            }
            AnySigned::Claim(s) => self.on_claim(s),
            AnySigned::Commitment(s) => self.on_statement(s, now),
            AnySigned::Reveal(s) => self.on_statement(s, now),
            AnySigned::AuditReport(s) => self.on_statement(s, now),
            AnySigned::Heartbeat(s) => self.on_heartbeat(s),
            AnySigned::Proposal(_) | AnySigned::Vote(_) | AnySigned::Regenesis(_) => {
                // Consensus messages belong to `consensus`; the ledger holds evidence only.
                self.ignore(id, IgnoreReason::Consensus);
            }
        }
    }

    fn ignore(&mut self, id: MessageId, reason: IgnoreReason) {
        self.outputs.push_back(Output::Ignored { id, reason });
    }

    fn reject_wrong_campaign(&mut self, id: MessageId, found: CampaignId) {
        let error = DecodeError::WrongCampaign {
            expected: self.campaign,
            found,
        };
        self.outputs.push_back(Output::Rejected {
            id,
            action: error.peer_action(),
            error,
        });
    }

    /// Checks campaign, retirement and capacity for a job-bound message; on success returns
    /// the job's entry (created if need be, with the signer added) and whether the job is
    /// registered. One lookup of the job: a voter takes every message of a generation here.
    fn admit<T: Message>(&mut self, s: &Signed<T>, job: JobId) -> Option<Admitted<'_>> {
        let id = s.id();
        if s.message().campaign() != self.campaign {
            self.reject_wrong_campaign(id, s.message().campaign());
            return None;
        }
        let signer = s.signer();
        let registered = match self.status(&job) {
            Status::Retired => {
                self.ignore(id, IgnoreReason::Retired);
                return None;
            }
            Status::Registered(r) if r.pinned.is_some_and(|p| p != signer) => {
                self.ignore(id, IgnoreReason::NotTheExecutor);
                return None;
            }
            Status::Registered(_) => true,
            Status::Unknown => false,
        };
        let max_signers = self.config.max_signers_per_job;
        let over_cap = !registered
            && self.unregistered.get(&signer).copied().unwrap_or(0)
                >= self.config.max_unregistered_per_signer;
        // A message that is turned away must not leave an (empty) job entry behind, or a
        // signer over its cap could still grow memory per job id. Those turned away for
        // capacity are not a verdict on the message: it may be delivered again later.
        let entry = match self.jobs.entry(job) {
            btree_map::Entry::Occupied(o) => {
                let e = o.into_mut();
                if !e.signers.contains(&signer) && e.signers.len() >= max_signers {
                    Err(IgnoreReason::JobFull)
                } else if e.equivocators.contains_key(&signer) {
                    Err(IgnoreReason::AlreadyEquivocated)
                } else if over_cap {
                    Err(IgnoreReason::TooManyUnregistered)
                } else {
                    Ok(e)
                }
            }
            btree_map::Entry::Vacant(_) if max_signers == 0 => Err(IgnoreReason::JobFull),
            btree_map::Entry::Vacant(_) if over_cap => Err(IgnoreReason::TooManyUnregistered),
            btree_map::Entry::Vacant(v) => Ok(v.insert(Box::default())),
        };
        let outputs = &mut self.outputs;
        let entry = match entry {
            Ok(e) => e,
            Err(reason) => {
                outputs.push_back(Output::Ignored { id, reason });
                return None;
            }
        };
        // Every admitted message is either stored or equivalent to one the signer already
        // has stored, so the signer has a message on this job from here on.
        entry.signers.insert(signer);
        Some(Admitted {
            entry,
            registered,
            outputs,
            unregistered: &mut self.unregistered,
        })
    }

    fn on_claim(&mut self, s: Signed<Claim>) {
        let job = s.message().job;
        let (id, signer) = (s.id(), s.signer());
        let Some(mut a) = self.admit(&s, job) else {
            return;
        };
        // Only who claimed counts, not which of a peer's claims was kept: the first is, and
        // every later one is a copy (keeping the lowest id instead let a peer replace its
        // claim, and make every node store another message, as often as it liked).
        let outcome = match a.entry.claims.get(&signer) {
            Some(existing) if existing.id() == id => Err(IgnoreReason::Duplicate),
            Some(_) => Err(IgnoreReason::Equivalent),
            None => {
                a.entry.claims.insert(signer, s);
                Ok(true)
            }
        };
        match outcome {
            Err(reason) => a.outputs.push_back(Output::Ignored { id, reason }),
            Ok(new) => a.accepted(id, Kind::Claim, signer, new),
        }
    }

    /// Stores a commitment, reveal or audit report: at most two distinct statements per peer
    /// and job, two being an equivocation.
    fn on_statement<T: Statement>(&mut self, s: Signed<T>, now: Timestamp) {
        let job = s.message().job();
        let (id, signer) = (s.id(), s.signer());
        let rule = self.rule(&job);
        let Some(mut a) = self.admit(&s, job) else {
            return;
        };
        let outcome = T::statements(a.entry)
            .or_default(signer)
            .add(s, T::equivalent);
        if T::KIND == Kind::Commitment
            && matches!(outcome, AddOutcome::New)
            && a.entry.reveals.keys().any(|p| *p != signer)
        {
            a.entry.late.insert(signer);
        }
        let reason = match outcome {
            AddOutcome::Duplicate => IgnoreReason::Duplicate,
            AddOutcome::Equivalent => IgnoreReason::Equivalent,
            AddOutcome::AlreadyConflicting => IgnoreReason::AlreadyEquivocated,
            AddOutcome::New | AddOutcome::Replaced | AddOutcome::Conflict(_) => {
                let new = !matches!(outcome, AddOutcome::Replaced);
                a.accepted(id, T::KIND, signer, new);
                if let AddOutcome::Conflict(messages) = outcome {
                    mark_equivocator(a.entry, a.outputs, job, signer, T::OFFENCE, messages);
                }
                if refresh(a.entry, a.outputs, job, signer) && a.registered {
                    resettle(a.entry, a.outputs, job, now, &rule);
                }
                return;
            }
        };
        a.outputs.push_back(Output::Ignored { id, reason });
    }

    /// [`resettle`] of a registered job this ledger holds evidence on.
    /// How `job` settles (an unregistered job as the campaign says; it does not settle
    /// before it is registered anyway).
    fn rule(&self, job: &JobId) -> SettleRule {
        let pinned = match self.status(job) {
            Status::Registered(r) => r.pinned,
            _ => None,
        };
        SettleRule {
            q: if pinned.is_some() {
                1
            } else {
                usize::from(self.spec.quorum)
            },
            tol: self.spec.tolerance,
            pinned,
        }
    }

    fn resettle(&mut self, job: JobId, now: Timestamp) {
        let rule = self.rule(&job);
        if !self.is_registered(&job) {
            return;
        }
        if let Some(entry) = self.jobs.get_mut(&job) {
            resettle(entry, &mut self.outputs, job, now, &rule);
        }
    }

    fn on_heartbeat(&mut self, s: Signed<Heartbeat>) {
        let id = s.id();
        if s.message().campaign != self.campaign {
            self.reject_wrong_campaign(id, s.message().campaign);
            return;
        }
        let signer = s.signer();
        let newer = match self.heartbeats.get(&signer) {
            None => true,
            Some(old) if old.id() == id => {
                self.ignore(id, IgnoreReason::Duplicate);
                return;
            }
            Some(old) => {
                let (new, kept) = (s.message(), old.message());
                let later = (new.issued_at, std::cmp::Reverse(id))
                    > (kept.issued_at, std::cmp::Reverse(old.id()));
                // A leave replaces at once; otherwise a heartbeat replaces the kept one only
                // from `MIN_HEARTBEAT_GAP_MS` later (members heartbeat once per generation,
                // joiners every few seconds), so no peer makes every node store more than
                // about one a second.
                let leave = new.capacity == 0 && kept.capacity > 0;
                let gap = new.issued_at.0.saturating_sub(kept.issued_at.0);
                later && (leave || gap >= MIN_HEARTBEAT_GAP_MS)
            }
        };
        // Only the newest heartbeat per peer is kept: a thousand peers heartbeating every
        // generation would otherwise grow the ledger without bound. An older one delivered
        // again is compared again, which is cheap.
        if newer {
            self.heartbeats.insert(signer, s);
            self.outputs.push_back(Output::Accepted {
                id,
                kind: Kind::Heartbeat,
            });
        } else {
            self.ignore(id, IgnoreReason::Equivalent);
        }
    }

    /// Drops the heartbeat held from `peer` (a pending joiner displaced by a lower key).
    pub fn forget_heartbeat(&mut self, peer: &PeerKey) {
        self.heartbeats.remove(peer);
    }

    /// Heartbeats held (the newest of each peer).
    pub fn heartbeat_count(&self) -> usize {
        self.heartbeats.len()
    }

    /// The settlement of `job`, if it has settled.
    pub fn settlement(&self, job: &JobId) -> Option<&Settlement> {
        self.jobs.get(job).and_then(|j| j.settlement.as_ref())
    }

    /// Every settled job and its settlement, in job-id order.
    pub fn settlements(&self) -> impl Iterator<Item = (&JobId, &Settlement)> {
        self.jobs
            .iter()
            .filter_map(|(id, j)| j.settlement.as_ref().map(|s| (id, s)))
    }

    /// The executors' results on `job` that currently count (commitment opened by its reveal,
    /// no equivocation), with their wall times and whether their commitment arrived late.
    pub fn executor_results(&self, job: &JobId) -> Vec<ExecutorResult<'_>> {
        self.jobs.get(job).map_or_else(Vec::new, |j| {
            j.counted
                .iter()
                .filter(|(_, c)| !c.auditor)
                .map(|(p, c)| ExecutorResult {
                    peer: *p,
                    outcome: &c.outcome,
                    digest: c.digest,
                    wall_time_ms: c.wall_time_ms,
                    late: j.late.contains(p),
                    witnessed: &c.witnessed,
                })
                .collect()
        })
    }

    /// The auditors' reports on `job` that currently count: `(auditor, outcome, digest)`.
    pub fn audit_results(&self, job: &JobId) -> Vec<(PeerKey, &Outcome, [u8; 32])> {
        self.jobs.get(job).map_or_else(Vec::new, |j| {
            j.counted
                .iter()
                .filter(|(_, c)| c.auditor)
                .map(|(p, c)| (*p, &c.outcome, c.digest))
                .collect()
        })
    }

    /// Peers other than `except` whose commitment on `job` reached this node before any
    /// executor's reveal (sorted): what a reveal lists as witnessed.
    pub fn punctual_committers(&self, job: &JobId, except: &PeerKey) -> Vec<PeerKey> {
        self.jobs.get(job).map_or_else(Vec::new, |j| {
            j.commitments
                .keys()
                .filter(|p| *p != except && !j.late.contains(p) && !j.equivocators.contains_key(p))
                .copied()
                .collect()
        })
    }

    /// Distinct peers with a commitment on `job` (equivocators included).
    pub fn commitment_count(&self, job: &JobId) -> usize {
        self.jobs.get(job).map_or(0, |j| j.commitments.len())
    }

    /// The peers that claimed `job` (equivocators included).
    pub fn claimers(&self, job: &JobId) -> impl Iterator<Item = &PeerKey> {
        self.jobs.get(job).into_iter().flat_map(|j| j.claims.keys())
    }

    /// Distinct peers that claimed `job` (equivocators included).
    pub fn claim_count(&self, job: &JobId) -> usize {
        self.jobs.get(job).map_or(0, |j| j.claims.len())
    }

    /// Whether `peer` has a commitment on `job`.
    pub fn has_committed(&self, job: &JobId, peer: &PeerKey) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|j| j.commitments.contains_key(peer))
    }

    /// Whether `peer` has a reveal on `job`.
    pub fn has_revealed(&self, job: &JobId, peer: &PeerKey) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|j| j.reveals.contains_key(peer))
    }

    /// How many jobs the ledger holds state for (derived jobs and jobs with stored messages).
    pub fn tracked_jobs(&self) -> usize {
        let open: usize = (self.generations.iter())
            .filter(|g| !g.retired)
            .map(|g| g.jobs.len())
            .sum();
        let registered = (self.registered.keys())
            .chain(&self.kept)
            .filter(|j| self.is_registered(j))
            .count();
        let unknown = (self.jobs.keys())
            .filter(|j| matches!(self.status(j), Status::Unknown))
            .count();
        open + registered + unknown
    }

    /// Every equivocation proven so far, in job-then-peer order.
    pub fn equivocations(&self) -> impl Iterator<Item = &EquivocationProof> {
        self.retired_equivocations
            .iter()
            .chain(self.jobs.values().flat_map(|j| j.equivocators.values()))
    }

    /// Forgets the evidence on `jobs` — a closed generation's jobs that no audit needs any
    /// more: their entries and their registration. Later messages about them are ignored
    /// ([`IgnoreReason::Retired`]); equivocation proofs are kept. A peer's
    /// memory then holds the open generation's evidence, not the campaign's (the node's store
    /// keeps every message on disk).
    pub fn retire(&mut self, jobs: impl IntoIterator<Item = JobId>) {
        for job in jobs {
            self.retired.insert(retired_key(&job));
            self.registered.remove(&job);
            self.kept.remove(&job);
            let Some(entry) = self.jobs.remove(&job) else {
                continue;
            };
            self.retired_equivocations
                .extend(entry.equivocators.into_values());
        }
    }

    /// The newest heartbeat of each peer.
    pub fn heartbeats(&self) -> impl Iterator<Item = &Signed<Heartbeat>> {
        self.heartbeats.values()
    }

    /// One digest over every settlement: two nodes with the same root agree on every job.
    pub fn settlement_root(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("hivemesh 2026-11 settlement root v1");
        for (job, s) in self.settlements() {
            h.update(job.as_bytes());
            h.update(&s.digest());
        }
        *h.finalize().as_bytes()
    }

    /// Every peer's score, derived from the settled, registered jobs and the equivocations.
    pub fn scores(&self) -> BTreeMap<PeerKey, PeerScore> {
        let mut claimers_of: Vec<BTreeSet<PeerKey>> = Vec::new();
        let mut auditors_of: Vec<BTreeSet<PeerKey>> = Vec::new();
        let mut settled: Vec<(Registered, &Settlement)> = Vec::new();
        for (id, j) in &self.jobs {
            if let (Status::Registered(spec), Some(s)) = (self.status(id), &j.settlement) {
                // Equivocators are penalised for the job as such; whether their claim was
                // stored depends on arrival order, so it must not count.
                claimers_of.push(
                    j.claims
                        .keys()
                        .filter(|p| !j.equivocators.contains_key(p))
                        .copied()
                        .collect(),
                );
                auditors_of.push(
                    j.counted
                        .iter()
                        .filter(|(_, c)| c.auditor)
                        .map(|(p, _)| *p)
                        .collect(),
                );
                settled.push((spec, s));
            }
        }
        let records: Vec<JobRecord<'_>> = settled
            .iter()
            .zip(&claimers_of)
            .zip(&auditors_of)
            .map(|(((spec, s), claimers), auditors)| JobRecord {
                generation: spec.generation,
                compute: spec.compute,
                settlement: s,
                claimers,
                auditors,
            })
            .collect();
        let equivocations: Vec<(PeerKey, u32)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| match self.status(id) {
                Status::Registered(s) => Some((j, s.generation)),
                _ => None,
            })
            .flat_map(|(j, g)| j.equivocators.keys().map(move |p| (*p, g)))
            .collect();
        score(&records, &equivocations, &self.config.scoring)
    }
}

/// Re-derives what `peer`'s statements on `job` count as; returns whether that changed.
/// A reveal that does not open the signer's (single) commitment is an equivocation.
fn refresh(
    entry: &mut JobEntry,
    outputs: &mut VecDeque<Output>,
    job: JobId,
    peer: PeerKey,
) -> bool {
    let new = match entry.standing(&peer) {
        Standing::Counts(c) => Some(c),
        Standing::Nothing => None,
        Standing::BadOpening(ids) => {
            mark_equivocator(entry, outputs, job, peer, Offence::RevealMismatch, ids);
            None
        }
    };
    let old = entry.counted.get(&peer).map(|c| (c.digest, c.auditor));
    if old == new.as_ref().map(|c| (c.digest, c.auditor)) {
        return false;
    }
    match new {
        Some(c) => entry.counted.insert(peer, c),
        None => entry.counted.remove(&peer),
    };
    true
}

fn mark_equivocator(
    entry: &mut JobEntry,
    outputs: &mut VecDeque<Output>,
    job: JobId,
    peer: PeerKey,
    offence: Offence,
    messages: [MessageId; 2],
) {
    if entry.equivocators.contains_key(&peer) {
        return;
    }
    let proof = EquivocationProof {
        peer,
        job,
        offence,
        messages,
    };
    entry.equivocators.insert(peer, proof.clone());
    outputs.push_back(Output::Equivocation(proof));
}

/// Settles a registered job from the evidence that counts (quorum `q`, tolerance `tol`),
/// telling when the settlement changes and when an audit disagrees with it.
fn resettle(
    entry: &mut JobEntry,
    outputs: &mut VecDeque<Output>,
    job: JobId,
    now: Timestamp,
    rule: &SettleRule,
) {
    let tol = &rule.tol;
    // A pinned job's results count from its executor only (anyone else's, e.g. kept from
    // before the job was registered, are evidence of nothing).
    let evidence: Vec<(PeerKey, [u8; 32], &Outcome)> = entry
        .counted
        .iter()
        .filter(|(p, _)| rule.pinned.is_none_or(|x| x == **p))
        .map(|(p, c)| (*p, c.digest, &c.outcome))
        .collect();
    let new = settle_digested(evidence, rule.q, tol);
    if new != entry.settlement {
        match &new {
            Some(s) => outputs.push_back(Output::Settled {
                job,
                settlement: s.clone(),
                at: now,
            }),
            None => outputs.push_back(Output::Unsettled { job }),
        }
        entry.settlement = new;
    }
    // Audits that disagree with the settlement (or find it contested) open a dispute.
    for (auditor, c) in entry.counted.iter() {
        if !c.auditor || entry.mismatches_reported.contains(auditor) {
            continue;
        }
        let matches = entry
            .settlement
            .as_ref()
            .is_some_and(|s| agree(&s.canonical, &c.outcome, tol));
        if !matches {
            entry.mismatches_reported.insert(*auditor);
            outputs.push_back(Output::AuditMismatch {
                job,
                auditor: *auditor,
            });
        }
    }
}

/// The job ids in both maps, in order: by lookups when `held` is small, else by merging the
/// two sorted key sequences (a voter holds evidence on every job of the generation).
fn common_keys<V, W>(held: &BTreeMap<JobId, V>, all: &BTreeMap<JobId, W>) -> Vec<JobId> {
    if held.len() < all.len() / 16 {
        return held
            .keys()
            .filter(|id| all.contains_key(id))
            .copied()
            .collect();
    }
    let mut out = Vec::new();
    let (mut a, mut b) = (held.keys().peekable(), all.keys().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => {
                a.next();
            }
            std::cmp::Ordering::Greater => {
                b.next();
            }
            std::cmp::Ordering::Equal => {
                out.push(**x);
                a.next();
                b.next();
            }
        }
    }
    out
}

fn retired_key(job: &JobId) -> u64 {
    let b = job.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn count_messages(entry: &JobEntry, signer: &PeerKey) -> usize {
    usize::from(entry.claims.contains_key(signer))
        + entry.commitments.get(signer).map_or(0, |s| s.kept.len())
        + entry.reveals.get(signer).map_or(0, |s| s.kept.len())
        + entry.audits.get(signer).map_or(0, |s| s.kept.len())
}
