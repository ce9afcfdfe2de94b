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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_comes_from_a_federated_campaign_only() {
        let fed = include_str!("../../../examples/federated-mnist.toml");
        assert_eq!(private_name(fed).as_deref(), Some("mnist-part"));
        assert_eq!(private_name(super::super::DEFAULT_CAMPAIGN), None);
    }

    /// The digits' training split dealt to three nodes: every training record in exactly one
    /// part, each part a dataset file its node can read.
    #[test]
    fn each_node_gets_a_readable_part_of_the_training_split() {
        let dir = std::env::temp_dir().join(format!("hivemesh-private-{}", std::process::id()));
        let mut cfg = ClusterConfig::new(dir.clone());
        cfg.nodes = 3;
        let split = PrivateSplit {
            source: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/data/digits/digits.csv.gz"
            )),
            read: ReadOptions {
                shape: Some("1x8x8".into()),
                ..ReadOptions::default()
            },
            alpha: 0.3,
        };
        let sizes = deal(&cfg, &split).expect("dealt");
        let all = read_dataset(&split.source, &split.read).expect("reads");
        let DatasetBlob::Samples(all) = all.blob else {
            panic!("samples")
        };
        assert_eq!(
            sizes.iter().sum::<usize>(),
            all.default_splits().train.len()
        );
        for (i, n) in sizes.iter().enumerate() {
            let part = read_dataset(&part_path(&cfg, i), &ReadOptions::default()).expect("a part");
            let DatasetBlob::Samples(d) = part.blob else {
                panic!("samples")
            };
            assert_eq!(d.len(), *n);
        }
        let _ = std::fs::remove_dir_all(dir);
        let bad = PrivateSplit {
            source: PathBuf::from("/no/such/file.csv"),
            ..split
        };
        let e = deal(&cfg, &bad).expect_err("refused");
        assert!(e.to_string().contains("/no/such/file.csv"), "{e}");
    }
}
