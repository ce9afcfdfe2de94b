//! A cluster run's report folder: `report.json` (everything, machine-readable), `report.md`
//! (for people), `front.png`/`.svg` and `progress.png`/`.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hivemesh_protocol::spec::CampaignKind;
use hivemesh_protocol::standings::JobStatus;

use crate::cluster::{ClusterReport, Role};
use crate::plot;

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A plot failed.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// JSON encoding failed.
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<(), ReportError> {
    // Temp file + rename: an interrupted run never leaves a torn report.
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ReportError::Io { path, source })
}

/// Writes the report folder `dir` (created if missing); returns the files written.
pub fn write_all(dir: &Path, r: &ClusterReport) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write(dir.join("report.json"), &serde_json::to_vec_pretty(r)?)?;
    write(dir.join("report.md"), markdown(r).as_bytes())?;
    let front_set: std::collections::BTreeSet<&str> =
        r.front.iter().map(|p| p.job.as_str()).collect();
    let points: Vec<plot::Point> = r
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Success)
        .map(|j| plot::Point {
            params: j.params,
            accuracy: j.accuracy,
            front: front_set.contains(j.job.as_str()),
        })
        .collect();
    plot::front(
        dir,
        &format!("{}: settled jobs and Pareto front", r.name),
        &points,
    )?;
    let total = r.jobs.len().max(1);
    plot::progress(dir, &format!("{}: progress", r.name), &r.progress, total)?;
    let mut out: Vec<PathBuf> = [
        "report.md",
        "report.json",
        "front.png",
        "front.svg",
        "progress.png",
        "progress.svg",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    if !r.rounds.is_empty() {
        let points: Vec<plot::RoundPoint> = r
            .rounds
            .iter()
            .filter(|l| !l.is_final)
            .map(|l| plot::RoundPoint {
                round: l.round,
                accuracy: l.accuracy,
                train_loss: l.train_loss,
            })
            .collect();
        plot::rounds(dir, &format!("{}: rounds", r.name), &points)?;
        out.extend(["rounds.png", "rounds.svg"].iter().map(|f| dir.join(f)));
    }
    if !r.shard_blobs.is_empty() {
        let shards = dir.join("shards");
        std::fs::create_dir_all(&shards).map_err(|source| ReportError::Io {
            path: shards.clone(),
            source,
        })?;
        for f in &r.shard_blobs {
            write(shards.join(&f.name), &f.bytes)?;
        }
        out.push(shards);
    }
    Ok(out)
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Honest => "honest",
        Role::Auditor => "honest (audit mode)",
        Role::Byzantine => "Byzantine",
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// The human report.
pub fn markdown(r: &ClusterReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# hivemesh cluster report: {}\n", r.name);
    let _ = writeln!(
        s,
        "Campaign `{}` ({}), {} real nodes on loopback, r = {}, q = {}, Byzantine strategy `{}`.\n",
        r.campaign,
        r.kind,
        r.nodes,
        r.redundancy,
        r.quorum,
        serde_json::to_value(r.strategy)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
    );
    verdict(&mut s, r);
    generations(&mut s, r);
    kind_results(&mut s, r);
    nodes(&mut s, r);
    standings(&mut s, r);
    faults(&mut s, r);
    let _ = writeln!(
        s,
        "\nEvery settled job, with its executors and audit verdict, is in `report.json`."
    );
    s
}

/// The verdict table: the checks and the throughput and overhead figures.
fn verdict(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(s, "## Verdict\n");
    let _ = writeln!(s, "| check | result |\n|---|---|");
    let _ = writeln!(
        s,
        "| campaign finished at every running honest node | {} |",
        yes(r.finished)
    );
    let _ = writeln!(
        s,
        "| ledger agreement: every running node holds the same closures | {} |",
        yes(r.grade.agreement)
    );
    let _ = writeln!(
        s,
        "| wrong results standing (a Byzantine node among the agreeing) | {} |",
        r.grade.wrong_results
    );
    let _ = writeln!(
        s,
        "| cheaters detected / missed / paid | {:?} / {:?} / {:?} |",
        r.grade.cheaters_detected, r.grade.cheaters_missed, r.grade.cheaters_paid
    );
    let _ = writeln!(
        s,
        "| honest nodes penalised | {:?} |",
        r.grade.honest_penalised
    );
    if !r.shards.is_empty() {
        let ok = r.shards.iter().filter(|x| x.verified).count();
        let _ = writeln!(
            s,
            "| distillation shards agreed, held and verified | {ok} of {} ({}) |",
            r.shards.len(),
            yes(ok == r.shards.len())
        );
    }
    let settled = r
        .jobs
        .iter()
        .filter(|j| j.status != JobStatus::Void)
        .count();
    let _ = writeln!(
        s,
        "| throughput | {} jobs settled in {:.1} s = {:.1} jobs/min; {} executions ({:.2} per settled job) |",
        settled,
        r.wall_s,
        r.jobs_per_minute,
        r.executions,
        r.executions as f64 / settled.max(1) as f64
    );
    match &r.overhead {
        Some(o) => {
            let _ = writeln!(
                s,
                "| overhead: swarm CPU ÷ (r × single-node CPU for the same jobs) | {:.1} s ÷ ({} × {:.1} s; that run took {:.1} s wall) = **{:.2}** (goal ≤ 1.10) |",
                o.swarm_cpu_s, o.redundancy, o.single_cpu_s, o.single_wall_s, o.ratio
            );
        }
        None => {
            let _ = writeln!(s, "| overhead | not measured |");
        }
    }
}

/// Per generation: closure root, closing times, jobs settled, best accuracy.
fn generations(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(s, "\n## Generations\n");
    let _ = writeln!(
        s,
        "| generation | closure root | first node closed (s) | last node closed (s) | jobs settled | best accuracy |\n|---:|---|---:|---:|---:|---:|"
    );
    for g in &r.generations {
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.1} | {:.1} | {} | {:.4} |",
            g.generation,
            &g.root[..16.min(g.root.len())],
            g.first_closed_s,
            g.last_closed_s,
            g.settled,
            g.best_accuracy
        );
    }
    let _ = writeln!(s, "\n![progress](progress.png)\n");
}

