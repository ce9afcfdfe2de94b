//! `POST /datasets`: a dataset file converted into its canonical blob (ADR 0008), stored and
//! announced; the answer describes it (id, size, samples, shape, classes).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hivemesh_protocol::id::BlobId;
use hivemesh_trainer::data::{
    DatasetBlob, Format, MAX_DATASET_BYTES, ReadDataset, ReadOptions, read_posted,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Authorized, client_error};
use crate::daemon::MAX_PUT_LEN;

/// `POST /datasets` query parameters: how to read the body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DatasetQuery {
    /// The format (guessed from `name`, or the blob magic, when left out).
    format: Option<String>,
    /// The file's name (for the format guess and errors).
    name: Option<String>,
    /// CSV: the label column (a header name or a 0-based index).
    label: Option<String>,
    /// CSV: whether the first row is a header.
    header: Option<bool>,
    /// A sample's shape (`CxHxW` or a length).
    shape: Option<String>,
}

/// What a stored dataset is, as the API and `hivemesh dataset add` show it.
pub fn describe(id: BlobId, bytes: u64, read: &ReadDataset) -> Value {
    let mut v = json!({
        "id": id.to_string(),
        "bytes": bytes,
        "summary": read.blob.summary(),
    });
    match &read.blob {
        DatasetBlob::Samples(d) => {
            v["kind"] = json!("samples");
            v["samples"] = json!(d.len());
            v["shape"] = json!(hivemesh_trainer::data::blob::shape_text(&d.shape));
            v["classes"] = json!(d.classes);
            if let Some(t) = d.test_from {
                v["test_from"] = json!(t);
            }
        }
        DatasetBlob::Text(t) => {
            v["kind"] = json!("text");
            v["characters"] = json!(t.tokens.len());
            v["vocabulary"] = json!(t.vocab.len());
        }
    }
    if let Some(names) = &read.class_names {
        v["class_names"] = json!(names);
    }
    v
}

pub(super) async fn post_dataset(
    State(s): State<ApiState>,
    _auth: Authorized,
    Query(q): Query<DatasetQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let opts = ReadOptions {
        format: q
            .format
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(bad)?,
        label: q.label,
        header: q.header,
        shape: q.shape,
    };
    let name = q.name.unwrap_or_else(|| "upload".into());
    if opts.format == Some(Format::Blob) {
        return post_dataset_blob(&s, &name, &headers, body).await;
    }
    let body = axum::body::to_bytes(body, MAX_PUT_LEN as usize)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{e}: a dataset file is read whole here (at most {MAX_PUT_LEN} bytes); \
                     convert larger ones with `hivemesh dataset add`, which streams the blob"
                ),
            )
        })?;
    // Converting reads and parses the whole body: off the async runtime.
    let (read, blob) = tokio::task::spawn_blocking(move || {
        let read = read_posted(&name, &body, &opts)?;
        let blob = read.blob.encode();
        Ok::<_, hivemesh_trainer::DataError>((read, blob))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| bad(e.to_string()))?;
    let len = blob.len() as u64;
    let id = s
        .client
        .put_blob(blob)
        .await
        .map_err(client_error(StatusCode::BAD_REQUEST, |m| m))?;
    Ok((StatusCode::CREATED, axum::Json(describe(id, len, &read))).into_response())
}

/// A canonical dataset blob, streamed to disk, then checked (decoded from its file); one that
/// does not decode is removed again.
async fn post_dataset_blob(
    s: &ApiState,
    name: &str,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (id, len) = s
        .client
        .put_blob_stream(
            body.into_data_stream(),
            super::content_length(headers),
            MAX_DATASET_BYTES,
        )
        .await
        .map_err(super::upload_error)?;
    let (path, _) = s.client.blob_file(&id).ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("blob {id} vanished"),
        )
    })?;
    let name = name.to_string();
    let checked = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let r = std::io::BufReader::with_capacity(1 << 20, file);
        DatasetBlob::read_from(&name, r, len).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match checked {
        Ok(blob) => {
            let read = ReadDataset {
                blob,
                class_names: None,
            };
            Ok((StatusCode::CREATED, axum::Json(describe(id, len, &read))).into_response())
        }
        Err(e) => {
            s.client.remove_blob(&id);
            Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("not a dataset blob: {e}"),
            ))
        }
    }
}
