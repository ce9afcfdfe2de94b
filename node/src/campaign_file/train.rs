//! `[train]`: one model trained together, round by round (ADR 0009), and its defaults.
//!
//! ```toml
//! [train]
//! model = "zoo:mlp-32"     # a blob id, zoo:NAME, or file:PATH (an architecture or weights file)
//! rounds = 5
//! segments = 4             # jobs per round
//! segment_size = 256       # samples per segment
//! inner_steps = 50         # H: inner optimiser steps per segment ([budget] gives the optimiser)
//! outer = "nesterov"       # or "average"
//! outer_learning_rate = 0.7
//! outer_momentum = 0.9
//! aggregate = "mean"       # or "trimmed-mean" (with trim), "median", "centered-clip" (with
//!                          # clip_radius, clip_iterations = 3), "multi-krum" (with
//!                          # krum_byzantine, krum_keep)
//! trim = 0                 # > 0 alone also means a trimmed mean
//! clip_radius = 0.0        # > 0 alone also means CenteredClip
//! encoding = "f32"         # or "f16", "top-k" (with top_k_per_mille)
//! update_tolerance = 0.0   # > 0 (GPUs): agree on updates within this relative L2 distance
//! ```

use hivemesh_protocol::Tolerance;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{Aggregate, OuterStep, Search, TrainParams, UpdateEncoding};
use serde::Deserialize;

use super::{CampaignFileError, field};

/// The blob-naming key of `[train]`.
pub const BLOB_FIELD: (&str, &str) = ("train", "model");

/// `[train]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    /// The model: a blob id (hex), `zoo:mlp-N` or `zoo:cnn` (built for the dataset, weights
    /// drawn from the campaign's seed), or `file:PATH` (an architecture IR or a weights file,
    /// e.g. an architecture search's result; uploaded by `campaign submit`).
    pub model: String,
    /// Rounds.
    pub rounds: u32,
    /// Segments (jobs) per round.
    #[serde(default = "default_segments")]
    pub segments: u32,
    /// Samples per segment.
    #[serde(default = "default_segment_size")]
    pub segment_size: u32,
    /// Inner optimiser steps per segment.
    #[serde(default = "default_inner_steps")]
    pub inner_steps: u32,
    /// `nesterov` (default) or `average`.
    #[serde(default = "default_outer")]
    pub outer: String,
    /// Outer learning rate (Nesterov).
    #[serde(default = "default_outer_lr")]
    pub outer_learning_rate: f32,
    /// Outer momentum (Nesterov).
    #[serde(default = "default_outer_momentum")]
    pub outer_momentum: f32,
    /// How the round's updates are combined: `mean`, `trimmed-mean` (with `trim`), `median`,
    /// `centered-clip` (with `clip_radius`) or `multi-krum` (with `krum_byzantine`); unset:
    /// from `trim` / `clip_radius`, else the mean.
    #[serde(default)]
    pub aggregate: Option<String>,
    /// Multi-Krum: bad updates assumed.
    #[serde(default)]
    pub krum_byzantine: u16,
    /// Multi-Krum: updates averaged (0: segments − krum_byzantine).
    #[serde(default)]
    pub krum_keep: u16,
    /// Values dropped at each end of every coordinate before averaging (0: none).
    #[serde(default)]
    pub trim: u32,
    /// Above 0: CenteredClip with this radius (a multiple of the updates' median distance from
    /// their median) instead of a mean; not with `trim`.
    #[serde(default)]
    pub clip_radius: f32,
    /// CenteredClip's iterations.
    #[serde(default = "default_clip_iterations")]
    pub clip_iterations: u8,
    /// How updates travel: `f32` (default), `f16` or `top-k`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// With `top-k`: values kept per thousand (default 10, 1 %).
    #[serde(default = "default_per_mille")]
    pub top_k_per_mille: u16,
    /// 0 (default): executors agree on the update's bytes (the CPU backend is bit-exact).
    /// Above 0 (GPU backends): on its sketch, as updates within about this relative L2
    /// distance of each other (ADR 0009); at most 0.5.
    #[serde(default)]
    pub update_tolerance: f64,
}

