//! burn models built from evolve's architecture IR, with weights from the job's own RNG.
//!
//! [`Model`] holds the IR's trainable layers in three lists (convolutions, dense layers, batch
//! norms) and a plan that walks the IR's DAG. Initial weights are drawn from a ChaCha RNG seeded
//! by the job, in node order, never from burn's process-global RNG: burn initialises parameters
//! lazily from that global RNG, so two jobs training at once in one process would interleave
//! their draws (measured in DEPENDENCIES.md). The initialisation is PyTorch's default for both
//! layer kinds: `U(-1/√fan_in, 1/√fan_in)` for weights and biases.
//!
//! Weights are saved as a content-addressed artifact ([`WeightsFile`]): the IR and every tensor
//! (name, shape, little-endian `f32` bytes) in a fixed order, encoded with postcard; its id is
//! blake3 of those bytes, and [`Model::weights_hash`] hashes the same tensors, so the hash is
//! the same whether computed in memory or from a file.

use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, Linear};
use burn::prelude::Backend;
use burn::tensor::activation::{relu, sigmoid, tanh};
use burn::tensor::module::avg_pool2d;
use burn::tensor::{Tensor, TensorData};
use hivemesh_evolve::arch::{Activation, Architecture, Op, Shape};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::ops::{ModelBackend, relu_if};

/// One step of the plan: what a node does and which layer list holds its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Input,
    Conv(usize),
    Dense(usize),
    Norm(usize),
    Act(Activation),
    MaxPool(usize),
    AvgPool(usize),
    GlobalAvgPool,
    Flatten,
    Add,
}

/// How to walk the DAG (not a module: no parameters).
#[derive(Debug, Clone)]
pub struct Plan {
    steps: Vec<Step>,
    inputs: Vec<Vec<usize>>,
    shapes: Vec<Shape>,
    /// For each node, the last node that reads it (its value is dropped after that).
    last_use: Vec<usize>,
    /// For each node: a convolution or dense layer whose only reader is a ReLU computes that
    /// ReLU itself (one pass instead of two, and no separate mask in the backward pass)...
    fused_relu: Vec<bool>,
    /// ...and that ReLU node then passes its input on.
    passthrough: Vec<bool>,
}

/// Which layers take their ReLU into their own pass: `(fused_relu, passthrough)` per node
/// (see [`Plan`]).
fn relu_fusion(arch: &Architecture) -> (Vec<bool>, Vec<bool>) {
    let n = arch.nodes.len();
    let mut readers = vec![0usize; n];
    for node in &arch.nodes {
        for &j in &node.inputs {
            readers[j as usize] += 1;
        }
    }
    let (mut fused, mut pass) = (vec![false; n], vec![false; n]);
    for (i, node) in arch.nodes.iter().enumerate() {
        if let (Op::Act(Activation::Relu), [j]) = (node.op, node.inputs.as_slice()) {
            let j = *j as usize;
            let layer = matches!(
                arch.nodes[j].op,
                Op::Conv { .. } | Op::Dense { .. } | Op::BatchNorm
            );
            if layer && readers[j] == 1 {
                fused[j] = true;
                pass[i] = true;
            }
        }
    }
    (fused, pass)
}

/// A 2-D convolution, stride 1, "same" zero padding, with bias; computed by the backend's
/// [`ModelBackend::conv_same`] (on CPU: im2col + GEMM with its own backward pass). Weights keep
/// PyTorch's `[out, in, k, k]` layout in artifacts.
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: ModelBackend> Conv<B> {
    /// `[b, c, h, w]` → `[b, out, h, w]`, then ReLU when `relu`.
    pub fn forward(&self, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
        B::conv_same(x, self.weight.val(), self.bias.val(), relu)
    }
}

/// A network built from an [`Architecture`].
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    convs: Vec<Conv<B>>,
    denses: Vec<Linear<B>>,
    norms: Vec<BatchNorm<B>>,
    #[module(skip)]
    plan: Plan,
}

