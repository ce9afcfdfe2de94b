//! Submitting a campaign, written once for the HTTP API, the CLI and netsim's clusters.

use hivemesh_protocol::spec::{CampaignSpec, SpecError};

/// Why a node refuses to submit a campaign spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The spec breaks a protocol rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Fewer roster members than executors per job.
    #[error(
        "the roster has {members} member(s) but every job wants {redundancy} executors: \
         generation 0 would wait for job deadlines; lower `redundancy`, connect to more peers \
         first, or list their keys in `roster`"
    )]
    BelowRedundancy {
        /// Roster members.
        members: usize,
        /// Executors per job.
        redundancy: u8,
    },
    /// Fewer roster members than agreeing executors a job needs.
    #[error(
        "the roster has {members} member(s) but a job needs {quorum} agreeing executors: \
         connect to more peers first, or list their keys in `roster`"
    )]
    BelowQuorum {
        /// Roster members.
        members: usize,
        /// Agreeing executors needed.
        quorum: u8,
    },
}

/// Whether a spec may be submitted: valid, and its genesis roster big enough to give every job
/// of generation 0 its executors and a quorum.
pub fn check_roster(spec: &CampaignSpec) -> Result<(), Refusal> {
    spec.validate()?;
    let members = spec.roster.len();
    if members < usize::from(spec.redundancy) {
        return Err(Refusal::BelowRedundancy {
            members,
            redundancy: spec.redundancy,
        });
    }
    if members < usize::from(spec.quorum) {
        return Err(Refusal::BelowQuorum {
            members,
            quorum: spec.quorum,
        });
    }
    Ok(())
}
