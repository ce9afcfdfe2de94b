//! `federated` jobs on the executor (ADR 0010): the four steps of a round with secure
//! aggregation run by several clients, one dropping after its deal and one never dealing,
//! and every node unmasking the same sums; a plain round dropping and flagging an update
//! above the norm limit.

use std::collections::BTreeMap;

use hivemesh_evolve::arch::{Architecture, MlpSpace, Shape};
use hivemesh_node::executor::{CODE_VERSION, Executed, Executor, builtin_digits};
use hivemesh_protocol::Tolerance;
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::identity::{Keypair, PeerKey};
use hivemesh_protocol::kinds::federated::flags_of;
use hivemesh_protocol::message::{Metrics, Outcome};
use hivemesh_protocol::spec::{
    Aggregate, BackendClass, CampaignSpec, FedJob, FederatedParams, JobPayload, JobSpec,
    LrSchedule, Optimizer, OuterStep, Schedule, Search, SecureAggregation, SecureRound, SecureStep,
    TrainingBudget,
};
use hivemesh_protocol::time::Timestamp;
use hivemesh_trainer::backend::Device;
use hivemesh_trainer::data::{Dataset, Values, digits};
use hivemesh_trainer::rounds::{Encoding, Update};

type Blobs = BTreeMap<BlobId, Vec<u8>>;

fn model() -> Architecture {
    MlpSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        max_layers: 1,
        widths: vec![16],
    }
    .decode(&[1])
    .expect("valid")
}

fn params(model: BlobId, secure: Option<SecureAggregation>) -> FederatedParams {
    FederatedParams {
        model,
        private_data: "wards".into(),
        rounds: 2,
        clients_per_round: 6,
        min_clients: 2,
        local_steps: 30,
        example_privacy: None,
        client_privacy: None,
        delta: 1e-5,
        epsilon_budget: None,
        norm_bound: 5.0,
        aggregate: Aggregate::Mean,
        outer: OuterStep::Average,
        secure,
        features: hivemesh_protocol::spec::Features::Values,
    }
}

fn campaign(p: FederatedParams) -> CampaignSpec {
    CampaignSpec {
        name: "federated-executor-test".into(),
        created_at: Timestamp(1_700_000_000_000),
        search: Search::Federated(p),
        dataset: builtin_digits(),
        budget: TrainingBudget {
            epochs: 1,
            max_steps: None,
            batch_size: 16,
            optimizer: Optimizer::Adam,
            learning_rate: 2e-2,
            schedule: LrSchedule::Constant,
        },
        seed: 7,
        redundancy: 2,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: CODE_VERSION.into(),
        roster: Vec::new(),
        schedule: Schedule::default(),
    }
}

