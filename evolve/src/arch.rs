//! The architecture search space and its intermediate representation (IR).
//!
//! A genome (a vector of small integers) decodes into an [`Architecture`]: a small DAG of
//! layers, in topological order, with shapes inferred from the input shape and class count.
//! The trainer builds a `burn` model from the IR; the IR alone gives the exact number of
//! trainable parameters and FLOPs, and a canonical content id, so identical architectures
//! reached from different genomes are recognised as one. Sequence models have their own IR,
//! [`Transformer`] (a causal language model's shape, with its exact counts and id): its blocks
//! are not graph nodes, since every block is the same and only the shape varies.
//!
//! Two spaces:
//! * [`MlpSpace`]: up to `max_layers` hidden dense layers, each width chosen from a list (gene
//!   0 = layer absent), ReLU between them — for small inputs such as the 8×8 digits;
//! * [`MacroSpace`]: the NSGA-Net macro space (Lu et al. 2019, after Genetic CNN, Xie & Yuille
//!   2017): `phases` phases; in each, a 1×1 entry convolution sets the phase's channel count,
//!   then `nodes` conv–BN–ReLU nodes whose connections are bits (`i → j` for `i < j`); a node
//!   with no predecessor reads the entry, nodes without successors are summed into the phase
//!   output, a residual bit adds the entry to it, and nodes with no connection at all are
//!   dropped. Each phase also picks its channel count and kernel size. Phases are separated by
//!   2×2 max-pooling; global average pooling and a dense layer to the classes end the network.
//!
//! # Counting conventions
//! * Parameters: trainable values only. Conv: `k·k·c_in·c_out + c_out` (bias); dense:
//!   `n_in·n_out + n_out`; batch norm: `2·c` (scale and shift; running statistics are not
//!   trained). Activations, pooling, add and flatten have none.
//! * FLOPs: for one sample's forward pass, **one multiply-add = 2 FLOPs**. Conv:
//!   `2·k·k·c_in` per output value plus 1 for the bias; dense: `2·n_in` per output plus 1;
//!   batch norm (inference): 2 per value; activations: 1 per value; max/avg pooling: `k·k` per
//!   output value; global average pooling: 1 per input value; add: 1 per value per extra
//!   input; flatten: 0.

use serde::{Deserialize, Serialize};

/// The shape of one sample's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// Channels × height × width.
    Image {
        /// Channels.
        c: u32,
        /// Height.
        h: u32,
        /// Width.
        w: u32,
    },
    /// A flat vector.
    Flat(u32),
}

impl Shape {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        match *self {
            Shape::Image { c, h, w } => u64::from(c) * u64::from(h) * u64::from(w),
            Shape::Flat(n) => u64::from(n),
        }
    }
}

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

/// One layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// The network input (always node 0, and only there).
    Input,
    /// 2-D convolution, stride 1, "same" zero padding (`kernel / 2`), with bias.
    Conv {
        /// Output channels.
        out: u32,
        /// Kernel size (odd).
        kernel: u32,
    },
    /// Batch normalisation over channels (or features).
    BatchNorm,
    /// An activation.
    Act(Activation),
    /// Max pooling, stride = kernel.
    MaxPool {
        /// Window size.
        kernel: u32,
    },
    /// Average pooling, stride = kernel.
    AvgPool {
        /// Window size.
        kernel: u32,
    },
    /// Average over all spatial positions: `c×h×w → c`.
    GlobalAvgPool,
    /// `c×h×w → c·h·w`.
    Flatten,
    /// Fully connected layer with bias.
    Dense {
        /// Output features.
        out: u32,
    },
    /// Element-wise sum of two or more inputs of the same shape (residual connections).
    Add,
}

/// One node of the graph: an op applied to earlier nodes' outputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// The layer.
    pub op: Op,
    /// Indices of the nodes it reads (all earlier; exactly one, except `Add`: two or more,
    /// and `Input`: none).
    pub inputs: Vec<u32>,
}

