use super::*;
use crate::agreement::tests::peer;
use crate::outcome::{Metrics, Outcome};
use crate::privacy::epsilon;
use rand_core::SeedableRng;

fn params() -> FederatedParams {
    FederatedParams {
        model: BlobId::of_bytes(b"model"),
        private_data: "clinic-notes".into(),
        rounds: 3,
        clients_per_round: 3,
        min_clients: 2,
        local_steps: 50,
        example_privacy: Some(ExamplePrivacy {
            clip: 1.0,
            noise_multiplier: 1.1,
            sample_rate: 0.01,
        }),
        client_privacy: None,
        delta: 1e-5,
        epsilon_budget: None,
        norm_bound: 0.0,
        aggregate: Aggregate::Mean,
        outer: OuterStep::Average,
        secure: None,
        features: crate::kinds::federated::Features::Values,
    }
}

fn members(n: u8) -> Vec<PeerKey> {
    let mut m: Vec<PeerKey> = (1..=n).map(peer).collect();
    m.sort();
    m
}

fn trained(update: &[u8], start: &[u8]) -> Outcome {
    Outcome::Success(Metrics {
        correct: 1,
        total: 2,
        params: 3,
        flops: 4,
        extra: Default::default(),
        artifacts: vec![BlobId::of_bytes(update), BlobId::of_bytes(start)],
    })
}

