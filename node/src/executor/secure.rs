//! Secure aggregation in `federated` rounds (ADR 0010): the four steps of a round (keys,
//! deal, masked update, reveal) and the unmasking of a round's sums that starts the next.
//!
//! A round's roster is split into groups (roster position modulo `secure.buckets`); each group
//! is one secure-aggregation round of [`secagg`] with its own context, so each group's sum is
//! revealed and the campaign's aggregate combines the groups' means. Each step is a pure
//! function of this node's secret and the agreed blobs the job names, so nothing is kept
//! between steps and a restarted node does the same again:
//! - **keys**: fresh keys for this round, from this node's secret, the campaign and the round;
//! - **deal**: Shamir shares of this round's secrets, sealed for each neighbour in the group,
//!   with their hashes;
//! - **masked update**: the update (clipped, with this client's share of the client-level
//!   noise) in fixed point, masked with the self-mask and the pairwise masks of the group's
//!   clients that dealt;
//! - **reveal**: for each neighbour, the share of its self-mask if it survived, else of its
//!   mask key — nothing at all for a group whose survivors are fewer than the campaign allows
//!   a sum to hide.
//!
//! Every node unmasks the same way: a group whose sum cannot be unmasked (too many dropouts, a
//! dealer's shares that do not rebuild its committed secret, a masked update of the wrong
//! length) is left out, and with no group left the model stays as it was.

use hivemesh_protocol::id::BlobId;
use hivemesh_protocol::message::{FailureKind, Metrics, Outcome};
use hivemesh_protocol::secagg::{
    self, ClientKeys, ClientSecrets, FixedPoint, Held, Reveal, Round, Sealed,
};
use hivemesh_protocol::spec::{FedJob, FederatedParams, SecureRound, SecureStep};
use hivemesh_trainer::model::{SavedTensor, WeightsFile};
use hivemesh_trainer::rounds::Update;

use super::{ExecError, JobRun, Ran, failure, fetch};

/// Most bytes a keys, deal or reveal blob may hold (a deal of 254 neighbours is about 40 KB).
pub const SMALL_BLOB: usize = 1 << 20;

/// This client's secrets for `round` of `campaign` and the seed of its deal's polynomials:
/// fresh each round and the same in each of its steps, from this node's secret (no one else
/// can draw them).
fn round_secrets(
    node_secret: &[u8; 32],
    campaign: &[u8; 32],
    round: u32,
) -> (ClientSecrets, [u8; 32]) {
    let seed = |purpose: &[u8]| {
        *blake3::Hasher::new_keyed(node_secret)
            .update(b"hivemesh 2026-12 federated secure aggregation")
            .update(purpose)
            .update(campaign)
            .update(&round.to_le_bytes())
            .finalize()
            .as_bytes()
    };
    (ClientSecrets::from_seed(seed(b"secrets")), seed(b"deal"))
}

/// The context every key and mask of one group of one round is bound to.
fn context(campaign: &[u8; 32], round: u32, group: usize) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("hivemesh 2026-12 federated secure aggregation group")
        .update(campaign)
        .update(&round.to_le_bytes())
        .update(&(group as u64).to_le_bytes())
        .finalize()
        .as_bytes()
}

/// One group of a round: its secure-aggregation round and the roster positions of its
/// clients (the group's client `i` is roster position `members[i]`).
struct Group {
    /// The group's round, with the deals recorded when the step has them.
    round: Round,
    /// Roster positions, in group order.
    members: Vec<usize>,
}

impl Group {
    /// The group's index of roster position `pos`.
    fn index_of(&self, pos: usize) -> Option<usize> {
        self.members.iter().position(|m| *m == pos)
    }

    /// The group's clients whose masked update was agreed, sorted.
    fn survivors(&self, r: &SecureRound) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| {
                self.round.is_active(*i)
                    && r.masked.get(self.members[*i]).is_some_and(Option::is_some)
            })
            .collect()
    }
}

/// The roster positions of each group.
fn group_positions(n: usize, buckets: u32) -> Vec<Vec<usize>> {
    let b = (buckets.max(1) as usize).min(n.max(1));
    (0..b).map(|g| (g..n).step_by(b).collect()).collect()
}