/// A network: input shape, class count and a DAG of nodes in topological order whose last
/// node produces the logits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Architecture {
    /// Shape of one input sample.
    pub input: Shape,
    /// Number of classes (the last node's output size).
    pub classes: u32,
    /// The nodes; node 0 is the input.
    pub nodes: Vec<Node>,
}

/// Why a genome or an IR is not a valid network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    /// The genome has the wrong number of genes.
    #[error("genome has {got} genes, this space needs {expected}")]
    GenomeLength {
        /// Genes required.
        expected: usize,
        /// Genes given.
        got: usize,
    },
    /// A gene is outside its range.
    #[error("gene {index} is {value}, must be below {limit}")]
    GeneRange {
        /// Which gene.
        index: usize,
        /// Its value.
        value: u32,
        /// Exclusive upper bound.
        limit: u32,
    },
    /// The space itself is misconfigured.
    #[error("invalid search space: {0}")]
    Space(String),
    /// A language model's shape is out of range.
    #[error("language model: {0}")]
    Transformer(String),
    /// A node breaks a structural rule (ordering, arity, shapes).
    #[error("node {node}: {reason}")]
    Node {
        /// Which node.
        node: usize,
        /// What is wrong.
        reason: String,
    },
}

fn node_err(node: usize, reason: impl Into<String>) -> ArchError {
    ArchError::Node {
        node,
        reason: reason.into(),
    }
}

impl Architecture {
    /// The output shape of every node, checking every structural rule on the way.
    pub fn shapes(&self) -> Result<Vec<Shape>, ArchError> {
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            if node.inputs.iter().any(|&j| j as usize >= i) {
                return Err(node_err(
                    i,
                    "reads a later node (not topologically ordered)",
                ));
            }
            let arity = node.inputs.len();
            let input = |k: usize| shapes[node.inputs[k] as usize];
            let shape = match node.op {
                Op::Input => {
                    if i != 0 || arity != 0 {
                        return Err(node_err(i, "the input must be node 0 and read nothing"));
                    }
                    self.input
                }
                _ if i == 0 => return Err(node_err(0, "node 0 must be the input")),
                Op::Add => {
                    if arity < 2 {
                        return Err(node_err(i, "add needs two or more inputs"));
                    }
                    let s = input(0);
                    if (1..arity).any(|k| input(k) != s) {
                        return Err(node_err(i, "add inputs differ in shape"));
                    }
                    s
                }
                op => {
                    if arity != 1 {
                        return Err(node_err(i, format!("{op:?} needs exactly one input")));
                    }
                    one_input_shape(op, input(0)).map_err(|r| node_err(i, r))?
                }
            };
            if shape.numel() == 0 {
                return Err(node_err(i, "produces an empty tensor"));
            }
            shapes.push(shape);
        }
        match shapes.last() {
            Some(Shape::Flat(n)) if *n == self.classes => Ok(shapes),
            Some(s) => Err(node_err(
                shapes.len() - 1,
                format!(
                    "the last node must output {} logits, not {s:?}",
                    self.classes
                ),
            )),
            None => Err(node_err(0, "no nodes")),
        }
    }

    /// Trainable parameters (see the module's conventions).
    pub fn params(&self) -> Result<u64, ArchError> {
        let shapes = self.shapes()?;
        Ok(self
            .nodes
            .iter()
            .map(|n| {
                let input = n.inputs.first().map(|&j| shapes[j as usize]);
                match (n.op, input) {
                    (Op::Conv { out, kernel }, Some(Shape::Image { c, .. })) => {
                        u64::from(kernel) * u64::from(kernel) * u64::from(c) * u64::from(out)
                            + u64::from(out)
                    }
                    (Op::Dense { out }, Some(s)) => s.numel() * u64::from(out) + u64::from(out),
                    (Op::BatchNorm, Some(Shape::Image { c, .. })) => 2 * u64::from(c),
                    (Op::BatchNorm, Some(Shape::Flat(n))) => 2 * u64::from(n),
                    _ => 0,
                }
            })
            .sum())
    }

    /// FLOPs of one sample's forward pass (see the module's conventions).
    pub fn flops(&self) -> Result<u64, ArchError> {
        let shapes = self.shapes()?;
        Ok(self
            .nodes
            .iter()
            .zip(&shapes)
            .map(|(n, out)| {
                let input = n.inputs.first().map(|&j| shapes[j as usize]);
                let values = out.numel();
                match (n.op, input) {
                    (Op::Conv { kernel, .. }, Some(Shape::Image { c, .. })) => {
                        values * (2 * u64::from(kernel) * u64::from(kernel) * u64::from(c) + 1)
                    }
                    (Op::Dense { .. }, Some(s)) => values * (2 * s.numel() + 1),
                    (Op::BatchNorm, _) => 2 * values,
                    (Op::Act(_), _) => values,
                    (Op::MaxPool { kernel } | Op::AvgPool { kernel }, _) => {
                        values * u64::from(kernel) * u64::from(kernel)
                    }
                    (Op::GlobalAvgPool, Some(s)) => s.numel(),
                    (Op::Add, _) => values * (n.inputs.len() as u64 - 1),
                    _ => 0,
                }
            })
            .sum())
    }

    /// The content id of this architecture: blake3 of its encoding. Decoders emit normalised IR
    /// (absent layers and unconnected nodes dropped, add inputs sorted, nodes in order of
    /// first use), so genomes that differ only in unused genes or in which node numbers an
    /// active chain uses get one id. Two phases that are isomorphic only under a reordering of
    /// their nodes can still get different ids (full graph canonisation is not attempted).
    pub fn id(&self) -> [u8; 32] {
        let bytes = postcard::to_stdvec(self).expect("IR types always encode");
        *blake3::Hasher::new_derive_key("hivemesh 2026-11 architecture id v1")
            .update(&bytes)
            .finalize()
            .as_bytes()
    }
}

