//! Training one model together, round by round (DiLoCo-style; ADR 0009).
//!
//! A round is a generation. Each of its `segments` jobs starts from the round's model, trains
//! it for `inner_steps` on a segment of the training split (drawn from the round's seed, so
//! no one chooses their data), and reports its update (the parameter delta) as a blob,
//! together with the id of the model it started from. The next round's model is derived from
//! the agreed updates by an outer step that every node computes the same way, in segment
//! order. After the last round, one more generation of a single job evaluates the final model
//! on the test split: its agreed outcome names the final model's id.
//!
//! The rounds' models are never named by the protocol before they exist: a job's payload says
//! how to build its start model, as the previous round's start model (`base`, whose id that
//! round's executors agreed on) and the previous round's agreed `updates`. So a job spec is
//! self-contained: a node that joins in round `k` fetches `base` and `updates` by id (each
//! verified by its hash), computes the start model, and trains; it never replays earlier
//! rounds.

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::{CampaignKind, JobPayload, KindRules, SearchError, SearchState, Told};
use crate::id::BlobId;
use crate::outcome::Outcome;
use crate::spec_error::{SpecError, field};

/// Most segments (jobs) in one round.
pub const MAX_SEGMENTS: u32 = 256;
/// Most rounds.
pub const MAX_ROUNDS: u32 = 100_000;
/// Most inner optimiser steps per segment.
pub const MAX_INNER_STEPS: u32 = 1_000_000;

/// Parameters of a `train` campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// The model to train, as a blob: an architecture (postcard IR; round 0 initialises it from
    /// the campaign's seed) or a weights file (architecture and initial weights, e.g. an
    /// architecture search's result).
    pub model: BlobId,
    /// Training rounds (`R`).
    pub rounds: u32,
    /// Segments (jobs) per round (`S`).
    pub segments: u32,
    /// Samples in a segment.
    pub segment_size: u32,
    /// Inner optimiser steps per segment (`H`); the inner optimiser, batch size and learning
    /// rate are the campaign budget's.
    pub inner_steps: u32,
    /// How the agreed updates move the model.
    pub outer: OuterStep,
    /// How the agreed updates are combined before the outer step.
    pub aggregate: Aggregate,
    /// How updates travel.
    pub encoding: UpdateEncoding,
}

/// How an update's blob carries its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateEncoding {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the bytes).
    F16,
    /// Per tensor, only the `per_mille`/1000 largest values by magnitude, as index and value
    /// (8 bytes each); the rest count as zero. With error feedback: what a segment did not send
    /// is its residual (a third artifact), added to the next round's update of the same segment.
    TopK {
        /// Values kept per thousand, 1 to 1000.
        per_mille: u16,
    },
}

/// The outer step: how a round's combined update moves the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OuterStep {
    /// The next model is the start model plus the combined update (federated averaging).
    Average,
    /// SGD with Nesterov momentum on the pseudo-gradient (minus the combined update), as in
    /// DiLoCo: `m = μ·m + Δ; θ -= lr·(Δ + μ·m)`.
    Nesterov {
        /// Outer learning rate (DiLoCo: 0.7).
        learning_rate: f32,
        /// Momentum `μ` in `[0, 1)` (DiLoCo: 0.9).
        momentum: f32,
    },
}

/// How the agreed updates of a round are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Aggregate {
    /// The mean.
    Mean,
    /// The mean after dropping the `trim` largest and `trim` smallest values of each
    /// coordinate (no fewer than `2·trim + 1` updates are combined this way; with fewer, the
    /// median): `trim` bad segments move no coordinate beyond the honest ones' range.
    TrimmedMean {
        /// Values dropped at each end.
        trim: u32,
    },
    /// CenteredClip over whole updates (hivemind's BTARD): from the coordinate-wise median,
    /// `iterations` steps towards the updates, each clipped to `radius` × their median
    /// distance from the median: one update far from the others moves the result a bounded
    /// amount.
    CenteredClip {
        /// The clipping radius as a multiple of the median distance, in `(0, 100]`.
        radius: f32,
        /// Steps, 1 to 10.
        iterations: u8,
    },
    /// The coordinate-wise median.
    Median,
    /// Multi-Krum over whole updates: the mean of the `keep` updates with the smallest sums
    /// of squared distances to their `n − byzantine − 2` nearest others.
    MultiKrum {
        /// Bad updates assumed; `2·byzantine + 2 < segments`.
        byzantine: u16,
        /// Updates averaged, 1 to `segments − byzantine`.
        keep: u16,
    },
}

impl KindRules for TrainParams {
    fn kind(&self) -> CampaignKind {
        CampaignKind::Train
    }

