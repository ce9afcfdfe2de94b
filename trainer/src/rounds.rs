//! Training rounds (ADR 0009): the model state a round starts from ([`TrainState`]), the
//! update a segment sends ([`Update`]), the outer step that turns a round's agreed updates
//! into the next state ([`outer_step`]), and a segment's training ([`run_segment`]).
//!
//! Everything here that every node must compute alike (segments, the outer step) is plain
//! `f32` arithmetic in a fixed order, on the CPU, whatever backend trained the updates: the
//! same inputs give the same bytes on every machine (Rust does not contract `a * b + c` into
//! a fused multiply-add).

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use hivemesh_evolve::arch::{ArchError, Architecture, Op, Shape};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, shuffle};
use crate::error::TrainError;
use crate::model::{Model, SavedTensor, WeightsFile};
use crate::ops::{ModelBackend, TrainBackend};
use crate::private::{DpSgd, PrivatePlan, check_private, fit_private};
use crate::train::{
    Budget, FitPlan, FitStats, Limits, Progress, check_fit, cross_entropy, evaluate, fit, one_hot,
    sub_seed,
};

/// Format version of [`TrainState`] and [`Update`] blobs.
pub const FORMAT_VERSION: u32 = 1;

/// The model a round starts from, with the outer optimiser's state: a content-addressed blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The architecture and weights.
    pub weights: WeightsFile,
    /// The outer momentum, one tensor per weight tensor (same names and shapes); empty while
    /// it is all zeros (plain averaging keeps none).
    pub momentum: Vec<SavedTensor>,
}

/// A segment's update: the trained weights minus the start weights, tensor by tensor (dense
/// `f32` in memory; [`Encoding`] says how its blob carries it).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// One delta per weight tensor, in the weights file's order (little-endian `f32`).
    pub tensors: Vec<SavedTensor>,
}

/// How an update's blob carries its values (the protocol's `UpdateEncoding`). Every encoding
/// is a deterministic function of the dense update, so executors of a job still agree bit
/// for bit; what the swarm applies is the decoded blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// 4 bytes a value.
    F32,
    /// IEEE half precision, rounded to nearest even: 2 bytes a value.
    F16,
    /// Per tensor, the `per_mille`/1000 largest values by magnitude (at least one; ties to the
    /// lower index) as (`u32` index, `f32` value) pairs; the rest are zero.
    TopK {
        /// Values kept per thousand.
        per_mille: u16,
    },
}

/// An update's blob.
#[derive(Serialize, Deserialize)]
struct UpdateBlob {
    /// [`FORMAT_VERSION`].
    version: u32,
    /// How `tensors` carry their values.
    encoding: Encoding,
    /// One per weight tensor.
    tensors: Vec<EncodedTensor>,
}

/// One tensor of an update's blob.
#[derive(Serialize, Deserialize)]
struct EncodedTensor {
    /// Its name (the weight's).
    name: String,
    /// Its shape.
    shape: Vec<u32>,
    /// Values it has (dense).
    len: u32,
    /// The values, as the blob's encoding lays them out.
    data: Vec<u8>,
}

/// Most values of one update tensor (a bound for decoding: 2^28 values are 1 GiB of `f32`).
const MAX_TENSOR_LEN: u32 = 1 << 28;

fn encode_values(values: &[f32], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::F32 => to_bytes(values),
        Encoding::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Encoding::TopK { per_mille } => {
            let keep = (values.len() * usize::from(per_mille))
                .div_ceil(1000)
                .clamp(1, values.len().max(1));
            let mut idx: Vec<u32> = (0..values.len() as u32).collect();
            idx.sort_by(|a, b| {
                let (x, y) = (values[*a as usize].abs(), values[*b as usize].abs());
                y.total_cmp(&x).then(a.cmp(b))
            });
            idx.truncate(keep.min(values.len()));
            idx.sort_unstable();
            idx.iter()
                .flat_map(|i| {
                    let mut pair = i.to_le_bytes().to_vec();
                    pair.extend(values[*i as usize].to_le_bytes());
                    pair
                })
                .collect()
        }
    }
}

fn decode_values(t: &EncodedTensor, encoding: Encoding) -> Result<Vec<f32>, String> {
    let n = t.len as usize;
    let bad = |why: &str| Err(format!("tensor {}: {why}", t.name));
    match encoding {
        Encoding::F32 if t.data.len() == 4 * n => Ok(floats(&t.data)),
        Encoding::F16 if t.data.len() == 2 * n => Ok(t
            .data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        Encoding::TopK { .. } if t.data.len().is_multiple_of(8) && t.data.len() / 8 <= n => {
            let mut dense = vec![0.0f32; n];
            let mut last: Option<u32> = None;
            for pair in t.data.chunks_exact(8) {
                let i = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
                if i as usize >= n || last.is_some_and(|l| i <= l) {
                    return bad("sparse indices out of range or not increasing");
                }
                last = Some(i);
                dense[i as usize] = f32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            }
            Ok(dense)
        }
        _ => bad("its data does not match its length and encoding"),
    }
}

/// How the combined update moves the model (the protocol's `OuterStep`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outer {
    /// Start plus the combined update.
    Average,
    /// Nesterov momentum SGD on the pseudo-gradient `Δ = -combined`.
    Nesterov {
        /// Learning rate.
        lr: f32,
        /// Momentum `μ`.
        momentum: f32,
    },
}