fn one_input_shape(op: Op, s: Shape) -> Result<Shape, String> {
    Ok(match (op, s) {
        (Op::Conv { out, kernel }, Shape::Image { h, w, .. }) => {
            if kernel == 0 || kernel % 2 == 0 || out == 0 {
                return Err(format!(
                    "conv needs an odd kernel and channels, got k={kernel} out={out}"
                ));
            }
            Shape::Image { c: out, h, w }
        }
        (Op::BatchNorm | Op::Act(_), s) => s,
        (Op::MaxPool { kernel } | Op::AvgPool { kernel }, Shape::Image { c, h, w }) => {
            if kernel == 0 || kernel > h || kernel > w {
                return Err(format!("pooling window {kernel} does not fit {h}x{w}"));
            }
            Shape::Image {
                c,
                h: h / kernel,
                w: w / kernel,
            }
        }
        (Op::GlobalAvgPool, Shape::Image { c, .. }) => Shape::Flat(c),
        (Op::Flatten, s) => {
            Shape::Flat(u32::try_from(s.numel()).map_err(|_| "too large".to_string())?)
        }
        (Op::Dense { out }, Shape::Flat(_)) if out > 0 => Shape::Flat(out),
        (op, s) => return Err(format!("{op:?} cannot take a {s:?} input")),
    })
}

/// Builds node lists.
#[derive(Debug, Default)]
struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            nodes: vec![Node {
                op: Op::Input,
                inputs: vec![],
            }],
        }
    }

    fn push(&mut self, op: Op, inputs: Vec<u32>) -> u32 {
        self.nodes.push(Node { op, inputs });
        (self.nodes.len() - 1) as u32
    }

    fn chain(&mut self, from: u32, ops: &[Op]) -> u32 {
        ops.iter().fold(from, |prev, op| self.push(*op, vec![prev]))
    }

    fn sum(&mut self, mut inputs: Vec<u32>) -> u32 {
        inputs.sort_unstable();
        inputs.dedup();
        if inputs.len() == 1 {
            inputs[0]
        } else {
            self.push(Op::Add, inputs)
        }
    }
}

