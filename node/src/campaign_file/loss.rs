//! `[loss]`: a loss-function search, its defaults, and the zoo of reference models a
//! `zoo:NAME` value names.

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::spec::{LossParams, Search};
use serde::Deserialize;

use super::{CampaignFileError, field};

/// The section's name; a search sized by `population` and `generations`.
pub const SECTION: &str = "loss";

/// The blob-naming key of `[loss]`.
pub const BLOB_FIELD: (&str, &str) = ("loss", "reference_model");

/// `[loss]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossFile {
    /// Expressions per generation.
    pub population: u32,
    /// Generations.
    pub generations: u32,
    /// Deepest tree (at least 6: generation 0 starts from cross-entropy, which is 6 deep;
    /// smaller values are raised to it).
    #[serde(default = "default_depth")]
    pub max_depth: u8,
    /// Largest tree (at least 8).
    #[serde(default = "default_size")]
    pub max_size: u16,
    /// The reference model: a blob id (hex; the node holds it or fetches it from peers),
    /// `zoo:mlp-N` (Flatten → Dense N → ReLU → Dense) or `zoo:cnn` (the small CNN) built for
    /// the dataset by the submitting node, or `file:PATH` (uploaded by `campaign submit`).
    pub reference_model: String,
    /// Constant-tuning steps.
    #[serde(default)]
    pub constant_tuning_steps: u32,
}

fn default_depth() -> u8 {
    8
}
fn default_size() -> u16 {
    24
}

impl LossFile {
    /// The protocol's search (the reference model must be a blob id by now).
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let l = self;
        Ok(Search::Loss(LossParams {
            population: l.population,
            generations: l.generations,
            max_depth: l.max_depth,
            max_size: l.max_size,
            reference_model: l
                .reference_model
                .parse::<BlobId>()
                .map_err(|e| field("loss.reference_model", e.to_string()))?,
            constant_tuning_steps: l.constant_tuning_steps,
        }))
    }
}

/// A reference model from the zoo (`zoo:mlp-N`, `zoo:linear`, `zoo:cnn`) for samples of shape `input` and
/// `classes` classes, as the blob a loss campaign names (its postcard architecture IR).
pub fn zoo_model(
    name: &str,
    input: hivemesh_evolve::arch::Shape,
    classes: u32,
) -> Result<Vec<u8>, CampaignFileError> {
    zoo_model_for("loss.reference_model", name, input, classes)
}

/// [`zoo_model`] for the campaign-file field `for_field` (`train.model`, …), which its errors
/// name.
pub fn zoo_model_for(
    for_field: &'static str,
    name: &str,
    input: hivemesh_evolve::arch::Shape,
    classes: u32,
) -> Result<Vec<u8>, CampaignFileError> {
    let arch = match name {
        "cnn" => hivemesh_trainer::zoo::small_cnn(input, classes),
        "linear" => hivemesh_trainer::zoo::linear(input, classes),
        _ => match name.strip_prefix("mlp-").map(str::parse::<u32>) {
            Some(Ok(hidden)) if (1..=4096).contains(&hidden) => {
                hivemesh_trainer::zoo::mlp(input, hidden, classes)
            }
            _ => {
                return Err(field(
                    for_field,
                    format!(
                        "no zoo model {name:?}: use zoo:mlp-N (N in 1..=4096), zoo:linear or zoo:cnn"
                    ),
                ));
            }
        },
    };
    arch.shapes().map_err(|e| {
        field(
            for_field,
            format!("zoo:{name} does not fit samples of shape {input:?}: {e}"),
        )
    })?;
    postcard::to_stdvec(&arch).map_err(|e| field(for_field, e.to_string()))
}
