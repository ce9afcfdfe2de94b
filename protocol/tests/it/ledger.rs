//! The ledger's rules, one behaviour per test.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use hivemesh_protocol::ledger::{IgnoreReason, Offence};
use hivemesh_protocol::*;

fn setup() -> (Ledger, CampaignId, JobSpec) {
    let s = spec();
    let c = s.id();
    let mut l = Ledger::new(s, LedgerConfig::default());
    let j = job(c, 0);
    let _ = l
        .handle(Input::RegisterJob(j.clone()), Timestamp(0))
        .count();
    (l, c, j)
}

fn settled(out: &[Output]) -> Vec<&Settlement> {
    out.iter()
        .filter_map(|o| match o {
            Output::Settled { settlement, .. } => Some(settlement),
            _ => None,
        })
        .collect()
}

#[test]
fn two_of_three_settle_and_dissenter_is_penalised() {
    let (mut l, c, j) = setup();
    let id = j.id();
    let out = feed(&mut l, execution(&key(1), c, id, &result(90), 1));
    assert!(settled(&out).is_empty(), "one result is not a quorum");
    let out = feed(&mut l, execution(&key(2), c, id, &result(90), 2));
    let s = settled(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].canonical, metrics(90));
    let out = feed(&mut l, execution(&key(3), c, id, &result(10), 3));
    let s = settled(&out);
    assert_eq!(s.len(), 1, "the dissenter changes the settlement's record");
    assert_eq!(s[0].dissenting, vec![key(3).public()]);
    let scores = l.scores();
    assert_eq!(scores[&key(1).public()].points, j.compute as i64);
    assert_eq!(scores[&key(3).public()].points, -(j.compute as i64));
    assert_eq!(scores[&key(3).public()].dissented, 1);
}

#[test]
fn a_reveal_counts_only_once_its_commitment_is_known() {
    let (mut l, c, j) = setup();
    let id = j.id();
    let r = result(90);
    feed(&mut l, execution(&key(1), c, id, &r, 1));
    // Peer 2's reveal arrives before its commitment.
    let out = feed(&mut l, [reveal(&key(2), c, id, &r, salt(2), 5)]);
    assert!(settled(&out).is_empty());
    let out = feed(&mut l, [commitment(&key(2), c, id, &r, salt(2), 4)]);
    assert_eq!(settled(&out).len(), 1);
}

#[test]
fn reveal_that_does_not_open_its_commitment_is_equivocation() {
    let (mut l, c, j) = setup();
    let id = j.id();
    feed(&mut l, execution(&key(1), c, id, &result(90), 1));
    let k = key(2);
    feed(&mut l, [commitment(&k, c, id, &result(90), salt(2), 4)]);
    // Reveals a different result than it committed to.
    let out = feed(&mut l, [reveal(&k, c, id, &result(91), salt(2), 5)]);
    assert!(out.iter().any(|o| matches!(o,
        Output::Equivocation(p) if p.peer == k.public() && p.offence == Offence::RevealMismatch)));
    assert!(l.settlement(&id).is_none());
    assert_eq!(l.scores()[&k.public()].equivocations, 1);
}

#[test]
fn two_different_results_for_one_job_is_equivocation() {
    let (mut l, c, j) = setup();
    let id = j.id();
    feed(&mut l, execution(&key(1), c, id, &result(90), 1));
    feed(&mut l, execution(&key(2), c, id, &result(90), 2));
    assert!(l.settlement(&id).is_some());
    let k = key(2);
    let out = feed(&mut l, [reveal(&k, c, id, &result(50), salt(9), 7)]);
    assert!(out.iter().any(|o| matches!(o,
        Output::Equivocation(p) if p.offence == Offence::ConflictingReveals)));
    assert!(
        out.iter().any(|o| matches!(o, Output::Unsettled { .. })),
        "{out:?}"
    );
    // Further statements by the equivocator on this job are ignored.
    let out = feed(&mut l, [claim(&k, c, id, 99)]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::AlreadyEquivocated,
            ..
        }
    ));
    let score = &l.scores()[&k.public()];
    assert_eq!(score.equivocations, 1);
    assert!(score.points < 0);
}

