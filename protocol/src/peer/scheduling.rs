//! Taking over work that others would reach late (issue 23, ADR 0007): what this peer has
//! seen of the generation's claims and of each peer's speed, and the two moves of an idle
//! peer — *stealing* a job from the back of a slow owner's queue (a slot no one has claimed
//! yet), and, with nothing left to start, *replicating* a job whose executors would settle it
//! later than this peer could (an extra executor, at most `max_extra` per job).
//!
//! Claims count against their claimer's advertised slots: a peer's unfinished claims beyond
//! its slots (the latest to arrive here) do not hold a job, so claiming many jobs and running
//! none keeps no one from them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::assign::eligible;
use crate::envelope::AnySigned;
use crate::id::JobId;
use crate::identity::PeerKey;
use crate::schedule::{
    DEFAULT_SLOTS, MAX_SLOTS, job_time_estimate, owner_finish_ms, smoothed, sooner,
};
use crate::time::Timestamp;

use super::Peer;

/// What this peer has seen of the generation's work and of each peer's speed.
#[derive(Debug, Default)]
pub(super) struct Board {
    /// Claims on the current generation's jobs that reached this peer: per claimer, each job
    /// and when its claim arrived (bounded by what the ledger stores).
    claims: HashMap<PeerKey, BTreeMap<JobId, Timestamp>>,
    /// Per peer, its job time as measured here (its claim's arrival to its commitment's),
    /// smoothed over its jobs; kept across generations for the members.
    measured: HashMap<PeerKey, u64>,
    /// Per peer, the slots (capped) and job time (0: not yet measured) its latest claim or
    /// heartbeat advertised.
    advertised: HashMap<PeerKey, (u16, u32)>,
    /// This peer's own job time (its results' wall times), smoothed.
    pub(super) own_ms: Option<u64>,
    /// Whether the last look for work found a free slot and nothing to take.
    pub(super) starved: bool,
}

impl Board {
    /// A new generation: its claims start over; speeds are kept for its `members`.
    pub(super) fn new_generation(&mut self, members: &[PeerKey]) {
        self.claims.clear();
        let member = |p: &PeerKey| members.binary_search(p).is_ok();
        self.measured.retain(|p, _| member(p));
        self.advertised.retain(|p, _| member(p));
        self.starved = false;
    }

    /// `p`'s claim on `job` arrived.
    pub(super) fn claimed(&mut self, p: PeerKey, job: JobId, now: Timestamp) {
        self.claims.entry(p).or_default().entry(job).or_insert(now);
    }

    /// `p`'s commitment on `job` arrived: one more measurement of its job time.
    pub(super) fn committed(&mut self, p: PeerKey, job: &JobId, now: Timestamp) {
        if let Some(at) = self.claims.get(&p).and_then(|c| c.get(job)) {
            let took = now.saturating_since(*at).as_millis() as u64;
            let m = smoothed(self.measured.get(&p).copied(), took);
            self.measured.insert(p, m);
        }
    }

    /// `p` advertised `slots` and a job time of `job_ms` (0: not measured yet).
    pub(super) fn advertised(&mut self, p: PeerKey, slots: u16, job_ms: u32) {
        self.advertised.insert(p, (slots.min(MAX_SLOTS), job_ms));
    }

    /// This peer finished a job in `wall_ms`.
    pub(super) fn own_result(&mut self, wall_ms: u64) {
        self.own_ms = Some(smoothed(self.own_ms, wall_ms));
    }

    /// The slots `p` advertised (capped), or the default.
    fn slots(&self, p: &PeerKey) -> u16 {
        self.advertised.get(p).map_or(DEFAULT_SLOTS, |a| a.0.max(1))
    }
}

/// A claimer's unfinished claims that count (the earliest to arrive, up to its slots), and
/// when its oldest unfinished claim arrived.
type Open = (HashSet<JobId>, Option<Timestamp>);

/// One look at the generation's claims, for one decision: which claims count, and how long
/// each peer takes (worked out per claimer as it is asked about, and remembered for the look).
struct Look<'a> {
    peer: &'a Peer,
    now: Timestamp,
    /// Per claimer asked about: its unfinished claims that count (the earliest to arrive,
    /// up to its slots), and the arrival of its oldest unfinished claim.
    open: RefCell<HashMap<PeerKey, Open>>,
    /// This peer's job time, or the generation's deadline while it has none.
    mine_ms: u64,
    /// [`Look::remaining_ms`], once worked out.
    remaining: Cell<Option<u64>>,
    /// [`Look::count`] per job asked about.
    counts: RefCell<HashMap<JobId, usize>>,
}

