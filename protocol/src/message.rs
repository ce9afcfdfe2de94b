//! The signed messages peers gossip, each bound to one campaign.

use std::sync::Arc;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::closure::Closure;
use crate::id::{CampaignId, JobId, context, hash_canonical};
use crate::identity::PeerKey;
pub use crate::outcome::{Failure, FailureKind, Metrics, Outcome};
use crate::spec::CampaignSpec;
use crate::time::Timestamp;

/// Kinds of signed message, as the byte in the envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    /// A [`CampaignSpec`], signed by its creator.
    Campaign = 1,
    /// A [`Claim`] on a job.
    Claim = 2,
    /// A [`Commitment`] to a result.
    Commitment = 3,
    /// A [`Reveal`] of a committed result.
    Reveal = 4,
    /// An [`AuditReport`].
    AuditReport = 5,
    /// A [`Heartbeat`].
    Heartbeat = 6,
    /// A closure [`Proposal`].
    Proposal = 7,
    /// A closure [`Vote`].
    Vote = 8,
    /// A [`Regenesis`]: the creator's new voter set for a stalled closure vote.
    Regenesis = 9,
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 9] = [
        Kind::Campaign,
        Kind::Claim,
        Kind::Commitment,
        Kind::Reveal,
        Kind::AuditReport,
        Kind::Heartbeat,
        Kind::Proposal,
        Kind::Vote,
        Kind::Regenesis,
    ];

    /// The kind with this header byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The largest body this kind may have, in bytes.
    pub const fn max_body_len(self) -> usize {
        match self {
            Kind::Campaign => 16 * 1024,
            Kind::Claim | Kind::Commitment => 256,
            Kind::Reveal | Kind::AuditReport => 4 * 1024,
            Kind::Heartbeat => 512,
            Kind::Proposal => 4 * 1024 * 1024,
            Kind::Vote => 256,
            Kind::Regenesis => 8 * 1024,
        }
    }

    /// A short stable label for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Campaign => "campaign",
            Kind::Claim => "claim",
            Kind::Commitment => "commitment",
            Kind::Reveal => "reveal",
            Kind::AuditReport => "audit_report",
            Kind::Heartbeat => "heartbeat",
            Kind::Proposal => "proposal",
            Kind::Vote => "vote",
            Kind::Regenesis => "regenesis",
        }
    }
}

/// A type that travels as the body of a signed envelope.
pub trait Message: Serialize + DeserializeOwned + Clone + core::fmt::Debug {
    /// Its kind byte.
    const KIND: Kind;

    /// The campaign the message is bound to (a campaign spec is bound to its own id).
    fn campaign(&self) -> CampaignId;

    /// When the signer issued it.
    fn issued_at(&self) -> Timestamp;

    /// Checks the rules of this kind beyond decoding; the error says which rule.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Message for CampaignSpec {
    const KIND: Kind = Kind::Campaign;
    fn campaign(&self) -> CampaignId {
        self.id()
    }
    fn issued_at(&self) -> Timestamp {
        self.created_at
    }
    fn validate(&self) -> Result<(), String> {
        CampaignSpec::validate(self).map_err(|e| e.to_string())
    }
}

/// "I am running this job." Gossiped before training so others can see who took what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The campaign.
    pub campaign: CampaignId,
    /// The job claimed.
    pub job: JobId,
    /// The claimer's job slots (as in its heartbeats): its unfinished claims beyond them do
    /// not hold a job. Counted up to [`crate::schedule::MAX_SLOTS`].
    pub slots: u16,
    /// The claimer's measured time per job in this campaign, in milliseconds (0: none yet;
    /// as in its heartbeats). Advisory: peers measure it themselves once they can.
    pub job_ms: u32,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Claim {
    const KIND: Kind = Kind::Claim;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
}

/// A binding, hiding commitment to a result: published before any result is revealed, so a
/// lazy peer cannot copy others' results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// The campaign.
    pub campaign: CampaignId,
    /// The job.
    pub job: JobId,
    /// [`commitment_digest`] of the result, salt and signer.
    pub digest: [u8; 32],
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Commitment {
    const KIND: Kind = Kind::Commitment;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
}

/// The opening of a [`Commitment`]: the result itself and the salt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    /// The campaign.
    pub campaign: CampaignId,
    /// The job.
    pub job: JobId,
    /// What the executor computed.
    pub result: JobResult,
    /// The random salt that hid the result in the commitment.
    pub salt: [u8; 32],
    /// Other executors whose commitments the signer held before any executor's reveal of
    /// this job reached it (sorted, at most [`MAX_WITNESSED`]): commitments made before any
    /// result was public, so not copies. Only an executor witnessed by most of its fellow
    /// agreeing executors earns credit for a job (ADR 0003).
    pub witnessed: Vec<PeerKey>,
    /// When.
    pub issued_at: Timestamp,
}

