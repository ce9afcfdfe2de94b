//! Every class of bad input gets its own error and peer action; good input round-trips.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use hivemesh_protocol::envelope::{MAX_ENVELOPE_LEN, SIGNING_DOMAIN, VERSION};
use hivemesh_protocol::*;

fn signed_claim() -> (Signed<Claim>, CampaignId) {
    let c = spec().id();
    let s = Signed::sign_and_encode(
        Claim {
            campaign: c,
            job: JobId([3; 32]),
            slots: 1,
            job_ms: 0,
            issued_at: Timestamp(1_000_000),
        },
        &key(1),
    )
    .unwrap();
    (s, c)
}

fn ctx(c: CampaignId) -> Context {
    Context::gossip(c, Timestamp(1_000_500))
}

#[test]
fn round_trip_every_kind() {
    let c = spec().id();
    let k = key(2);
    let r = result(90);
    let msgs = [
        AnySigned::Campaign(Signed::sign_and_encode(spec(), &k).unwrap()),
        claim(&k, c, JobId([1; 32]), 1_000_000),
        commitment(&k, c, JobId([1; 32]), &r, salt(1), 1_000_000),
        reveal(&k, c, JobId([1; 32]), &r, salt(1), 1_000_000),
        audit(&k, c, JobId([1; 32]), &r, 1_000_000),
        AnySigned::Heartbeat(
            Signed::sign_and_encode(
                Heartbeat {
                    campaign: c,
                    generation: 2,
                    running: 1,
                    capacity: 4,
                    job_ms: 0,
                    issued_at: Timestamp(1_000_000),
                },
                &k,
            )
            .unwrap(),
        ),
    ];
    for m in msgs {
        let back = AnySigned::verify_and_decode(m.bytes(), &ctx(c)).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), MessageId::of_envelope(m.bytes()));
        assert_eq!(m.bytes()[0], VERSION);
        assert_eq!(m.bytes()[1], m.kind() as u8);
    }
}

#[test]
fn layout_is_postcard_of_the_envelope_tuple() {
    let (s, _) = signed_claim();
    let b = s.bytes();
    // (u8, u8, Vec<u8>, [u8; 32], then 64 signature bytes)
    type Head = (u8, u8, Vec<u8>, [u8; 32]);
    let (v, rest): (Head, &[u8]) = postcard::take_from_bytes(b).unwrap();
    assert_eq!(v.0, VERSION);
    assert_eq!(v.1, Kind::Claim as u8);
    assert_eq!(postcard::from_bytes::<Claim>(&v.2).unwrap(), *s.message());
    assert_eq!(v.3, *s.signer().as_bytes());
    assert_eq!(rest.len(), 64);
    // The signature covers the domain and every byte before the signer.
    let prefix = &b[..b.len() - 96];
    let signed = [SIGNING_DOMAIN, prefix].concat();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(s.signer().as_bytes()).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(rest).unwrap();
    vk.verify_strict(&signed, &sig).unwrap();
}

#[test]
fn truncated() {
    let (s, c) = signed_claim();
    let b = s.bytes();
    for cut in [0, 1, 2, 3, b.len() / 2, b.len() - 1] {
        let e = Signed::<Claim>::verify_and_decode(&b[..cut], &ctx(c)).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "cut {cut}: {e}");
        assert_eq!(e.peer_action(), PeerAction::Reject);
    }
}

#[test]
fn trailing_bytes() {
    let (s, c) = signed_claim();
    let mut b = s.bytes().to_vec();
    b.push(0);
    let e = Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err();
    assert_eq!(e, DecodeError::TrailingBytes { extra: 1 });
    assert_eq!(e.peer_action(), PeerAction::Reject);
}

#[test]
fn trailing_bytes_inside_a_signed_body() {
    // A signer who appends junk to the body: the frame is fine, the body is not.
    let (s, c) = signed_claim();
    let k = key(1);
    let mut body = postcard::to_stdvec(s.message()).unwrap();
    body.push(7);
    let e =
        Signed::<Claim>::verify_and_decode(&forge(&k, Kind::Claim, &body), &ctx(c)).unwrap_err();
    assert_eq!(e, DecodeError::TrailingBytes { extra: 1 });
}

/// Frames and signs an arbitrary body, as a malicious signer could.
fn forge(k: &Keypair, kind: Kind, body: &[u8]) -> Vec<u8> {
    envelope::seal(kind as u8, body, k)
}

