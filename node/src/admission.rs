//! What this node agrees to spend on other people's campaigns: the operator's policy (the
//! `[accept]` table of the config file) and the limits every job must fit before anything is
//! allocated for it.
//!
//! The protocol already refuses specs outside its hard caps (`protocol::spec`: epochs, steps,
//! widths, channels). Within them, a contributor chooses what their machine runs:
//! - which campaigns it follows at all: their kinds, their submitters, their largest budget;
//! - how many live campaigns one submitter may have here (finished ones do not count);
//! - each job's estimated peak memory and training FLOPs, checked from the decoded model
//!   before training starts (a job over them is not run here and another peer takes it);
//! - each job's wall-clock time: training stops cooperatively at the limit and the job is
//!   published as a `TimeLimit` failure.
//!
//! The defaults are safe on a 16 GB host running one job at a time.

use std::time::Duration;

use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::spec::{CampaignKind, CampaignSpec};
use serde::Deserialize;

/// Default peak memory of one job: 4 GiB.
pub const DEFAULT_MAX_JOB_MEMORY: u64 = 4 << 30;
/// Default training compute of one job: 2·10¹⁴ FLOPs (minutes on a GPU, about an hour on a
/// laptop CPU; the MNIST examples need under 10¹³).
pub const DEFAULT_MAX_JOB_FLOPS: u64 = 200_000_000_000_000;
/// Default wall-clock limit of one job: two hours.
pub const DEFAULT_MAX_JOB_TIME: Duration = Duration::from_secs(2 * 3600);
/// Default largest dataset followed: 16 GiB.
pub const DEFAULT_MAX_DATASET: u64 = 16 << 30;
/// Default number of live campaigns one submitter may have on this node.
pub const DEFAULT_CAMPAIGNS_PER_SUBMITTER: usize = 8;

/// The operator's admission policy and job limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Kinds of campaign followed (`None`: every kind).
    pub kinds: Option<Vec<CampaignKind>>,
    /// Submitters whose campaigns are followed (`None`: anyone's).
    pub submitters: Option<Vec<PeerKey>>,
    /// Largest `budget.epochs` followed.
    pub max_epochs: u32,
    /// Live (unfinished) campaigns one submitter may have here.
    pub campaigns_per_submitter: usize,
    /// Largest estimated peak memory of one job, in bytes.
    pub max_job_memory: u64,
    /// Largest estimated training compute of one job, in FLOPs.
    pub max_job_flops: u64,
    /// Longest one job may train.
    pub max_job_time: Duration,
    /// Largest dataset blob followed, in bytes (it is fetched before the first job).
    pub max_dataset: u64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            kinds: None,
            submitters: None,
            max_epochs: hivemesh_protocol::spec::MAX_EPOCHS,
            campaigns_per_submitter: DEFAULT_CAMPAIGNS_PER_SUBMITTER,
            max_job_memory: DEFAULT_MAX_JOB_MEMORY,
            max_job_flops: DEFAULT_MAX_JOB_FLOPS,
            max_job_time: DEFAULT_MAX_JOB_TIME,
            max_dataset: DEFAULT_MAX_DATASET,
        }
    }
}

/// Why this node's policy does not follow a campaign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAccepted {
    /// The kind is not in `[accept] kinds`.
    #[error("this node does not run {kind} campaigns (its [accept] kinds are {allowed})")]
    Kind {
        /// The campaign's kind.
        kind: &'static str,
        /// The kinds accepted.
        allowed: String,
    },
    /// The submitter is not in `[accept] submitters`.
    #[error("this node runs campaigns of listed submitters only, and {0} is not one")]
    Submitter(String),
    /// The dataset is larger than `[accept] max_dataset_mb`.
    #[error(
        "the dataset {name} is {bytes} bytes; this node accepts datasets of at most {max} \
         ([accept] max_dataset_mb)"
    )]
    Dataset {
        /// Its name.
        name: String,
        /// Its size.
        bytes: u64,
        /// Allowed.
        max: u64,
    },
    /// The budget asks for more epochs than `[accept] max_epochs`.
    #[error("the budget asks for {epochs} epochs; this node accepts at most {max}")]
    Epochs {
        /// Asked for.
        epochs: u32,
        /// Allowed.
        max: u32,
    },
}

