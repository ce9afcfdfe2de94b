//! The cluster's `--processes` mode: every node is a `hivemesh run` child process on
//! 127.0.0.1, exactly what a contributor runs, driven through its HTTP API. Kills are real
//! `SIGKILL`s; a clean stop is `SIGTERM` (the node finishes writing and exits).
//!
//! The child's stdout is read until it names its API address, its peer id and its libp2p
//! address; everything it writes (stdout and stderr) goes to `DATA_DIR/node.log`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hivemesh_node::api_client;
use hivemesh_node::config::API_TOKEN_FILE;
use hivemesh_protocol::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What a child process is started with.
#[derive(Debug, Clone)]
pub struct Spawn<'a> {
    /// The `hivemesh` binary.
    pub bin: &'a Path,
    /// Its data directory (created; the identity is written into it).
    pub data_dir: &'a Path,
    /// Its identity.
    pub key: &'a Keypair,
    /// Peers to join through.
    pub bootstrap: &'a [Multiaddr],
    /// Jobs at once.
    pub jobs: u16,
    /// Audit mode.
    pub audit: bool,
    /// `HIVEMESH_FAULT` (`lie`, `corrupt-blobs`, `noise`).
    pub fault: Option<&'a str>,
    /// Gossipsub heartbeat.
    pub heartbeat: Option<Duration>,
}

/// A running `hivemesh run` process.
#[derive(Debug)]
pub struct Proc {
    /// The child process.
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Its HTTP API.
    pub api: SocketAddr,
    /// Its libp2p address (with `/p2p/<peer id>`).
    pub addr: Multiaddr,
    /// Its peer id.
    pub peer_id: PeerId,
    /// A handle on its API.
    client: Api,
}

/// A child's HTTP API: its address and bearer token. Cheap to clone; outlives nothing (a
/// request to a stopped child fails).
#[derive(Debug, Clone)]
pub struct Api {
    /// The API's address.
    pub addr: SocketAddr,
    /// The bearer token its mutating endpoints need.
    token: String,
}

/// Why a child could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Spawning or setting up failed.
    #[error("{0}")]
    Start(String),
    /// An API request failed.
    #[error("{0}")]
    Api(String),
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The `hivemesh run` command line for `s`, its stderr going to `stderr`.
fn command(s: &Spawn<'_>, stderr: std::fs::File) -> Command {
    let mut cmd = Command::new(s.bin);
    cmd.arg("--data-dir")
        .arg(s.data_dir)
        .arg("run")
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"])
        .args(["--jobs", &s.jobs.max(1).to_string()])
        .args(["--sync-interval-ms", "1000"])
        .env_remove("HIVEMESH_FAULT")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    if !s.bootstrap.is_empty() {
        let b: Vec<String> = s.bootstrap.iter().map(ToString::to_string).collect();
        cmd.args(["--bootstrap", &b.join(",")]);
    }
    if s.audit {
        cmd.arg("--audit");
    }
    if let Some(f) = s.fault {
        cmd.env("HIVEMESH_FAULT", f);
    }
    if let Some(h) = s.heartbeat {
        cmd.args(["--heartbeat-ms", &h.as_millis().max(1).to_string()]);
    }
    cmd
}

/// Where a starting child said it is, read from its stdout.
#[derive(Debug, Default)]
struct Announced {
    /// Its HTTP API.
    api: Option<SocketAddr>,
    /// Its loopback libp2p address.
    addr: Option<Multiaddr>,
    /// Its peer id.
    peer_id: Option<PeerId>,
}

