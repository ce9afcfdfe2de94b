//! End to end through netsim's tier-2 cluster: real nodes (libp2p on loopback, redb stores,
//! real training on the embedded digits set) under faults, judged from the report; in this
//! process, and as `hivemesh run` child processes (`--processes`).

use std::time::Duration;

use hivemesh_netsim::cluster::{
    self, ClusterConfig, ClusterReport, Kill, Overrides, Partition, Role,
};
use hivemesh_protocol::standings::JobStatus;
use hivemesh_tests::TempDir;

/// A small cluster: 4 nodes, 4 MLPs x 2 generations, r = 3, short deadlines.
fn small(dir: &TempDir) -> ClusterConfig {
    let mut c = ClusterConfig::new(dir.path().join("nodes"));
    // The TempDir removes it, or keeps it (stores, node logs) when the test fails.
    c.keep_data = true;
    c.nodes = 4;
    c.byzantine = 0;
    c.overrides = Overrides {
        redundancy: Some(3),
        population: Some(4),
        generations: Some(2),
        job_deadline_s: Some(5),
        ..Overrides::default()
    };
    c.timeout = Duration::from_secs(120);
    c.progress = false;
    c.measure_overhead = false;
    c
}

/// kill -9 node 2 as soon as generation 0 closes; restart it a second later.
fn restart_node_2_after_generation_0() -> Kill {
    Kill {
        node: 2,
        at: Duration::ZERO,
        after_generation: Some(0),
        down: Some(Duration::from_secs(1)),
    }
}