/// A node's value: an image batch or a flat batch.
enum Value<B: Backend> {
    Img(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
}

/// Where initial tensors come from.
pub(crate) trait InitSource {
    /// Values for tensor `name` of `shape`; `fan_in` sets the uniform bound when random.
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        fan_in: usize,
    ) -> Result<Vec<f32>, TrainError>;
    /// Values for a tensor whose fresh value is the constant `value` (batch-norm scale, shift
    /// and running statistics): no random draw.
    fn fixed(&mut self, name: &str, len: usize, value: f32) -> Result<Vec<f32>, TrainError>;
}

/// PyTorch-default uniform initialisation from a seeded ChaCha RNG.
pub(crate) struct SeededInit(pub(crate) ChaCha8Rng);

impl InitSource for SeededInit {
    fn tensor(&mut self, _: &str, shape: &[usize], fan_in: usize) -> Result<Vec<f32>, TrainError> {
        let n: usize = shape.iter().product();
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        Ok((0..n)
            .map(|_| {
                // 24 random bits → [0, 1) exactly representable, then [-bound, bound).
                let u = (self.0.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                (2.0 * u - 1.0) * bound
            })
            .collect())
    }

    fn fixed(&mut self, _: &str, len: usize, value: f32) -> Result<Vec<f32>, TrainError> {
        Ok(vec![value; len])
    }
}

/// Tensors read back from a [`WeightsFile`], by name.
struct FileInit<'a>(&'a WeightsFile);

impl InitSource for FileInit<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], _: usize) -> Result<Vec<f32>, TrainError> {
        let t = self
            .0
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TrainError::Artifact(format!("tensor {name} is missing")))?;
        let want: Vec<u32> = shape.iter().map(|&d| d as u32).collect();
        if t.shape != want || t.data.len() != 4 * shape.iter().product::<usize>() {
            return Err(TrainError::Artifact(format!(
                "tensor {name} has shape {:?} ({} bytes), the architecture needs {want:?}",
                t.shape,
                t.data.len()
            )));
        }
        Ok(t.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn fixed(&mut self, name: &str, len: usize, _: f32) -> Result<Vec<f32>, TrainError> {
        self.tensor(name, &[len], 1)
    }
}

/// A saved tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTensor {
    /// e.g. `n3.conv.weight`.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<u32>,
    /// Little-endian `f32` values.
    pub data: Vec<u8>,
}

/// A model's architecture and weights: the content-addressed weights artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsFile {
    /// Format version (1).
    pub version: u32,
    /// The architecture.
    pub arch: Architecture,
    /// Every tensor, in the model's fixed order.
    pub tensors: Vec<SavedTensor>,
}

/// blake3 over every tensor's name, shape and bytes, in order.
fn hash_tensors(tensors: &[SavedTensor]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("hivemesh 2026-11 weights hash v1");
    for t in tensors {
        h.update(&(t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        for d in &t.shape {
            h.update(&d.to_le_bytes());
        }
        h.update(&t.data);
    }
    *h.finalize().as_bytes()
}

impl WeightsFile {
    /// The hash of the weights it holds: equal to [`Model::weights_hash`] of the model saved.
    pub fn weights_hash(&self) -> [u8; 32] {
        hash_tensors(&self.tensors)
    }

    /// The encoded artifact.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("weights always encode")
    }

    /// Decodes an artifact (checks nothing about the tensors; [`Model::from_weights`] does).
    pub fn from_bytes(bytes: &[u8]) -> Result<WeightsFile, TrainError> {
        let w: WeightsFile = postcard::from_bytes(bytes)
            .map_err(|e| TrainError::Artifact(format!("not a weights file: {e}")))?;
        if w.version != 1 {
            return Err(TrainError::Artifact(format!(
                "format version {} (this build reads 1)",
                w.version
            )));
        }
        Ok(w)
    }

    /// The artifact's content id: blake3 of its bytes.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }
}

/// A parameter of `shape` holding `values` (row-major).
pub(crate) fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_data(TensorData::new(values, shape), device)
}

