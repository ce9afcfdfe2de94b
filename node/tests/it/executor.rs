//! The executor runs protocol jobs with the trainer: real results for each job kind,
//! deterministic failures as results, and "cannot run here" as errors.

use hivemesh_trainer::backend::Device;
use std::collections::BTreeMap;

use hivemesh_evolve::arch::{Architecture, MlpSpace, Shape};
use hivemesh_evolve::gp::Expr;
use hivemesh_node::executor::{CODE_VERSION, ExecError, Executed, Executor, builtin_digits};
use hivemesh_protocol::Tolerance;
use hivemesh_protocol::derive::{Derivation, decode_genome};
use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::identity::Keypair;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, DistillParams, JobPayload, JobSpec, LossParams, LrSchedule,
    NasParams, NasSpace, Optimizer, Schedule, Search, Strategy, TrainingBudget,
};
use hivemesh_protocol::time::Timestamp;
use hivemesh_trainer::distill::ShardLabels;
use hivemesh_trainer::model::{Model, WeightsFile};

type Blobs = BTreeMap<BlobId, Vec<u8>>;

fn campaign(search: Search) -> CampaignSpec {
    CampaignSpec {
        name: "executor-test".into(),
        created_at: Timestamp(1_700_000_000_000),
        search,
        dataset: builtin_digits(),
        budget: TrainingBudget {
            epochs: 1,
            max_steps: Some(40),
            batch_size: 32,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-2,
            schedule: LrSchedule::Constant,
        },
        seed: 7,
        redundancy: 3,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: CODE_VERSION.into(),
        roster: vec![Keypair::from_secret_bytes([1; 32]).public()],
        schedule: Schedule::default(),
    }
}

fn nas_space() -> NasSpace {
    NasSpace::Mlp {
        max_layers: 2,
        widths: vec![16, 32],
    }
}

fn nas_campaign() -> CampaignSpec {
    campaign(Search::Nas(NasParams {
        space: nas_space(),
        strategy: Strategy::Nsga2,
        population: 4,
        generations: 2,
    }))
}

fn first_job(spec: &CampaignSpec) -> JobSpec {
    let mut d = Derivation::new(spec).expect("derivation");
    d.generation_zero()[0].clone()
}

fn run(spec: &CampaignSpec, job: &JobSpec, blobs: &Blobs) -> Result<Executed, ExecError> {
    let device = match job.backend {
        hivemesh_protocol::BackendClass::CpuNdarray => Device::Cpu,
        hivemesh_protocol::BackendClass::Cuda => Device::Cuda(0),
    };
    Executor::default().run(spec, job, device, blobs, &mut |_| {})
}

fn success(e: &Executed) -> &Metrics {
    match &e.result.outcome {
        Outcome::Success(m) => m,
        Outcome::Failure(f) => panic!("expected success, got {f:?}"),
    }
}

fn digits_mlp(width: u32) -> Architecture {
    MlpSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        max_layers: 1,
        widths: vec![width],
    }
    .decode(&[1])
    .expect("valid")
}

#[test]
fn a_nas_job_trains_reproducibly_and_reports_the_irs_size_and_its_weights() {
    let spec = nas_campaign();
    let job = first_job(&spec);
    let a = run(&spec, &job, &Blobs::new()).expect("runs");
    let b = run(&spec, &job, &Blobs::new()).expect("runs");
    assert_eq!(a.result.outcome, b.result.outcome, "same job, same outcome");
    assert_eq!(a.blobs, b.blobs, "same weights, bit for bit");

    let m = success(&a);
    // The genome decoded against the data gives the reported size.
    let JobPayload::Nas { genome } = &job.payload else {
        panic!("a NAS job")
    };
    let genes = decode_genome(genome).expect("decodes");
    let arch = MlpSpace {
        input: Shape::Image { c: 1, h: 8, w: 8 },
        classes: 10,
        max_layers: 2,
        widths: vec![16, 32],
    }
    .decode(&genes)
    .expect("valid");
    assert_eq!(m.params, arch.params().expect("params"));
    assert_eq!(m.flops, arch.flops().expect("flops"));
    // It learned something in 40 steps (10 classes: chance is 0.1).
    assert!(
        m.total > 0 && m.correct * 2 > m.total,
        "{}/{}",
        m.correct,
        m.total
    );
    // The artifact is the weights file, named by the hash of its bytes.
    assert_eq!(m.artifacts.len(), 1);
    let (id, bytes) = &a.blobs[0];
    assert_eq!(m.artifacts[0], *id);
    assert_eq!(BlobId::of_bytes(bytes), *id);
    let w = WeightsFile::from_bytes(bytes).expect("a weights file");
    assert_eq!(w.arch, arch);
}