async fn run(c: &ClusterConfig) -> ClusterReport {
    let r = cluster::run(c).await.expect("the cluster runs to the end");
    eprintln!(
        "{} jobs in {:.1} s, {} executions, faults {:?}",
        r.jobs.len(),
        r.wall_s,
        r.executions,
        r.faults
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_completes_after_its_creator_is_killed() {
    let dir = TempDir::new("cluster-creator");
    let mut c = small(&dir);
    // kill -9 the creator for good as soon as generation 0 closes.
    c.kills = vec![Kill {
        node: 0,
        at: Duration::ZERO,
        after_generation: Some(0),
        down: None,
    }];
    let r = run(&c).await;
    assert!(r.finished && r.grade.agreement, "{r:#?}");
    assert_eq!(r.faults.len(), 1, "the kill happened: {:?}", r.faults);
    assert!(!r.node_views[0].up, "the creator stayed down");
    assert_eq!(r.jobs.len(), 8, "both generations settled without it");
    assert!(
        r.jobs.iter().all(|j| j.status == JobStatus::Success),
        "{:?}",
        r.jobs
    );
    // Generation 1 was decided by the three survivors alone.
    assert_eq!(r.generations.len(), 2);
    for v in r.node_views.iter().skip(1) {
        assert!(v.finished, "node {} finished", v.index);
        assert_eq!(v.closures.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_campaign_restarts_and_loses_nothing() {
    let dir = TempDir::new("cluster-restart");
    let mut c = small(&dir);
    c.kills = vec![restart_node_2_after_generation_0()];
    let r = run(&c).await;
    assert!(r.finished && r.grade.agreement, "{r:#?}");
    assert_eq!(r.faults.len(), 2, "killed and restarted: {:?}", r.faults);
    let v = &r.node_views[2];
    assert!(v.up && v.finished, "{v:?}");
    assert_eq!(
        v.closures, r.node_views[0].closures,
        "the restarted node rebuilt every closure, including the one before the kill"
    );
    let key = &r.node_views[2].key;
    let s = r
        .grade
        .standings
        .iter()
        .find(|s| &s.key == key)
        .expect("the restarted node is in the standings");
    assert!(s.score.agreed > 0 && s.score.dissented == 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byzantine_node_is_caught_and_earns_nothing() {
    let dir = TempDir::new("cluster-byzantine");
    let mut c = small(&dir);
    c.byzantine = 1;
    let r = run(&c).await;
    assert!(r.ok(), "finished, agreed, no wrong result: {r:#?}");
    assert_eq!(
        r.grade.cheaters_detected,
        vec![3],
        "{:?}",
        r.grade.standings
    );
    assert!(r.grade.cheaters_paid.is_empty() && r.grade.honest_penalised.is_empty());
    let liar = r
        .grade
        .standings
        .iter()
        .find(|s| s.role == Role::Byzantine)
        .expect("the liar executed and is scored");
    assert_eq!(liar.score.agreed, 0);
    assert!(
        liar.score.points <= 0 && liar.score.dissented > 0,
        "{liar:?}"
    );
    for s in r
        .grade
        .standings
        .iter()
        .filter(|s| s.role != Role::Byzantine)
    {
        assert!(s.score.points > liar.score.points, "{s:?} vs {liar:?}");
    }
    // The liar never stands behind an agreed outcome.
    assert!(r.jobs.iter().all(|j| !j.agreeing.contains(&liar.key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distill_campaign_agrees_on_every_shard_and_hands_them_over() {
    use hivemesh_trainer::distill::ShardLabels;
    let dir = TempDir::new("cluster-distill");
    // An (untrained) 64-16-10 teacher: what matters here is that executors agree on its labels.
    let arch: hivemesh_evolve::arch::Architecture =
        postcard::from_bytes(&hivemesh_tests::digits_reference_model()).expect("architecture");
    let teacher = hivemesh_trainer::model::Model::<hivemesh_trainer::Cpu>::new(
        &arch,
        [5; 32],
        &Default::default(),
    )
    .expect("model")
    .weights_file(&arch)
    .to_bytes();
    std::fs::write(dir.path().join("teacher.hmw"), &teacher).expect("write teacher");
    let mut c = small(&dir);
    c.nodes = 3;
    c.overrides.redundancy = Some(2);
    c.campaign_dir = dir.path().to_path_buf();
    c.campaign = "name = \"test: distill digits\"\ndataset = \"builtin:digits\"\nquorum = 2\n\
                  [distill]\nteacher = \"file:teacher.hmw\"\ntop_k = 3\nshard_size = 600\n\
                  samples = 1797\n"
        .into();
    let r = run(&c).await;
    assert!(r.ok(), "finished, agreed, every shard verified: {r:#?}");
    assert_eq!(r.kind, "distill");
    let ranges: Vec<(u64, u64)> = r.shards.iter().map(|s| (s.start, s.end)).collect();
    assert_eq!(ranges, vec![(0, 600), (600, 1200), (1200, 1797)]);
    assert!(
        r.shards.iter().all(|s| s.verified && s.agreeing >= 2),
        "{:?}",
        r.shards
    );
    // The report folder hands the shards over, each parsing as the range it claims.
    let out = dir.path().join("report");
    hivemesh_netsim::report::write_all(&out, &r).expect("report");
    for s in &r.shards {
        let file = out.join("shards").join(s.file.as_deref().expect("file"));
        let bytes = std::fs::read(&file).expect("shard file");
        assert_eq!(
            hivemesh_protocol::BlobId::of_bytes(&bytes).to_string(),
            s.blob.clone().expect("blob id")
        );
        let labels = ShardLabels::from_bytes(&bytes).expect("a shard");
        assert_eq!(
            (labels.start, labels.len() as u64),
            (s.start, s.end - s.start)
        );
        assert_eq!(labels.k, 3);
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(
        md.contains("distillation shards agreed, held and verified | 3 of 3 (yes)"),
        "{md}"
    );
}

/// Issue 24's end-to-end check: a NAS campaign on a CSV file that only the submitting node
/// had. `campaign submit` converts it into a dataset blob and stores it at node 0; nodes 1 and
/// 2 fetch it from their peers before their first job, and train on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nas_campaign_trains_on_a_csv_dataset_only_the_submitter_had() {
    use hivemesh_trainer::data::{Values, digits};
    let dir = TempDir::new("cluster-csv");
    // The digits as a CSV a researcher might have: a header, features as decimals, the label
    // a named column of words in the middle.
    let d = digits();
    let Values::U8 { data, .. } = &d.values else {
        panic!("digits are bytes");
    };
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let mut csv = (0..32)
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(",");
    csv.push_str(",digit,");
    csv.push_str(
        &(32..64)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    csv.push('\n');
    for (k, label) in d.labels.iter().enumerate() {
        let px: Vec<String> = data[k * 64..(k + 1) * 64]
            .iter()
            .map(|&v| format!("{}", f32::from(v) / 16.0))
            .collect();
        csv.push_str(&px[..32].join(","));
        csv.push_str(&format!(",{},", names[usize::from(*label)]));
        csv.push_str(&px[32..].join(","));
        csv.push('\n');
    }
    std::fs::write(dir.path().join("digits.csv"), csv).expect("write the CSV");
    let mut c = small(&dir);
    c.nodes = 3;
    c.overrides.redundancy = Some(2);
    c.campaign_dir = dir.path().to_path_buf();
    c.campaign = "name = \"test: NAS on a CSV\"\ndataset = \"file:digits.csv\"\nquorum = 2\n\
                  [data]\nlabel = \"digit\"\n\
                  [nas]\nmax_layers = 1\nwidths = [8, 16]\n"
        .into();
    let r = run(&c).await;
    assert!(r.ok(), "finished and agreed: {r:#?}");
    assert_eq!(r.kind, "nas");
    assert!(
        r.jobs
            .iter()
            .all(|j| j.status == JobStatus::Success && j.total == 270),
        "every job agreed on the CSV's 270-sample test split: {:?}",
        r.jobs
    );
    for n in &r.node_views[1..] {
        assert!(
            n.jobs_trained > 0,
            "node {} fetched the dataset and trained on it: {:?}",
            n.index,
            r.node_views
        );
    }
}

/// [`small`] with every node a `hivemesh run` child process.
fn small_processes(dir: &TempDir) -> ClusterConfig {
    let bin = hivemesh_netsim::processes::default_bin();
    assert!(
        bin.is_file(),
        "this test runs the hivemesh binary, not found at {}: run it through \
         `cargo test --workspace` (which builds it) or `cargo build -p hivemesh-node` first",
        bin.display()
    );
    let mut c = small(dir);
    c.processes = Some(bin);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivemesh_run_processes_survive_sigkill_and_catch_a_liar() {
    let dir = TempDir::new("cluster-processes");
    let mut c = small_processes(&dir);
    c.byzantine = 1;
    c.measure_overhead = true;
    // A real SIGKILL.
    c.kills = vec![restart_node_2_after_generation_0()];
    let r = run(&c).await;
    assert!(r.ok(), "finished, agreed, no wrong result: {r:#?}");
    assert_eq!(r.faults.len(), 2, "killed and restarted: {:?}", r.faults);
    assert_eq!(
        r.grade.cheaters_detected,
        vec![3],
        "{:?}",
        r.grade.standings
    );
    assert!(r.grade.cheaters_paid.is_empty() && r.grade.honest_penalised.is_empty());
    assert_eq!(r.jobs.len(), 8);
    for v in &r.node_views {
        assert!(v.up, "node {} was read after the run", v.index);
        assert_eq!(v.closures, r.node_views[0].closures, "node {}", v.index);
    }
    assert!(r.node_views[2].finished, "the restarted process finished");
    let o = r
        .overhead
        .as_ref()
        .expect("overhead measured from the processes' CPU");
    assert!(o.swarm_cpu_s > 0.0 && o.single_cpu_s > 0.0, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivemesh_run_processes_heal_a_partition_to_one_ledger() {
    let dir = TempDir::new("cluster-partition");
    let mut c = small_processes(&dir);
    // 2 | 2 of 4 nodes: neither half has the 3 votes a closure needs, so nothing can close
    // until the cut heals (through each process's block list and a redial).
    let heal_at = 2.2;
    c.partition = Some(Partition {
        at: Duration::from_millis(200),
        heal: Duration::from_secs(2),
    });
    let r = run(&c).await;
    assert!(r.ok(), "finished, agreed, no wrong result: {r:#?}");
    assert_eq!(r.faults.len(), 2, "split and healed: {:?}", r.faults);
    assert!(r.faults[0].what.contains("partition"), "{:?}", r.faults);
    assert!(r.faults[1].what.contains("healed"), "{:?}", r.faults);
    let last = r.generations.last().expect("generations closed");
    assert!(
        last.last_closed_s > heal_at,
        "the last generation closed at {:.2} s, before the heal at {heal_at} s: {:?}",
        last.last_closed_s,
        r.faults
    );
    for v in &r.node_views {
        assert!(v.up && v.finished, "node {}: {v:?}", v.index);
        assert_eq!(v.closures, r.node_views[0].closures, "node {}", v.index);
    }
}

/// Issue 23's tier-2 scheduling test: one wide generation whose work per node is many times
/// the generation-0 deadline, on three one-slot nodes with no extra executors, while a busy
/// thread eats a core. Every job settles: deadlines count from each job's turn in its
/// executors' queues (ADR 0007), not from the generation's start. Before that change the jobs
/// went void at `deadline × (max_extra + 2)` = 20 s, long before the nodes reached them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_many_deadlines_long_settles_every_job_on_a_busy_host() {
    let dir = TempDir::new("cluster-long-queue");
    let mut c = ClusterConfig::new(dir.path().join("nodes"));
    c.keep_data = true;
    c.nodes = 3;
    c.byzantine = 0;
    c.campaign = LONG_QUEUE_CAMPAIGN.to_string();
    c.overrides = Overrides {
        redundancy: Some(2),
        quorum: Some(2),
        population: Some(48),
        generations: Some(1),
        job_deadline_s: Some(10),
        max_extra_executors: Some(0),
        ..Overrides::default()
    };
    c.jobs_per_node = 1;
    c.timeout = Duration::from_secs(600);
    c.progress = false;
    c.measure_overhead = false;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        })
    };
    let r = run(&c).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().expect("the busy thread ends");
    assert!(r.finished && r.grade.agreement, "{r:#?}");
    assert_eq!(
        r.jobs.len(),
        48,
        "one generation, no repair: {:?}",
        r.generations
    );
    let void: Vec<_> = r
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Void)
        .collect();
    assert!(void.is_empty(), "{} of 48 void: {void:?}", void.len());
    // Each node worked through about 32 jobs: many deadlines' worth.
    assert!(
        r.wall_s > 20.0,
        "{:.1} s: the queue must outlast the old void time (20 s) for the test to mean anything",
        r.wall_s
    );
}

/// Small MLPs on the embedded digits set, trained long enough that a one-slot node's share of
/// a 48-job generation takes well over the 10 s deadline.
const LONG_QUEUE_CAMPAIGN: &str = r#"
name = "long queue"
dataset = "builtin:digits"
seed = 7
tolerance_correct = 0
audit_rate = 0.0
roster = []

[nas]
space = "mlp"
max_layers = 2
widths = [64, 128, 256]
population = 48
generations = 1
strategy = "nsga2"

[budget]
epochs = 100
max_steps = 600
batch_size = 64
optimizer = "adam"
learning_rate = 0.005
schedule = "constant"
"#;

/// A `train` campaign (issue 25) on the embedded digits: an MLP trained over `rounds` rounds
/// of 3 segments, 20 Adam steps each, with a Nesterov outer step; then the final evaluation.
/// `update_tolerance` above 0 is tolerance mode (agreement on the updates' sketches).
fn train_campaign(rounds: u32, update_tolerance: f64) -> String {
    format!(
        "name = \"test: train digits\"\ndataset = \"builtin:digits\"\nquorum = 2\n\
         [train]\nmodel = \"zoo:mlp-16\"\nrounds = {rounds}\nsegments = 3\nsegment_size = 200\n\
         inner_steps = 20\nouter = \"nesterov\"\nupdate_tolerance = {update_tolerance}\n\
         [budget]\nbatch_size = 32\nlearning_rate = 0.005\n"
    )
}

/// Checks a finished `train` run: every round agreed on every segment, every segment of a round
/// started from the same model, the model improved, and the final model was computed alike by
/// at least two executors.
fn assert_trained(r: &ClusterReport, rounds: u32) {
    assert_eq!(r.kind, "train");
    let lines = &r.rounds;
    assert_eq!(lines.len(), rounds as usize + 1, "{lines:#?}");
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l.round, k as u32);
        assert_eq!(l.is_final, k == rounds as usize, "{l:?}");
        assert_eq!(l.agreed, l.jobs, "every job of round {k} agreed: {l:?}");
    }
    for round in 0..rounds {
        let prefix = format!("round {round} segment ");
        let starts: std::collections::BTreeSet<&String> = r
            .jobs
            .iter()
            .filter(|j| j.payload.1.starts_with(&prefix))
            .map(|j| &j.artifacts[1])
            .collect();
        assert_eq!(
            starts.len(),
            1,
            "round {round}: one start model, {starts:?}"
        );
    }
    let first = lines[0].accuracy.expect("round 0 measured");
    let last = lines[rounds as usize].accuracy.expect("final measured");
    assert!(last > first + 0.3, "the model learned: {first} -> {last}");
    let fin = r
        .jobs
        .iter()
        .find(|j| j.payload.1 == format!("round {rounds} segment 0"))
        .expect("the final evaluation settled");
    assert!(fin.agreeing.len() >= 2, "{fin:?}");
    assert_eq!(
        fin.artifacts.first(),
        lines[rounds as usize].model.as_ref(),
        "the final model is named"
    );
}

/// Issue 25's end-to-end check: three nodes train one model over three rounds with a liar
/// among them; the liar is outvoted on every job, and every node holds the same ledger, so the
/// same model ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_train_one_model_over_rounds_and_outvote_a_liar() {
    let dir = TempDir::new("cluster-train");
    let mut c = small(&dir);
    c.nodes = 3;
    c.byzantine = 1;
    c.campaign = train_campaign(3, 0.0);
    let r = run(&c).await;
    assert!(r.ok(), "finished, agreed, no wrong result: {r:#?}");
    assert_trained(&r, 3);
    assert_eq!(
        r.grade.cheaters_detected,
        vec![2],
        "{:?}",
        r.grade.standings
    );
    assert!(r.grade.honest_penalised.is_empty());
    let liar = &r.node_views[2].key;
    assert!(r.jobs.iter().all(|j| !j.agreeing.contains(liar)));
    for v in &r.node_views {
        assert_eq!(v.closures, r.node_views[0].closures, "node {}", v.index);
    }
}

/// A node killed after round 0 and restarted resumes without retraining what it finished and
/// ends with the same closures (so the same model ids) as the others. In tolerance mode: the
/// settled outcomes' updates are applied whoever of the agreeing executors sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_training_and_ends_on_the_same_model() {
    let dir = TempDir::new("cluster-train-restart");
    let mut c = small(&dir);
    c.campaign = train_campaign(3, 0.01);
    c.kills = vec![restart_node_2_after_generation_0()];
    let r = run(&c).await;
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.faults.len(), 2, "killed and restarted: {:?}", r.faults);
    assert_trained(&r, 3);
    let v = &r.node_views[2];
    assert!(v.up && v.finished, "{v:?}");
    for v in &r.node_views {
        assert_eq!(v.closures, r.node_views[0].closures, "node {}", v.index);
    }
}
