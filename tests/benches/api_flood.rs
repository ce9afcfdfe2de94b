//! Issue 22's `/status` flood: how much longer a campaign takes while clients hammer a node's
//! unauthenticated `GET /status`, against the same campaign with the API idle.
//!
//! Three loopback nodes run a 4-job, 2-generation digits campaign to the end, first with no
//! API traffic, then with `CLIENTS` tasks each looping `GET /status` on node 0 (the submitter,
//! which also trains and votes), for `ROUNDS` seeds (7). Prints the times, the ratio of the
//! medians, and the requests served.
//! Run: `cargo bench -p hivemesh-tests --bench api_flood` (`CLIENTS=8` to change the load).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hivemesh_node::api_client;
use hivemesh_tests::{cluster, digits_nas_spec, serve_api, test_key, wait_finished};

/// One run: the campaign's wall time and the requests served meanwhile.
async fn run(seed: u64, clients: usize) -> (Duration, u64) {
    let (_dirs, mut nodes) = cluster(&format!("flood{seed}-"), 3, |_, _| {}).await;
    let addr = serve_api(nodes[0].client.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    for _ in 0..clients {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = api_client::request(addr, "GET", "/status", &[], &[]).await
                    && r.status == 200
                {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let roster: Vec<_> = (0..3).map(|i| test_key(i).public()).collect();
    let started = Instant::now();
    let id = nodes[0]
        .client
        .submit(digits_nas_spec(&roster, 4, 2, seed))
        .await
        .expect("accepted");
    for n in nodes.iter_mut() {
        wait_finished(n, id).await;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for n in nodes {
        n.stop().await;
    }
    (took, served.load(Ordering::Relaxed))
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let rounds: u64 = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut idle, mut flooded, mut served) = (Vec::new(), Vec::new(), 0);
        // Alternating, each seed once per condition, so drift hits both alike.
        for seed in 1..=rounds {
            idle.push(run(seed, 0).await.0.as_secs_f64());
            let (t, n) = run(seed, clients).await;
            flooded.push(t.as_secs_f64());
            served += n;
        }
        let total: f64 = flooded.iter().sum();
        println!("campaign idle, per seed (s):            {idle:.2?}");
        println!("campaign under {clients} clients, per seed (s): {flooded:.2?}");
        println!(
            "GET /status served under the flood: {served} ({:.0}/s)",
            served as f64 / total
        );
        let (mi, mf) = (median(idle), median(flooded));
        println!(
            "median idle {mi:.2} s, flooded {mf:.2} s, ratio {:.2}",
            mf / mi
        );
    });
}
