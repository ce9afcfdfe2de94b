//! What a simulated run shows: its [`RunReport`], read from the reference honest node's
//! decided jobs ([`hivemesh_protocol::standings`]) and from the simulator's own view of every
//! node, and [`describe`] for people.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hivemesh_protocol::PeerKey;
use hivemesh_protocol::closure::Closure;
use hivemesh_protocol::envelope::AnySigned;
use hivemesh_protocol::message::Step;
use hivemesh_protocol::peer::Peer;
use hivemesh_protocol::standings::{self, AuditLabel};

use super::{Sim, true_outcome};
use crate::scenario::Behaviour;

/// What audits did in one run (from the reference node's closures).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditStats {
    /// Settled jobs subject to sampling, and how many were sampled.
    pub drawn: (usize, usize),
    /// The expected number sampled: the sum of the sampling rates.
    pub expected_sampled: f64,
    /// Verdicts given; of those, closures overturned.
    pub verdicts: usize,
    /// Verdicts that overturned a closure's outcome.
    pub overturned: usize,
    /// Auditors contradicted by the jury (false accusations punished).
    pub contradicted: usize,
    /// Wrong outcomes settled by colluders at closure, the number theory expects audits to
    /// catch (the sum of their sampling rates), and how many were caught (overturned).
    pub captured: usize,
    /// Theory's expectation of `caught`: the sum of the captured jobs' sampling rates.
    pub captured_expected: f64,
    /// Captured jobs that were sampled.
    pub captured_sampled: usize,
    /// Captured jobs overturned by a verdict.
    pub caught: usize,
    /// Failed audits per behaviour class.
    pub failed_by_class: BTreeMap<String, u64>,
}

/// What one run of a scenario under one seed produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Honest nodes at the end (alive, not Byzantine).
    pub honest: usize,
    /// Honest nodes that closed every generation.
    pub honest_finished: usize,
    /// Generations in the campaign.
    pub generations: u32,
    /// Per generation: distinct closure roots among honest nodes that closed it.
    pub distinct_roots: Vec<usize>,
    /// Settled jobs whose final outcome (after audit verdicts) is not the job's true outcome,
    /// in the reference node's closures.
    pub wrong_finalised: usize,
    /// Settled entries whose outcome was wrong when their generation closed (before audits).
    pub wrong_at_closure: usize,
    /// Audits: what the campaign's sampling and verdicts did.
    pub audits: AuditStats,
    /// Void entries (jobs dropped without quorum).
    pub void_entries: usize,
    /// Settled entries.
    pub settled_entries: usize,
    /// Virtual time when the last honest node finished (or the run stopped).
    pub end_ms: u64,
    /// Per generation: virtual ms from the first honest node entering it to each honest node
    /// closing it.
    pub closure_times_ms: Vec<Vec<u64>>,
    /// Message deliveries to honest nodes, divided by honest nodes and jobs.
    pub messages_per_node_per_job: f64,
    /// Of those, job evidence (claims, commitments, reveals), per honest node and job.
    pub evidence_per_node_per_job: f64,
    /// Job evidence delivered to honest nodes outside the genesis roster (joiners, who vote
    /// only once admitted, and members past the roster cap), per node and job: what sharded
    /// evidence topics spare them. `None` when every node is on the roster.
    pub evidence_per_joiner_per_job: Option<f64>,
    /// Distinct messages sent (signed envelopes).
    pub distinct_messages: usize,
    /// Messages turned away at ingress (bad signature, wrong campaign, garbage).
    pub rejected_at_ingress: usize,
    /// Agreed results credited to each behaviour class ("honest" for honest nodes) in the
    /// reference closures, and how many nodes are in the class.
    pub agreed_by_class: BTreeMap<String, (u64, usize)>,
    /// Dissents recorded against each class.
    pub dissents_by_class: BTreeMap<String, u64>,
    /// Jobs (over all generations) where a colluding group formed the settled outcome.
    pub collusion_settled: usize,
    /// Jobs where at least `q` colluders were among the top-`r` executors (they could form a
    /// quorum); with the settled ones above this gives the observed capture rate.
    pub collusion_quorum_possible: usize,
    /// Jobs where at least `q` colluders were among the `r + max_extra` ranks that may ever
    /// run a job (past deadlines or as idle helpers): the most jobs colluders can capture.
    pub collusion_quorum_reachable: usize,
    /// Nodes that equivocated and were detected by the reference honest node's ledger.
    pub equivocators_detected: usize,
    /// Honest nodes (crashed and restarted ones included) that any running honest node saw
    /// sign two different proposals or votes for one slot of a closure vote: must be 0.
    pub honest_vote_equivocators: usize,
    /// Agreed results credited to nodes that joined mid-campaign.
    pub joiners_agreed: u64,
    /// Members of the last generation (by the reference node's closures).
    pub final_members: usize,
    /// Regeneses the creator signed (closure votes handed to the voters that stalled them,
    /// ADR 0006).
    pub regeneses: usize,
    /// Stall votes signed.
    pub stalls: usize,
    /// Executions honest nodes started (a job run by three executors counts three).
    pub executions: usize,
    /// A lower bound on the campaign's time (ms) for its first generation's jobs: their total
    /// work (`r` runs each, at speed 1) over the honest nodes' total capacity (slots × speed
    /// at the start), or the longest job on the fastest node, whichever is larger. With
    /// `end_ms` it gives the makespan ratio of scheduling scenarios.
    pub lower_bound_ms: u64,
    /// Events processed.
    pub events: u64,
    /// The reference node's closure root per generation (honest nodes agree on them when
    /// `distinct_roots` is all ones).
    pub roots: Vec<[u8; 32]>,
}

