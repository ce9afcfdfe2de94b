//! Cost of secure aggregation (ADR 0010) for one round of 10 clients, beside plain
//! aggregation (each client sends its update as `f32`; the sum is added up in `f32`): bytes each
//! client sends and seconds of computation per client and for the unmasking, with 0, 1 and 2
//! clients dropping out after dealing their shares. The update is the MNIST MLP's (101,770
//! values). Prints a table (no criterion: one round is long enough to time directly; each
//! figure is the median of 5 runs).
//!
//! Run: `cargo bench -p hivemesh-protocol --bench secagg`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use hivemesh_protocol::secagg::{
    ClientSecrets, FixedPoint, Held, Reveal, Round, deal, mask, open, reveal, unmask,
};

const CLIENTS: usize = 10;
const VALUES: usize = 101_770;
const THRESHOLD: usize = 6;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds `f` takes (median of 5).
fn time<T>(mut f: impl FnMut() -> T) -> f64 {
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn updates() -> Vec<Vec<f32>> {
    (0..CLIENTS)
        .map(|i| {
            (0..VALUES)
                .map(|k| (((i * 7919 + k * 104_729) % 2001) as f32 - 1000.0) * 1e-6)
                .collect()
        })
        .collect()
}

fn main() {
    let xs = updates();
    let plain_sum = time(|| {
        let mut s = vec![0f32; VALUES];
        for x in &xs {
            s.iter_mut().zip(x).for_each(|(a, b)| *a += b);
        }
        s
    });
    println!(
        "secure aggregation, {CLIENTS} clients, {VALUES} values, threshold {THRESHOLD}, all pairs"
    );
    println!(
        "| dropouts | bytes sent per client (secagg) | bytes per client (plain f32) | ratio | deal s/client | mask s/client | unmask s (whole round) | plain sum s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for dropped in 0..=2usize {
        let secrets: Vec<ClientSecrets> = (0..CLIENTS)
            .map(|i| ClientSecrets::from_seed([i as u8 + 1; 32]))
            .collect();
        let roster: Vec<_> = secrets.iter().map(ClientSecrets::public).collect();
        let mut round = Round::new([1; 32], roster, CLIENTS - 1, THRESHOLD).unwrap();
        let fp = FixedPoint::new(1.0, CLIENTS).unwrap();
        let t_deal = time(|| deal(&round, 0, &secrets[0], [9; 32]).unwrap());
        let mut held: Vec<Vec<Held>> = vec![Vec::new(); CLIENTS];
        let mut sealed_bytes = 0;
        for (i, s) in secrets.iter().enumerate() {
            let dealt = deal(&round, i, s, [i as u8; 32]).unwrap();
            round.record_deal(i, &dealt).unwrap();
            for sealed in dealt {
                if i == 0 {
                    sealed_bytes += postcard::to_stdvec(&sealed).unwrap().len();
                }
                let to = usize::from(sealed.to);
                held[to].push(open(&round, to, &secrets[to], &sealed).unwrap());
            }
        }
        let survivors: Vec<usize> = (dropped..CLIENTS).collect();
        let encoded: Vec<Vec<u32>> = xs.iter().map(|x| fp.encode(x)).collect();
        let t_mask = time(|| mask(&round, dropped, &secrets[dropped], &encoded[dropped]).unwrap());
        let masked: Vec<(usize, Vec<u32>)> = survivors
            .iter()
            .map(|i| (*i, mask(&round, *i, &secrets[*i], &encoded[*i]).unwrap()))
            .collect();
        let reveals: Vec<Reveal> = survivors
            .iter()
            .map(|i| reveal(*i, &held[*i], &survivors))
            .collect();
        let t_unmask = time(|| unmask(&round, &masked, &reveals, VALUES).unwrap());
        let sum = fp.decode(&unmask(&round, &masked, &reveals, VALUES).unwrap());
        let mut want = vec![0f64; VALUES];
        for i in &survivors {
            want.iter_mut()
                .zip(&xs[*i])
                .for_each(|(a, b)| *a += f64::from(*b));
        }
        let err = sum
            .iter()
            .zip(&want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-6, "the unmasked sum is off by {err}");
        let keys = postcard::to_stdvec(&round.roster[0]).unwrap().len();
        let reveal_bytes = postcard::to_stdvec(&reveals[0]).unwrap().len();
        let secagg_bytes = keys + sealed_bytes + 4 * VALUES + reveal_bytes;
        let plain_bytes = 4 * VALUES;
        println!(
            "| {dropped} | {secagg_bytes} ({keys} keys + {sealed_bytes} shares + {} masked + {reveal_bytes} reveal) | {plain_bytes} | {:.4} | {t_deal:.5} | {t_mask:.4} | {t_unmask:.4} | {plain_sum:.5} |",
            4 * VALUES,
            secagg_bytes as f64 / plain_bytes as f64,
        );
    }
}
