//! The export cross-check: models trained by hivemesh, exported as JSON IR and safetensors,
//! run by an independent forward pass (`tests/python/check_export.py`: numpy and safetensors
//! only) that must count exactly as many correct test predictions as hivemesh did. Once with
//! the trainer's functions (an MLP and a CNN: every kind of node the search spaces emit), once
//! through a campaign's front over the HTTP API (`/campaigns/{id}/best`).
//!
//! The interpreter is `HIVEMESH_PYTHON` (default `python3`); without numpy and safetensors the
//! test fails and says how to make the venv (`.ci/test` makes it).

use std::path::{Path, PathBuf};
use std::process::Command;

use hivemesh_evolve::arch::{Architecture, MacroSpace, MlpSpace, Shape};
use hivemesh_node::api_client::request;
use hivemesh_tests::{TempDir, cluster, digits_nas_spec, serve_api, test_key, wait_finished};
use hivemesh_trainer::CpuAutodiff;
use hivemesh_trainer::data::{Dataset, digits};
use hivemesh_trainer::export::{ExportFiles, FILE_NAMES, npy_f32, npy_i64, pytorch_module};
use hivemesh_trainer::model::WeightsFile;
use hivemesh_trainer::train::{Budget, Limits, NasJob, OptimizerKind, Schedule, run_nas};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// The interpreter named by `HIVEMESH_PYTHON` (a relative path is taken from the workspace
/// root), checked to import numpy and safetensors; fails with how to make the venv.
fn python() -> PathBuf {
    let named = std::env::var_os("HIVEMESH_PYTHON").map(PathBuf::from);
    let py = match named {
        Some(p) if p.components().count() > 1 && p.is_relative() => root().join(p),
        Some(p) => p,
        None => PathBuf::from("python3"),
    };
    let probe = Command::new(&py)
        .args(["-c", "import numpy, safetensors.numpy"])
        .output();
    let why = match probe {
        Ok(o) if o.status.success() => return py,
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("no output")
            .to_string(),
        Err(e) => e.to_string(),
    };
    panic!(
        "the export cross-check needs Python 3 with numpy and safetensors, and `{}` has not \
         ({why}). Make the venv once from the workspace root:\n    python3 -m venv \
         target/pyenv && target/pyenv/bin/pip install numpy safetensors\nthen run the tests \
         with HIVEMESH_PYTHON=$PWD/target/pyenv/bin/python (`.ci/test` does both).",
        py.display()
    );
}

/// The digits test split as the trainer feeds it: `x_test.npy` (f32 `[n, 1, 8, 8]`) and
/// `y_test.npy` (i64 `[n]`) in `dir`.
fn write_test_split(data: &Dataset, dir: &Path) -> (PathBuf, PathBuf) {
    let test = data.default_splits().test;
    let Shape::Image { c, h, w } = data.shape else {
        panic!("the digits are images")
    };
    let (xp, yp) = (dir.join("x_test.npy"), dir.join("y_test.npy"));
    let dims = [test.len(), c as usize, h as usize, w as usize];
    std::fs::write(&xp, npy_f32(&dims, &data.inputs(&test))).expect("write x");
    std::fs::write(&yp, npy_i64(&[test.len()], &data.targets(&test))).expect("write y");
    (xp, yp)
}

/// Writes the export files into `dir` and runs the independent check against `correct`.
fn cross_check(
    py: &Path,
    files: &[(&str, Vec<u8>)],
    dir: &Path,
    split: &(PathBuf, PathBuf),
    correct: u64,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write export");
    }
    let out = Command::new(py)
        .arg(root().join("tests/python/check_export.py"))
        .arg(dir)
        .args([&split.0, &split.1])
        .arg(correct.to_string())
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", text.trim());
    assert!(
        out.status.success(),
        "independent forward pass disagrees: {text}"
    );
}

/// The NSGA-Net macro space's largest CNN on the digits: every connection and the residual,
/// so conv, batch norm, ReLU, add, max pooling, global average pooling and a dense head.
fn digits_cnn() -> Architecture {
    let space = MacroSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        phases: 2,
        nodes: 3,
        channels: vec![8],
        kernels: vec![3],
    };
    let genome: Vec<u32> = space.gene_limits().iter().map(|l| l - 1).collect();
    space.decode(&genome).expect("valid")
}

#[test]
fn exported_models_count_exactly_as_hivemesh_in_an_independent_forward_pass() {
    let py = python();
    let data = digits();
    let splits = data.default_splits();
    let tmp = TempDir::new("export-check");
    let split = write_test_split(&data, tmp.path());
    let mlp = MlpSpace {
        input: data.shape,
        classes: 10,
        max_layers: 2,
        widths: vec![16, 32],
    }
    .decode(&[2, 1])
    .expect("valid");
    let budget = Budget {
        epochs: 4,
        max_steps: None,
        batch_size: 32,
        optimizer: OptimizerKind::Adam,
        learning_rate: 3e-3,
        schedule: Schedule::Cosine,
    };
    for (name, arch) in [("mlp", mlp), ("cnn", digits_cnn())] {
        let job = NasJob {
            arch: &arch,
            data: &data,
            splits: &splits,
            budget: &budget,
            seed: 3,
        };
        let r = run_nas::<CpuAutodiff>(&job, &Limits::default(), &Default::default(), &mut |_| {})
            .expect("trains");
        assert!(r.accuracy() > 0.5, "{name}: accuracy {}", r.accuracy());
        let files = ExportFiles::of(&r.weights).expect("exports");
        let files: Vec<(&str, Vec<u8>)> = files.files().map(|(n, b)| (n, b.to_vec())).to_vec();
        println!("{name}: hivemesh {} of {}", r.correct, r.total);
        cross_check(&py, &files, &tmp.path().join(name), &split, r.correct);
    }
}