#[test]
fn unknown_version_is_ignored_not_punished() {
    let (s, c) = signed_claim();
    let mut b = s.bytes().to_vec();
    b[0] = 2;
    let e = Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnknownVersion {
            version: 2,
            supported: 1
        }
    );
    assert_eq!(e.peer_action(), PeerAction::Ignore);
    assert!(e.to_string().contains("upgrade"));
}

#[test]
fn unknown_kind() {
    let (s, c) = signed_claim();
    let mut b = s.bytes().to_vec();
    b[1] = 99;
    let e = AnySigned::verify_and_decode(&b, &ctx(c)).unwrap_err();
    assert_eq!(e, DecodeError::UnknownKind { kind: 99 });
    assert_eq!(e.peer_action(), PeerAction::Reject);
}

#[test]
fn kind_mismatch() {
    let (s, c) = signed_claim();
    let e = Signed::<Reveal>::verify_and_decode(s.bytes(), &ctx(c)).unwrap_err();
    assert_eq!(
        e,
        DecodeError::KindMismatch {
            expected: Kind::Reveal,
            found: Kind::Claim
        }
    );
}

#[test]
fn oversized_envelope_and_body() {
    let (_, c) = signed_claim();
    let big = vec![0u8; MAX_ENVELOPE_LEN + 1];
    let e = AnySigned::verify_and_decode(&big, &ctx(c)).unwrap_err();
    assert!(
        matches!(e, DecodeError::Oversized { kind: None, .. }),
        "{e}"
    );
    // A claim body over the claim limit, correctly framed and signed.
    let body = vec![0u8; Kind::Claim.max_body_len() + 1];
    let e = AnySigned::verify_and_decode(&forge(&key(1), Kind::Claim, &body), &ctx(c)).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Oversized {
                kind: Some(Kind::Claim),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.peer_action(), PeerAction::Reject);
    // A varint length longer than 5 bytes.
    let e =
        AnySigned::verify_and_decode(&[VERSION, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &ctx(c))
            .unwrap_err();
    assert!(matches!(e, DecodeError::Oversized { .. }), "{e}");
    // Encoding refuses to produce what peers would reject.
    let mut s = spec();
    s.dataset.sources = vec!["x".repeat(200); 8];
    s.name = "n".repeat(128);
    let mut r = result(1);
    if let Outcome::Success(m) = &mut r.outcome {
        m.extra = (0..16).map(|i| (format!("{i:0>32}"), i64::MAX)).collect();
        m.artifacts = vec![BlobId([9; 32]); 8];
    }
    assert!(Signed::sign_and_encode(s, &key(1)).is_ok());
    assert!(
        Signed::sign_and_encode(
            Reveal {
                campaign: c,
                job: JobId([0; 32]),
                result: r,
                salt: [0; 32],
                witnessed: Vec::new(),
                issued_at: Timestamp(0)
            },
            &key(1)
        )
        .is_ok(),
        "the largest valid reveal fits its limit"
    );
}

#[test]
fn bad_signature_and_bad_signer() {
    let (s, c) = signed_claim();
    let n = s.bytes().len();
    // Flip a body bit: the signature no longer covers these bytes.
    let mut b = s.bytes().to_vec();
    b[5] ^= 1;
    let e = Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err();
    assert_eq!(e, DecodeError::BadSignature);
    assert_eq!(e.peer_action(), PeerAction::Reject);
    // Flip a signature bit.
    let mut b = s.bytes().to_vec();
    b[n - 1] ^= 0x10;
    assert_eq!(
        Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err(),
        DecodeError::BadSignature
    );
    // Someone else's key in the signer field.
    let mut b = s.bytes().to_vec();
    b[n - 96..n - 64].copy_from_slice(key(2).public().as_bytes());
    assert_eq!(
        Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err(),
        DecodeError::BadSignature
    );
    // A small-order signer key (the identity point) is refused before any maths.
    let mut b = s.bytes().to_vec();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    b[n - 96..n - 64].copy_from_slice(&identity);
    assert_eq!(
        Signed::<Claim>::verify_and_decode(&b, &ctx(c)).unwrap_err(),
        DecodeError::BadSigner
    );
}

#[test]
fn signature_checked_before_body_is_decoded() {
    // A body that is not a claim, with a bad signature: the verdict must be the signature.
    let mut b = forge(&key(1), Kind::Claim, &[0xff; 10]);
    let n = b.len();
    b[n - 1] ^= 1;
    assert_eq!(
        AnySigned::verify_and_decode(&b, &ctx(spec().id())).unwrap_err(),
        DecodeError::BadSignature
    );
    // The same body correctly signed is then malformed.
    let b = forge(&key(1), Kind::Claim, &[0xff; 10]);
    let e = AnySigned::verify_and_decode(&b, &ctx(spec().id())).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Malformed {
                kind: Kind::Claim,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.peer_action(), PeerAction::Reject);
}

#[test]
fn non_canonical_encodings_are_refused() {
    let (s, c) = signed_claim();
    // A varint length with a redundant zero continuation byte.
    let b = s.bytes();
    let body_len = b[2] as usize;
    assert!(body_len < 0x80);
    let mut framed = vec![b[0], b[1], (body_len as u8) | 0x80, 0x00];
    framed.extend_from_slice(&b[3..3 + body_len]);
    let sig = key(1).sign(&[SIGNING_DOMAIN, &framed].concat());
    framed.extend_from_slice(key(1).public().as_bytes());
    framed.extend_from_slice(&sig);
    let e = Signed::<Claim>::verify_and_decode(&framed, &ctx(c)).unwrap_err();
    assert!(matches!(e, DecodeError::NonCanonical { .. }), "{e}");
    // A body whose map is out of order decodes but is not canonical.
    let mut r = result(5);
    if let Outcome::Success(m) = &mut r.outcome {
        m.extra = [("a".to_string(), 1), ("b".to_string(), 2)].into();
    }
    let reveal = Reveal {
        campaign: c,
        job: JobId([1; 32]),
        result: r,
        salt: [0; 32],
        witnessed: Vec::new(),
        issued_at: Timestamp(1_000_000),
    };
    let mut body = postcard::to_stdvec(&reveal).unwrap();
    let a = body.windows(2).position(|w| w == [1, b'a']).unwrap();
    let bpos = body.windows(2).position(|w| w == [1, b'b']).unwrap();
    // Swap the two entries ("a" => 1 is [1, 'a', 2], "b" => 2 is [1, 'b', 4]; zigzag varints).
    let (ea, eb) = (body[a..a + 3].to_vec(), body[bpos..bpos + 3].to_vec());
    body[a..a + 3].copy_from_slice(&eb);
    body[bpos..bpos + 3].copy_from_slice(&ea);
    let e = Signed::<Reveal>::verify_and_decode(&forge(&key(1), Kind::Reveal, &body), &ctx(c))
        .unwrap_err();
    assert_eq!(e, DecodeError::NonCanonical { kind: Kind::Reveal });
}

#[test]
fn wrong_campaign_is_a_replay() {
    let (s, c) = signed_claim();
    let mut other = spec();
    other.seed += 1;
    let e = Signed::<Claim>::verify_and_decode(s.bytes(), &ctx(other.id())).unwrap_err();
    assert_eq!(
        e,
        DecodeError::WrongCampaign {
            expected: other.id(),
            found: c
        }
    );
    assert_eq!(e.peer_action(), PeerAction::Reject);
    // A campaign spec is bound to its own id.
    let spec_msg = Signed::sign_and_encode(spec(), &key(1)).unwrap();
    assert!(Signed::<CampaignSpec>::verify_and_decode(spec_msg.bytes(), &ctx(c)).is_ok());
    assert!(matches!(
        Signed::<CampaignSpec>::verify_and_decode(spec_msg.bytes(), &ctx(other.id())),
        Err(DecodeError::WrongCampaign { .. })
    ));
}

#[test]
fn stale_and_future_messages_are_ignored() {
    let (s, c) = signed_claim();
    let late = Context::gossip(c, Timestamp(1_000_000 + 16 * 60 * 1000));
    let e = Signed::<Claim>::verify_and_decode(s.bytes(), &late).unwrap_err();
    assert!(matches!(e, DecodeError::Stale { .. }), "{e}");
    assert_eq!(e.peer_action(), PeerAction::Ignore);
    let early = Context::gossip(c, Timestamp(1_000_000 - 61_000));
    let e = Signed::<Claim>::verify_and_decode(s.bytes(), &early).unwrap_err();
    assert!(matches!(e, DecodeError::FromFuture { .. }), "{e}");
    assert_eq!(e.peer_action(), PeerAction::Ignore);
    // Ledger sync accepts history of any age.
    assert!(Signed::<Claim>::verify_and_decode(s.bytes(), &Context::sync(c)).is_ok());
}

#[test]
fn invalid_content_is_refused_at_both_ends() {
    let c = spec().id();
    let mut r = result(5);
    if let Outcome::Success(m) = &mut r.outcome {
        m.correct = m.total + 1;
    }
    let reveal = Reveal {
        campaign: c,
        job: JobId([1; 32]),
        result: r,
        salt: [0; 32],
        witnessed: Vec::new(),
        issued_at: Timestamp(1_000_000),
    };
    assert!(matches!(
        Signed::sign_and_encode(reveal.clone(), &key(1)),
        Err(EncodeError::Invalid { .. })
    ));
    let b = forge(
        &key(1),
        Kind::Reveal,
        &postcard::to_stdvec(&reveal).unwrap(),
    );
    let e = Signed::<Reveal>::verify_and_decode(&b, &ctx(c)).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Invalid {
                kind: Kind::Reveal,
                ..
            }
        ),
        "{e}"
    );
    let mut bad = spec();
    bad.quorum = 9;
    assert!(matches!(
        Signed::sign_and_encode(bad, &key(1)),
        Err(EncodeError::Invalid { .. })
    ));
}