impl<'a> Look<'a> {
    fn new(peer: &'a Peer, now: Timestamp) -> Look<'a> {
        let mine_ms = peer
            .board
            .own_ms
            .unwrap_or(peer.chain.cur.deadline())
            .max(1);
        Look {
            peer,
            now,
            open: RefCell::new(HashMap::new()),
            mine_ms,
            remaining: Cell::new(None),
            counts: RefCell::new(HashMap::new()),
        }
    }

    /// `f` of `p`'s counted unfinished claims and its oldest unfinished claim's arrival.
    fn with_open<T>(&self, p: &PeerKey, f: impl FnOnce(&Open) -> T) -> T {
        let mut open = self.open.borrow_mut();
        let entry = open.entry(*p).or_insert_with(|| {
            let peer = self.peer;
            let mut mine: Vec<(Timestamp, JobId)> = peer
                .board
                .claims
                .get(p)
                .into_iter()
                .flatten()
                .filter(|(j, _)| peer.unfinished(p, j))
                .map(|(j, t)| (*t, *j))
                .collect();
            mine.sort_unstable();
            let oldest = mine.first().map(|(t, _)| *t);
            let slots = usize::from(peer.board.slots(p));
            (
                mine.into_iter().take(slots).map(|(_, j)| j).collect(),
                oldest,
            )
        });
        f(entry)
    }

    /// Whether `p`'s claim on `job` holds the job: `p` is a member and finished it, or the
    /// job is among the unfinished claims `p`'s slots cover. A non-member's claim (a pending
    /// joiner's) holds nothing: only members run jobs.
    fn counts(&self, p: &PeerKey, job: &JobId) -> bool {
        self.peer.chain.cur.members.binary_search(p).is_ok()
            && (!self.peer.unfinished(p, job) || self.with_open(p, |(held, _)| held.contains(job)))
    }

    /// The claimers of `job` whose claim counts.
    fn counted(&self, job: &JobId) -> Vec<&'a PeerKey> {
        self.peer
            .ledger
            .claimers(job)
            .filter(|p| self.counts(p, job))
            .collect()
    }

    /// How many claims on `job` count (remembered for the look: a look asks about the same
    /// jobs once per queue that holds them).
    fn count(&self, job: &JobId) -> usize {
        if let Some(n) = self.counts.borrow().get(job) {
            return *n;
        }
        let n = self.counted(job).len();
        self.counts.borrow_mut().insert(*job, n);
        n
    }

    /// How long `p` takes per job, as far as this peer can tell; `None` if it cannot.
    fn per_job_ms(&self, p: &PeerKey) -> Option<u64> {
        let b = &self.peer.board;
        let advertised = b
            .advertised
            .get(p)
            .map(|a| u64::from(a.1))
            .filter(|ms| *ms > 0);
        let oldest = self
            .with_open(p, |(_, oldest)| *oldest)
            .map(|t| self.now.saturating_since(t).as_millis() as u64);
        job_time_estimate(b.measured.get(p).copied(), advertised, oldest)
    }

    /// When owner `o` would finish `job` (ms from now): after the unfinished jobs of its queue
    /// before it; never (`u64::MAX`) if its claim on the job does not count (it claimed more
    /// than its slots), or if it has claimed nothing this generation although a quarter of the
    /// deadline has passed (it is not working on its queue).
    fn owner_finish(&self, o: &PeerKey, job: &JobId, elapsed: u64) -> u64 {
        let p = self.peer;
        if self.claimed_by(o, job) && !self.counts(o, job) {
            return u64::MAX;
        }
        let idle_owner = !p.board.claims.contains_key(o);
        if idle_owner && elapsed >= p.chain.cur.deadline() / 4 {
            return u64::MAX;
        }
        let r = usize::from(p.spec.redundancy);
        let ahead = p
            .chain
            .cur
            .plan
            .queues
            .get(o)
            .into_iter()
            .flatten()
            .take_while(|j| *j != job)
            .filter(|j| p.unfinished(o, j) && !self.claimed_by(o, j) && self.count(j) < r)
            .count() as u64;
        let per_job = self.per_job_ms(o).unwrap_or(self.mine_ms);
        owner_finish_ms(ahead, p.board.slots(o), per_job)
    }