/// GET `path` on the API; the status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>, String) {
    let r = request(addr, "GET", path, &[], &[])
        .await
        .expect("api answers");
    (r.status, r.body.clone(), r.error_message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaigns_front_is_served_as_models_that_count_as_the_swarm_agreed() {
    let py = python();
    let (_dirs, mut nodes) = cluster("best", 3, |_, _| {}).await;
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    let id = nodes[0]
        .client
        .submit(digits_nas_spec(&roster, 4, 1, 77))
        .await
        .expect("accepted");
    wait_finished(&mut nodes[0], id).await;
    let addr = serve_api(nodes[0].client.clone()).await;

    let (status, body, msg) = get(addr, &format!("/campaigns/{id}/best")).await;
    assert_eq!(status, 200, "{msg}");
    let best: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let front = best["front"].as_array().expect("front");
    assert!(!front.is_empty(), "{best}");
    let first = &front[0];
    assert_eq!(first["ir"]["format"], "hivemesh-architecture", "{first}");
    assert_eq!(first["ir"]["params"], first["params"]);

    // Entry 0's files, as served, count exactly what the swarm agreed on.
    let mut files = Vec::new();
    for name in FILE_NAMES {
        let (status, body, msg) = get(addr, &format!("/campaigns/{id}/best/0/{name}")).await;
        assert_eq!(status, 200, "{name}: {msg}");
        files.push((name, body));
    }
    let blob = first["weights"].as_str().expect("weights id");
    let (_, weights, _) = get(addr, &format!("/blobs/{blob}")).await;
    let weights = WeightsFile::from_bytes(&weights).expect("a weights file");
    let module = pytorch_module(&weights.arch).expect("valid");
    assert_eq!(files[2].1, module.as_bytes());
    let tmp = TempDir::new("best-check");
    let split = write_test_split(&digits(), tmp.path());
    let correct = first["correct"].as_u64().expect("correct");
    cross_check(&py, &files, &tmp.path().join("0"), &split, correct);

    // Clear 404s for what is not there.
    let (status, _, msg) = get(addr, &format!("/campaigns/{id}/best/99/model.py")).await;
    assert_eq!(status, 404);
    assert!(msg.contains("front has"), "{msg}");
    let (status, _, msg) = get(addr, &format!("/campaigns/{id}/best/0/weights.bin")).await;
    assert_eq!(status, 404);
    assert!(
        msg.contains("arch.json, weights.safetensors, model.py"),
        "{msg}"
    );
    for n in nodes {
        n.stop().await;
    }
}

/// A `train` campaign (issue 25): every node ends with the same final model (each holds it or
/// fetches it by id, checked by its hash), and the front served over the API is that model,
/// whose exported files count exactly what the swarm agreed on its test split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_campaigns_final_model_is_the_same_everywhere_and_exports() {
    use hivemesh_protocol::spec::{Aggregate, OuterStep, Search, TrainParams, UpdateEncoding};
    use hivemesh_trainer::rounds::TrainState;
    let py = python();
    let (_dirs, mut nodes) = cluster("trainbest", 3, |_, _| {}).await;
    let model = hivemesh_tests::digits_reference_model();
    let blob = nodes[0].client.put_blob(model).await.expect("stored");
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    let mut spec = digits_nas_spec(&roster, 2, 1, 78);
    spec.name = "test: train digits, exported".into();
    spec.search = Search::Train(TrainParams {
        model: blob,
        rounds: 2,
        segments: 2,
        segment_size: 300,
        inner_steps: 30,
        outer: OuterStep::Nesterov {
            learning_rate: 0.7,
            momentum: 0.9,
        },
        aggregate: Aggregate::CenteredClip {
            radius: 1.0,
            iterations: 3,
        },
        encoding: UpdateEncoding::F16,
    });
    let id = nodes[0].client.submit(spec).await.expect("accepted");
    for n in nodes.iter_mut() {
        wait_finished(n, id).await;
    }
    let addr = serve_api(nodes[0].client.clone()).await;
    let (status, body, msg) = get(addr, &format!("/campaigns/{id}/best")).await;
    assert_eq!(status, 200, "{msg}");
    let best: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let front = best["front"].as_array().expect("front");
    assert_eq!(front.len(), 1, "the final model alone: {best}");
    let final_id: hivemesh_protocol::BlobId = front[0]["weights"]
        .as_str()
        .expect("model id")
        .parse()
        .expect("an id");
    let mut held = Vec::new();
    for n in &nodes {
        let bytes = n
            .client
            .fetch_blob(final_id)
            .await
            .expect("held or fetched");
        assert_eq!(hivemesh_protocol::BlobId::of_bytes(&bytes), final_id);
        held.push(bytes);
    }
    assert!(held.iter().all(|b| *b == held[0]), "one final model");
    let state = TrainState::from_bytes(&held[0]).expect("a training state");
    assert!(!state.momentum.is_empty(), "Nesterov keeps its momentum");

    let mut files = Vec::new();
    for name in FILE_NAMES {
        let (status, body, msg) = get(addr, &format!("/campaigns/{id}/best/0/{name}")).await;
        assert_eq!(status, 200, "{name}: {msg}");
        files.push((name, body));
    }
    let tmp = TempDir::new("train-best-check");
    let split = write_test_split(&digits(), tmp.path());
    let correct = front[0]["correct"].as_u64().expect("correct");
    assert!(
        correct * 2 > front[0]["total"].as_u64().expect("total"),
        "it learned: {best}"
    );
    cross_check(&py, &files, &tmp.path().join("0"), &split, correct);
    for n in nodes {
        n.stop().await;
    }
}
