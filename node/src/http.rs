//! The node's HTTP API (axum): status, campaigns, results, blobs and Prometheus metrics, plus a
//! machine-readable `/manifest.json` describing every endpoint.
//!
//! Served on 127.0.0.1 by default (`hivemesh run --http ADDR`; a non-loopback address needs
//! `--http-public`). Reads are open to whoever can reach the port; `POST /campaigns` and `POST /blobs` need the
//! bearer token kept in `DATA_DIR/api.token` (mode 0600). Errors are JSON `{"error": "…"}` with
//! 400 (bad input), 401 (no or wrong token), 404 (unknown id) or 503 (node stopping).
//!
//! The router is built from the same [`ENDPOINTS`] table the manifest is, so the manifest cannot
//! list an endpoint that is not served, nor miss one that is.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hivemesh_protocol::id::{BlobId, CampaignId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::daemon::{Client, ClientError};

pub mod datasets;
pub mod export;
use crate::submit::{Resolve, Submission, UploadError, build_spec};

/// Largest campaign file accepted by `POST /campaigns`.
pub const MAX_CAMPAIGN_BODY: usize = 64 * 1024;

/// One documented example call.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleCall {
    /// HTTP method.
    pub method: &'static str,
    /// Query string.
    pub query: &'static str,
    /// Headers.
    pub headers: &'static [(&'static str, &'static str)],
    /// Body.
    pub body: &'static str,
    /// What comes back.
    pub output: &'static str,
}

/// One endpoint, as the manifest describes it.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Path (axum syntax, `{id}` for a parameter).
    pub uri: &'static str,
    /// Methods served.
    pub input_methods: &'static [&'static str],
    /// Query parameters.
    pub input_query: &'static str,
    /// Headers read.
    pub input_headers: &'static str,
    /// Body read.
    pub input_body: &'static str,
    /// What comes back.
    pub output: &'static str,
    /// What it is for.
    pub documentation: &'static str,
    /// Examples.
    pub example_calls: &'static [ExampleCall],
}