#[test]
fn jobs_this_node_cannot_run_are_errors_not_results() {
    let spec = nas_campaign();
    let job = first_job(&spec);

    let mut other_version = job.clone();
    other_version.code_version = "hivemesh-trainer/0.0.1".into();
    let e = run(&spec, &other_version, &Blobs::new()).expect_err("refused");
    assert!(matches!(e, ExecError::CodeVersion { .. }), "{e}");

    let mut cuda = job.clone();
    cuda.backend = BackendClass::Cuda;
    let e = run(&spec, &cuda, &Blobs::new()).expect_err("refused");
    assert!(e.to_string().to_lowercase().contains("cuda"), "{e}");

    let mut other = nas_campaign();
    other.seed += 1;
    let e = run(&other, &job, &Blobs::new()).expect_err("refused");
    assert!(matches!(e, ExecError::WrongCampaign { .. }), "{e}");

    let mut wrong_data = nas_campaign();
    wrong_data.dataset.id = BlobId::of_bytes(b"not the digits");
    let job = first_job(&wrong_data);
    let e = run(&wrong_data, &job, &Blobs::new()).expect_err("refused");
    assert!(e.to_string().contains("embedded digits have id"), "{e}");
    wrong_data.dataset.sources = vec!["builtin:cifar".into()];
    let job = first_job(&wrong_data);
    let e = run(&wrong_data, &job, &Blobs::new()).expect_err("refused");
    assert!(e.to_string().contains("no built-in dataset `cifar`"), "{e}");
    // An uploaded dataset this node has not fetched.
    wrong_data.dataset.sources = Vec::new();
    let job = first_job(&wrong_data);
    let e = run(&wrong_data, &job, &Blobs::new()).expect_err("refused");
    assert!(matches!(e, ExecError::Data { .. }), "{e}");
    assert!(e.to_string().contains("not in the store"), "{e}");
}

#[test]
fn a_dataset_blob_trains_like_the_builtin_and_a_broken_one_fails_the_job() {
    use hivemesh_trainer::data::{DatasetBlob, digits};
    let builtin = nas_campaign();
    let blob = DatasetBlob::Samples(digits()).encode();
    let mut uploaded = nas_campaign();
    uploaded.dataset.sources = Vec::new();
    uploaded.dataset.bytes = blob.len() as u64;
    assert_eq!(
        uploaded.dataset.id,
        BlobId::of_bytes(&blob),
        "the dataset id is the blob's"
    );
    let mut blobs = Blobs::new();
    blobs.insert(uploaded.dataset.id, blob.clone());
    let a = run(&builtin, &first_job(&builtin), &Blobs::new()).expect("builtin");
    let b = run(&uploaded, &first_job(&uploaded), &blobs).expect("uploaded");
    let (Outcome::Success(a), Outcome::Success(b)) = (&a.result.outcome, &b.result.outcome) else {
        panic!("both train: {a:?} {b:?}");
    };
    assert_eq!(a.total, b.total, "the same test split");
    let again = run(&uploaded, &first_job(&uploaded), &blobs).expect("again");
    assert_eq!(
        again.result.outcome,
        Outcome::Success(b.clone()),
        "bit-identical"
    );
    // A blob that hashes to its id but is not a dataset: the job fails the same everywhere.
    let junk = b"HMDS\x01\x00 not a dataset".to_vec();
    let mut broken = nas_campaign();
    broken.dataset.id = BlobId::of_bytes(&junk);
    broken.dataset.sources = Vec::new();
    blobs.insert(broken.dataset.id, junk);
    let r = run(&broken, &first_job(&broken), &blobs).expect("a result");
    let Outcome::Failure(f) = &r.result.outcome else {
        panic!("{:?}", r.result.outcome);
    };
    assert_eq!(f.kind, FailureKind::InvalidJob);
    assert!(f.detail.contains("dataset"), "{}", f.detail);
}

