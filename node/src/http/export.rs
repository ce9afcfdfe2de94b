//! `GET /campaigns/{id}/best` and `GET /campaigns/{id}/best/{k}/{file}`: a campaign's front
//! with each entry's metrics, JSON IR and weights blob id, and each entry's export files
//! (`arch.json`, `weights.safetensors`, `model.py`; see [`hivemesh_trainer::export`]).
//!
//! An entry's architecture and weights come from its weights artifact (a
//! [`WeightsFile`] holds both), from this node's store or else fetched from the peers that
//! provide it. `k` is the entry's place in the current front, best accuracy first: stable once
//! the campaign finished.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hivemesh_protocol::id::{BlobId, CampaignId};
use hivemesh_trainer::export::{ExportFiles, FILE_NAMES, ir_json};
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::rounds::model_weights;
use serde_json::{Value, json};

use super::{ApiError, ApiState, campaign_id, client_error, not_found, stopped};
use crate::daemon::{FrontPoint, SettledJob};

/// The folder an export writes front entry `k` to: `<k>-<the job id's first 16 hex digits>`
/// (only hex digits are kept, so the name is one plain path component whatever `job` holds).
pub fn folder_name(k: usize, job: &str) -> String {
    let short: String = job
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    format!("{k}-{short}")
}

/// The campaign's front and its settled jobs (for each entry's correct and total counts).
async fn front_of(
    s: &ApiState,
    id: CampaignId,
) -> Result<(Vec<FrontPoint>, Vec<SettledJob>), ApiError> {
    let unknown = || not_found(format!("campaign {id} is not followed by this node"));
    let status = s.client.campaign(id).await.map_err(stopped)?;
    let front = status.ok_or_else(unknown)?.front;
    let settled = s.client.settled(id).await.map_err(stopped)?;
    Ok((front, settled.ok_or_else(unknown)?))
}

/// Front entry `k`'s weights artifact, from the store or the peers, decoded.
async fn weights_of(s: &ApiState, k: usize, p: &FrontPoint) -> Result<WeightsFile, ApiError> {
    let blob = p.artifact.as_deref().ok_or_else(|| {
        not_found(format!(
            "front entry {k} (job {}) has no weights artifact",
            p.job
        ))
    })?;
    let id: BlobId = blob
        .parse()
        .map_err(|e| not_found(format!("front entry {k}: artifact id {blob:?}: {e}")))?;
    let bytes = s
        .client
        .fetch_blob(id)
        .await
        .map_err(client_error(StatusCode::NOT_FOUND, |m| {
            format!("front entry {k}: weights blob {id}: {m}")
        }))?;
    // A `train` campaign's model is a training state: its weights are exported.
    blocking(move || model_weights(&bytes)).await?.map_err(|e| {
        not_found(format!(
            "front entry {k}: blob {id} is not a model's weights ({e}); only architecture \
             searches and training campaigns export models"
        ))
    })
}

/// Runs `f` off the async runtime (decoding and converting weights is CPU work).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// One front entry as `/best` shows it (without its IR).
fn entry(id: CampaignId, k: usize, p: &FrontPoint, settled: &[SettledJob]) -> Value {
    let job = settled.iter().find(|j| j.job == p.job);
    let files: serde_json::Map<String, Value> = FILE_NAMES
        .iter()
        .map(|f| {
            (
                (*f).to_string(),
                json!(format!("/campaigns/{id}/best/{k}/{f}")),
            )
        })
        .collect();
    json!({
        "k": k,
        "job": p.job,
        "generation": p.generation,
        "accuracy": p.accuracy,
        "correct": job.map(|j| j.correct),
        "total": job.map(|j| j.total),
        "params": p.params,
        "flops": p.flops,
        "weights": p.artifact,
        "folder": folder_name(k, &p.job),
        "files": files,
    })
}

/// `GET /campaigns/{id}/best`: the front, each entry with its metrics, weights blob id, file
/// URLs and JSON IR (`ir`; `null` with an `error` when its weights cannot be had).
pub(super) async fn get_best(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let (front, settled) = front_of(&s, id).await?;
    let mut entries = Vec::with_capacity(front.len());
    for (k, p) in front.iter().enumerate() {
        let mut v = entry(id, k, p, &settled);
        match weights_of(&s, k, p).await {
            Ok(w) => match ir_json(&w.arch) {
                Ok(ir) => v["ir"] = ir,
                Err(e) => {
                    v["ir"] = Value::Null;
                    v["error"] = json!(format!("front entry {k}: {e}"));
                }
            },
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, m)) => {
                return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, m));
            }
            Err(ApiError(_, m)) => {
                v["ir"] = Value::Null;
                v["error"] = json!(m);
            }
        }
        entries.push(v);
    }
    Ok(axum::Json(json!({ "campaign": id.to_string(), "front": entries })).into_response())
}

/// `GET /campaigns/{id}/best/{k}/{file}`: one export file of front entry `k`.
pub(super) async fn get_best_file(
    State(s): State<ApiState>,
    Path((id, k, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    if !FILE_NAMES.contains(&file.as_str()) {
        return Err(not_found(format!(
            "no export file {file:?}: a front entry has {}",
            FILE_NAMES.join(", ")
        )));
    }
    let (front, _) = front_of(&s, id).await?;
    let place = format!(
        "campaign {id}'s front has {} entries (k = 0 to {})",
        front.len(),
        front.len().saturating_sub(1)
    );
    let k: usize = k
        .parse()
        .map_err(|_| not_found(format!("front entry {k:?} is not a number: {place}")))?;
    let p = front
        .get(k)
        .ok_or_else(|| not_found(format!("no front entry {k}: {place}")))?;
    let weights = weights_of(&s, k, p).await?;
    let files = blocking(move || ExportFiles::of(&weights))
        .await?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let content_type = match file.as_str() {
        "arch.json" => "application/json",
        "model.py" => "text/x-python; charset=utf-8",
        _ => "application/octet-stream",
    };
    let bytes = files.get(&file).unwrap_or_default().to_vec();
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_one_plain_component() {
        assert_eq!(folder_name(3, &"ab".repeat(32)), "3-abababababababab");
        assert_eq!(folder_name(0, "../../etc/passwd"), "0-ecad");
        assert_eq!(folder_name(1, "é1"), "1-1");
    }
}