    /// How long the members would take to start and finish every execution the generation
    /// still lacks (slots no counted claim holds), at the speeds this peer knows of them (its
    /// own for a member it knows nothing of).
    fn remaining_ms(&self) -> u64 {
        if let Some(v) = self.remaining.get() {
            return v;
        }
        let p = self.peer;
        let r = usize::from(p.spec.redundancy);
        let open: u128 = p
            .chain
            .cur
            .jobs
            .keys()
            .filter(|j| p.ledger.settlement(j).is_none())
            .map(|j| r.saturating_sub(self.count(j)) as u128)
            .sum();
        // Jobs per 10^9 ms.
        let rate: u128 = p
            .chain
            .cur
            .members
            .iter()
            .map(|m| {
                let t = self.per_job_ms(m).unwrap_or(self.mine_ms).max(1);
                u128::from(p.board.slots(m)) * 1_000_000_000 / u128::from(t)
            })
            .sum();
        let v = u64::try_from(open * 1_000_000_000 / rate.max(1)).unwrap_or(u64::MAX);
        self.remaining.set(Some(v));
        v
    }

    /// Whether this peer, starting `job` now, would likely finish it after the members have
    /// done all the rest, while a member clearly faster than it, that may run the job, has not
    /// claimed it and has a free slot (as far as this peer has seen): a slow peer leaves the
    /// last jobs of a generation to the fast ones rather than become its tail. Never once the
    /// job is past due (`elapsed` into the generation): the faster member may be gone.
    fn would_be_the_tail(&self, job: &JobId, elapsed: u64) -> bool {
        let p = self.peer;
        let Some(mine) = p.board.own_ms else {
            return false;
        };
        let cur = &p.chain.cur;
        if elapsed >= cur.deadline().saturating_mul(cur.plan.due(job)) {
            return false;
        }
        let faster = p
            .chain
            .cur
            .plan
            .ranked
            .get(job)
            .into_iter()
            .flatten()
            .filter(|m| **m != p.me && !self.claimed_by(m, job))
            .filter(|m| self.per_job_ms(m).is_some_and(|t| sooner(t, mine)))
            .any(|m| self.with_open(m, |(held, _)| held.len() < usize::from(p.board.slots(m))));
        faster && mine > self.remaining_ms()
    }

    fn claimed_by(&self, p: &PeerKey, job: &JobId) -> bool {
        self.peer
            .board
            .claims
            .get(p)
            .is_some_and(|c| c.contains_key(job))
    }

    /// When the counted, uncommitted claimer `c` of `job` would commit (ms from now): never
    /// if its claim is overdue (older than twice its job time, or than the deadline while its
    /// time is unknown).
    fn claimer_finish(&self, c: &PeerKey, job: &JobId) -> u64 {
        let Some(at) = self.peer.board.claims.get(c).and_then(|m| m.get(job)) else {
            return u64::MAX;
        };
        let age = self.now.saturating_since(*at).as_millis() as u64;
        let b = &self.peer.board;
        let known = b.measured.get(c).copied().or_else(|| {
            b.advertised
                .get(c)
                .map(|a| u64::from(a.1))
                .filter(|ms| *ms > 0)
        });
        let (expect, overdue) = match known {
            Some(ms) => (ms, age > ms.saturating_mul(2)),
            None => (age, age > self.peer.chain.cur.deadline()),
        };
        if overdue {
            u64::MAX
        } else {
            expect.saturating_sub(age)
        }
    }
}

impl Peer {
    /// Whether `p`'s work on `job` is unfinished: it has not committed and the job is open.
    fn unfinished(&self, p: &PeerKey, job: &JobId) -> bool {
        !self.ledger.has_committed(job, p) && self.ledger.settlement(job).is_none()
    }

