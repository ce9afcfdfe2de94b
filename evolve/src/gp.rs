//! Genetic programming for loss functions (AutoML-Zero, Real et al. 2020,
//! <https://arxiv.org/abs/2003.03384>; GLO, Gonzalez & Miikkulainen 2020,
//! <https://arxiv.org/abs/1905.11528>).
//!
//! A loss is a typed expression tree over the one-hot target `y`, the model's logits `z` and
//! its softmax probabilities `p`, all of shape batch × classes. Three kinds of value:
//! `Elem` (batch × classes), `Sample` (batch, after a sum over classes) and `Scalar` (after a
//! mean over the batch); a loss must be a `Scalar`. Constants are ephemeral (drawn at creation)
//! and kind-polymorphic (broadcast), and they are the slots the trainer tunes by gradient
//! descent ([`Expr::constants`]).
//!
//! Every operation is protected, so any expression evaluates to a number (possibly
//! non-finite, which the trainer reports as a failed job, never a panic):
//! `log(x) = ln(|x| + 1e-7)`, `exp(x) = e^min(x, 20)`, `sqrt(x) = √|x|`,
//! `div(a, b) = a / (b + 1e-7)` for `b ≥ 0` and `a / (b − 1e-7)` for `b < 0`.
//!
//! Expressions are stored in prefix order. Evaluation, type checking and depth use an explicit
//! stack over the reversed genes (no recursion on untrusted input). Variation: ramped
//! half-and-half initialisation, subtree crossover between points of the same kind, subtree /
//! point / hoist / constant mutation, all under depth and size limits. [`Expr::simplify`]
//! applies algebraic identities and constant folding; [`Expr::canonical`] also orders the
//! operands of commutative operations and renumbers constants, and [`Expr::id`] hashes the
//! result, so syntactic variants of one expression share an id; [`Expr::fingerprint`] hashes
//! its values on fixed probe inputs, so functionally identical expressions (copies) share a
//! fingerprint. All arithmetic uses the pure-Rust `libm`, so ids and fingerprints are
//! bit-identical on every peer.

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::random::{below, chance, range};

/// The ε of the protected operations.
pub const EPS: f32 = 1e-7;
/// The longest expression accepted, in nodes.
pub const MAX_GENES: usize = 1024;

/// One node, in prefix order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// One-hot target `y` (Elem).
    Target,
    /// Logits `z` (Elem).
    Logit,
    /// Softmax probabilities `p` (Elem).
    Prob,
    /// Constant slot (any kind).
    Const(u16),
    /// −x.
    Neg,
    /// ln(|x| + ε).
    Log,
    /// e^min(x, 20).
    Exp,
    /// √|x|.
    Sqrt,
    /// x².
    Square,
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// tanh x.
    Tanh,
    /// max(0, x).
    Relu,
    /// sin x.
    Sin,
    /// cos x.
    Cos,
    /// Sum over classes: Elem → Sample.
    SumClasses,
    /// Mean over the batch: Sample → Scalar.
    MeanBatch,
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// Protected a / b.
    Div,
    /// min(a, b).
    Min,
    /// max(a, b).
    Max,
}

const UNARY: [Op; 10] = [
    Op::Neg,
    Op::Log,
    Op::Exp,
    Op::Sqrt,
    Op::Square,
    Op::Sigmoid,
    Op::Tanh,
    Op::Relu,
    Op::Sin,
    Op::Cos,
];
const BINARY: [Op; 6] = [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Min, Op::Max];
const INPUTS: [Op; 3] = [Op::Target, Op::Logit, Op::Prob];

impl Op {
    /// Number of operands.
    pub fn arity(self) -> usize {
        match self {
            Op::Target | Op::Logit | Op::Prob | Op::Const(_) => 0,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max => 2,
            _ => 1,
        }
    }

    fn commutative(self) -> bool {
        matches!(self, Op::Add | Op::Mul | Op::Min | Op::Max)
    }
}

/// The kind of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// batch × classes.
    Elem,
    /// batch.
    Sample,
    /// one value.
    Scalar,
}