impl RunReport {
    /// Whether the core properties hold: every honest node finished, with one closure root per
    /// generation, and no wrong result was finalised.
    pub fn sound(&self) -> bool {
        self.honest_finished == self.honest
            && self.distinct_roots.len() == self.generations as usize
            && self.distinct_roots.iter().all(|&d| d == 1)
    }
}

impl Sim {
    fn class(&self, i: usize) -> String {
        match self.nodes[i].behaviour {
            None => "honest".into(),
            Some(b) => format!("{b:?}").to_lowercase(),
        }
    }

    pub(super) fn report(&self) -> RunReport {
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.honest(i) && self.nodes[i].up)
            .collect();
        let mut r = RunReport {
            seed: 0,
            honest: honest.len(),
            generations: self.sc.generations,
            end_ms: self.now,
            events: self.events,
            distinct_messages: self.log.len(),
            rejected_at_ingress: self.rejected_at_ingress,
            regeneses: self
                .log
                .iter()
                .filter(|m| matches!(&***m, AnySigned::Regenesis(_)))
                .count(),
            stalls: self
                .log
                .iter()
                .filter(|m| matches!(&***m, AnySigned::Vote(v) if v.message().step == Step::Stall))
                .count(),
            ..RunReport::default()
        };
        self.report_closures(&honest, &mut r);
        r.executions = self.executions;
        r.lower_bound_ms = self.lower_bound_ms();
        // Reference: the honest node with the most closures.
        let Some(reference) = honest
            .iter()
            .filter_map(|&i| self.nodes[i].peer.as_ref().map(|p| (p.closures().len(), i)))
            .max()
            .map(|x| x.1)
        else {
            return r;
        };
        r.roots = self.nodes[reference]
            .closed_at
            .values()
            .map(|&(_, root)| root)
            .collect();
        let Some(peer) = self.nodes[reference].peer.as_ref() else {
            return r;
        };
        let who = self.who();
        for i in 0..self.nodes.len() {
            r.agreed_by_class.entry(self.class(i)).or_default().1 += 1;
        }
        r.final_members = peer.closures().last().map_or(0, |c| c.0.members.len());
        self.report_entries(peer, &who, &mut r);
        if std::env::var_os("NETSIM_DEBUG").is_some() {
            debug_pending_audits(peer);
        }
        report_credit(peer, &who, &mut r);
        if !who.colluders.is_empty() {
            self.report_collusion_reach(peer, &who.colluders, &mut r);
        }
        self.report_equivocators(peer, &honest, &mut r);
        r
    }

    /// See [`RunReport::lower_bound_ms`].
    fn lower_bound_ms(&self) -> u64 {
        let base = |id: &hivemesh_protocol::JobId| {
            if self.sc.per_job_times {
                self.job_base_ms(id)
            } else {
                u64::midpoint(self.sc.job_time_ms.min, self.sc.job_time_ms.max)
            }
        };
        let first: Vec<u64> = self
            .jobs_by_id
            .iter()
            .filter(|(_, j)| j.generation == 0)
            .map(|(id, _)| base(id))
            .collect();
        let work = first.iter().sum::<u64>() as f64 * f64::from(self.sc.redundancy);
        let honest = (0..self.sc.nodes).filter(|&i| self.honest(i));
        let capacity: f64 = honest
            .clone()
            .map(|i| f64::from(self.capacity_of(i)) * self.speeds[i].1)
            .sum();
        let fastest = honest.map(|i| self.speeds[i].1).fold(1.0, f64::max);
        let longest = first.iter().copied().max().unwrap_or(0) as f64 / fastest;
        (work / capacity.max(1.0)).max(longest).round() as u64
    }

    /// Roots and closure times per generation among the honest nodes; messages per job.
    fn report_closures(&self, honest: &[usize], r: &mut RunReport) {
        let g = self.sc.generations;
        r.honest_finished = honest
            .iter()
            .filter(|&&i| self.nodes[i].peer.as_ref().is_some_and(Peer::finished))
            .count();
        for gn in 0..g {
            let roots: BTreeSet<[u8; 32]> = honest
                .iter()
                .filter_map(|&i| self.nodes[i].closed_at.get(&gn).map(|x| x.1))
                .collect();
            if roots.is_empty() {
                break;
            }
            r.distinct_roots.push(roots.len());
            let start = self.first_entered.get(&gn).copied().unwrap_or(0);
            r.closure_times_ms.push(
                honest
                    .iter()
                    .filter_map(|&i| self.nodes[i].closed_at.get(&gn).map(|x| x.0 - start))
                    .collect(),
            );
        }
        let total_jobs = u64::from(self.sc.population) * u64::from(g);
        let deliveries_to_honest: u64 = (0..self.nodes.len())
            .filter(|&i| self.honest(i))
            .map(|i| self.nodes[i].delivered)
            .sum();
        let per_node_job =
            |n: u64| n as f64 / honest.len().max(1) as f64 / total_jobs.max(1) as f64;
        r.messages_per_node_per_job = per_node_job(deliveries_to_honest);
        r.evidence_per_node_per_job = per_node_job(
            (0..self.nodes.len())
                .filter(|&i| self.honest(i))
                .map(|i| self.nodes[i].evidence_delivered)
                .sum(),
        );
        let joiners: Vec<u64> = (0..self.nodes.len())
            .filter(|&i| self.honest(i) && !self.spec.roster.contains(&self.nodes[i].key.public()))
            .map(|i| self.nodes[i].evidence_delivered)
            .collect();
        r.evidence_per_joiner_per_job = (!joiners.is_empty()).then(|| {
            joiners.iter().sum::<u64>() as f64 / joiners.len() as f64 / total_jobs.max(1) as f64
        });
    }

    /// Who is who among the nodes, by key.
    fn who(&self) -> Who {
        Who {
            class_of: (0..self.nodes.len())
                .map(|i| (self.nodes[i].key.public(), self.class(i)))
                .collect(),
            joiners: (self.sc.nodes..self.nodes.len())
                .map(|i| self.nodes[i].key.public())
                .collect(),
            colluders: (0..self.nodes.len())
                .filter(|&i| self.nodes[i].behaviour == Some(Behaviour::Collude))
                .map(|i| self.nodes[i].key.public())
                .collect(),
        }
    }

    /// Settled and void entries, wrong results, audits and dissent, from the reference
    /// peer's decided jobs.
    fn report_entries(&self, peer: &Peer, who: &Who, r: &mut RunReport) {
        let (class_of, colluders) = (&who.class_of, &who.colluders);
        let closures: Vec<&Closure> = peer.closures().iter().map(|(c, _)| &**c).collect();
        for d in standings::decided(&closures, &self.spec.tolerance) {
            let Some(settlement) = d.settled else {
                r.void_entries += 1;
                if std::env::var_os("NETSIM_DEBUG").is_some() {
                    eprintln!(
                        "void g{} job {}: commitments {} results {:?}",
                        d.generation,
                        d.job.short(),
                        peer.ledger().commitment_count(&d.job),
                        peer.ledger()
                            .executor_results(&d.job)
                            .iter()
                            .map(|x| (x.peer.short(), x.late))
                            .collect::<Vec<_>>()
                    );
                }
                continue;
            };
            let job = &d.job;
            r.settled_entries += 1;
            let truth = self.jobs_by_id.get(job).map(true_outcome);
            let wrong = truth.as_ref().is_some_and(|t| settlement.canonical != *t);
            let overturned = d.audit == Some(AuditLabel::Overturned);
            let final_outcome = d
                .verdict
                .map_or(&settlement.canonical, |v| v.outcome(settlement));
            if truth.as_ref().is_some_and(|t| final_outcome != t) {
                r.wrong_finalised += 1;
            }
            let draw = peer.audit_draws().get(job).copied();
            if let Some((rate, drawn)) = draw {
                r.audits.drawn.0 += 1;
                r.audits.drawn.1 += usize::from(drawn);
                r.audits.expected_sampled += f64::from(rate) / 1e6;
            }
            if wrong {
                r.wrong_at_closure += 1;
                if settlement.agreeing.iter().all(|p| colluders.contains(p)) {
                    r.collusion_settled += 1;
                    r.audits.captured += 1;
                    if let Some((rate, drawn)) = draw {
                        r.audits.captured_expected += f64::from(rate) / 1e6;
                        r.audits.captured_sampled += usize::from(drawn);
                    }
                    r.audits.caught += usize::from(overturned);
                }
            }
            if let Some(v) = d.verdict {
                r.audits.verdicts += 1;
                r.audits.overturned += usize::from(overturned);
                r.audits.contradicted += v.contradicted.len();
            }
            for p in &settlement.dissenting {
                if let Some(c) = class_of.get(p) {
                    *r.dissents_by_class.entry(c.clone()).or_default() += 1;
                }
            }
        }
    }

    /// Jobs where colluders held at least `q` of the top-`r` ranks (possible) or of the
    /// top `r + max_extra` (reachable).
    fn report_collusion_reach(
        &self,
        peer: &Peer,
        colluders: &BTreeSet<PeerKey>,
        r: &mut RunReport,
    ) {
        // Jobs where colluders held at least q of the top-r ranks.
        for (gn, (closure, _)) in peer.closures().iter().enumerate() {
            let seed = if gn == 0 {
                hivemesh_protocol::closure::generation_seed(&self.campaign, 0, &[0; 32])
            } else {
                peer.closures()[gn - 1].0.seed()
            };
            let members = if gn == 0 {
                self.spec.roster.clone()
            } else {
                peer.closures()[gn - 1].0.members.clone()
            };
            for e in &closure.entries {
                let ranked = hivemesh_protocol::assign::rank(&e.job(), &seed, &members, |_| {
                    hivemesh_protocol::assign::BASE_WEIGHT
                });
                let colluding_within = |ranks: usize| {
                    ranked
                        .iter()
                        .take(ranks)
                        .filter(|p| colluders.contains(p))
                        .count()
                };
                let (r_, q) = (usize::from(self.sc.redundancy), usize::from(self.sc.quorum));
                let extra = usize::from(self.spec.schedule.max_extra_executors);
                if colluding_within(r_) >= q {
                    r.collusion_quorum_possible += 1;
                }
                if colluding_within(r_ + extra) >= q {
                    r.collusion_quorum_reachable += 1;
                }
            }
        }
    }

    /// Ledger equivocators detected, and honest nodes seen equivocating in the vote.
    fn report_equivocators(&self, peer: &Peer, honest: &[usize], r: &mut RunReport) {
        let equivocators: BTreeSet<PeerKey> =
            peer.ledger().equivocations().map(|e| e.peer).collect();
        r.equivocators_detected = equivocators.len();
        let seen: BTreeSet<PeerKey> = honest
            .iter()
            .filter_map(|&i| self.nodes[i].peer.as_ref())
            .flat_map(Peer::vote_equivocators)
            .collect();
        r.honest_vote_equivocators = (0..self.nodes.len())
            .filter(|&i| self.honest(i) && seen.contains(&self.nodes[i].key.public()))
            .count();
    }
}

