//! `kill -9` in the middle of training loses nothing: finished results are never retrained, the
//! interrupted job runs again, and the campaign completes (two `hivemesh run` processes).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use hivemesh_node::api_client;
use hivemesh_trainer::model::WeightsFile;

const BIN: &str = env!("CARGO_BIN_EXE_hivemesh");
/// Guard against hangs (a debug build on 2 cores).
const DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    child: Child,
    lines: Receiver<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, bootstrap: Option<&str>) -> Node {
    start_logging(dir, bootstrap, "hivemesh_node=info")
}

/// `hivemesh --data-dir DIR run` on loopback ports chosen by the system.
fn run_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(dir).args([
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http",
        "127.0.0.1:0",
    ]);
    cmd
}

/// [`start`] with its own `RUST_LOG` filter.
fn start_logging(dir: &Path, bootstrap: Option<&str>, log: &str) -> Node {
    let mut cmd = run_command(dir);
    cmd.args(["--sync-interval-ms", "500"])
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.spawn().expect("spawn hivemesh");
    let (tx, lines) = sync_channel(10_000);
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    Node { child, lines }
}

/// The next output line matching `pred`, with every line read on the way.
fn wait_line(node: &Node, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(line) = node.lines.recv_timeout(left) else {
            panic!(
                "no expected line within the deadline; output so far:\n{}",
                seen.join("\n")
            );
        };
        seen.push(line.clone());
        if pred(&line) {
            return line;
        }
    }
}

fn job_of(line: &str) -> Option<String> {
    let i = line.find("job=")?;
    Some(line[i + 4..].chars().take(64).collect())
}

fn api(dir: &Path) -> SocketAddr {
    std::fs::read_to_string(dir.join("api.addr"))
        .expect("api.addr")
        .trim()
        .parse()
        .expect("addr")
}

fn get(rt: &tokio::runtime::Runtime, dir: &Path, path: &str) -> serde_json::Value {
    let r = rt
        .block_on(api_client::request(api(dir), "GET", path, &[], &[]))
        .expect("api");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).expect("json")
}