/// A small blob the job names, decoded; `None` when it does not decode (a client's bad blob
/// leaves that client out, the same way on every node).
fn small<T: serde::de::DeserializeOwned>(
    job: &JobRun<'_>,
    id: &BlobId,
    what: &'static str,
) -> Result<Option<T>, ExecError> {
    let bytes = fetch(job.blobs, id, what)?;
    if bytes.len() > SMALL_BLOB {
        return Ok(None);
    }
    Ok(postcard::from_bytes(&bytes).ok())
}

/// Group `which` of round `r`: its clients with usable keys, the neighbour graph and threshold of the campaign, and the deals
/// recorded when `r` has them. `Ok(None)`: the group cannot run (fewer than two clients).
fn group(
    p: &FederatedParams,
    campaign: &[u8; 32],
    r: &SecureRound,
    which: usize,
    job: &JobRun<'_>,
) -> Result<Option<Group>, ExecError> {
    let secure = p
        .secure
        .unwrap_or(hivemesh_protocol::spec::SecureAggregation {
            buckets: 1,
            neighbours: 0,
        });
    let groups = group_positions(r.roster.len(), secure.buckets);
    let Some(positions) = groups.get(which) else {
        return Ok(None);
    };
    let mut members = Vec::new();
    let mut roster: Vec<ClientKeys> = Vec::new();
    for pos in positions {
        if let Some(keys) = small::<ClientKeys>(job, &r.roster[*pos].1, "client keys")?
            && keys.usable()
        {
            members.push(*pos);
            roster.push(keys);
        }
    }
    let n = roster.len();
    if n < 2 {
        return Ok(None);
    }
    let k = match secure.neighbours as usize {
        0 => n - 1,
        k => k,
    };
    let mut round = match Round::new(context(campaign, r.round, which), roster, k, 1) {
        Ok(round) => round,
        Err(_) => return Ok(None),
    };
    let degree = (0..n).map(|i| round.neighbours(i).len()).min().unwrap_or(1);
    // A majority of each client's neighbours rebuilds its secrets: fewer cannot collude to
    // unmask it, and up to the rest may drop out after dealing.
    round.threshold = degree / 2 + 1;
    for (i, pos) in members.iter().enumerate() {
        if let Some(Some(id)) = r.deals.get(*pos)
            && let Some(sealed) = small::<Vec<Sealed>>(job, id, "dealt shares")?
        {
            // A deal that is not one share per neighbour leaves its dealer out.
            let _ = round.record_deal(i, &sealed);
        }
    }
    Ok(Some(Group { round, members }))
}

/// This client's group in round `r` and its index there.
fn my_group(
    p: &FederatedParams,
    campaign: &[u8; 32],
    f: &FedJob,
    r: &SecureRound,
    job: &JobRun<'_>,
) -> Result<Result<(Group, usize), String>, ExecError> {
    let me = f
        .client
        .and_then(|c| r.roster.iter().position(|x| x.0 == c));
    let Some(pos) = me else {
        return Ok(Err("this client is not on the round's roster".into()));
    };
    let buckets = p.secure.map_or(1, |s| s.buckets.max(1)) as usize;
    let which = pos % buckets.min(r.roster.len().max(1));
    match group(p, campaign, r, which, job)? {
        Some(g) => match g.index_of(pos) {
            Some(i) => Ok(Ok((g, i))),
            None => Ok(Err("this client's keys are not usable".into())),
        },
        None => Ok(Err("this client's group has fewer than two clients".into())),
    }
}

/// A success naming `blob` (a step's one artifact).
fn published(blob: Vec<u8>) -> Ran {
    let id = BlobId::of_bytes(&blob);
    let metrics = Metrics {
        correct: 0,
        total: 0,
        params: 0,
        flops: 0,
        extra: Default::default(),
        artifacts: vec![id],
    };
    Ran {
        outcome: Outcome::Success(metrics),
        blobs: vec![(id, blob)],
    }
}