/// Every endpoint the API serves.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        uri: "/manifest.json",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: this document",
        documentation: "What this API serves: name, version, license and every endpoint with example calls.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "{\"name\":\"hivemesh node\",\"endpoints\":[…]}",
        }],
    },
    Endpoint {
        uri: "/status",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: peer id, key, listen addresses, peers, jobs running/finished, messages validated/rejected, campaigns",
        documentation: "The node's state.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "{\"peer_id\":\"12D3KooW…\",\"peers\":3,\"jobs_running\":1,…}",
        }],
    },
    Endpoint {
        uri: "/campaigns",
        input_methods: &["GET", "POST"],
        input_query: "",
        input_headers: "POST: Authorization: Bearer <DATA_DIR/api.token>",
        input_body: "POST: a campaign file (TOML, see examples/*.toml), at most 64 KiB",
        output: "GET: application/json list of campaign statuses; POST: 201 {\"id\":\"<campaign id>\"}",
        documentation: "List the campaigns this node follows, or sign and publish a new one.",
        example_calls: &[
            ExampleCall {
                method: "GET",
                query: "",
                headers: &[],
                body: "",
                output: "[{\"id\":\"…\",\"name\":\"NAS on digits\",\"generation\":1,\"finished\":false,…}]",
            },
            ExampleCall {
                method: "POST",
                query: "",
                headers: &[("Authorization", "Bearer <token>")],
                body: "name = \"NAS on digits\"\n[nas]\npopulation = 8\ngenerations = 3\n",
                output: "{\"id\":\"<64 hex digits>\"}",
            },
        ],
    },
    Endpoint {
        uri: "/campaigns/{id}",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: the campaign's status (generation, members, settled jobs, closures); 400 bad id, 404 unknown",
        documentation: "One campaign.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "{\"id\":\"…\",\"generation\":2,\"settled\":16,\"closures\":[[0,\"…\"],[1,\"…\"]],…}",
        }],
    },
    Endpoint {
        uri: "/campaigns/{id}/results",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: every settled job (job id, generation, agreed outcome, agreeing and dissenting executors)",
        documentation: "The agreed ledger's results; what `hivemesh campaign export` writes.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "[{\"job\":\"…\",\"generation\":0,\"outcome\":{\"Success\":{\"correct\":301,…}},…}]",
        }],
    },
    Endpoint {
        uri: "/campaigns/{id}/scores",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: each peer's standing (agreed, dissented, missed, points, reputation)",
        documentation: "Scores derived from the agreed ledger (the same on every honest node).",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "[{\"peer\":\"…\",\"agreed\":5,\"dissented\":0,\"points\":50,…}]",
        }],
    },
    Endpoint {
        uri: "/campaigns/{id}/best",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "application/json: {\"campaign\":id,\"front\":[…]}: each front entry (best accuracy first) with k, job, generation, accuracy, correct, total, params, flops, its weights blob id, the URLs of its export files and `ir`, the architecture as versioned JSON (`null` with an `error` when its weights cannot be had); 400 bad id, 404 unknown",
        documentation: "The campaign's Pareto front as models: the weights come from this node's store or its peers. `hivemesh campaign export` writes the same as front/<k>-<job>/ folders.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "{\"campaign\":\"…\",\"front\":[{\"k\":0,\"accuracy\":0.93,\"correct\":251,\"weights\":\"…\",\"ir\":{\"format\":\"hivemesh-architecture\",\"version\":1,\"nodes\":[…]},…}]}",
        }],
    },
    Endpoint {
        uri: "/campaigns/{id}/best/{k}/{file}",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "arch.json (application/json: the IR), weights.safetensors (f32 tensors `nodes.<i>.<name>` in PyTorch layouts) or model.py (a self-contained PyTorch nn.Module with load(path)); 404 with the reason for an unknown file, an entry not on the front, or weights neither this node nor its peers hold",
        documentation: "One export file of front entry k (its place in `/campaigns/{id}/best`).",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "class Model(nn.Module): …",
        }],
    },
    Endpoint {
        uri: "/blobs",
        input_methods: &["POST"],
        input_query: "",
        input_headers: "Authorization: Bearer <DATA_DIR/api.token>",
        input_body: "the blob's bytes (application/octet-stream), streamed to disk (never held whole), at most 64 GiB and the node's blob quota (a Content-Length over the room left is refused before anything is written)",
        output: "201 {\"id\":\"<blob id>\",\"bytes\":<size>}; 413 over the limit or the quota",
        documentation: "Store a blob (a loss search's reference model, a distillation teacher) and announce this node as its provider; campaign files name it by id. `hivemesh blob put FILE` does this.",
        example_calls: &[ExampleCall {
            method: "POST",
            query: "",
            headers: &[("Authorization", "Bearer <token>")],
            body: "<bytes>",
            output: "{\"id\":\"<64 hex digits>\",\"bytes\":1234}",
        }],
    },
    Endpoint {
        uri: "/datasets",
        input_methods: &["POST"],
        input_query: "format (mnist, csv, npy, npz, image-folder, cifar10, text, blob; guessed from name), name (the file's name), label (CSV label column: header name or 0-based index), header (true/false), shape (CxHxW or a length)",
        input_headers: "Authorization: Bearer <DATA_DIR/api.token>",
        input_body: "a dataset file (CSV, .npz, a CIFAR-10 batch, UTF-8 text) or a canonical dataset blob, at most 256 MiB; folder formats are converted by `hivemesh dataset add`, which posts the blob",
        output: "201 {\"id\":\"<dataset id>\",\"bytes\":<blob size>,\"samples\":n,\"shape\":\"1x8x8\",\"classes\":10,\"summary\":\"…\"}; 400 naming the file, row and column of bad input",
        documentation: "Convert a dataset into its canonical blob (ADR 0008), store it and announce this node as its provider; campaign files name it `dataset = \"blob:ID\"`. Executors fetch it from peers before their first job.",
        example_calls: &[ExampleCall {
            method: "POST",
            query: "name=iris.csv&label=species",
            headers: &[("Authorization", "Bearer <token>")],
            body: "sepal,petal,species\n5.1,1.4,setosa\n…",
            output: "{\"id\":\"<64 hex digits>\",\"samples\":150,\"shape\":\"2\",\"classes\":3,\"class_names\":[\"setosa\",…]}",
        }],
    },
    Endpoint {
        uri: "/blobs/{id}",
        input_methods: &["GET"],
        input_query: "fetch=true: ask the peers that provide it when this node does not hold it",
        input_headers: "",
        input_body: "",
        output: "application/octet-stream: the blob (weights, shards), checked against its id; 404 if not held here (or, with fetch=true, if no peer gave it)",
        documentation: "Content-addressed artifacts held by this node or, with fetch=true, by its peers.",
        example_calls: &[
            ExampleCall {
                method: "GET",
                query: "",
                headers: &[],
                body: "",
                output: "<bytes>",
            },
            ExampleCall {
                method: "GET",
                query: "fetch=true",
                headers: &[],
                body: "",
                output: "<bytes>",
            },
        ],
    },
    Endpoint {
        uri: "/metrics",
        input_methods: &["GET"],
        input_query: "",
        input_headers: "",
        input_body: "",
        output: "text/plain: Prometheus exposition format",
        documentation: "Peers, campaigns, jobs running; messages accepted by kind and rejected by reason; jobs run (success, failure, abandoned) and settled (success, failure, void); training seconds; audit outcomes (reported, confirmed, upheld, overturned); blob fetches.",
        example_calls: &[ExampleCall {
            method: "GET",
            query: "",
            headers: &[],
            body: "",
            output: "hivemesh_peers 3\n…",
        }],
    },
    Endpoint {
        uri: "/peers/{peer_id}/block",
        input_methods: &["POST", "DELETE"],
        input_query: "",
        input_headers: "Authorization: Bearer <DATA_DIR/api.token>",
        input_body: "",
        output: "application/json: {\"peer\":\"<peer id>\",\"blocked\":true|false}; 400 bad peer id",
        documentation: "Block a libp2p peer (POST: its connections are closed and refused until unblocked; not kept across restarts) or unblock it (DELETE). netsim's --processes partitions use this.",
        example_calls: &[
            ExampleCall {
                method: "POST",
                query: "",
                headers: &[("Authorization", "Bearer <token>")],
                body: "",
                output: "{\"peer\":\"12D3KooW…\",\"blocked\":true}",
            },
            ExampleCall {
                method: "DELETE",
                query: "",
                headers: &[("Authorization", "Bearer <token>")],
                body: "",
                output: "{\"peer\":\"12D3KooW…\",\"blocked\":false}",
            },
        ],
    },
    Endpoint {
        uri: "/peers/dial",
        input_methods: &["POST"],
        input_query: "",
        input_headers: "Authorization: Bearer <DATA_DIR/api.token>",
        input_body: "a libp2p multiaddr (text, with /p2p/<peer id>), at most 1 KiB",
        output: "application/json: {\"dialing\":\"<multiaddr>\"}; 400 bad address or the dial was refused",
        documentation: "Connect to a peer (e.g. after a partition healed, or to join through another bootstrap peer).",
        example_calls: &[ExampleCall {
            method: "POST",
            query: "",
            headers: &[("Authorization", "Bearer <token>")],
            body: "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…",
            output: "{\"dialing\":\"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…\"}",
        }],
    },
];