/// Why an expression or an input is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpError {
    /// The genes do not form one tree.
    #[error("malformed expression: {0}")]
    Malformed(String),
    /// Operand kinds do not fit an operation.
    #[error("type error at node {node}: {reason}")]
    Type {
        /// Position in prefix order.
        node: usize,
        /// What does not fit.
        reason: String,
    },
    /// The inputs handed to the evaluator are inconsistent.
    #[error("bad evaluator input: {0}")]
    Input(String),
}

/// A loss expression: prefix-order genes and the constants they refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expr {
    /// The nodes in prefix order.
    pub genes: Vec<Op>,
    /// Constant slot values (tunable by the trainer).
    pub constants: Vec<f32>,
}

/// A kind, or "any" for constant-only subtrees.
type Ty = Option<Kind>;

fn unify(a: Ty, b: Ty) -> Result<Ty, String> {
    match (a, b) {
        (None, x) | (x, None) => Ok(x),
        (Some(x), Some(y)) if x == y => Ok(Some(x)),
        (Some(x), Some(y)) => Err(format!("cannot combine {x:?} with {y:?}")),
    }
}

fn result_type(op: Op, args: &[Ty], n_constants: usize) -> Result<Ty, String> {
    Ok(match op {
        Op::Target | Op::Logit | Op::Prob => Some(Kind::Elem),
        Op::Const(s) => {
            if usize::from(s) >= n_constants {
                return Err(format!(
                    "constant slot {s} does not exist ({n_constants} constants)"
                ));
            }
            None
        }
        Op::SumClasses => match args[0] {
            Some(Kind::Elem) | None => Some(Kind::Sample),
            Some(k) => return Err(format!("sum over classes needs Elem, got {k:?}")),
        },
        Op::MeanBatch => match args[0] {
            Some(Kind::Sample) | None => Some(Kind::Scalar),
            Some(k) => return Err(format!("mean over batch needs Sample, got {k:?}")),
        },
        op if op.arity() == 2 => unify(args[0], args[1])?,
        _ => args[0],
    })
}

/// Position just past the subtree starting at `i`.
fn subtree_end(genes: &[Op], i: usize) -> usize {
    let mut need = 1usize;
    let mut j = i;
    while need > 0 && j < genes.len() {
        need = need - 1 + genes[j].arity();
        j += 1;
    }
    j
}

/// Inputs for [`Expr::evaluate`].
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// One-hot targets, batch × classes, row-major.
    pub target: &'a [f32],
    /// Logits, batch × classes, row-major.
    pub logits: &'a [f32],
    /// Number of classes.
    pub classes: usize,
}

#[derive(Debug, Clone)]
struct Val {
    kind: Ty,
    data: Vec<f32>,
}

fn unary(op: Op, x: f32) -> f32 {
    match op {
        Op::Neg => -x,
        Op::Log => libm::logf(libm::fabsf(x) + EPS),
        Op::Exp => libm::expf(x.min(20.0)),
        Op::Sqrt => libm::sqrtf(libm::fabsf(x)),
        Op::Square => x * x,
        Op::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
        Op::Tanh => libm::tanhf(x),
        Op::Relu => x.max(0.0),
        Op::Sin => libm::sinf(x),
        Op::Cos => libm::cosf(x),
        _ => x,
    }
}

fn binary(op: Op, a: f32, b: f32) -> f32 {
    match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / if b >= 0.0 { b + EPS } else { b - EPS },
        Op::Min => a.min(b),
        Op::Max => a.max(b),
        _ => a,
    }
}

/// Softmax of each row.
fn softmax(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(classes) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|z| libm::expf(z - m)).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

impl Expr {
    /// Checks that the genes form one well-typed tree whose value is a `Scalar` (or a constant)
    /// and returns its kind.
    pub fn check(&self) -> Result<Option<Kind>, GpError> {
        if self.genes.is_empty() || self.genes.len() > MAX_GENES {
            return Err(GpError::Malformed(format!(
                "{} nodes, must be 1 to {MAX_GENES}",
                self.genes.len()
            )));
        }
        let kinds = self.kinds()?;
        match kinds[0] {
            Some(Kind::Scalar) | None => Ok(kinds[0]),
            Some(k) => Err(GpError::Type {
                node: 0,
                reason: format!("a loss must be a Scalar (mean over the batch), got {k:?}"),
            }),
        }
    }