/// Runs a keys, deal or reveal step (the masked update is a client round: `federated::run`).
pub(super) fn run_step(
    p: &FederatedParams,
    f: &FedJob,
    node_secret: &[u8; 32],
    campaign: &[u8; 32],
    job: &JobRun<'_>,
) -> Result<Ran, ExecError> {
    let (secrets, deal_seed) = round_secrets(node_secret, campaign, f.round);
    let invalid = |e: String| Ok(Ran::nothing(failure(FailureKind::InvalidJob, e)));
    if f.step == SecureStep::Keys {
        let keys = postcard::to_stdvec(&secrets.public()).unwrap_or_default();
        return Ok(published(keys));
    }
    let Some(r) = &f.secure else {
        return invalid("a secure-aggregation step without its round".into());
    };
    let (g, me) = match my_group(p, campaign, f, r, job)? {
        Ok(x) => x,
        Err(e) => return invalid(e),
    };
    let blob = match f.step {
        SecureStep::Deal => match secagg::deal(&g.round, me, &secrets, deal_seed) {
            Ok(sealed) => postcard::to_stdvec(&sealed).unwrap_or_default(),
            Err(e) => return invalid(e.to_string()),
        },
        SecureStep::Reveal => {
            let r = reveal(p, r, &g, me, &secrets, job)?;
            postcard::to_stdvec(&r).unwrap_or_default()
        }
        _ => return invalid("not a keys, deal or reveal step".into()),
    };
    Ok(published(blob))
}

/// This client's reveal: nothing when its group's survivors are too few for the sum to hide
/// them (see [`hivemesh_protocol::spec::SecureAggregation::group_min`]).
fn reveal(
    p: &FederatedParams,
    r: &SecureRound,
    g: &Group,
    me: usize,
    secrets: &ClientSecrets,
    job: &JobRun<'_>,
) -> Result<Reveal, ExecError> {
    let survivors = g.survivors(r);
    let min = p.secure.map_or(2, |s| s.group_min(p.min_clients)) as usize;
    if survivors.len() < min || !survivors.contains(&me) {
        return Ok(Reveal {
            from: me as u16,
            self_shares: Vec::new(),
            mask_shares: Vec::new(),
        });
    }
    let mut held: Vec<Held> = Vec::new();
    for (i, pos) in g.members.iter().enumerate() {
        if i == me || !g.round.is_active(i) {
            continue;
        }
        let Some(Some(id)) = r.deals.get(*pos) else {
            continue;
        };
        if let Some(sealed) = small::<Vec<Sealed>>(job, id, "dealt shares")?
            && let Some(mine) = sealed.iter().find(|s| usize::from(s.to) == me)
            && let Ok(h) = secagg::open(&g.round, me, secrets, mine)
        {
            held.push(h);
        }
    }
    Ok(secagg::reveal(me, &held, &survivors))
}

