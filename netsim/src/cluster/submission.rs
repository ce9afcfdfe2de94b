//! Submitting the cluster's campaign at the creator: the campaign file with the overrides and
//! the roster written in ([`campaign_table`]), its `zoo:`/`file:` blobs stored at the creator
//! ([`store_blobs`]), and the spec signed and submitted ([`submit_campaign`]).

use hivemesh_node::campaign_file::{CampaignFile, resolve_dataset, zoo_model};
use hivemesh_protocol::spec::CampaignSpec;
use hivemesh_protocol::{CampaignId, PeerKey};
use toml::Value;

use super::ClusterError;
use super::config::{ClusterConfig, Overrides};
use super::nodes::{Handle, node_key};

/// A submitted campaign.
#[derive(Debug, Clone)]
pub(super) struct Submitted {
    /// The spec, as the creator signs it (up to its timestamp).
    pub(super) spec: CampaignSpec,
    /// Its id.
    pub(super) id: CampaignId,
}

/// A copy of `t`'s sub-table `name`, if it has one.
fn sub(t: &toml::Table, name: &str) -> Option<toml::Table> {
    match t.get(name) {
        Some(Value::Table(x)) => Some(x.clone()),
        _ => None,
    }
}

/// Writes the `[schedule]` overrides into `t`.
fn override_schedule(t: &mut toml::Table, o: &Overrides) {
    let mut schedule = sub(t, "schedule").unwrap_or_default();
    if let Some(d) = o.job_deadline_s {
        schedule.insert(
            "job_deadline_s".into(),
            Value::Integer(d.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(x) = o.max_extra_executors {
        schedule.insert("max_extra_executors".into(), Value::Integer(x.into()));
    }
    if !schedule.is_empty() {
        t.insert("schedule".into(), Value::Table(schedule));
    }
}

/// The campaign file with the overrides and the roster (every node) written into it.
pub(super) fn campaign_table(
    cfg: &ClusterConfig,
    roster: &[PeerKey],
) -> Result<toml::Table, ClusterError> {
    let mut t: toml::Table = toml::from_str(&cfg.campaign)
        .map_err(|e| ClusterError::Config(format!("campaign file: {e}")))?;
    let o = &cfg.overrides;
    if let Some(r) = o.redundancy {
        t.insert("redundancy".into(), Value::Integer(r.into()));
    }
    if let Some(q) = o.quorum {
        t.insert("quorum".into(), Value::Integer(q.into()));
    }
    if let Some(a) = o.audit_rate {
        t.insert("audit_rate".into(), Value::Float(a.clamp(0.0, 1.0)));
    }
    override_schedule(&mut t, o);
    for name in ["nas", "loss"] {
        if let Some(mut search) = sub(&t, name) {
            if let Some(p) = o.population {
                search.insert("population".into(), Value::Integer(p.into()));
            }
            if let Some(g) = o.generations {
                search.insert("generations".into(), Value::Integer(g.into()));
            }
            t.insert(name.into(), Value::Table(search));
        }
    }
    t.insert(
        "roster".into(),
        Value::Array(
            roster
                .iter()
                .map(|k| Value::String(k.to_string()))
                .collect(),
        ),
    );
    Ok(t)
}

/// Builds or reads every blob the campaign file names as `zoo:` or `file:`, stores it at the
/// creator and writes its id into both `file` and `table`.
pub(super) async fn store_blobs(
    cfg: &ClusterConfig,
    creator: &Handle,
    table: &mut toml::Table,
    file: &mut CampaignFile,
) -> Result<(), ClusterError> {
    let source = file.dataset.clone();
    for (name, value) in file.blob_refs_mut() {
        let bytes = if let Some(zoo) = value.strip_prefix("zoo:") {
            zoo_model(zoo, &source)?
        } else if let Some(path) = value.strip_prefix("file:") {
            let p = cfg.campaign_dir.join(path);
            std::fs::read(&p).map_err(|e| {
                ClusterError::Config(format!("{name} = \"{value}\": {}: {e}", p.display()))
            })?
        } else {
            continue;
        };
        *value = creator.put_blob(bytes).await?;
        if let Some((tab, key)) = name.split_once('.')
            && let Some(Value::Table(t)) = table.get_mut(tab)
        {
            t.insert(key.into(), Value::String(value.clone()));
        }
    }
    Ok(())
}

/// The spec `file` signs to, checked: valid, and every job can get its executors.
fn spec_of(cfg: &ClusterConfig, file: &CampaignFile) -> Result<CampaignSpec, ClusterError> {
    let dataset = resolve_dataset(&file.dataset)?;
    let creator_key = node_key(cfg.seed, 0).public();
    let spec = file.to_spec(creator_key, hivemesh_node::unix_now(), dataset)?;
    spec.validate()
        .map_err(|e| ClusterError::Config(format!("campaign: {e}")))?;
    if spec.roster.len() < usize::from(spec.redundancy) {
        return Err(ClusterError::Config(format!(
            "{} nodes cannot give every job {} executors: lower --redundancy or add nodes",
            spec.roster.len(),
            spec.redundancy
        )));
    }
    Ok(spec)
}

/// Submits the campaign at the creator: the file with the overrides and every node in the
/// roster; blobs it names as `zoo:` or `file:` are built or read and stored at the creator
/// first.
pub(super) async fn submit_campaign(
    cfg: &ClusterConfig,
    creator: &Handle,
    roster: &[PeerKey],
) -> Result<Submitted, ClusterError> {
    let mut table = campaign_table(cfg, roster)?;
    let mut file = CampaignFile::parse(&table.to_string())?;
    store_blobs(cfg, creator, &mut table, &mut file).await?;
    let spec = spec_of(cfg, &file)?;
    let id = match creator {
        Handle::InProcess(client) => client.submit(spec.clone()).await?,
        Handle::Process(p) => {
            let v = p
                .post("/campaigns", table.to_string().as_bytes())
                .await
                .map_err(|e| ClusterError::Config(format!("node 0: {e}")))?;
            v["id"]
                .as_str()
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| {
                    ClusterError::Config(format!("node 0: POST /campaigns answered {v}"))
                })?
        }
    };
    Ok(Submitted { spec, id })
}

/// `nas`, `loss` or `distill`.
pub(super) fn kind_of(spec: &CampaignSpec) -> &'static str {
    spec.search.kind().name()
}

/// Jobs the campaign settles in all.
pub(super) fn total_jobs(spec: &CampaignSpec) -> usize {
    let rules = spec.search.rules();
    usize::try_from(rules.jobs_per_generation() * u64::from(rules.generations()))
        .unwrap_or(usize::MAX)
}

/// Generations the campaign runs (a distillation is one).
pub(super) fn generations_of(spec: &CampaignSpec) -> u32 {
    spec.search.rules().generations()
}
