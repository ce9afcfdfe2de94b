//! Private data for a `federated` campaign's nodes (ADR 0010's attack suite): a dataset file
//! whose training split is dealt among the cluster's nodes, equally at random (IID) or by
//! Dirichlet(α) class proportions, each node's part written as a dataset file it offers under
//! the campaign's `private_data` name (`--private-data NAME=PATH`), and nothing else holds.

use std::path::{Path, PathBuf};

use hivemesh_trainer::data::DatasetBlob;
use hivemesh_trainer::data::blob::write_samples;
use hivemesh_trainer::data::partition::partition;
use hivemesh_trainer::data::read::{ReadOptions, read_dataset};

use super::{ClusterConfig, ClusterError};

/// Where the private data comes from and how it is dealt.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateSplit {
    /// The dataset file (any format `hivemesh dataset add` reads).
    pub source: PathBuf,
    /// How to read it.
    pub read: ReadOptions,
    /// Dirichlet α of the class proportions (0: IID).
    pub alpha: f64,
}

/// The name a federated campaign file asks clients to offer their data under
/// (`[federated] private_data`), if it is one.
pub fn private_name(campaign: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(campaign).ok()?;
    Some(
        v.get("federated")?
            .get("private_data")?
            .as_str()?
            .to_string(),
    )
}

/// Node `i`'s private part.
pub(super) fn part_path(cfg: &ClusterConfig, i: usize) -> PathBuf {
    cfg.data_dir.join("private").join(format!("node{i}.hmds"))
}

/// Reads the source and writes each node's part; the parts' sizes. Done before the nodes
/// start (each reads its part at start).
pub(super) fn deal(cfg: &ClusterConfig, split: &PrivateSplit) -> Result<Vec<usize>, ClusterError> {
    let bad =
        |e: String| ClusterError::Config(format!("--private-data {}: {e}", split.source.display()));
    let read = read_dataset(&split.source, &split.read).map_err(|e| bad(e.to_string()))?;
    let DatasetBlob::Samples(data) = read.blob else {
        return Err(bad("a text corpus, not labelled samples".into()));
    };
    let train = data.default_splits().train;
    let parts = partition(&data, &train, cfg.nodes, split.alpha, cfg.seed);
    let dir = cfg.data_dir.join("private");
    std::fs::create_dir_all(&dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    let mut sizes = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let d = data.subset(&format!("node {i}'s private part"), part);
        write_part(&part_path(cfg, i), &d).map_err(&bad)?;
        sizes.push(part.len());
    }
    Ok(sizes)
}

fn write_part(path: &Path, d: &hivemesh_trainer::data::Dataset) -> Result<(), String> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    write_samples(d, &mut f).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::flush(&mut f).map_err(|e| format!("{}: {e}", path.display()))
}