/// The API's shared state.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node.
    client: Client,
    /// The bearer token of mutating calls.
    token: Arc<String>,
    /// Paces every request (see [`Pacer`]).
    pacer: Arc<Pacer>,
}

impl ApiState {
    /// State for a node reached through `client`, with the POST token `token`.
    pub fn new(client: Client, token: String) -> ApiState {
        ApiState {
            client,
            token: Arc::new(token),
            pacer: Arc::new(Pacer::new(API_RATE, API_BURST)),
        }
    }
}

/// Requests the API serves per second, over all clients, once a burst is spent.
pub const API_RATE: u32 = 100;
/// Requests served at once before pacing starts.
pub const API_BURST: u32 = 100;

/// Paces requests to a rate (a virtual-scheduling token bucket, GCRA): a request over the
/// rate waits, without using the CPU, until its turn. Clients that loop on the API are slowed
/// to the rate together instead of taking the node's CPU from protocol work; the wait is
/// bounded by the connection cap (at most [`MAX_API_CONNECTIONS`] requests wait).
#[derive(Debug)]
pub struct Pacer {
    /// Time between requests at the sustained rate.
    interval: std::time::Duration,
    /// How far ahead of now requests may be admitted (the burst).
    burst: std::time::Duration,
    /// The theoretical arrival time of the next request.
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    /// `rate` requests per second, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Pacer {
        let interval = std::time::Duration::from_secs(1) / rate.max(1);
        Pacer {
            interval,
            burst: interval * burst.max(1),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// How long a request arriving `now` waits for its turn (and takes that turn).
    pub fn reserve(&self, now: tokio::time::Instant) -> std::time::Duration {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let turn = (*next).max(now);
        *next = turn + self.interval;
        (turn + self.interval).saturating_duration_since(now + self.burst)
    }
}

/// Middleware: every error leaves as JSON `{"error": "…"}`, as the API documents, also the
/// ones axum and its extractors make themselves (405 without a body, 413 and 400 in plain
/// text). Headers such as `Allow` are kept.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = if status == StatusCode::METHOD_NOT_ALLOWED {
        "method not allowed on this endpoint: see /manifest.json for the methods it takes".into()
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError(status, reason).into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Middleware: every request waits for its turn at the [`Pacer`].
async fn paced(
    State(s): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let wait = s.pacer.reserve(tokio::time::Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    next.run(request).await
}

/// An API error: a status and a message, sent as JSON.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn stopped<E>(_: E) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the node is stopping".into(),
    )
}