/// The MLP space: genes `g[0..max_layers]`, each 0 (no layer) or `1 + index into widths`.
/// Absent layers are skipped, so `[2, 0, 1]` and `[2, 1, 0]` are the same network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpSpace {
    /// Input shape.
    pub input: Shape,
    /// Classes.
    pub classes: u32,
    /// Most hidden layers.
    pub max_layers: usize,
    /// Allowed widths.
    pub widths: Vec<u32>,
}

impl MlpSpace {
    /// Genes per genome.
    pub fn genome_len(&self) -> usize {
        self.max_layers
    }

    /// Exclusive upper bound of each gene.
    pub fn gene_limits(&self) -> Vec<u32> {
        vec![self.widths.len() as u32 + 1; self.max_layers]
    }

    /// The network a genome encodes.
    pub fn decode(&self, genome: &[u32]) -> Result<Architecture, ArchError> {
        check_genes(genome, &self.gene_limits())?;
        if self.widths.is_empty() || self.widths.contains(&0) || self.classes == 0 {
            return Err(ArchError::Space(
                "widths must be non-empty and positive, classes > 0".into(),
            ));
        }
        let mut b = Builder::new();
        let mut x = if matches!(self.input, Shape::Image { .. }) {
            b.chain(0, &[Op::Flatten])
        } else {
            0
        };
        for &g in genome.iter().filter(|&&g| g > 0) {
            let width = self.widths[(g - 1) as usize];
            x = b.chain(x, &[Op::Dense { out: width }, Op::Act(Activation::Relu)]);
        }
        b.chain(x, &[Op::Dense { out: self.classes }]);
        let arch = Architecture {
            input: self.input,
            classes: self.classes,
            nodes: b.nodes,
        };
        arch.shapes()?;
        Ok(arch)
    }
}

/// The NSGA-Net macro space (see the module docs). Genes per phase: the connection bits
/// `(i, j)` for `i < j < nodes` in row order, the residual bit, the channel index and the
/// kernel index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroSpace {
    /// Input shape (an image).
    pub input: Shape,
    /// Classes.
    pub classes: u32,
    /// Phases.
    pub phases: usize,
    /// Nodes per phase.
    pub nodes: usize,
    /// Allowed channel counts.
    pub channels: Vec<u32>,
    /// Allowed (odd) kernel sizes.
    pub kernels: Vec<u32>,
}

impl MacroSpace {
    fn bits_per_phase(&self) -> usize {
        self.nodes * self.nodes.saturating_sub(1) / 2
    }

    fn genes_per_phase(&self) -> usize {
        self.bits_per_phase() + 3
    }

    /// Genes per genome.
    pub fn genome_len(&self) -> usize {
        self.phases * self.genes_per_phase()
    }

    /// Exclusive upper bound of each gene.
    pub fn gene_limits(&self) -> Vec<u32> {
        let mut one = vec![2; self.bits_per_phase() + 1];
        one.push(self.channels.len() as u32);
        one.push(self.kernels.len() as u32);
        one.iter()
            .copied()
            .cycle()
            .take(self.genome_len())
            .collect()
    }