fn jobs(p: &[JobPayload]) -> Vec<FedJob> {
    p.iter()
        .map(|j| match j {
            JobPayload::Federated(f) => f.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn tell(s: &mut Box<dyn SearchState>, payloads: &[JobPayload], outcomes: &[Option<Outcome>]) {
    let told: Vec<Told<'_>> = payloads
        .iter()
        .zip(outcomes)
        .map(|(payload, outcome)| Told {
            payload,
            outcome: outcome.as_ref(),
        })
        .collect();
    s.tell(&told).expect("told");
}

/// Each round samples distinct members, reproducibly from the seed, pins each job to its
/// client; the next recipe comes from the agreed updates; the last generation is one
/// unpinned evaluation.
#[test]
fn rounds_sample_distinct_clients_pin_their_jobs_and_chain_the_model() {
    let p = params();
    let m = members(5);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r0 = s.ask_among(&mut rng, &m);
    let j0 = jobs(&r0);
    assert_eq!(j0.len(), 3);
    let clients: Vec<PeerKey> = j0.iter().map(|j| j.client.expect("pinned")).collect();
    let mut distinct = clients.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    assert!(clients.iter().all(|c| m.contains(c)));
    assert_eq!(r0[0].pinned(), Some(&clients[0]));
    assert!(j0.iter().all(|j| j.population == 5 && j.base == p.model));
    let again = p
        .start()
        .expect("starts")
        .ask_among(&mut ChaCha8Rng::seed_from_u64(7), &m);
    assert_eq!(again, r0, "the same seed samples the same clients");
    // Two of three agree on a start model: their updates make the next recipe.
    tell(
        &mut s,
        &r0,
        &[
            Some(trained(b"u0", b"s")),
            Some(trained(b"u1", b"s")),
            Some(trained(b"liar", b"other")),
        ],
    );
    let j1 = jobs(&s.ask_among(&mut rng, &m));
    assert_eq!(j1[0].round, 1);
    assert_eq!(j1[0].base, BlobId::of_bytes(b"s"));
    assert_eq!(
        j1[0].updates,
        vec![BlobId::of_bytes(b"u0"), BlobId::of_bytes(b"u1")]
    );
    // Fewer agreed updates than min_clients: the model stays.
    let r1: Vec<JobPayload> = j1.iter().cloned().map(JobPayload::Federated).collect();
    tell(&mut s, &r1, &[Some(trained(b"v0", b"t")), None, None]);
    let j2 = jobs(&s.ask_among(&mut rng, &m));
    assert_eq!(j2[0].base, BlobId::of_bytes(b"s"));
    let r2: Vec<JobPayload> = j2.iter().cloned().map(JobPayload::Federated).collect();
    tell(&mut s, &r2, &[None, None, None]);
    let last = s.ask_among(&mut rng, &m);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].pinned(), None, "anyone evaluates the final model");
}

/// A budget on example-level ε: clients that took part too often are no longer sampled, and a
/// round with none left is not started (the campaign goes to its evaluation).
#[test]
fn a_client_over_its_budget_is_not_sampled_and_an_empty_round_is_not_started() {
    let mut p = params();
    p.rounds = 10;
    p.clients_per_round = 2;
    p.min_clients = 1;
    let one = p.example_round().expect("example privacy");
    let eps = |rounds: u64| {
        epsilon(
            &Mechanism {
                steps: one.steps * rounds,
                ..one
            }
            .rdp(),
            p.delta,
        )
        .0
    };
    // A budget for exactly two rounds per client.
    p.epsilon_budget = Some((eps(2) + eps(3)) / 2.0);
    let m = members(3);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut taken: BTreeMap<PeerKey, u32> = BTreeMap::new();
    let mut rounds = 0;
    loop {
        let payloads = s.ask_among(&mut rng, &m);
        let js = jobs(&payloads);
        if js[0].client.is_none() {
            break;
        }
        rounds += 1;
        for j in &js {
            *taken.entry(j.client.expect("pinned")).or_default() += 1;
        }
        let none: Vec<Option<Outcome>> = vec![None; payloads.len()];
        tell(&mut s, &payloads, &none);
    }
    assert!(taken.values().all(|n| *n <= 2), "{taken:?}");
    assert_eq!(
        taken.values().sum::<u32>(),
        6,
        "three clients, two rounds each"
    );
    assert!(rounds < 10, "stopped early at round {rounds}");
}

/// Client-level ε for the campaign: a round that would overspend is not started; what was
/// spent is stated per round from the jobs alone, and per client at example level.
#[test]
fn privacy_spent_is_stated_from_the_jobs_and_the_budget_stops_rounds() {
    let mut p = params();
    p.rounds = 50;
    p.clients_per_round = 2;
    p.min_clients = 1;
    // q = 2/4, σ = 3: about 0.88 after one round, 1.85 after five, 3.7 after twenty.
    p.client_privacy = Some(ClientPrivacy {
        clip: 1.0,
        noise_multiplier: 3.0,
    });
    p.epsilon_budget = Some(3.0);
    let m = members(4);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut rounds: Vec<Vec<FedJob>> = Vec::new();
    loop {
        let payloads = s.ask_among(&mut rng, &m);
        let js = jobs(&payloads);
        if js[0].client.is_none() {
            break;
        }
        rounds.push(js);
        let none: Vec<Option<Outcome>> = vec![None; payloads.len()];
        tell(&mut s, &payloads, &none);
    }
    let refs: Vec<Vec<&FedJob>> = rounds.iter().map(|r| r.iter().collect()).collect();
    let spent = privacy_spent(&p, &refs);
    assert_eq!(spent.campaign.len(), rounds.len());
    assert!(spent.campaign.windows(2).all(|w| w[0] < w[1]), "ε grows");
    let last = *spent.campaign.last().expect("rounds ran");
    assert!(last <= 3.0, "{last}");
    assert!(
        rounds.len() > 5 && rounds.len() < 20,
        "{} rounds",
        rounds.len()
    );
    // One more round would have gone over.
    let mut a = Accountant::new();
    let q = p.client_round(2, 4).expect("client privacy");
    a.add(&Mechanism {
        steps: rounds.len() as u64 + 1,
        ..q
    });
    assert!(a.epsilon(p.delta) > 3.0);
    // Per client, example level: rounds taken part in, and their ε.
    let total: u32 = spent.clients.values().map(|(n, _)| n).sum();
    assert_eq!(total as usize, 2 * rounds.len());
    assert!(spent.clients.values().all(|(_, e)| *e > 0.0));
}

#[test]
fn parameters_are_checked_with_the_field_named() {
    use crate::kinds::KindRules;
    assert!(params().validate().is_ok());
    let bad = |f: &dyn Fn(&mut FederatedParams), name: &str| {
        let mut p = params();
        f(&mut p);
        let e = p.validate().expect_err(name);
        assert!(e.to_string().contains(name), "{name}: {e}");
    };
    bad(&|p| p.private_data = "Clinic Notes".into(), "private_data");
    bad(&|p| p.private_data = String::new(), "private_data");
    bad(&|p| p.clients_per_round = 0, "clients_per_round");
    bad(&|p| p.min_clients = 4, "min_clients");
    bad(&|p| p.local_steps = 0, "local_steps");
    bad(&|p| p.delta = 0.0, "delta");
    bad(&|p| p.epsilon_budget = Some(-1.0), "epsilon_budget");
    bad(
        &|p| {
            p.example_privacy = Some(ExamplePrivacy {
                clip: 0.0,
                noise_multiplier: 1.0,
                sample_rate: 0.1,
            })
        },
        "example_privacy.clip",
    );
    bad(
        &|p| p.aggregate = Aggregate::TrimmedMean { trim: 1 },
        "trim",
    );
    // A noise multiplier above the accountant's bound (its RDP series would run long on
    // every node deriving the campaign).
    bad(
        &|p| {
            p.client_privacy = Some(ClientPrivacy {
                clip: 1.0,
                noise_multiplier: 1e5,
            })
        },
        "client_privacy.noise_multiplier",
    );
    bad(
        &|p| {
            p.example_privacy = Some(ExamplePrivacy {
                clip: 1.0,
                noise_multiplier: f32::NAN,
                sample_rate: 0.1,
            })
        },
        "example_privacy.noise_multiplier",
    );
}

/// Curves are computed once and scaled: the example-level ε of a client after `n` rounds is
/// the ε of `n × local_steps` steps, and the client-level cache stays bounded whatever
/// populations a campaign sees.
#[test]
fn curves_are_computed_once_scaled_and_kept_bounded() {
    let mut p = params();
    p.client_privacy = Some(ClientPrivacy {
        clip: 1.0,
        noise_multiplier: 2.0,
    });
    let mut c = Curves::new(&p);
    let one = p.example_round().expect("example privacy");
    for n in [1u32, 2, 7, 40] {
        let direct = epsilon(
            &Mechanism {
                steps: one.steps * u64::from(n),
                ..one
            }
            .rdp(),
            p.delta,
        )
        .0;
        let scaled = c.example_epsilon(n, p.delta).expect("private");
        assert!(
            (scaled - direct).abs() <= 1e-12 * direct,
            "{n}: {scaled} {direct}"
        );
    }
    for population in 1..=(2 * MAX_CURVES as u32) {
        let curve = c.client(&p, 1, population).expect("client privacy");
        assert_eq!(curve, p.client_round(1, population).expect("client").rdp());
        assert!(c.client.len() <= MAX_CURVES);
    }
}

fn success(artifacts: &[&[u8]]) -> Option<Outcome> {
    Some(Outcome::Success(Metrics {
        correct: 0,
        total: 0,
        params: 0,
        flops: 0,
        extra: Default::default(),
        artifacts: artifacts.iter().map(|a| BlobId::of_bytes(a)).collect(),
    }))
}

/// With secure aggregation a round is four steps, each for the clients the last left: the
/// roster (keys agreed), those that dealt, the survivors (masked updates from the start most
/// named); the next round's jobs carry the whole round as the sums to apply, and privacy is
/// spent once, at the masked updates. A step with too few clients abandons the round.
#[test]
fn a_secure_round_takes_four_steps_each_for_the_clients_the_last_left() {
    let mut p = params();
    p.rounds = 2;
    p.clients_per_round = 3;
    p.min_clients = 2;
    p.client_privacy = Some(ClientPrivacy {
        clip: 1.0,
        noise_multiplier: 1.0,
    });
    p.secure = Some(SecureAggregation {
        buckets: 1,
        neighbours: 0,
    });
    assert!(p.validate().is_ok());
    assert_eq!(p.generations(), 9);
    let m = members(5);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut generations: Vec<Vec<FedJob>> = Vec::new();
    let mut step = |s: &mut Box<dyn SearchState>,
                    rng: &mut ChaCha8Rng,
                    out: &dyn Fn(usize, &FedJob) -> Option<Outcome>| {
        let payloads = s.ask_among(rng, &m);
        let js = jobs(&payloads);
        let outcomes: Vec<Option<Outcome>> =
            js.iter().enumerate().map(|(i, j)| out(i, j)).collect();
        tell(s, &payloads, &outcomes);
        generations.push(js.clone());
        js
    };
    let keys = step(&mut s, &mut rng, &|i, _| success(&[&[b'k', i as u8]]));
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter()
            .all(|j| j.step == SecureStep::Keys && j.secure.is_none())
    );
    // Client 1 deals nothing.
    let deal = step(&mut s, &mut rng, &|i, _| {
        (i != 1).then(|| success(&[&[b'd', i as u8]])).flatten()
    });
    assert_eq!(deal.len(), 3);
    let roster = &deal[0].secure.as_ref().expect("the round so far").roster;
    assert_eq!(roster.len(), 3);
    assert_eq!(roster[0].1, BlobId::of_bytes(b"k\0"));
    let mask = step(&mut s, &mut rng, &|i, _| {
        success(&[&[b'm', i as u8], b"start"])
    });
    assert_eq!(mask.len(), 2, "those that dealt");
    assert!(mask.iter().all(|j| j.step == SecureStep::Mask));
    assert_eq!(mask[0].client, Some(keys[0].client.expect("pinned")));
    assert_eq!(mask[1].client, Some(keys[2].client.expect("pinned")));
    let reveal = step(&mut s, &mut rng, &|i, _| success(&[&[b'r', i as u8]]));
    assert_eq!(reveal.len(), 2);
    let masked = &reveal[0].secure.as_ref().expect("round").masked;
    assert_eq!(masked.iter().flatten().count(), 2);
    assert!(masked[1].is_none());
    // Round 2: its jobs apply round 1's sums to its agreed start; all but one key is lost,
    // so the round is abandoned and the evaluation follows.
    let keys2 = step(&mut s, &mut rng, &|i, _| {
        (i == 0).then(|| success(&[b"k"])).flatten()
    });
    assert_eq!(keys2[0].round, 1);
    assert_eq!(keys2[0].base, BlobId::of_bytes(b"start"));
    let sums = keys2[0].sums.as_ref().expect("round 1's sums");
    assert_eq!(sums.reveals.iter().flatten().count(), 2);
    assert!(keys2[0].updates.is_empty());
    assert!(!s.finished());
    let last = step(&mut s, &mut rng, &|_, _| success(&[b"final"]));
    assert_eq!(last.len(), 1);
    assert!(last[0].client.is_none());
    assert!(
        s.finished(),
        "the campaign ends with its evaluation, rounds to spare or not"
    );
    assert_eq!(last[0].base, BlobId::of_bytes(b"start"));
    // Privacy: one round spent, by the two clients that computed masked updates.
    let refs: Vec<Vec<&FedJob>> = generations.iter().map(|g| g.iter().collect()).collect();
    let spent = privacy_spent(&p, &refs);
    assert_eq!(spent.campaign.len(), 1);
    assert_eq!(spent.clients.len(), 2);
    let q = p.client_round(3, 5).expect("client privacy");
    assert!((spent.campaign[0] - epsilon(&q.rdp(), p.delta).0).abs() < 1e-12);
}