/// A failed client call as an API error: 503 when the node stopped, else `code` with the
/// error's message passed through `message`.
fn client_error(
    code: StatusCode,
    message: impl FnOnce(String) -> String,
) -> impl FnOnce(ClientError) -> ApiError {
    move |e| match e {
        ClientError::Stopped => stopped(e),
        other => ApiError(code, message(other.to_string())),
    }
}

fn campaign_id(s: &str) -> Result<CampaignId, ApiError> {
    s.parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("campaign id {s:?}: {e}")))
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

/// The manifest document.
pub fn manifest() -> Value {
    json!({
        "name": "hivemesh node",
        "short_name": "hivemesh",
        "version": env!("CARGO_PKG_VERSION"),
        "license": env!("CARGO_PKG_LICENSE"),
        "author": "the hivemesh developers",
        "description": "A peer-to-peer swarm that searches for better neural networks and computes ML work everyone can trust.",
        "endpoints": ENDPOINTS,
    })
}

async fn get_manifest() -> axum::Json<Value> {
    axum::Json(manifest())
}

async fn get_status(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let st = s.client.status_snapshot().await.map_err(stopped)?;
    Ok(axum::Json(&*st).into_response())
}

async fn list_campaigns(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let st = s.client.status_snapshot().await.map_err(stopped)?;
    Ok(axum::Json(&st.campaigns).into_response())
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time comparison: the token guards who may publish campaigns in our name.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Proof that a request carries the API token. As an extractor it runs on the request's head,
/// before any body extractor: a caller without the token is refused before a byte of its
/// body is read or buffered.
struct Authorized;

impl axum::extract::FromRequestParts<ApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &ApiState,
    ) -> Result<Authorized, ApiError> {
        let what = format!("{} {}", parts.method, parts.uri.path());
        require_token(&parts.headers, &s.token, &what)?;
        Ok(Authorized)
    }
}

