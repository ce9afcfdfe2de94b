//! Loss expressions: closed forms, typing, variation, simplification, identity and behaviour.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use hivemesh_evolve::gp::*;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fn batch(seed: u64, b: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut target = vec![0.0; b * c];
    let mut logits = vec![0.0; b * c];
    for i in 0..b {
        target[i * c + hivemesh_evolve::random::below(&mut rng, c)] = 1.0;
        for j in 0..c {
            logits[i * c + j] = hivemesh_evolve::random::range(&mut rng, -5.0, 5.0) as f32;
        }
    }
    (target, logits)
}

fn eval(e: &Expr, t: &[f32], z: &[f32], c: usize) -> f32 {
    e.evaluate(Batch {
        target: t,
        logits: z,
        classes: c,
    })
    .unwrap()
}

#[test]
fn cross_entropy_and_mse_match_their_closed_forms() {
    for seed in 0..20 {
        let (c, b) = (10, 16);
        let (t, z) = batch(seed, b, c);
        let (mut ce, mut mse) = (0.0f64, 0.0f64);
        for i in 0..b {
            let row = &z[i * c..(i + 1) * c];
            let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let lse = m + row.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
            for j in 0..c {
                let y = t[i * c + j] as f64;
                let p = (row[j] as f64 - lse).exp();
                ce -= y * (row[j] as f64 - lse);
                mse += (p - y) * (p - y);
            }
        }
        let (ce, mse) = (ce / b as f64, mse / b as f64);
        let got_ce = eval(&Expr::cross_entropy(), &t, &z, c) as f64;
        let got_mse = eval(&Expr::mse(), &t, &z, c) as f64;
        // ε = 1e-7 inside the log, f32 arithmetic: relative error well under 1e-4.
        assert!(
            (got_ce - ce).abs() <= 1e-4 * ce.max(1.0),
            "CE {got_ce} vs {ce}"
        );
        assert!(
            (got_mse - mse).abs() <= 1e-5 * mse.max(1.0),
            "MSE {got_mse} vs {mse}"
        );
    }
}

#[test]
fn type_and_shape_errors_are_reported() {
    let e = Expr {
        genes: vec![Op::SumClasses, Op::Logit],
        constants: vec![],
    };
    assert!(
        matches!(e.check(), Err(GpError::Type { node: 0, .. })),
        "a Sample is not a loss"
    );
    let e = Expr {
        genes: vec![Op::MeanBatch, Op::Prob],
        constants: vec![],
    };
    assert!(
        matches!(e.check(), Err(GpError::Type { .. })),
        "mean over batch needs Sample"
    );
    let e = Expr {
        genes: vec![Op::MeanBatch, Op::Add, Op::SumClasses, Op::Logit, Op::Logit],
        constants: vec![],
    };
    assert!(
        e.check()
            .unwrap_err()
            .to_string()
            .contains("cannot combine")
    );
    let e = Expr {
        genes: vec![Op::Add, Op::Target],
        constants: vec![],
    };
    assert!(matches!(e.check(), Err(GpError::Malformed(_))));
    let e = Expr {
        genes: vec![Op::Const(0), Op::Const(0)],
        constants: vec![1.0],
    };
    assert!(matches!(e.check(), Err(GpError::Malformed(_))), "two trees");
    let e = Expr {
        genes: vec![Op::Const(3)],
        constants: vec![1.0],
    };
    assert!(e.check().unwrap_err().to_string().contains("slot 3"));
    assert!(
        Expr {
            genes: vec![],
            constants: vec![]
        }
        .check()
        .is_err()
    );
    let ce = Expr::cross_entropy();
    assert!(matches!(
        ce.evaluate(Batch {
            target: &[1.0, 0.0],
            logits: &[0.0],
            classes: 2
        }),
        Err(GpError::Input(_))
    ));
}