/// Most peers a [`Reveal`] may list as witnessed.
pub const MAX_WITNESSED: usize = 64;

impl Reveal {
    /// Whether this reveal, signed by `signer`, opens `commitment`.
    pub fn opens(&self, signer: &PeerKey, commitment: &Commitment) -> bool {
        commitment.job == self.job
            && commitment.digest == commitment_digest(&self.job, signer, &self.result, &self.salt)
    }
}

impl Message for Reveal {
    const KIND: Kind = Kind::Reveal;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    fn validate(&self) -> Result<(), String> {
        if self.witnessed.len() > MAX_WITNESSED {
            return Err(format!(
                "{} witnessed commitments (at most {MAX_WITNESSED})",
                self.witnessed.len()
            ));
        }
        if self.witnessed.windows(2).any(|w| w[0] >= w[1]) {
            return Err("witnessed commitments are not sorted and distinct".into());
        }
        self.result.validate()
    }
}

/// The digest a [`Commitment`] carries: binds the job, the signer (so a commitment cannot be
/// copied by another peer), the result and a secret salt (so the result cannot be guessed
/// from the digest).
pub fn commitment_digest(
    job: &JobId,
    signer: &PeerKey,
    result: &JobResult,
    salt: &[u8; 32],
) -> [u8; 32] {
    hash_canonical(context::COMMITMENT, &(job, signer, result, salt))
}

/// What an executor reports for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The outcome (the part peers must agree on).
    pub outcome: Outcome,
    /// How long the job took on the executor (informational; not compared).
    pub wall_time_ms: u64,
}

/// The most named extra metrics in a result.
pub const MAX_EXTRA_METRICS: usize = 16;
/// The longest extra-metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 32;
/// The most artifacts in a result.
pub const MAX_ARTIFACTS: usize = 8;
/// The longest failure detail, in bytes.
pub const MAX_FAILURE_DETAIL_LEN: usize = 256;