    /// The network a genome encodes.
    pub fn decode(&self, genome: &[u32]) -> Result<Architecture, ArchError> {
        if !matches!(self.input, Shape::Image { .. }) {
            return Err(ArchError::Space(
                "the macro space needs an image input".into(),
            ));
        }
        if self.phases == 0
            || self.nodes == 0
            || self.channels.is_empty()
            || self.kernels.is_empty()
        {
            return Err(ArchError::Space(
                "phases, nodes, channels and kernels must be non-empty".into(),
            ));
        }
        if self.channels.contains(&0) || self.kernels.iter().any(|k| k % 2 == 0) {
            return Err(ArchError::Space(
                "channels must be positive and kernels odd".into(),
            ));
        }
        check_genes(genome, &self.gene_limits())?;
        let mut b = Builder::new();
        let mut x = 0u32;
        let Shape::Image { mut h, mut w, .. } = self.input else {
            unreachable!("checked above")
        };
        for (p, genes) in genome.chunks(self.genes_per_phase()).enumerate() {
            let bits = &genes[..self.bits_per_phase()];
            let residual = genes[self.bits_per_phase()] == 1;
            let ch = self.channels[genes[self.bits_per_phase() + 1] as usize];
            let k = self.kernels[genes[self.bits_per_phase() + 2] as usize];
            let block = [
                Op::Conv { out: ch, kernel: k },
                Op::BatchNorm,
                Op::Act(Activation::Relu),
            ];
            let entry = b.chain(
                x,
                &[
                    Op::Conv { out: ch, kernel: 1 },
                    Op::BatchNorm,
                    Op::Act(Activation::Relu),
                ],
            );
            // Connection (i, j) for i < j, row order.
            let edge = |i: usize, j: usize| -> bool {
                let idx = i * (2 * self.nodes - i - 1) / 2 + (j - i - 1);
                bits[idx] == 1
            };
            let preds = |j: usize| (0..j).filter(|&i| edge(i, j)).collect::<Vec<_>>();
            let succs = |i: usize| {
                (i + 1..self.nodes)
                    .filter(|&j| edge(i, j))
                    .collect::<Vec<_>>()
            };
            let active: Vec<bool> = (0..self.nodes)
                .map(|n| !preds(n).is_empty() || !succs(n).is_empty())
                .collect();
            let mut out_of: Vec<Option<u32>> = vec![None; self.nodes];
            for n in 0..self.nodes {
                if !active[n] {
                    continue;
                }
                let sources: Vec<u32> = preds(n).into_iter().filter_map(|i| out_of[i]).collect();
                let input = if sources.is_empty() {
                    entry
                } else {
                    b.sum(sources)
                };
                out_of[n] = Some(b.chain(input, &block));
            }
            let mut leaves: Vec<u32> = (0..self.nodes)
                .filter(|&n| active[n] && succs(n).is_empty())
                .filter_map(|n| out_of[n])
                .collect();
            if leaves.is_empty() {
                // No active node: the phase is one node (Genetic CNN's convention).
                leaves.push(b.chain(entry, &block));
            }
            if residual {
                leaves.push(entry);
            }
            x = b.sum(leaves);
            if p + 1 < self.phases && h >= 2 && w >= 2 {
                x = b.chain(x, &[Op::MaxPool { kernel: 2 }]);
                h /= 2;
                w /= 2;
            }
        }
        b.chain(x, &[Op::GlobalAvgPool, Op::Dense { out: self.classes }]);
        let arch = Architecture {
            input: self.input,
            classes: self.classes,
            nodes: b.nodes,
        };
        arch.shapes()?;
        Ok(arch)
    }
}

fn check_genes(genome: &[u32], limits: &[u32]) -> Result<(), ArchError> {
    if genome.len() != limits.len() {
        return Err(ArchError::GenomeLength {
            expected: limits.len(),
            got: genome.len(),
        });
    }
    for (index, (&value, &limit)) in genome.iter().zip(limits).enumerate() {
        if value >= limit {
            return Err(ArchError::GeneRange {
                index,
                value,
                limit,
            });
        }
    }
    Ok(())
}