/// How a round's updates are combined per coordinate (the protocol's `Aggregate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Combine {
    /// The mean.
    Mean,
    /// The mean without the `n` largest and `n` smallest values (the median when fewer than
    /// `2n + 1` values are there).
    Trimmed(usize),
    /// CenteredClip (Karimireddy et al. 2021, as in hivemind's BTARD), over whole updates, not
    /// per coordinate: from the coordinate-wise median `v`, `iterations` times
    /// `v += mean_i (x_i - v) * min(1, τ / ‖x_i - v‖)`, with `τ = radius` × the median distance
    /// of the updates from the first `v`. An update far from the others moves `v` by at most
    /// `τ / n` per iteration, however large it is.
    CenteredClip {
        /// `τ` as a multiple of the updates' median distance from their median.
        radius: f32,
        /// Iterations.
        iterations: u32,
    },
    /// The coordinate-wise median (the middle value, or the mean of the two middle ones).
    Median,
    /// Multi-Krum (Blanchard et al. 2017), over whole updates: each update is scored by the
    /// sum of its squared distances to its `n − f − 2` nearest others (at least 1); the mean of
    /// the `m` best-scored is kept. Up to `f` arbitrary updates are tolerated while `n > 2f + 2`.
    MultiKrum {
        /// Bad updates assumed (`f`).
        byzantine: usize,
        /// Updates averaged (`m`, at least 1).
        keep: usize,
    },
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn artifact<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &str) -> Result<T, TrainError> {
    postcard::from_bytes(bytes).map_err(|e| TrainError::Artifact(format!("not {what}: {e}")))
}

fn check_version(version: u32, what: &str) -> Result<(), TrainError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(TrainError::Artifact(format!(
            "{what} of format version {version} (this build reads {FORMAT_VERSION})"
        )))
    }
}

/// Whether `tensors` match the weights' names and shapes, one for one.
fn same_layout(weights: &WeightsFile, tensors: &[SavedTensor]) -> Result<(), String> {
    if tensors.len() != weights.tensors.len() {
        return Err(format!(
            "{} tensors, the model has {}",
            tensors.len(),
            weights.tensors.len()
        ));
    }
    for (t, w) in tensors.iter().zip(&weights.tensors) {
        if t.name != w.name || t.shape != w.shape || t.data.len() != w.data.len() {
            return Err(format!(
                "tensor {} {:?} where the model has {} {:?}",
                t.name, t.shape, w.name, w.shape
            ));
        }
    }
    Ok(())
}

impl TrainState {
    /// The start of training: `weights` with no momentum.
    pub fn fresh(weights: WeightsFile) -> TrainState {
        TrainState {
            version: FORMAT_VERSION,
            weights,
            momentum: Vec::new(),
        }
    }

    /// The encoded blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("states always encode")
    }

    /// Decodes a blob, checking the momentum's layout against the weights'.
    pub fn from_bytes(bytes: &[u8]) -> Result<TrainState, TrainError> {
        let s: TrainState = artifact(bytes, "a training state")?;
        check_version(s.version, "a training state")?;
        check_version(s.weights.version, "a weights file")?;
        if !s.momentum.is_empty() {
            same_layout(&s.weights, &s.momentum)
                .map_err(|e| TrainError::Artifact(format!("momentum: {e}")))?;
        }
        Ok(s)
    }
}

/// A model's weights from a blob that holds them: a weights file, or a training state (a
/// `train` campaign's model).
pub fn model_weights(bytes: &[u8]) -> Result<WeightsFile, TrainError> {
    WeightsFile::from_bytes(bytes).or_else(|e| {
        TrainState::from_bytes(bytes)
            .map(|s| s.weights)
            .map_err(|_| e)
    })
}

impl Update {
    /// The update's blob in `encoding`.
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        let blob = UpdateBlob {
            version: FORMAT_VERSION,
            encoding,
            tensors: self
                .tensors
                .iter()
                .map(|t| EncodedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    len: (t.data.len() / 4) as u32,
                    data: encode_values(&floats(&t.data), encoding),
                })
                .collect(),
        };
        postcard::to_stdvec(&blob).expect("updates always encode")
    }

    /// Decodes a blob into the dense update it carries (its fit to a model is checked by
    /// [`Update::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Update, TrainError> {
        let blob: UpdateBlob = artifact(bytes, "an update")?;
        check_version(blob.version, "an update")?;
        let tensors = blob
            .tensors
            .iter()
            .map(|t| {
                if t.len > MAX_TENSOR_LEN {
                    return Err(format!("tensor {} has {} values", t.name, t.len));
                }
                Ok(SavedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: to_bytes(&decode_values(t, blob.encoding)?),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| TrainError::Artifact(format!("update: {e}")))?;
        Ok(Update { tensors })
    }

    /// What the swarm applies of this update once it travelled in `encoding`.
    pub fn as_sent(&self, encoding: Encoding) -> Result<Update, TrainError> {
        Update::decode(&self.encode(encoding))
    }

    /// Why this update cannot be applied to `start`: another layout, or a value that is not
    /// finite.
    pub fn check(&self, start: &WeightsFile) -> Result<(), String> {
        same_layout(start, &self.tensors)?;
        match self
            .tensors
            .iter()
            .find(|t| floats(&t.data).iter().any(|v| !v.is_finite()))
        {
            Some(t) => Err(format!("tensor {} has a value that is not finite", t.name)),
            None => Ok(()),
        }
    }

    /// `after - before`, tensor by tensor (the two share a layout: `after` was trained from
    /// `before`).
    pub fn between(before: &WeightsFile, after: &WeightsFile) -> Update {
        let tensors = before
            .tensors
            .iter()
            .zip(&after.tensors)
            .map(|(b, a)| {
                let d: Vec<f32> = floats(&a.data)
                    .iter()
                    .zip(floats(&b.data))
                    .map(|(a, b)| a - b)
                    .collect();
                SavedTensor {
                    name: b.name.clone(),
                    shape: b.shape.clone(),
                    data: to_bytes(&d),
                }
            })
            .collect();
        Update { tensors }
    }
}

/// `f(a, b)` value by value over two updates of one layout.
fn zip_with(a: &Update, b: &Update, f: impl Fn(f32, f32) -> f32) -> Update {
    let tensors = a
        .tensors
        .iter()
        .zip(&b.tensors)
        .map(|(x, y)| {
            let v: Vec<f32> = floats(&x.data)
                .iter()
                .zip(floats(&y.data))
                .map(|(p, q)| f(*p, q))
                .collect();
            SavedTensor {
                name: x.name.clone(),
                shape: x.shape.clone(),
                data: to_bytes(&v),
            }
        })
        .collect();
    Update { tensors }
}