#[test]
fn conflicting_commitments_are_equivocation() {
    let (mut l, c, j) = setup();
    let k = key(4);
    feed(&mut l, [commitment(&k, c, j.id(), &result(1), salt(1), 1)]);
    let out = feed(&mut l, [commitment(&k, c, j.id(), &result(2), salt(1), 1)]);
    assert!(out.iter().any(|o| matches!(o,
        Output::Equivocation(p) if p.offence == Offence::ConflictingCommitments)));
}

#[test]
fn duplicates_and_a_peers_later_claims_on_a_job_are_ignored() {
    let (mut l, c, j) = setup();
    let a = claim(&key(1), c, j.id(), 10);
    let out = feed(&mut l, [a.clone(), a.clone()]);
    assert!(matches!(
        out[0],
        Output::Accepted {
            kind: Kind::Claim,
            ..
        }
    ));
    assert!(matches!(
        out[1],
        Output::Ignored {
            reason: IgnoreReason::Duplicate,
            ..
        }
    ));
    // Only who claimed counts: every later claim of the peer is a copy, whatever its id (a
    // lower id replaced the kept claim before, so each could make nodes store one more).
    for t in 11..40 {
        let out = feed(&mut l, [claim(&key(1), c, j.id(), t)]);
        assert_eq!(ignored_as(&out), [IgnoreReason::Equivalent], "{out:?}");
    }
    assert_eq!(l.claim_count(&j.id()), 1);
}

#[test]
fn a_heartbeat_replaces_the_kept_one_only_a_second_later_unless_it_is_a_leave() {
    let (mut l, c, _) = setup();
    let k = key(1);
    let hb = |t: u64, capacity: u16| heartbeat(&k, c, t, capacity);
    let accepted = |out: &[Output]| matches!(out[0], Output::Accepted { .. });
    assert!(accepted(&feed(&mut l, [hb(10_000, 1)])));
    for t in [10_001, 10_500, 10_999] {
        assert_eq!(
            ignored_as(&feed(&mut l, [hb(t, 1)])),
            [IgnoreReason::Equivalent]
        );
    }
    assert!(accepted(&feed(&mut l, [hb(11_000, 2)])));
    // A leave does not wait; a rejoin after it does.
    assert!(accepted(&feed(&mut l, [hb(11_001, 0)])));
    assert_eq!(
        ignored_as(&feed(&mut l, [hb(11_002, 1)])),
        [IgnoreReason::Equivalent]
    );
    assert_eq!(l.heartbeats().next().map(|h| h.message().capacity), Some(0));
}

fn ignored_as(out: &[Output]) -> Vec<IgnoreReason> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ignored { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn every_kind_delivered_twice_is_a_duplicate_and_changes_nothing() {
    let (mut l, c, j) = setup();
    let k = key(1);
    let hb = |t: u64| heartbeat(&k, c, t, 1);
    let msgs = [
        claim(&k, c, j.id(), 1),
        commitment(&k, c, j.id(), &result(1), salt(1), 2),
        reveal(&k, c, j.id(), &result(1), salt(1), 3),
        hb(4),
    ];
    for m in &msgs {
        let first = feed(&mut l, [m.clone()]);
        assert!(
            matches!(first[0], Output::Accepted { .. }),
            "{:?}: {first:?}",
            m.kind()
        );
        let root = l.settlement_root();
        let again = feed(&mut l, [m.clone()]);
        assert_eq!(
            ignored_as(&again),
            [IgnoreReason::Duplicate],
            "{:?}",
            m.kind()
        );
        assert_eq!(again.len(), 1, "{:?}: {again:?}", m.kind());
        assert_eq!(l.settlement_root(), root);
    }
    // An older heartbeat than the one kept is not stored, however often it comes.
    for _ in 0..2 {
        assert_eq!(
            ignored_as(&feed(&mut l, [hb(0)])),
            [IgnoreReason::Equivalent]
        );
    }
}

#[test]
fn messages_for_another_campaign_are_rejected() {
    let (mut l, _, j) = setup();
    let mut other = spec();
    other.name = "other".into();
    let out = feed(&mut l, [claim(&key(1), other.id(), j.id(), 1)]);
    assert!(matches!(
        &out[0],
        Output::Rejected {
            error: DecodeError::WrongCampaign { .. },
            action: PeerAction::Reject,
            ..
        }
    ));
    let own = AnySigned::Campaign(Signed::sign_and_encode(spec(), &key(1)).unwrap());
    let out = feed(&mut l, [own]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::OwnCampaign,
            ..
        }
    ));
}

