//! Real nodes on loopback: blobs fetched from peers (Kademlia provider records, chunked
//! transfer, hash check) for a loss campaign, corrupt blobs refused, and audit-mode nodes
//! catching a colluding pair of executors; exported models checked by an independent forward
//! pass ([`export`]).

use std::time::Duration;

mod export;

use hivemesh_node::daemon::{ClientError, Event, Fault, FetchError};
use hivemesh_protocol::BlobId;
use hivemesh_protocol::standings::{AuditLabel, JobStatus};
use hivemesh_tests::{
    CAMPAIGN_TIMEOUT, TestNode, cluster, digits_loss_spec, digits_nas_spec, digits_reference_model,
    test_key, wait_for,
};

/// Waits until `node` saw campaign `id` finish; returns the peer it fetched `blob` from, if
/// it fetched it.
async fn finish_noting_fetch(
    node: &mut TestNode,
    id: hivemesh_protocol::CampaignId,
    blob: BlobId,
) -> Option<libp2p::PeerId> {
    let mut from = None;
    wait_for(&mut node.events, CAMPAIGN_TIMEOUT, |e| match e {
        Event::BlobFetched { id: b, from: p, .. } if *b == blob => {
            from = Some(*p);
            None
        }
        Event::BlobFetchFailed { id: b, reason } if *b == blob => {
            panic!("fetch of the reference model failed: {reason}")
        }
        Event::Finished(c) if *c == id => Some(()),
        _ => None,
    })
    .await;
    from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_campaign_fetches_its_reference_model_from_the_creator() {
    let (_dirs, mut nodes) = cluster("lossblob", 3, |_, _| {}).await;
    let reference = digits_reference_model();
    let blob = nodes[0]
        .client
        .put_blob(reference.clone())
        .await
        .expect("stored");
    assert_eq!(blob, BlobId::of_bytes(&reference));
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    // Redundancy 3 of 3: every node runs every job, so nodes 1 and 2 need the blob.
    let id = nodes[0]
        .client
        .submit(digits_loss_spec(&roster, blob, 4, 1, 51))
        .await
        .expect("accepted");
    let creator = nodes[0].client.peer_id();
    for (i, n) in nodes.iter_mut().enumerate() {
        let from = finish_noting_fetch(n, id, blob).await;
        if i == 0 {
            assert_eq!(from, None, "the creator holds the blob");
        } else {
            assert_eq!(
                from,
                Some(creator),
                "node {i} fetched it from the only holder"
            );
            let held = n.client.blob(blob).await.expect("readable");
            assert_eq!(
                held.as_deref(),
                Some(reference.as_slice()),
                "stored, checked"
            );
            let metrics = n.client.metrics().render().expect("metrics");
            assert!(
                metrics.contains("hivemesh_blob_fetches_total{result=\"ok\"} 1"),
                "{metrics}"
            );
        }
    }
    let mut closures = Vec::new();
    let mut settled = Vec::new();
    for n in &nodes {
        let c = n.client.campaign(id).await.expect("up").expect("known");
        closures.push(c.closures);
        settled.push(n.client.settled(id).await.expect("up").expect("known"));
    }
    assert!(closures.iter().all(|c| *c == closures[0] && !c.is_empty()));
    assert_eq!(settled[0].len(), 4);
    assert!(settled.iter().all(|s| *s == settled[0]));
    for j in &settled[0] {
        assert_eq!(j.payload.0, "loss");
        assert_ne!(j.status, JobStatus::Void, "every job settled: {j:?}");
        assert!(j.agreeing.len() >= 2, "{j:?}");
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_is_refused_and_its_server_penalised() {
    let (_dirs, mut nodes) = cluster("badblob", 3, |i, cfg| {
        if i == 0 {
            cfg.fault = Some(Fault::CorruptBlobs);
        }
    })
    .await;
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect(); // 3 parts
    let id = nodes[0]
        .client
        .put_blob(bytes.clone())
        .await
        .expect("stored");
    let liar = nodes[0].client.peer_id();
    let e = nodes[2]
        .client
        .fetch_blob(id)
        .await
        .expect_err("only a corrupt copy is served");
    assert!(
        matches!(e, ClientError::Fetch(FetchError::NoPeer(_))),
        "{e:?}"
    );
    assert!(e.to_string().contains("does not verify"), "{e}");
    wait_for(&mut nodes[2].events, Duration::from_secs(10), |e| match e {
        Event::Rejected {
            from, penalised, ..
        } if *from == liar => {
            assert!(penalised);
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        nodes[2].client.blob(id).await.expect("readable"),
        None,
        "nothing stored"
    );

    // An honest holder appears: the next fetch gets the real bytes.
    nodes[1]
        .client
        .put_blob(bytes.clone())
        .await
        .expect("stored");
    let got = nodes[2]
        .client
        .fetch_blob(id)
        .await
        .expect("the honest copy");
    assert_eq!(got, bytes);
    assert_eq!(
        nodes[2].client.blob(id).await.expect("readable"),
        Some(bytes),
        "stored after the check"
    );
    let metrics = nodes[2].client.metrics().render().expect("metrics");
    assert!(
        metrics.contains("hivemesh_blob_fetches_total{result=\"failed\"} 1")
            && metrics.contains("hivemesh_blob_fetches_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_overturn_a_colluding_pair_and_expose_them() {
    // Nodes 3 and 4 lie alike, so where both execute a job they form its quorum of 2; the
    // honest nodes 0-2 run in audit mode and every settled job is audited.
    let liars = [3u64, 4];
    let (_dirs, mut nodes) = cluster("audit", 5, |i, cfg| {
        if liars.contains(&(i as u64)) {
            cfg.fault = Some(Fault::Lie);
        } else {
            cfg.audit = true;
        }
    })
    .await;
    let roster: Vec<_> = (0..5).map(|i| test_key(i).public()).collect();
    let mut spec = digits_nas_spec(&roster, 6, 1, 61);
    spec.audit_rate_ppm = 1_000_000;
    // Exactly r = 3 executors per job: an extra (idle) executor could make a 2-2 tie between
    // the colluders and the honest, which settles only by voiding at the deadline.
    spec.schedule.max_extra_executors = 0;
    let id = nodes[0].client.submit(spec).await.expect("accepted");
    for n in nodes.iter_mut().take(3) {
        hivemesh_tests::wait_finished(n, id).await;
    }
    let liar_keys: Vec<String> = liars
        .iter()
        .map(|i| test_key(*i).public().to_string())
        .collect();
    let mut views = Vec::new();
    for n in nodes.iter().take(3) {
        views.push(n.client.settled(id).await.expect("up").expect("known"));
    }
    assert!(views.iter().all(|v| *v == views[0]), "honest nodes agree");
    let jobs = &views[0];
    assert_eq!(jobs.len(), 6);
    let captured: Vec<_> = jobs.iter().filter(|j| !j.overturned.is_empty()).collect();
    // With 5 members and 3 executors per job, both liars run about 3 jobs in 10: seed 61
    // gives this campaign at least one captured job (the test is about what happens to it).
    assert!(!captured.is_empty(), "no job was captured: {jobs:#?}");
    for j in jobs {
        if j.audit.is_none() {
            // Every honest node executed it: no honest auditor was free, and the epilogue
            // closed without a verdict at its deadline (as for a void job).
            assert!(
                liar_keys
                    .iter()
                    .all(|k| !j.agreeing.contains(k) && !j.dissenting.contains(k)),
                "a job a liar executed was audited: {j:?}"
            );
        }
        let liars_agreed = liar_keys.iter().all(|k| j.overturned.contains(k));
        if !j.overturned.is_empty() {
            assert!(liars_agreed, "only the colluders are overturned: {j:?}");
            assert_eq!(j.audit, Some(AuditLabel::Overturned));
        }
        assert!(
            liar_keys.iter().all(|k| !j.agreeing.contains(k)),
            "after the audits no liar stands behind an outcome: {j:?}"
        );
        assert_eq!(j.status, JobStatus::Success, "{j:?}");
    }
    let scores = nodes[0]
        .client
        .scores(id)
        .await
        .expect("up")
        .expect("known");
    for (peer, s) in &scores {
        if liar_keys.contains(&peer.to_string()) {
            assert!(s.failed_audits > 0, "a colluder failed its audit: {s:?}");
        } else {
            assert_eq!(s.failed_audits, 0, "honest {peer}: {s:?}");
            // Dissenting against the colluders' overturned outcome is no offence.
            assert_eq!(s.dissented, 0, "honest {peer}: {s:?}");
            assert!(s.points > 0, "honest {peer}: {s:?}");
        }
    }
    let metrics = nodes[0].client.metrics().render().expect("metrics");
    assert!(
        metrics.contains("hivemesh_audits_total{outcome=\"overturned\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hivemesh_audits_total{outcome=\"reported\"}"),
        "{metrics}"
    );
    eprintln!("{} of 6 jobs captured and overturned", captured.len());
    for n in nodes {
        n.stop().await;
    }
}

/// A blob of 24 parts held by three nodes: a fourth fetches it from more than one of them at
/// once, and a fetch a crash cut short (its outboard and some parts on disk) asks only for the
/// rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_comes_in_parts_from_several_holders_and_a_cut_fetch_resumes() {
    use hivemesh_node::blobtree::{self, PART};
    use hivemesh_node::store::{BlobStore, StoreFaults};
    let bytes: Vec<u8> = (0..24 * PART)
        .map(|i| ((i ^ (i >> 8) ^ (i >> 16)) as u8).wrapping_mul(31))
        .collect();
    let (id, total, cvs) = blobtree::outboard_of(&bytes[..]).expect("outboard");
    let kept = [0u64, 5, 6, 23];
    let (_dirs, mut nodes) = cluster("bigblob", 4, |i, cfg| {
        if i == 3 {
            // What a fetch killed with -9 leaves: the verified outboard and four parts.
            let store =
                BlobStore::open(&cfg.data_dir.join("blobs"), 1 << 30, StoreFaults::default())
                    .expect("blob store");
            let mut p = store.partial(&id, total, cvs.clone()).expect("partial");
            for k in kept {
                let r = blobtree::part_range(total, k);
                p.write_part(k, &bytes[r.start as usize..r.end as usize])
                    .expect("part");
            }
        }
    })
    .await;
    for n in &nodes[..3] {
        assert_eq!(n.client.put_blob(bytes.clone()).await.expect("stored"), id);
    }
    let got = nodes[3].client.fetch_blob(id).await.expect("fetched");
    assert!(got == bytes, "the whole blob, verified");
    let (providers, fetched) =
        wait_for(&mut nodes[3].events, Duration::from_secs(10), |e| match e {
            Event::BlobFetched {
                id: b,
                providers,
                fetched,
                ..
            } if *b == id => Some((providers.clone(), *fetched)),
            _ => None,
        })
        .await;
    assert_eq!(
        fetched,
        total - kept.len() as u64 * PART,
        "only the missing parts"
    );
    assert!(
        providers.len() >= 2,
        "parts from several holders: {providers:?}"
    );
    for n in nodes {
        n.stop().await;
    }
}