/// The values of `u`, tensor after tensor.
fn flatten(u: &Update) -> Vec<f32> {
    u.tensors
        .iter()
        .flat_map(|t| {
            t.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect()
}

/// `values` in the layout of `weights` (`None` when the count differs).
fn unflatten(values: &[f32], weights: &WeightsFile) -> Option<Update> {
    let mut at = 0;
    let mut tensors = Vec::with_capacity(weights.tensors.len());
    for t in &weights.tensors {
        let n = t.data.len() / 4;
        let part = values.get(at..at + n)?;
        at += n;
        tensors.push(SavedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: part.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    (at == values.len()).then_some(Update { tensors })
}

/// The masked update of this client (its update already clipped and noised): the blob, or why
/// it cannot be made.
pub(super) fn masked_update(
    p: &FederatedParams,
    f: &FedJob,
    update: &Update,
    (node_secret, campaign): (&[u8; 32], &[u8; 32]),
    job: &JobRun<'_>,
) -> Result<Result<Vec<u8>, String>, ExecError> {
    let Some(r) = &f.secure else {
        return Ok(Err("a masked update without its round".into()));
    };
    let (g, me) = match my_group(p, campaign, f, r, job)? {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (secrets, _) = round_secrets(node_secret, campaign, f.round);
    let Some(bound) = p.secure_bound() else {
        return Ok(Err("the campaign has no secure aggregation".into()));
    };
    let fp = match FixedPoint::new(bound, g.members.len()) {
        Ok(fp) => fp,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let input = fp.encode(&flatten(update));
    match secagg::mask(&g.round, me, &secrets, &input) {
        Ok(y) => Ok(Ok(y.iter().flat_map(|v| v.to_le_bytes()).collect())),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The means of the groups of round `sums` whose sums unmask, as updates of `weights`'s
/// layout, in group order (groups that cannot be unmasked are left out, with a warning), and
/// the roster positions found at fault: a masked update of the wrong length, a revealed share
/// its dealer's hash refutes, a dealer whose shares rebuild another secret than it committed.
pub(super) fn group_means(
    p: &FederatedParams,
    campaign: &[u8; 32],
    sums: &SecureRound,
    weights: &WeightsFile,
    job: &JobRun<'_>,
) -> Result<(Vec<Update>, Vec<usize>), ExecError> {
    let mut flagged = Vec::new();
    let Some(bound) = p.secure_bound() else {
        return Ok((Vec::new(), flagged));
    };
    let len: usize = weights.tensors.iter().map(|t| t.data.len() / 4).sum();
    let min = p.secure.map_or(2, |s| s.group_min(p.min_clients)) as usize;
    let buckets = p.secure.map_or(1, |s| s.buckets);
    let mut means = Vec::new();
    for which in 0..group_positions(sums.roster.len(), buckets).len() {
        let Some(g) = group(p, campaign, sums, which, job)? else {
            continue;
        };
        let survivors = g.survivors(sums);
        if survivors.len() < min {
            tracing::warn!(
                round = sums.round,
                group = which,
                "too few survivors: left out"
            );
            continue;
        }
        let mut masked = Vec::with_capacity(survivors.len());
        for i in &survivors {
            if let Some(Some(id)) = sums.masked.get(g.members[*i]) {
                let bytes = fetch(job.blobs, id, "masked update")?;
                let y: Vec<u32> = bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if bytes.len() == 4 * len {
                    masked.push((*i, y));
                } else {
                    flagged.push(g.members[*i]);
                }
            }
        }
        let mut reveals = Vec::new();
        for pos in &g.members {
            if let Some(Some(id)) = sums.reveals.get(*pos)
                && let Some(r) = small::<Reveal>(job, id, "reveal")?
                && g.index_of(*pos) == Some(usize::from(r.from))
            {
                reveals.push(r);
            }
        }
        flagged.extend(
            secagg::bad_revealers(&g.round, &reveals)
                .into_iter()
                .map(|i| g.members[i]),
        );
        let sum = match secagg::unmask(&g.round, &masked, &reveals, len) {
            Ok(s) => s,
            Err(e) => {
                if let secagg::SecAggError::BadShares { client } = e {
                    flagged.push(g.members[client]);
                }
                tracing::warn!(round = sums.round, group = which, "left out: {e}");
                continue;
            }
        };
        let Ok(fp) = FixedPoint::new(bound, g.members.len()) else {
            continue;
        };
        let n = masked.len() as f32;
        let mean: Vec<f32> = fp.decode(&sum).iter().map(|v| v / n).collect();
        if let Some(u) = unflatten(&mean, weights)
            && u.check(weights).is_ok()
        {
            means.push(u);
        }
    }
    flagged.sort_unstable();
    flagged.dedup();
    Ok((means, flagged))
}

/// The blobs a secure job needs: the previous round's (for its start model) and this round's
/// so far (for its step).
pub fn job_blobs(f: &FedJob) -> Vec<(BlobId, &'static str)> {
    let mut out = Vec::new();
    let mut round = |r: &SecureRound, masked: bool| {
        out.extend(r.roster.iter().map(|k| (k.1, "client keys")));
        out.extend(r.deals.iter().flatten().map(|d| (*d, "dealt shares")));
        if masked {
            out.extend(r.masked.iter().flatten().map(|m| (*m, "masked update")));
            out.extend(r.reveals.iter().flatten().map(|m| (*m, "reveal")));
        }
    };
    let needs_start = matches!(f.step, SecureStep::Mask | SecureStep::Train);
    if let (Some(sums), true) = (&f.sums, needs_start) {
        round(sums, true);
    }
    if let Some(r) = &f.secure {
        round(r, false);
    }
    out
}