/// The bearer-token check of a mutating call (`what`: the call, for the error message).
fn require_token(headers: &HeaderMap, token: &str, what: &str) -> Result<(), ApiError> {
    if bearer_ok(headers, token) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!(
                "{what} needs `Authorization: Bearer <token>` (the token is in DATA_DIR/api.token)"
            ),
        ))
    }
}

async fn post_campaign(
    State(s): State<ApiState>,
    _auth: Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_CAMPAIGN_BODY {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("campaign file over {MAX_CAMPAIGN_BODY} bytes"),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "campaign file is not UTF-8".into()))?
        .to_string();
    let key = s.client.key();
    let connected = s.client.connected_keys().await.map_err(stopped)?;
    let mut sub =
        Submission::parse(&text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    // Kept for checking the dataset and the generation-0 estimate (a loss search's reference
    // model).
    let mut built = crate::executor::HeldBlobs::default();
    if let Ok(crate::campaign_file::DatasetSource::Blob(id)) =
        crate::campaign_file::DatasetSource::parse(&sub.file.dataset)
    {
        // An uploaded dataset: in the store, or else fetched from the peers that provide it.
        let (path, len) = s
            .client
            .fetch_blob_file(id)
            .await
            .map_err(client_error(StatusCode::BAD_REQUEST, |m| {
                format!("dataset blob:{id}: {m}")
            }))?;
        let mut head = Vec::new();
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, 64), &mut head);
        }
        sub.know_dataset(&head);
        built.files.insert(id, (path, len));
    }
    if let Some(id) = teacher_of(&sub.file) {
        // A prompt campaign's teacher gives the target and the words their tokens; a
        // distillation's tells whether it labels samples or text.
        let (path, len) = s
            .client
            .fetch_blob_file(id)
            .await
            .map_err(client_error(StatusCode::BAD_REQUEST, |m| {
                format!("teacher {id}: {m}")
            }))?;
        built.files.insert(id, (path, len));
    }
    // A zoo reference model is built here and stored (and announced) before the campaign is.
    let zoo = Resolve {
        zoo: true,
        files: None,
    };
    sub.upload_blobs(zoo, |_, bytes| {
        built.bytes.insert(
            hivemesh_protocol::id::BlobId::of_bytes(&bytes),
            bytes.clone(),
        );
        s.client.put_blob(bytes)
    })
    .await
    .map_err(|e| match e {
        UploadError::Prepare(e) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        UploadError::Put(e) => client_error(StatusCode::INTERNAL_SERVER_ERROR, |m| m)(e),
    })?;
    // Checking the dataset decodes it: off the async runtime.
    let file = sub.file;
    let spec = tokio::task::spawn_blocking(move || {
        build_spec(&file, key, &connected, crate::unix_now(), &built)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let projected = projected(&spec);
    let id = s
        .client
        .submit(spec)
        .await
        .map_err(client_error(StatusCode::BAD_REQUEST, |m| m))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id.to_string(), "projected": projected })),
    )
        .into_response())
}

/// The teacher a campaign file names by id (prompt search, distillation): the submitting node
/// reads it to build the spec.
fn teacher_of(file: &crate::campaign_file::CampaignFile) -> Option<hivemesh_protocol::id::BlobId> {
    let prompt = file.prompt.as_ref().and_then(|p| p.teacher_id());
    prompt.or_else(|| file.distill.as_ref().and_then(|d| d.teacher.parse().ok()))
}

/// What a budgeted campaign may spend at most (a prompt search's model calls and tokens),
/// stated before it runs; `null` for other kinds.
fn projected(spec: &hivemesh_protocol::spec::CampaignSpec) -> Value {
    match &spec.search {
        hivemesh_protocol::spec::Search::Prompt(p) => {
            let (calls, tokens) = p.projected();
            json!({ "model_calls": calls, "tokens": tokens })
        }
        _ => Value::Null,
    }
}

async fn get_campaign(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let c = s.client.campaign(id).await.map_err(stopped)?;
    let c = c.ok_or_else(|| not_found(format!("campaign {id} is not followed by this node")))?;
    Ok(axum::Json(c).into_response())
}