impl Announced {
    /// Takes what `line` says.
    fn read(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("api http://") {
            self.api = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("hivemesh node ") {
            self.peer_id = rest.trim().parse::<PeerId>().ok();
        } else if let Some(rest) = line.strip_prefix("listening ")
            && rest.starts_with("/ip4/127.0.0.1/tcp/")
        {
            self.addr = rest.trim().parse::<Multiaddr>().ok();
        }
    }

    fn complete(&self) -> bool {
        self.api.is_some() && self.addr.is_some() && self.peer_id.is_some()
    }
}

/// Reads `lines` into `log` until the child announced everything (`true`), its stdout ended
/// (`false`) or [`START_TIMEOUT`] passed (`false`).
async fn read_announcements<R>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    log: &mut std::fs::File,
    seen: &mut Announced,
) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
{
    tokio::time::timeout(START_TIMEOUT, async {
        while !seen.complete() {
            let Ok(Some(line)) = lines.next_line().await else {
                return false;
            };
            let _ = writeln!(log, "{line}");
            seen.read(&line);
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// Starts a node process and waits until it serves its API and listens.
pub async fn spawn(s: Spawn<'_>) -> Result<Proc, ProcError> {
    let start = |m: String| ProcError::Start(m);
    std::fs::create_dir_all(s.data_dir)
        .map_err(|e| start(format!("{}: {e}", s.data_dir.display())))?;
    hivemesh_node::identity::save(s.data_dir, s.key, true)
        .map_err(|e| start(format!("writing the identity: {e}")))?;
    let log_path = s.data_dir.join("node.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| start(format!("{}: {e}", log_path.display())))?;
    let stderr = log
        .try_clone()
        .map_err(|e| start(format!("{}: {e}", log_path.display())))?;
    let mut child = command(&s, stderr)
        .spawn()
        .map_err(|e| start(format!("cannot run {}: {e}", s.bin.display())))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| start("no stdout pipe".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Announced::default();
    let up = read_announcements(&mut lines, &mut log, &mut seen).await;
    let Announced {
        api: Some(api),
        addr: Some(addr),
        peer_id: Some(peer_id),
    } = seen
    else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(start(format!(
            "{} did not come up{}; the end of {}:\n{}",
            s.bin.display(),
            if up { "" } else { " within 60 s" },
            log_path.display(),
            log_tail(&log_path)
        )));
    };
    // Keep draining stdout into the log.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log, "{line}");
        }
    });
    let token = std::fs::read_to_string(s.data_dir.join(API_TOKEN_FILE))
        .map_err(|e| start(format!("reading the API token: {e}")))?
        .trim()
        .to_string();
    Ok(Proc {
        child,
        pid,
        api,
        addr,
        peer_id,
        client: Api { addr: api, token },
    })
}

impl Api {
    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ProcError> {
        get_json_at(self.addr, path).await
    }

    /// `POST path` with `body`, the answer as JSON.
    pub async fn post(&self, path: &str, body: &[u8]) -> Result<serde_json::Value, ProcError> {
        let auth = format!("Bearer {}", self.token);
        call_json(self.addr, "POST", path, &[("Authorization", &auth)], body).await
    }

    /// Blocks (`true`) or unblocks a libp2p peer (`/peers/{peer_id}/block`).
    pub async fn block(&self, peer: &PeerId, blocked: bool) -> Result<(), ProcError> {
        let auth = format!("Bearer {}", self.token);
        let method = if blocked { "POST" } else { "DELETE" };
        call_json(
            self.addr,
            method,
            &format!("/peers/{peer}/block"),
            &[("Authorization", &auth)],
            &[],
        )
        .await
        .map(drop)
    }

    /// Dials a peer (`/peers/dial`).
    pub async fn dial(&self, addr: &Multiaddr) -> Result<(), ProcError> {
        self.post("/peers/dial", addr.to_string().as_bytes())
            .await
            .map(drop)
    }
}

impl Proc {
    /// A handle on the child's API, for requests from other tasks.
    pub fn api_client(&self) -> Api {
        self.client.clone()
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ProcError> {
        self.client.get_json(path).await
    }

    /// `POST path` with `body`, the answer as JSON.
    pub async fn post(&self, path: &str, body: &[u8]) -> Result<serde_json::Value, ProcError> {
        self.client.post(path, body).await
    }

    /// Blocks (`true`) or unblocks a libp2p peer (`/peers/{peer_id}/block`).
    pub async fn block(&self, peer: &PeerId, blocked: bool) -> Result<(), ProcError> {
        self.client.block(peer, blocked).await
    }

    /// Dials a peer (`/peers/dial`).
    pub async fn dial(&self, addr: &Multiaddr) -> Result<(), ProcError> {
        self.client.dial(addr).await
    }

    /// CPU seconds the process has used so far (user + system), from `/proc/PID/stat`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid))
    }

    /// `kill -9`.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// `SIGTERM`, then waits for the exit (`SIGKILL` after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        let asked = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if asked && tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
            return;
        }
        self.kill().await;
    }
}

/// `GET path` from the API at `api`, as JSON.
pub async fn get_json_at(api: SocketAddr, path: &str) -> Result<serde_json::Value, ProcError> {
    call_json(api, "GET", path, &[], &[]).await
}

/// One API request; a 2xx answer's body as JSON, anything else an error naming the request.
async fn call_json(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<serde_json::Value, ProcError> {
    let r = api_client::request(api, method, path, headers, body)
        .await
        .map_err(|e| ProcError::Api(e.to_string()))?;
    if !(200..300).contains(&r.status) {
        return Err(ProcError::Api(format!(
            "{method} {path}: HTTP {}: {}",
            r.status,
            r.error_message()
        )));
    }
    serde_json::from_slice(&r.body).map_err(|e| ProcError::Api(format!("{method} {path}: {e}")))
}

/// CPU seconds (user + system) of the process whose `stat` file is at `path`.
pub fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux platform we run on.
    Some(ticks / 100.0)
}

/// The `hivemesh` binary next to this executable (`target/release/hivemesh` beside
/// `target/release/hivemesh-netsim`; for test binaries in `target/*/deps`, one folder up).
pub fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let here = dir.join("hivemesh");
    if here.exists() {
        return here;
    }
    match dir.parent() {
        Some(up) if dir.ends_with("deps") => up.join("hivemesh"),
        _ => here,
    }
}