impl Plan {
    fn of(arch: &Architecture) -> Result<Plan, TrainError> {
        let shapes = arch.shapes().map_err(|e| TrainError::Arch(e.to_string()))?;
        let n = arch.nodes.len();
        let mut last_use: Vec<usize> = (0..n).collect();
        let (mut convs, mut denses, mut norms) = (0, 0, 0);
        let mut steps = Vec::with_capacity(n);
        for (i, node) in arch.nodes.iter().enumerate() {
            for &j in &node.inputs {
                last_use[j as usize] = i;
            }
            let next = |c: &mut usize| {
                *c += 1;
                *c - 1
            };
            steps.push(match node.op {
                Op::Input => Step::Input,
                Op::Conv { .. } => Step::Conv(next(&mut convs)),
                Op::Dense { .. } => Step::Dense(next(&mut denses)),
                Op::BatchNorm => Step::Norm(next(&mut norms)),
                Op::Act(a) => Step::Act(a),
                Op::MaxPool { kernel } => Step::MaxPool(kernel as usize),
                Op::AvgPool { kernel } => Step::AvgPool(kernel as usize),
                Op::GlobalAvgPool => Step::GlobalAvgPool,
                Op::Flatten => Step::Flatten,
                Op::Add => Step::Add,
            });
        }
        let (fused_relu, passthrough) = relu_fusion(arch);
        Ok(Plan {
            fused_relu,
            passthrough,
            steps,
            inputs: arch
                .nodes
                .iter()
                .map(|n| n.inputs.iter().map(|&j| j as usize).collect())
                .collect(),
            shapes,
            last_use,
        })
    }
}

impl<B: Backend> Model<B> {
    /// A model with fresh weights drawn from `seed` (see the module docs).
    pub fn new(
        arch: &Architecture,
        seed: [u8; 32],
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        Self::build(arch, &mut SeededInit(ChaCha8Rng::from_seed(seed)), device)
    }

    /// A model with the weights of an artifact (its architecture and every tensor's shape are
    /// checked).
    pub fn from_weights(file: &WeightsFile, device: &B::Device) -> Result<Self, TrainError> {
        let model = Self::build(&file.arch, &mut FileInit(file), device)?;
        let expected = model.tensor_count();
        if file.tensors.len() != expected {
            return Err(TrainError::Artifact(format!(
                "{} tensors, the architecture has {expected}",
                file.tensors.len()
            )));
        }
        Ok(model)
    }

    fn build(
        arch: &Architecture,
        init: &mut dyn InitSource,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let plan = Plan::of(arch)?;
        let (mut convs, mut denses, mut norms) = (Vec::new(), Vec::new(), Vec::new());
        for (i, node) in arch.nodes.iter().enumerate() {
            let input = node.inputs.first().map(|&j| plan.shapes[j as usize]);
            match (node.op, input) {
                (Op::Conv { out, kernel }, Some(Shape::Image { c, .. })) => {
                    let (o, c, k) = (out as usize, c as usize, kernel as usize);
                    let fan_in = c * k * k;
                    let w = init.tensor(&format!("n{i}.conv.weight"), &[o, c, k, k], fan_in)?;
                    let b = init.tensor(&format!("n{i}.conv.bias"), &[o], fan_in)?;
                    convs.push(Conv {
                        weight: param::<B, 4>(w, [o, c, k, k], device),
                        bias: param::<B, 1>(b, [o], device),
                    });
                }
                (Op::Dense { out }, Some(s)) => {
                    let (n_in, o) = (s.numel() as usize, out as usize);
                    let w = init.tensor(&format!("n{i}.dense.weight"), &[n_in, o], n_in)?;
                    let b = init.tensor(&format!("n{i}.dense.bias"), &[o], n_in)?;
                    denses.push(Linear {
                        weight: param::<B, 2>(w, [n_in, o], device),
                        bias: Some(param::<B, 1>(b, [o], device)),
                    });
                }
                (Op::BatchNorm, Some(s)) => {
                    let c = match s {
                        Shape::Image { c, .. } => c as usize,
                        Shape::Flat(n) => n as usize,
                    };
                    let g = init.fixed(&format!("n{i}.bn.gamma"), c, 1.0)?;
                    let b = init.fixed(&format!("n{i}.bn.beta"), c, 0.0)?;
                    let m = init.fixed(&format!("n{i}.bn.mean"), c, 0.0)?;
                    let v = init.fixed(&format!("n{i}.bn.var"), c, 1.0)?;
                    norms.push(BatchNorm {
                        gamma: param::<B, 1>(g, [c], device),
                        beta: param::<B, 1>(b, [c], device),
                        running_mean: RunningState::new(Tensor::from_data(
                            TensorData::new(m, [c]),
                            device,
                        )),
                        running_var: RunningState::new(Tensor::from_data(
                            TensorData::new(v, [c]),
                            device,
                        )),
                        momentum: 0.1,
                        epsilon: 1e-5,
                    });
                }
                _ => {}
            }
        }
        Ok(Model {
            convs,
            denses,
            norms,
            plan,
        })
    }
}

