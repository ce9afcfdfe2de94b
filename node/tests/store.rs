//! The redb store: durable across reopen, deduplicated, checked on the way in and out (a corrupt
//! record is dropped so a good copy is stored again), usable again after a failed write, and
//! exclusive to one node per data directory.

use hivemesh_node::store::{DataDirLock, Store, StoreError, StoreFaults, StoreOptions};
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

/// Flips one bit of the stored value under `key` in `table`, as a bad disk would, with the
/// store closed (the test opens the redb file itself).
fn flip_a_bit(data_dir: &std::path::Path, table: &str, key: &[u8]) {
    use redb::ReadableTable as _;
    let def: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new(table);
    let db = redb::Database::create(data_dir.join(hivemesh_node::store::STORE_FILE)).expect("db");
    let txn = db.begin_write().expect("txn");
    {
        let mut t = txn.open_table(def).expect("table");
        let mut v = t.get(key).expect("get").expect("record").value().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x10;
        t.insert(key, v.as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
}

fn msg_key(c: &CampaignId, seq: u64) -> Vec<u8> {
    let mut k = c.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[test]
fn a_corrupt_record_is_dropped_so_the_good_copy_is_stored_again() {
    let d = dir("corrupt");
    let c = CampaignId([1; 32]);
    let job = JobId([7; 32]);
    let msgs: Vec<(MessageId, Vec<u8>)> = (0..4u8)
        .map(|i| (MessageId([i + 1; 32]), vec![i; 40]))
        .collect();
    {
        let s = Store::open(&d).expect("open");
        s.put_campaign(&c, b"spec").expect("campaign");
        let added = s
            .append_messages(&c, msgs.iter().map(|(id, b)| (*id, b.as_slice())))
            .expect("append");
        assert_eq!(added, 4);
        s.put_result(&c, &job, &result(42), &[]).expect("result");
    }
    // Bit rot in messages 1 and 2 and in the result.
    flip_a_bit(&d, "messages", &msg_key(&c, 1));
    flip_a_bit(&d, "messages", &msg_key(&c, 2));
    let mut rkey = c.as_bytes().to_vec();
    rkey.extend_from_slice(job.as_bytes());
    flip_a_bit(&d, "results", &rkey);

    let s = Store::open(&d).expect("reopen");
    // Gossip path: the dedupe index no longer vouches for a record that does not read back.
    assert!(
        !s.has_message(&msgs[2].0).expect("has"),
        "a corrupt message is not held"
    );
    // Replay path: the corrupt record is skipped (and dropped), the others come back whole.
    let (read, next) = s.messages(&c, 0, usize::MAX).expect("read");
    assert_eq!(read, vec![msgs[0].1.clone(), msgs[3].1.clone()]);
    assert_eq!(next, 4);
    assert!(!s.has_message(&msgs[1].0).expect("has"));
    assert!(s.has_message(&msgs[0].0).expect("has"));
    // The good copies from a peer are new again, and stored.
    for m in [&msgs[1], &msgs[2]] {
        assert_eq!(
            s.append_messages_lazy(&c, [(m.0, m.1.as_slice())])
                .expect("append"),
            1,
            "the good copy of a corrupt message is stored, not skipped as a duplicate"
        );
        assert!(s.has_message(&m.0).expect("has"));
    }
    let (read, _) = s.messages(&c, 0, usize::MAX).expect("read");
    assert_eq!(read.len(), 4);
    // A corrupt result is gone (the job runs again) and can be stored again.
    assert_eq!(s.result(&c, &job).expect("read"), None);
    s.put_result(&c, &job, &result(42), &[]).expect("again");
    assert_eq!(s.result(&c, &job).expect("read"), Some(result(42)));
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_failed_write_does_not_poison_the_store() {
    let d = dir("full");
    let faults = StoreFaults::default();
    let options = StoreOptions {
        faults: faults.clone(),
        ..StoreOptions::default()
    };
    let failures = options.write_failures.clone();
    let s = Store::open_with(DataDirLock::acquire(&d).expect("lock"), options).expect("open");
    let a = BlobId::of_bytes(b"a");
    assert!(s.put_blob(&a, b"a").expect("put"));
    faults.set_disk_full(true);
    let c = CampaignId([3; 32]);
    let e = s
        .put_result(&c, &JobId([1; 32]), &result(1), &[])
        .expect_err("the disk is full");
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(
        s.put_blob(&BlobId::of_bytes(b"b"), b"b").is_err(),
        "still full"
    );
    assert_eq!(failures.get(), 2, "failed writes are counted");
    assert!(s.last_error().is_some_and(|e| e.contains("No space left")));
    // Space comes back: the next writes succeed without a restart (redb latched the error, so
    // the store opened the database again), and nothing stored before was lost.
    faults.set_disk_full(false);
    s.put_result(&c, &JobId([1; 32]), &result(1), &[])
        .expect("writes work again");
    assert!(s.put_blob(&BlobId::of_bytes(b"b"), b"b").expect("put"));
    assert_eq!(s.last_error(), None, "a successful write clears the error");
    assert_eq!(s.blob(&a).expect("read"), Some(b"a".to_vec()));
    drop(s);
    let s = Store::open(&d).expect("reopen");
    assert_eq!(
        s.result(&c, &JobId([1; 32])).expect("read"),
        Some(result(1))
    );
    assert_eq!(s.blob_len(&BlobId::of_bytes(b"b")).expect("len"), Some(1));
    drop(s);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_data_dir_lock_survives_deleting_the_store_file() {
    let d = dir("dirlock");
    let s = Store::open(&d).expect("open");
    std::fs::remove_file(s.path()).expect("delete store.redb under the running store");
    let e = Store::open(&d).expect_err("a second store on the same data dir");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Locked { .. }), "{text}");
    assert!(
        text.contains(&d.display().to_string()) && text.contains("stop that node"),
        "{text}"
    );
    assert!(
        text.contains(&format!("process {}", std::process::id())),
        "{text}"
    );
    assert!(
        DataDirLock::acquire(&d).is_err(),
        "the lock is the data dir's"
    );
    drop(s);
    DataDirLock::acquire(&d).expect("free once the store is closed");
    let _ = std::fs::remove_dir_all(&d);
}