fn default_segments() -> u32 {
    4
}
fn default_segment_size() -> u32 {
    256
}
fn default_inner_steps() -> u32 {
    50
}
fn default_outer() -> String {
    "nesterov".into()
}
fn default_outer_lr() -> f32 {
    0.7
}
fn default_outer_momentum() -> f32 {
    0.9
}
fn default_clip_iterations() -> u8 {
    3
}
fn default_encoding() -> String {
    "f32".into()
}
fn default_per_mille() -> u16 {
    10
}

/// The outer step named `name` (`nesterov`, with its learning rate and momentum, or
/// `average`); errors name `key`.
pub(super) fn parse_outer(
    key: &'static str,
    name: &str,
    learning_rate: f32,
    momentum: f32,
) -> Result<OuterStep, CampaignFileError> {
    match name {
        "nesterov" => Ok(OuterStep::Nesterov {
            learning_rate,
            momentum,
        }),
        "average" => Ok(OuterStep::Average),
        other => Err(field(
            key,
            format!("{other:?}: use \"nesterov\" or \"average\""),
        )),
    }
}

/// The aggregate fields a `[train]` or `[federated]` table has.
pub(super) struct AggregateFields<'a> {
    /// `aggregate`.
    pub name: Option<&'a str>,
    /// `trim`.
    pub trim: u32,
    /// `clip_radius`.
    pub clip_radius: f32,
    /// `clip_iterations`.
    pub clip_iterations: u8,
    /// `krum_byzantine`.
    pub krum_byzantine: u16,
    /// `krum_keep` (0: `updates − krum_byzantine`).
    pub krum_keep: u16,
}