/// The nodes' keys by role, for a report.
struct Who {
    /// Each node's class (`honest`, or its behaviour), by key.
    class_of: HashMap<PeerKey, String>,
    /// Nodes that joined after the start.
    joiners: BTreeSet<PeerKey>,
    /// Colluding nodes.
    colluders: BTreeSet<PeerKey>,
}

/// Credit after audits, as the reference peer's reputation counts it.
fn report_credit(peer: &Peer, who: &Who, r: &mut RunReport) {
    for (p, n) in peer.agreed_results() {
        if let Some(c) = who.class_of.get(p) {
            r.agreed_by_class.entry(c.clone()).or_default().0 += n;
        }
        if who.joiners.contains(p) {
            r.joiners_agreed += n;
        }
    }
    for (p, n) in peer.failed_audits() {
        if let Some(c) = who.class_of.get(p) {
            *r.audits.failed_by_class.entry(c.clone()).or_default() += n;
        }
    }
}

/// Audits still pending at the reference peer (`NETSIM_DEBUG`).
fn debug_pending_audits(peer: &Peer) {
    for (job, a) in peer.pending_audits() {
        eprintln!(
            "pending audit g{} {}: executors {:?} reports {:?} jury {:?}",
            a.generation,
            job.short(),
            a.executors.iter().map(PeerKey::short).collect::<Vec<_>>(),
            peer.ledger()
                .audit_results(job)
                .iter()
                .map(|(p, o, _)| (p.short(), *o == &true_outcome(&a.spec)))
                .collect::<Vec<_>>(),
            a.jury.iter().map(PeerKey::short).collect::<Vec<_>>()
        );
    }
}