/// The campaign's results, as its kind shows them: the report's one dispatch on the kind.
/// Searches (architectures, losses) show the front of their settled jobs; a distillation shows
/// its shards.
fn kind_results(s: &mut String, r: &ClusterReport) {
    match CampaignKind::from_name(&r.kind) {
        Some(CampaignKind::Nas | CampaignKind::Loss) => front(s, r),
        Some(CampaignKind::Distill) => shards(s, r),
        Some(CampaignKind::Train) => rounds(s, r),
        Some(CampaignKind::Federated) => {
            rounds(s, r);
            privacy(s, r);
        }
        Some(CampaignKind::Prompt) => prompts(s, r),
        None => {}
    }
}

/// A prompt campaign's spending against its budgets and its front of prompts.
fn prompts(s: &mut String, r: &ClusterReport) {
    let n = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "## Prompts
"
    );
    let _ = writeln!(
        s,
        "Spent {} of {} model calls and {} of {} tokens; {} proposals were answered by the \
         swarm's cache instead of the model.\n",
        n("model_calls"),
        n("max_calls"),
        n("tokens"),
        n("max_tokens"),
        n("cache_hits")
    );
    let _ = writeln!(
        s,
        "| log p(target given prompt), nats | length | generation | prompt |\n|---:|---:|---:|---|"
    );
    for p in &r.prompts {
        let text = p
            .text
            .clone()
            .map_or_else(|| format!("{:?}", p.genes), |t| format!("{t:?}"));
        let _ = writeln!(
            s,
            "| {:.4} | {} | {} | `{}` |",
            p.loglik,
            p.genes.len(),
            p.generation,
            text.replace('|', "\\|")
        );
    }
    let _ = writeln!(s);
}