impl Admission {
    /// Whether this node follows `spec`, submitted (signed) by `submitter`.
    pub fn check(&self, spec: &CampaignSpec, submitter: &PeerKey) -> Result<(), NotAccepted> {
        let kind = spec.kind();
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&kind)
        {
            let allowed: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            return Err(NotAccepted::Kind {
                kind: kind.name(),
                allowed: allowed.join(", "),
            });
        }
        if let Some(who) = &self.submitters
            && !who.contains(submitter)
        {
            return Err(NotAccepted::Submitter(submitter.to_string()));
        }
        if spec.dataset.bytes > self.max_dataset {
            return Err(NotAccepted::Dataset {
                name: spec.dataset.name.clone(),
                bytes: spec.dataset.bytes,
                max: self.max_dataset,
            });
        }
        if spec.budget.epochs > self.max_epochs {
            return Err(NotAccepted::Epochs {
                epochs: spec.budget.epochs,
                max: self.max_epochs,
            });
        }
        Ok(())
    }
}

/// The `[accept]` table of the config file (every key optional).
///
/// ```toml
/// [accept]
/// kinds = ["nas", "loss"]          # default: every kind
/// submitters = ["<64 hex digits>"] # default: anyone
/// max_epochs = 50
/// campaigns_per_submitter = 4
/// max_job_memory_mb = 2048
/// max_job_flops = 1e13
/// max_job_time_s = 600
/// max_dataset_mb = 4096
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptFile {
    /// Kind names (`nas`, `loss`, `distill`).
    pub kinds: Option<Vec<String>>,
    /// Submitter public keys, hex.
    pub submitters: Option<Vec<String>>,
    /// Largest `budget.epochs`.
    pub max_epochs: Option<u32>,
    /// Live campaigns per submitter.
    pub campaigns_per_submitter: Option<usize>,
    /// Largest job memory, in MiB.
    pub max_job_memory_mb: Option<u64>,
    /// Largest job compute, in FLOPs (a float, so `1e13` works).
    pub max_job_flops: Option<f64>,
    /// Longest job, in seconds.
    pub max_job_time_s: Option<u64>,
    /// Largest dataset, in MiB.
    pub max_dataset_mb: Option<u64>,
}

