//! Shared fixtures of the protocol fuzz targets: one small valid campaign, the keys that sign
//! for it, and valid encodings to seed the corpora with (`cargo run --example seeds`).

use std::sync::{Arc, LazyLock};

use hivemesh_protocol::closure::{Closure, Entry};
use hivemesh_protocol::derive::{Derivation, DerivationCache};
use hivemesh_protocol::envelope::seal;
use hivemesh_protocol::spec::Schedule;
use hivemesh_protocol::{
    BackendClass, BlobId, CampaignId, CampaignSpec, DatasetRef, Keypair, Kind, LrSchedule,
    NasParams, NasSpace, Optimizer, Proposal, Search, Strategy, Timestamp, Tolerance,
    TrainingBudget,
};

/// When the fixture campaign was created (ms).
pub const CREATED_AT: Timestamp = Timestamp(1_000_000);

static SIGNER: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_secret_bytes([7; 32]));
static RECEIVER: LazyLock<Keypair> = LazyLock::new(|| Keypair::from_secret_bytes([9; 32]));
static SPEC: LazyLock<CampaignSpec> = LazyLock::new(make_spec);
static DERIVATIONS: LazyLock<DerivationCache> = LazyLock::new(DerivationCache::default);

/// Job derivation shared by every peer a target starts (each generation of a campaign is
/// derived once per process; results are the same as without it).
pub fn derivations() -> DerivationCache {
    DERIVATIONS.clone()
}

/// The key that signs fuzzed messages: the submitter, and a roster member.
pub fn signer() -> Keypair {
    SIGNER.clone()
}

/// The key of the peer that receives them: the other roster member.
pub fn receiver() -> Keypair {
    RECEIVER.clone()
}

/// A small valid NAS campaign whose roster is [`signer`] and [`receiver`].
pub fn spec() -> CampaignSpec {
    SPEC.clone()
}

fn make_spec() -> CampaignSpec {
    let mut roster = vec![signer().public(), receiver().public()];
    roster.sort();
    CampaignSpec {
        name: "fuzz".into(),
        created_at: CREATED_AT,
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 2,
                widths: vec![8, 16],
            },
            strategy: Strategy::Nsga2,
            population: 4,
            generations: 2,
        }),
        dataset: DatasetRef {
            id: BlobId::of_bytes(b"data"),
            name: "digits-8x8".into(),
            sources: vec!["builtin:digits".into()],
            bytes: 1 << 20,
        },
        budget: TrainingBudget {
            epochs: 1,
            max_steps: Some(10),
            batch_size: 16,
            optimizer: Optimizer::Sgd { momentum: 0.9 },
            learning_rate: 0.05,
            schedule: LrSchedule::Cosine,
        },
        seed: 7,
        redundancy: 2,
        quorum: 1,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 100_000,
        backend: BackendClass::CpuNdarray,
        code_version: "fuzz".into(),
        roster,
        schedule: Schedule::default(),
    }
}

/// The fixture campaign's id.
pub fn campaign() -> CampaignId {
    spec().id()
}

/// Postcard body of the fixture spec (the input format of `campaign_announcement`'s sealed
/// mode, after its mode byte).
pub fn spec_body() -> Vec<u8> {
    postcard::to_allocvec(&spec()).expect("the fixture spec encodes")
}

/// The fixture spec signed by [`signer`], as gossiped.
pub fn spec_envelope() -> Vec<u8> {
    seal(Kind::Campaign as u8, &spec_body(), &signer())
}

/// Proposals for generation 0 of the fixture campaign (empty, and voiding every job), in
/// rounds 0 to 2.
pub fn proposals() -> Vec<Proposal> {
    let spec = spec();
    let jobs: Vec<_> = Derivation::new(&spec)
        .map(|mut d| d.generation_zero().iter().map(|j| j.id()).collect())
        .unwrap_or_default();
    let mut voided: Vec<Entry> = jobs.into_iter().map(|job| Entry::Void {
            job,
            reason: hivemesh_protocol::closure::VoidReason::NoClaim,
        }).collect();
    voided.sort_by_key(|e| e.job());
    let mut out = Vec::new();
    for entries in [Vec::new(), voided] {
        for round in 0..3 {
            let closure = Closure {
                campaign: spec.id(),
                generation: 0,
                previous: [0; 32],
                entries: entries.clone(),
                verdicts: Vec::new(),
                members: spec.roster.clone(),
                deadline_ms: 60_000,
            };
            out.push(Proposal {
                campaign: spec.id(),
                round,
                valid_round: round.checked_sub(1),
                closure: Arc::new(closure),
                issued_at: Timestamp(CREATED_AT.0 + 1_000),
            });
        }
    }
    out
}

/// What a node makes of an announcement input of `campaign_announcement` and `campaign_follow`:
/// a mode byte, then raw envelope bytes (even: decoded as gossip, announcement context) or a
/// campaign body that [`signer`] seals (odd: a malicious submitter). The accepted campaign, if
/// any; an accepted spec must validate and keep its exact bytes (checked here).
pub fn announced_campaign(data: &[u8]) -> Option<hivemesh_protocol::Signed<CampaignSpec>> {
    use hivemesh_protocol::{AnySigned, Context};
    let (&mode, rest) = data.split_first()?;
    let (bytes, ctx) = if mode % 2 == 0 {
        (rest.to_vec(), Context::announcement(CREATED_AT))
    } else {
        let ctx = Context {
            campaign: None,
            ..Context::sync(CampaignId([0; 32]))
        };
        (seal(Kind::Campaign as u8, rest, &signer()), ctx)
    };
    let any = AnySigned::verify_and_decode(&bytes, &ctx).ok()?;
    assert_eq!(any.bytes(), &bytes[..]);
    let AnySigned::Campaign(signed) = any else {
        return None;
    };
    signed
        .message()
        .validate()
        .expect("an accepted campaign spec validates");
    let _ = signed.message().id();
    Some(signed)
}