/// A `train` campaign's rounds: agreed segments, the start model's validation accuracy, the
/// segments' training loss and the start model's id; then the final model on the test split.
fn rounds(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(
        s,
        "## Rounds
"
    );
    let _ = writeln!(
        s,
        "| round | agreed / jobs | start model accuracy | train loss | start model |\n|---|---:|---:|---:|---|"
    );
    for l in &r.rounds {
        let round = if l.is_final {
            "final (test split)".to_string()
        } else {
            l.round.to_string()
        };
        let acc = l.accuracy.map_or("-".into(), |a| format!("{a:.4}"));
        let loss = l.train_loss.map_or("-".into(), |x| format!("{x:.4}"));
        let model = l.model.as_deref().map_or("-", |m| &m[..16.min(m.len())]);
        let _ = writeln!(
            s,
            "| {round} | {} / {} | {acc} | {loss} | `{model}` |",
            l.agreed, l.jobs
        );
    }
    let _ = writeln!(s, "\n![rounds](rounds.png)\n");
}

/// A federated campaign's privacy spent: the campaign's client-level `ε` after its last round
/// and each client's example-level `ε`, as node 0 states them from the agreed jobs.
fn privacy(s: &mut String, r: &ClusterReport) {
    let Some(p) = &r.privacy else {
        return;
    };
    let budget = p.budget.map_or("none".into(), |b| format!("ε = {b}"));
    let _ = writeln!(s, "## Privacy (δ = {}, budget {budget})\n", p.delta);
    if let Some(e) = p.campaign_epsilon.last() {
        let _ = writeln!(
            s,
            "Client level: the campaign's ε = {e:.3} after {} rounds.\n",
            p.campaign_epsilon.len()
        );
    }
    if p.clients.is_empty() {
        let _ = writeln!(s, "No example-level privacy.\n");
        return;
    }
    let _ = writeln!(s, "| client | rounds | example-level ε |\n|---|---:|---:|");
    for c in &p.clients {
        let key = &c.client[..12.min(c.client.len())];
        let _ = writeln!(s, "| `{key}` | {} | {:.3} |", c.rounds, c.epsilon);
    }
    let _ = writeln!(s);
}

/// The Pareto front.
fn front(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(
        s,
        "## Pareto front (accuracy up, parameters and FLOPs down)\n"
    );
    let _ = writeln!(
        s,
        "| accuracy | params | FLOPs | generation | job |\n|---:|---:|---:|---:|---|"
    );
    for p in &r.front {
        let _ = writeln!(
            s,
            "| {:.4} | {} | {} | {} | `{}` |",
            p.accuracy,
            p.params,
            p.flops,
            p.generation,
            &p.job[..16.min(p.job.len())]
        );
    }
    let _ = writeln!(s, "\n![front](front.png)\n");
}

/// Per node: role, key, closures, work and messages.
fn nodes(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(s, "## Nodes\n");
    let _ = writeln!(
        s,
        "| node | role | key | up | finished | closures | last root | trained | validated | refused |\n|---:|---|---|---|---|---:|---|---:|---:|---:|"
    );
    for v in &r.node_views {
        let last = v
            .closures
            .last()
            .map(|(_, root)| root[..12.min(root.len())].to_string())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} | {} | `{}` | {} | {} | {} |",
            v.index,
            role(v.role),
            &v.key[..12.min(v.key.len())],
            if v.up { "yes" } else { "no" },
            if v.finished { "yes" } else { "no" },
            v.closures.len(),
            last,
            v.jobs_trained,
            v.messages_validated,
            v.messages_rejected
        );
    }
}

/// The agreed ledger's standings.
fn standings(s: &mut String, r: &ClusterReport) {
    let _ = writeln!(s, "\n## Standings (from the agreed ledger)\n");
    let _ = writeln!(
        s,
        "| node | role | agreed | dissented | failed audits | points | reputation |\n|---:|---|---:|---:|---:|---:|---:|"
    );
    let mut standings = r.grade.standings.clone();
    standings.sort_by_key(|x| x.index);
    for st in &standings {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            st.index,
            role(st.role),
            st.score.agreed,
            st.score.dissented,
            st.score.failed_audits,
            st.score.points,
            st.score.reputation
        );
    }
}

