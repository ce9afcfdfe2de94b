//! Across crates: identities stored by the node sign messages that independent ledgers, fed
//! in different orders over serialised bytes, settle identically; a node's store belongs to the
//! identity that first ran on it.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hivemesh_node::identity;
use hivemesh_protocol::*;
use hivemesh_tests::test_key;

fn spec() -> CampaignSpec {
    CampaignSpec {
        name: "integration".into(),
        created_at: Timestamp(5_000),
        search: Search::Loss(LossParams {
            population: 10,
            generations: 2,
            max_depth: 6,
            max_size: 40,
            reference_model: BlobId::of_bytes(b"reference mlp"),
            constant_tuning_steps: 20,
        }),
        dataset: DatasetRef {
            id: BlobId::of_bytes(b"digits"),
            name: "digits-8x8".into(),
            sources: vec!["builtin:digits".into()],
            bytes: 1 << 20,
        },
        budget: TrainingBudget {
            epochs: 3,
            max_steps: None,
            batch_size: 32,
            optimizer: Optimizer::Adam,
            learning_rate: 0.002,
            schedule: LrSchedule::Cosine,
        },
        seed: 99,
        redundancy: 3,
        quorum: 2,
        tolerance: Tolerance {
            correct: 3,
            extra: 0,
            exact_artifacts: false,
        },
        audit_rate_ppm: 0,
        backend: BackendClass::Cuda,
        code_version: "it".into(),
        roster: vec![hivemesh_protocol::Keypair::from_secret_bytes([1; 32]).public()],
        schedule: hivemesh_protocol::spec::Schedule::default(),
    }
}

#[test]
fn stored_identities_sign_results_that_every_ledger_settles_alike() {
    let dir = std::env::temp_dir().join(format!("hivemesh-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Three executors whose keys go through the node's key file and back.
    let keys: Vec<Keypair> = (0..3)
        .map(|i| {
            let d = dir.join(format!("node{i}"));
            identity::save(&d, &test_key(i), false).unwrap();
            identity::load(&d).unwrap()
        })
        .collect();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(k.public(), test_key(i as u64).public());
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let spec = spec();
    let c = spec.id();
    let job = JobSpec {
        campaign: c,
        generation: 0,
        index: 0,
        payload: JobPayload::Loss {
            expression: vec![1, 2, 3],
        },
        seed: 1,
        code_version: "it".into(),
        backend: BackendClass::Cuda,
        compute: 50,
    };
    // GPU results differ in the last bits: correct counts 901, 903 and 950.
    let mut wire: Vec<Vec<u8>> = Vec::new();
    for (k, correct) in keys.iter().zip([901u64, 903, 950]) {
        let result = JobResult {
            outcome: Outcome::Success(Metrics {
                correct,
                total: 1000,
                params: 10,
                flops: 20,
                extra: BTreeMap::new(),
                artifacts: vec![],
            }),
            wall_time_ms: 100,
        };
        // A salt only the executor knows (derived from its secret key).
        let salt: [u8; 32] = k.sign(b"test salt")[..32].try_into().unwrap();
        let commitment = Commitment {
            campaign: c,
            job: job.id(),
            digest: commitment_digest(&job.id(), &k.public(), &result, &salt),
            issued_at: Timestamp(6_000),
        };
        let reveal = Reveal {
            campaign: c,
            job: job.id(),
            result,
            salt,
            witnessed: Vec::new(),
            issued_at: Timestamp(7_000),
        };
        wire.push(
            Signed::sign_and_encode(commitment, k)
                .unwrap()
                .bytes()
                .to_vec(),
        );
        wire.push(Signed::sign_and_encode(reveal, k).unwrap().bytes().to_vec());
    }

    let mut roots = Vec::new();
    for order in [[0, 1, 2, 3, 4, 5], [5, 3, 1, 4, 2, 0], [1, 0, 5, 4, 3, 2]] {
        let mut ledger = Ledger::new(spec.clone(), LedgerConfig::default());
        let _ = ledger
            .handle(Input::RegisterJob(job.clone()), Timestamp(0))
            .count();
        let ctx = Context::gossip(c, Timestamp(8_000));
        for i in order {
            let m = AnySigned::verify_and_decode(&wire[i], &ctx).unwrap();
            let _ = ledger.handle(Input::Message(m), Timestamp(8_000)).count();
        }
        let s = ledger
            .settlement(&job.id())
            .expect("2 of 3 agree within tolerance");
        assert_eq!(s.agreeing, {
            let mut v = vec![keys[0].public(), keys[1].public()];
            v.sort();
            v
        });
        assert_eq!(s.dissenting, vec![keys[2].public()]);
        roots.push(ledger.settlement_root());
    }
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
}

/// A store belongs to the key that first ran on it: another key is refused (the history would
/// silently continue under a new identity) unless the node is told to take the store over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refuses_another_key_unless_told_to_take_it_over() {
    let dir = hivemesh_tests::TempDir::new("owner");
    let cfg = hivemesh_tests::test_config(dir.path());
    hivemesh_tests::start_node(0, cfg.clone())
        .await
        .stop()
        .await;
    let Err(e) = hivemesh_node::daemon::start(cfg.clone(), test_key(1)) else {
        panic!("a node with another key is refused on this store");
    };
    let text = e.to_string();
    assert!(
        text.contains(&test_key(0).public().to_string())
            && text.contains(&test_key(1).public().to_string())
            && text.contains("--new-identity"),
        "{text}"
    );
    hivemesh_tests::start_node(0, cfg.clone())
        .await
        .stop()
        .await;
    let mut take_over = cfg;
    take_over.new_identity = true;
    let node = hivemesh_tests::start_node(1, take_over.clone()).await;
    assert_eq!(node.client.key(), test_key(1).public());
    node.stop().await;
    take_over.new_identity = false;
    hivemesh_tests::start_node(1, take_over).await.stop().await;
    assert!(
        hivemesh_node::daemon::start(hivemesh_tests::test_config(dir.path()), test_key(0)).is_err(),
        "the old key is now the stranger"
    );
}
