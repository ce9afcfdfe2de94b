//! Property tests: decoding never panics, round trips hold, and ledgers are order-independent.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use hivemesh_protocol::*;
use proptest::prelude::*;

/// `PROPTEST_CASES` overrides the default case count (for long local sweeps).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn ids_and_keys_order_like_their_bytes(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        shared in 0usize..=32,
    ) {
        // `shared` leading bytes in common, so ties and late differences are exercised too.
        let mut b = b;
        b[..shared].copy_from_slice(&a[..shared]);
        prop_assert_eq!(id::cmp32(&a, &b), a.cmp(&b));
        prop_assert_eq!(PeerKey(a).cmp(&PeerKey(b)), a.cmp(&b));
        prop_assert_eq!(JobId(a).cmp(&JobId(b)), a.cmp(&b));
        prop_assert_eq!(MessageId(a).partial_cmp(&MessageId(b)), Some(a.cmp(&b)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let ctx = Context::gossip(spec().id(), Timestamp(1_000_000));
        let _ = AnySigned::verify_and_decode(&bytes, &ctx);
        let _ = Envelope::parse(&bytes).map(|e| e.verify());
    }

    #[test]
    fn framed_garbage_never_panics(
        kind in 0u8..8,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // Correctly framed and signed, arbitrary body: reaches the body decoder.
        let b = envelope::seal(kind, &body, &key(1));
        let _ = AnySigned::verify_and_decode(&b, &Context::sync(spec().id()));
    }

    #[test]
    fn mutations_of_valid_messages_never_verify_as_something_else(
        i in 0u64..4,
        correct in 0u64..=100,
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let c = spec().id();
        let m = reveal(&key(i), c, JobId([i as u8; 32]), &result(correct), salt(i), 1_000_000);
        let ctx = Context::sync(c);
        let mut b = m.bytes().to_vec();
        let p = pos.index(b.len());
        b[p] ^= xor;
        prop_assert!(AnySigned::verify_and_decode(&b, &ctx).is_err());
        let t = cut.index(m.bytes().len());
        prop_assert!(AnySigned::verify_and_decode(&m.bytes()[..t], &ctx).is_err());
    }

    #[test]
    fn claims_and_reveals_round_trip(
        seed in any::<u64>(),
        job_bytes in any::<[u8; 32]>(),
        correct in 0u64..1000,
        extra in proptest::collection::btree_map("[a-z_]{1,32}", any::<i64>(), 0..16),
        artifacts in proptest::collection::vec(any::<[u8; 32]>(), 0..8),
        t in 0u64..u64::MAX / 2,
    ) {
        let c = spec().id();
        let k = key(seed);
        let result = JobResult {
            outcome: Outcome::Success(Metrics {
                correct,
                total: 1000,
                params: seed,
                flops: seed.wrapping_mul(3),
                extra,
                artifacts: artifacts.into_iter().map(BlobId).collect(),
            }),
            wall_time_ms: seed % 100_000,
        };
        let r = Reveal { campaign: c, job: JobId(job_bytes), result, salt: salt(seed), witnessed: Vec::new(), issued_at: Timestamp(t) };
        let s = Signed::sign_and_encode(r.clone(), &k).unwrap();
        let back = Signed::<Reveal>::verify_and_decode(s.bytes(), &Context::sync(c)).unwrap();
        prop_assert_eq!(back.message(), &r);
        prop_assert_eq!(back.signer(), k.public());
        prop_assert_eq!(back.id(), s.id());
    }
}

/// What one peer does on one job in a generated scenario.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Absent,
    Honest,
    Wrong,
    ClaimOnly,
    RevealWithoutCommit,
    Equivocate,
    BadOpening,
    Audit,
    FalseAudit,
}

fn behaviour() -> impl proptest::strategy::Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Absent),
        4 => Just(Behaviour::Honest),
        2 => Just(Behaviour::Wrong),
        1 => Just(Behaviour::ClaimOnly),
        1 => Just(Behaviour::RevealWithoutCommit),
        1 => Just(Behaviour::Equivocate),
        1 => Just(Behaviour::BadOpening),
        1 => Just(Behaviour::Audit),
        1 => Just(Behaviour::FalseAudit),
    ]
}

