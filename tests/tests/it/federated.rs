//! `federated` campaigns on real nodes (issue 26, ADR 0010): three nodes, each offering a
//! private dataset only it holds, train one model with DP-SGD; every node ends on the same
//! closures and the same final model, the privacy spent is stated, and no node's store holds
//! any other node's private records (nor its own, beyond the file it read).

use std::path::{Path, PathBuf};

use hivemesh_protocol::BlobId;
use hivemesh_protocol::id::CampaignId;
use hivemesh_protocol::spec::CampaignSpec;
use hivemesh_protocol::spec::{
    Aggregate, ExamplePrivacy, FederatedParams, OuterStep, Search, SecureAggregation,
};
use hivemesh_protocol::standings::JobStatus;
use hivemesh_tests::{
    TempDir, cluster, digits_nas_spec, digits_reference_model, test_key, wait_finished,
};
use hivemesh_trainer::data::{ReadOptions, Values, digits};

/// Writes client `k` of `n`'s private part of the digits set (every `n`-th sample from `k`,
/// the test split left out) as CSV; returns its path and the records' raw bytes.
fn write_private_part(dir: &Path, k: usize, n: usize) -> (PathBuf, Vec<Vec<u8>>) {
    let d = digits();
    let Values::U8 { data, .. } = &d.values else {
        panic!("the digits are bytes")
    };
    let splits = d.default_splits();
    let mut csv = String::new();
    let mut records = Vec::new();
    for i in splits.train.iter().filter(|i| **i as usize % n == k) {
        let i = *i as usize;
        let row = &data[i * 64..(i + 1) * 64];
        let cells: Vec<String> = row.iter().map(u8::to_string).collect();
        csv.push_str(&format!("{},{}\n", cells.join(","), d.labels[i]));
        records.push(row.to_vec());
    }
    let path = dir.join(format!("ward-{k}.csv"));
    std::fs::write(&path, csv).expect("written");
    (path, records)
}

/// The campaign: 3 rounds of 3 clients, 40 DP-SGD steps each (σ = 1, q = 0.1), FedAvg.
fn params(model: hivemesh_protocol::BlobId) -> FederatedParams {
    FederatedParams {
        model,
        private_data: "wards".into(),
        rounds: 3,
        clients_per_round: 3,
        min_clients: 2,
        local_steps: 40,
        example_privacy: Some(ExamplePrivacy {
            clip: 1.0,
            noise_multiplier: 1.0,
            sample_rate: 0.1,
        }),
        client_privacy: None,
        delta: 1e-5,
        // Within the nodes' default --private-max-epsilon (10): they take part.
        epsilon_budget: Some(10.0),
        norm_bound: 0.0,
        aggregate: Aggregate::Mean,
        outer: OuterStep::Average,
        secure: None,
        features: hivemesh_protocol::spec::Features::Values,
    }
}

