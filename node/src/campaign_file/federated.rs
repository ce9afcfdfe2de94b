//! `[federated]`: one model trained on private data that never leaves its clients (ADR 0010).
//!
//! ```toml
//! dataset = "builtin:digits"   # the PUBLIC data: validation of each round, the final test
//! [federated]
//! model = "zoo:mlp-32"         # as [train]: a blob id, zoo:NAME or file:PATH
//! private_data = "clinics"     # clients offer it: hivemesh run --private-data clinics=FILE
//! rounds = 5
//! clients_per_round = 3
//! min_clients = 1              # fewer agreed updates leave the round's model as it was
//! local_steps = 50             # [budget] gives the optimiser, batch size, learning rate
//! outer = "average"            # FedAvg (default); or "nesterov" (outer_learning_rate, …)
//! aggregate = "mean"           # or trimmed-mean, median, centered-clip, multi-krum (as [train])
//! norm_bound = 0.0             # > 0: each update scaled to at most this L2 norm first
//! # Example-level privacy (DP-SGD on each client): all three, or none.
//! example_clip = 1.0           # C
//! example_noise = 1.1          # σ (or give target_epsilon instead)
//! example_sample_rate = 0.01   # Poisson sampling rate q of each local step
//! # Client-level privacy (each update clipped to C, noise σC): both, or none.
//! client_clip = 0.0
//! client_noise = 0.0
//! target_epsilon = 0.0         # > 0: σ solved so the planned rounds spend at most this
//! delta = 1e-5
//! epsilon_budget = 0.0         # > 0: rounds that would spend more are not started
//! # Secure aggregation (needs client_clip or norm_bound): only sums of updates are revealed;
//! # each round then takes four generations (keys, deal, masked update, reveal).
//! secure = false
//! secure_buckets = 1           # groups whose sums are revealed (a robust aggregate needs several)
//! secure_neighbours = 0        # SecAgg+ neighbours per client; 0: all of its group
//! # What the model sees: "values" (default), or "scattering": fixed scattering features of
//! # each image (computed on every node, private and public data alike; no privacy cost), for
//! # a model such as zoo:linear built for their shape (81 x 7 x 7 for 28 x 28 images).
//! features = "values"
//! scatter_scales = 2            # J
//! scatter_angles = 8            # L
//! scatter_groups = 27           # per-image group normalisation (0: none)
//! ```

use hivemesh_evolve::arch::Shape;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::privacy::noise_for;
use hivemesh_protocol::spec::{
    ClientPrivacy, ExamplePrivacy, Features, FederatedParams, Search, SecureAggregation,
};
use serde::Deserialize;

use super::train::{AggregateFields, parse_aggregate, parse_outer};
use super::{CampaignFileError, field};

/// The blob-naming key of `[federated]`.
pub const BLOB_FIELD: (&str, &str) = ("federated", "model");

