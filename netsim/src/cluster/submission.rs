//! Submitting the cluster's campaign at the creator: the campaign file with the overrides and
//! the roster written in ([`campaign_table`]), then node's one submission path
//! ([`hivemesh_node::submit`]: `zoo:`/`file:` blobs stored at the creator, the spec built and
//! checked) and the spec signed and submitted ([`submit_campaign`]).

use hivemesh_node::campaign_file::SEARCH_SECTIONS;
use hivemesh_node::submit::{Resolve, Submission, UploadError, build_spec, check_roster};
use hivemesh_protocol::spec::CampaignSpec;
use hivemesh_protocol::{BlobId, CampaignId, PeerKey};
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
    for name in SEARCH_SECTIONS {
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

/// Submits the campaign at the creator through node's one submission path
/// ([`hivemesh_node::submit`]): the file with the overrides and every node in the roster; blobs
/// it names as `zoo:` or `file:` are built or read and stored at the creator first; the spec is
/// checked as the creator checks it before signing.
pub(super) async fn submit_campaign(
    cfg: &ClusterConfig,
    creator: &Handle,
    roster: &[PeerKey],
) -> Result<Submitted, ClusterError> {
    let mut sub = Submission::parse(&campaign_table(cfg, roster)?.to_string())?;
    let resolve = Resolve {
        zoo: true,
        files: Some(&cfg.campaign_dir),
    };
    // Kept for the generation-0 estimate (a reference model or teacher).
    let mut built = std::collections::BTreeMap::new();
    sub.upload_blobs(resolve, |_, bytes| {
        built.insert(BlobId::of_bytes(&bytes), bytes.clone());
        async move {
            let id = creator.put_blob(bytes).await?;
            id.parse::<BlobId>()
                .map_err(|e| ClusterError::Config(format!("node 0 stored a blob as {id}: {e}")))
        }
    })
    .await
    .map_err(|e| match e {
        UploadError::Prepare(e) => ClusterError::Submit(e),
        UploadError::Put(e) => e,
    })?;
    let creator_key = node_key(cfg.seed, 0).public();
    let spec = build_spec(
        &sub.file,
        creator_key,
        &[],
        hivemesh_node::unix_now(),
        &built,
    )?;
    check_roster(&spec)?;
    let id = match creator {
        Handle::InProcess(client) => client.submit(spec.clone()).await?,
        Handle::Process(p) => {
            let v = p
                .post("/campaigns", sub.text().as_bytes())
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

/// `nas`, `loss`, `distill` or `train`.
pub(super) fn kind_of(spec: &CampaignSpec) -> &'static str {
    spec.search.kind().name()
}

/// Jobs the campaign settles in all.
pub(super) fn total_jobs(spec: &CampaignSpec) -> usize {
    usize::try_from(spec.search.rules().total_jobs()).unwrap_or(usize::MAX)
}

/// Generations the campaign runs (a distillation is one).
pub(super) fn generations_of(spec: &CampaignSpec) -> u32 {
    spec.search.rules().generations()
}