#[test]
fn a_genome_that_does_not_decode_is_an_invalid_job_result() {
    let spec = nas_campaign();
    let mut job = first_job(&spec);
    job.payload = JobPayload::Nas {
        genome: vec![0xff; 3],
    };
    let e = run(&spec, &job, &Blobs::new()).expect("a result");
    match &e.result.outcome {
        Outcome::Failure(f) => assert_eq!(f.kind, FailureKind::InvalidJob),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_distill_job_labels_its_shard_with_the_teacher_from_the_store() {
    let arch = digits_mlp(16);
    let teacher = Model::<hivemesh_trainer::Cpu>::new(&arch, [3; 32], &Default::default())
        .expect("builds")
        .weights_file(&arch)
        .to_bytes();
    let teacher_id = BlobId::of_bytes(&teacher);
    let spec = campaign(Search::Distill(DistillParams {
        teacher: teacher_id,
        top_k: 3,
        shard_size: 500,
        samples: 1000,
    }));
    let jobs = Derivation::new(&spec)
        .expect("derivation")
        .generation_zero()
        .to_vec();
    assert_eq!(jobs.len(), 2);
    let mut blobs = Blobs::new();

    let e = run(&spec, &jobs[1], &blobs).expect_err("no teacher yet");
    assert!(
        matches!(
            e,
            ExecError::Blob {
                what: "teacher",
                ..
            }
        ),
        "{e}"
    );
    blobs.insert(teacher_id, b"not the teacher".to_vec());
    let e = run(&spec, &jobs[1], &blobs).expect_err("wrong bytes");
    assert!(e.to_string().contains("do not hash to the id"), "{e}");

    blobs.insert(teacher_id, teacher);
    let a = run(&spec, &jobs[1], &blobs).expect("runs");
    let m = success(&a);
    assert_eq!((m.total, m.params), (500, arch.params().expect("params")));
    assert!(m.correct <= m.total);
    let (id, shard) = &a.blobs[0];
    assert_eq!((m.artifacts[0], BlobId::of_bytes(shard)), (*id, *id));
    let labels = ShardLabels::from_bytes(shard).expect("a shard blob");
    assert_eq!((labels.start, labels.len(), labels.k), (500, 500, 3));
    assert!(m.extra.contains_key("fingerprint"));
    let b = run(&spec, &jobs[1], &blobs).expect("runs");
    assert_eq!(a.result.outcome, b.result.outcome);
}

#[test]
fn a_loss_job_trains_the_reference_model_from_the_store() {
    let reference = digits_mlp(32);
    let bytes = postcard::to_stdvec(&reference).expect("encodes");
    let id = BlobId::of_bytes(&bytes);
    let spec = campaign(Search::Loss(LossParams {
        population: 4,
        generations: 1,
        max_depth: 4,
        max_size: 16,
        reference_model: id,
        constant_tuning_steps: 2,
    }));
    let mut job = first_job(&spec);
    job.payload = JobPayload::Loss {
        expression: postcard::to_stdvec(&Expr::cross_entropy()).expect("encodes"),
    };
    let blobs: Blobs = [(id, bytes)].into();
    let a = run(&spec, &job, &blobs).expect("runs");
    let m = success(&a);
    assert_eq!(m.params, reference.params().expect("params"));
    assert!(m.correct * 2 > m.total, "{}/{}", m.correct, m.total);
    assert_eq!(
        a.result.outcome,
        run(&spec, &job, &blobs).expect("runs").result.outcome
    );

    let e = run(&spec, &job, &Blobs::new()).expect_err("no reference model");
    assert!(
        matches!(
            e,
            ExecError::Blob {
                what: "reference model",
                ..
            }
        ),
        "{e}"
    );
}

fn train_campaign(model: BlobId) -> CampaignSpec {
    use hivemesh_protocol::spec::{Aggregate, OuterStep, TrainParams, UpdateEncoding};
    campaign(Search::Train(TrainParams {
        model,
        rounds: 2,
        segments: 2,
        segment_size: 200,
        inner_steps: 20,
        outer: OuterStep::Nesterov {
            learning_rate: 0.7,
            momentum: 0.9,
        },
        aggregate: Aggregate::Mean,
        encoding: UpdateEncoding::F32,
    }))
}

/// `train` jobs (issue 25): round 0 from the campaign's architecture, reproducibly; round 1
/// built from round 0's start model and agreed updates, leaving out one that does not fit;
/// the final evaluation names the model; an update not held and a model over the memory limit
/// are "cannot run here".
#[test]
fn train_jobs_chain_rounds_leave_out_bad_updates_and_refuse_what_does_not_fit() {
    use hivemesh_node::admission::Admission;
    use hivemesh_protocol::spec::TrainJob;
    use hivemesh_trainer::rounds::{Combine, Encoding, Outer, TrainState, Update, outer_step};
    let model = postcard::to_stdvec(&digits_mlp(16)).expect("IR");
    let model_id = BlobId::of_bytes(&model);
    let mut blobs = Blobs::from([(model_id, model)]);
    let spec = train_campaign(model_id);
    let job0 = first_job(&spec);
    let JobPayload::Train(t0) = &job0.payload else {
        panic!("a train job")
    };
    assert_eq!((t0.round, t0.base, t0.updates.len()), (0, model_id, 0));
    let a = run(&spec, &job0, &blobs).expect("runs");
    assert_eq!(
        a.blobs,
        run(&spec, &job0, &blobs).expect("runs").blobs,
        "bit-exact"
    );
    let m = success(&a);
    assert_eq!(m.artifacts.len(), 2, "update, start model");
    assert!(m.extra.contains_key("train_loss_micro"));
    blobs.extend(a.blobs.iter().cloned());
    let (update, start) = (m.artifacts[0], m.artifacts[1]);
    let state0 = TrainState::from_bytes(&blobs[&start]).expect("a state");
    assert!(
        state0.momentum.is_empty(),
        "round 0 starts without momentum"
    );

    // An agreed update of another layout (one tensor) is left out of the outer step.
    let mut bad = Update::decode(&blobs[&update]).expect("an update");
    bad.tensors.truncate(1);
    let bad_bytes = bad.encode(Encoding::F32);
    let bad_id = BlobId::of_bytes(&bad_bytes);
    blobs.insert(bad_id, bad_bytes);
    let mut job1 = job0.clone();
    job1.payload = JobPayload::Train(TrainJob {
        round: 1,
        segment: 1,
        shuffle: t0.shuffle + 1,
        base: start,
        updates: vec![update, bad_id],
        residual: None,
    });
    let b = run(&spec, &job1, &blobs).expect("runs");
    let expected = outer_step(
        &state0,
        &[Update::decode(&blobs[&update]).expect("update")],
        Outer::Nesterov {
            lr: 0.7,
            momentum: 0.9,
        },
        Combine::Mean,
    );
    assert_eq!(
        success(&b).artifacts[1],
        BlobId::of_bytes(&expected.to_bytes()),
        "the start model is the outer step over the updates that fit"
    );
    assert!(
        success(&b).correct > m.correct,
        "round 1 starts from a better model"
    );

    // The final evaluation: one artifact, the model, evaluated on the test split.
    let mut last = job1.clone();
    if let JobPayload::Train(t) = &mut last.payload {
        t.round = 2;
        t.segment = 0;
    }
    let f = run(&spec, &last, &blobs).expect("runs");
    assert_eq!(success(&f).artifacts, vec![success(&b).artifacts[1]]);

    // An update this node does not hold; a model over the memory limit.
    let mut missing = job1.clone();
    if let JobPayload::Train(t) = &mut missing.payload {
        t.updates.push(BlobId::of_bytes(b"not here"));
    }
    let e = run(&spec, &missing, &blobs).expect_err("refused");
    assert!(matches!(e, ExecError::Blob { .. }), "{e}");
    let small = Executor::new(&Admission {
        max_job_memory: 1000,
        ..Admission::default()
    });
    let e = small
        .run(&spec, &job0, Device::Cpu, &blobs, &mut |_| {})
        .expect_err("refused");
    assert!(matches!(e, ExecError::OverLimit(_)), "{e}");
}

/// A round whose outer step would hold more than the node's job memory (a robust aggregate
/// keeps every agreed update) is refused before its updates are fetched, and when run; the
/// mean reads one update at a time, so the same round passes the check.
#[test]
fn a_round_whose_outer_step_does_not_fit_is_refused_before_its_updates_are_fetched() {
    use hivemesh_node::admission::Admission;
    use hivemesh_protocol::spec::{Aggregate, TrainJob};
    let model = postcard::to_stdvec(&digits_mlp(16)).expect("IR");
    let model_id = BlobId::of_bytes(&model);
    let mut blobs = Blobs::from([(model_id, model)]);
    // 8 MiB: a round of this MLP fits (its training estimate is ~4.4 MB, most of it the
    // trainer's fixed workspace), a robust outer step over 2,000 updates (9.7 MB) does not.
    let node = Executor::new(&Admission {
        max_job_memory: 8 << 20,
        ..Admission::default()
    });
    for (aggregate, fits) in [
        (Aggregate::Mean, true),
        (Aggregate::TrimmedMean { trim: 1 }, false),
    ] {
        let mut spec = train_campaign(model_id);
        if let Search::Train(p) = &mut spec.search {
            p.aggregate = aggregate;
        }
        let job0 = first_job(&spec);
        let round0 = node
            .run(&spec, &job0, Device::Cpu, &blobs, &mut |_| {})
            .expect("round 0 fits");
        let start = success(&round0).artifacts[1];
        blobs.extend(round0.blobs.iter().cloned());
        // 2,000 agreed updates of 1,210 values: 9.7 MB held by a robust aggregate.
        let mut job1 = job0.clone();
        job1.payload = JobPayload::Train(TrainJob {
            round: 1,
            segment: 0,
            shuffle: 1,
            base: start,
            updates: (0..2000u32)
                .map(|i| BlobId::of_bytes(&i.to_le_bytes()))
                .collect(),
            residual: None,
        });
        let checked = node.precheck(&spec, &job1, &blobs);
        let ran = node
            .run(&spec, &job1, Device::Cpu, &blobs, &mut |_| {})
            .expect_err("the updates are not here");
        if fits {
            assert!(checked.is_ok(), "{checked:?}");
            assert!(matches!(ran, ExecError::Blob { .. }), "{ran}");
        } else {
            let e = checked.expect_err("refused before fetching");
            assert!(matches!(e, ExecError::OverLimit(_)), "{e}");
            assert!(matches!(ran, ExecError::OverLimit(_)), "{ran}");
        }
    }
    // Job blobs may be as large as a state of the model, and no less than the default.
    let spec = train_campaign(model_id);
    let limit = node
        .job_blob_limit(&spec, &blobs)
        .expect("the model is here");
    assert!(limit >= 8 * 1210, "{limit}");
    assert_eq!(
        node.job_blob_limit(&spec, &Blobs::new()),
        Some(limit),
        "remembered"
    );
}