/// Submits `campaign` (a campaign file) through the node's API; returns its id.
fn post_campaign(rt: &tokio::runtime::Runtime, dir: &Path, campaign: &str) -> String {
    let token = std::fs::read_to_string(dir.join("api.token")).expect("token");
    let auth = format!("Bearer {}", token.trim());
    let r = rt
        .block_on(api_client::request(
            api(dir),
            "POST",
            "/campaigns",
            &[("Authorization", &auth)],
            campaign.as_bytes(),
        ))
        .expect("post");
    assert_eq!(r.status, 201, "{}", r.text());
    serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hivemesh-kill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn kill_9_mid_job_loses_nothing_and_resumes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (da, db) = (tmp("a"), tmp("b"));
    let mut log_a = Vec::new();
    let mut log_b = Vec::new();
    let a = start(&da, None);
    // `hivemesh run` prints its API address before the swarm reports listen addresses.
    wait_line(&a, &mut log_a, |l| l.starts_with("api "));
    let line = wait_line(&a, &mut log_a, |l| l.starts_with("listening "));
    let addr_a = line.trim_start_matches("listening ").to_string();
    let b = start(&db, Some(&addr_a));
    wait_line(&b, &mut log_b, |l| l.starts_with("api "));
    // The roster is the submitting node and its peers: wait until A sees B.
    let end = Instant::now() + DEADLINE;
    while get(&rt, &da, "/status")["hivemesh_peers"].as_u64() != Some(1) {
        assert!(Instant::now() < end, "A never saw B");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Jobs long enough to be killed in the middle of one.
    let campaign = "name = \"kill test\"\nseed = 3\nredundancy = 2\nquorum = 2\n\
                    [nas]\npopulation = 4\ngenerations = 2\n\
                    [budget]\nepochs = 40\nmax_steps = 1500\n";
    let id = post_campaign(&rt, &da, campaign);

    // Let A finish one job, then kill it while it trains the next.
    let done = job_of(&wait_line(&a, &mut log_a, |l| l.contains("job finished"))).expect("job");
    let interrupted =
        job_of(&wait_line(&a, &mut log_a, |l| l.contains("job started"))).expect("job");
    assert_ne!(done, interrupted);
    let finished_before: Vec<String> = log_a
        .iter()
        .filter(|l| l.contains("job finished"))
        .filter_map(|l| job_of(l))
        .collect();
    drop(a); // SIGKILL: no shutdown path runs.

    let a = start(&da, Some(&addr_b(&mut log_b, &b)));
    let mut log_a2 = Vec::new();
    wait_line(&a, &mut log_a2, |l| l.starts_with("api "));
    let end = Instant::now() + DEADLINE;
    loop {
        let c = get(&rt, &da, &format!("/campaigns/{id}"));
        if c["finished"].as_bool() == Some(true) {
            break;
        }
        if Instant::now() >= end {
            let b_status = get(&rt, &db, &format!("/campaigns/{id}"));
            while let Ok(l) = b.lines.try_recv() {
                log_b.push(l);
            }
            while let Ok(l) = a.lines.try_recv() {
                log_a2.push(l);
            }
            panic!(
                "campaign did not finish: A {c}\nB {b_status}\nA's log before the kill:\n{}\n\
                 A's log after:\n{}\nB's log:\n{}",
                log_a.join("\n"),
                log_a2.join("\n"),
                log_b.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    while let Ok(l) = a.lines.try_recv() {
        log_a2.push(l);
    }
    let restarted: Vec<String> = log_a2
        .iter()
        .filter(|l| l.contains("job started"))
        .filter_map(|l| job_of(l))
        .collect();
    for j in &finished_before {
        assert!(
            !restarted.contains(j),
            "job {j} was finished before the kill and retrained"
        );
    }
    assert!(
        restarted.contains(&interrupted),
        "the interrupted job {interrupted} ran again"
    );
    let results = get(&rt, &da, &format!("/campaigns/{id}/results"));
    let results = results.as_array().expect("list");
    assert_eq!(results.len(), 8, "every job of both generations settled");
    for r in results {
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(r["agreeing"].as_array().map(Vec::len), Some(2), "{r}");
    }
    let c = get(&rt, &da, &format!("/campaigns/{id}"));
    assert_eq!(c["results_held"], 8, "A holds a result for every job: {c}");
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&da);
    let _ = std::fs::remove_dir_all(&db);
}

fn addr_b(log_b: &mut Vec<String>, b: &Node) -> String {
    if let Some(l) = log_b.iter().find(|l| l.starts_with("listening ")) {
        return l.trim_start_matches("listening ").to_string();
    }
    wait_line(b, log_b, |l| l.starts_with("listening "))
        .trim_start_matches("listening ")
        .to_string()
}

/// SIGTERM while a long job trains ends the process within seconds: the training thread
/// watches the shutdown flag (before, the runtime waited for the job to finish its budget).
#[test]
fn sigterm_mid_job_exits_within_seconds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tmp("term");
    let mut log = Vec::new();
    // Training steps are logged at debug level: SIGTERM goes once the job really trains.
    let mut node = start_logging(
        &dir,
        None,
        "hivemesh_node=info,hivemesh_node::daemon::jobs=debug",
    );
    wait_line(&node, &mut log, |l| l.starts_with("api "));
    // Hours of training for one job on this node alone.
    let campaign = "name = \"sigterm test\"\nredundancy = 1\nquorum = 1\n\
                    [nas]\npopulation = 2\ngenerations = 1\n\
                    [budget]\nepochs = 10000\nmax_steps = 0\n";
    post_campaign(&rt, &dir, campaign);
    wait_line(&node, &mut log, |l| {
        l.contains("training") && l.contains("step=3")
    });
    let pid = node.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let asked = Instant::now();
    let limit = Duration::from_secs(20);
    let status = loop {
        if let Some(s) = node.child.try_wait().expect("wait") {
            break s;
        }
        // Keep reading its output (a full pipe would block it); keep the last lines only.
        while let Ok(l) = node.lines.try_recv() {
            if log.len() > 200 {
                log.remove(0);
            }
            log.push(l);
        }
        assert!(
            asked.elapsed() < limit,
            "still running {limit:?} after SIGTERM; output:\n{}",
            log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hivemesh run` with bad `--devices` exits at once with an error that names the problem.
#[test]
fn run_refuses_devices_that_are_not_there_or_ambiguous() {
    let dir = tmp("devices");
    let refused = |extra: &[&str]| {
        let out = run_command(&dir)
            .args(extra)
            .output()
            .expect("run hivemesh");
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&["--devices", "cpu,cuda:4096"]);
    assert!(
        e.contains("cuda:4096") && (e.contains("not there") || e.contains("cuda")),
        "{e}"
    );
    let e = refused(&["--devices", "gpu"]);
    assert!(e.contains("cuda:N"), "{e}");
    let e = refused(&["--devices", "cpu", "--jobs", "2"]);
    assert!(e.contains("--jobs") && e.contains("--devices"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hivemesh blob put/get` and `hivemesh dataset add` stream files through a running node: the
/// blob comes back byte for byte under its id (replacing an older file whole), a blob nobody
/// has leaves no file behind, and a CSV becomes a dataset blob.
#[test]
fn the_cli_streams_blobs_and_datasets_through_the_api() {
    let dir = tmp("cli");
    let files = tmp("cli-files");
    std::fs::create_dir_all(&files).expect("files dir");
    let node = start(&dir, None);
    let mut seen = Vec::new();
    wait_line(&node, &mut seen, |l| l.contains("api http://"));
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .output()
            .expect("run the cli")
    };
    let data: Vec<u8> = (0..(1u32 << 20) + 12_345)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect();
    let put_path = files.join("x.bin");
    std::fs::write(&put_path, &data).expect("write");
    let put = cli(&["blob", "put", put_path.to_str().expect("utf-8")]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let id = String::from_utf8_lossy(&put.stdout).trim().to_string();
    assert_eq!(id, hivemesh_protocol::BlobId::of_bytes(&data).to_string());
    let out = files.join("y.bin");
    let get = cli(&["blob", "get", &id, "--out", out.to_str().expect("utf-8")]);
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(
        std::fs::read(&out).expect("written") == data,
        "byte for byte"
    );
    std::fs::write(&out, b"stale").expect("write");
    let again = cli(&["blob", "get", &id, "--out", out.to_str().expect("utf-8")]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        std::fs::read(&out).expect("written") == data,
        "replaced whole"
    );
    let unknown = hivemesh_protocol::BlobId::of_bytes(b"nobody has this").to_string();
    let none = files.join("none.bin");
    let miss = cli(&[
        "blob",
        "get",
        &unknown,
        "--out",
        none.to_str().expect("utf-8"),
    ]);
    assert!(!miss.status.success());
    let left: Vec<String> = std::fs::read_dir(&files)
        .expect("files")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("none"))
        .collect();
    assert!(left.is_empty(), "nothing left: {left:?}");
    let csv = files.join("pets.csv");
    std::fs::write(&csv, "a,b,kind\n0.5,1,cat\n2,3,dog\n1,1.5,dog\n").expect("write");
    let add = cli(&["dataset", "add", csv.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&add.stderr);
    assert!(add.status.success(), "{err}");
    assert!(err.contains("3 samples") && err.contains("0=cat"), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&add.stdout).trim().len(),
        64,
        "the dataset id"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&files);
}

/// `hivemesh campaign submit`, `watch` and `export` on a `train` campaign (issue 25): the zoo
/// model is built by the node, the campaign finishes on one node, and the export holds the
/// final model as a weights file and as the front's files.
#[test]
fn the_cli_submits_watches_and_exports_a_train_campaign() {
    let dir = tmp("cli-train");
    let files = tmp("cli-train-files");
    std::fs::create_dir_all(&files).expect("files dir");
    let node = start(&dir, None);
    let mut seen = Vec::new();
    wait_line(&node, &mut seen, |l| l.contains("api http://"));
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .output()
            .expect("run the cli");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {err}");
        (String::from_utf8_lossy(&out.stdout).to_string(), err)
    };
    let campaign = files.join("train.toml");
    std::fs::write(
        &campaign,
        "name = \"cli train\"\nredundancy = 1\nquorum = 1\n[train]\nmodel = \"zoo:mlp-16\"\n\
         rounds = 2\nsegments = 2\nsegment_size = 200\ninner_steps = 20\n",
    )
    .expect("write");
    let (out, err) = cli(&["campaign", "submit", campaign.to_str().expect("utf-8")]);
    let id = out.trim().to_string();
    assert_eq!(id.len(), 64, "the campaign id on stdout: {out} {err}");
    let (out, err) = cli(&["campaign", "watch", &id, "--every", "1"]);
    assert!(
        format!("{out}{err}").contains("finished"),
        "watch ends when the campaign does: {out} {err}"
    );
    let export = files.join("export");
    let (out, err) = cli(&[
        "campaign",
        "export",
        &id,
        "--out",
        export.to_str().expect("utf-8"),
    ]);
    let said = format!("{out}{err}");
    assert!(said.contains("best model"), "{said}");
    let best = std::fs::read(export.join("best-weights.bin")).expect("best-weights.bin");
    let weights = WeightsFile::from_bytes(&best).expect("a weights file");
    assert_eq!(
        weights.arch.params().expect("params"),
        64 * 16 + 16 + 16 * 10 + 10
    );
    let front: Vec<PathBuf> = std::fs::read_dir(export.join("front"))
        .expect("front/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(front.len(), 1, "the final model: {front:?}");
    for name in ["arch.json", "weights.safetensors", "model.py"] {
        assert!(front[0].join(name).is_file(), "{name}");
    }
    let csv = std::fs::read_to_string(export.join("results.csv")).expect("results.csv");
    assert_eq!(
        csv.lines().count(),
        1 + 2 * 2 + 1,
        "header, 4 segments, the final: {csv}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&files);
}