async fn get_results(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let r = s.client.settled(id).await.map_err(stopped)?;
    let r = r.ok_or_else(|| not_found(format!("campaign {id} is not followed by this node")))?;
    Ok(axum::Json(r).into_response())
}

async fn get_scores(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = campaign_id(&id)?;
    let r = s.client.scores(id).await.map_err(stopped)?;
    let r = r.ok_or_else(|| not_found(format!("campaign {id} is not followed by this node")))?;
    let rows: Vec<Value> = r
        .into_iter()
        .map(|(peer, score)| {
            let mut v = serde_json::to_value(score).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("peer".into(), Value::String(peer.to_string()));
            }
            v
        })
        .collect();
    Ok(axum::Json(rows).into_response())
}

/// `GET /blobs/{id}` query: `fetch=true` asks peers for a blob this node does not hold.
#[derive(Debug, serde::Deserialize)]
struct BlobQuery {
    #[serde(default)]
    fetch: bool,
}

async fn get_blob(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<BlobQuery>,
) -> Result<Response, ApiError> {
    let id: BlobId = id
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("blob id {id:?}: {e}")))?;
    let (path, len) = match s.client.blob_file(&id) {
        Some(held) => held,
        None if q.fetch => s
            .client
            .fetch_blob_file(id)
            .await
            .map_err(client_error(StatusCode::NOT_FOUND, |m| {
                format!("blob {id}: {m}")
            }))?,
        None => {
            return Err(not_found(format!(
                "blob {id} is not held by this node (add ?fetch=true to ask peers)"
            )));
        }
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("blob {id}: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(file_chunks(file)),
    )
        .into_response())
}

/// A file as a stream of 1 MiB chunks (a blob sent without holding it whole).
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// The Content-Length a client declared, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn post_blob(
    State(s): State<ApiState>,
    _auth: Authorized,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let (id, len) = s
        .client
        .put_blob_stream(
            body.into_data_stream(),
            content_length(&headers),
            crate::fetch::MAX_BLOB_LEN,
        )
        .await
        .map_err(upload_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id.to_string(), "bytes": len })),
    )
        .into_response())
}

/// An upload refused: 413 when it is too large or the store is full, else 400.
fn upload_error(e: ClientError) -> ApiError {
    let text = e.to_string();
    match e {
        ClientError::Stopped => stopped(e),
        _ if text.contains("full") || text.contains("most this node takes") => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, text)
        }
        _ => ApiError(StatusCode::BAD_REQUEST, text),
    }
}

fn peer_id(s: &str) -> Result<libp2p::PeerId, ApiError> {
    s.parse().map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{s:?} is not a libp2p peer id: {e}"),
        )
    })
}

async fn block_peer(
    State(s): State<ApiState>,
    _auth: Authorized,
    Path(peer): Path<String>,
) -> Result<Response, ApiError> {
    set_blocked(&s, &peer, true).await
}

async fn unblock_peer(
    State(s): State<ApiState>,
    _auth: Authorized,
    Path(peer): Path<String>,
) -> Result<Response, ApiError> {
    set_blocked(&s, &peer, false).await
}

async fn set_blocked(s: &ApiState, peer: &str, blocked: bool) -> Result<Response, ApiError> {
    let id = peer_id(peer)?;
    s.client.block(id, blocked).await.map_err(stopped)?;
    Ok(axum::Json(json!({ "peer": id.to_string(), "blocked": blocked })).into_response())
}

/// Longest multiaddr `POST /peers/dial` takes.
const MAX_DIAL_LEN: usize = 1024;

async fn dial_peer(
    State(s): State<ApiState>,
    _auth: Authorized,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let text = std::str::from_utf8(&body)
        .map_err(|_| bad("the body must be a multiaddr as UTF-8 text".into()))?
        .trim();
    let addr: libp2p::Multiaddr = text
        .parse()
        .map_err(|e| bad(format!("{text:?} is not a multiaddr: {e}")))?;
    s.client
        .dial(addr.clone())
        .await
        .map_err(client_error(StatusCode::BAD_REQUEST, |m| {
            format!("cannot dial {addr}: {m}")
        }))?;
    Ok(axum::Json(json!({ "dialing": addr.to_string() })).into_response())
}

