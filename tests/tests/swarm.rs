//! Real nodes on loopback: libp2p (TCP + noise + yamux), gossipsub validation, ledger sync,
//! redb stores and real training on the embedded digits set.

use std::time::Duration;

use hivemesh_node::daemon::Event;
use hivemesh_tests::{TempDir, digits_nas_spec, start_node, test_config, test_key, wait_for};

/// Generous guard for a whole campaign in a debug build on 2 cores.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_nas_campaign_to_agreement() {
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("agree{i}"))).collect();
    let first = start_node(0, test_config(dirs[0].path())).await;
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let mut cfg = test_config(dir.path());
        cfg.bootstrap = nodes[0].addrs.clone();
        nodes.push(start_node(i as u64, cfg).await);
    }
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    let spec = digits_nas_spec(&roster, 4, 2, 11);
    let id = nodes[0]
        .client
        .submit(spec)
        .await
        .expect("node up")
        .expect("campaign accepted");

    let mut roots = Vec::new();
    for n in &mut nodes {
        let mut closed = Vec::new();
        wait_for(&mut n.events, CAMPAIGN_TIMEOUT, |e| match e {
            Event::Closed {
                campaign,
                generation,
                root,
            } if *campaign == id => {
                closed.push((*generation, *root));
                None
            }
            Event::Finished(c) if *c == id => Some(()),
            _ => None,
        })
        .await;
        roots.push(closed);
    }
    assert_eq!(roots[0].len(), 2, "two generations closed: {roots:?}");
    assert!(roots.iter().all(|r| *r == roots[0]), "same closures everywhere: {roots:?}");

    let mut settled = Vec::new();
    for n in &nodes {
        let s = n.client.settled(id).await.expect("up").expect("campaign known");
        settled.push(serde_json_like(&s));
    }
    assert_eq!(settled[0].len(), 8, "4 jobs x 2 generations settled");
    assert!(settled.iter().all(|s| *s == settled[0]), "same settlements everywhere");
    for n in &nodes {
        let st = n.client.status().await.expect("up");
        assert!(st.jobs_finished > 0, "every node trained: {st:?}");
        assert!(st.messages_validated > 0, "every node validated gossip: {st:?}");
        eprintln!("{} trained {} jobs, validated {} messages", st.peer_id, st.jobs_finished, st.messages_validated);
    }
    let jobs = nodes[0].client.settled(id).await.expect("up").expect("known");
    for j in &jobs {
        match &j.outcome {
            hivemesh_protocol::Outcome::Success(m) => {
                assert!(m.total > 0 && m.correct <= m.total && m.params > 0, "{m:?}");
                assert!(j.agreeing.len() >= 2, "quorum of 2: {j:?}");
            }
            other => panic!("job failed: {other:?}"),
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

fn serde_json_like(s: &[hivemesh_node::daemon::SettledJob]) -> Vec<String> {
    let mut v: Vec<String> = s.iter().map(|j| format!("{} {:?}", j.job, j.outcome)).collect();
    v.sort();
    v
}