/// Error feedback (top-k): the segment's `delta` plus the `residual` its last update left
/// unsent (of the same layout, checked by the caller), as it travels in `encoding`; and the new
/// residual, what this blob leaves unsent. Deterministic, like the encodings.
pub fn with_feedback(
    delta: &Update,
    residual: Option<&Update>,
    encoding: Encoding,
) -> Result<(Vec<u8>, Update), TrainError> {
    let full = match residual {
        Some(r) => zip_with(delta, r, |d, r| d + r),
        None => delta.clone(),
    };
    let bytes = full.encode(encoding);
    let sent = Update::decode(&bytes)?;
    Ok((bytes, zip_with(&full, &sent, |f, s| f - s)))
}

/// Directions in an update's [`sketch`].
pub const SKETCH_DIRECTIONS: usize = 8;

/// A fingerprint that nearby updates share (ADR 0009, tolerance mode): the natural log of the
/// update's L2 norm, and its projections on [`SKETCH_DIRECTIONS`] random ±1 directions drawn
/// from `seed`, each divided by the norm. For an update at relative L2 distance `ε` from
/// another, each projection differs by about `ε` (a standard normal times `ε`) and the log norm
/// by at most about `ε`; unrelated updates have projections about 1 apart. Computed in `f64`
/// in a fixed order, so the same update gives the same bits on every machine.
pub fn sketch(u: &Update, seed: u64) -> (f64, [f64; SKETCH_DIRECTIONS]) {
    use rand_core::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut signs = [0u8; 4096];
    let mut used = signs.len();
    let mut dots = [0.0f64; SKETCH_DIRECTIONS];
    let mut sq = 0.0f64;
    for t in &u.tensors {
        for v in floats(&t.data) {
            if used == signs.len() {
                rng.fill_bytes(&mut signs);
                used = 0;
            }
            let bits = signs[used];
            used += 1;
            let v = f64::from(v);
            sq += v * v;
            for (j, d) in dots.iter_mut().enumerate() {
                if bits >> j & 1 == 1 {
                    *d += v;
                } else {
                    *d -= v;
                }
            }
        }
    }
    let norm = sq.sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    (norm.max(1e-30).ln(), dots.map(|d| d * scale))
}

/// Batch-norm running statistics are averaged, never given momentum (a variance must stay a
/// variance).
fn is_statistic(name: &str) -> bool {
    name.ends_with(".bn.mean") || name.ends_with(".bn.var")
}

/// One coordinate's combined value from `values` (sorted in place when trimming).
fn combine(values: &mut [f32], how: Combine) -> f32 {
    let kept: &[f32] = match how {
        // CenteredClip combines whole updates (`centered_clip`); per coordinate, the mean.
        Combine::Mean | Combine::CenteredClip { .. } | Combine::MultiKrum { .. } => values,
        Combine::Median => return combine(values, Combine::Trimmed(values.len())),
        Combine::Trimmed(n) => {
            values.sort_by(f32::total_cmp);
            let k = values.len();
            if k > 2 * n {
                &values[n..k - n]
            } else {
                // The median: the middle value, or the two middle ones.
                &values[(k - 1) / 2..k / 2 + 1]
            }
        }
    };
    let sum: f32 = kept.iter().sum();
    sum / kept.len() as f32
}

/// A round's agreed updates gathered for the outer step, one at a time as they are read: the
/// mean keeps a running sum (memory of two models however many updates there are), the
/// robust aggregates keep every update's values (they need them all at once; admission
/// counts them with [`outer_step_bytes`]).
#[derive(Debug, Clone)]
pub struct Aggregator {
    /// How the updates are combined.
    how: Combine,
    /// The running sum, tensor by tensor (the mean).
    sum: Vec<Vec<f32>>,
    /// Every update's values (the robust aggregates).
    dense: Vec<Vec<Vec<f32>>>,
    /// Updates gathered so far.
    count: usize,
}

impl Aggregator {
    /// No updates yet.
    pub fn new(how: Combine) -> Aggregator {
        Aggregator {
            how,
            sum: Vec::new(),
            dense: Vec::new(),
            count: 0,
        }
    }

    /// One more update (already [checked](Update::check) against the state it will move),
    /// in the fixed order every node uses. The mean adds it to the running sum in `f32`,
    /// coordinate by coordinate, in that order.
    pub fn push(&mut self, u: &Update) {
        let values: Vec<Vec<f32>> = u.tensors.iter().map(|t| floats(&t.data)).collect();
        self.count += 1;
        match self.how {
            Combine::Mean if self.sum.is_empty() => self.sum = values,
            Combine::Mean => {
                for (s, v) in self.sum.iter_mut().zip(&values) {
                    for (a, b) in s.iter_mut().zip(v) {
                        *a += b;
                    }
                }
            }
            _ => self.dense.push(values),
        }
    }

    /// Updates gathered so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none was gathered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The combined update, tensor by tensor (`None` without updates).
    /// (The mean's running sum is taken, not copied; the updates a robust rule holds stay.)
    fn combined(&mut self) -> Option<Vec<Vec<f32>>> {
        if self.count == 0 {
            return None;
        }
        Some(match self.how {
            Combine::Mean => {
                let n = self.count as f32;
                let mut sum = std::mem::take(&mut self.sum);
                sum.iter_mut().flatten().for_each(|a| *a /= n);
                sum
            }
            Combine::CenteredClip { radius, iterations } => {
                centered_clip(&self.dense, radius, iterations)
            }
            Combine::MultiKrum { byzantine, keep } => {
                let chosen = krum_choice(&self.dense, byzantine, keep);
                let kept: Vec<Vec<Vec<f32>>> =
                    chosen.iter().map(|i| self.dense[*i].clone()).collect();
                per_coordinate(&kept, Combine::Mean)
            }
            how => per_coordinate(&self.dense, how),
        })
    }

    /// The next round's state: `state` moved by the combined updates; no updates leave it as
    /// it is.
    pub fn step(self, state: &TrainState, outer: Outer) -> TrainState {
        self.step_flagging(state, outer, f64::INFINITY).0
    }

