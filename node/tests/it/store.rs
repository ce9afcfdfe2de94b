//! The redb store: durable across reopen, deduplicated, checked on the way in and out (a corrupt
//! record is dropped so a good copy is stored again), usable again after a failed write, and
//! exclusive to one node per data directory.

use hivemesh_node::store::{
    BlobError, DataDirLock, LOCK_FILE, Store, StoreError, StoreFaults, StoreOptions,
};
use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::message::{JobResult, Metrics, Outcome};

/// Held while this test binary spawns a process, and by the lock tests while they let a lock
/// go and take it again: a child between fork and exec holds copies of all our descriptors,
/// locked ones included, so a lock let go meanwhile is not free until the child has exec'd
/// (the node itself spawns nothing).
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn_guard() -> std::sync::MutexGuard<'static, ()> {
    SPAWNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
    let d = dir("blobs");
    let s = Store::open(&d).expect("open");
    let wrong = BlobId([0; 32]);
    assert!(matches!(
        s.put_blob(&wrong, b"bytes"),
        Err(StoreError::Blob(BlobError::Mismatch(_)))
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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
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
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
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

#[cfg(unix)]
#[test]
fn the_data_dir_lock_survives_deleting_the_lock_file() {
    // Not while a spawned child may hold copies of our lock descriptors.
    let _no_spawns = spawn_guard();
    let d = dir("lockfile");
    let held = DataDirLock::acquire(&d).expect("lock");
    std::fs::remove_file(d.join(LOCK_FILE)).expect("delete node.lock under the running node");
    let e = DataDirLock::acquire(&d).expect_err("a second node on the same data dir");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    drop(held);
    DataDirLock::acquire(&d).expect("free once the first lets go");
    let _ = std::fs::remove_dir_all(&d);
}

/// The `hivemesh` binary, for what only a whole process shows (the lock, the key file, files
/// written for the user).
mod cli {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::time::Duration;

    const BIN: &str = env!("CARGO_BIN_EXE_hivemesh");
    /// Guard against hangs (a debug build on 2 cores), not a synchronisation device.
    const DEADLINE: Duration = Duration::from_secs(60);

    /// A `hivemesh run` process and its output lines (`None` once both streams closed).
    pub(super) struct Node {
        child: Child,
        lines: Receiver<Option<String>>,
        /// Everything it printed so far.
        pub(super) seen: Vec<String>,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Node {
        /// Starts `hivemesh run` on `dir` (loopback, any port) with `extra` flags.
        pub(super) fn start(dir: &Path, extra: &[&str]) -> Node {
            let spawning = super::spawn_guard();
            let mut child = Command::new(BIN)
                .arg("--data-dir")
                .arg(dir)
                .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
                .args(extra)
                .env("RUST_LOG", "hivemesh_node=warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn hivemesh");
            drop(spawning);
            let (tx, lines) = sync_channel(10_000);
            let streams: [Box<dyn std::io::Read + Send>; 2] = [
                Box::new(child.stdout.take().expect("stdout")),
                Box::new(child.stderr.take().expect("stderr")),
            ];
            for stream in streams {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(None);
                });
            }
            Node {
                child,
                lines,
                seen: Vec::new(),
            }
        }

        /// Waits for a line starting with `prefix` (the rest of it), or `None` when the
        /// process ended first.
        pub(super) fn wait_line(&mut self, prefix: &str) -> Option<String> {
            let mut closed = 0;
            while closed < 2 {
                match self.lines.recv_timeout(DEADLINE).expect("hivemesh hangs") {
                    Some(line) => {
                        let rest = line.strip_prefix(prefix).map(str::to_string);
                        self.seen.push(line);
                        if rest.is_some() {
                            return rest;
                        }
                    }
                    None => closed += 1,
                }
            }
            let _ = self.child.wait();
            None
        }

        /// Waits for the process to end; whether it succeeded.
        pub(super) fn ended_ok(&mut self) -> bool {
            assert_eq!(self.wait_line("\u{0}never"), None);
            self.child.wait().expect("wait").success()
        }
    }

    /// Runs another `hivemesh` command on `dir` to its end.
    pub(super) fn hivemesh(dir: &Path, args: &[&str]) -> Output {
        let spawning = super::spawn_guard();
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hivemesh");
        drop(spawning);
        child.wait_with_output().expect("run hivemesh")
    }

    pub(super) fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// The public key in `dir`'s key file.
fn key_file(dir: &std::path::Path) -> String {
    hivemesh_node::identity::load(dir)
        .expect("key file")
        .public()
        .to_string()
}

#[test]
fn two_runs_started_together_on_an_empty_data_dir_run_one_node_with_the_key_on_disk() {
    // Before the lock was taken ahead of the key, 12 of 40 such starts left the running node
    // with another key than identity.key (both created one; the later rename won).
    for round in 0..12 {
        let d = dir(&format!("race{round}"));
        let mut a = cli::Node::start(&d, &["--no-http"]);
        let mut b = cli::Node::start(&d, &["--no-http"]);
        let keys = [a.wait_line("key "), b.wait_line("key ")];
        let running: Vec<&String> = keys.iter().flatten().collect();
        assert_eq!(
            running.len(),
            1,
            "exactly one runs (round {round}): {:?} {:?}",
            a.seen,
            b.seen
        );
        let refused = if keys[0].is_some() { &b.seen } else { &a.seen };
        assert!(
            refused
                .iter()
                .any(|l| l.contains("in use by another hivemesh node")),
            "{refused:?}"
        );
        assert_eq!(running[0], &key_file(&d), "round {round}");
        drop((a, b));
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_replaced_or_deleted_key_is_refused_beside_the_old_store() {
    let d = dir("owner");
    let mut n = cli::Node::start(&d, &["--no-http"]);
    let first = n.wait_line("key ").expect("first start");
    drop(n);
    // A new key beside the old store.
    assert!(cli::hivemesh(&d, &["keygen", "--force"]).status.success());
    let second = key_file(&d);
    assert_ne!(first, second);
    let mut n = cli::Node::start(&d, &["--no-http"]);
    assert!(!n.ended_ok(), "a new key beside the old store is refused");
    let text = n.seen.join("\n");
    assert!(
        text.contains(&first) && text.contains("--new-identity"),
        "{text}"
    );
    // No key at all: refused, and no key is created behind the user's back.
    std::fs::remove_file(hivemesh_node::identity::key_path(&d)).expect("rm key");
    let mut n = cli::Node::start(&d, &["--no-http"]);
    assert!(!n.ended_ok());
    let text = n.seen.join("\n");
    assert!(
        text.contains("missing") && text.contains("--new-identity"),
        "{text}"
    );
    assert!(!hivemesh_node::identity::key_path(&d).exists());
    // Asked for: the store is taken over by the new key.
    let mut n = cli::Node::start(&d, &["--no-http", "--new-identity"]);
    let third = n.wait_line("key ").expect("--new-identity starts");
    assert_eq!(third, key_file(&d));
    drop(n);
    // The new owner starts without the flag; a key file others may read is warned about.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = hivemesh_node::identity::key_path(&d);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let mut n = cli::Node::start(&d, &["--no-http"]);
    assert_eq!(n.wait_line("key ").as_deref(), Some(third.as_str()));
    #[cfg(unix)]
    assert!(
        n.seen.iter().any(|l| l.contains("readable by other users")),
        "{:?}",
        n.seen
    );
    drop(n);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_running_node_keeps_its_key_and_files_it_writes_follow_no_planted_link() {
    let d = dir("running");
    let mut n = cli::Node::start(&d, &["--http", "127.0.0.1:0"]);
    let key = n.wait_line("key ").expect("starts");
    n.wait_line("api ").expect("serves the API");
    let o = cli::hivemesh(&d, &["keygen", "--force"]);
    assert!(!o.status.success(), "keygen --force under a running node");
    assert!(cli::stderr(&o).contains("in use"), "{}", cli::stderr(&o));
    assert_eq!(key_file(&d), key, "the key is unchanged");

    // A blob written to a file: links planted at the target and at the temporary name the
    // CLI used to write through are not followed.
    let out = d.join("out");
    std::fs::create_dir_all(&out).expect("out");
    let file = out.join("weights");
    std::fs::write(&file, b"the weights").expect("file");
    let o = cli::hivemesh(&d, &["blob", "put", file.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let id = String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    #[cfg(unix)]
    for planted in ["w.partial", "w.bin"] {
        std::os::unix::fs::symlink(&victim, out.join(planted)).expect("symlink");
    }
    let target = out.join("w.bin");
    let o = cli::hivemesh(
        &d,
        &["blob", "get", &id, "--out", target.to_str().expect("utf-8")],
    );
    assert!(o.status.success(), "{}", cli::stderr(&o));
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(
        !std::fs::symlink_metadata(&target)
            .expect("target")
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).expect("target"), b"the weights");
    drop(n);
    let _ = std::fs::remove_dir_all(&d);
}

/// A failure is said once: the binary prints each cause of the chain once (a config error used
/// to print the TOML parser's message twice), and names what to do.
#[test]
fn errors_name_each_cause_once() {
    let d = dir("errtext");
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(d.join("config.toml"), "jbos = 2\n").expect("config");
    let o = cli::hivemesh(&d, &["run", "--no-http"]);
    assert!(!o.status.success());
    let text = cli::stderr(&o);
    assert_eq!(text.matches("unknown field `jbos`").count(), 1, "{text}");
    std::fs::remove_file(d.join("config.toml")).expect("rm");
    // No node runs here: the API error says so once and says what to do.
    let o = cli::hivemesh(&d, &["status", "--api", "127.0.0.1:9"]);
    let text = cli::stderr(&o);
    assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
    assert!(text.contains("hivemesh run"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The old layout's blob table.
const OLD_BLOBS: redb::TableDefinition<'static, &[u8], &[u8]> = redb::TableDefinition::new("blobs");

/// A store of the old layout kept blobs in the database: opening it moves them into files,
/// even past a quota smaller than they are (the quota limits what comes in, not what was there).
#[test]
fn blobs_of_an_older_store_move_to_files_whatever_the_quota() {
    let _no_spawns = spawn_guard();
    let d = dir("oldblobs");
    drop(Store::open(&d).expect("create"));
    let bytes = vec![9u8; 300_000];
    let id = BlobId::of_bytes(&bytes);
    {
        let db = redb::Database::open(d.join("store.redb")).expect("redb");
        let txn = db.begin_write().expect("txn");
        {
            let mut t = txn.open_table(OLD_BLOBS).expect("table");
            t.insert(id.as_bytes().as_slice(), bytes.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let options = StoreOptions {
        blob_quota: Some(1000),
        ..StoreOptions::default()
    };
    let s = Store::open_with(DataDirLock::acquire(&d).expect("lock"), options).expect("open");
    assert_eq!(s.blob(&id).expect("read"), Some(bytes));
    assert!(
        d.join("blobs/own").join(id.to_string()).exists(),
        "a file now"
    );
    drop(s);
    let db = redb::Database::open(d.join("store.redb")).expect("redb");
    let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
    let t = txn.open_table(OLD_BLOBS).expect("table");
    assert_eq!(
        redb::ReadableTableMetadata::len(&t).expect("len"),
        0,
        "moved, not copied"
    );
    drop((t, txn, db));
    let _ = std::fs::remove_dir_all(&d);
}