#[test]
fn results_for_jobs_not_yet_derived_settle_on_registration() {
    let s = spec();
    let c = s.id();
    let mut l = Ledger::new(s, LedgerConfig::default());
    let j = job(c, 5);
    feed(&mut l, execution(&key(1), c, j.id(), &result(70), 1));
    feed(&mut l, execution(&key(2), c, j.id(), &result(70), 2));
    assert!(l.settlement(&j.id()).is_none(), "unknown jobs never settle");
    let out: Vec<_> = l
        .handle(Input::RegisterJob(j.clone()), Timestamp(9))
        .collect();
    assert_eq!(settled(&out).len(), 1);
}

#[test]
fn unregistered_messages_are_capped_per_signer() {
    let s = spec();
    let c = s.id();
    let cfg = LedgerConfig {
        max_unregistered_per_signer: 3,
        ..LedgerConfig::default()
    };
    let mut l = Ledger::new(s, cfg);
    let out = feed(&mut l, (0..5).map(|i| claim(&key(1), c, JobId([i; 32]), 1)));
    let ignored = out
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Ignored {
                    reason: IgnoreReason::TooManyUnregistered,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ignored, 2);
    // Turned-away messages leave no state behind: only the 3 stored jobs are tracked, however
    // many further job ids the signer tries.
    let out = feed(
        &mut l,
        (10..200).map(|i| claim(&key(1), c, JobId([i; 32]), 1)),
    );
    assert!(out.iter().all(|o| matches!(
        o,
        Output::Ignored {
            reason: IgnoreReason::TooManyUnregistered,
            ..
        }
    )));
    assert_eq!(l.tracked_jobs(), 3);
    // A message dropped for capacity is not remembered: once the job is derived (which frees
    // the signer's slots), the same bytes are accepted.
    let j = job(c, 1);
    let late = claim(&key(1), c, j.id(), 1);
    let out = feed(&mut l, [late.clone()]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::TooManyUnregistered,
            ..
        }
    ));
    let _ = l
        .handle(Input::RegisterJob(j.clone()), Timestamp(0))
        .count();
    let out = feed(&mut l, [late]);
    assert!(
        matches!(
            out[0],
            Output::Accepted {
                kind: Kind::Claim,
                ..
            }
        ),
        "{out:?}"
    );
    // Registering a job frees the slots its messages held.
    let held = job(c, 2);
    let mut l2 = Ledger::new(
        spec(),
        LedgerConfig {
            max_unregistered_per_signer: 1,
            ..LedgerConfig::default()
        },
    );
    feed(&mut l2, [claim(&key(1), c, held.id(), 1)]);
    let out = feed(&mut l2, [claim(&key(1), c, JobId([9; 32]), 1)]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::TooManyUnregistered,
            ..
        }
    ));
    let _ = l2.handle(Input::RegisterJob(held), Timestamp(0)).count();
    let out = feed(&mut l2, [claim(&key(1), c, JobId([9; 32]), 1)]);
    assert!(matches!(out[0], Output::Accepted { .. }), "{out:?}");
}