/// `[federated]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedFile {
    /// The model, as `[train]`'s.
    pub model: String,
    /// The name clients offer their data under.
    pub private_data: String,
    /// Rounds.
    pub rounds: u32,
    /// Clients per round.
    #[serde(default = "default_clients")]
    pub clients_per_round: u32,
    /// Fewest agreed updates for a round to move the model.
    #[serde(default = "default_min_clients")]
    pub min_clients: u32,
    /// Local optimiser steps per round.
    #[serde(default = "default_local_steps")]
    pub local_steps: u32,
    /// `average` (default, FedAvg) or `nesterov`.
    #[serde(default = "default_outer")]
    pub outer: String,
    /// Outer learning rate (Nesterov).
    #[serde(default = "default_outer_lr")]
    pub outer_learning_rate: f32,
    /// Outer momentum (Nesterov).
    #[serde(default = "default_outer_momentum")]
    pub outer_momentum: f32,
    /// As `[train] aggregate`.
    #[serde(default)]
    pub aggregate: Option<String>,
    /// As `[train] trim`.
    #[serde(default)]
    pub trim: u32,
    /// As `[train] clip_radius`.
    #[serde(default)]
    pub clip_radius: f32,
    /// As `[train] clip_iterations`.
    #[serde(default = "default_clip_iterations")]
    pub clip_iterations: u8,
    /// As `[train] krum_byzantine`.
    #[serde(default)]
    pub krum_byzantine: u16,
    /// As `[train] krum_keep`.
    #[serde(default)]
    pub krum_keep: u16,
    /// Each update scaled to at most this L2 norm before combining (0: none).
    #[serde(default)]
    pub norm_bound: f32,
    /// DP-SGD's per-record clipping norm (0: no example-level privacy).
    #[serde(default)]
    pub example_clip: f32,
    /// DP-SGD's noise multiplier σ.
    #[serde(default)]
    pub example_noise: f32,
    /// DP-SGD's Poisson sampling rate.
    #[serde(default)]
    pub example_sample_rate: f64,
    /// The update clipping norm (0: no client-level privacy).
    #[serde(default)]
    pub client_clip: f32,
    /// The client-level noise multiplier σ.
    #[serde(default)]
    pub client_noise: f32,
    /// Above 0: the noise multipliers left at 0 are solved for this ε over the planned rounds.
    #[serde(default)]
    pub target_epsilon: f64,
    /// δ.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Above 0: the most ε the campaign may spend.
    #[serde(default)]
    pub epsilon_budget: f64,
    /// Secure aggregation.
    #[serde(default)]
    pub secure: bool,
    /// Secure aggregation's groups.
    #[serde(default = "default_buckets")]
    pub secure_buckets: u32,
    /// Secure aggregation's neighbours per client (0: all of its group).
    #[serde(default)]
    pub secure_neighbours: u32,
    /// What the model sees: `values` (default) or `scattering` (fixed features of images).
    #[serde(default = "default_features")]
    pub features: String,
    /// Scattering's scales `J`.
    #[serde(default = "default_scatter_scales")]
    pub scatter_scales: u8,
    /// Scattering's angles `L`.
    #[serde(default = "default_scatter_angles")]
    pub scatter_angles: u8,
    /// Scattering's normalisation groups (0: none).
    #[serde(default = "default_scatter_groups")]
    pub scatter_groups: u8,
}

fn default_features() -> String {
    "values".into()
}
fn default_scatter_scales() -> u8 {
    2
}
fn default_scatter_angles() -> u8 {
    8
}
fn default_scatter_groups() -> u8 {
    27
}

fn default_buckets() -> u32 {
    1
}

