//! Node benchmarks (a bench binary that prints figures; `cargo bench -p hivemesh-node --bench
//! swarm`):
//!
//! 1. **propagation**: 32 nodes on loopback (TCP + noise + yamux, gossipsub mesh), each
//!    following one campaign; nodes take turns publishing a signed protocol message and we
//!    time its arrival, *validated* (signature, campaign, protocol verdict, stored), at every
//!    other node: p50 / p99 / max over all (message, receiver) pairs. Goal: p99 < 100 ms.
//! 2. **validation throughput**: one node receives a burst of distinct signed messages from a
//!    peer; messages validated (and durably stored) per second at the receiver. Yardstick, in
//!    the same run: bare ed25519 verifications per second on one core (the floor of the work).
//! 3. **idle RSS**: a `hivemesh run` process with no campaign, after 5 s (goal < 100 MB).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hivemesh_node::daemon::{self, Client, Config, Event};
use hivemesh_protocol::envelope::Signed;
use hivemesh_protocol::id::MessageId;
use hivemesh_protocol::message::Heartbeat;
use hivemesh_protocol::spec::{
    BackendClass, CampaignSpec, LrSchedule, NasParams, NasSpace, Optimizer, Schedule, Search,
    Strategy, TrainingBudget,
};
use hivemesh_protocol::{CampaignId, Keypair, Timestamp, Tolerance};
use tokio::sync::mpsc;

const NODES: usize = 32;
const MESSAGES: usize = 200;
const BURST: usize = 5_000;

fn key(i: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&i.to_le_bytes());
    secret[31] = 0xbe;
    Keypair::from_secret_bytes(secret)
}

fn now_ms() -> u64 {
    hivemesh_node::unix_now().as_millis()
}

/// A campaign nobody here executes (its roster is two absent keys): nodes follow it and gossip
/// on its topic, and no training runs during the measurement.
fn idle_campaign() -> CampaignSpec {
    let mut roster = vec![key(1000).public(), key(1001).public()];
    roster.sort();
    CampaignSpec {
        name: "bench: propagation".into(),
        created_at: Timestamp(now_ms()),
        search: Search::Nas(NasParams {
            space: NasSpace::Mlp {
                max_layers: 1,
                widths: vec![16],
            },
            strategy: Strategy::Nsga2,
            population: 2,
            generations: 1,
        }),
        dataset: hivemesh_node::executor::builtin_digits(),
        budget: TrainingBudget {
            epochs: 1,
            max_steps: Some(1),
            batch_size: 32,
            optimizer: Optimizer::Adam,
            learning_rate: 1e-2,
            schedule: LrSchedule::Constant,
        },
        seed: 1,
        redundancy: 2,
        quorum: 2,
        tolerance: Tolerance::EXACT,
        audit_rate_ppm: 0,
        backend: BackendClass::CpuNdarray,
        code_version: hivemesh_node::executor::CODE_VERSION.into(),
        roster,
        schedule: Schedule::default(),
    }
}

struct Bench {
    clients: Vec<Client>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    _dirs: Vec<std::path::PathBuf>,
}

async fn start(n: usize, tag: &str, gossip_rate: f64) -> Bench {
    let mut clients: Vec<Client> = Vec::new();
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir =
            std::env::temp_dir().join(format!("hivemesh-bench-{tag}-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = Config::new(dir.clone());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
        cfg.gossip_rate = gossip_rate;
        // A tree plus a ring: connected, with paths of a few hops.
        for j in [0, i / 2, i.saturating_sub(1)] {
            if j < i && !cfg.bootstrap.contains(&addrs[j]) {
                cfg.bootstrap.push(addrs[j].clone());
            }
        }
        let (client, ev) = daemon::start(cfg, key(i as u64)).expect("start");
        let mut events = client.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ev.run(async {
            let _ = stopped.await;
        }));
        let addr = loop {
            if let Ok(Event::Listening(a)) = events.recv().await {
                break a;
            }
        };
        addrs.push(addr);
        clients.push(client);
        stops.push(stop);
        dirs.push(dir);
    }
    Bench {
        clients,
        stops,
        _dirs: dirs,
    }
}

