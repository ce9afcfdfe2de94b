use super::*;

/// A round of `n` clients with `k` neighbours and threshold `t`; their secrets.
fn setup(n: usize, k: usize, t: usize) -> (Round, Vec<ClientSecrets>) {
    let secrets: Vec<ClientSecrets> = (0..n)
        .map(|i| ClientSecrets::from_seed([i as u8 + 1; 32]))
        .collect();
    let roster = secrets.iter().map(ClientSecrets::public).collect();
    (Round::new([9; 32], roster, k, t).expect("valid"), secrets)
}

/// Client `i`'s input: `len` values.
fn input(i: usize, len: usize) -> Vec<u32> {
    (0..len).map(|k| (i * 1000 + k * 7) as u32).collect()
}

/// Every client but `absent` deals (its deal recorded in the round) and opens what it was
/// dealt; the shares each holds.
fn deal_except(round: &mut Round, secrets: &[ClientSecrets], absent: &[usize]) -> Vec<Vec<Held>> {
    let n = secrets.len();
    let mut held: Vec<Vec<Held>> = vec![Vec::new(); n];
    for (i, s) in secrets.iter().enumerate() {
        if absent.contains(&i) {
            continue;
        }
        let dealt = deal(round, i, s, [i as u8 + 100; 32]).expect("deals");
        round.record_deal(i, &dealt).expect("a whole deal");
        for sealed in dealt {
            let to = usize::from(sealed.to);
            held[to].push(open(round, to, &secrets[to], &sealed).expect("opens"));
        }
    }
    held
}

fn deal_all(round: &mut Round, secrets: &[ClientSecrets]) -> Vec<Vec<Held>> {
    deal_except(round, secrets, &[])
}

/// A whole round in which `dropped` deal but never send their masked input; the unmasked sum.
fn run(n: usize, k: usize, t: usize, dropped: &[usize]) -> Result<Vec<u32>, SecAggError> {
    let (mut round, secrets) = setup(n, k, t);
    let held = deal_all(&mut round, &secrets);
    let survivors: Vec<usize> = (0..n).filter(|i| !dropped.contains(i)).collect();
    let masked: Vec<(usize, Vec<u32>)> = survivors
        .iter()
        .map(|i| {
            (
                *i,
                mask(&round, *i, &secrets[*i], &input(*i, 50)).expect("masks"),
            )
        })
        .collect();
    let reveals: Vec<Reveal> = survivors
        .iter()
        .map(|i| reveal(*i, &held[*i], &survivors))
        .collect();
    unmask(&round, &masked, &reveals, 50)
}

fn plain_sum(n: usize, dropped: &[usize]) -> Vec<u32> {
    let mut sum = vec![0u32; 50];
    for i in (0..n).filter(|i| !dropped.contains(i)) {
        for (s, v) in sum.iter_mut().zip(input(i, 50)) {
            *s = s.wrapping_add(v);
        }
    }
    sum
}

#[test]
fn the_unmasked_sum_is_the_sum_of_the_survivors_inputs() {
    for dropped in [&[][..], &[3], &[0, 7]] {
        assert_eq!(
            run(10, 9, 6, dropped),
            Ok(plain_sum(10, dropped)),
            "{dropped:?}"
        );
    }
    // SecAgg+: 6 neighbours each, threshold 3 (two dropouts leave every client at least 4).
    for dropped in [&[][..], &[5], &[1, 8]] {
        assert_eq!(
            run(10, 6, 3, dropped),
            Ok(plain_sum(10, dropped)),
            "{dropped:?}"
        );
    }
}

#[test]
fn a_masked_input_hides_the_input_and_masks_cancel_only_in_the_sum() {
    let (mut round, secrets) = setup(5, 4, 3);
    deal_all(&mut round, &secrets);
    let x = input(2, 50);
    let y = mask(&round, 2, &secrets[2], &x).expect("masks");
    assert_eq!(y.iter().zip(&x).filter(|(a, b)| a == b).count(), 0);
    // The sum of all masked inputs without removing self-masks is not the sum either.
    let mut sum = vec![0u32; 50];
    for (i, s) in secrets.iter().enumerate() {
        for (a, b) in sum
            .iter_mut()
            .zip(mask(&round, i, s, &input(i, 50)).expect("masks"))
        {
            *a = a.wrapping_add(b);
        }
    }
    assert_ne!(sum, plain_sum(5, &[]));
}