    /// The kind of every node's value (`None`: constant-only).
    fn kinds(&self) -> Result<Vec<Ty>, GpError> {
        let mut stack: Vec<Ty> = Vec::new();
        let mut kinds = vec![None; self.genes.len()];
        for (i, op) in self.genes.iter().enumerate().rev() {
            let n = op.arity();
            if stack.len() < n {
                return Err(GpError::Malformed(format!(
                    "node {i} ({op:?}) lacks operands"
                )));
            }
            let args: Vec<Ty> = (0..n).map(|_| stack.pop().unwrap_or(None)).collect();
            let t = result_type(*op, &args, self.constants.len())
                .map_err(|reason| GpError::Type { node: i, reason })?;
            kinds[i] = t;
            stack.push(t);
        }
        if stack.len() != 1 {
            return Err(GpError::Malformed(format!(
                "{} trees where one is expected",
                stack.len()
            )));
        }
        Ok(kinds)
    }

    /// Depth of the tree (a single node has depth 1).
    pub fn depth(&self) -> usize {
        let mut stack: Vec<usize> = Vec::new();
        for op in self.genes.iter().rev() {
            let d = (0..op.arity())
                .map(|_| stack.pop().unwrap_or(0))
                .max()
                .unwrap_or(0);
            stack.push(d + 1);
        }
        stack.pop().unwrap_or(0)
    }

    /// The loss value on one batch. Non-finite results are returned as they are.
    pub fn evaluate(&self, batch: Batch<'_>) -> Result<f32, GpError> {
        self.check()?;
        let c = batch.classes;
        if c == 0
            || batch.target.len() != batch.logits.len()
            || !batch.target.len().is_multiple_of(c)
        {
            return Err(GpError::Input(format!(
                "targets ({}) and logits ({}) must both be batch × {c} values",
                batch.target.len(),
                batch.logits.len()
            )));
        }
        let b = batch.target.len() / c;
        let probs = softmax(batch.logits, c);
        let mut stack: Vec<Val> = Vec::new();
        for op in self.genes.iter().rev() {
            let v = match *op {
                Op::Target => Val {
                    kind: Some(Kind::Elem),
                    data: batch.target.to_vec(),
                },
                Op::Logit => Val {
                    kind: Some(Kind::Elem),
                    data: batch.logits.to_vec(),
                },
                Op::Prob => Val {
                    kind: Some(Kind::Elem),
                    data: probs.clone(),
                },
                Op::Const(s) => Val {
                    kind: None,
                    data: vec![self.constants[usize::from(s)]],
                },
                Op::SumClasses => {
                    let x = stack
                        .pop()
                        .ok_or_else(|| GpError::Malformed("stack".into()))?;
                    let data = if x.kind.is_none() {
                        vec![x.data[0] * c as f32; b]
                    } else {
                        x.data.chunks(c).map(|r| r.iter().sum()).collect()
                    };
                    Val {
                        kind: Some(Kind::Sample),
                        data,
                    }
                }
                Op::MeanBatch => {
                    let x = stack
                        .pop()
                        .ok_or_else(|| GpError::Malformed("stack".into()))?;
                    let n = x.data.len() as f32;
                    Val {
                        kind: Some(Kind::Scalar),
                        data: vec![x.data.iter().sum::<f32>() / n],
                    }
                }
                op if op.arity() == 1 => {
                    let mut x = stack
                        .pop()
                        .ok_or_else(|| GpError::Malformed("stack".into()))?;
                    for v in &mut x.data {
                        *v = unary(op, *v);
                    }
                    x
                }
                op => {
                    let x = stack
                        .pop()
                        .ok_or_else(|| GpError::Malformed("stack".into()))?;
                    let y = stack
                        .pop()
                        .ok_or_else(|| GpError::Malformed("stack".into()))?;
                    let n = x.data.len().max(y.data.len());
                    let data = (0..n)
                        .map(|i| {
                            let a = x.data[if x.data.len() == 1 { 0 } else { i }];
                            let bb = y.data[if y.data.len() == 1 { 0 } else { i }];
                            binary(op, a, bb)
                        })
                        .collect();
                    Val {
                        kind: x.kind.or(y.kind),
                        data,
                    }
                }
            };
            stack.push(v);
        }
        let top = stack
            .pop()
            .ok_or_else(|| GpError::Malformed("empty".into()))?;
        Ok(top.data.first().copied().unwrap_or(f32::NAN))
    }
}