fn tensor_bytes<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<u32>, Vec<u8>) {
    let shape = t.dims().iter().map(|&d| d as u32).collect();
    let data = t.into_data();
    let values: Vec<f32> = data.to_vec().unwrap_or_default();
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    (shape, bytes)
}

impl<B: ModelBackend> Model<B> {
    /// Logits for a batch of flat inputs `[batch, input numel]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let p = &self.plan;
        let mut values: Vec<Option<Value<B>>> = Vec::with_capacity(p.steps.len());
        for (i, step) in p.steps.iter().enumerate() {
            let arg = |values: &Vec<Option<Value<B>>>, k: usize| -> Value<B> {
                match values[p.inputs[i][k]].as_ref() {
                    Some(Value::Img(t)) => Value::Img(t.clone()),
                    Some(Value::Flat(t)) => Value::Flat(t.clone()),
                    None => unreachable!("plan drops values only after their last use"),
                }
            };
            let v = match *step {
                Step::Input => match p.shapes[0] {
                    Shape::Image { c, h, w } => {
                        let b = x.dims()[0];
                        Value::Img(x.clone().reshape([b, c as usize, h as usize, w as usize]))
                    }
                    Shape::Flat(_) => Value::Flat(x.clone()),
                },
                Step::Conv(k) => {
                    Value::Img(self.convs[k].forward(img(arg(&values, 0)), p.fused_relu[i]))
                }
                Step::Dense(k) => Value::Flat(dense(
                    &self.denses[k],
                    flat(arg(&values, 0)),
                    p.fused_relu[i],
                )),
                Step::Act(_) if p.passthrough[i] => arg(&values, 0),
                Step::Norm(k) => {
                    let (bn, relu) = (&self.norms[k], p.fused_relu[i]);
                    match arg(&values, 0) {
                        Value::Img(t) => Value::Img(norm(bn, t, relu)),
                        Value::Flat(t) => {
                            let [b, n] = t.dims();
                            Value::Flat(norm(bn, t.reshape([b, n, 1, 1]), relu).reshape([b, n]))
                        }
                    }
                }
                Step::Act(a) => match arg(&values, 0) {
                    Value::Img(t) => Value::Img(activate(a, t)),
                    Value::Flat(t) => Value::Flat(activate(a, t)),
                },
                Step::MaxPool(k) => Value::Img(B::max_pool(img(arg(&values, 0)), k)),
                Step::AvgPool(k) => Value::Img(avg_pool2d(
                    img(arg(&values, 0)),
                    [k, k],
                    [k, k],
                    [0, 0],
                    true,
                    false,
                )),
                Step::GlobalAvgPool => {
                    let t = img(arg(&values, 0));
                    let [b, c, h, w] = t.dims();
                    Value::Flat(t.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]))
                }
                Step::Flatten => Value::Flat(flat(arg(&values, 0))),
                Step::Add => {
                    let mut acc = arg(&values, 0);
                    for k in 1..p.inputs[i].len() {
                        acc = match (acc, arg(&values, k)) {
                            (Value::Img(a), Value::Img(b)) => Value::Img(a + b),
                            (Value::Flat(a), Value::Flat(b)) => Value::Flat(a + b),
                            (a, _) => a,
                        };
                    }
                    acc
                }
            };
            // Free inputs whose last reader is this node.
            for &j in &p.inputs[i] {
                if p.last_use[j] == i {
                    values[j] = None;
                }
            }
            values.push(Some(v));
        }
        match values.pop().flatten() {
            Some(v) => flat(v),
            None => unreachable!("an architecture has at least the input node"),
        }
    }
}

