//! Deliberate misbehaviour of a node (a Byzantine fault), for tests and netsim clusters.
//!
//! `hivemesh run` sets it only from the hidden `--fault` flag / `HIVEMESH_FAULT` (which
//! netsim's `--processes` mode uses); in-process clusters set [`crate::daemon::Config::fault`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Deliberate misbehaviour, for tests and netsim clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Fault {
    /// Publish wrong results: every successful result's `correct` is off by one.
    Lie,
    /// Serve blobs with their first byte flipped.
    CorruptBlobs,
    /// Publish garbage: a training round's update is random noise (sketched like a real one),
    /// every other result lies as [`Fault::Lie`] does.
    Noise,
    /// A malicious federated client: its update with the sign flipped (other jobs honest).
    SignFlip,
    /// A malicious federated client: its update ×10.
    Scale,
    /// A malicious federated client: Gaussian garbage of 10× its update's RMS.
    Garbage,
    /// A malicious federated client: trains on its private data with every label flipped.
    LabelFlip,
    /// A federated free rider: a zero update.
    FreeRider,
}

impl Fault {
    /// Every fault, in flag order.
    pub const ALL: [Fault; 8] = [
        Fault::Lie,
        Fault::CorruptBlobs,
        Fault::Noise,
        Fault::SignFlip,
        Fault::Scale,
        Fault::Garbage,
        Fault::LabelFlip,
        Fault::FreeRider,
    ];

    /// The name on the command line and in config files: `lie`, `corrupt-blobs`, `noise`,
    /// `sign-flip`, `scale`, `garbage`, `label-flip`, `free-rider`.
    pub fn as_flag(self) -> &'static str {
        match self {
            Fault::Lie => "lie",
            Fault::CorruptBlobs => "corrupt-blobs",
            Fault::Noise => "noise",
            Fault::SignFlip => "sign-flip",
            Fault::Scale => "scale",
            Fault::Garbage => "garbage",
            Fault::LabelFlip => "label-flip",
            Fault::FreeRider => "free-rider",
        }
    }

    /// The attack on a federated client's update this fault makes, if it is one.
    pub fn client_attack(self) -> Option<hivemesh_trainer::attack::Attack> {
        use hivemesh_trainer::attack::Attack;
        match self {
            Fault::SignFlip => Some(Attack::SignFlip),
            Fault::Scale => Some(Attack::Scale),
            Fault::Garbage => Some(Attack::Garbage),
            Fault::FreeRider => Some(Attack::FreeRider),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_flag())
    }
}

/// A fault name that is none of [`Fault::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown fault {given:?}: use lie, corrupt-blobs, noise, sign-flip, scale, garbage, \
     label-flip or free-rider"
)]
pub struct UnknownFault {
    /// What was given.
    pub given: String,
}

impl FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(s: &str) -> Result<Fault, UnknownFault> {
        Fault::ALL
            .into_iter()
            .find(|f| f.as_flag() == s)
            .ok_or_else(|| UnknownFault { given: s.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_back_and_name_the_allowed_values() {
        for f in Fault::ALL {
            assert_eq!(f.as_flag().parse::<Fault>(), Ok(f));
            assert_eq!(f.to_string(), f.as_flag());
            let json = serde_json::to_string(&f).expect("json");
            assert_eq!(json, format!("\"{}\"", f.as_flag()));
            assert_eq!(serde_json::from_str::<Fault>(&json).expect("back"), f);
            let v = <Fault as clap::ValueEnum>::to_possible_value(&f).expect("value");
            assert_eq!(v.get_name(), f.as_flag());
        }
        let e = "crash".parse::<Fault>().expect_err("unknown");
        assert!(e.to_string().contains("lie, corrupt-blobs, noise"), "{e}");
    }
}