/// Limits and rates for creating and varying expressions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpConfig {
    /// Shallowest tree made by initialisation.
    pub min_depth: usize,
    /// Deepest tree allowed.
    pub max_depth: usize,
    /// Most nodes allowed.
    pub max_size: usize,
    /// Probability that a leaf of kind Elem is a constant rather than y, z or p.
    pub constant_prob: f64,
    /// Range of new ephemeral constants.
    pub constant_range: (f32, f32),
}

impl Default for GpConfig {
    fn default() -> Self {
        GpConfig {
            min_depth: 3,
            max_depth: 8,
            max_size: 48,
            constant_prob: 0.15,
            constant_range: (-2.0, 2.0),
        }
    }
}

struct Gen<'a, R: Rng + ?Sized> {
    cfg: &'a GpConfig,
    rng: &'a mut R,
    genes: Vec<Op>,
    constants: Vec<f32>,
}

impl<R: Rng + ?Sized> Gen<'_, R> {
    fn constant(&mut self) {
        let (lo, hi) = self.cfg.constant_range;
        let v = range(self.rng, f64::from(lo), f64::from(hi)) as f32;
        let slot = u16::try_from(self.constants.len()).unwrap_or(u16::MAX);
        self.constants.push(v);
        self.genes.push(Op::Const(slot));
    }

    /// A random tree of `kind` with depth at most `depth`; `full` prefers operations until the
    /// depth is reached.
    fn tree(&mut self, kind: Kind, depth: usize, full: bool) {
        let leaf = depth <= 1 || (!full && chance(self.rng, 0.3));
        match kind {
            Kind::Elem => {
                if leaf {
                    if chance(self.rng, self.cfg.constant_prob) {
                        self.constant();
                    } else {
                        self.genes.push(INPUTS[below(self.rng, INPUTS.len())]);
                    }
                } else if chance(self.rng, 0.5) {
                    self.genes.push(UNARY[below(self.rng, UNARY.len())]);
                    self.tree(kind, depth - 1, full);
                } else {
                    self.genes.push(BINARY[below(self.rng, BINARY.len())]);
                    self.tree(kind, depth - 1, full);
                    self.tree(kind, depth - 1, full);
                }
            }
            Kind::Sample | Kind::Scalar => {
                // The reduction that leads towards the model's outputs.
                let (reduce, inner, need) = if kind == Kind::Scalar {
                    (Op::MeanBatch, Kind::Sample, 3)
                } else {
                    (Op::SumClasses, Kind::Elem, 2)
                };
                if depth < need {
                    self.constant();
                } else if depth == need || chance(self.rng, 0.6) {
                    self.genes.push(reduce);
                    self.tree(inner, depth - 1, full);
                } else if chance(self.rng, 0.5) {
                    self.genes.push(UNARY[below(self.rng, UNARY.len())]);
                    self.tree(kind, depth - 1, full);
                } else {
                    self.genes.push(BINARY[below(self.rng, BINARY.len())]);
                    self.tree(kind, depth - 1, full);
                    if chance(self.rng, 0.5) {
                        self.constant();
                    } else {
                        self.tree(kind, depth - 1, full);
                    }
                }
            }
        }
    }
}

/// `n` expressions by ramped half-and-half: depths spread over `min_depth..=max_depth`, half
/// grown, half full; each within the size limit (re-drawn otherwise).
pub fn ramped_half_and_half<R: Rng + ?Sized>(n: usize, cfg: &GpConfig, rng: &mut R) -> Vec<Expr> {
    let depths = cfg.min_depth.max(3)..=cfg.max_depth.max(cfg.min_depth.max(3));
    let span = depths.clone().count();
    (0..n)
        .map(|i| {
            let depth = depths.start() + i % span;
            let full = (i / span) % 2 == 1;
            loop {
                let e = random_tree(Kind::Scalar, depth, full, cfg, rng);
                if e.genes.len() <= cfg.max_size {
                    return e;
                }
            }
        })
        .collect()
}

fn random_tree<R: Rng + ?Sized>(
    kind: Kind,
    depth: usize,
    full: bool,
    cfg: &GpConfig,
    rng: &mut R,
) -> Expr {
    let mut g = Gen {
        cfg,
        rng,
        genes: Vec::new(),
        constants: Vec::new(),
    };
    g.tree(kind, depth, full);
    Expr {
        genes: g.genes,
        constants: g.constants,
    }
}