    /// [`Aggregator::step`], and the updates (by push order) whose distance from the
    /// combined update is above `factor` times the median distance (as [`outliers`]); only a
    /// robust aggregate holds the updates to measure, the mean flags none.
    pub fn step_flagging(
        mut self,
        state: &TrainState,
        outer: Outer,
        factor: f64,
    ) -> (TrainState, Vec<usize>) {
        let Some(c) = self.combined() else {
            return (state.clone(), Vec::new());
        };
        // The mean holds no update to measure (its `dense` is empty).
        let measured: &[Vec<Vec<f32>>] = if factor.is_finite() { &self.dense } else { &[] };
        let dists: Vec<f64> = measured.iter().map(|u| distance(u, &c)).collect();
        let mut sorted = dists.clone();
        sorted.sort_by(f64::total_cmp);
        let flagged = match sorted.get(sorted.len().saturating_sub(1) / 2) {
            Some(median) => (0..dists.len())
                .filter(|i| dists[*i] > factor * median && dists[*i] > 0.0)
                .collect(),
            None => Vec::new(),
        };
        (apply_outer(state, &c, outer), flagged)
    }
}

/// Values a model of `arch` saves (its weights file's tensors): the trainable parameters and
/// each batch norm's running mean and variance.
pub fn state_values(arch: &Architecture) -> Result<u64, TrainError> {
    let bad = |e: ArchError| TrainError::Arch(e.to_string());
    let shapes = arch.shapes().map_err(bad)?;
    let statistics: u64 = arch
        .nodes
        .iter()
        .filter(|n| n.op == Op::BatchNorm)
        .filter_map(|n| n.inputs.first().map(|&j| shapes[j as usize]))
        .map(|s| match s {
            Shape::Image { c, .. } => 2 * u64::from(c),
            Shape::Flat(n) => 2 * u64::from(n),
        })
        .sum();
    Ok(arch.params().map_err(bad)? + statistics)
}

/// Bytes the outer step holds at its peak for a model of `values` values (weights, with
/// batch-norm statistics) and `updates` agreed updates combined by `how`: the base and the
/// next state (weights and momentum each), one update being read (its blob, decoded, and its
/// values), and the running sum (the mean) or every update's values (the robust aggregates;
/// CenteredClip also keeps its centre in `f64`). An estimate for admission, on the high side.
pub fn outer_step_bytes(values: u64, updates: usize, how: Combine) -> u64 {
    let model = 4 * values;
    let states = 4 * model;
    let reading = 3 * model;
    let held = match how {
        Combine::Mean => model,
        Combine::Trimmed(_) | Combine::Median => updates as u64 * model + model,
        Combine::MultiKrum { keep, .. } => (updates + keep.min(updates)) as u64 * model + model,
        Combine::CenteredClip { .. } => updates as u64 * model + 4 * model,
    };
    states.saturating_add(reading).saturating_add(held)
}

/// `dense` updates (each a list of tensors of values, one layout) combined coordinate by
/// coordinate with [`combine`].
fn per_coordinate(dense: &[Vec<Vec<f32>>], how: Combine) -> Vec<Vec<f32>> {
    let mut column = vec![0.0f32; dense.len()];
    (0..dense[0].len())
        .map(|t| {
            (0..dense[0][t].len())
                .map(|i| {
                    for (c, d) in column.iter_mut().zip(dense) {
                        *c = d[t][i];
                    }
                    combine(&mut column, how)
                })
                .collect()
        })
        .collect()
}

/// The L2 distance between two updates (as tensors of values), in `f64`, in a fixed order.
fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let mut sq = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            let d = f64::from(*p) - f64::from(*q);
            sq += d * d;
        }
    }
    sq.sqrt()
}

/// The updates Multi-Krum keeps (indices, ascending): the `keep` with the smallest scores,
/// a score being the sum of squared distances to the `n − byzantine − 2` nearest others (at
/// least 1), ties to the lower index.
pub fn krum_choice(dense: &[Vec<Vec<f32>>], byzantine: usize, keep: usize) -> Vec<usize> {
    let n = dense.len();
    if n <= 1 {
        return (0..n).collect();
    }
    let mut d2 = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = distance(&dense[i], &dense[j]);
            d2[i][j] = d * d;
            d2[j][i] = d * d;
        }
    }
    let near = n.saturating_sub(byzantine + 2).clamp(1, n - 1);
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n).filter(|j| *j != i).map(|j| d2[i][j]).collect();
            others.sort_by(f64::total_cmp);
            (others[..near].iter().sum(), i)
        })
        .collect();
    scores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = scores.iter().take(keep.clamp(1, n)).map(|s| s.1).collect();
    chosen.sort_unstable();
    chosen
}

/// Which of `updates` lie far from `combined` (their aggregate): L2 distance above `factor`
/// times the median distance (and above zero). For reputation: a client whose update an
/// aggregate had to resist.
pub fn outliers(updates: &[Update], combined: &Update, factor: f64) -> Vec<usize> {
    let dense =
        |u: &Update| -> Vec<Vec<f32>> { u.tensors.iter().map(|t| floats(&t.data)).collect() };
    let c = dense(combined);
    let dists: Vec<f64> = updates.iter().map(|u| distance(&dense(u), &c)).collect();
    let mut sorted = dists.clone();
    sorted.sort_by(f64::total_cmp);
    let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2).copied() else {
        return Vec::new();
    };
    dists
        .iter()
        .enumerate()
        .filter(|(_, d)| **d > factor * median && **d > 0.0)
        .map(|(i, _)| i)
        .collect()
}