/// No file under any of `dirs` holds one of the private `records` (the 64 pixel bytes of the
/// busier ones) or a line of the private CSV files; a control shows the search finds what is
/// there.
fn assert_no_private_bytes(dirs: &[TempDir], parts: &[(PathBuf, Vec<Vec<u8>>)]) {
    let control = TempDir::new("fedcontrol");
    let probe = &parts[0].1[7];
    std::fs::write(
        control.path().join("leak"),
        [b"x".as_slice(), probe].concat(),
    )
    .expect("w");
    assert!(any_file_holds(control.path(), probe));
    let csv_lines: Vec<String> = parts
        .iter()
        .map(|(p, _)| {
            let text = std::fs::read_to_string(p).expect("read");
            text.lines().nth(5).expect("a line").to_string()
        })
        .collect();
    for dir in dirs {
        for (_, records) in parts {
            let busy = records
                .iter()
                .filter(|r| r.iter().filter(|b| **b > 0).count() > 20);
            for r in busy.take(25) {
                assert!(
                    !any_file_holds(dir.path(), r),
                    "a private record in a store"
                );
            }
        }
        for line in &csv_lines {
            assert!(!any_file_holds(dir.path(), line.as_bytes()));
        }
    }
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            any_file_holds(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// What a federated campaign on three loopback nodes left: their store directories, the
/// nodes, each node's view of the campaign, and the private parts.
struct Ran {
    dirs: Vec<TempDir>,
    nodes: Vec<hivemesh_tests::TestNode>,
    views: Vec<hivemesh_node::daemon::CampaignStatus>,
    parts: Vec<(PathBuf, Vec<Vec<u8>>)>,
    /// Every settled job, as node 0 states them.
    settled: Vec<hivemesh_node::daemon::SettledJob>,
    _data: TempDir,
}

/// Three loopback nodes, each offering one third of the digits' training split as its
/// private `wards` data (CSV files under `data`).
struct Three {
    dirs: Vec<TempDir>,
    nodes: Vec<hivemesh_tests::TestNode>,
    parts: Vec<(PathBuf, Vec<Vec<u8>>)>,
    data: TempDir,
}

async fn start_three(name: &str) -> Three {
    start_nodes(name, 3).await
}

/// [`start_three`] with `n - 3` more nodes that offer no private data (members, not clients).
async fn start_nodes(name: &str, n: usize) -> Three {
    let data = TempDir::new("fedprivate");
    let parts: Vec<(PathBuf, Vec<Vec<u8>>)> = (0..3)
        .map(|k| write_private_part(data.path(), k, 3))
        .collect();
    let (dirs, nodes) = cluster(name, n, |i, cfg| {
        let opts = ReadOptions {
            shape: Some("1x8x8".into()),
            ..ReadOptions::default()
        };
        if let Some(part) = parts.get(i) {
            cfg.private_data
                .insert("wards".into(), (part.0.clone(), opts));
        }
    })
    .await;
    Three {
        dirs,
        nodes,
        parts,
        data,
    }
}

/// The campaign of `params` on the three nodes (its model stored on node 0 and set here).
async fn three_spec(t: &Three, name: &str, mut params: FederatedParams) -> CampaignSpec {
    params.model = t.nodes[0]
        .client
        .put_blob(digits_reference_model())
        .await
        .expect("stored");
    let roster: Vec<_> = (0..t.nodes.len() as u64)
        .map(|i| test_key(i).public())
        .collect();
    let mut spec = digits_nas_spec(&roster, 2, 1, 83);
    spec.name = format!("test: {name}");
    spec.redundancy = 2;
    spec.budget.learning_rate = 2e-2;
    spec.search = Search::Federated(params);
    spec
}

/// Waits until every node of `t` saw campaign `id` finish; checks they hold the same closures
/// (at least `generations` of them) and the same final model, better than chance.
async fn collect(mut t: Three, id: CampaignId, generations: u32) -> Ran {
    for n in &mut t.nodes {
        wait_finished(n, id).await;
    }
    let mut views = Vec::new();
    for n in &t.nodes {
        views.push(
            n.client
                .campaign(id)
                .await
                .expect("answers")
                .expect("known"),
        );
    }
    let settled = t.nodes[0].client.settled(id).await.expect("answers");
    for v in &views {
        assert!(v.finished, "{v:?}");
        assert_eq!(
            v.closures, views[0].closures,
            "the same closures everywhere"
        );
        assert!(
            v.closures.len() > generations as usize,
            "every round and the evaluation: {:?} {settled:#?}",
            v.closures
        );
    }
    // The final model: the evaluation's one artifact, the same everywhere, better than chance.
    assert!(!views[0].front.is_empty(), "no final model: {settled:#?}");
    let best = &views[0].front[0];
    assert!(views.iter().all(|v| v.front[0].artifact == best.artifact));
    assert!(best.artifact.is_some());
    assert!(
        best.accuracy > 0.5,
        "final accuracy {}: {settled:#?}",
        best.accuracy
    );
    Ran {
        dirs: t.dirs,
        nodes: t.nodes,
        views,
        parts: t.parts,
        settled: settled.unwrap_or_default(),
        _data: t.data,
    }
}

/// Runs a federated campaign of `params` (its model set here) on three nodes, each offering
/// one third of the digits' training split as its private `wards` data, to the end; checks
/// every node holds the same closures and the same final model.
async fn run_three(name: &str, params: FederatedParams) -> Ran {
    let t = start_three(name).await;
    let generations = params.rounds * params.steps_per_round();
    let spec = three_spec(&t, name, params).await;
    let id = t.nodes[0].client.submit(spec).await.expect("accepted");
    collect(t, id, generations).await
}

/// Three nodes, each with private records only it holds: a federated campaign with
/// example-level DP (σ = 1) runs to the end; all nodes hold the same closures and the same
/// final model; each client's ε is stated; and no store holds a private record or a CSV line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_train_one_model_on_data_only_each_holds() {
    let ran = run_three("federated", params(BlobId::of_bytes(b"set by run_three"))).await;
    let views = &ran.views;
    // Privacy: every client's example-level ε, stated alike by every node.
    let privacy = views[0]
        .privacy
        .clone()
        .expect("a federated campaign states its privacy");
    assert_eq!(privacy.clients.len(), 3, "{privacy:?}");
    assert!(
        privacy
            .clients
            .iter()
            .all(|c| c.rounds == 3 && c.epsilon > 0.0)
    );
    assert!(privacy.clients.iter().all(|c| c.epsilon.is_finite()));
    assert!(views.iter().all(|v| v.privacy.as_ref() == Some(&privacy)));
    // Each client's standing: every round taken part in, no strike (all honest), shown alike.
    let clients = &views[0].clients;
    assert_eq!(clients.len(), 3, "{clients:?}");
    assert!(
        clients
            .iter()
            .all(|c| c.rounds == 3 && c.strikes == 0 && c.benched_until.is_none()),
        "{clients:?}"
    );
    assert!(views.iter().all(|v| &v.clients == clients));
    // The data never left its node: no store holds a private record (the 64 pixel bytes) or a
    // CSV line, its own client's included (the file was read, not stored).
    for n in ran.nodes {
        n.stop().await;
    }
    assert_no_private_bytes(&ran.dirs, &ran.parts);
}

/// Two rounds with secure aggregation (one group of all clients). Each client bounds its own
/// update (no one can check a masked one): the fixed point's range. Client-level noise is left
/// out: three clients cannot carry it and learn.
fn secure_params() -> FederatedParams {
    let mut p = params(BlobId::of_bytes(b"set by three_spec"));
    p.rounds = 2;
    p.norm_bound = 5.0;
    p.secure = Some(SecureAggregation {
        buckets: 1,
        neighbours: 0,
    });
    p
}

/// The whole case: three nodes with data only each holds, DP at both levels and
/// secure aggregation (each round: keys, sealed shares, masked updates, reveals). The model
/// learns (so every node unmasked the same sums: the final model is one id everywhere, and
/// better than chance only if the rounds' sums were applied), both ε are stated, and no store
/// holds a private record or a CSV line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_with_secure_aggregation_reach_one_model_revealing_only_sums() {
    let ran = run_three("federated-secure", secure_params()).await;
    let views = &ran.views;
    let privacy = views[0].privacy.clone().expect("privacy stated");
    assert!(
        privacy
            .clients
            .iter()
            .all(|c| c.rounds == 2 && c.epsilon.is_finite() && c.epsilon > 0.0),
        "{privacy:?}"
    );
    assert_eq!(privacy.clients.len(), 3);
    assert!(views.iter().all(|v| v.privacy.as_ref() == Some(&privacy)));
    // Each round ran its four steps, each step by all three clients.
    for step in ["keys", "deal", "masked update", "reveal"] {
        let n = ran
            .settled
            .iter()
            .filter(|j| j.payload.1.ends_with(step) && j.status == JobStatus::Success)
            .count();
        assert_eq!(n, 6, "{step}: {:#?}", ran.settled);
    }
    for n in ran.nodes {
        n.stop().await;
    }
    assert_no_private_bytes(&ran.dirs, &ran.parts);
}