/// The most layers, heads, width, context and vocabulary a [`Transformer`] may ask
/// for (a file or a command line cannot make a trainer allocate without bound).
pub const MAX_LM_LAYERS: usize = 48;
/// See [`MAX_LM_LAYERS`].
pub const MAX_LM_WIDTH: usize = 4096;
/// See [`MAX_LM_LAYERS`].
pub const MAX_LM_CONTEXT: usize = 8192;
/// See [`MAX_LM_LAYERS`].
pub const MAX_LM_VOCAB: usize = 1 << 20;

/// A causal transformer language model (GPT-style, nanoGPT's architecture without dropout):
/// token embedding, learned positions, `layers` pre-norm blocks of multi-head causal
/// self-attention and a `4 × width` MLP, a final layer norm, and an output head tied to the
/// token embedding; biases everywhere. The IR of sequence models: the trainer builds it
/// (`hivemesh_trainer::lm`), and its exact counts are here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transformer {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// The longest sequence (positions learned).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block (divides `width`).
    pub heads: usize,
    /// The residual stream's width.
    pub width: usize,
}

impl Transformer {
    /// nanoGPT's CPU character-level configuration (4 layers, 4 heads, width 128, context 64)
    /// for a vocabulary of `vocab` tokens.
    pub fn small(vocab: usize) -> Transformer {
        Transformer {
            vocab,
            context: 64,
            layers: 4,
            heads: 4,
            width: 128,
        }
    }