#[test]
fn error_labels_are_distinct() {
    let (_, c) = signed_claim();
    let errors = [
        DecodeError::Truncated { needed: 1 },
        DecodeError::TrailingBytes { extra: 1 },
        DecodeError::UnknownVersion {
            version: 9,
            supported: 1,
        },
        DecodeError::UnknownKind { kind: 9 },
        DecodeError::KindMismatch {
            expected: Kind::Claim,
            found: Kind::Reveal,
        },
        DecodeError::Oversized {
            kind: None,
            size: 1,
            limit: 0,
        },
        DecodeError::BadSigner,
        DecodeError::BadSignature,
        DecodeError::Malformed {
            kind: Kind::Claim,
            reason: String::new(),
        },
        DecodeError::NonCanonical { kind: Kind::Claim },
        DecodeError::WrongCampaign {
            expected: c,
            found: c,
        },
        DecodeError::Stale {
            age_ms: 1,
            max_age_ms: 0,
        },
        DecodeError::FromFuture {
            ahead_ms: 1,
            max_skew_ms: 0,
        },
        DecodeError::Invalid {
            kind: Kind::Claim,
            reason: String::new(),
        },
    ];
    let labels: std::collections::BTreeSet<_> = errors.iter().map(|e| e.label()).collect();
    assert_eq!(labels.len(), errors.len());
}