/// With secure aggregation each step's result (keys, sealed shares, a masked update, a
/// reveal) is held by its one client until someone fetches it, and later steps and the next
/// round need it: every node fetches it as soon as its reveal arrives, so a client gone after
/// its step does not take the round with it. Shown on a fourth node, a member that offers no
/// private data: it runs no client job, and its one possible job (the final evaluation) needs
/// only the last round's blobs, yet it holds every step result of both rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_fetches_each_secure_step_result_as_its_reveal_arrives() {
    let p = secure_params();
    let generations = p.rounds * p.steps_per_round();
    let name = "federated-observer";
    let t = start_nodes(name, 4).await;
    let mut spec = three_spec(&t, name, p).await;
    // The observer's pinned jobs, if it is sampled, go void at their deadline: keep it short.
    spec.schedule.job_deadline_ms = 4_000;
    spec.schedule.min_deadline_ms = 2_000;
    spec.schedule.max_deadline_ms = 8_000;
    let id = t.nodes[0].client.submit(spec).await.expect("accepted");
    let ran = collect(t, id, generations).await;
    let results: Vec<BlobId> = ran
        .settled
        .iter()
        .filter(|j| j.payload.1.contains(" client ") && j.status == JobStatus::Success)
        .filter_map(|j| j.artifacts.first())
        .map(|a| a.parse().expect("a blob id"))
        .collect();
    // Four steps in each of two rounds, each by at least two clients (a member offering no
    // data may be sampled until its heartbeat of capacity 0 removes it; its jobs go void).
    assert!(results.len() >= 2 * 4 * 2, "{:#?}", ran.settled);
    // A fetch starts when the reveal arrives (or, for a reveal that came before the observer
    // entered the generation or after it closed, when the generation closes) and may still be
    // under way when the campaign ends (the last round's results): each must land within a
    // bounded wait, polled because the client API has no blob-arrival event.
    let observer = &ran.nodes[3].client;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for r in &results {
        while observer.blob(*r).await.expect("answers").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the observer lacks {r}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    for n in ran.nodes {
        n.stop().await;
    }
}