#[test]
fn jobs_cap_their_signers() {
    let s = spec();
    let c = s.id();
    let cfg = LedgerConfig {
        max_signers_per_job: 4,
        ..LedgerConfig::default()
    };
    let mut l = Ledger::new(s, cfg);
    let j = job(c, 0);
    let _ = l
        .handle(Input::RegisterJob(j.clone()), Timestamp(0))
        .count();
    let out = feed(&mut l, (0..6).map(|i| claim(&key(i), c, j.id(), 1)));
    let full = out
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Ignored {
                    reason: IgnoreReason::JobFull,
                    ..
                }
            )
        })
        .count();
    assert_eq!(full, 2);
}

#[test]
fn an_audit_and_tie_breakers_overturn_a_colluding_quorum() {
    let (mut l, c, j) = setup();
    let id = j.id();
    // Peers 1 and 2 collude on a wrong value; honest peer 3 dissents.
    feed(&mut l, execution(&key(1), c, id, &result(99), 1));
    feed(&mut l, execution(&key(2), c, id, &result(99), 2));
    feed(&mut l, execution(&key(3), c, id, &result(60), 3));
    assert_eq!(l.settlement(&id).unwrap().canonical, metrics(99));
    // An auditor disagrees: 2 vs 2 is contested, and a dispute opens.
    let out = feed(&mut l, [audit(&key(9), c, id, &result(60), 9)]);
    assert!(out.iter().any(
        |o| matches!(o, Output::AuditMismatch { auditor, .. } if *auditor == key(9).public())
    ));
    assert!(out.iter().any(|o| matches!(o, Output::Unsettled { .. })));
    // A tie-breaker executor re-runs the job honestly.
    let out = feed(&mut l, execution(&key(4), c, id, &result(60), 4));
    let s = settled(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].canonical, metrics(60));
    let scores = l.scores();
    assert_eq!(scores[&key(1).public()].failed_audits, 1);
    assert_eq!(scores[&key(2).public()].failed_audits, 1);
    assert!(scores[&key(1).public()].points < -(j.compute as i64));
    assert_eq!(scores[&key(3).public()].agreed, 1);
    assert!(
        !scores.contains_key(&key(9).public()),
        "auditor neither paid nor penalised"
    );
}

#[test]
fn a_false_audit_fails_the_auditor() {
    let (mut l, c, j) = setup();
    let id = j.id();
    for i in 1..=3 {
        feed(&mut l, execution(&key(i), c, id, &result(80), i));
    }
    let out = feed(&mut l, [audit(&key(9), c, id, &result(20), 9)]);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::AuditMismatch { .. }))
    );
    assert_eq!(l.settlement(&id).unwrap().canonical, metrics(80));
    assert_eq!(l.scores()[&key(9).public()].failed_audits, 1);
}

#[test]
fn claimers_that_never_deliver_are_penalised() {
    let (mut l, c, j) = setup();
    let id = j.id();
    feed(&mut l, execution(&key(1), c, id, &result(80), 1));
    feed(&mut l, execution(&key(2), c, id, &result(80), 2));
    feed(&mut l, [claim(&key(3), c, id, 5)]);
    let s = &l.scores()[&key(3).public()];
    assert_eq!(s.missed, 1);
    assert!(s.points < 0);
}

#[test]
fn failures_settle_when_executors_agree_on_them() {
    let (mut l, c, j) = setup();
    let id = j.id();
    let f = |d: &str| JobResult {
        outcome: Outcome::Failure(Failure {
            kind: FailureKind::NonFinite,
            detail: d.into(),
        }),
        wall_time_ms: 5,
    };
    feed(&mut l, execution(&key(1), c, id, &f("nan at step 3"), 1));
    feed(&mut l, execution(&key(2), c, id, &f("inf at step 3"), 2));
    assert!(matches!(
        l.settlement(&id).unwrap().canonical,
        Outcome::Failure(Failure {
            kind: FailureKind::NonFinite,
            ..
        })
    ));
}

