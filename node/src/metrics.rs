//! The node's Prometheus metrics: one struct, shared (`Arc`) between the event loop, which
//! counts, and the HTTP API, which renders `/metrics`. Every label set is bounded: labels are
//! fixed words (message kinds, rejection classes, outcomes), never ids or peers.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label: a fixed name and one of a fixed set of words.
pub type Label = [(&'static str, &'static str); 1];

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connected peers.
    pub peers: Gauge,
    /// Campaigns followed.
    pub campaigns: Gauge,
    /// Jobs (audits included) training now.
    pub jobs_running: Gauge,
    /// Network messages validated and accepted, by message kind.
    pub accepted: Family<Label, Counter>,
    /// Network messages refused, by reason class (the protocol's error labels, `rate_limited`,
    /// `campaign_refused`, `blob_hash`).
    pub rejected: Family<Label, Counter>,
    /// Jobs this node ran, by result: `success`, `failure` (a deterministic failure reported
    /// like a result) or `abandoned` (could not run here).
    pub jobs_run: Family<Label, Counter>,
    /// Jobs settled in closed generations, by status: `success`, `failure`, `void`.
    pub jobs_settled: Family<Label, Counter>,
    /// Seconds spent training (wall time of every job run here).
    pub training_seconds: Counter<f64, AtomicU64>,
    /// Audit outcomes: `reported` (reports this node published), `confirmed` and `overturned`
    /// (verdicts in closed generations).
    pub audits: Family<Label, Counter>,
    /// Blob fetches from peers, by result: `ok`, `failed`.
    pub blob_fetches: Family<Label, Counter>,
    /// Bytes of blobs fetched from peers (hash-checked).
    pub blob_bytes_fetched: Counter,
    /// Store writes that failed (a full disk, an I/O error); counted by the store itself.
    pub store_write_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `hivemesh` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hivemesh");
        let m = Metrics {
            registry: Registry::default(),
            peers: Gauge::default(),
            campaigns: Gauge::default(),
            jobs_running: Gauge::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            jobs_run: Family::default(),
            jobs_settled: Family::default(),
            training_seconds: Counter::default(),
            audits: Family::default(),
            blob_fetches: Family::default(),
            blob_bytes_fetched: Counter::default(),
            store_write_failures: Counter::default(),
        };
        registry.register("peers", "Connected peers", m.peers.clone());
        registry.register("campaigns", "Campaigns followed", m.campaigns.clone());
        registry.register(
            "jobs_running",
            "Jobs (audits included) training now",
            m.jobs_running.clone(),
        );
        registry.register(
            "messages_accepted",
            "Network messages validated and accepted, by kind",
            m.accepted.clone(),
        );
        registry.register(
            "messages_rejected",
            "Network messages refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "jobs_run",
            "Jobs run here, by result (success, failure, abandoned)",
            m.jobs_run.clone(),
        );
        registry.register(
            "jobs_settled",
            "Jobs settled in closed generations, by status (success, failure, void)",
            m.jobs_settled.clone(),
        );
        registry.register(
            "training_seconds",
            "Wall-clock seconds spent training jobs here",
            m.training_seconds.clone(),
        );
        registry.register(
            "audits",
            "Audit outcomes (reported here; confirmed and overturned in closures)",
            m.audits.clone(),
        );
        registry.register(
            "blob_fetches",
            "Blob fetches from peers, by result (ok, failed)",
            m.blob_fetches.clone(),
        );
        registry.register(
            "blob_bytes_fetched",
            "Bytes of hash-checked blobs fetched from peers",
            m.blob_bytes_fetched.clone(),
        );
        registry.register(
            "store_write_failures",
            "Store writes that failed (a full disk, an I/O error); failed results and messages are kept and retried",
            m.store_write_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one event in a labelled family.
    pub fn count(family: &Family<Label, Counter>, name: &'static str, value: &'static str) {
        family.get_or_create(&[(name, value)]).inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_their_labels() {
        let m = Metrics::new();
        Metrics::count(&m.rejected, "reason", "bad_signature");
        Metrics::count(&m.rejected, "reason", "bad_signature");
        Metrics::count(&m.jobs_run, "result", "abandoned");
        m.training_seconds.inc_by(1.5);
        m.peers.set(3);
        let text = m.render().expect("render");
        assert!(
            text.contains("hivemesh_messages_rejected_total{reason=\"bad_signature\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hivemesh_jobs_run_total{result=\"abandoned\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hivemesh_training_seconds_total 1.5"),
            "{text}"
        );
        assert!(text.contains("hivemesh_peers 3"), "{text}");
    }
}
