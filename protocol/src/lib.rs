//! # hivemesh-protocol
//!
//! The rules of the hivemesh swarm, as pure data types and sans-IO state machines. Nothing here
//! touches a socket, a clock, a thread or a global random number generator: callers pass time
//! in as a [`Timestamp`] and randomness in as seeds, and carry out the [`ledger::Output`]s a
//! state machine returns. The same code therefore runs inside the real node (`hivemesh-node`,
//! over libp2p) and inside the deterministic simulator (`hivemesh-netsim`), and every honest
//! node that sees the same messages reaches the same state.
//!
//! ## What is here
//! * [`identity`]: ed25519 keys. One key signs results and is the node's libp2p identity.
//! * [`envelope`]: the wire format. Every message travels as
//!   `{version, kind, body, signer, signature}`; [`Signed::verify_and_decode`] checks the frame,
//!   then the signature over the exact bytes, and only then decodes the (postcard) body. Every
//!   class of bad input has its own [`DecodeError`] with a [`PeerAction`].
//! * [`id`]: content ids ([`CampaignId`], [`JobId`], [`BlobId`], [`MessageId`]), blake3 of the
//!   canonical encoding.
//! * [`spec`] and [`message`]: what a campaign asks for ([`CampaignSpec`]), the jobs derived
//!   from it ([`JobSpec`]), and the signed messages about them: [`Claim`], [`Commitment`],
//!   [`Reveal`] (carrying a [`JobResult`]), [`AuditReport`], [`Heartbeat`]. Each is bound to one
//!   campaign, so a message cannot be replayed into another.
//! * [`agreement`]: [`agree`] and [`settle`]: when redundant executors agree, and on what.
//! * [`scoring`]: points, penalties and decaying reputation, derived from the ledger.
//! * [`ledger`]: the [`Ledger`] state machine: ingest verified messages, enforce commit–reveal,
//!   detect equivocation, emit settlements.
//!
//! ## Why commit–reveal and redundant execution
//! Training results cannot be checked cheaply, only recomputed. So each job runs on `r`
//! executors and settles when `q` agree ([Byzantine fault tolerance by replication]); executors
//! first publish a hiding commitment to their result and reveal it only afterwards, so a lazy
//! peer cannot copy another's answer; auditors re-run a random sample so that a colluding quorum
//! is caught with known probability.
//!
//! [Byzantine fault tolerance by replication]: https://doi.org/10.1145/357172.357176

pub mod agreement;
pub mod assign;
pub mod audit;
pub mod closure;
pub mod consensus;
pub mod derive;
pub mod envelope;
pub mod error;
pub mod id;
pub mod identity;
pub mod kinds;
#[cfg(test)]
mod layering;
pub mod ledger;
pub mod message;
pub mod outcome;
pub mod peer;
pub mod privacy;
pub mod schedule;
pub mod scoring;
pub mod secagg;
mod small;
pub mod spec;
mod spec_error;
pub mod standings;
pub mod time;

pub use agreement::{Settlement, Tolerance, agree, settle};
pub use envelope::{AnySigned, Context, Envelope, Signed, Verified, Verifier, verify_batch};
pub use error::{DecodeError, EncodeError, PeerAction};
pub use id::{BlobId, CampaignId, IdParseError, JobId, MessageId};
pub use identity::{Keypair, PeerKey};
pub use ledger::{Input, Ledger, LedgerConfig, Output};
pub use message::{
    AuditReport, Claim, Commitment, Failure, FailureKind, Heartbeat, JobResult, Kind, Message,
    Metrics, Outcome, Proposal, Regenesis, Reveal, Step, Vote, commitment_digest,
};
pub use scoring::{PeerScore, ScoringRules};
pub use spec::{
    BackendClass, CampaignKind, CampaignSpec, DatasetRef, DistillParams, JobPayload, JobSpec,
    LossParams, LrSchedule, NasParams, NasSpace, Optimizer, Schedule, Search, SpecError, Strategy,
    TrainingBudget,
};
pub use time::Timestamp;