impl Update {
    /// The L2 norm over every value (in `f64`, in tensor order).
    pub fn norm(&self) -> f64 {
        self.tensors
            .iter()
            .flat_map(|t| floats(&t.data))
            .map(|v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// The update scaled down to L2 norm at most `max` (over every value); returns whether it
    /// was scaled ("norm bounding": one update can move the aggregate by at most `max / n`).
    pub fn bound_norm(&mut self, max: f64) -> bool {
        let norm = self.norm();
        if norm <= max {
            return false;
        }
        let scale = (max / norm) as f32;
        for t in &mut self.tensors {
            let v: Vec<f32> = floats(&t.data).iter().map(|x| x * scale).collect();
            t.data = to_bytes(&v);
        }
        true
    }
}

/// [`Combine::CenteredClip`] over `dense` updates (each a list of tensors of values).
fn centered_clip(dense: &[Vec<Vec<f32>>], radius: f32, iterations: u32) -> Vec<Vec<f32>> {
    let n = dense.len();
    // The coordinate-wise median (a trimmed mean trimming everything but the middle).
    let mut v: Vec<Vec<f64>> = per_coordinate(dense, Combine::Trimmed(n))
        .into_iter()
        .map(|t| t.into_iter().map(f64::from).collect())
        .collect();
    let as_f32 = |v: &[Vec<f64>]| -> Vec<Vec<f32>> {
        v.iter()
            .map(|t| t.iter().map(|x| *x as f32).collect())
            .collect()
    };
    let mut dists: Vec<f64> = dense.iter().map(|x| distance(x, &as_f32(&v))).collect();
    let mut sorted = dists.clone();
    sorted.sort_by(f64::total_cmp);
    let tau = f64::from(radius) * sorted[(n - 1) / 2];
    for _ in 0..iterations {
        let weights: Vec<f64> = dists
            .iter()
            .map(|d| if *d > tau { tau / d } else { 1.0 })
            .collect();
        for (t, vt) in v.iter_mut().enumerate() {
            for (i, vi) in vt.iter_mut().enumerate() {
                let step: f64 = dense
                    .iter()
                    .zip(&weights)
                    .map(|(x, w)| (f64::from(x[t][i]) - *vi) * w)
                    .sum();
                *vi += step / n as f64;
            }
        }
        let center = as_f32(&v);
        dists = dense.iter().map(|x| distance(x, &center)).collect();
    }
    as_f32(&v)
}

/// The next round's state: `state` moved by the combined `updates` (each already
/// [checked](Update::check) against `state`'s weights), in their order. No updates leave the
/// state as it is. ([`Aggregator`] does the same reading one update at a time.)
pub fn outer_step(
    state: &TrainState,
    updates: &[Update],
    outer: Outer,
    how: Combine,
) -> TrainState {
    let mut agg = Aggregator::new(how);
    for u in updates {
        agg.push(u);
    }
    agg.step(state, outer)
}

/// `state` moved by the `combined` update (tensor by tensor) through the outer optimiser.
fn apply_outer(state: &TrainState, combined: &[Vec<f32>], outer: Outer) -> TrainState {
    let mut weights = state.weights.clone();
    let mut momentum = Vec::new();
    for (t, w) in weights.tensors.iter_mut().enumerate() {
        let theta = floats(&w.data);
        let old_m = state
            .momentum
            .get(t)
            .map_or_else(|| vec![0.0; theta.len()], |m| floats(&m.data));
        let mut new_theta = Vec::with_capacity(theta.len());
        let mut new_m = Vec::with_capacity(theta.len());
        for (i, &c) in combined[t].iter().enumerate() {
            match outer {
                Outer::Nesterov { lr, momentum: mu } if !is_statistic(&w.name) => {
                    let g = -c;
                    let m = mu * old_m[i] + g;
                    new_theta.push(theta[i] - lr * (g + mu * m));
                    new_m.push(m);
                }
                _ => {
                    new_theta.push(theta[i] + c);
                    new_m.push(old_m[i]);
                }
            }
        }
        w.data = to_bytes(&new_theta);
        momentum.push(SavedTensor {
            name: w.name.clone(),
            shape: w.shape.clone(),
            data: to_bytes(&new_m),
        });
    }
    if outer == Outer::Average {
        momentum.clear();
    }
    TrainState {
        version: FORMAT_VERSION,
        weights,
        momentum,
    }
}

/// The samples of segment `segment` (of `size` samples) in a round whose seed is `shuffle`:
/// the training split in the round's shuffled order, cut into consecutive segments (wrapping
/// around when the round asks for more samples than the split has).
pub fn segment_samples(train: &[u32], shuffle_seed: u64, segment: u32, size: u32) -> Vec<u32> {
    if train.is_empty() {
        return Vec::new();
    }
    let mut order = train.to_vec();
    shuffle(&mut order, &mut ChaCha8Rng::seed_from_u64(shuffle_seed));
    let n = order.len() as u64;
    let first = u64::from(segment) * u64::from(size);
    (0..u64::from(size))
        .map(|k| order[((first + k) % n) as usize])
        .collect()
}

/// The weights of a fresh model of `arch`, drawn from `seed` (round 0 of a campaign that names
/// an architecture; the same on every backend: weights are drawn on the CPU).
pub fn initial_weights(arch: &Architecture, seed: [u8; 32]) -> Result<WeightsFile, TrainError> {
    let model = Model::<crate::Cpu>::new(arch, seed, &Default::default())?;
    Ok(model.weights_file(arch))
}

/// One segment's training: the start weights, evaluated on `evaluate_on`, then trained for the
/// budget's `max_steps` on `samples`.
#[derive(Debug, Clone, Copy)]
pub struct SegmentJob<'a> {
    /// The round's start weights.
    pub start: &'a WeightsFile,
    /// The data.
    pub data: &'a Dataset,
    /// The segment's samples.
    pub samples: &'a [u32],
    /// Where the start weights are evaluated (the validation split).
    pub evaluate_on: &'a [u32],
    /// The inner optimiser, batch size and learning rate; `max_steps` is the inner steps.
    pub budget: &'a Budget,
    /// The job's seed (batch order; DP-SGD's sampling and noise).
    pub seed: u64,
    /// Train by DP-SGD with these settings (its steps replace the budget's), or not.
    pub private: Option<&'a DpSgd>,
}

/// A segment trained.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentResult {
    /// Correct predictions of the start weights on `evaluate_on`.
    pub correct: u64,
    /// Size of `evaluate_on`.
    pub total: u64,
    /// Steps and final loss.
    pub fit: FitStats,
    /// The trained weights.
    pub trained: WeightsFile,
}

