//! This peer's own jobs: which it may run, taking them (claim and execute), commit–reveal of
//! their results, and what an abandoned job leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::assign::position_below;
use crate::derive::{rank_table, ranked_jobs};
use crate::envelope::AnySigned;
use crate::id::{JobId, context, hash_canonical};
use crate::ledger::Ledger;
use crate::message::{Claim, Commitment, JobResult, Reveal, commitment_digest};
use crate::schedule::Plan;
use crate::time::Timestamp;

use super::{Peer, PeerOutput};

/// A result of this peer's, committed and maybe revealed.
#[derive(Debug, Clone)]
pub(super) struct OwnJob {
    /// The result.
    pub(super) result: JobResult,
    /// The commitment's salt (derived from the key and the job, so the same after a restart).
    pub(super) salt: [u8; 32],
    /// Whether the reveal went out.
    pub(super) revealed: bool,
}

/// This peer's jobs in the current generation.
#[derive(Debug, Default)]
pub(super) struct Execution {
    /// Jobs running (audits are counted in [`super::audits::Audits`]).
    pub(super) running: BTreeSet<JobId>,
    /// Jobs taken (claimed) this generation, running or not: never taken twice.
    pub(super) taken: BTreeSet<JobId>,
    /// Finished jobs, with their results.
    pub(super) own: BTreeMap<JobId, OwnJob>,
    /// The jobs of the generation this peer may ever run (rank below `r + max_extra`), as
    /// `(rank, index, job)` in that order; computed once per generation.
    pub(super) my_jobs: Option<Vec<(usize, u32, JobId)>>,
    /// Whether an own job may have become ready to reveal since the last look: a commitment
    /// on one arrived, one finished, or time passed (its deadline). Looking asks the ledger
    /// about every unrevealed own job, too dear to do for every message.
    pub(super) reveal_check: bool,
}

impl Execution {
    /// Forgets the generation's jobs (a new one starts).
    pub(super) fn clear(&mut self) {
        self.running.clear();
        self.taken.clear();
        self.my_jobs = None;
        self.own.clear();
    }

    /// Own jobs whose result may be revealed now, if a look is due: once all `r` executors
    /// committed, or `q` did and the deadline passed.
    fn ready_to_reveal(
        &mut self,
        ledger: &Ledger,
        r_q: impl Fn(&JobId) -> (usize, usize),
        past_due: impl Fn(&JobId) -> bool,
    ) -> Vec<JobId> {
        if !std::mem::take(&mut self.reveal_check) {
            return Vec::new();
        }
        self.own
            .iter()
            .filter(|(j, o)| {
                !o.revealed && {
                    let c = ledger.commitment_count(j);
                    let (r, q) = r_q(j);
                    c >= r || (c >= q && past_due(j))
                }
            })
            .map(|(j, _)| *j)
            .collect()
    }

    /// The own jobs and whether each is revealed (diagnostics).
    pub(super) fn own_summary(&self) -> Vec<(String, bool)> {
        self.own
            .iter()
            .map(|(j, o)| (j.short(), o.revealed))
            .collect()
    }
}

impl Peer {
    /// A job of this peer's finished: keep its result and commit to it.
    pub(super) fn on_job_done(
        &mut self,
        job: JobId,
        result: JobResult,
        now: Timestamp,
        out: &mut Vec<PeerOutput>,
    ) {
        if !self.exec.running.remove(&job) || !self.chain.cur.jobs.contains_key(&job) {
            return;
        }
        self.board.own_result(result.wall_time_ms);
        let salt = hash_canonical(context::COMMITMENT, &(self.key.secret_bytes(), job));
        let digest = commitment_digest(&job, &self.me, &result, &salt);
        // After a restart the store may hold our commitment and reveal already: say neither
        // again (a reveal witnessing other committers than the first would contradict it).
        let revealed = self.ledger.has_revealed(&job, &self.me);
        self.exec.own.insert(
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
            campaign: self.campaign(),
            job,
            digest,
            issued_at: now,
        };
        self.sign_and_send(c, AnySigned::Commitment, now, out);
        self.voting.instance.evidence_changed();
    }

    /// Phase 1 of a step: reveals the own results that are ready: every assigned executor
    /// committed, or a quorum did and the job is past due (`elapsed` into the generation).
    pub(super) fn reveal_ready(&mut self, now: Timestamp, elapsed: u64, out: &mut Vec<PeerOutput>) {
        let (q, r) = (
            usize::from(self.spec.quorum),
            usize::from(self.spec.redundancy),
        );
        let cur = &self.chain.cur;
        // A pinned job has one executor: its own commitment is all there will be.
        let r_q = |j: &JobId| match cur.jobs.get(j).and_then(|s| s.payload.pinned()) {
            Some(_) => (1, 1),
            None => (r, q),
        };
        // With nothing left to start here, waiting for slower executors only delays the
        // closure: a quorum's commitments suffice.
        let starved = self.board.starved;
        let past_due =
            |j: &JobId| starved || elapsed >= cur.deadline().saturating_mul(cur.plan.due(j));
        let to_reveal = self.exec.ready_to_reveal(&self.ledger, r_q, past_due);
        for job in to_reveal {
            let witnessed = self.ledger.punctual_committers(&job, &self.me);
            let campaign = self.campaign();
            if let Some(o) = self.exec.own.get_mut(&job) {
                o.revealed = true;
                let reveal = Reveal {
                    campaign,
                    job,
                    result: o.result.clone(),
                    salt: o.salt,
                    witnessed,
                    issued_at: now,
                };
                self.sign_and_send(reveal, AnySigned::Reveal, now, out);
                self.voting.instance.evidence_changed();
            }
        }
    }