#[test]
fn initial_population_is_valid_varied_and_reproducible() {
    let cfg = GpConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pop = ramped_half_and_half(60, &cfg, &mut rng);
    for e in &pop {
        assert_eq!(e.check().unwrap(), Some(Kind::Scalar), "{e:?}");
        assert!(e.genes.len() <= cfg.max_size && e.depth() <= cfg.max_depth);
    }
    let distinct: std::collections::BTreeSet<_> = pop.iter().map(|e| e.id().unwrap()).collect();
    assert!(distinct.len() > 40, "{} distinct of 60", distinct.len());
    let again = ramped_half_and_half(60, &cfg, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(pop, again);
}

#[test]
fn variation_keeps_expressions_valid_and_within_limits() {
    let cfg = GpConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut pop = ramped_half_and_half(40, &cfg, &mut rng);
    pop.push(Expr::cross_entropy());
    let mut changed = 0;
    for round in 0..400 {
        let a = &pop[round % pop.len()];
        let b = &pop[(round * 7 + 3) % pop.len()];
        let (c, d) = Expr::crossover(a, b, &cfg, &mut rng);
        let m = c.mutate(&cfg, &mut rng);
        for e in [&c, &d, &m] {
            assert!(e.check().is_ok(), "{e:?}");
            assert!(e.genes.len() <= cfg.max_size && e.depth() <= cfg.max_depth);
            assert_eq!(
                e.constant_slots().len(),
                e.constants.len(),
                "no dangling constants"
            );
        }
        if m != *a {
            changed += 1;
        }
        let slot = round % pop.len();
        pop[slot] = m;
    }
    assert!(changed > 200, "variation mostly changes things: {changed}");
}

#[test]
fn simplification_preserves_values_and_removes_identities() {
    let (t, z) = batch(5, 8, 4);
    // mean(sum((p - y)^2 * 1 + (z - z)))  ->  mean(sum((p - y)^2))
    let e = Expr {
        genes: vec![
            Op::MeanBatch,
            Op::SumClasses,
            Op::Add,
            Op::Mul,
            Op::Square,
            Op::Sub,
            Op::Prob,
            Op::Target,
            Op::Const(0),
            Op::Sub,
            Op::Logit,
            Op::Logit,
        ],
        constants: vec![1.0],
    };
    let s = e.simplify().unwrap();
    assert_eq!(s.genes, Expr::mse().genes);
    assert_eq!(eval(&s, &t, &z, 4), eval(&e, &t, &z, 4));
    // Constant folding and double negation.
    let e = Expr {
        genes: vec![
            Op::Neg,
            Op::Neg,
            Op::MeanBatch,
            Op::Mul,
            Op::Add,
            Op::Const(0),
            Op::Const(1),
            Op::SumClasses,
            Op::Prob,
        ],
        constants: vec![0.5, 1.5],
    };
    let s = e.simplify().unwrap();
    assert_eq!(
        s.genes,
        vec![
            Op::MeanBatch,
            Op::Mul,
            Op::Const(0),
            Op::SumClasses,
            Op::Prob
        ]
    );
    assert_eq!(s.constants, vec![2.0]);
    assert!((eval(&s, &t, &z, 4) - eval(&e, &t, &z, 4)).abs() < 1e-6);
}

#[test]
fn canonical_ids_and_fingerprints_find_copies() {
    // y·log p and log p·y: same canonical form, same id.
    let a = Expr::cross_entropy();
    let b = Expr {
        genes: vec![
            Op::MeanBatch,
            Op::Neg,
            Op::SumClasses,
            Op::Mul,
            Op::Log,
            Op::Prob,
            Op::Target,
        ],
        constants: vec![],
    };
    assert_eq!(a.id().unwrap(), b.id().unwrap());
    // −mean(sum(…)) is a different tree (different id) computing the same function.
    let c = Expr {
        genes: vec![
            Op::Neg,
            Op::MeanBatch,
            Op::SumClasses,
            Op::Mul,
            Op::Target,
            Op::Log,
            Op::Prob,
        ],
        constants: vec![],
    };
    assert_ne!(a.id().unwrap(), c.id().unwrap());
    assert_eq!(a.fingerprint().unwrap(), c.fingerprint().unwrap());
    // A different loss has a different fingerprint.
    assert_ne!(a.fingerprint().unwrap(), Expr::mse().fingerprint().unwrap());
    assert_eq!(Expr::mse().constant_slots(), Vec::<u16>::new());
}

proptest! {
    #[test]
    fn random_gene_strings_never_panic(
        genes in proptest::collection::vec(0u8..23, 0..40),
        constants in proptest::collection::vec(-1e30f32..1e30, 0..4),
        seed in any::<u64>(),
    ) {
        let ops = [
            Op::Target, Op::Logit, Op::Prob, Op::Const(0), Op::Const(1), Op::Neg, Op::Log, Op::Exp,
            Op::Sqrt, Op::Square, Op::Sigmoid, Op::Tanh, Op::Relu, Op::Sin, Op::Cos,
            Op::SumClasses, Op::MeanBatch, Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Min, Op::Max,
        ];
        let e = Expr { genes: genes.iter().map(|g| ops[*g as usize]).collect(), constants };
        let (t, z) = batch(seed, 3, 4);
        let _ = e.evaluate(Batch { target: &t, logits: &z, classes: 4 });
        let _ = e.simplify();
        let _ = e.id();
        let _ = e.fingerprint();
        let _ = e.depth();
    }

    #[test]
    fn generated_expressions_evaluate_on_any_batch(seed in any::<u64>(), b in 1usize..6, c in 1usize..6) {
        let cfg = GpConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (t, z) = batch(seed, b, c);
        for e in ramped_half_and_half(6, &cfg, &mut rng) {
            let v = e.evaluate(Batch { target: &t, logits: &z, classes: c });
            prop_assert!(v.is_ok());
            // Simplification never changes a finite value by more than rounding.
            let s = e.simplify().unwrap();
            let w = s.evaluate(Batch { target: &t, logits: &z, classes: c }).unwrap();
            let v = v.unwrap();
            if v.is_finite() && w.is_finite() {
                prop_assert!((v - w).abs() <= 1e-3 * v.abs().max(1.0), "{v} vs {w} for {e:?}");
            }
        }
    }
}

#[test]
fn wrapping_keeps_a_working_loss_inside_its_variants() {
    // The wrap mutation turns e into e + c·t: cross-entropy survives whole inside some of
    // its mutants, with a new constant weight, and the mutant is still a valid loss.
    let cfg = GpConfig::default();
    let ce = Expr::cross_entropy();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut wrapped = 0;
    for _ in 0..200 {
        let m = ce.mutate(&cfg, &mut rng);
        assert!(m.check().is_ok(), "{m:?}");
        if m.genes.len() > ce.genes.len() + 2
            && m.genes[0] == Op::Add
            && m.genes[1..=ce.genes.len()] == ce.genes[..]
            && m.genes[ce.genes.len() + 1] == Op::Mul
        {
            assert!(matches!(m.genes[ce.genes.len() + 2], Op::Const(_)), "{m:?}");
            assert_eq!(m.check().unwrap(), Some(Kind::Scalar), "{m:?}");
            assert!(!m.constants.is_empty());
            wrapped += 1;
        }
    }
    assert!(wrapped > 10, "wrapped {wrapped} of 200 mutants");
}