    fn validate(&self) -> Result<(), SpecError> {
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(field("rounds", format!("must be 1 to {MAX_ROUNDS}")));
        }
        if !(1..=MAX_SEGMENTS).contains(&self.segments) {
            return Err(field("segments", format!("must be 1 to {MAX_SEGMENTS}")));
        }
        if self.segment_size == 0 {
            return Err(field("segment_size", "must be at least 1"));
        }
        if !(1..=MAX_INNER_STEPS).contains(&self.inner_steps) {
            return Err(field(
                "inner_steps",
                format!("must be 1 to {MAX_INNER_STEPS}"),
            ));
        }
        if let OuterStep::Nesterov {
            learning_rate,
            momentum,
        } = self.outer
        {
            if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate <= 10.0) {
                return Err(field("outer_learning_rate", "must be in (0, 10]"));
            }
            if !(0.0..1.0).contains(&momentum) {
                return Err(field("outer_momentum", "must be in [0, 1)"));
            }
        }
        if let UpdateEncoding::TopK { per_mille } = self.encoding
            && !(1..=1000).contains(&per_mille)
        {
            return Err(field("top_k_per_mille", "must be 1 to 1000"));
        }
        if let Aggregate::CenteredClip { radius, iterations } = self.aggregate {
            if !(radius.is_finite() && radius > 0.0 && radius <= 100.0) {
                return Err(field("clip_radius", "must be in (0, 100]"));
            }
            if !(1..=10).contains(&iterations) {
                return Err(field("clip_iterations", "must be 1 to 10"));
            }
        }
        if let Aggregate::MultiKrum { byzantine, keep } = self.aggregate {
            let (f, m) = (u32::from(byzantine), u32::from(keep));
            if 2 * f + 2 >= self.segments {
                return Err(field(
                    "krum_byzantine",
                    "Multi-Krum tolerates f bad updates of n only while n > 2f + 2",
                ));
            }
            if m == 0 || m > self.segments - f {
                return Err(field("krum_keep", "must be 1 to segments - krum_byzantine"));
            }
        }
        if let Aggregate::TrimmedMean { trim } = self.aggregate
            && trim.saturating_mul(2) >= self.segments
        {
            return Err(field(
                "trim",
                "must leave at least one segment: 2 x trim < segments",
            ));
        }
        Ok(())
    }

    fn generations(&self) -> u32 {
        // The rounds, then the final model's evaluation.
        self.rounds.saturating_add(1)
    }

    fn jobs_per_generation(&self) -> u64 {
        u64::from(self.segments)
    }

    fn total_jobs(&self) -> u64 {
        // The rounds' segments, then the one final evaluation.
        u64::from(self.segments) * u64::from(self.rounds) + 1
    }

    fn start(&self) -> Result<Box<dyn SearchState>, SearchError> {
        Ok(Box::new(Rounds {
            params: self.clone(),
            round: 0,
            base: self.model,
            updates: Vec::new(),
            residuals: vec![None; self.segments as usize],
        }))
    }
}

/// What a `train` job does, as its payload names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainJob {
    /// The round (`rounds` for the final evaluation).
    pub round: u32,
    /// The segment (0 for the final evaluation).
    pub segment: u32,
    /// The round's seed for drawing segments from the training split (the same for every
    /// job of the round).
    pub shuffle: u64,
    /// The model the start model is built from: the campaign's `model` while no round has
    /// agreed, else the start model of the last round with an agreed update.
    pub base: BlobId,
    /// The agreed updates of that round, in segment order, applied to `base` by the outer
    /// step (none: the start model is `base`).
    pub updates: Vec<BlobId>,
    /// Top-k's error feedback: the residual this segment's last agreed update left unsent
    /// (`None` before any, and with the other encodings).
    pub residual: Option<BlobId>,
}

impl TrainJob {
    /// Whether this is the final evaluation, not a training round.
    pub fn is_final(&self, params: &TrainParams) -> bool {
        self.round >= params.rounds
    }
}

/// A job as reports show it: `round R segment S` (`final` for the evaluation).
pub(super) fn summary(job: &TrainJob) -> String {
    format!("round {} segment {}", job.round, job.segment)
}

/// The blobs an agreed successful training outcome names: its update, its start model, and
/// (top-k) its residual.
pub fn trained_blobs(outcome: &Outcome) -> Option<(BlobId, BlobId, Option<BlobId>)> {
    match outcome {
        Outcome::Success(m) if matches!(m.artifacts.len(), 2 | 3) => {
            Some((m.artifacts[0], m.artifacts[1], m.artifacts.get(2).copied()))
        }
        _ => None,
    }
}