    /// Lists the jobs this peer may run this generation (`my_jobs`), once per generation.
    pub(super) fn list_my_jobs(&mut self) {
        let bound = self.steal_bound();
        let w = self.reputation.weights();
        let (cur, me) = (&self.chain.cur, &self.me);
        if self.exec.my_jobs.is_none()
            && let Some(cache) = &self.chain.derive_cache
        {
            if cur.members.binary_search(me).is_err() {
                self.exec.my_jobs = Some(Vec::new());
                return;
            }
            let jobs = ranked_jobs(cur.jobs.iter());
            self.exec.my_jobs =
                Some(cache.jobs_ranked_below(&cur.seed, &cur.members, &w, &jobs, bound, me));
            return;
        }
        self.exec.my_jobs.get_or_insert_with(|| {
            let mut mine: Vec<(usize, u32, JobId)> = cur
                .jobs
                .iter()
                .filter_map(|(id, spec)| {
                    let pos = match spec.payload.pinned() {
                        Some(p) => (p == me).then_some(0)?,
                        None => position_below(id, &cur.seed, &cur.members, &w, me, bound)?,
                    };
                    Some((pos, spec.index, *id))
                })
                .collect();
            mine.sort();
            mine
        });
    }

    /// Computes the current generation's plan (ADR 0007), at its start: from the first `r` of
    /// each job's rank, as every node ranks them.
    pub(super) fn plan_generation(&mut self) {
        let r = usize::from(self.spec.redundancy);
        let bound = self.steal_bound();
        let plan = {
            let w = self.reputation.weights();
            let cur = &self.chain.cur;
            let jobs = ranked_jobs(cur.jobs.iter());
            match &self.chain.derive_cache {
                Some(cache) => cache.plan(&cur.seed, &cur.members, &w, &jobs, bound, r),
                None => {
                    let table = rank_table(&cur.seed, &cur.members, &w, &jobs, bound);
                    Arc::new(Plan::new(table.iter().map(|(p, q)| (p, q.as_slice())), r))
                }
            }
        };
        self.chain.cur.plan = plan;
        self.board.new_generation(&self.chain.cur.members);
        // Claims on the new jobs that arrived before the generation began count from now.
        let now = self.last_now;
        for job in self.chain.cur.jobs.keys() {
            for p in self.ledger.claimers(job) {
                self.board.claimed(*p, *job, now);
            }
        }
    }