impl Expr {
    /// Cross-entropy: `mean_batch(−sum_classes(y · log p))`.
    pub fn cross_entropy() -> Expr {
        Expr {
            genes: vec![
                Op::MeanBatch,
                Op::Neg,
                Op::SumClasses,
                Op::Mul,
                Op::Target,
                Op::Log,
                Op::Prob,
            ],
            constants: vec![],
        }
    }

    /// Mean squared error on probabilities: `mean_batch(sum_classes((p − y)²))`.
    pub fn mse() -> Expr {
        Expr {
            genes: vec![
                Op::MeanBatch,
                Op::SumClasses,
                Op::Square,
                Op::Sub,
                Op::Prob,
                Op::Target,
            ],
            constants: vec![],
        }
    }

    /// Constant slots in order of first use, for the trainer to tune.
    pub fn constant_slots(&self) -> Vec<u16> {
        let mut seen = Vec::new();
        for op in &self.genes {
            if let Op::Const(s) = op
                && !seen.contains(s)
            {
                seen.push(*s);
            }
        }
        seen
    }

    /// Replaces the subtree at `i` with `sub` (whose constants are appended).
    fn splice(&self, i: usize, sub: &Expr) -> Expr {
        let end = subtree_end(&self.genes, i);
        let offset = self.constants.len();
        let mut genes = self.genes[..i].to_vec();
        genes.extend(sub.genes.iter().map(|op| match op {
            Op::Const(s) => Op::Const(u16::try_from(usize::from(*s) + offset).unwrap_or(u16::MAX)),
            op => *op,
        }));
        genes.extend_from_slice(&self.genes[end..]);
        let mut constants = self.constants.clone();
        constants.extend_from_slice(&sub.constants);
        Expr { genes, constants }.compact()
    }

    /// The subtree at `i` as an expression.
    fn subtree(&self, i: usize) -> Expr {
        Expr {
            genes: self.genes[i..subtree_end(&self.genes, i)].to_vec(),
            constants: self.constants.clone(),
        }
        .compact()
    }

    /// Drops unused constants and numbers the rest in order of first use.
    fn compact(mut self) -> Expr {
        let order = self.constant_slots();
        let constants = order
            .iter()
            .map(|&s| self.constants[usize::from(s)])
            .collect();
        for op in &mut self.genes {
            if let Op::Const(s) = op {
                *s = u16::try_from(order.iter().position(|x| x == s).unwrap_or(0)).unwrap_or(0);
            }
        }
        self.constants = constants;
        self
    }

    fn within(&self, cfg: &GpConfig) -> bool {
        self.genes.len() <= cfg.max_size && self.depth() <= cfg.max_depth && self.check().is_ok()
    }

    /// Subtree crossover: swaps random subtrees of the same kind. Children that would break
    /// the limits are replaced by copies of their parent.
    pub fn crossover<R: Rng + ?Sized>(
        a: &Expr,
        b: &Expr,
        cfg: &GpConfig,
        rng: &mut R,
    ) -> (Expr, Expr) {
        let (Ok(ka), Ok(kb)) = (a.kinds(), b.kinds()) else {
            return (a.clone(), b.clone());
        };
        let i = below(rng, a.genes.len());
        let matching: Vec<usize> = (0..b.genes.len()).filter(|&j| kb[j] == ka[i]).collect();
        if matching.is_empty() {
            return (a.clone(), b.clone());
        }
        let j = matching[below(rng, matching.len())];
        let c1 = a.splice(i, &b.subtree(j));
        let c2 = b.splice(j, &a.subtree(i));
        (
            if c1.within(cfg) { c1 } else { a.clone() },
            if c2.within(cfg) { c2 } else { b.clone() },
        )
    }

