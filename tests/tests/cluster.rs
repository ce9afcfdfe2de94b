//! End to end through netsim's tier-2 cluster: real nodes (libp2p on loopback, redb stores,
//! real training on the embedded digits set) under faults, judged from the report.

use std::time::Duration;

use hivemesh_netsim::cluster::{self, ClusterConfig, ClusterReport, Kill, Overrides, Role};
use hivemesh_tests::TempDir;

/// A small cluster: 4 nodes, 4 MLPs x 2 generations, r = 3, short deadlines.
fn small(dir: &TempDir) -> ClusterConfig {
    let mut c = ClusterConfig::new(dir.path().join("nodes"));
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
    assert!(r.finished && r.agreement, "{r:#?}");
    assert_eq!(r.faults.len(), 1, "the kill happened: {:?}", r.faults);
    assert!(!r.node_views[0].up, "the creator stayed down");
    assert_eq!(r.jobs.len(), 8, "both generations settled without it");
    assert!(r.jobs.iter().all(|j| j.status == "success"), "{:?}", r.jobs);
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
    c.kills = vec![Kill {
        node: 2,
        at: Duration::ZERO,
        after_generation: Some(0),
        down: Some(Duration::from_secs(1)),
    }];
    let r = run(&c).await;
    assert!(r.finished && r.agreement, "{r:#?}");
    assert_eq!(r.faults.len(), 2, "killed and restarted: {:?}", r.faults);
    let v = &r.node_views[2];
    assert!(v.up && v.finished, "{v:?}");
    assert_eq!(
        v.closures, r.node_views[0].closures,
        "the restarted node rebuilt every closure, including the one before the kill"
    );
    let key = &r.node_views[2].key;
    let s = r
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
    assert_eq!(r.cheaters_detected, vec![3], "{:?}", r.standings);
    assert!(r.cheaters_paid.is_empty() && r.honest_penalised.is_empty());
    let liar = r
        .standings
        .iter()
        .find(|s| s.role == Role::Byzantine)
        .expect("the liar executed and is scored");
    assert_eq!(liar.score.agreed, 0);
    assert!(
        liar.score.points <= 0 && liar.score.dissented > 0,
        "{liar:?}"
    );
    for s in r.standings.iter().filter(|s| s.role != Role::Byzantine) {
        assert!(s.score.points > liar.score.points, "{s:?} vs {liar:?}");
    }
    // The liar never stands behind an agreed outcome.
    assert!(r.jobs.iter().all(|j| !j.agreeing.contains(&liar.key)));
}
