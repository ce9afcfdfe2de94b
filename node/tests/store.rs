//! The redb store: durable across reopen, deduplicated, checked on the way in and out, and
//! exclusive to one process.

use hivemesh_node::store::{Store, StoreError};
use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::message::{JobResult, Metrics, Outcome};

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hivemesh-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn result(correct: u64) -> JobResult {
    JobResult {
        outcome: Outcome::Success(Metrics {
            correct,
            total: 100,
            params: 10,
            flops: 20,
            extra: Default::default(),
            artifacts: vec![],
        }),
        wall_time_ms: 5,
    }
}

#[test]
fn messages_results_and_blobs_survive_a_reopen_in_order() {
    let d = dir("reopen");
    let c = CampaignId([1; 32]);
    let other = CampaignId([2; 32]);
    {
        let s = Store::open(&d).expect("open");
        assert!(s.put_campaign(&c, b"spec").expect("put"));
        assert!(!s.put_campaign(&c, b"spec").expect("again"), "stored once");
        let msgs: Vec<(MessageId, Vec<u8>)> = (0..5u8)
            .map(|i| (MessageId([i; 32]), vec![i; 10 + i as usize]))
            .collect();
        let added = s
            .append_messages(&c, msgs.iter().map(|(id, b)| (*id, b.as_slice())))
            .expect("append");
        assert_eq!(added, 5);
        // Duplicates (by id) are skipped, even in another campaign's batch.
        let again = s
            .append_messages(&other, [(MessageId([3; 32]), b"x".as_slice())])
            .expect("append");
        assert_eq!(again, 0);
        s.put_result(
            &c,
            &JobId([7; 32]),
            &result(42),
            &[(BlobId::of_bytes(b"w"), b"w".to_vec())],
        )
        .expect("result");
    }
    let s = Store::open(&d).expect("reopen");
    assert_eq!(s.campaigns().expect("list"), vec![(c, b"spec".to_vec())]);
    let (all, next) = s.messages(&c, 0, usize::MAX).expect("read");
    assert_eq!(next, 5);
    assert_eq!(
        all.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );
    // Paging by size: at least one message per page, in order.
    let (page, next) = s.messages(&c, 1, 15).expect("page");
    assert_eq!((page.len(), next), (1, 2));
    let (rest, next) = s.messages(&c, 2, 1000).expect("rest");
    assert_eq!((rest.len(), next), (3, 5));
    assert_eq!(s.message_count(&other).expect("count"), 0);
    assert_eq!(
        s.result(&c, &JobId([7; 32])).expect("read"),
        Some(result(42))
    );
    assert_eq!(s.result(&c, &JobId([8; 32])).expect("read"), None);
    assert_eq!(
        s.blob(&BlobId::of_bytes(b"w")).expect("blob"),
        Some(b"w".to_vec())
    );
    assert_eq!(s.result_count(&c).expect("count"), 1);
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn blobs_must_hash_to_their_id() {
    let d = dir("blobs");
    let s = Store::open(&d).expect("open");
    let wrong = BlobId([0; 32]);
    assert!(matches!(
        s.put_blob(&wrong, b"bytes"),
        Err(StoreError::Corrupt { .. })
    ));
    let r = s.put_result(
        &CampaignId([1; 32]),
        &JobId([1; 32]),
        &result(1),
        &[(wrong, b"b".to_vec())],
    );
    assert!(matches!(r, Err(StoreError::Corrupt { .. })));
    assert_eq!(
        s.result_count(&CampaignId([1; 32])).expect("count"),
        0,
        "nothing half-written"
    );
    let id = BlobId::of_bytes(b"bytes");
    assert!(s.put_blob(&id, b"bytes").expect("put"));
    assert!(!s.put_blob(&id, b"bytes").expect("again"));
    assert_eq!(s.blob_len(&id).expect("len"), Some(5));
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_process_per_store_and_garbage_is_an_error_not_a_panic() {
    let d = dir("lock");
    let s = Store::open(&d).expect("open");
    match Store::open(&d) {
        Err(StoreError::Locked { .. }) => {}
        other => panic!("a second open must be refused as locked, got {other:?}"),
    }
    drop(s);
    Store::open(&d).expect("free again after close");
    // A file that is not a redb database.
    let g = dir("garbage");
    std::fs::create_dir_all(&g).expect("dir");
    std::fs::write(g.join(hivemesh_node::store::STORE_FILE), vec![0xa5; 8192]).expect("write");
    let e = Store::open(&g).expect_err("garbage is refused");
    assert!(e.to_string().contains("store"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&g);
}
