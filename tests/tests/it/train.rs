//! `train` campaigns on real nodes (issue 25): a node that joins mid-campaign trains from the
//! round it arrives in, with the round's base model, updates and its segment's residual (top-k
//! error feedback) fetched from its peers.

use hivemesh_node::daemon::Event;
use hivemesh_protocol::BlobId;
use hivemesh_protocol::spec::{Aggregate, OuterStep, Search, TrainParams, UpdateEncoding};
use hivemesh_protocol::standings::JobStatus;
use hivemesh_tests::{
    CAMPAIGN_TIMEOUT, TempDir, cluster, digits_nas_spec, digits_reference_model, start_node,
    test_config, test_key, wait_finished, wait_for,
};

/// Node 3 starts once round 0 closed: it follows the campaign, is admitted, runs jobs of later
/// rounds (building their start models from blobs it fetched, never from rounds it replayed),
/// and ends with the same closures and the same final model as the genesis nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_campaign_trains_from_the_round_it_joins() {
    let (_dirs, mut nodes) = cluster("trainjoin", 3, |_, _| {}).await;
    let model = nodes[0]
        .client
        .put_blob(digits_reference_model())
        .await
        .expect("stored");
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    let mut spec = digits_nas_spec(&roster, 2, 1, 79);
    spec.name = "test: train digits, a joiner".into();
    spec.redundancy = 2;
    spec.search = Search::Train(TrainParams {
        model,
        rounds: 5,
        segments: 4,
        segment_size: 300,
        // Long enough rounds for the joiner to be admitted while most are still ahead.
        inner_steps: 400,
        outer: OuterStep::Average,
        aggregate: Aggregate::Mean,
        // Top-k with error feedback: each segment's residual travels to its next executor.
        encoding: UpdateEncoding::TopK { per_mille: 100 },
    });
    let id = nodes[0].client.submit(spec).await.expect("accepted");
    wait_for(&mut nodes[0].events, CAMPAIGN_TIMEOUT, |e| match e {
        Event::Closed {
            campaign,
            generation: 0,
            ..
        } if *campaign == id => Some(()),
        _ => None,
    })
    .await;
    let dir = TempDir::new("trainjoin3");
    let mut cfg = test_config(dir.path());
    cfg.bootstrap = nodes[1].addrs.clone();
    let mut late = start_node(3, cfg).await;
    let (mut started, mut fetched) = (0, 0);
    let mut roots = Vec::new();
    wait_for(&mut late.events, CAMPAIGN_TIMEOUT, |e| match e {
        Event::JobStarted { campaign, .. } if *campaign == id => {
            started += 1;
            None
        }
        Event::BlobFetched { .. } => {
            fetched += 1;
            None
        }
        Event::Closed {
            campaign,
            generation,
            root,
        } if *campaign == id => {
            roots.push((*generation, *root));
            None
        }
        Event::Finished(c) if *c == id => Some(()),
        _ => None,
    })
    .await;
    wait_finished(&mut nodes[0], id).await;
    assert!(started > 0, "the joiner trained some segments ({roots:?})");
    assert!(fetched > 0, "it fetched what it needed from its peers");
    let settled = nodes[0]
        .client
        .settled(id)
        .await
        .expect("up")
        .expect("known");
    let theirs = late.client.settled(id).await.expect("up").expect("known");
    assert_eq!(
        settled.iter().map(|j| &j.job).collect::<Vec<_>>(),
        theirs.iter().map(|j| &j.job).collect::<Vec<_>>(),
        "one ledger"
    );
    let last = settled.last().expect("the final evaluation");
    assert_eq!(last.payload.1, "round 5 segment 0");
    let final_model: BlobId = last.artifacts[0].parse().expect("an id");
    let mine = late.client.fetch_blob(final_model).await.expect("fetched");
    assert_eq!(BlobId::of_bytes(&mine), final_model);
    assert!(!roots.is_empty());
    // Every agreed round names a residual, and later rounds' jobs carried them.
    assert!(
        settled
            .iter()
            .filter(|j| j.status == JobStatus::Success && j.payload.1 != "round 5 segment 0")
            .all(|j| j.artifacts.len() == 3),
        "update, start model, residual"
    );
    late.stop().await;
    for n in nodes {
        n.stop().await;
    }
}