/// The distillation shards (if any).
fn shards(s: &mut String, r: &ClusterReport) {
    if !r.shards.is_empty() {
        let _ = writeln!(s, "\n## Distillation shards\n");
        let _ = writeln!(
            s,
            "Each verified shard is in `shards/`: train a student on them with \
             `cargo run --release -p hivemesh-trainer --example mnist -- distill --shards DIR`.\n"
        );
        let _ = writeln!(
            s,
            "| samples | status | agreeing | teacher top-1 = label | blob | file |\n|---|---|---:|---:|---|---|"
        );
        for x in &r.shards {
            let _ = writeln!(
                s,
                "| {}..{} | {} | {} | {:.4} | `{}` | {} |",
                x.start,
                x.end,
                x.status,
                x.agreeing,
                x.teacher_accuracy,
                x.blob
                    .as_deref()
                    .map(|b| &b[..16.min(b.len())])
                    .unwrap_or("-"),
                x.file.as_deref().unwrap_or("NOT VERIFIED")
            );
        }
    }
}

/// The faults injected (if any).
fn faults(s: &mut String, r: &ClusterReport) {
    if !r.faults.is_empty() {
        let _ = writeln!(s, "\n## Faults injected\n");
        for f in &r.faults {
            let _ = writeln!(s, "- {:.1} s: {}", f.at_s, f.what);
        }
    }
}

/// One settled successful job as the hypervolume sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objectives {
    /// Test accuracy (maximised).
    pub accuracy: f64,
    /// Parameters (minimised).
    pub params: u64,
    /// FLOPs per sample (minimised).
    pub flops: u64,
}

/// The settled successful jobs of a `report.json`.
pub fn objectives_of(report: &serde_json::Value) -> Vec<Objectives> {
    report["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["status"] == "success")
        .map(|j| Objectives {
            accuracy: j["accuracy"].as_f64().unwrap_or(0.0),
            params: j["params"].as_u64().unwrap_or(0),
            flops: j["flops"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// The hypervolume of each set of jobs under one common reference, objectives minimised:
/// error (1 − accuracy, reference 1), params and FLOPs each divided by 1.1 × the largest seen
/// in any set (reference 1). Comparable across the sets, not across calls.
pub fn hypervolumes(sets: &[Vec<Objectives>]) -> Vec<f64> {
    let max_p = sets
        .iter()
        .flatten()
        .map(|o| o.params)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let max_f = sets
        .iter()
        .flatten()
        .map(|o| o.flops)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    sets.iter()
        .map(|s| {
            let pts: Vec<Vec<f64>> = s
                .iter()
                .map(|o| {
                    vec![
                        1.0 - o.accuracy,
                        o.params as f64 / max_p,
                        o.flops as f64 / max_f,
                    ]
                })
                .collect();
            hivemesh_evolve::hypervolume::hypervolume(&pts, &[1.0, 1.0, 1.0]).unwrap_or(0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dominating_set_has_the_larger_hypervolume() {
        let o = |accuracy, params, flops| Objectives {
            accuracy,
            params,
            flops,
        };
        let worse = vec![o(0.80, 1000, 2000), o(0.85, 4000, 8000)];
        let better = vec![o(0.82, 900, 1800), o(0.90, 4000, 8000)];
        let hv = hypervolumes(&[worse.clone(), better.clone()]);
        assert!(hv[1] > hv[0] && hv[0] > 0.0, "{hv:?}");
        // The common reference: adding the other set's points changes nothing for either.
        let both: Vec<Objectives> = worse.iter().chain(&better).copied().collect();
        let hv2 = hypervolumes(&[both, better]);
        assert!(
            (hv2[0] - hv2[1]).abs() < 1e-12,
            "better dominates worse: {hv2:?}"
        );
    }
}
