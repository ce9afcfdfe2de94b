//! Non-dominated sorting speed: 10,000 individuals × 2 and 3 objectives (goal < 100 ms for 3),
//! beside the O(MN²) textbook sort on 2,000 individuals as a yardstick.
//!
//! `cargo bench -p hivemesh-evolve --bench sort`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hivemesh_evolve::random::uniform;
use hivemesh_evolve::sort::{crowding_distance, naive_non_dominated_sort, non_dominated_sort};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fn points(n: usize, m: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..m).map(|_| uniform(&mut rng)).collect())
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("non_dominated_sort");
    g.sample_size(20);
    for m in [2, 3] {
        let p = points(10_000, m, 7);
        g.bench_function(format!("ens_bs/10000x{m}"), |b| {
            b.iter(|| black_box(non_dominated_sort(&p)))
        });
    }
    let p = points(2_000, 3, 7);
    g.bench_function("ens_bs/2000x3", |b| {
        b.iter(|| black_box(non_dominated_sort(&p)))
    });
    g.bench_function("naive/2000x3", |b| {
        b.iter(|| black_box(naive_non_dominated_sort(&p)))
    });
    let p = points(10_000, 3, 7);
    let fronts = non_dominated_sort(&p);
    g.bench_function("crowding/10000x3 (all fronts)", |b| {
        b.iter(|| {
            for f in &fronts {
                black_box(crowding_distance(&p, f));
            }
        })
    });
    g.finish();
}

criterion_group!(sort, benches);
criterion_main!(sort);