/// One dense layer of a [`Model::dense_chain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseLayer {
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
    /// Whether a ReLU follows it.
    pub relu: bool,
}

impl<B: Backend> Model<B> {
    /// When the network is a chain of dense layers (after the input, optionally flattened),
    /// each followed by a ReLU or by nothing, the last by nothing: its layers, whose
    /// parameters are visited as weight `[inputs, outputs]` then bias, layer by layer.
    /// `None` for any other network.
    pub fn dense_chain(&self) -> Option<Vec<DenseLayer>> {
        let p = &self.plan;
        if !self.convs.is_empty() || !self.norms.is_empty() {
            return None;
        }
        let mut layers: Vec<DenseLayer> = Vec::new();
        for (i, step) in p.steps.iter().enumerate().skip(1) {
            if p.inputs[i] != [i - 1] {
                return None;
            }
            match *step {
                Step::Flatten if layers.is_empty() => {}
                Step::Dense(k) if k == layers.len() => layers.push(DenseLayer {
                    inputs: p.shapes[i - 1].numel() as usize,
                    outputs: p.shapes[i].numel() as usize,
                    relu: false,
                }),
                Step::Act(Activation::Relu) => match layers.last_mut() {
                    Some(l) if !l.relu && matches!(p.steps[i - 1], Step::Dense(_)) => l.relu = true,
                    _ => return None,
                },
                _ => return None,
            }
        }
        match layers.last() {
            Some(l) if !l.relu => Some(layers),
            _ => None,
        }
    }

    /// Every tensor (weights, biases, batch-norm scale, shift and running statistics) in node
    /// order, as saved in a [`WeightsFile`].
    pub fn saved_tensors(&self) -> Vec<SavedTensor> {
        let mut out = Vec::new();
        let mut push = |name: String, (shape, data): (Vec<u32>, Vec<u8>)| {
            out.push(SavedTensor { name, shape, data });
        };
        for (i, step) in self.plan.steps.iter().enumerate() {
            match *step {
                Step::Conv(k) => {
                    let c = &self.convs[k];
                    push(format!("n{i}.conv.weight"), tensor_bytes(c.weight.val()));
                    push(format!("n{i}.conv.bias"), tensor_bytes(c.bias.val()));
                }
                Step::Dense(k) => {
                    let d = &self.denses[k];
                    push(format!("n{i}.dense.weight"), tensor_bytes(d.weight.val()));
                    if let Some(b) = &d.bias {
                        push(format!("n{i}.dense.bias"), tensor_bytes(b.val()));
                    }
                }
                Step::Norm(k) => {
                    let n = &self.norms[k];
                    push(format!("n{i}.bn.gamma"), tensor_bytes(n.gamma.val()));
                    push(format!("n{i}.bn.beta"), tensor_bytes(n.beta.val()));
                    push(
                        format!("n{i}.bn.mean"),
                        tensor_bytes(n.running_mean.value()),
                    );
                    push(format!("n{i}.bn.var"), tensor_bytes(n.running_var.value()));
                }
                _ => {}
            }
        }
        out
    }

    /// Trainable parameters of the burn module: burn's `num_params` less the batch-norm
    /// running statistics, which burn counts but which are not trained (the IR's convention).
    pub fn trainable_params(&self) -> u64 {
        let running: usize = self
            .norms
            .iter()
            .map(|n| n.running_mean.value().dims()[0] + n.running_var.value().dims()[0])
            .sum();
        (self.num_params() - running) as u64
    }