#[test]
fn too_many_dropouts_fail_the_round_cleanly() {
    // 10 clients, threshold 7: every secret needs 7 of its owner's 9 neighbours; three
    // dropouts leave 6 for a survivor's self-mask.
    let e = run(10, 9, 7, &[1, 2, 3]).expect_err("fails");
    assert!(
        matches!(
            e,
            SecAggError::BelowThreshold {
                have: 6,
                need: 7,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(run(10, 9, 7, &[1, 2]), Ok(plain_sum(10, &[1, 2])));
}

#[test]
fn sealed_shares_open_only_for_their_recipient_and_untampered() {
    let (mut round, secrets) = setup(4, 3, 2);
    let sealed = deal(&round, 0, &secrets[0], [1; 32]).expect("deals");
    // A deal short of one neighbour, or claiming another dealer, is refused by name.
    assert_eq!(
        round.record_deal(0, &sealed[1..]),
        Err(SecAggError::BadDeal { client: 0 })
    );
    assert_eq!(
        round.record_deal(1, &sealed),
        Err(SecAggError::BadDeal { client: 1 })
    );
    assert!(!round.is_active(0));
    round.record_deal(0, &sealed).expect("whole");
    assert!(round.is_active(0));
    let to1 = sealed.iter().find(|s| s.to == 1).expect("one for client 1");
    assert!(open(&round, 1, &secrets[1], to1).is_ok());
    assert_eq!(
        open(&round, 2, &secrets[2], to1),
        Err(SecAggError::Unseal { from: 0, to: 2 })
    );
    let mut forged = to1.clone();
    forged.to = 2;
    assert!(open(&round, 2, &secrets[2], &forged).is_err());
    let mut tampered = to1.clone();
    tampered.bytes[5] ^= 1;
    assert!(open(&round, 1, &secrets[1], &tampered).is_err());
    tampered.bytes.truncate(3);
    assert!(open(&round, 1, &secrets[1], &tampered).is_err());
}

#[test]
fn a_lying_revealer_is_named_and_ignored_and_a_lying_dealer_fails_the_round() {
    let (mut round, secrets) = setup(6, 5, 3);
    let held = deal_all(&mut round, &secrets);
    let survivors: Vec<usize> = (0..6).collect();
    let masked: Vec<(usize, Vec<u32>)> = (0..6)
        .map(|i| {
            (
                i,
                mask(&round, i, &secrets[i], &input(i, 50)).expect("masks"),
            )
        })
        .collect();
    let mut reveals: Vec<Reveal> = (0..6).map(|i| reveal(i, &held[i], &survivors)).collect();
    // Client 1 lies about its share of client 0's self-mask.
    let lie = reveals[1]
        .self_shares
        .iter_mut()
        .find(|(o, _)| *o == 0)
        .expect("holds 0's share");
    lie.1[0] ^= 0x55;
    assert_eq!(bad_revealers(&round, &reveals), vec![1]);
    assert_eq!(
        unmask(&round, &masked, &reveals, 50),
        Ok(plain_sum(6, &[])),
        "the four honest shares rebuild client 0's self-mask"
    );
    // A dealer whose shares are of another secret than the one it committed to: consistent
    // with its published hashes, so only the rebuilt secret shows it.
    let other = ClientSecrets {
        self_seed: [0xee; 32],
        ..secrets[0].clone()
    };
    let mut forged = round.clone();
    let dealt = deal(&forged, 0, &other, [1; 32]).expect("deals");
    forged.record_deal(0, &dealt).expect("a whole deal");
    let mut held = held.clone();
    for h in held.iter_mut() {
        h.retain(|h| h.owner != 0);
    }
    for sealed in &dealt {
        let to = usize::from(sealed.to);
        held[to].push(open(&forged, to, &secrets[to], sealed).expect("opens"));
    }
    let reveals: Vec<Reveal> = (0..6).map(|i| reveal(i, &held[i], &survivors)).collect();
    assert_eq!(
        unmask(&forged, &masked, &reveals, 50),
        Err(SecAggError::BadShares { client: 0 })
    );
    // A masked input of the wrong length is named.
    let mut short = masked.clone();
    short[2].1.pop();
    assert!(matches!(
        unmask(&round, &short, &reveals, 50),
        Err(SecAggError::Length { client: 2, .. })
    ));
}

#[test]
fn a_revealed_mask_share_of_a_survivor_is_ignored() {
    // A revealer that also hands out a survivor's mask-key share (which with the self-mask
    // would unmask that survivor alone) is not used for it: the sum is still right and the
    // share is never combined.
    let (mut round, secrets) = setup(5, 4, 2);
    let held = deal_all(&mut round, &secrets);
    let survivors: Vec<usize> = (0..5).collect();
    let masked: Vec<(usize, Vec<u32>)> = (0..5)
        .map(|i| {
            (
                i,
                mask(&round, i, &secrets[i], &input(i, 50)).expect("masks"),
            )
        })
        .collect();
    let mut reveals: Vec<Reveal> = (0..5).map(|i| reveal(i, &held[i], &survivors)).collect();
    reveals[0].mask_shares.push((1, [7; 32]));
    assert_eq!(unmask(&round, &masked, &reveals, 50), Ok(plain_sum(5, &[])));
}

#[test]
fn a_low_order_key_is_refused_by_name() {
    let (mut round, secrets) = setup(3, 2, 1);
    deal_all(&mut round, &secrets);
    assert!(round.roster[2].usable());
    round.roster[2].mask = [0; 32];
    assert!(!round.roster[2].usable());
    assert_eq!(
        mask(&round, 0, &secrets[0], &[1, 2, 3]),
        Err(SecAggError::LowOrderKey { client: 2 })
    );
}

#[test]
fn shamir_rebuilds_from_any_threshold_shares_and_not_from_fewer() {
    let secret = [0xa5u8; 32];
    let xs: Vec<u8> = (1..=7).collect();
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let shares: Vec<(u8, [u8; 32])> = xs
        .iter()
        .copied()
        .zip(split(&secret, 4, &xs, &mut rng))
        .collect();
    for start in 0..4 {
        assert_eq!(combine(&shares[start..start + 4], 4), secret);
    }
    assert_ne!(combine(&shares[..3], 3), secret);
    assert_eq!(gf_mul(gf_inv(0x53), 0x53), 1);
}

#[test]
fn the_graph_is_symmetric_with_the_asked_degree_and_parameters_are_checked() {
    let (round, _) = setup(20, 6, 3);
    for i in 0..20 {
        let n = round.neighbours(i);
        assert_eq!(n.len(), 6, "client {i}");
        assert!(!n.contains(&i));
        for j in n {
            assert!(round.neighbours(*j).contains(&i));
        }
    }
    let roster = vec![ClientSecrets::from_seed([1; 32]).public(); 3];
    assert!(
        Round::new([0; 32], roster.clone(), 2, 3).is_err(),
        "threshold above degree"
    );
    assert!(Round::new([0; 32], roster.clone(), 2, 0).is_err());
    assert!(Round::new([0; 32], roster[..1].to_vec(), 2, 1).is_err());
}

#[test]
fn fixed_point_sums_are_exact_to_the_scale_and_clamped() {
    let fp = FixedPoint::new(1.0, 10).expect("valid");
    let a = fp.encode(&[0.25, -0.5, 3.0, f32::NAN]);
    let b = fp.encode(&[0.25, -0.75, 3.0, 0.0]);
    let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
    let d = fp.decode(&sum);
    assert!(
        (d[0] - 0.5).abs() < 1e-6 && (d[1] + 1.25).abs() < 1e-6,
        "{d:?}"
    );
    assert!((d[2] - 2.0).abs() < 1e-6, "clamped to the bound: {d:?}");
    assert_eq!(d[3], 0.0);
    // Ten values at the bound do not overflow.
    let ten: u32 = (0..10).fold(0u32, |s, _| s.wrapping_add(fp.encode(&[-1.0])[0]));
    assert!((fp.decode(&[ten])[0] + 10.0).abs() < 1e-6);
    assert!(FixedPoint::new(0.0, 10).is_err());
}

/// A client that never dealt takes no part: no one masks with it, and the sum is the other
/// clients' (with one of those dropping after dealing, too).
#[test]
fn a_client_that_did_not_deal_is_left_out_of_every_mask() {
    let (mut round, secrets) = setup(6, 5, 3);
    let held = deal_except(&mut round, &secrets, &[4]);
    assert!(!round.is_active(4) && round.is_active(0));
    for dropped in [&[4][..], &[4, 1]] {
        let survivors: Vec<usize> = (0..6).filter(|i| !dropped.contains(i)).collect();
        let mut masked: Vec<(usize, Vec<u32>)> = survivors
            .iter()
            .map(|i| {
                (
                    *i,
                    mask(&round, *i, &secrets[*i], &input(*i, 50)).expect("masks"),
                )
            })
            .collect();
        // Client 4's masked input, were it sent anyway, is not added.
        masked.push((4, input(4, 50)));
        let reveals: Vec<Reveal> = survivors
            .iter()
            .map(|i| reveal(*i, &held[*i], &survivors))
            .collect();
        assert_eq!(
            unmask(&round, &masked, &reveals, 50),
            Ok(plain_sum(6, dropped)),
            "{dropped:?}"
        );
    }
}