#[test]
fn retired_jobs_forget_their_evidence_keep_equivocations_and_ignore_late_messages() {
    let (mut l, c, j) = setup();
    let id = j.id();
    let other = job(c, 1);
    let _ = l
        .handle(Input::RegisterJob(other.clone()), Timestamp(0))
        .count();
    feed(&mut l, execution(&key(1), c, id, &result(90), 1));
    feed(&mut l, execution(&key(2), c, id, &result(90), 2));
    let k = key(2);
    feed(&mut l, [reveal(&k, c, id, &result(50), salt(9), 7)]);
    feed(&mut l, execution(&key(3), c, other.id(), &result(70), 3));
    assert_eq!(l.equivocations().count(), 1);
    assert_eq!(l.tracked_jobs(), 2);

    l.retire([id]);
    assert!(l.settlement(&id).is_none());
    assert_eq!(l.commitment_count(&id), 0);
    assert_eq!(l.tracked_jobs(), 1, "only the other job is left");
    assert_eq!(l.equivocations().count(), 1, "the proof survives its job");
    // A late reveal, and the same claim delivered again, are ignored as retired.
    let out = feed(&mut l, [reveal(&key(4), c, id, &result(90), salt(4), 9)]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::Retired,
            ..
        }
    ));
    let out = feed(&mut l, [claim(&key(1), c, id, 1)]);
    assert!(matches!(
        out[0],
        Output::Ignored {
            reason: IgnoreReason::Retired,
            ..
        }
    ));
    // The other job is untouched and still settles.
    let out = feed(&mut l, execution(&key(5), c, other.id(), &result(70), 5));
    assert!(out.iter().any(|o| matches!(o, Output::Settled { .. })));
}

#[test]
fn a_generation_registers_and_retires_as_its_jobs_would_one_by_one() {
    let c = spec().id();
    let mut l = Ledger::new(spec(), LedgerConfig::default());
    let (a, b, later) = (job(c, 4), job(c, 5), job(c, 8));
    // Evidence on `a` before it is derived settles when its generation is registered.
    feed(&mut l, execution(&key(1), c, a.id(), &result(90), 1));
    feed(&mut l, execution(&key(2), c, a.id(), &result(90), 2));
    assert!(l.settlement(&a.id()).is_none(), "not derived yet");
    let generation: std::sync::Arc<std::collections::BTreeMap<JobId, JobSpec>> =
        std::sync::Arc::new([(a.id(), a.clone()), (b.id(), b.clone())].into());
    let out: Vec<Output> = l
        .register_generation(std::sync::Arc::clone(&generation), Timestamp(3))
        .collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Settled { job, .. } if *job == a.id()))
    );
    assert_eq!(l.tracked_jobs(), 2);
    feed(&mut l, execution(&key(3), c, b.id(), &result(70), 3));
    // Messages on a later generation's job are held as not yet derived.
    feed(&mut l, [claim(&key(4), c, later.id(), 4)]);
    assert_eq!(l.tracked_jobs(), 3);

    // Retiring the generation but `b` (its audit pending) forgets `a` only.
    l.retire_generation(&generation, [b.id(), later.id()]);
    assert!(l.settlement(&a.id()).is_none());
    assert_eq!(l.commitment_count(&b.id()), 1);
    assert_eq!(l.tracked_jobs(), 2, "b and the later job are left");
    let late = feed(&mut l, [claim(&key(5), c, a.id(), 5)]);
    assert_eq!(ignored_as(&late), [IgnoreReason::Retired]);
    let out = feed(&mut l, execution(&key(6), c, b.id(), &result(70), 6));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Settled { job, .. } if *job == b.id()))
    );
    // Registering a retired job again does not bring it back.
    let _ = l
        .handle(Input::RegisterJob(a.clone()), Timestamp(7))
        .count();
    assert_eq!(
        ignored_as(&feed(&mut l, [claim(&key(7), c, a.id(), 7)])),
        [IgnoreReason::Retired]
    );
    // The kept job retires on its own.
    l.retire([b.id()]);
    assert_eq!(
        ignored_as(&feed(&mut l, [claim(&key(8), c, b.id(), 8)])),
        [IgnoreReason::Retired]
    );
    assert_eq!(l.tracked_jobs(), 1, "only the later job is left");
}