/// Formats a run as report lines.
pub fn describe(r: &RunReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {}: {}/{} honest nodes finished {} generations at {:.1} s virtual; roots per generation {:?}",
        r.seed,
        r.honest_finished,
        r.honest,
        r.distinct_roots.len(),
        r.end_ms as f64 / 1000.0,
        r.distinct_roots
    );
    let _ = writeln!(
        s,
        "  entries: {} settled, {} void; wrong results: {} at closure, {} after audits",
        r.settled_entries, r.void_entries, r.wrong_at_closure, r.wrong_finalised
    );
    let a = &r.audits;
    if a.drawn.0 > 0 {
        let _ = writeln!(
            s,
            "  audits: {} of {} settled jobs sampled (expected {:.1}); {} verdicts, {} overturned, {} false accusations punished",
            a.drawn.1, a.drawn.0, a.expected_sampled, a.verdicts, a.overturned, a.contradicted
        );
        if a.captured > 0 {
            let _ = writeln!(
                s,
                "  collusion caught by audits: predicted {:.2} of {} captured jobs (sum of sampling rates), observed {} ({} sampled)",
                a.captured_expected, a.captured, a.caught, a.captured_sampled
            );
        }
        if !a.failed_by_class.is_empty() {
            let _ = writeln!(s, "  failed audits by class: {:?}", a.failed_by_class);
        }
    }
    let _ = writeln!(
        s,
        "  messages: {} distinct, {:.1} deliveries per honest node per job ({:.1} of job evidence{}); {} rejected at ingress; {} events",
        r.distinct_messages,
        r.messages_per_node_per_job,
        r.evidence_per_node_per_job,
        r.evidence_per_joiner_per_job
            .map(|j| format!(", {j:.1} to nodes off the genesis roster"))
            .unwrap_or_default(),
        r.rejected_at_ingress,
        r.events
    );
    if let Some(root) = r.roots.last() {
        let hex: String = root[..8].iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(s, "  last closure root {hex}…");
    }
    for (class, (agreed, n)) in &r.agreed_by_class {
        let _ = writeln!(
            s,
            "  {class:<10} {n:>4} nodes: {agreed:>5} credited results, {:>4} dissents",
            r.dissents_by_class.get(class).copied().unwrap_or(0)
        );
    }
    if r.collusion_quorum_possible > 0 || r.collusion_settled > 0 {
        let _ = writeln!(
            s,
            "  collusion: quorum possible on {} jobs ({} counting extra executors), colluders' result finalised on {}",
            r.collusion_quorum_possible, r.collusion_quorum_reachable, r.collusion_settled
        );
    }
    describe_membership_and_schedule(&mut s, r);
    if r.joiners_agreed > 0 {
        let _ = writeln!(s, "  joiners: {} credited results", r.joiners_agreed);
    }
    if r.honest_vote_equivocators > 0 {
        let _ = writeln!(
            s,
            "  HONEST NODES EQUIVOCATED IN A CLOSURE VOTE: {}",
            r.honest_vote_equivocators
        );
    }
    if r.equivocators_detected > 0 {
        let _ = writeln!(s, "  equivocators detected: {}", r.equivocators_detected);
    }
    for (g, times) in r.closure_times_ms.iter().enumerate() {
        let mut t = times.clone();
        t.sort_unstable();
        if let (Some(first), Some(last)) = (t.first(), t.last()) {
            let _ = writeln!(
                s,
                "  generation {g}: closed {:.1}–{:.1} s after it began (median {:.1} s)",
                *first as f64 / 1000.0,
                *last as f64 / 1000.0,
                t[(t.len() - 1) / 2] as f64 / 1000.0
            );
        }
    }
    s
}

/// The members, scheduling and stall lines of [`describe`].
fn describe_membership_and_schedule(s: &mut String, r: &RunReport) {
    use std::fmt::Write;
    let _ = writeln!(s, "  members at the end: {}", r.final_members);
    if r.lower_bound_ms > 0 {
        let _ = writeln!(
            s,
            "  executions {}; end / lower bound {:.0} / {:.0} s = {:.2}",
            r.executions,
            r.end_ms as f64 / 1000.0,
            r.lower_bound_ms as f64 / 1000.0,
            r.end_ms as f64 / r.lower_bound_ms as f64
        );
    }
    if r.stalls > 0 {
        let _ = writeln!(
            s,
            "  stalled votes: {} stalls, {} regeneses",
            r.stalls, r.regeneses
        );
    }
}