    /// How many tensors [`Model::saved_tensors`] lists (without copying them).
    fn tensor_count(&self) -> usize {
        2 * self.convs.len() + 2 * self.denses.len() + 4 * self.norms.len()
    }

    /// The weights artifact of this model.
    pub fn weights_file(&self, arch: &Architecture) -> WeightsFile {
        WeightsFile {
            version: 1,
            arch: arch.clone(),
            tensors: self.saved_tensors(),
        }
    }

    /// blake3 over every tensor's name, shape and bytes, in order: equal hashes mean
    /// bit-identical weights.
    pub fn weights_hash(&self) -> [u8; 32] {
        hash_tensors(&self.saved_tensors())
    }

    /// Whether every weight is finite.
    pub fn is_finite(&self) -> bool {
        self.saved_tensors().iter().all(|t| {
            t.data
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
        })
    }
}

/// A dense layer through [`ModelBackend::dense`] (burn's own forward if it has no bias).
fn dense<B: ModelBackend>(l: &Linear<B>, x: Tensor<B, 2>, relu: bool) -> Tensor<B, 2> {
    match &l.bias {
        Some(b) => B::dense(x, l.weight.val(), b.val(), relu),
        None => relu_if(l.forward(x), relu),
    }
}

/// Batch norm `[b, c, h, w]`, then ReLU when `relu`. Under autodiff it normalises with the
/// batch's statistics through [`ModelBackend::batch_norm_train`] and moves the running
/// averages as burn's `BatchNorm` does; otherwise with the running averages (burn's own).
fn norm<B: ModelBackend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
    let device = x.device();
    if !B::ad_enabled(&device) {
        return relu_if(bn.forward(x), relu);
    }
    let (y, mean, var) = B::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, relu);
    let m = bn.momentum;
    let moved = |running: Tensor<B, 1>, batch: Tensor<B, 1>| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - m)
            .add(batch.mul_scalar(m))
            .detach()
    };
    bn.running_mean
        .update(moved(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(moved(bn.running_var.value_sync(), var));
    y
}

fn img<B: Backend>(v: Value<B>) -> Tensor<B, 4> {
    match v {
        Value::Img(t) => t,
        Value::Flat(t) => {
            let [b, n] = t.dims();
            t.reshape([b, n, 1, 1])
        }
    }
}

fn flat<B: Backend>(v: Value<B>) -> Tensor<B, 2> {
    match v {
        Value::Flat(t) => t,
        Value::Img(t) => {
            let [b, c, h, w] = t.dims();
            t.reshape([b, c * h * w])
        }
    }
}

fn activate<B: Backend, const D: usize>(a: Activation, t: Tensor<B, D>) -> Tensor<B, D> {
    match a {
        Activation::Relu => relu(t),
        Activation::Tanh => tanh(t),
        Activation::Sigmoid => sigmoid(t),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Cpu;
    use hivemesh_evolve::arch::{MacroSpace, MlpSpace};

    pub(crate) fn macro_arch() -> Architecture {
        let space = MacroSpace {
            input: Shape::Image { c: 1, h: 8, w: 8 },
            classes: 10,
            phases: 2,
            nodes: 3,
            channels: vec![4, 8],
            kernels: vec![3, 5],
        };
        let mut genome = vec![1u32; space.genome_len()];
        genome[2] = 0;
        space.decode(&genome).expect("valid genome")
    }

    /// A convolution or dense layer takes in its ReLU only when the ReLU is its sole reader.
    #[test]
    fn relus_fuse_into_their_only_producer() {
        let mnist = Shape::Image { c: 1, h: 28, w: 28 };
        let cnn = crate::zoo::small_cnn(mnist, 10);
        let (fused, pass) = relu_fusion(&cnn);
        // Input, Conv, ReLU, Pool, Conv, ReLU, Pool, Flatten, Dense, ReLU, Dense.
        let at = |v: &[bool]| (0..v.len()).filter(|&i| v[i]).collect::<Vec<_>>();
        assert_eq!(at(&fused), vec![1, 4, 8]);
        assert_eq!(at(&pass), vec![2, 5, 9]);
        // A conv read by a ReLU and by a residual add keeps both readers unfused.
        let relu = Op::Act(Activation::Relu);
        let mut branch = crate::zoo::chain(mnist, 10, &[Op::Conv { out: 1, kernel: 3 }, relu]);
        branch.nodes.push(hivemesh_evolve::arch::Node {
            op: Op::Add,
            inputs: vec![1, 2],
        });
        let (fused, pass) = relu_fusion(&branch);
        assert!(fused.iter().chain(&pass).all(|f| !f));
        // The macro space puts batch norm between convolution and ReLU: each ReLU fuses into
        // its batch norm, never into the convolution (whose reader is the batch norm).
        let arch = macro_arch();
        let (fused, pass) = relu_fusion(&arch);
        let relus = arch.nodes.iter().filter(|n| n.op == relu).count();
        assert!(relus > 0);
        assert_eq!(at(&pass).len(), relus);
        for i in at(&fused) {
            assert_eq!(arch.nodes[i].op, Op::BatchNorm, "node {i}");
        }
        assert_eq!(at(&fused).len(), relus);
    }

    /// Batch norm through the backend's training op (fused ReLU or not) gives burn's
    /// `BatchNorm` output, gradients and running averages, on image and flat batches.
    #[test]
    fn batch_norm_matches_burns_own() {
        use burn::nn::BatchNormConfig;
        use burn::tensor::Distribution;
        type A = crate::CpuAutodiff;
        let device = Default::default();
        for (shape, relu) in [
            ([5, 3, 4, 6], false),
            ([5, 3, 4, 6], true),
            ([37, 19, 1, 1], true),
        ] {
            let uniform = |dims: Vec<usize>| {
                Tensor::<A, 1>::random(
                    [dims.iter().product::<usize>()],
                    Distribution::Default,
                    &device,
                )
            };
            let (gamma, beta) = (uniform(vec![shape[1]]) + 0.5, uniform(vec![shape[1]]) - 0.5);
            let x = (uniform(shape.to_vec()) * 4.0 - 1.0).reshape(shape);
            let mix = uniform(shape.to_vec()).reshape(shape);
            let run = |ours: bool| {
                // A fresh layer each run: clones would share the running averages.
                let mut bn = BatchNormConfig::new(shape[1]).init::<A>(&device);
                bn.gamma = Param::from_tensor(gamma.clone());
                bn.beta = Param::from_tensor(beta.clone());
                let x = x.clone().require_grad();
                let y = if ours {
                    norm(&bn, x.clone(), relu)
                } else {
                    let y = bn.forward(x.clone());
                    if relu {
                        burn::tensor::activation::relu(y)
                    } else {
                        y
                    }
                };
                let g = (y.clone() * mix.clone()).sum().backward();
                let v = |t: Tensor<crate::Cpu, 1>| t.into_data().to_vec::<f32>().expect("f32");
                let flat = |t: Tensor<crate::Cpu, 4>| v(t.reshape([-1]));
                [
                    flat(y.inner()),
                    flat(x.grad(&g).expect("x")),
                    v(bn.gamma.val().grad(&g).expect("gamma")),
                    v(bn.beta.val().grad(&g).expect("beta")),
                    v(bn.running_mean.value_sync().inner()),
                    v(bn.running_var.value_sync().inner()),
                ]
            };
            let (ours, burns) = (run(true), run(false));
            let what = [
                "output",
                "input gradient",
                "gamma gradient",
                "beta gradient",
                "mean",
                "var",
            ];
            for ((a, b), what) in ours.iter().zip(&burns).zip(what) {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{what} {shape:?} at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn burn_parameter_count_equals_the_irs() {
        let mlp = MlpSpace {
            input: Shape::Image { c: 1, h: 8, w: 8 },
            classes: 10,
            max_layers: 3,
            widths: vec![16, 32],
        }
        .decode(&[1, 2, 0])
        .expect("valid");
        for arch in [mlp, macro_arch()] {
            let m = Model::<Cpu>::new(&arch, [7; 32], &Default::default()).expect("builds");
            assert_eq!(
                m.trainable_params(),
                arch.params().expect("valid"),
                "{arch:?}"
            );
            let out = m.forward(Tensor::zeros([3, 64], &Default::default()));
            assert_eq!(out.dims(), [3, 10]);
        }
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let arch = macro_arch();
        let d = Default::default();
        let a = Model::<Cpu>::new(&arch, [1; 32], &d).expect("builds");
        let b = Model::<Cpu>::new(&arch, [1; 32], &d).expect("builds");
        let c = Model::<Cpu>::new(&arch, [2; 32], &d).expect("builds");
        assert_eq!(a.weights_hash(), b.weights_hash());
        assert_ne!(a.weights_hash(), c.weights_hash());
    }

    #[test]
    fn weights_round_trip_through_the_artifact() {
        let arch = macro_arch();
        let d = Default::default();
        let a = Model::<Cpu>::new(&arch, [3; 32], &d).expect("builds");
        let file = a.weights_file(&arch);
        let bytes = file.to_bytes();
        let back = WeightsFile::from_bytes(&bytes).expect("decodes");
        let b = Model::<Cpu>::from_weights(&back, &d).expect("loads");
        assert_eq!(a.weights_hash(), b.weights_hash());
        let x = Tensor::<Cpu, 2>::ones([2, 64], &d);
        assert_eq!(
            a.forward(x.clone())
                .into_data()
                .to_vec::<f32>()
                .expect("f32"),
            b.forward(x).into_data().to_vec::<f32>().expect("f32")
        );
        // A truncated artifact and a tensor of the wrong shape are errors, not panics.
        assert!(WeightsFile::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        let mut wrong = back.clone();
        wrong.tensors[0].shape[0] += 1;
        let msg = Model::<Cpu>::from_weights(&wrong, &d)
            .expect_err("bad shape")
            .to_string();
        assert!(msg.contains("n"), "{msg}");
    }
}

#[cfg(test)]
mod conv_tests {
    use super::*;
    use crate::Cpu;

    /// The model's convolution (the CPU kernels) equals burn's reference convolution.
    #[test]
    fn conv_matches_burns_conv2d() {
        let d = Default::default();
        // Images larger and smaller than the kernel, and images whose patch matrix is cut
        // into bands of rows (47×41: 6 rows and a ragged 5; 48×48: 5 rows, 240 positions);
        // five samples share one patch buffer.
        let cases = [
            (1usize, 6, 7),
            (3, 6, 7),
            (5, 6, 7),
            (5, 2, 3),
            (3, 1, 1),
            (5, 4, 4),
            (5, 47, 41),
            (5, 48, 48),
            (1, 47, 41),
        ];
        for (k, h, wd) in cases {
            let mut init = SeededInit(ChaCha8Rng::seed_from_u64(k as u64));
            let w = init.tensor("w", &[4, 3, k, k], 27).expect("random");
            let b = init.tensor("b", &[4], 27).expect("random");
            let x = init.tensor("x", &[5, 3, h, wd], 1).expect("random");
            let x = Tensor::<Cpu, 4>::from_data(TensorData::new(x, [5, 3, h, wd]), &d);
            let conv = Conv::<Cpu> {
                weight: param::<Cpu, 4>(w.clone(), [4, 3, k, k], &d),
                bias: param::<Cpu, 1>(b.clone(), [4], &d),
            };
            let ours = conv
                .forward(x.clone(), false)
                .into_data()
                .to_vec::<f32>()
                .expect("f32");
            let reference = burn::tensor::module::conv2d(
                x,
                Tensor::from_data(TensorData::new(w, [4, 3, k, k]), &d),
                Some(Tensor::from_data(TensorData::new(b, [4]), &d)),
                burn::tensor::ops::ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1),
            )
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
            assert_eq!(ours.len(), reference.len());
            for (a, r) in ours.iter().zip(&reference) {
                assert!((a - r).abs() < 1e-5, "k={k} {h}x{wd}: {a} vs {r}");
            }
        }
    }
}