    /// The jobs to take now, best first, for `free` slots: this peer's own queue (the jobs it
    /// is ranked among the first `r` for, then, one rank per deadline past a job's due round,
    /// those it is ranked next for), skipping jobs whose counted claims fill them; then, with
    /// slots left, takeovers ([`Look::takeovers`]). Notes whether it found nothing.
    pub(super) fn job_candidates(
        &mut self,
        now: Timestamp,
        elapsed: u64,
        free: usize,
    ) -> Vec<JobId> {
        self.list_my_jobs();
        // Jobs this peer claimed before a restart are its own to finish, however many claims
        // they hold now (its own among them): running one again gives the stored result.
        let mut resumed: Vec<JobId> = self
            .chain
            .cur
            .jobs
            .keys()
            .filter(|j| {
                !self.exec.taken.contains(j)
                    && self.ledger.settlement(j).is_none()
                    && self.ledger.claimers(j).any(|c| *c == self.me)
            })
            .copied()
            .collect();
        if !resumed.is_empty() {
            resumed.truncate(free);
            self.board.starved = false;
            return resumed;
        }
        let chosen = {
            let look = Look::new(self, now);
            let own = look.own_queue(elapsed);
            if own.len() >= free {
                own
            } else {
                let more: Vec<JobId> = look
                    .takeovers(elapsed)
                    .into_iter()
                    .filter(|j| !own.contains(j))
                    .collect();
                let mut all = own;
                all.extend(more);
                all
            }
        };
        self.board.starved = chosen.is_empty();
        chosen
    }
}

impl Look<'_> {
    /// This peer's own queue as it stands: its jobs ranked below `r` (and, past a job's due
    /// round, one more rank per deadline) that are open and not yet held by enough counted
    /// claims, in rank order.
    fn own_queue(&self, elapsed: u64) -> Vec<JobId> {
        let p = self.peer;
        let r = usize::from(p.spec.redundancy);
        let extra = usize::from(p.spec.schedule.max_extra_executors);
        let n = p.chain.cur.members.len();
        let d = p.chain.cur.deadline();
        p.exec
            .my_jobs
            .iter()
            .flatten()
            .filter(|(pos, _, id)| {
                let limit = eligible(r, extra, elapsed, d, p.chain.cur.plan.due(id), n);
                *pos < limit
                    && !p.exec.taken.contains(id)
                    && p.ledger.settlement(id).is_none()
                    && self.count(id) < if *pos < r { r } else { limit }
                    && !self.would_be_the_tail(id, elapsed)
            })
            .map(|(_, _, id)| *id)
            .collect()
    }

    /// The jobs an idle peer should take over, best first: jobs it would finish clearly sooner
    /// than their owners (stolen: no counted claim holds the slot), or, if there are none, jobs
    /// whose executors would settle them clearly later than this peer could (replicated, at
    /// most `max_extra` beyond `r`). Only jobs this peer is ranked for and has not taken.
    fn takeovers(&self, elapsed: u64) -> Vec<JobId> {
        let p = self.peer;
        let r = usize::from(p.spec.redundancy);
        let q = usize::from(p.spec.quorum);
        let extra = usize::from(p.spec.schedule.max_extra_executors);
        let mine = self.mine_ms;
        let mut steals: Vec<(u64, JobId)> = Vec::new();
        let mut replicas: Vec<(u64, JobId)> = Vec::new();
        let open = p
            .exec
            .my_jobs
            .iter()
            .flatten()
            .filter(|(_, _, j)| !p.exec.taken.contains(j) && p.ledger.settlement(j).is_none())
            .filter(|(_, _, j)| !self.would_be_the_tail(j, elapsed));
        for &(pos, _, j) in open {
            let counted = self.counted(&j);
            if counted.len() < r {
                let theirs = p
                    .chain
                    .cur
                    .plan
                    .owners
                    .get(&j)
                    .into_iter()
                    .flatten()
                    .filter(|(o, _)| !counted.contains(&o))
                    .map(|(o, _)| self.owner_finish(o, &j, elapsed))
                    .max()
                    .unwrap_or(u64::MAX);
                if sooner(mine, theirs) {
                    steals.push((theirs - mine, j));
                }
                continue;
            }
            let committed = p.ledger.commitment_count(&j);
            if pos >= r + extra || counted.len() >= r + extra || committed >= q {
                continue;
            }
            let mut finishes: Vec<u64> = counted
                .iter()
                .filter(|c| !p.ledger.has_committed(&j, c))
                .map(|c| self.claimer_finish(c, &j))
                .collect();
            finishes.sort_unstable();
            let theirs = finishes.get(q - committed - 1).copied().unwrap_or(u64::MAX);
            if sooner(mine, theirs) {
                replicas.push((theirs - mine, j));
            }
        }
        let best_first = |v: &mut Vec<(u64, JobId)>| v.sort_unstable_by(|a, b| b.cmp(a));
        best_first(&mut steals);
        best_first(&mut replicas);
        let chosen = if steals.is_empty() { replicas } else { steals };
        chosen.into_iter().map(|(_, j)| j).collect()
    }
}