async fn get_metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let text = s
        .client
        .metrics()
        .render()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn handler(uri: &str) -> Option<MethodRouter<ApiState>> {
    Some(match uri {
        "/manifest.json" => get(get_manifest),
        "/status" => get(get_status),
        "/campaigns" => get(list_campaigns).post(post_campaign),
        "/campaigns/{id}" => get(get_campaign),
        "/campaigns/{id}/results" => get(get_results),
        "/campaigns/{id}/scores" => get(get_scores),
        "/campaigns/{id}/best" => get(export::get_best),
        "/campaigns/{id}/best/{k}/{file}" => get(export::get_best_file),
        "/blobs" => axum::routing::post(post_blob),
        "/blobs/{id}" => get(get_blob),
        "/datasets" => axum::routing::post(datasets::post_dataset),
        "/metrics" => get(get_metrics),
        "/peers/{peer_id}/block" => axum::routing::post(block_peer).delete(unblock_peer),
        "/peers/dial" => axum::routing::post(dial_peer).layer(DefaultBodyLimit::max(MAX_DIAL_LEN)),
        _ => return None,
    })
}

/// The API's router: one route per [`ENDPOINTS`] entry.
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new();
    for e in ENDPOINTS {
        match handler(e.uri) {
            Some(h) => r = r.route(e.uri, h),
            None => tracing::error!(uri = e.uri, "manifest endpoint without a handler"),
        }
    }
    r.fallback(|| async {
        ApiError(
            StatusCode::NOT_FOUND,
            "no such endpoint: see /manifest.json".into(),
        )
    })
    .layer(axum::middleware::from_fn(json_errors))
    .layer(axum::middleware::from_fn_with_state(state.clone(), paced))
    .with_state(state)
}

/// Connections the API serves at once; more wait in the listen backlog until one closes.
pub const MAX_API_CONNECTIONS: usize = 128;
/// How long a connection may take to send a request head, and may stay idle between requests
/// (slow-header and idle connections are closed after it).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` resolves: HTTP/1.1, at most
/// [`MAX_API_CONNECTIONS`] connections at once, each closed when its request head takes
/// longer than [`HEADER_TIMEOUT`] or it idles that long between requests. Bodies are limited
/// per route before they are buffered, and the token of a mutating call is checked from the
/// head before any body is read.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_API_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: keep serving, but wait a little before
                    // accepting again (the error would repeat at once, spinning the loop).
                    tracing::warn!("api: cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(app.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!("api connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("api: requests still in flight at shutdown were cut");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_endpoint_has_a_handler() {
        for e in ENDPOINTS {
            assert!(handler(e.uri).is_some(), "{} has no handler", e.uri);
            assert!(!e.example_calls.is_empty(), "{} has no example", e.uri);
            for c in e.example_calls {
                assert!(
                    e.input_methods.contains(&c.method),
                    "{}: {}",
                    e.uri,
                    c.method
                );
            }
        }
    }

    #[test]
    fn the_pacer_admits_a_burst_then_one_request_per_interval() {
        let p = Pacer::new(10, 3);
        let t0 = tokio::time::Instant::now();
        let waits: Vec<u128> = (0..6).map(|_| p.reserve(t0).as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200, 300]);
        // After a quiet second the burst is back.
        let later = t0 + std::time::Duration::from_secs(2);
        assert_eq!(p.reserve(later), std::time::Duration::ZERO);
    }

    #[test]
    fn bearer_tokens_are_compared_exactly() {
        let mut h = HeaderMap::new();
        assert!(!bearer_ok(&h, "abc"));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert!(bearer_ok(&h, "abc"));
        assert!(!bearer_ok(&h, "abd"));
        assert!(!bearer_ok(&h, "abcd"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert!(!bearer_ok(&h, "abc"));
    }
}