#[test]
fn secure_aggregation_is_checked_with_the_field_named() {
    use crate::kinds::KindRules;
    let secure = |p: &mut FederatedParams, buckets, neighbours| {
        p.norm_bound = 1.0;
        p.min_clients = 3;
        p.secure = Some(SecureAggregation {
            buckets,
            neighbours,
        });
    };
    let mut ok = params();
    secure(&mut ok, 1, 0);
    assert!(ok.validate().is_ok());
    assert!(ok.secure_bound().is_some_and(|b| b == 1.0));
    let bad = |f: &dyn Fn(&mut FederatedParams), name: &str| {
        let mut p = params();
        f(&mut p);
        let e = p.validate().expect_err(name);
        assert!(e.to_string().contains(name), "{name}: {e}");
    };
    bad(
        &|p| {
            secure(p, 1, 0);
            p.norm_bound = 0.0;
        },
        "secure",
    );
    bad(&|p| secure(p, 2, 0), "secure.buckets");
    bad(&|p| secure(p, 0, 0), "secure.buckets");
    bad(&|p| secure(p, 1, 1), "secure.neighbours");
    // A robust rule counts the groups' means, not the clients.
    bad(
        &|p| {
            secure(p, 1, 0);
            p.aggregate = Aggregate::TrimmedMean { trim: 1 };
        },
        "secure.buckets",
    );
}