/// What an incoming message tells the board, once the ledger has accepted it.
pub(super) enum Seen {
    /// A claim by this peer on this job of the current generation, advertising slots and a
    /// job time.
    Claim(PeerKey, JobId, u16, u32),
    /// A commitment by this peer on this job.
    Commitment(PeerKey, JobId),
    /// A heartbeat advertising slots and a job time.
    Heartbeat(PeerKey, u16, u32),
}

impl Peer {
    /// What `m` would tell the board (nothing for most messages).
    pub(super) fn board_event(&self, m: &AnySigned) -> Option<Seen> {
        match m {
            AnySigned::Claim(c) if self.chain.cur.jobs.contains_key(&c.message().job) => {
                let m = c.message();
                Some(Seen::Claim(c.signer(), m.job, m.slots, m.job_ms))
            }
            AnySigned::Commitment(c) => Some(Seen::Commitment(c.signer(), c.message().job)),
            AnySigned::Heartbeat(h) => Some(Seen::Heartbeat(
                h.signer(),
                h.message().capacity,
                h.message().job_ms,
            )),
            _ => None,
        }
    }

    /// `job`, of the current generation, settled here: its wall time (the lower median of its
    /// agreeing executors') recalibrates the generation's deadline.
    pub(super) fn calibrate(&mut self, job: &JobId) {
        let Some(s) = self.ledger.settlement(job) else {
            return;
        };
        let walls: Vec<u64> = self
            .ledger
            .executor_results(job)
            .iter()
            .filter(|r| s.agreeing.binary_search(&r.peer).is_ok())
            .map(|r| r.wall_time_ms)
            .collect();
        let wall = crate::closure::lower_median(walls);
        self.chain.cur.settled_in(wall, &self.spec.schedule);
    }