impl Bench {
    async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for d in &self._dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Submits the idle campaign at node 0 and waits until every node follows it and has a
    /// subscribed gossip peer for it.
    async fn campaign(&self) -> CampaignId {
        let mut subs: Vec<_> = self.clients.iter().map(Client::subscribe).collect();
        let id = self.clients[0]
            .submit(idle_campaign())
            .await
            .expect("accepted");
        for (i, rx) in subs.iter_mut().enumerate() {
            let mut following = i == 0;
            let mut subscribed = false;
            let wait = async {
                while !(following && subscribed) {
                    match rx.recv().await {
                        Ok(Event::CampaignAdded(c)) if c == id => following = true,
                        Ok(Event::Subscribed { campaign, .. }) if campaign == id => {
                            subscribed = true
                        }
                        Ok(_) => {}
                        Err(_) => {}
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .expect("every node follows the campaign");
        }
        id
    }
}

fn heartbeat(id: CampaignId, signer: u64, seq: usize) -> Signed<Heartbeat> {
    let hb = Heartbeat {
        campaign: id,
        generation: 0,
        running: (seq % 60_000) as u16,
        capacity: 1,
        job_ms: 0,
        issued_at: Timestamp(now_ms()),
    };
    Signed::sign_and_encode(hb, &key(signer)).expect("sign")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn propagation() {
    let b = start(NODES, "prop", daemon::GOSSIP_RATE_PER_PEER).await;
    let id = b.campaign().await;
    // Let the gossipsub mesh form (a few heartbeats) before timing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let topic = hivemesh_node::net::campaign_topic(&id).to_string();
    let (tx, mut rx) = mpsc::channel::<(MessageId, usize, Instant)>(65_536);
    for (i, c) in b.clients.iter().enumerate() {
        let mut events = c.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let Event::Accepted(m) = e
                    && tx.send((m, i, Instant::now())).await.is_err()
                {
                    return;
                }
            }
        });
    }
    let mut sent: HashMap<MessageId, (usize, Instant)> = HashMap::new();
    let mut lat = Vec::new();
    let mut missing = 0usize;
    let mut per_msg = Vec::new();
    let mut first_hop = Vec::new();
    for m in 0..MESSAGES {
        let from = m % NODES;
        let msg = heartbeat(id, from as u64, m);
        let t0 = Instant::now();
        sent.insert(msg.id(), (from, t0));
        b.clients[from]
            .publish_raw(topic.clone(), msg.bytes().to_vec())
            .await
            .expect("published");
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while got < NODES - 1 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((mid, node, at))) => {
                    if let Some((origin, t)) = sent.get(&mid)
                        && *origin != node
                        && mid == msg.id()
                    {
                        let ms = at.duration_since(*t).as_secs_f64() * 1000.0;
                        lat.push(ms);
                        per_msg.push(ms);
                        got += 1;
                    }
                }
                _ => break,
            }
        }
        missing += NODES - 1 - got;
        first_hop.push(per_msg.iter().copied().fold(f64::INFINITY, f64::min));
        per_msg.clear();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat.sort_by(f64::total_cmp);
    first_hop.sort_by(f64::total_cmp);
    println!(
        "  first receiver per message: p50 {:.1} ms, p99 {:.1} ms; all deliveries p90 {:.1} ms, p95 {:.1} ms",
        percentile(&first_hop, 0.5),
        percentile(&first_hop, 0.99),
        percentile(&lat, 0.9),
        percentile(&lat, 0.95),
    );
    println!(
        "propagation: {NODES} nodes, {MESSAGES} signed messages, {} deliveries timed ({missing} missing): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    b.stop().await;
}

async fn throughput() {
    let b = start(2, "tput", 1e9).await;
    let id = b.campaign().await;
    let topic = hivemesh_node::net::campaign_topic(&id).to_string();
    let msgs: Vec<Vec<u8>> = (0..BURST)
        .map(|m| heartbeat(id, 0, m).bytes().to_vec())
        .collect();
    let mut events = b.clients[1].subscribe();
    let t0 = Instant::now();
    let sender = b.clients[0].clone();
    let topic2 = topic.clone();
    tokio::spawn(async move {
        for m in msgs {
            let _ = sender.publish_raw(topic2.clone(), m).await;
        }
    });
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got < BURST {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(Event::Accepted(_))) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => got += n as usize,
            _ => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = got as f64 / secs;

    // Yardstick: bare signature verification of the same messages, one core.
    let sample: Vec<Vec<u8>> = (0..2_000)
        .map(|m| heartbeat(id, 0, m).bytes().to_vec())
        .collect();
    let t = Instant::now();
    for m in &sample {
        let ok = hivemesh_protocol::AnySigned::verify_and_decode(
            m,
            &hivemesh_protocol::Context::sync(id),
        );
        assert!(ok.is_ok());
    }
    let verify = sample.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "validation: {got}/{BURST} messages validated and stored by one node in {secs:.2} s = {rate:.0} msg/s; \
         yardstick: bare verify+decode {verify:.0} msg/s on one core; ratio {:.2}",
        rate / verify
    );
    b.stop().await;
}

fn idle_rss() {
    let dir = std::env::temp_dir().join(format!("hivemesh-bench-rss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hivemesh"))
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn hivemesh");
    // The measurement is RSS after 5 s of idling.
    std::thread::sleep(Duration::from_secs(5));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ? kB")
        .to_string();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "idle: `hivemesh run` with no campaign after 5 s: {}",
        rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we use.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(propagation());
    rt.block_on(throughput());
    idle_rss();
}