    /// Phase 4 of a step: takes jobs (members only, within capacity): claims each and asks
    /// for it to be run.
    pub(super) fn take_jobs(&mut self, now: Timestamp, elapsed: u64, out: &mut Vec<PeerOutput>) {
        let capacity = usize::from(self.config.capacity);
        if !self.is_member() || self.running() >= capacity {
            return;
        }
        let free = capacity - self.running();
        for id in self.job_candidates(now, elapsed, free) {
            if self.running() >= capacity {
                break;
            }
            let Some(spec) = self.chain.cur.jobs.get(&id).cloned() else {
                continue;
            };
            self.exec.taken.insert(id);
            self.exec.running.insert(id);
            // A job claimed before a restart is not claimed again (a second, different claim
            // would contradict the first).
            if !self.ledger.claimers(&id).any(|c| *c == self.me) {
                let (slots, job_ms) = self.advert();
                let claim = Claim {
                    campaign: self.campaign(),
                    job: id,
                    slots,
                    job_ms,
                    issued_at: now,
                };
                self.sign_and_send(claim, AnySigned::Claim, now, out);
            }
            out.push(PeerOutput::Execute(spec));
            if let Some(mine) = &mut self.exec.my_jobs {
                mine.retain(|(_, _, j)| *j != id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agreement::tests::metrics;
    use crate::peer::PeerInput;
    use crate::peer::tests::{executed, solo};

    fn result() -> JobResult {
        JobResult {
            outcome: metrics(900),
            wall_time_ms: 7,
        }
    }

    /// The claims, commitments and reveals among `out`, by kind and job.
    fn said(out: &[PeerOutput]) -> Vec<(&'static str, JobId)> {
        out.iter()
            .filter_map(|o| match o {
                PeerOutput::Broadcast(AnySigned::Claim(c)) => Some(("claim", c.message().job)),
                PeerOutput::Broadcast(AnySigned::Commitment(c)) => {
                    Some(("commit", c.message().job))
                }
                PeerOutput::Broadcast(AnySigned::Reveal(r)) => Some(("reveal", r.message().job)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_job_claimed_before_a_restart_is_run_again_without_a_second_claim() {
        // Capacity 1: the peer claims one job, then "crashes" before its result is published.
        let (mut peer, now) = solo(1, 1, 1);
        let out = peer.handle(PeerInput::Tick, now);
        let job = executed(&out)[0];
        let claim = out
            .iter()
            .find_map(|o| match o {
                PeerOutput::Broadcast(m @ AnySigned::Claim(_)) => Some(m.clone()),
                _ => None,
            })
            .expect("a claim");
        // The restarted peer replays its own claim: the job is still its own to finish.
        let (mut restarted, _) = solo(1, 1, 1);
        restarted.handle(PeerInput::Replay(claim), now);
        let out = restarted.handle(PeerInput::Tick, now);
        assert_eq!(
            executed(&out),
            vec![job],
            "the claimed job runs again first"
        );
        assert!(
            said(&out).is_empty(),
            "and is not claimed a second time: {:?}",
            said(&out)
        );
        let out = restarted.handle(
            PeerInput::JobDone {
                job,
                result: result(),
            },
            now,
        );
        assert_eq!(
            said(&out)[..2],
            [("commit", job), ("reveal", job)],
            "then committed and revealed (and the slot goes to the next job)"
        );
    }

    #[test]
    fn jobs_are_claimed_and_run_up_to_capacity() {
        let (mut peer, now) = solo(1, 1, 3);
        let out = peer.handle(PeerInput::Tick, now);
        let jobs = executed(&out);
        assert_eq!(jobs.len(), 3);
        let claims: Vec<_> = said(&out).into_iter().map(|(_, j)| j).collect();
        assert_eq!(claims, jobs, "each job is claimed as it is taken");
        assert_eq!(peer.running(), 3);
        assert!(
            executed(&peer.handle(PeerInput::Tick, now)).is_empty(),
            "full"
        );
    }

    #[test]
    fn with_all_executors_committed_a_result_is_revealed_at_once() {
        let (mut peer, now) = solo(1, 1, 1);
        let job = executed(&peer.handle(PeerInput::Tick, now))[0];
        let out = peer.handle(
            PeerInput::JobDone {
                job,
                result: result(),
            },
            now,
        );
        let said = said(&out);
        assert_eq!(said[..2], [("commit", job), ("reveal", job)]);
        assert!(
            peer.ledger().settlement(&job).is_some(),
            "r = q = 1: settled"
        );
        // The freed slot takes the next job.
        assert!(matches!(said[2..], [("claim", next)] if next != job));
        assert_eq!(peer.running(), 1);
    }

    #[test]
    fn with_fewer_than_r_commitments_the_reveal_waits_for_the_deadline() {
        // r = 2, q = 1, and this peer is the only member: its commitment is the only one.
        let (mut peer, now) = solo(2, 1, 1);
        let job = executed(&peer.handle(PeerInput::Tick, now))[0];
        let out = peer.handle(
            PeerInput::JobDone {
                job,
                result: result(),
            },
            now,
        );
        let commitment = out
            .iter()
            .find_map(|o| match o {
                PeerOutput::Broadcast(AnySigned::Commitment(c)) => Some(c.message().clone()),
                _ => None,
            })
            .expect("a commitment");
        assert!(!said(&out).contains(&("reveal", job)), "q committed, not r");
        let deadline = peer.chain.cur.deadline_ms;
        let before = now.saturating_add(Duration::from_millis(deadline - 1));
        assert!(!said(&peer.handle(PeerInput::Tick, before)).contains(&("reveal", job)));
        let at = now.saturating_add(Duration::from_millis(deadline));
        let out = peer.handle(PeerInput::Tick, at);
        let reveal = out
            .iter()
            .find_map(|o| match o {
                PeerOutput::Broadcast(AnySigned::Reveal(r)) => Some(r.message().clone()),
                _ => None,
            })
            .expect("past the deadline, q commitments suffice");
        assert_eq!(reveal.job, job);
        assert_eq!(reveal.result, result());
        let opened = commitment_digest(&job, &peer.key(), &reveal.result, &reveal.salt);
        assert_eq!(opened, commitment.digest, "the reveal opens the commitment");
        assert!(
            !said(&peer.handle(PeerInput::Tick, at)).contains(&("reveal", job)),
            "revealed once"
        );
    }

    #[test]
    fn a_job_not_running_here_is_not_committed() {
        let (mut peer, now) = solo(1, 1, 1);
        let running = executed(&peer.handle(PeerInput::Tick, now))[0];
        let other = *peer
            .chain
            .cur
            .jobs
            .keys()
            .find(|j| **j != running)
            .expect("two jobs");
        let out = peer.handle(
            PeerInput::JobDone {
                job: other,
                result: result(),
            },
            now,
        );
        assert!(said(&out).is_empty());
        assert!(peer.exec.own.is_empty());
    }
}