    /// What this peer advertises in its claims and heartbeats: its slots and its measured
    /// job time (0: none yet).
    pub(super) fn advert(&self) -> (u16, u32) {
        let ms = self
            .board
            .own_ms
            .map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX));
        (self.config.capacity, ms)
    }

    /// The ledger accepted the message `seen` came from, at `now`.
    pub(super) fn board_accepted(&mut self, seen: &Seen, now: Timestamp) {
        match seen {
            Seen::Claim(p, j, slots, ms) => {
                self.board.advertised(*p, *slots, *ms);
                self.board.claimed(*p, *j, now);
            }
            Seen::Commitment(p, j) => self.board.committed(*p, j, now),
            Seen::Heartbeat(p, slots, ms) => self.board.advertised(*p, *slots, *ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Signed;
    use crate::identity::Keypair;
    use crate::message::Claim;
    use crate::peer::tests::executed;
    use crate::peer::{PeerConfig, PeerInput};
    use crate::spec::tests::sample_spec;

    /// A peer with `slots` slots in a two-member campaign (r = q = 1), the other member's key,
    /// and the time.
    fn pair(slots: u16) -> (Peer, Keypair, Timestamp) {
        let (me, other) = (
            Keypair::from_secret_bytes([1; 32]),
            Keypair::from_secret_bytes([2; 32]),
        );
        let mut spec = sample_spec();
        spec.redundancy = 1;
        spec.quorum = 1;
        spec.roster = vec![me.public(), other.public()];
        spec.roster.sort();
        let config = PeerConfig {
            capacity: slots,
            ..PeerConfig::default()
        };
        let now = Timestamp(spec.created_at.0 + 1);
        (Peer::new(spec, me, config, now).expect("valid"), other, now)
    }

    fn claim(peer: &Peer, k: &Keypair, job: JobId, slots: u16, at: Timestamp) -> PeerInput {
        let c = Claim {
            campaign: peer.campaign(),
            job,
            slots,
            job_ms: 0,
            issued_at: at,
        };
        PeerInput::Message(AnySigned::Claim(
            Signed::sign_and_encode(c, k).expect("signs"),
        ))
    }

    /// The other member claims every job (in job order) advertising `its_slots` while this
    /// peer has no slot free; then it has one per job: the jobs it takes.
    fn taken_after_a_claim_flood(its_slots: u16) -> (Vec<JobId>, Vec<JobId>) {
        let (mut peer, other, now) = pair(64);
        peer.config.capacity = 0;
        let jobs: Vec<JobId> = peer.chain.cur.jobs.keys().copied().collect();
        for (i, j) in jobs.iter().enumerate() {
            let at = Timestamp(now.0 + i as u64);
            let out = peer.handle(claim(&peer, &other, *j, its_slots, at), at);
            assert!(executed(&out).is_empty());
        }
        peer.config.capacity = 64;
        let later = Timestamp(now.0 + jobs.len() as u64);
        (executed(&peer.handle(PeerInput::Tick, later)), jobs)
    }

    #[test]
    fn claims_beyond_the_claimers_slots_hold_no_job() {
        // It says one slot: only its first claim holds a job; this peer takes all the others.
        let (taken, jobs) = taken_after_a_claim_flood(1);
        assert!(jobs.len() > 2);
        assert_eq!(taken.len(), jobs.len() - 1, "{taken:?}");
        assert!(!taken.contains(&jobs[0]), "its first claim counts");
        // It says a slot per job: every claim holds its job, and this peer takes none.
        let (taken, jobs) = taken_after_a_claim_flood(u16::try_from(jobs.len()).expect("few"));
        assert!(taken.is_empty(), "{taken:?} of {}", jobs.len());
    }

    #[test]
    fn an_idle_peer_steals_from_the_back_of_a_busy_owners_queue() {
        // This peer has one slot and runs its own queue; then it takes the other member's
        // queued jobs, last first, while the other is busy with its first.
        let (mut peer, other, now) = pair(1);
        let theirs = peer.chain.cur.plan.queues[&other.public()].clone();
        assert!(theirs.len() >= 2, "the other owns several jobs");
        let mut pending = executed(&peer.handle(claim(&peer, &other, theirs[0], 1, now), now));
        let (mut stolen, mut t) = (Vec::new(), now);
        while let Some(job) = pending.pop() {
            if theirs.contains(&job) {
                stolen.push(job);
            }
            t = Timestamp(t.0 + 10);
            let result = crate::message::JobResult {
                outcome: crate::agreement::tests::metrics(900),
                wall_time_ms: 10,
            };
            pending.extend(executed(
                &peer.handle(PeerInput::JobDone { job, result }, t),
            ));
        }
        let mut expected: Vec<JobId> = theirs[1..].to_vec();
        expected.reverse();
        assert_eq!(
            stolen, expected,
            "every queued job, from the back; not the running one"
        );
    }

    /// The jobs this peer (64 slots, in a two-member campaign) takes at its first look, after
    /// a joiner that is no member announced itself with 64 slots and claimed every job, or not.
    fn taken_beside_a_joiner(flood: bool) -> Vec<JobId> {
        let (mut peer, _other, now) = pair(64);
        peer.config.capacity = 0;
        let joiner = Keypair::from_secret_bytes([3; 32]);
        if flood {
            let hb = crate::message::Heartbeat {
                campaign: peer.campaign(),
                generation: 0,
                running: 0,
                capacity: 64,
                job_ms: 1,
                issued_at: now,
            };
            let hb = AnySigned::Heartbeat(Signed::sign_and_encode(hb, &joiner).expect("signs"));
            let _ = peer.handle(PeerInput::Message(hb), now);
            let jobs: Vec<JobId> = peer.chain.cur.jobs.keys().copied().collect();
            for j in jobs {
                let _ = peer.handle(claim(&peer, &joiner, j, 64, now), now);
            }
        }
        peer.config.capacity = 64;
        let mut taken = executed(&peer.handle(PeerInput::Tick, now));
        taken.sort();
        taken
    }

    #[test]
    fn a_joiners_claims_hold_no_job() {
        let alone = taken_beside_a_joiner(false);
        assert!(!alone.is_empty());
        assert_eq!(taken_beside_a_joiner(true), alone);
    }
}