#[test]
fn flags_round_trip_through_extra_metrics() {
    let flagged = vec![0, 5, 61, 62, 130, 254];
    let extra = flag_metrics(&flagged);
    assert_eq!(extra.len(), 4, "{extra:?}");
    assert!(extra.values().all(|v| *v > 0));
    assert_eq!(flags_of(&extra), flagged);
    assert!(flag_metrics(&[]).is_empty());
    assert!(
        flags_of(&flag_metrics(&[300])).is_empty(),
        "beyond the most clients"
    );
}

/// A client whose update most of the next round's clients flag is not sampled for a round;
/// one reporter alone strikes no one; a benched client still makes up `min_clients` when too
/// few others are left.
#[test]
fn a_client_most_reporters_flag_is_benched_and_one_reporter_alone_strikes_no_one() {
    for min_clients in [1, 3] {
        bench_after_flags(min_clients);
    }
}

fn bench_after_flags(min_clients: u32) {
    let mut p = params();
    p.rounds = 6;
    p.clients_per_round = 3;
    p.min_clients = min_clients;
    p.example_privacy = None;
    let m = members(3);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Round 0: everyone trains; updates u0, u1, u2 from the same start.
    let r0 = s.ask_among(&mut rng, &m);
    let j0 = jobs(&r0);
    let outs: Vec<Option<Outcome>> = (0..3)
        .map(|i| Some(trained(&[b'u', i as u8], b"s0")))
        .collect();
    tell(&mut s, &r0, &outs);
    let accused = j0[1].client.expect("pinned");
    // Round 1: two of three flag update 1 (its client), the third flags update 0.
    let r1 = s.ask_among(&mut rng, &m);
    assert_eq!(jobs(&r1).len(), 3);
    let flagged = |flags: &[usize], i: u8| {
        let mut o = trained(&[b'v', i], b"s1");
        if let Outcome::Success(m) = &mut o {
            m.extra = flag_metrics(flags);
        }
        Some(o)
    };
    tell(
        &mut s,
        &r1,
        &[flagged(&[1], 0), flagged(&[1], 1), flagged(&[0], 2)],
    );
    // The standings name the strike and the bench (round 2 is asked next; one strike benches
    // for one round); the client flagged by a single reporter has none.
    let standing = s.standings();
    assert_eq!(standing.len(), 3, "{standing:?}");
    for st in &standing {
        assert_eq!(st.rounds, 2, "{st:?}");
        let struck = st.client == accused;
        assert_eq!(st.strikes, u32::from(struck), "{st:?}");
        assert_eq!(st.benched_until, struck.then_some(3), "{st:?}");
    }
    // Round 2: the accused is benched; the one flagged by a single reporter is not.
    let r2 = jobs(&s.ask_among(&mut rng, &m));
    let clients: Vec<PeerKey> = r2.iter().filter_map(|j| j.client).collect();
    if min_clients == 3 {
        assert_eq!(clients.len(), 3, "made up from the bench: {clients:?}");
        assert_eq!(clients[2], accused, "the benched one last");
        return;
    }
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert!(!clients.contains(&accused));
    assert!(clients.contains(&j0[0].client.expect("pinned")));
    let none: Vec<Option<Outcome>> = vec![None; 2];
    tell(&mut s, &jobs_payloads(&r2), &none);
    // Round 3: back.
    let r3 = jobs(&s.ask_among(&mut rng, &m));
    assert!(r3.iter().any(|j| j.client == Some(accused)));
}