fn messages(plan: &[Vec<Behaviour>], c: CampaignId, jobs: &[JobSpec]) -> Vec<AnySigned> {
    let mut out = Vec::new();
    for (j, row) in plan.iter().enumerate() {
        let id = jobs[j].id();
        let truth = result(50 + j as u64);
        for (p, b) in row.iter().enumerate() {
            let k = key(p as u64);
            let n = (j * 100 + p) as u64;
            match b {
                Behaviour::Absent => {}
                Behaviour::Honest => out.extend(execution(&k, c, id, &truth, n)),
                Behaviour::Wrong => out.extend(execution(&k, c, id, &result(1 + p as u64 % 2), n)),
                Behaviour::ClaimOnly => out.push(claim(&k, c, id, 5)),
                Behaviour::RevealWithoutCommit => out.push(reveal(&k, c, id, &truth, salt(n), 6)),
                Behaviour::Equivocate => {
                    out.extend(execution(&k, c, id, &truth, n));
                    out.push(reveal(&k, c, id, &result(3), salt(n + 1), 7));
                }
                Behaviour::BadOpening => {
                    out.push(commitment(&k, c, id, &truth, salt(n), 3));
                    out.push(reveal(&k, c, id, &result(4), salt(n), 4));
                }
                Behaviour::Audit => out.push(audit(&k, c, id, &truth, 8)),
                Behaviour::FalseAudit => out.push(audit(&k, c, id, &result(2), 8)),
            }
            // Equivalent re-signings with another timestamp, and exact duplicates.
            if n.is_multiple_of(3) && !matches!(b, Behaviour::Absent) {
                out.push(claim(&k, c, id, 11));
                out.push(claim(&k, c, id, 12));
            }
        }
    }
    let dups: Vec<AnySigned> = out.iter().step_by(4).cloned().collect();
    out.extend(dups);
    out
}

type Snapshot = (
    [u8; 32],
    Vec<(JobId, Settlement)>,
    BTreeMap<PeerKey, PeerScore>,
    BTreeSet<(PeerKey, JobId)>,
);

fn run(
    spec: &CampaignSpec,
    jobs: &[JobSpec],
    msgs: &[AnySigned],
    order: &[usize],
    register_at: &[usize],
) -> Snapshot {
    let mut l = Ledger::new(spec.clone(), LedgerConfig::default());
    for (step, &i) in order.iter().enumerate() {
        for (j, at) in register_at.iter().enumerate().take(jobs.len()) {
            if *at == step {
                let _ = l
                    .handle(Input::RegisterJob(jobs[j].clone()), Timestamp(step as u64))
                    .count();
            }
        }
        let _ = l
            .handle(Input::Message(msgs[i].clone()), Timestamp(step as u64))
            .count();
    }
    for j in jobs {
        let _ = l
            .handle(Input::RegisterJob(j.clone()), Timestamp(u64::MAX))
            .count();
    }
    (
        l.settlement_root(),
        l.settlements().map(|(j, s)| (*j, s.clone())).collect(),
        l.scores(),
        l.equivocations().map(|e| (e.peer, e.job)).collect(),
    )
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn any_permutation_gives_the_same_settlements_and_scores(
        plan in proptest::collection::vec(proptest::collection::vec(behaviour(), 6), 1..4),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
        register in proptest::collection::vec(any::<prop::sample::Index>(), 4),
    ) {
        let s = spec();
        let c = s.id();
        let jobs: Vec<JobSpec> = (0..plan.len() as u32).map(|i| job(c, i)).collect();
        let msgs = messages(&plan, c, &jobs);
        let reg_a: Vec<usize> = register.iter().map(|r| r.index(msgs.len() + 1)).collect();
        let reg_b: Vec<usize> = register.iter().rev().map(|r| r.index(msgs.len() + 1)).collect();
        let a = run(&s, &jobs, &msgs, &shuffled(msgs.len(), seed_a), &reg_a);
        let b = run(&s, &jobs, &msgs, &shuffled(msgs.len(), seed_b), &reg_b);
        prop_assert_eq!(&a, &b);
        // Sanity: no settlement ever names an equivocator as agreeing.
        for (job, st) in &a.1 {
            for p in &st.agreeing {
                prop_assert!(!a.3.contains(&(*p, *job)));
            }
        }
    }
}