#[test]
fn batch_verification_agrees_with_single() {
    let c = spec().id();
    let mut wire: Vec<Vec<u8>> = (0..40)
        .map(
            |i| match claim(&key(i % 7), c, JobId([i as u8; 32]), 1_000_000) {
                AnySigned::Claim(s) => s.bytes().to_vec(),
                _ => unreachable!(),
            },
        )
        .collect();
    let all_good: Vec<_> = verify_batch(wire.iter().map(|b| Envelope::parse(b).unwrap()).collect());
    assert!(all_good.iter().all(Result::is_ok));
    // Corrupt two signatures: the batch fails and falls back to per-message verdicts.
    for i in [3, 17] {
        let n = wire[i].len();
        wire[i][n - 5] ^= 0x40;
    }
    let batch: Vec<bool> = verify_batch(wire.iter().map(|b| Envelope::parse(b).unwrap()).collect())
        .into_iter()
        .map(|r| r.is_ok())
        .collect();
    let single: Vec<bool> = wire
        .iter()
        .map(|b| Envelope::parse(b).unwrap().verify().is_ok())
        .collect();
    assert_eq!(batch, single);
    assert_eq!(batch.iter().filter(|ok| !**ok).count(), 2);

    // A small-order signer among good messages is refused alone; the rest still verify.
    let mut wire: Vec<Vec<u8>> = wire
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 17)
        .map(|(_, w)| w)
        .collect();
    let n = wire[5].len();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    wire[5][n - 96..n - 64].copy_from_slice(&identity);
    let verdicts = verify_batch(wire.iter().map(|b| Envelope::parse(b).unwrap()).collect());
    for (i, v) in verdicts.iter().enumerate() {
        if i == 5 {
            assert_eq!(v.as_ref().unwrap_err(), &DecodeError::BadSigner);
        } else {
            assert!(v.is_ok(), "message {i}");
        }
    }
}

#[test]
fn a_closure_proposal_may_be_larger_than_a_campaign() {
    // A proposal grows with its generation (one entry per job): the frame limit is the largest
    // kind's. Sized by the campaign's limit, a closure of 128 settled jobs could not be
    // published and its generation never closed.
    let (_, c) = signed_claim();
    let body = vec![0u8; 4 * Kind::Campaign.max_body_len()];
    let e =
        AnySigned::verify_and_decode(&forge(&key(1), Kind::Proposal, &body), &ctx(c)).unwrap_err();
    assert!(!matches!(e, DecodeError::Oversized { .. }), "{e}");
    assert!(MAX_ENVELOPE_LEN > Kind::Proposal.max_body_len());
}