/// A value of the `[accept]` table that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[accept] {key}: {reason}")]
pub struct AcceptError {
    /// The key.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl AcceptFile {
    /// The policy these values give (unset keys keep the defaults).
    pub fn admission(&self) -> Result<Admission, AcceptError> {
        let err = |key, reason: String| AcceptError { key, reason };
        let d = Admission::default();
        let kinds = match &self.kinds {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        CampaignKind::from_name(n).ok_or_else(|| {
                            err(
                                "kinds",
                                format!("unknown kind `{n}` (nas, loss or distill)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let submitters = match &self.submitters {
            None => None,
            Some(keys) => Some(
                keys.iter()
                    .map(|k| {
                        k.parse::<PeerKey>().map_err(|e| {
                            err("submitters", format!("`{k}` is not a public key: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let flops = match self.max_job_flops {
            None => d.max_job_flops,
            Some(f) if f.is_finite() && f >= 1.0 => f.min(u64::MAX as f64) as u64,
            Some(f) => return Err(err("max_job_flops", format!("is {f}, must be >= 1"))),
        };
        let positive = |key, v: Option<u64>, default: u64| match v {
            Some(0) => Err(err(key, "must be at least 1".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        Ok(Admission {
            kinds,
            submitters,
            max_epochs: self.max_epochs.unwrap_or(d.max_epochs),
            campaigns_per_submitter: self
                .campaigns_per_submitter
                .unwrap_or(d.campaigns_per_submitter),
            max_job_memory: positive(
                "max_job_memory_mb",
                self.max_job_memory_mb,
                d.max_job_memory >> 20,
            )?
            .saturating_mul(1 << 20),
            max_job_flops: flops,
            max_job_time: Duration::from_secs(positive(
                "max_job_time_s",
                self.max_job_time_s,
                d.max_job_time.as_secs(),
            )?),
            max_dataset: positive("max_dataset_mb", self.max_dataset_mb, d.max_dataset >> 20)?
                .saturating_mul(1 << 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PeerKey {
        hivemesh_protocol::Keypair::from_secret_bytes([i; 32]).public()
    }

    fn spec_with(epochs: u32) -> CampaignSpec {
        let file = crate::campaign_file::CampaignFile::parse(
            "name = \"x\"\n[nas]\npopulation = 4\ngenerations = 1\n",
        )
        .expect("parse");
        let mut s = file
            .to_spec(
                key(1),
                hivemesh_protocol::Timestamp(0),
                crate::executor::builtin_digits(),
            )
            .expect("spec");
        s.budget.epochs = epochs;
        s
    }

    #[test]
    fn the_accept_table_parses_and_names_bad_values() {
        let f: AcceptFile = toml::from_str(
            "kinds = [\"loss\"]\nmax_epochs = 5\nmax_job_flops = 1e12\nmax_job_time_s = 60\n",
        )
        .expect("valid");
        let a = f.admission().expect("usable");
        assert_eq!(a.kinds, Some(vec![CampaignKind::Loss]));
        assert_eq!(a.max_job_flops, 1_000_000_000_000);
        assert_eq!(a.max_job_time, Duration::from_secs(60));
        assert_eq!(a.max_job_memory, DEFAULT_MAX_JOB_MEMORY);
        let bad: AcceptFile = toml::from_str("kinds = [\"nsa\"]\n").expect("parses");
        let e = bad.admission().expect_err("unknown kind");
        assert!(e.to_string().contains("unknown kind `nsa`"), "{e}");
        let bad: AcceptFile = toml::from_str("max_job_time_s = 0\n").expect("parses");
        assert!(bad.admission().is_err());
        assert!(toml::from_str::<AcceptFile>("max_epoch = 5\n").is_err());
    }

    #[test]
    fn the_policy_refuses_other_kinds_submitters_and_budgets() {
        let (me, other) = (key(1), key(2));
        let nas = spec_with(3);
        assert_eq!(Admission::default().check(&nas, &me), Ok(()));
        let loss_only = Admission {
            kinds: Some(vec![CampaignKind::Loss]),
            ..Admission::default()
        };
        assert!(matches!(
            loss_only.check(&nas, &me),
            Err(NotAccepted::Kind { kind: "nas", .. })
        ));
        let mine_only = Admission {
            submitters: Some(vec![me]),
            ..Admission::default()
        };
        assert_eq!(mine_only.check(&nas, &me), Ok(()));
        assert!(matches!(
            mine_only.check(&nas, &other),
            Err(NotAccepted::Submitter(_))
        ));
        let short = Admission {
            max_epochs: 2,
            ..Admission::default()
        };
        assert_eq!(
            short.check(&nas, &me),
            Err(NotAccepted::Epochs { epochs: 3, max: 2 })
        );
        let small = AcceptFile {
            max_dataset_mb: Some(1),
            ..AcceptFile::default()
        }
        .admission()
        .expect("valid");
        let mut big = nas.clone();
        big.dataset.bytes = 2 << 20;
        let e = small.check(&big, &me).expect_err("a 2 MiB dataset");
        assert!(e.to_string().contains("max_dataset_mb"), "{e}");
        assert_eq!(small.check(&nas, &me), Ok(()), "the digits are 118 KiB");
    }
}
