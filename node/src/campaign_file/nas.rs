//! `[nas]`: an architecture search over an MLP space (`max_layers`, `widths`) or the NSGA-Net
//! macro space (`phases`, …), and its defaults.

use hivemesh_protocol::spec::{NasParams, NasSpace, Search, Strategy};
use serde::Deserialize;

use super::{CampaignFileError, field};

/// The section's name; a search sized by `population` and `generations`.
pub const SECTION: &str = "nas";

/// `[nas]`: an MLP space (`max_layers`, `widths`) or the NSGA-Net macro space (`phases`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NasFile {
    /// `mlp` (default) or `macro`.
    #[serde(default = "default_space")]
    pub space: String,
    /// MLP: most hidden layers.
    #[serde(default = "default_layers")]
    pub max_layers: u8,
    /// MLP: allowed widths.
    #[serde(default = "default_widths")]
    pub widths: Vec<u32>,
    /// Macro: phases.
    #[serde(default = "default_phases")]
    pub phases: u8,
    /// Macro: nodes per phase.
    #[serde(default = "default_nodes")]
    pub nodes_per_phase: u8,
    /// Macro: channel choices.
    #[serde(default = "default_channels")]
    pub channels: Vec<u32>,
    /// Macro: kernel choices.
    #[serde(default = "default_kernels")]
    pub kernels: Vec<u8>,
    /// Genomes per generation.
    pub population: u32,
    /// Generations.
    pub generations: u32,
    /// `nsga2` (default) or `aging` (regularised evolution).
    #[serde(default = "default_strategy")]
    pub strategy: String,
}

fn default_space() -> String {
    "mlp".into()
}
fn default_layers() -> u8 {
    2
}
fn default_widths() -> Vec<u32> {
    vec![16, 32, 64]
}
fn default_phases() -> u8 {
    2
}
fn default_nodes() -> u8 {
    3
}
fn default_channels() -> Vec<u32> {
    vec![8, 16]
}
fn default_kernels() -> Vec<u8> {
    vec![3, 5]
}
fn default_strategy() -> String {
    "nsga2".into()
}

impl NasFile {
    /// The protocol's search.
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let n = self;
        Ok(Search::Nas(NasParams {
            space: match n.space.as_str() {
                "mlp" => NasSpace::Mlp {
                    max_layers: n.max_layers,
                    widths: n.widths.clone(),
                },
                "macro" => NasSpace::Macro {
                    phases: n.phases,
                    nodes_per_phase: n.nodes_per_phase,
                    channels: n.channels.clone(),
                    kernels: n.kernels.clone(),
                },
                other => {
                    return Err(field("nas.space", format!("{other:?}: use mlp or macro")));
                }
            },
            strategy: match n.strategy.as_str() {
                "nsga2" => Strategy::Nsga2,
                "aging" => Strategy::RegularizedEvolution,
                other => {
                    return Err(field(
                        "nas.strategy",
                        format!("{other:?}: use nsga2 or aging"),
                    ));
                }
            },
            population: n.population,
            generations: n.generations,
        }))
    }
}