/// Client `k` of `n`: every `n`-th digit from `k`, as its private `wards` data.
fn client(k: usize, n: usize) -> (PeerKey, Executor) {
    let d = digits();
    let Values::U8 { data, max } = &d.values else {
        panic!("bytes")
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in (k..d.len()).step_by(n) {
        pixels.extend_from_slice(&data[i * 64..(i + 1) * 64]);
        labels.push(d.labels[i]);
    }
    let mine = Dataset::of_bytes("ward", d.shape, 10, *max, pixels, labels).expect("a dataset");
    let key = Keypair::from_secret_bytes([k as u8 + 1; 32]);
    let exec = Executor::default()
        .with_private_data(BTreeMap::from([("wards".into(), mine)]), [k as u8 + 40; 32]);
    (key.public(), exec)
}

fn job(spec: &CampaignSpec, generation: u32, f: FedJob) -> JobSpec {
    JobSpec {
        campaign: spec.id(),
        generation,
        index: 0,
        payload: JobPayload::Federated(f),
        seed: 1,
        code_version: CODE_VERSION.into(),
        backend: BackendClass::CpuNdarray,
        compute: 1,
    }
}

fn fed_job(base: BlobId, client: Option<PeerKey>, step: SecureStep) -> FedJob {
    FedJob {
        round: 0,
        client,
        population: 6,
        base,
        updates: Vec::new(),
        sums: None,
        step,
        secure: None,
    }
}

fn run(exec: &Executor, spec: &CampaignSpec, j: &JobSpec, blobs: &mut Blobs) -> Metrics {
    let done: Executed = exec
        .run(spec, j, Device::Cpu, &*blobs, &mut |_| {})
        .expect("runs");
    blobs.extend(done.blobs.iter().cloned());
    match done.result.outcome {
        Outcome::Success(m) => m,
        Outcome::Failure(f) => panic!("{f:?}"),
    }
}

/// Six clients: client 5 never deals (left out of every mask), client 3 deals but never
/// sends its masked update (its masks are removed from the shares the others reveal). Every
/// node that builds round 1's start model from the agreed blobs gets the same model, which
/// is the base moved by the survivors' mean (better than the base on public data). Without
/// enough reveals the group cannot be unmasked and the model stays as it was.
#[test]
fn a_secure_round_survives_a_dropout_and_a_client_that_never_dealt() {
    let arch = postcard::to_stdvec(&model()).expect("IR");
    let model_id = BlobId::of_bytes(&arch);
    let mut blobs = Blobs::from([(model_id, arch)]);
    let secure = SecureAggregation {
        buckets: 1,
        neighbours: 0,
    };
    let spec = campaign(params(model_id, Some(secure)));
    let clients: Vec<(PeerKey, Executor)> = (0..6).map(|k| client(k, 6)).collect();
    let mut round = SecureRound {
        round: 0,
        sampled: 6,
        ..SecureRound::default()
    };
    for (key, exec) in &clients {
        let j = job(&spec, 0, fed_job(model_id, Some(*key), SecureStep::Keys));
        let keys = run(exec, &spec, &j, &mut blobs).artifacts[0];
        round.roster.push((*key, keys));
    }
    // Client 5 never deals.
    for (i, (key, exec)) in clients.iter().enumerate() {
        let mut f = fed_job(model_id, Some(*key), SecureStep::Deal);
        f.secure = Some(round.clone());
        let dealt = (i < 5).then(|| run(exec, &spec, &job(&spec, 1, f), &mut blobs).artifacts[0]);
        round.deals.push(dealt);
    }
    // Client 3 drops before sending its masked update.
    let mut starts = Vec::new();
    for (i, (key, exec)) in clients.iter().enumerate() {
        let mut f = fed_job(model_id, Some(*key), SecureStep::Mask);
        f.secure = Some(round.clone());
        if i != 3 && i < 5 {
            let m = run(exec, &spec, &job(&spec, 2, f), &mut blobs);
            assert_eq!(m.artifacts.len(), 2, "masked update, start model");
            starts.push(m.artifacts[1]);
            round.masked.push(Some(m.artifacts[0]));
        } else {
            round.masked.push(None);
        }
    }
    assert!(starts.windows(2).all(|w| w[0] == w[1]), "one start model");
    for (i, (key, exec)) in clients.iter().enumerate() {
        let mut f = fed_job(model_id, Some(*key), SecureStep::Reveal);
        f.secure = Some(round.clone());
        let r =
            (i != 3 && i < 5).then(|| run(exec, &spec, &job(&spec, 3, f), &mut blobs).artifacts[0]);
        round.reveals.push(r);
    }
    // Round 1's start, built by two different nodes (a client and a non-client evaluating).
    let next = |round: &SecureRound, blobs: &mut Blobs, who: usize| {
        let mut f = fed_job(starts[0], None, SecureStep::Train);
        f.round = 2;
        f.sums = Some(round.clone());
        run(&clients[who].1, &spec, &job(&spec, 4, f), blobs)
    };
    let a = next(&round, &mut blobs, 0);
    let b = next(&round, &mut blobs, 5);
    assert_eq!(a.artifacts, b.artifacts, "every node unmasks the same sums");
    assert_ne!(a.artifacts[0], starts[0], "the sums moved the model");
    assert!(
        flags_of(&a.extra).is_empty(),
        "no one at fault: {:?}",
        a.extra
    );
    // The base evaluated on the same (test) split, for comparison.
    let mut unmoved = round.clone();
    unmoved.reveals = vec![None; 6];
    let c = next(&unmoved, &mut blobs, 0);
    assert_eq!(
        c.artifacts[0], starts[0],
        "no reveals: the model stays as it was"
    );
    assert!(a.correct > c.correct, "{} vs {}", a.correct, c.correct);
    // A revealer that lies about a share is named by every node that unmasks.
    let liar = round.reveals[1].expect("revealed");
    let mut r: hivemesh_protocol::secagg::Reveal =
        postcard::from_bytes(&blobs[&liar]).expect("a reveal");
    r.self_shares[0].1[0] ^= 1;
    let lie = postcard::to_stdvec(&r).expect("encoded");
    let lie_id = BlobId::of_bytes(&lie);
    blobs.insert(lie_id, lie);
    let mut lied = round.clone();
    lied.reveals[1] = Some(lie_id);
    let d = next(&lied, &mut blobs, 2);
    assert_eq!(flags_of(&d.extra), vec![1], "{:?}", d.extra);
}

/// Without secure aggregation: an honest client bounds its own update to `norm_bound`; an
/// agreed update above the bound is dropped (not scaled) and its position flagged in the
/// next round's result; the start model is the outer step over the rest.
#[test]
fn an_update_above_the_norm_bound_is_dropped_and_flagged() {
    use hivemesh_trainer::rounds::{Combine, Outer, TrainState, outer_step};
    let arch = postcard::to_stdvec(&model()).expect("IR");
    let model_id = BlobId::of_bytes(&arch);
    let mut blobs = Blobs::from([(model_id, arch)]);
    let spec = campaign(params(model_id, None));
    let clients: Vec<(PeerKey, Executor)> = (0..2).map(|k| client(k, 2)).collect();
    let mut updates = Vec::new();
    let mut start = model_id;
    for (key, exec) in &clients {
        let m = run(
            exec,
            &spec,
            &job(&spec, 0, fed_job(model_id, Some(*key), SecureStep::Train)),
            &mut blobs,
        );
        updates.push(m.artifacts[0]);
        start = m.artifacts[1];
        let u = Update::decode(&blobs[&m.artifacts[0]]).expect("an update");
        assert!(
            u.norm() <= 5.0 * (1.0 + 1e-6),
            "bounded by its client: {}",
            u.norm()
        );
    }
    // Client 0's update, ten times larger.
    let mut big = Update::decode(&blobs[&updates[0]]).expect("an update");
    for t in &mut big.tensors {
        let scaled: Vec<u8> = t
            .data
            .chunks_exact(4)
            .flat_map(|b| (10.0 * f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        t.data = scaled;
    }
    let big_bytes = big.encode(Encoding::F32);
    let big_id = BlobId::of_bytes(&big_bytes);
    blobs.insert(big_id, big_bytes);
    let mut f = fed_job(start, Some(clients[1].0), SecureStep::Train);
    f.round = 1;
    f.updates = vec![big_id, updates[1]];
    let m = run(&clients[1].1, &spec, &job(&spec, 1, f), &mut blobs);
    assert_eq!(flags_of(&m.extra), vec![0], "{:?}", m.extra);
    let state = TrainState::from_bytes(&blobs[&start]).expect("a state");
    let expected = outer_step(
        &state,
        &[Update::decode(&blobs[&updates[1]]).expect("update")],
        Outer::Average,
        Combine::Mean,
    );
    assert_eq!(m.artifacts[1], BlobId::of_bytes(&expected.to_bytes()));
}

/// With `features = scattering` every client trains on the scattering features of its own
/// private images, and every job measures on the features of the public split: a linear model
/// built for the features' shape learns the digits in one round of two clients, the same job
/// gives the same update on two executors, and a model built for the raw pixels is refused
/// with the shapes named.
#[test]
fn scattering_features_train_a_linear_model_on_private_images() {
    use hivemesh_protocol::spec::Features;
    let shape = hivemesh_node::executor::feature_shape(&Features::SCATTERING, model().input)
        .expect("8x8 images");
    assert_eq!(shape, Shape::Image { c: 81, h: 2, w: 2 });
    let arch = postcard::to_stdvec(&hivemesh_trainer::zoo::linear(shape, 10)).expect("IR");
    let model_id = BlobId::of_bytes(&arch);
    let mut blobs = Blobs::from([(model_id, arch)]);
    let mut p = params(model_id, None);
    p.features = Features::SCATTERING;
    let spec = campaign(p.clone());
    let clients: Vec<(PeerKey, Executor)> = (0..2).map(|k| client(k, 2)).collect();
    let mut updates = Vec::new();
    let mut start = model_id;
    for (key, exec) in &clients {
        let j = job(&spec, 0, fed_job(model_id, Some(*key), SecureStep::Train));
        let m = run(exec, &spec, &j, &mut blobs);
        // A second executor with the same private data and secret, its features computed
        // ahead (as a node does when it follows the campaign): the same update.
        let warm = client(updates.len(), 2).1;
        warm.warm_private_features("wards", &Features::SCATTERING);
        let again = run(&warm, &spec, &j, &mut blobs);
        assert_eq!(m.artifacts, again.artifacts, "deterministic");
        updates.push(m.artifacts[0]);
        start = m.artifacts[1];
    }
    let mut f = fed_job(start, None, SecureStep::Train);
    f.round = 1;
    f.updates = updates;
    let before = run(
        &clients[0].1,
        &spec,
        &job(&spec, 1, fed_job(model_id, None, SecureStep::Train)),
        &mut blobs,
    );
    let after = run(&clients[0].1, &spec, &job(&spec, 1, f), &mut blobs);
    assert_eq!(after.total, before.total);
    assert!(
        after.correct * 10 >= after.total * 8 && after.correct > before.correct,
        "one round on scattering features: {} of {} correct (untrained: {})",
        after.correct,
        after.total,
        before.correct
    );

    // A model for the raw 8x8 pixels does not take the features.
    let pixels = postcard::to_stdvec(&model()).expect("IR");
    let pixels_id = BlobId::of_bytes(&pixels);
    blobs.insert(pixels_id, pixels);
    p.model = pixels_id;
    let spec = campaign(p);
    let j = job(
        &spec,
        0,
        fed_job(pixels_id, Some(clients[0].0), SecureStep::Train),
    );
    let done = clients[0]
        .1
        .run(&spec, &j, Device::Cpu, &blobs, &mut |_| {})
        .expect("runs");
    match done.result.outcome {
        Outcome::Failure(f) => assert!(f.detail.contains("81"), "{f:?}"),
        Outcome::Success(m) => panic!("a pixel model trained on features: {m:?}"),
    }
}

/// Features a node cannot compute are refused before any work: flat records and images too
/// small for the transform keep a node out of the campaign (the daemon follows it with no
/// slots), and features over the node's job memory limit fail the job before they are built.
#[test]
fn scattering_features_are_refused_where_they_cannot_be_computed() {
    use hivemesh_protocol::spec::Features;
    let shape = Shape::Image { c: 81, h: 2, w: 2 };
    let arch = postcard::to_stdvec(&hivemesh_trainer::zoo::linear(shape, 10)).expect("IR");
    let model_id = BlobId::of_bytes(&arch);
    let blobs = Blobs::from([(model_id, arch)]);
    let clients: Vec<(PeerKey, Executor)> = (0..1).map(|k| client(k, 2)).collect();
    // A node offering flat records, or images too small for the transform, does not take
    // part (the daemon follows the campaign with no slots); images that fit do.
    let flat = Dataset::of_bytes(
        "rows",
        Shape::Flat(64),
        10,
        16,
        vec![1; 64 * 4],
        vec![0, 1, 2, 3],
    )
    .expect("a dataset");
    let offers = |d: Dataset| {
        Executor::default().with_private_data(BTreeMap::from([("wards".into(), d)]), [1; 32])
    };
    let why = offers(flat)
        .private_features_refusal("wards", &Features::SCATTERING)
        .expect("flat records");
    assert!(why.contains("images"), "{why}");
    let deep = Features::Scattering {
        scales: 4,
        angles: 8,
        groups: 0,
    };
    let why = offers(digits())
        .private_features_refusal("wards", &deep)
        .expect("8x8 < 2^4");
    assert!(why.contains("8x8"), "{why}");
    assert_eq!(
        offers(digits()).private_features_refusal("wards", &Features::SCATTERING),
        None
    );
    assert_eq!(
        offers(digits()).private_features_refusal("other", &deep),
        None,
        "not offered"
    );

    // A node whose job memory limit the features would pass computes none of them.
    let tight = hivemesh_node::admission::Admission {
        max_job_memory: 100_000,
        ..Default::default()
    };
    let small = Executor::new(&tight)
        .with_private_data(BTreeMap::from([("wards".into(), digits())]), [40; 32]);
    let mut p = params(model_id, None);
    p.features = Features::SCATTERING;
    let spec = campaign(p);
    let j = job(
        &spec,
        0,
        fed_job(model_id, Some(clients[0].0), SecureStep::Train),
    );
    let done = small
        .run(&spec, &j, Device::Cpu, &blobs, &mut |_| {})
        .expect("runs");
    match done.result.outcome {
        Outcome::Failure(f) => assert!(f.detail.contains("memory limit"), "{f:?}"),
        Outcome::Success(m) => panic!("features over the memory limit: {m:?}"),
    }
}