    /// One random mutation (subtree, point, hoist, wrap or constant); a result that breaks
    /// the limits is discarded (the expression is returned unchanged).
    pub fn mutate<R: Rng + ?Sized>(&self, cfg: &GpConfig, rng: &mut R) -> Expr {
        let Ok(kinds) = self.kinds() else {
            return self.clone();
        };
        let i = below(rng, self.genes.len());
        let out = match below(rng, 5) {
            0 => {
                // Subtree: a new random subtree of the same kind.
                let kind = kinds[i].unwrap_or(Kind::Scalar);
                let sub = random_tree(kind, 1 + below(rng, 4), false, cfg, rng);
                self.splice(i, &sub)
            }
            1 => {
                // Point: another operation with the same arity and typing.
                let mut e = self.clone();
                e.genes[i] = match e.genes[i] {
                    Op::Target | Op::Logit | Op::Prob => INPUTS[below(rng, INPUTS.len())],
                    op if UNARY.contains(&op) => UNARY[below(rng, UNARY.len())],
                    op if BINARY.contains(&op) => BINARY[below(rng, BINARY.len())],
                    op => op,
                };
                e
            }
            2 => {
                // Hoist: a subtree of the root's kind becomes the whole expression.
                let candidates: Vec<usize> = (0..self.genes.len())
                    .filter(|&j| kinds[j] == kinds[0])
                    .collect();
                self.subtree(candidates[below(rng, candidates.len())])
            }
            3 => {
                // Wrap: the whole expression plus a small weighted new term, e + c·t, with
                // c drawn near 0 (and tuned with the other constants). A working loss stays
                // one, so the search can refine it instead of only replacing its parts.
                let kind = kinds[0].unwrap_or(Kind::Scalar);
                let term = random_tree(kind, 2 + below(rng, 4), false, cfg, rng);
                let c = u16::try_from(self.constants.len()).unwrap_or(u16::MAX);
                let mut genes = Vec::with_capacity(self.genes.len() + term.genes.len() + 3);
                genes.push(Op::Add);
                genes.extend_from_slice(&self.genes);
                genes.push(Op::Mul);
                genes.push(Op::Const(c));
                genes.extend(term.genes.iter().map(|op| match op {
                    Op::Const(s) => Op::Const(s.saturating_add(c).saturating_add(1)),
                    op => *op,
                }));
                let mut constants = self.constants.clone();
                constants.push(range(rng, -0.1, 0.1) as f32);
                constants.extend_from_slice(&term.constants);
                Expr { genes, constants }.compact()
            }
            _ => {
                // Constant: perturb one constant.
                let mut e = self.clone();
                if !e.constants.is_empty() {
                    let s = below(rng, e.constants.len());
                    let c = e.constants[s];
                    e.constants[s] = c + range(rng, -0.5, 0.5) as f32 * c.abs().max(1.0);
                }
                e
            }
        };
        if out.within(cfg) { out } else { self.clone() }
    }
}

/// A tree view used by simplification and canonicalisation.
#[derive(Debug, Clone, PartialEq)]
enum Tree {
    Const(f32),
    Node(Op, Vec<Tree>),
}

impl Expr {
    fn to_tree(&self) -> Result<Tree, GpError> {
        self.check()?;
        let mut stack: Vec<Tree> = Vec::new();
        for op in self.genes.iter().rev() {
            let t = match *op {
                Op::Const(s) => Tree::Const(self.constants[usize::from(s)]),
                op => {
                    let args: Vec<Tree> = (0..op.arity()).filter_map(|_| stack.pop()).collect();
                    Tree::Node(op, args)
                }
            };
            stack.push(t);
        }
        stack
            .pop()
            .ok_or_else(|| GpError::Malformed("empty".into()))
    }

    fn from_tree(tree: &Tree) -> Expr {
        let mut genes = Vec::new();
        let mut constants = Vec::new();
        let mut todo = vec![tree];
        while let Some(t) = todo.pop() {
            match t {
                Tree::Const(v) => {
                    genes.push(Op::Const(
                        u16::try_from(constants.len()).unwrap_or(u16::MAX),
                    ));
                    constants.push(*v);
                }
                Tree::Node(op, args) => {
                    genes.push(*op);
                    todo.extend(args.iter().rev());
                }
            }
        }
        Expr { genes, constants }
    }

    /// Applies algebraic identities (x+0, x−0, x·1, x·0, x−x, −−x, min/max(x, x)) and folds
    /// operations on constants, bottom-up. The result evaluates identically on finite inputs.
    pub fn simplify(&self) -> Result<Expr, GpError> {
        Ok(Expr::from_tree(&simplify_tree(self.to_tree()?)))
    }