/// The aggregate from a table's fields: `aggregate` by name, else from `trim` / `clip_radius`
/// (the mean when neither is set); `updates` is how many a round combines (Multi-Krum's
/// default `keep`); errors name `keys` (`TABLE.aggregate`, `TABLE.clip_radius`).
pub(super) fn parse_aggregate(
    keys: [&'static str; 2],
    f: &AggregateFields<'_>,
    updates: u32,
) -> Result<Aggregate, CampaignFileError> {
    let centered = || Aggregate::CenteredClip {
        radius: f.clip_radius,
        iterations: f.clip_iterations,
    };
    let by_name = match f.name {
        None => None,
        Some("mean") => Some(Aggregate::Mean),
        Some("trimmed-mean") => Some(Aggregate::TrimmedMean { trim: f.trim }),
        Some("median") => Some(Aggregate::Median),
        Some("centered-clip") => Some(centered()),
        Some("multi-krum") => Some(Aggregate::MultiKrum {
            byzantine: f.krum_byzantine,
            keep: match f.krum_keep {
                0 => updates
                    .saturating_sub(u32::from(f.krum_byzantine))
                    .min(u32::from(u16::MAX)) as u16,
                k => k,
            },
        }),
        Some(other) => {
            return Err(field(
                keys[0],
                format!(
                    "{other:?}: use \"mean\", \"trimmed-mean\", \"median\", \
                     \"centered-clip\" or \"multi-krum\""
                ),
            ));
        }
    };
    match (by_name, f.trim, f.clip_radius) {
        (Some(a), _, _) => Ok(a),
        (None, 0, 0.0) => Ok(Aggregate::Mean),
        (None, trim, 0.0) => Ok(Aggregate::TrimmedMean { trim }),
        (None, 0, _) => Ok(centered()),
        _ => Err(field(keys[1], "give trim or clip_radius, not both")),
    }
}

/// Standard deviations of a sketch projection's difference allowed at the stated distance.
const SKETCH_SIGMAS: f64 = 4.0;

impl TrainFile {
    /// The campaign's tolerance with `[train] update_tolerance` applied: above 0, extras
    /// (the update's sketch and loss) may differ by `SKETCH_SIGMAS` x the tolerance, in
    /// millionths, and artifacts (the updates' bytes) need not match.
    pub fn tolerance(&self, base: Tolerance) -> Result<Tolerance, CampaignFileError> {
        let t = self.update_tolerance;
        if !(0.0..=0.5).contains(&t) {
            return Err(field("train.update_tolerance", "must be 0 to 0.5"));
        }
        if t == 0.0 {
            return Ok(base);
        }
        Ok(Tolerance {
            extra: (SKETCH_SIGMAS * t * 1e6).ceil() as u64,
            exact_artifacts: false,
            ..base
        })
    }

    /// The aggregate ([`parse_aggregate`]).
    fn aggregate(&self) -> Result<Aggregate, CampaignFileError> {
        parse_aggregate(
            ["train.aggregate", "train.clip_radius"],
            &AggregateFields {
                name: self.aggregate.as_deref(),
                trim: self.trim,
                clip_radius: self.clip_radius,
                clip_iterations: self.clip_iterations,
                krum_byzantine: self.krum_byzantine,
                krum_keep: self.krum_keep,
            },
            self.segments,
        )
    }

    /// The protocol's search (the model must be a blob id by now).
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let outer = parse_outer(
            "train.outer",
            &self.outer,
            self.outer_learning_rate,
            self.outer_momentum,
        )?;
        let encoding = match self.encoding.as_str() {
            "f32" => UpdateEncoding::F32,
            "f16" => UpdateEncoding::F16,
            "top-k" => UpdateEncoding::TopK {
                per_mille: self.top_k_per_mille,
            },
            other => {
                return Err(field(
                    "train.encoding",
                    format!("{other:?}: use \"f32\", \"f16\" or \"top-k\""),
                ));
            }
        };
        Ok(Search::Train(TrainParams {
            model: self
                .model
                .parse::<BlobId>()
                .map_err(|e| field("train.model", e.to_string()))?,
            rounds: self.rounds,
            segments: self.segments,
            segment_size: self.segment_size,
            inner_steps: self.inner_steps,
            outer,
            aggregate: self.aggregate()?,
            encoding,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate_of(extra: &str) -> Result<Aggregate, CampaignFileError> {
        let id = BlobId::of_bytes(b"m");
        let f: TrainFile =
            toml::from_str(&format!("model = \"{id}\"\nrounds = 2\n{extra}")).expect("toml");
        match f.to_search()? {
            Search::Train(p) => Ok(p.aggregate),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_aggregate_is_the_mean_a_trimmed_mean_or_centered_clip_never_two() {
        assert_eq!(aggregate_of("").expect("mean"), Aggregate::Mean);
        assert_eq!(
            aggregate_of("trim = 1").expect("trimmed"),
            Aggregate::TrimmedMean { trim: 1 }
        );
        assert_eq!(
            aggregate_of("clip_radius = 2.0").expect("clip"),
            Aggregate::CenteredClip {
                radius: 2.0,
                iterations: 3
            }
        );
        let e = aggregate_of("trim = 1\nclip_radius = 2.0").expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn the_aggregate_can_be_named_median_and_multi_krum_included() {
        assert_eq!(
            aggregate_of("aggregate = \"median\"").expect("median"),
            Aggregate::Median
        );
        assert_eq!(
            aggregate_of("segments = 8\naggregate = \"multi-krum\"\nkrum_byzantine = 2")
                .expect("krum"),
            Aggregate::MultiKrum {
                byzantine: 2,
                keep: 6
            }
        );
        assert_eq!(
            aggregate_of("aggregate = \"trimmed-mean\"\ntrim = 1").expect("trimmed"),
            Aggregate::TrimmedMean { trim: 1 }
        );
        let e = aggregate_of("aggregate = \"krum\"").expect_err("unknown");
        assert!(e.to_string().contains("multi-krum"), "{e}");
        // Multi-Krum needs n > 2f + 2: refused by the protocol's validation.
        let id = BlobId::of_bytes(b"m");
        let f: TrainFile = toml::from_str(&format!(
            "model = \"{id}\"\nrounds = 2\nsegments = 4\naggregate = \"multi-krum\"\nkrum_byzantine = 1"
        ))
        .expect("toml");
        let Ok(Search::Train(p)) = f.to_search() else {
            panic!("a train search")
        };
        use hivemesh_protocol::kinds::KindRules;
        let e = p
            .validate()
            .expect_err("4 segments cannot tolerate 1 by Multi-Krum");
        assert!(e.to_string().contains("2f + 2"), "{e}");
    }
}