    /// Checks the shape, naming what is wrong.
    pub fn check(&self) -> Result<(), ArchError> {
        let bad = |what: String| Err(ArchError::Transformer(what));
        if !(2..=MAX_LM_VOCAB).contains(&self.vocab) {
            return bad(format!(
                "a vocabulary of {} (2 to {MAX_LM_VOCAB})",
                self.vocab
            ));
        }
        if !(1..=MAX_LM_CONTEXT).contains(&self.context) {
            return bad(format!(
                "a context of {} (1 to {MAX_LM_CONTEXT})",
                self.context
            ));
        }
        if !(1..=MAX_LM_LAYERS).contains(&self.layers) {
            return bad(format!("{} layers (1 to {MAX_LM_LAYERS})", self.layers));
        }
        if !(1..=MAX_LM_WIDTH).contains(&self.width) {
            return bad(format!("a width of {} (1 to {MAX_LM_WIDTH})", self.width));
        }
        if self.heads == 0 || !self.width.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads do not divide the width {}",
                self.heads, self.width
            ));
        }
        Ok(())
    }

    /// Trainable parameters: embeddings (the head is tied to the token embedding), per block
    /// two layer norms (scale and shift), the attention's joint q/k/v and output projections
    /// and the MLP's two layers (hidden width `4 × width`), all with biases, and the final
    /// layer norm.
    pub fn params(&self) -> u64 {
        let (v, t, d) = (self.vocab as u64, self.context as u64, self.width as u64);
        let block = 2 * (2 * d)      // two layer norms
            + d * 3 * d + 3 * d       // q, k, v
            + d * d + d               // attention output
            + d * 4 * d + 4 * d       // MLP in
            + 4 * d * d + d; // MLP out
        v * d + t * d + self.layers as u64 * block + 2 * d
    }

    /// Forward FLOPs (multiply-adds count 2) to process one sequence of the full context,
    /// counting the matrix products only (projections, attention scores and mixing, the
    /// head): per token `2 × (12 d² L + v d)` for the weights plus `2 × 2 t d L` per token
    /// for attention over the whole `t × t` score matrix (the causal half is not skipped).
    pub fn flops_per_sequence(&self) -> u64 {
        let (v, t, d, l) = (
            self.vocab as u64,
            self.context as u64,
            self.width as u64,
            self.layers as u64,
        );
        let weights = 2 * (12 * d * d * l + v * d);
        let attention = 2 * 2 * t * d * l;
        t * (weights + attention)
    }

    /// The content id of this shape: blake3 of its encoding (as [`Architecture::id`]).
    pub fn id(&self) -> [u8; 32] {
        let bytes = postcard::to_stdvec(self).expect("IR types always encode");
        *blake3::Hasher::new_derive_key("hivemesh 2026-12 transformer id v1")
            .update(&bytes)
            .finalize()
            .as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digits_mlp() -> MlpSpace {
        MlpSpace {
            input: Shape::Image { c: 1, h: 8, w: 8 },
            classes: 10,
            max_layers: 3,
            widths: vec![16, 32, 64],
        }
    }

    fn mnist_macro() -> MacroSpace {
        MacroSpace {
            input: Shape::Image { c: 1, h: 28, w: 28 },
            classes: 10,
            phases: 3,
            nodes: 4,
            channels: vec![8, 16, 32],
            kernels: vec![3, 5],
        }
    }

    #[test]
    fn mlp_counts_match_hand_computation() {
        // 64 -> 32 -> 16 -> 10
        let a = digits_mlp().decode(&[2, 1, 0]).unwrap();
        assert_eq!(
            a.params().unwrap(),
            (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
        );
        // dense: 2*in per output + 1 bias; relu: 1 per value.
        let flops = 32 * (2 * 64 + 1) + 32 + 16 * (2 * 32 + 1) + 16 + 10 * (2 * 16 + 1);
        assert_eq!(a.flops().unwrap(), flops);
        // Absent layers are skipped: same network, same id.
        assert_eq!(a.id(), digits_mlp().decode(&[0, 2, 1]).unwrap().id());
        assert_ne!(a.id(), digits_mlp().decode(&[1, 2, 0]).unwrap().id());
    }

    #[test]
    // The factors of 1 spell out the formulas (1x1 kernel, 1 input channel).
    #[allow(clippy::identity_op)]
    fn macro_counts_match_hand_computation_for_a_chain() {
        // One phase, 2 nodes, edge 0->1, no residual, 4 channels, kernel 3, on 1x4x4.
        let s = MacroSpace {
            input: Shape::Image { c: 1, h: 4, w: 4 },
            classes: 2,
            phases: 1,
            nodes: 2,
            channels: vec![4],
            kernels: vec![3],
        };
        let a = s.decode(&[1, 0, 0, 0]).unwrap();
        let entry = (1 * 4 + 4) + 8; // 1x1 conv + BN
        let node = (9 * 4 * 4 + 4) + 8; // 3x3 conv + BN
        let head = 4 * 2 + 2;
        assert_eq!(a.params().unwrap(), entry + 2 * node + head);
        let v = 4 * 16; // values per 4x4x4 tensor
        let entry_f = v * (2 * 1 + 1) + 2 * v + v;
        let node_f = v * (2 * 9 * 4 + 1) + 2 * v + v;
        let head_f = v + 2 * (2 * 4 + 1);
        assert_eq!(a.flops().unwrap(), entry_f + 2 * node_f + head_f);
    }

    #[test]
    fn unconnected_bits_do_not_change_the_id() {
        let s = mnist_macro();
        let limits = s.gene_limits();
        assert_eq!(limits.len(), s.genome_len());
        // Phase genes: 6 bits, residual, channel, kernel. All-zero bits: one default node.
        let g = vec![0u32; s.genome_len()];
        let a = s.decode(&g).unwrap();
        // Flipping the kernel of phase 0 changes the network.
        let mut g2 = g.clone();
        g2[8] = 1;
        assert_ne!(a.id(), s.decode(&g2).unwrap().id());
        // The same graph written with a different node numbering is the same network:
        // a single edge 0->1 vs a single edge 2->3.
        let mut e01 = g.clone();
        e01[0] = 1;
        let mut e23 = g.clone();
        e23[5] = 1;
        assert_eq!(s.decode(&e01).unwrap().id(), s.decode(&e23).unwrap().id());
    }

    #[test]
    fn bad_genomes_are_clear_errors() {
        let s = mnist_macro();
        assert_eq!(
            s.decode(&[0; 3]),
            Err(ArchError::GenomeLength {
                expected: s.genome_len(),
                got: 3
            })
        );
        let mut g = vec![0u32; s.genome_len()];
        g[7] = 3;
        assert!(matches!(
            s.decode(&g),
            Err(ArchError::GeneRange {
                index: 7,
                value: 3,
                limit: 3
            })
        ));
        assert!(matches!(
            digits_mlp().decode(&[4, 0, 0]),
            Err(ArchError::GeneRange { .. })
        ));
    }

    #[test]
    fn ir_rules_are_enforced() {
        let bad = Architecture {
            input: Shape::Flat(4),
            classes: 3,
            nodes: vec![
                Node {
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    op: Op::Dense { out: 3 },
                    inputs: vec![2],
                },
            ],
        };
        assert!(bad.shapes().unwrap_err().to_string().contains("later node"));
        let wrong_out = Architecture {
            input: Shape::Flat(4),
            classes: 3,
            nodes: vec![
                Node {
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    op: Op::Dense { out: 5 },
                    inputs: vec![0],
                },
            ],
        };
        assert!(
            wrong_out
                .shapes()
                .unwrap_err()
                .to_string()
                .contains("3 logits")
        );
        let conv_on_flat = Architecture {
            input: Shape::Flat(4),
            classes: 3,
            nodes: vec![
                Node {
                    op: Op::Input,
                    inputs: vec![],
                },
                Node {
                    op: Op::Conv { out: 2, kernel: 3 },
                    inputs: vec![0],
                },
            ],
        };
        assert!(conv_on_flat.shapes().is_err());
    }

    proptest! {
        #[test]
        fn random_genomes_decode_to_valid_ir(seed in proptest::collection::vec(any::<u32>(), 27)) {
            let s = mnist_macro();
            let g: Vec<u32> = seed.iter().zip(s.gene_limits()).map(|(x, l)| x % l).collect();
            let a = s.decode(&g).unwrap();
            prop_assert!(a.params().unwrap() > 0);
            prop_assert!(a.flops().unwrap() > a.params().unwrap());
            // Canonical: decoding is a pure function.
            prop_assert_eq!(a.id(), s.decode(&g).unwrap().id());
        }

        #[test]
        fn arbitrary_genomes_never_panic(g in proptest::collection::vec(any::<u32>(), 0..40)) {
            let _ = mnist_macro().decode(&g);
            let _ = digits_mlp().decode(&g);
        }
    }

    #[test]
    fn params_and_flops_match_hand_counts() {
        // nanoGPT's character model on Shakespeare (65 characters): counted by hand.
        // embeddings 65·128 + 64·128 = 16,512; a block: LN 512 + qkv 49,536 + proj 16,512
        // + fc 66,048 + out 65,664 = 198,272; four of them 793,088; final LN 256.
        let c = Transformer::small(65);
        assert_eq!(c.params(), 16_512 + 793_088 + 256);
        // Per token: 2·(12·128²·4 + 65·128) = 1,589,504; attention 2·2·64·128·4 = 131,072.
        assert_eq!(c.flops_per_sequence(), 64 * (1_589_504 + 131_072));
    }

    #[test]
    fn shapes_are_checked_with_the_reason() {
        let mut c = Transformer::small(65);
        assert!(c.check().is_ok());
        c.heads = 3;
        assert!(c.check().unwrap_err().to_string().contains("3 heads"));
        c = Transformer::small(1);
        assert!(c.check().unwrap_err().to_string().contains("vocabulary"));
        c = Transformer::small(65);
        c.layers = 1000;
        assert!(c.check().unwrap_err().to_string().contains("layers"));
        // Content ids tell shapes apart.
        assert_eq!(Transformer::small(65).id(), Transformer::small(65).id());
        assert_ne!(Transformer::small(65).id(), Transformer::small(66).id());
    }
}