fn jobs_payloads(js: &[FedJob]) -> Vec<JobPayload> {
    js.iter().cloned().map(JobPayload::Federated).collect()
}

/// A round in which no client could build its start model (the previous round's updates or
/// sums lost with their only holder) starts the next one from the base alone: the campaign
/// moves on instead of failing every later round on the same missing blob.
#[test]
fn a_round_no_client_could_start_drops_what_it_could_not_fetch() {
    let mut p = params();
    p.rounds = 4;
    p.min_clients = 1;
    let m = members(3);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let r0 = s.ask_among(&mut rng, &m);
    let outs: Vec<Option<Outcome>> = (0..r0.len())
        .map(|i| Some(trained(&[b'u', i as u8], b"start0")))
        .collect();
    tell(&mut s, &r0, &outs);
    let r1 = s.ask_among(&mut rng, &m);
    assert_eq!(jobs(&r1)[0].updates.len(), r0.len());
    // Every client of round 1 failed to start.
    tell(&mut s, &r1, &vec![None; r1.len()]);
    let r2 = jobs(&s.ask_among(&mut rng, &m));
    assert!(r2[0].updates.is_empty(), "{:?}", r2[0].updates);
    assert_eq!(r2[0].base, BlobId::of_bytes(b"start0"));
}

/// With secure aggregation too: a masked step whose clients could all not build their start
/// model (the previous round's sums lost) drops the sums; the next round starts from the base.
#[test]
fn a_secure_round_no_client_could_start_drops_the_sums() {
    let mut p = params();
    p.rounds = 3;
    p.min_clients = 2;
    p.norm_bound = 1.0;
    p.secure = Some(SecureAggregation {
        buckets: 1,
        neighbours: 0,
    });
    let m = members(3);
    let mut s = p.start().expect("starts");
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut round = |s: &mut Box<dyn SearchState>, masked: bool| {
        let mut last = Vec::new();
        for (tag, step) in [(b'k', 0), (b'd', 1), (b'm', 2), (b'r', 3)] {
            let payloads = s.ask_among(&mut rng, &m);
            let outs: Vec<Option<Outcome>> = (0..payloads.len())
                .map(|i| match step {
                    2 if !masked => None,
                    2 => success(&[&[tag, i as u8], b"start"]),
                    _ => success(&[&[tag, i as u8]]),
                })
                .collect();
            last = jobs(&payloads);
            tell(s, &payloads, &outs);
            if step == 2 && !masked {
                break;
            }
        }
        last
    };
    round(&mut s, true);
    let failed = round(&mut s, false);
    assert!(
        failed
            .iter()
            .all(|j| j.step == SecureStep::Mask && j.sums.is_some())
    );
    let next = jobs(&s.ask_among(&mut rng, &m));
    assert_eq!(next[0].step, SecureStep::Keys);
    assert!(next[0].sums.is_none(), "the lost sums are dropped");
    assert_eq!(next[0].base, BlobId::of_bytes(b"start"));
}

#[test]
fn scattering_features_are_checked_with_the_campaign() {
    let mut p = params();
    p.features = Features::SCATTERING;
    assert!(p.validate().is_ok());
    let bad = [
        (0, 8, 0, "scales"),
        (5, 8, 0, "scales"),
        (2, 0, 0, "angles"),
        (2, 17, 0, "angles"),
        (2, 8, 4, "groups"),
    ];
    for (scales, angles, groups, field) in bad {
        p.features = Features::Scattering {
            scales,
            angles,
            groups,
        };
        let e = p.validate().expect_err(field);
        assert!(e.to_string().contains(field), "{e}");
    }
    // 1 + JL + L²J(J−1)/2 = 1 + 3·4 + 16·3 = 61 channels at J = 3, L = 4: 61 groups divide.
    p.features = Features::Scattering {
        scales: 3,
        angles: 4,
        groups: 61,
    };
    assert!(p.validate().is_ok());
}