impl SegmentJob<'_> {
    /// Checks the budget, the fit of the model to the data and the node's limits before
    /// anything is allocated.
    pub fn check(&self, limits: &Limits) -> Result<(), TrainError> {
        self.budget.validate()?;
        let arch = &self.start.arch;
        check_fit(arch, self.data, self.budget.batch_size as usize, limits)?;
        if let Some(dp) = self.private {
            dp.validate()?;
            check_private(arch)?;
        }
        if let Some(budget) = limits.flops_budget {
            let forward = arch.flops().map_err(|e| TrainError::Arch(e.to_string()))?;
            let steps = self.budget.total_steps(self.samples.len());
            let needed = steps
                .saturating_mul(u64::from(self.budget.batch_size))
                .saturating_mul(forward.saturating_mul(3))
                .saturating_add((self.evaluate_on.len() as u64).saturating_mul(forward));
            if needed > budget {
                return Err(TrainError::CostBudget { needed, budget });
            }
        }
        Ok(())
    }
}

/// Runs a segment on backend `B`.
pub fn run_segment<B: TrainBackend>(
    job: &SegmentJob<'_>,
    limits: &Limits,
    device: &B::Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SegmentResult, TrainError> {
    job.check(limits)?;
    let model = Model::<B>::from_weights(job.start, device)?;
    let (correct, total) = evaluate(&model.valid(), job.data, job.evaluate_on, 1000, device);
    let classes = job.data.classes as usize;
    let data = job.data;
    let mut loss = |logits: Tensor<B, 2>, batch: &[u32]| {
        let y = one_hot::<B>(&data.targets(batch), classes, device);
        cross_entropy(logits, y)
    };
    let plan = FitPlan {
        data: job.data,
        train: job.samples,
        budget: job.budget,
        order_seed: sub_seed(job.seed, "order"),
        stop: &limits.stop,
    };
    let (model, fit) = match job.private {
        Some(dp) => {
            let plan = PrivatePlan {
                data: job.data,
                train: job.samples,
                dp,
                budget: job.budget,
                stop: &limits.stop,
            };
            fit_private(model, &plan, device, progress)?
        }
        None => fit(model, &plan, device, &mut loss, progress)?,
    };
    Ok(SegmentResult {
        correct,
        total,
        fit,
        trained: model.valid().weights_file(&job.start.arch),
    })
}

/// Correct predictions of `weights` on `idx` (the final model on the test split).
pub fn evaluate_weights<B: ModelBackend>(
    weights: &WeightsFile,
    data: &Dataset,
    idx: &[u32],
    device: &B::Device,
) -> Result<(u64, u64), TrainError> {
    check_fit(&weights.arch, data, 1, &Limits::default())?;
    let model = Model::<B>::from_weights(weights, device)?;
    Ok(evaluate(&model, data, idx, 1000, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;

    fn state() -> TrainState {
        let d = digits();
        let arch = crate::zoo::mlp(d.shape, 8, d.classes);
        TrainState::fresh(initial_weights(&arch, [1; 32]).expect("weights"))
    }

    /// An update adding `v` to every weight.
    fn constant(s: &TrainState, v: f32) -> Update {
        let mut after = s.weights.clone();
        for t in &mut after.tensors {
            let x: Vec<f32> = floats(&t.data).iter().map(|x| x + v).collect();
            t.data = to_bytes(&x);
        }
        Update::between(&s.weights, &after)
    }

    fn first(s: &TrainState) -> f32 {
        floats(&s.weights.tensors[0].data)[0]
    }

    /// The mean read one update at a time is the per-coordinate mean of all of them, bit for
    /// bit (signed zeros included), and holds one model where a robust aggregate holds all.
    #[test]
    fn the_streaming_mean_is_the_mean_of_all_updates_bit_for_bit() {
        let s = state();
        let mut ups: Vec<Update> = [0.25f32, -1.0 / 3.0, 1e-7, 7.5]
            .iter()
            .map(|v| constant(&s, *v))
            .collect();
        let zeros = floats(&ups[0].tensors[0].data).len();
        for u in &mut ups {
            u.tensors[0].data = to_bytes(&vec![-0.0; zeros]);
        }
        let dense: Vec<Vec<Vec<f32>>> = ups
            .iter()
            .map(|u| u.tensors.iter().map(|t| floats(&t.data)).collect())
            .collect();
        let mut agg = Aggregator::new(Combine::Mean);
        for u in &ups {
            agg.push(u);
        }
        assert_eq!(agg.len(), 4);
        let streamed = agg.combined().expect("four updates");
        let all = per_coordinate(&dense, Combine::Mean);
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&streamed), bits(&all));
        assert_eq!(streamed[0][0].to_bits(), (-0.0f32).to_bits());
        let values = 1000;
        let mean = outer_step_bytes(values, 100, Combine::Mean);
        assert_eq!(mean, outer_step_bytes(values, 1, Combine::Mean));
        assert!(outer_step_bytes(values, 100, Combine::Trimmed(1)) > 100 * 4 * values);
        assert!(Aggregator::new(Combine::Mean).combined().is_none());
    }

    /// Median and Multi-Krum resist two far-off updates among seven; `outliers` names them;
    /// norm bounding caps one update's pull.
    #[test]
    fn median_and_multi_krum_leave_out_far_updates_and_outliers_names_them() {
        let s = state();
        let x0 = first(&s);
        let mut ups: Vec<Update> = [0.10f32, 0.11, 0.09, 0.10, 0.12]
            .iter()
            .map(|v| constant(&s, *v))
            .collect();
        ups.push(constant(&s, -50.0));
        ups.push(constant(&s, 80.0));
        let median = outer_step(&s, &ups, Outer::Average, Combine::Median);
        assert!(
            (first(&median) - (x0 + 0.10)).abs() < 1e-5,
            "{}",
            first(&median) - x0
        );
        let dense: Vec<Vec<Vec<f32>>> = ups
            .iter()
            .map(|u| u.tensors.iter().map(|t| floats(&t.data)).collect())
            .collect();
        assert_eq!(krum_choice(&dense, 2, 3), vec![0, 1, 3]);
        let krum = Combine::MultiKrum {
            byzantine: 2,
            keep: 4,
        };
        let k = outer_step(&s, &ups, Outer::Average, krum);
        let chosen = krum_choice(&dense, 2, 4);
        assert!(chosen.iter().all(|i| *i < 5), "{chosen:?}");
        let want: f32 = chosen
            .iter()
            .map(|i| [0.10f32, 0.11, 0.09, 0.10, 0.12][*i])
            .sum::<f32>()
            / 4.0;
        assert!((first(&k) - x0 - want).abs() < 1e-5, "{}", first(&k) - x0);
        let mean = outer_step(&s, &ups, Outer::Average, Combine::Mean);
        assert!((first(&mean) - x0 - 30.0 / 7.0 - 0.52 / 7.0).abs() < 1e-3);
        let combined = Update::between(&s.weights, &k.weights);
        assert_eq!(outliers(&ups, &combined, 3.0), vec![5, 6]);
        let mut big = constant(&s, 80.0);
        assert!(big.bound_norm(1.0));
        assert!((big.norm() - 1.0).abs() < 1e-5);
        assert!(!big.bound_norm(2.0));
    }

    /// A model's saved values are its weights file's, batch-norm statistics included.
    #[test]
    fn state_values_count_the_weights_files_values() {
        let d = digits();
        for arch in [
            crate::zoo::mlp(d.shape, 8, d.classes),
            crate::zoo::small_cnn(d.shape, d.classes),
        ] {
            let w = initial_weights(&arch, [2; 32]).expect("weights");
            let n: usize = w.tensors.iter().map(|t| t.data.len() / 4).sum();
            assert_eq!(state_values(&arch).expect("valid"), n as u64);
        }
    }

    #[test]
    fn averaging_adds_the_mean_update_and_nesterov_keeps_momentum() {
        let s = state();
        let x0 = first(&s);
        let ups = [constant(&s, 0.5), constant(&s, 1.5)];
        let avg = outer_step(&s, &ups, Outer::Average, Combine::Mean);
        assert!((first(&avg) - (x0 + 1.0)).abs() < 1e-5);
        assert!(avg.momentum.is_empty());
        let nest = Outer::Nesterov {
            lr: 0.5,
            momentum: 0.9,
        };
        let n1 = outer_step(&s, &ups, nest, Combine::Mean);
        // Δ = -1, m = -1, θ -= 0.5 (Δ + 0.9 m) = θ + 0.95.
        assert!((first(&n1) - (x0 + 0.95)).abs() < 1e-5, "{}", first(&n1));
        assert!((floats(&n1.momentum[0].data)[0] + 1.0).abs() < 1e-6);
        // No updates: nothing moves, momentum included.
        assert_eq!(outer_step(&n1, &[], nest, Combine::Mean), n1);
        // The state round-trips through its blob.
        assert_eq!(TrainState::from_bytes(&n1.to_bytes()).expect("decodes"), n1);
    }

    #[test]
    fn a_trimmed_mean_ignores_one_outlier_of_three_and_the_order_does_not_matter() {
        let s = state();
        let x0 = first(&s);
        let liar = constant(&s, 1e6);
        let ups = [constant(&s, 0.25), liar.clone(), constant(&s, 0.75)];
        let t = outer_step(&s, &ups, Outer::Average, Combine::Trimmed(1));
        assert!((first(&t) - (x0 + 0.75)).abs() < 1e-5, "the median of 3");
        let mean = outer_step(&s, &ups, Outer::Average, Combine::Mean);
        assert!(
            first(&mean) > x0 + 1000.0,
            "the plain mean is moved by the liar"
        );
        let reordered = [ups[2].clone(), ups[0].clone(), liar];
        assert_eq!(
            outer_step(&s, &reordered, Outer::Average, Combine::Trimmed(1)),
            t
        );
    }

    #[test]
    fn centered_clip_bounds_what_an_outlier_moves_and_is_the_mean_without_one() {
        let s = state();
        let x0 = first(&s);
        let clip = Combine::CenteredClip {
            radius: 1.0,
            iterations: 3,
        };
        let honest = [constant(&s, 0.25), constant(&s, 0.5), constant(&s, 0.75)];
        // Without an outlier every update is within τ of the center after clipping starts:
        // the result is (close to) the mean.
        let calm = outer_step(&s, &honest, Outer::Average, clip);
        assert!(
            (first(&calm) - (x0 + 0.5)).abs() < 1e-3,
            "{}",
            first(&calm) - x0
        );
        // A huge fourth update moves the result by a bounded amount, not by 1e6 / 4.
        let mut with_liar = honest.to_vec();
        with_liar.push(constant(&s, 1e6));
        let bent = outer_step(&s, &with_liar, Outer::Average, clip);
        let moved = first(&bent) - x0;
        assert!(moved > 0.25 && moved < 2.0, "{moved}");
        let mean = outer_step(&s, &with_liar, Outer::Average, Combine::Mean);
        assert!(first(&mean) - x0 > 1e5);
        // Another order gives nearly the same (every node applies segment order, so the bits
        // agree there).
        let mut reversed = with_liar.clone();
        reversed.reverse();
        let again = outer_step(&s, &reversed, Outer::Average, clip);
        assert!((first(&again) - first(&bent)).abs() < 1e-6);
    }

    #[test]
    fn updates_of_another_layout_or_with_nan_are_refused() {
        let s = state();
        let mut u = constant(&s, 0.1);
        u.check(&s.weights).expect("fits");
        u.tensors[0].data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(u.check(&s.weights).unwrap_err().contains("not finite"));
        let mut short = constant(&s, 0.1);
        short.tensors.pop();
        assert!(short.check(&s.weights).unwrap_err().contains("tensors"));
        let mut renamed = constant(&s, 0.1);
        renamed.tensors[0].shape = vec![1];
        assert!(renamed.check(&s.weights).is_err());
        assert!(Update::decode(b"junk").is_err());
    }

    #[test]
    fn encodings_round_trip_what_they_keep_and_refuse_broken_blobs() {
        let s = state();
        let mut after = s.weights.clone();
        for t in &mut after.tensors {
            let x: Vec<f32> = floats(&t.data)
                .iter()
                .enumerate()
                .map(|(i, x)| x + (i as f32 - 30.0) * 0.001)
                .collect();
            t.data = to_bytes(&x);
        }
        let u = Update::between(&s.weights, &after);
        let f32_blob = u.encode(Encoding::F32);
        assert_eq!(Update::decode(&f32_blob).expect("f32"), u);
        let f16_blob = u.encode(Encoding::F16);
        assert!(f16_blob.len() * 10 < f32_blob.len() * 6, "half the bytes");
        let h = Update::decode(&f16_blob).expect("f16");
        let (a, b) = (floats(&u.tensors[0].data), floats(&h.tensors[0].data));
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| (x - y).abs() <= x.abs() / 1000.0 + 1e-7)
        );
        let k = Encoding::TopK { per_mille: 10 };
        let top = Update::decode(&u.encode(k)).expect("top-k");
        let dense = floats(&top.tensors[0].data);
        let kept = dense.iter().filter(|v| **v != 0.0).count();
        assert_eq!(kept, a.len().div_ceil(100));
        // The largest magnitudes are the ones kept, exactly.
        let max = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(dense.iter().any(|v| v.abs() == max));
        assert_eq!(top, u.as_sent(k).expect("same"));
        assert_eq!(u.encode(k), top.encode(k), "top-k of top-k is itself");
        // A sparse index past the end, or data that does not fit the length: refused.
        let mut blob: UpdateBlob = postcard::from_bytes(&u.encode(k)).expect("blob");
        blob.tensors[0].data[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = Update::decode(&postcard::to_stdvec(&blob).expect("enc")).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let mut blob: UpdateBlob = postcard::from_bytes(&f16_blob).expect("blob");
        blob.tensors[1].len += 1;
        let e = Update::decode(&postcard::to_stdvec(&blob).expect("enc")).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn sketches_of_nearby_updates_are_close_and_of_others_far() {
        let s = state();
        let mut after = s.weights.clone();
        for (k, t) in after.tensors.iter_mut().enumerate() {
            let x: Vec<f32> = floats(&t.data)
                .iter()
                .enumerate()
                .map(|(i, x)| x + ((i * 7 + k * 13) % 17) as f32 * 0.01 - 0.08)
                .collect();
            t.data = to_bytes(&x);
        }
        let u = Update::between(&s.weights, &after);
        let (n, a) = sketch(&u, 5);
        assert_eq!(sketch(&u, 5), (n, a), "deterministic");
        // The same update with relative noise 1e-4: every value within 1e-3.
        let mut near = u.clone();
        for t in &mut near.tensors {
            let x: Vec<f32> = floats(&t.data)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 + if i % 2 == 0 { 1e-4 } else { -1e-4 }))
                .collect();
            t.data = to_bytes(&x);
        }
        let (n2, b) = sketch(&near, 5);
        assert!((n - n2).abs() < 1e-3);
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3),
            "{a:?} {b:?}"
        );
        // Another update (the same values reversed within each tensor): far apart.
        let mut other = u.clone();
        for t in &mut other.tensors {
            let mut x = floats(&t.data);
            x.reverse();
            t.data = to_bytes(&x);
        }
        let (n3, c) = sketch(&other, 5);
        assert!((n - n3).abs() < 1e-9, "same norm");
        let far = a
            .iter()
            .zip(&c)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(far > 0.1, "{a:?} {c:?}");
        // Another seed draws other directions.
        assert_ne!(sketch(&u, 6).1, a);
    }

    #[test]
    fn error_feedback_sends_later_what_top_k_left_out() {
        let s = state();
        let k = Encoding::TopK { per_mille: 100 };
        let delta = constant(&s, 0.0);
        let mut d = delta.clone();
        let n = floats(&d.tensors[0].data).len();
        d.tensors[0].data = to_bytes(&(0..n).map(|i| i as f32 * 1e-3).collect::<Vec<_>>());
        let (bytes, residual) = with_feedback(&d, None, k).expect("encodes");
        let sent = Update::decode(&bytes).expect("decodes");
        // Sent + residual is exactly the update (top-k keeps values exactly).
        assert_eq!(zip_with(&sent, &residual, |a, b| a + b), d);
        // Next round, nothing new: the residual's largest values go out now.
        let (bytes2, residual2) = with_feedback(&delta, Some(&residual), k).expect("encodes");
        let sent2 = floats(&Update::decode(&bytes2).expect("decodes").tensors[0].data);
        let left = floats(&residual.tensors[0].data);
        let max_left = left.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            sent2.contains(&max_left),
            "the largest unsent value is sent"
        );
        assert!(
            floats(&residual2.tensors[0].data)
                .iter()
                .all(|v| v.abs() <= max_left),
            "the residual shrinks"
        );
    }

    #[test]
    fn segments_are_fixed_by_the_round_seed_and_wrap_around() {
        let train: Vec<u32> = (100..110).collect();
        let a = segment_samples(&train, 7, 0, 4);
        assert_eq!(a, segment_samples(&train, 7, 0, 4));
        assert_ne!(a, segment_samples(&train, 8, 0, 4));
        let all: Vec<u32> = (0..3)
            .flat_map(|s| segment_samples(&train, 7, s, 4))
            .collect();
        // 12 samples from 10: the first ten are distinct, then it wraps.
        let mut first10 = all[..10].to_vec();
        first10.sort_unstable();
        assert_eq!(first10, train);
        assert_eq!(all[10..], all[..2]);
    }
}
