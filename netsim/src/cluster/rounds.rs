//! `train` campaigns: one line per round from the agreed settled jobs (ADR 0009).

use hivemesh_node::daemon::SettledJob;
use hivemesh_protocol::spec::CampaignKind;
use hivemesh_protocol::standings::JobStatus;
use serde::Serialize;

/// One round of a `train` campaign, as its agreed jobs tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundLine {
    /// The round (the final evaluation comes last, with `is_final`).
    pub round: u32,
    /// Whether this is the final model's evaluation on the test split.
    pub is_final: bool,
    /// Jobs of the round that settled with an agreed success.
    pub agreed: usize,
    /// Jobs of the round (void ones that ran again count once).
    pub jobs: usize,
    /// The start model's accuracy: on the validation split in a round, on the test split in
    /// the final evaluation (from the round's first agreed job).
    pub accuracy: Option<f64>,
    /// The mean of the agreed segments' last training loss.
    pub train_loss: Option<f64>,
    /// The start model's id (the final model's in the final evaluation), hex.
    pub model: Option<String>,
}

/// The round of a job and its place in the round, from its payload summary: `round R segment
/// S` (`train`), `round R client KEY` or `round R client KEY masked update` (`federated`), `round
/// R final evaluation`. Secure aggregation's keys, deal and reveal steps train nothing: `None`.
fn round_of(summary: &str) -> Option<(u32, String)> {
    let rest = summary.strip_prefix("round ")?;
    let (r, place) = rest.split_once(' ')?;
    let r = r.parse().ok()?;
    if let Some(s) = place.strip_prefix("segment ") {
        return Some((r, format!("{:010}", s.parse::<u32>().ok()?)));
    }
    let words = place.split(' ').count();
    let trains = place == "final evaluation"
        || (place.starts_with("client ") && (words == 2 || place.ends_with(" masked update")));
    trains.then(|| (r, place.to_string()))
}

/// The rounds of `jobs` (a `train` or `federated` campaign's settled jobs), in order; the last
/// round seen is the final evaluation when it has one job that names only a model.
pub fn round_lines(jobs: &[SettledJob]) -> Vec<RoundLine> {
    let mut lines: Vec<RoundLine> = Vec::new();
    let kinds = [CampaignKind::Train.name(), CampaignKind::Federated.name()];
    let mut keyed: Vec<(u32, String, &SettledJob)> = jobs
        .iter()
        .filter(|j| kinds.contains(&j.payload.0.as_str()))
        .filter_map(|j| round_of(&j.payload.1).map(|(r, s)| (r, s, j)))
        .collect();
    // A void job that ran again appears twice: keep its last settlement.
    keyed.sort_by(|a, b| (a.0, &a.1, a.2.generation).cmp(&(b.0, &b.1, b.2.generation)));
    keyed.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0 && later.1 == earlier.1;
        if same {
            earlier.2 = later.2;
        }
        same
    });
    for (round, _, j) in keyed {
        if lines.last().is_none_or(|l| l.round != round) {
            lines.push(RoundLine {
                round,
                is_final: false,
                agreed: 0,
                jobs: 0,
                accuracy: None,
                train_loss: None,
                model: None,
            });
        }
        let line = lines.last_mut().expect("pushed above");
        line.jobs += 1;
        if j.status != JobStatus::Success {
            continue;
        }
        line.agreed += 1;
        line.accuracy.get_or_insert(j.accuracy);
        line.is_final = j.artifacts.len() == 1;
        if line.model.is_none() {
            line.model = j.artifacts.last().cloned();
        }
        if let Some(l) = j.extra.get("train_loss_micro") {
            let n = line.agreed as f64;
            let x = *l as f64 / 1e6;
            line.train_loss = Some(line.train_loss.map_or(x, |m| m + (x - m) / n));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_read_from_train_and_federated_summaries() {
        assert_eq!(
            round_of("round 3 segment 2"),
            Some((3, "0000000002".into()))
        );
        assert_eq!(
            round_of("round 1 client ab12"),
            Some((1, "client ab12".into()))
        );
        assert_eq!(
            round_of("round 1 client ab12 masked update"),
            Some((1, "client ab12 masked update".into()))
        );
        assert_eq!(
            round_of("round 4 final evaluation"),
            Some((4, "final evaluation".into()))
        );
        for step in ["keys", "deal", "reveal"] {
            assert_eq!(round_of(&format!("round 1 client ab12 {step}")), None);
        }
        assert_eq!(round_of("generation 1"), None);
        assert_eq!(round_of("round x segment 2"), None);
    }
}