impl JobResult {
    /// Checks the size rules of a result.
    pub fn validate(&self) -> Result<(), String> {
        match &self.outcome {
            Outcome::Success(m) => {
                if m.correct > m.total {
                    return Err(format!(
                        "correct count {} exceeds total {}",
                        m.correct, m.total
                    ));
                }
                if m.extra.len() > MAX_EXTRA_METRICS {
                    return Err(format!("more than {MAX_EXTRA_METRICS} extra metrics"));
                }
                if m.extra
                    .keys()
                    .any(|k| k.is_empty() || k.len() > MAX_METRIC_NAME_LEN)
                {
                    return Err(format!(
                        "extra metric names must be 1 to {MAX_METRIC_NAME_LEN} bytes"
                    ));
                }
                if m.artifacts.len() > MAX_ARTIFACTS {
                    return Err(format!("more than {MAX_ARTIFACTS} artifacts"));
                }
            }
            Outcome::Failure(f) => {
                if f.detail.len() > MAX_FAILURE_DETAIL_LEN {
                    return Err(format!(
                        "failure detail longer than {MAX_FAILURE_DETAIL_LEN} bytes"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An auditor's re-execution of a settled job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The campaign.
    pub campaign: CampaignId,
    /// The job audited.
    pub job: JobId,
    /// What the auditor computed.
    pub result: JobResult,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for AuditReport {
    const KIND: Kind = Kind::AuditReport;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    fn validate(&self) -> Result<(), String> {
        self.result.validate()
    }
}

/// "I am alive and working on this campaign."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The campaign.
    pub campaign: CampaignId,
    /// The newest generation the sender has closed.
    pub generation: u32,
    /// Jobs the sender is running now.
    pub running: u16,
    /// Jobs the sender can run at once (its slots; 0: it leaves the campaign). Counted up to
    /// [`crate::schedule::MAX_SLOTS`].
    pub capacity: u16,
    /// The sender's measured time per job in this campaign, in milliseconds, smoothed over its
    /// results (0: none yet). Advisory: peers measure it themselves once they can.
    pub job_ms: u32,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Heartbeat {
    const KIND: Kind = Kind::Heartbeat;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
}

/// A proposed closure for a generation, by that round's proposer (ADR 0003).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The campaign.
    pub campaign: CampaignId,
    /// The round of the generation's vote.
    pub round: u32,
    /// The round in which the proposer saw 2/3 prevotes for this closure, if any.
    pub valid_round: Option<u32>,
    /// The closure (its `generation` is the vote's height). Shared, not copied, by every
    /// instance that holds the proposal: at a thousand-entry generation it is the largest
    /// thing a peer keeps.
    pub closure: Arc<Closure>,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Proposal {
    const KIND: Kind = Kind::Proposal;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    fn validate(&self) -> Result<(), String> {
        if self.closure.campaign != self.campaign {
            return Err("the closure belongs to another campaign".into());
        }
        if self.valid_round.is_some_and(|v| v >= self.round) {
            return Err("valid_round must be below round".into());
        }
        if !self
            .closure
            .entries
            .windows(2)
            .all(|w| w[0].job() < w[1].job())
        {
            return Err("closure entries must be in ascending job order".into());
        }
        if !self.closure.members.windows(2).all(|w| w[0] < w[1]) {
            return Err("closure members must be sorted and distinct".into());
        }
        Ok(())
    }
}

/// The two voting steps of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Step {
    /// First step: "this proposal is valid and I am not locked on another".
    Prevote,
    /// Second step: "2/3 prevoted it; I lock on it".
    Precommit,
    /// Not a step of a round: "this vote is stalled for me; I hold no precommit for a closure
    /// in this epoch and will vote no more in it" (its root is always nil). Enough of them let
    /// the campaign's creator hand the vote to the voters that signed them (a [`Regenesis`];
    /// ADR 0006).
    Stall,
}

/// A vote on a closure root (or nil).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The campaign.
    pub campaign: CampaignId,
    /// The generation voted on.
    pub generation: u32,
    /// The round.
    pub round: u32,
    /// Which step.
    pub step: Step,
    /// The closure root voted for; `None` is nil.
    pub root: Option<[u8; 32]>,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Vote {
    const KIND: Kind = Kind::Vote;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    fn validate(&self) -> Result<(), String> {
        if self.step == Step::Stall && self.root.is_some() {
            return Err("a stall names no closure".into());
        }
        Ok(())
    }
}

/// Rounds per epoch of one generation's vote: round `r` is in epoch `r / EPOCH_ROUNDS`
/// (ADR 0006).
pub const EPOCH_ROUNDS: u32 = 1 << 20;

/// Epochs a generation's vote can have (every round number is in one of them).
pub const MAX_EPOCHS: u32 = u32::MAX / EPOCH_ROUNDS;

/// The epoch of `round`.
pub fn epoch_of(round: u32) -> u32 {
    round / EPOCH_ROUNDS
}

/// The creator's answer to a stalled closure vote (ADR 0006): generation `generation`'s vote
/// goes on in epoch `epoch` among `voters` only, every one of whom signed a [`Step::Stall`]
/// vote in the epoch before. Valid only from the campaign's creator and only with enough
/// stalls that the earlier epoch cannot decide (checked by each peer against the stalls it
/// holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regenesis {
    /// The campaign.
    pub campaign: CampaignId,
    /// The generation whose vote stalled.
    pub generation: u32,
    /// The epoch that starts (one more than the stalled one; its rounds start at
    /// `epoch * EPOCH_ROUNDS`).
    pub epoch: u32,
    /// The new voters (sorted, distinct): signers of the stalled epoch's stall votes.
    pub voters: Vec<PeerKey>,
    /// When.
    pub issued_at: Timestamp,
}

impl Message for Regenesis {
    const KIND: Kind = Kind::Regenesis;
    fn campaign(&self) -> CampaignId {
        self.campaign
    }
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }
    fn validate(&self) -> Result<(), String> {
        if self.epoch == 0 || self.epoch >= MAX_EPOCHS {
            return Err(format!("epoch {} is outside 1..{}", self.epoch, MAX_EPOCHS));
        }
        if self.voters.is_empty() || self.voters.len() > crate::spec::MAX_ROSTER {
            return Err(format!(
                "{} voters, not 1..={}",
                self.voters.len(),
                crate::spec::MAX_ROSTER
            ));
        }
        if !self.voters.windows(2).all(|w| w[0] < w[1]) {
            return Err("voters must be sorted and distinct".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt job's full batch reports one extra metric per prompt, each name within limits.
    #[test]
    fn a_full_prompt_batch_fits_a_results_extra_metrics() {
        use crate::kinds::prompt::{MAX_BATCH, loglik_name};
        assert_eq!(MAX_BATCH as usize, MAX_EXTRA_METRICS);
        assert!(loglik_name(MAX_BATCH as usize - 1).len() <= MAX_METRIC_NAME_LEN);
    }
}