fn default_clients() -> u32 {
    3
}
fn default_min_clients() -> u32 {
    1
}
fn default_local_steps() -> u32 {
    50
}
fn default_outer() -> String {
    "average".into()
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
fn default_delta() -> f64 {
    1e-5
}

impl FederatedFile {
    /// The example-level settings, `σ` solved for `target_epsilon` when it is given and
    /// `example_noise` is 0 (planned as if every client took part in every round:
    /// `local_steps × rounds` steps).
    fn example_privacy(&self) -> Result<Option<ExamplePrivacy>, CampaignFileError> {
        if self.example_clip == 0.0 {
            return Ok(None);
        }
        let mut sigma = self.example_noise;
        if sigma == 0.0 && self.target_epsilon > 0.0 {
            let steps = u64::from(self.local_steps) * u64::from(self.rounds);
            sigma = noise_for(
                self.target_epsilon,
                self.delta,
                self.example_sample_rate,
                steps,
            )
            .map_err(|e| field("federated.target_epsilon", e.to_string()))?
                as f32;
        }
        Ok(Some(ExamplePrivacy {
            clip: self.example_clip,
            noise_multiplier: sigma,
            sample_rate: self.example_sample_rate,
        }))
    }

    /// The client-level settings, `σ` solved as for the example level when it is 0 (planned
    /// with every client in every round: sampling rate 1, `rounds` steps).
    fn client_privacy(&self) -> Result<Option<ClientPrivacy>, CampaignFileError> {
        if self.client_clip == 0.0 {
            return Ok(None);
        }
        let mut sigma = self.client_noise;
        if sigma == 0.0 && self.target_epsilon > 0.0 {
            sigma = noise_for(self.target_epsilon, self.delta, 1.0, u64::from(self.rounds))
                .map_err(|e| field("federated.target_epsilon", e.to_string()))?
                as f32;
        }
        Ok(Some(ClientPrivacy {
            clip: self.client_clip,
            noise_multiplier: sigma,
        }))
    }

    /// What the model sees of each record.
    pub fn features(&self) -> Result<Features, CampaignFileError> {
        let f = match self.features.as_str() {
            "values" => Features::Values,
            "scattering" => Features::Scattering {
                scales: self.scatter_scales,
                angles: self.scatter_angles,
                groups: self.scatter_groups,
            },
            other => {
                return Err(field(
                    "federated.features",
                    format!("{other:?}: use values or scattering"),
                ));
            }
        };
        f.validate()
            .map_err(|e| field("federated.features", e.to_string()))?;
        Ok(f)
    }

    /// The shape the model takes for records of shape `data` (a zoo model is built for it).
    pub fn model_input(&self, data: Shape) -> Result<Shape, CampaignFileError> {
        crate::executor::feature_shape(&self.features()?, data)
            .map_err(|e| field("federated.features", e))
    }

    /// The protocol's search (the model must be a blob id by now).
    pub fn to_search(&self) -> Result<Search, CampaignFileError> {
        let outer = parse_outer(
            "federated.outer",
            &self.outer,
            self.outer_learning_rate,
            self.outer_momentum,
        )?;
        let aggregate = parse_aggregate(
            ["federated.aggregate", "federated.clip_radius"],
            &AggregateFields {
                name: self.aggregate.as_deref(),
                trim: self.trim,
                clip_radius: self.clip_radius,
                clip_iterations: self.clip_iterations,
                krum_byzantine: self.krum_byzantine,
                krum_keep: self.krum_keep,
            },
            self.min_clients,
        )?;
        Ok(Search::Federated(FederatedParams {
            model: self
                .model
                .parse::<BlobId>()
                .map_err(|e| field("federated.model", e.to_string()))?,
            private_data: self.private_data.clone(),
            rounds: self.rounds,
            clients_per_round: self.clients_per_round,
            min_clients: self.min_clients,
            local_steps: self.local_steps,
            example_privacy: self.example_privacy()?,
            client_privacy: self.client_privacy()?,
            delta: self.delta,
            epsilon_budget: (self.epsilon_budget > 0.0).then_some(self.epsilon_budget),
            norm_bound: self.norm_bound,
            aggregate,
            outer,
            secure: self.secure.then_some(SecureAggregation {
                buckets: self.secure_buckets,
                neighbours: self.secure_neighbours,
            }),
            features: self.features()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hivemesh_protocol::kinds::KindRules;
    use hivemesh_protocol::privacy::{Mechanism, epsilon};

    fn params(extra: &str) -> Result<FederatedParams, CampaignFileError> {
        let id = BlobId::of_bytes(b"m");
        let f: FederatedFile = toml::from_str(&format!(
            "model = \"{id}\"\nprivate_data = \"wards\"\nrounds = 4\n{extra}"
        ))
        .expect("toml");
        match f.to_search()? {
            Search::Federated(p) => Ok(p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn features_are_values_by_default_or_scattering_with_checked_settings() {
        assert_eq!(params("").expect("valid").features, Features::Values);
        let p = params("features = \"scattering\"").expect("valid");
        assert_eq!(p.features, Features::SCATTERING);
        let p = params(
            "features = \"scattering\"\nscatter_scales = 1\nscatter_angles = 4\nscatter_groups = 5",
        )
        .expect("valid");
        assert_eq!(
            p.features,
            Features::Scattering {
                scales: 1,
                angles: 4,
                groups: 5
            }
        );
        let e = params("features = \"scattering\"\nscatter_groups = 4").expect_err("81 channels");
        assert!(e.to_string().contains("81"), "{e}");
        let e = params("features = \"pca\"").expect_err("unknown");
        assert!(e.to_string().contains("values or scattering"), "{e}");
        let e = params("features = \"scattering\"\nscatter_scales = 9").expect_err("J");
        assert!(e.to_string().contains("scales"), "{e}");
    }

    #[test]
    fn defaults_are_fedavg_without_privacy_and_valid() {
        let p = params("").expect("valid");
        assert_eq!(p.outer, hivemesh_protocol::spec::OuterStep::Average);
        assert!(p.example_privacy.is_none() && p.client_privacy.is_none());
        assert!(p.validate().is_ok());
    }

    /// A target ε gives the σ that spends at most it over the planned rounds.
    #[test]
    fn a_target_epsilon_is_met_by_the_solved_noise() {
        let p = params(
            "local_steps = 40\nexample_clip = 1.0\nexample_sample_rate = 0.02\ntarget_epsilon = 2.0",
        )
        .expect("valid");
        let e = p.example_privacy.expect("example privacy");
        assert!(e.noise_multiplier > 0.3, "{}", e.noise_multiplier);
        let spent = epsilon(
            &Mechanism {
                sample_rate: 0.02,
                noise_multiplier: f64::from(e.noise_multiplier),
                steps: 40 * 4,
            }
            .rdp(),
            1e-5,
        )
        .0;
        assert!(spent <= 2.0 + 1e-3, "{spent}");
        let bad = params("example_clip = 1.0\nexample_sample_rate = 1.0\ntarget_epsilon = 1e-9")
            .expect_err("unreachable");
        assert!(bad.to_string().contains("target_epsilon"), "{bad}");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = params("outer = \"adam\"").expect_err("outer");
        assert!(e.to_string().contains("federated.outer"), "{e}");
        let e = params("aggregate = \"krum\"").expect_err("aggregate");
        assert!(e.to_string().contains("federated.aggregate"), "{e}");
    }

    #[test]
    fn secure_aggregation_is_read_and_checked() {
        let p = params("min_clients = 4\nclients_per_round = 6\nnorm_bound = 2.0\nsecure = true\nsecure_buckets = 2")
            .expect("valid");
        let s = p.secure.expect("secure");
        assert_eq!((s.buckets, s.neighbours), (2, 0));
        assert!(p.validate().is_ok());
        assert_eq!(p.generations(), 4 * 4 + 1);
        let e = params("secure = true")
            .expect("parses")
            .validate()
            .expect_err("no bound");
        assert!(e.to_string().contains("secure"), "{e}");
    }

    /// A shipped example's parameters (its model named by a stand-in id).
    fn example(text: &str) -> FederatedParams {
        let mut file = super::super::CampaignFile::parse(text).expect("parses");
        let f = file.federated.as_mut().expect("[federated]");
        f.model = BlobId::of_bytes(b"m").to_string();
        let Search::Federated(p) = f.to_search().expect("a search") else {
            panic!("federated")
        };
        assert!(p.validate().is_ok());
        p
    }

    /// The shipped examples parse and validate; the digits one's σ is solved for its target.
    #[test]
    fn the_example_campaigns_are_valid() {
        let p = example(include_str!("../../../examples/federated-mnist.toml"));
        assert_eq!(p.clients_per_round, 10);
        let p = example(include_str!("../../../examples/federated-digits.toml"));
        let e = p.example_privacy.expect("example privacy");
        assert!(e.noise_multiplier > 0.0);
        assert_eq!(p.epsilon_budget, Some(8.0));
    }
}