    /// The canonical form: simplified, commutative operands in a fixed order, constants
    /// numbered by first use.
    pub fn canonical(&self) -> Result<Expr, GpError> {
        Ok(Expr::from_tree(&order_tree(simplify_tree(self.to_tree()?))))
    }

    /// The genes and the constants' exact bits, encoded: equal bytes, identical expression.
    fn exact_bytes(&self) -> Vec<u8> {
        let bits: Vec<u32> = self.constants.iter().map(|v| v.to_bits()).collect();
        postcard::to_stdvec(&(&self.genes, bits)).expect("expression types always encode")
    }

    /// Content id: blake3 of the canonical form (constants by their exact bits).
    pub fn id(&self) -> Result<[u8; 32], GpError> {
        let bytes = self.canonical()?.exact_bytes();
        Ok(
            *blake3::Hasher::new_derive_key("hivemesh 2026-11 loss expression id v1")
                .update(&bytes)
                .finalize()
                .as_bytes(),
        )
    }

    /// Behavioural fingerprint: values on fixed probe batches, rounded to 5 significant
    /// digits, hashed. Functionally identical expressions (copies in disguise) share it.
    pub fn fingerprint(&self) -> Result<[u8; 32], GpError> {
        let mut h = blake3::Hasher::new_derive_key("hivemesh 2026-11 loss fingerprint v1");
        for (target, logits, classes) in probes() {
            let v = self.evaluate(Batch {
                target: &target,
                logits: &logits,
                classes,
            })?;
            let q = if v.is_finite() {
                format!("{v:.4e}")
            } else {
                format!("{v}")
            };
            h.update(q.as_bytes());
            h.update(b";");
        }
        Ok(*h.finalize().as_bytes())
    }
}

/// Fixed probe batches (splitmix64 from fixed seeds): 4 batches of 8 samples × 5 classes.
fn probes() -> Vec<(Vec<f32>, Vec<f32>, usize)> {
    let mut s: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..4)
        .map(|_| {
            let (b, c) = (8, 5);
            let mut target = vec![0.0f32; b * c];
            let mut logits = vec![0.0f32; b * c];
            for i in 0..b {
                target[i * c + (next() % c as u64) as usize] = 1.0;
                for j in 0..c {
                    logits[i * c + j] = ((next() >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0;
                }
            }
            (target, logits, c)
        })
        .collect()
}

fn is_const(t: &Tree, v: f32) -> bool {
    matches!(t, Tree::Const(c) if *c == v)
}

fn simplify_tree(t: Tree) -> Tree {
    let Tree::Node(op, args) = t else { return t };
    let args: Vec<Tree> = args.into_iter().map(simplify_tree).collect();
    // Constant folding (sum over classes depends on the class count: not folded).
    if op != Op::SumClasses && !args.is_empty() && args.iter().all(|a| matches!(a, Tree::Const(_)))
    {
        let v: Vec<f32> = args
            .iter()
            .map(|a| if let Tree::Const(c) = a { *c } else { 0.0 })
            .collect();
        return Tree::Const(match op.arity() {
            1 if op == Op::MeanBatch => v[0],
            1 => unary(op, v[0]),
            _ => binary(op, v[0], v[1]),
        });
    }
    match (op, args.as_slice()) {
        (Op::Add, [x, z]) | (Op::Add, [z, x]) if is_const(z, 0.0) => x.clone(),
        (Op::Sub, [x, z]) if is_const(z, 0.0) => x.clone(),
        (Op::Mul, [x, o]) | (Op::Mul, [o, x]) if is_const(o, 1.0) => x.clone(),
        (Op::Mul, [_, z]) | (Op::Mul, [z, _]) if is_const(z, 0.0) => Tree::Const(0.0),
        (Op::Sub, [x, y]) if x == y => Tree::Const(0.0),
        (Op::Min | Op::Max, [x, y]) if x == y => x.clone(),
        (Op::Neg, [Tree::Node(Op::Neg, inner)]) => inner[0].clone(),
        _ => Tree::Node(op, args),
    }
}

fn order_tree(t: Tree) -> Tree {
    let Tree::Node(op, args) = t else { return t };
    let mut args: Vec<Tree> = args.into_iter().map(order_tree).collect();
    if op.commutative() {
        args.sort_by_key(|a| Expr::from_tree(a).exact_bytes());
    }
    Tree::Node(op, args)
}