/// The rounds of a `train` campaign: the recipe of the next round's start model.
#[derive(Clone)]
struct Rounds {
    /// The campaign's parameters.
    params: TrainParams,
    /// The round asked next.
    round: u32,
    /// See [`TrainJob::base`].
    base: BlobId,
    /// See [`TrainJob::updates`].
    updates: Vec<BlobId>,
    /// See [`TrainJob::residual`], by segment.
    residuals: Vec<Option<BlobId>>,
}

impl SearchState for Rounds {
    fn ask(&mut self, rng: &mut ChaCha8Rng) -> Vec<JobPayload> {
        let shuffle = rng.next_u64();
        let jobs = if self.round >= self.params.rounds {
            1
        } else {
            self.params.segments
        };
        (0..jobs)
            .map(|segment| {
                JobPayload::Train(TrainJob {
                    round: self.round,
                    segment,
                    shuffle,
                    base: self.base,
                    updates: self.updates.clone(),
                    residual: self.residuals.get(segment as usize).copied().flatten(),
                })
            })
            .collect()
    }

    /// The next start model: the start model this round's agreed outcomes name (by most
    /// segments; a tie goes to the lowest segment's), with the agreed updates that started
    /// from it, and their segments' residuals. A round with no agreed update leaves the model
    /// as it was; a segment without one keeps its residual.
    fn tell(&mut self, told: &[Told<'_>]) -> Result<(), SearchError> {
        self.round = self.round.saturating_add(1);
        // (segment, update, start, residual) of each agreed training outcome.
        let agreed: Vec<(Option<u32>, BlobId, BlobId, Option<BlobId>)> = told
            .iter()
            .filter_map(|t| {
                let (u, s, r) = t.outcome.and_then(trained_blobs)?;
                let segment = match t.payload {
                    JobPayload::Train(j) => Some(j.segment),
                    _ => None,
                };
                Some((segment, u, s, r))
            })
            .collect();
        let mut best: Option<(usize, BlobId)> = None;
        for (_, _, start, _) in &agreed {
            let n = agreed.iter().filter(|a| a.2 == *start).count();
            if best.is_none_or(|(m, _)| n > m) {
                best = Some((n, *start));
            }
        }
        let Some((_, start)) = best else {
            return Ok(());
        };
        self.base = start;
        self.updates.clear();
        for (segment, update, _, residual) in agreed.iter().filter(|a| a.2 == start) {
            self.updates.push(*update);
            if let Some(slot) = segment.and_then(|s| self.residuals.get_mut(s as usize)) {
                *slot = *residual;
            }
        }
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn SearchState> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, FailureKind, Metrics};
    use rand_core::SeedableRng;

    fn params() -> TrainParams {
        TrainParams {
            model: BlobId::of_bytes(b"model"),
            rounds: 2,
            segments: 3,
            segment_size: 100,
            inner_steps: 10,
            outer: OuterStep::Nesterov {
                learning_rate: 0.7,
                momentum: 0.9,
            },
            aggregate: Aggregate::Mean,
            encoding: UpdateEncoding::F32,
        }
    }

    fn trained(update: &[u8], start: &[u8]) -> Outcome {
        Outcome::Success(Metrics {
            correct: 1,
            total: 2,
            params: 3,
            flops: 4,
            extra: Default::default(),
            artifacts: vec![BlobId::of_bytes(update), BlobId::of_bytes(start)],
        })
    }

    /// Tells `s` the `outcomes` of `payloads` (`None`: the job went void).
    fn tell(s: &mut Box<dyn SearchState>, payloads: &[JobPayload], outcomes: &[Option<Outcome>]) {
        let told: Vec<Told<'_>> = payloads
            .iter()
            .zip(outcomes)
            .map(|(payload, o)| Told {
                payload,
                outcome: o.as_ref(),
            })
            .collect();
        s.tell(&told).expect("told");
    }

    fn jobs(payloads: &[JobPayload]) -> Vec<TrainJob> {
        payloads
            .iter()
            .map(|p| match p {
                JobPayload::Train(j) => j.clone(),
                other => panic!("not a train job: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn rounds_chain_agreed_updates_and_end_with_one_evaluation() {
        let p = params();
        p.validate().expect("valid");
        assert_eq!((p.generations(), p.total_jobs()), (3, 7));
        let mut s = p.start().expect("starts");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let r0 = jobs(&s.ask(&mut rng));
        assert_eq!(r0.len(), 3);
        assert!(r0.iter().all(|j| j.round == 0
            && j.base == p.model
            && j.updates.is_empty()
            && j.shuffle == r0[0].shuffle));
        assert_eq!(
            r0.iter().map(|j| j.segment).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // Segment 1 went void, segment 2 failed: only segment 0's update is applied.
        let fail = Outcome::Failure(Failure {
            kind: FailureKind::NonFinite,
            detail: String::new(),
        });
        let outcomes = [Some(trained(b"u0", b"m0")), None, Some(fail)];
        let payloads: Vec<JobPayload> = r0.iter().cloned().map(JobPayload::Train).collect();
        tell(&mut s, &payloads, &outcomes);
        let r1 = jobs(&s.ask(&mut rng));
        assert_eq!(r1.len(), 3);
        assert!(r1.iter().all(|j| j.round == 1
            && j.base == BlobId::of_bytes(b"m0")
            && j.updates == vec![BlobId::of_bytes(b"u0")]));
        assert_ne!(
            r1[0].shuffle, r0[0].shuffle,
            "each round draws its own segments"
        );
        // A round where nothing agreed keeps the recipe; the last generation is one job.
        let payloads: Vec<JobPayload> = r1.iter().cloned().map(JobPayload::Train).collect();
        tell(&mut s, &payloads, &[None, None, None]);
        let last = jobs(&s.ask(&mut rng));
        assert_eq!(last.len(), 1);
        assert!(last[0].is_final(&p));
        assert_eq!(
            (last[0].base, last[0].updates.clone()),
            (r1[0].base, r1[0].updates.clone())
        );
    }

    #[test]
    fn the_start_model_most_segments_name_wins_and_only_its_updates_count() {
        let p = params();
        let mut s = p.start().expect("starts");
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let payloads = s.ask(&mut rng);
        // Segment 0's executors agreed on another start model than segments 1 and 2.
        let outcomes = [
            trained(b"u0", b"other"),
            trained(b"u1", b"m"),
            trained(b"u2", b"m"),
        ];
        tell(&mut s, &payloads, &outcomes.map(Some));
        let next = jobs(&s.ask(&mut rng));
        assert_eq!(next[0].base, BlobId::of_bytes(b"m"));
        assert_eq!(
            next[0].updates,
            vec![BlobId::of_bytes(b"u1"), BlobId::of_bytes(b"u2")]
        );
    }

    #[test]
    fn each_segment_gets_the_residual_its_last_agreed_update_left() {
        let p = TrainParams {
            rounds: 3,
            ..params()
        };
        let mut s = p.start().expect("starts");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let payloads = s.ask(&mut rng);
        assert!(jobs(&payloads).iter().all(|j| j.residual.is_none()));
        let mut with_residual = trained(b"u1", b"m");
        if let Outcome::Success(m) = &mut with_residual {
            m.artifacts.push(BlobId::of_bytes(b"r1"));
        }
        let outcomes = [Some(trained(b"u0", b"m")), Some(with_residual), None];
        tell(&mut s, &payloads, &outcomes);
        let next = jobs(&s.ask(&mut rng));
        assert_eq!(
            next.iter().map(|j| j.residual).collect::<Vec<_>>(),
            vec![None, Some(BlobId::of_bytes(b"r1")), None]
        );
        // Segment 1 goes void next: it keeps its residual for the round after.
        let payloads: Vec<JobPayload> = next.iter().cloned().map(JobPayload::Train).collect();
        let outcomes = [Some(trained(b"v0", b"m2")), None, None];
        tell(&mut s, &payloads, &outcomes);
        let after = jobs(&s.ask(&mut rng));
        assert_eq!(
            after.iter().map(|j| j.residual).collect::<Vec<_>>(),
            vec![None, Some(BlobId::of_bytes(b"r1")), None]
        );
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let bad = |f: fn(&mut TrainParams), name: &str| {
            let mut p = params();
            f(&mut p);
            let e = p.validate().expect_err("refused").to_string();
            assert!(e.contains(name), "{e}");
        };
        bad(|p| p.rounds = 0, "rounds");
        bad(|p| p.segments = MAX_SEGMENTS + 1, "segments");
        bad(|p| p.segment_size = 0, "segment_size");
        bad(|p| p.inner_steps = 0, "inner_steps");
        bad(
            |p| {
                p.outer = OuterStep::Nesterov {
                    learning_rate: f32::NAN,
                    momentum: 0.9,
                }
            },
            "outer_learning_rate",
        );
        bad(
            |p| {
                p.outer = OuterStep::Nesterov {
                    learning_rate: 0.7,
                    momentum: 1.0,
                }
            },
            "outer_momentum",
        );
        bad(|p| p.aggregate = Aggregate::TrimmedMean { trim: 2 }, "trim");
        bad(
            |p| {
                p.aggregate = Aggregate::CenteredClip {
                    radius: 0.0,
                    iterations: 3,
                }
            },
            "clip_radius",
        );
        bad(
            |p| {
                p.aggregate = Aggregate::CenteredClip {
                    radius: 1.0,
                    iterations: 0,
                }
            },
            "clip_iterations",
        );
        bad(
            |p| p.encoding = UpdateEncoding::TopK { per_mille: 0 },
            "top_k_per_mille",
        );
    }
}
