//! Exports: a trained architecture in forms other tools read without hivemesh.
//!
//! Three files describe one model, each enough for an independent implementation:
//! * `arch.json` ([`ir_json`]): the architecture IR as versioned JSON ([`IR_FORMAT`] version
//!   [`IR_VERSION`]): the input shape, the classes and every node with its op, inputs, output
//!   shape, all the parameters its forward pass needs (kernel, stride, padding, epsilon) and the
//!   names and shapes of its tensors;
//! * `weights.safetensors` ([`to_safetensors`]): every tensor as little-endian `f32`, named
//!   `nodes.<node index>.<name>` in PyTorch's layouts and names (`Linear.weight` `[out, in]`,
//!   `Conv2d.weight` `[out, in, kh, kw]`, `BatchNorm.weight`/`bias`/`running_mean`/
//!   `running_var`);
//! * `model.py` ([`pytorch_module`]): a self-contained PyTorch `nn.Module` whose state dict has
//!   exactly those names, with a `load(path)` helper.
//!
//! # Forward semantics (what the JSON's ops mean)
//! Node 0 is the input: one sample's values in row-major order (`[C, H, W]` for images), as
//! the trainer feeds them (bytes scaled by `1 / max` into `[0, 1]`, `f32` features as they
//! are). `conv2d`: cross-correlation, stride 1, zero padding `kernel / 2` ("same"), plus bias.
//! `batch_norm`: inference form, `(x - running_mean) / sqrt(running_var + eps) * weight + bias`
//! per channel (per feature on flat inputs). `max_pool2d`/`avg_pool2d`: window `kernel`, stride
//! `kernel`, no padding, floor mode (trailing rows and columns dropped). `global_avg_pool`: the
//! mean over `H×W`. `flatten`: row-major `C·H·W`. `linear`: `x · weightᵀ + bias`. `add`: the
//! element-wise sum of the inputs. The last node's output is the logits; the prediction is the
//! first index of the maximum.

use hivemesh_evolve::arch::{Activation, Architecture, Op, Shape};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

use crate::error::TrainError;
use crate::model::WeightsFile;

/// The `format` field of the JSON IR.
pub const IR_FORMAT: &str = "hivemesh-architecture";
/// The version of the JSON IR this build writes (bumped when a field changes meaning).
pub const IR_VERSION: u32 = 1;
/// Batch-norm epsilon of every model (burn's and PyTorch's default).
pub const BATCH_NORM_EPS: f64 = 1e-5;
/// The files of one exported model, in the order [`ExportFiles::files`] lists them.
pub const FILE_NAMES: [&str; 3] = ["arch.json", "weights.safetensors", "model.py"];

/// One tensor of the export: its name in the files, the weights artifact's name for it, its
/// shape in PyTorch's layout, and whether the artifact stores it transposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The node it belongs to.
    pub node: usize,
    /// Its role in the node (`weight`, `bias`, `running_mean`, `running_var`).
    pub role: &'static str,
    /// Name in `weights.safetensors` and the PyTorch state dict: `nodes.<node>.<role>`.
    pub name: String,
    /// Name in the [`WeightsFile`] (e.g. `n3.dense.weight`).
    pub source: String,
    /// Shape in PyTorch's layout.
    pub shape: Vec<usize>,
    /// Whether the artifact holds it as `[in, out]` (burn's `Linear`), transposed on export.
    pub transposed: bool,
}

/// The output shape of every node, or an architecture error.
fn shapes(arch: &Architecture) -> Result<Vec<Shape>, TrainError> {
    arch.shapes().map_err(|e| TrainError::Arch(e.to_string()))
}

/// Channels of a batch norm's input (features when flat).
fn channels(s: Shape) -> usize {
    match s {
        Shape::Image { c, .. } => c as usize,
        Shape::Flat(n) => n as usize,
    }
}

/// Every tensor the export holds, in node order.
pub fn tensor_specs(arch: &Architecture) -> Result<Vec<TensorSpec>, TrainError> {
    let shapes = shapes(arch)?;
    let mut out = Vec::new();
    for (i, node) in arch.nodes.iter().enumerate() {
        let input = node.inputs.first().map(|&j| shapes[j as usize]);
        let mut push = |role, source: String, shape: Vec<usize>, transposed| {
            out.push(TensorSpec {
                node: i,
                role,
                name: format!("nodes.{i}.{role}"),
                source,
                shape,
                transposed,
            });
        };
        match (node.op, input) {
            (Op::Conv { out, kernel }, Some(Shape::Image { c, .. })) => {
                let (o, c, k) = (out as usize, c as usize, kernel as usize);
                push(
                    "weight",
                    format!("n{i}.conv.weight"),
                    vec![o, c, k, k],
                    false,
                );
                push("bias", format!("n{i}.conv.bias"), vec![o], false);
            }
            (Op::Dense { out }, Some(s)) => {
                let (n_in, o) = (s.numel() as usize, out as usize);
                push("weight", format!("n{i}.dense.weight"), vec![o, n_in], true);
                push("bias", format!("n{i}.dense.bias"), vec![o], false);
            }
            (Op::BatchNorm, Some(s)) => {
                let c = channels(s);
                push("weight", format!("n{i}.bn.gamma"), vec![c], false);
                push("bias", format!("n{i}.bn.beta"), vec![c], false);
                push("running_mean", format!("n{i}.bn.mean"), vec![c], false);
                push("running_var", format!("n{i}.bn.var"), vec![c], false);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A shape as a JSON list (`[c, h, w]` or `[n]`).
fn shape_list(s: Shape) -> Vec<u32> {
    match s {
        Shape::Image { c, h, w } => vec![c, h, w],
        Shape::Flat(n) => vec![n],
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's op name and its op parameters (without inputs, shape and tensors).
fn op_fields(op: Op, input: Option<Shape>) -> Value {
    match (op, input) {
        (Op::Input, _) => json!({ "op": "input" }),
        (Op::Conv { out, kernel }, Some(Shape::Image { c, .. })) => json!({
            "op": "conv2d", "in_channels": c, "out_channels": out, "kernel_size": kernel,
            "stride": 1, "padding": kernel / 2, "padding_mode": "zeros", "bias": true,
        }),
        (Op::BatchNorm, Some(s)) => json!({
            "op": "batch_norm", "num_features": channels(s), "eps": BATCH_NORM_EPS,
            "mode": "inference: (x - running_mean) / sqrt(running_var + eps) * weight + bias",
        }),
        (Op::Act(a), _) => json!({
            "op": match a {
                Activation::Relu => "relu",
                Activation::Tanh => "tanh",
                Activation::Sigmoid => "sigmoid",
            }
        }),
        (Op::MaxPool { kernel }, _) => json!({
            "op": "max_pool2d", "kernel_size": kernel, "stride": kernel, "padding": 0,
            "ceil_mode": false,
        }),
        (Op::AvgPool { kernel }, _) => json!({
            "op": "avg_pool2d", "kernel_size": kernel, "stride": kernel, "padding": 0,
            "ceil_mode": false,
        }),
        (Op::GlobalAvgPool, _) => json!({ "op": "global_avg_pool" }),
        (Op::Flatten, _) => json!({ "op": "flatten" }),
        (Op::Dense { out }, Some(s)) => json!({
            "op": "linear", "in_features": s.numel(), "out_features": out, "bias": true,
        }),
        (Op::Add, _) => json!({ "op": "add" }),
        // `Architecture::shapes` accepted the IR, so every parameterised op has its input.
        (op, _) => json!({ "op": format!("{op:?}") }),
    }
}

/// The architecture IR as versioned JSON (see the module docs for what each op means):
/// `format`, `version`, the architecture's content `id` (hex), `input` (`shape` and `layout`),
/// `classes`, `params`, `flops`, `output` (the logits node) and `nodes`, each with `index`,
/// `op`, `inputs`, its output `shape`, its op parameters and `tensors` (role → name and shape
/// in `weights.safetensors`). Fails only for an architecture that breaks the IR's rules.
pub fn ir_json(arch: &Architecture) -> Result<Value, TrainError> {
    let shapes = shapes(arch)?;
    let specs = tensor_specs(arch)?;
    let nodes: Vec<Value> = arch
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let input = node.inputs.first().map(|&j| shapes[j as usize]);
            let mut v = op_fields(node.op, input);
            v["index"] = json!(i);
            v["inputs"] = json!(node.inputs);
            v["shape"] = json!(shape_list(shapes[i]));
            let tensors: serde_json::Map<String, Value> = specs
                .iter()
                .filter(|t| t.node == i)
                .map(|t| (t.role.into(), json!({ "name": t.name, "shape": t.shape })))
                .collect();
            if !tensors.is_empty() {
                v["tensors"] = Value::Object(tensors);
            }
            v
        })
        .collect();
    let err = |e: hivemesh_evolve::arch::ArchError| TrainError::Arch(e.to_string());
    Ok(json!({
        "format": IR_FORMAT,
        "version": IR_VERSION,
        "id": hex(&arch.id()),
        "input": {
            "shape": shape_list(arch.input),
            "layout": match arch.input { Shape::Image { .. } => "CHW", Shape::Flat(_) => "N" },
        },
        "classes": arch.classes,
        "params": arch.params().map_err(err)?,
        "flops": arch.flops().map_err(err)?,
        "dtype": "float32",
        "output": arch.nodes.len() - 1,
        "nodes": nodes,
    }))
}

/// The values of tensor `spec` from `weights`, checked against its shape and put in PyTorch's
/// layout (little-endian `f32` bytes).
fn export_tensor(weights: &WeightsFile, spec: &TensorSpec) -> Result<Vec<u8>, TrainError> {
    let t = weights
        .tensors
        .iter()
        .find(|t| t.name == spec.source)
        .ok_or_else(|| TrainError::Artifact(format!("tensor {} is missing", spec.source)))?;
    let mut stored: Vec<usize> = spec.shape.clone();
    if spec.transposed {
        stored.reverse();
    }
    let numel: usize = stored.iter().product();
    let same = t.shape.len() == stored.len()
        && t.shape.iter().zip(&stored).all(|(&a, &b)| a as usize == b);
    if !same || t.data.len() != 4 * numel {
        return Err(TrainError::Artifact(format!(
            "tensor {} has shape {:?} ({} bytes), the architecture needs {stored:?}",
            spec.source,
            t.shape,
            t.data.len()
        )));
    }
    if !spec.transposed {
        return Ok(t.data.clone());
    }
    // `[in, out]` → `[out, in]`, four bytes a value.
    let (n_in, n_out) = (stored[0], stored[1]);
    let mut out = Vec::with_capacity(t.data.len());
    for o in 0..n_out {
        for i in 0..n_in {
            let at = 4 * (i * n_out + o);
            out.extend_from_slice(&t.data[at..at + 4]);
        }
    }
    Ok(out)
}

/// The weights as a safetensors file: every tensor of [`tensor_specs`] as `F32`, named
/// `nodes.<index>.<role>`, in PyTorch's layout; metadata `format = pt`, the IR version and the
/// architecture id. `weights` must be an artifact of `arch` (checked, with every tensor's shape).
pub fn to_safetensors(arch: &Architecture, weights: &WeightsFile) -> Result<Vec<u8>, TrainError> {
    if weights.arch != *arch {
        return Err(TrainError::Artifact(format!(
            "the weights belong to architecture {}, not {}",
            hex(&weights.arch.id()),
            hex(&arch.id())
        )));
    }
    let specs = tensor_specs(arch)?;
    if weights.tensors.len() != specs.len() {
        return Err(TrainError::Artifact(format!(
            "{} tensors, the architecture has {}",
            weights.tensors.len(),
            specs.len()
        )));
    }
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| export_tensor(weights, s))
        .collect::<Result<_, _>>()?;
    let views: Vec<(String, TensorView<'_>)> = specs
        .iter()
        .zip(&data)
        .map(|(s, d)| {
            TensorView::new(Dtype::F32, s.shape.clone(), d)
                .map(|v| (s.name.clone(), v))
                .map_err(|e| TrainError::Artifact(format!("tensor {}: {e}", s.name)))
        })
        .collect::<Result<_, _>>()?;
    let metadata = [
        ("format", "pt".to_string()),
        ("hivemesh_ir_version", IR_VERSION.to_string()),
        ("architecture_id", hex(&arch.id())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| TrainError::Artifact(format!("safetensors: {e}")))
}

/// The PyTorch module constructor of a parameterised node, if it has one.
fn torch_layer(op: Op, input: Shape) -> Option<String> {
    Some(match (op, input) {
        (Op::Conv { out, kernel }, Shape::Image { c, .. }) => format!(
            "nn.Conv2d({c}, {out}, kernel_size={kernel}, stride=1, padding={})",
            kernel / 2
        ),
        (Op::Dense { out }, s) => format!("nn.Linear({}, {out})", s.numel()),
        (Op::BatchNorm, Shape::Image { c, .. }) => {
            format!("nn.BatchNorm2d({c}, eps={BATCH_NORM_EPS:e})")
        }
        (Op::BatchNorm, Shape::Flat(n)) => format!("nn.BatchNorm1d({n}, eps={BATCH_NORM_EPS:e})"),
        _ => return None,
    })
}

/// The Python expression of node `i`'s value.
fn torch_expr(i: usize, op: Op, inputs: &[u32], input: Shape) -> String {
    let x = |k: usize| format!("x{}", inputs[k]);
    match op {
        Op::Input => {
            let dims: Vec<String> = shape_list(input).iter().map(ToString::to_string).collect();
            format!("x.reshape(x.shape[0], {})", dims.join(", "))
        }
        Op::Conv { .. } | Op::Dense { .. } | Op::BatchNorm => {
            format!("self.nodes[\"{i}\"]({})", x(0))
        }
        Op::Act(Activation::Relu) => format!("F.relu({})", x(0)),
        Op::Act(Activation::Tanh) => format!("torch.tanh({})", x(0)),
        Op::Act(Activation::Sigmoid) => format!("torch.sigmoid({})", x(0)),
        Op::MaxPool { kernel } => format!("F.max_pool2d({}, {kernel}, stride={kernel})", x(0)),
        Op::AvgPool { kernel } => format!("F.avg_pool2d({}, {kernel}, stride={kernel})", x(0)),
        Op::GlobalAvgPool => format!("{}.mean(dim=(2, 3))", x(0)),
        Op::Flatten => format!("torch.flatten({}, 1)", x(0)),
        Op::Add => (0..inputs.len()).map(x).collect::<Vec<_>>().join(" + "),
    }
}

/// The fixed part of `model.py` after the class: loading and the command line.
const PY_TAIL: &str = r#"

def load(path, device="cpu"):
    """A Model with the weights of a weights.safetensors file, in eval mode."""
    from safetensors.torch import load_file

    model = Model()
    missing, unexpected = model.load_state_dict(load_file(path, device=device), strict=False)
    # BatchNorm's batch counter is bookkeeping for training; the file does not hold it.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    return model.to(device).eval()


if __name__ == "__main__":
    # python model.py [weights.safetensors]: builds the model (loading the weights if given)
    # and prints its parameter count, which must equal PARAMS.
    model = load(sys.argv[1]) if len(sys.argv) > 1 else Model()
    count = sum(p.numel() for p in model.parameters())
    print(f"parameters: {count}")
    sys.exit(0 if count == PARAMS else 1)
"#;

/// A self-contained Python file defining `class Model(torch.nn.Module)` with exactly the
/// architecture's layers and forward pass (its state dict names are those of
/// [`to_safetensors`]), a `load(path)` helper (`safetensors.torch.load_file`) and a
/// `__main__` that prints the parameter count. The same architecture always gives the same
/// text.
pub fn pytorch_module(arch: &Architecture) -> Result<String, TrainError> {
    let shapes = shapes(arch)?;
    let params = arch.params().map_err(|e| TrainError::Arch(e.to_string()))?;
    let mut layers = String::new();
    let mut body = String::new();
    for (i, node) in arch.nodes.iter().enumerate() {
        let input = match node.inputs.first() {
            Some(&j) => shapes[j as usize],
            None => arch.input,
        };
        if let Some(layer) = torch_layer(node.op, input) {
            layers.push_str(&format!("            \"{i}\": {layer},\n"));
        }
        let expr = torch_expr(i, node.op, &node.inputs, input);
        body.push_str(&format!("        x{i} = {expr}\n"));
    }
    let input: Vec<String> = shape_list(arch.input)
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(format!(
        r#""""A hivemesh architecture as a PyTorch module (generated by {version}; do not edit).

Architecture id: {id}
hivemesh IR version {IR_VERSION}; {nodes} nodes; {params} trainable parameters.
Inputs: float32 tensors [batch, {input_dims}] (or flat [batch, {numel}]) holding the values the
trainer fed (bytes scaled into [0, 1], float features as they are). Output: the logits over
{classes} classes.

    model = load("weights.safetensors")
    predictions = model(x).argmax(dim=1)
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = ({input_tuple})
CLASSES = {classes}
PARAMS = {params}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.nodes = nn.ModuleDict({{
{layers}        }})

    def forward(self, x):
{body}        return x{last}
{PY_TAIL}"#,
        version = crate::CODE_VERSION,
        id = hex(&arch.id()),
        nodes = arch.nodes.len(),
        input_dims = input.join(", "),
        numel = arch.input.numel(),
        classes = arch.classes,
        input_tuple = if input.len() == 1 {
            format!("{},", input[0])
        } else {
            input.join(", ")
        },
        last = arch.nodes.len() - 1,
    ))
}

/// A `.npy` file (format 1.0, C order) of little-endian values; `descr` is NumPy's type string.
fn npy(descr: &str, shape: &[usize], data: Vec<u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let dims = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header + newline: a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// `values` as a float32 `.npy` file of `shape` (e.g. a test split's inputs, as the trainer
/// feeds them, for an independent forward pass).
pub fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    npy(
        "<f4",
        shape,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// `values` as an int64 `.npy` file of `shape` (e.g. a test split's labels).
pub fn npy_i64(shape: &[usize], values: &[i64]) -> Vec<u8> {
    npy(
        "<i8",
        shape,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// The three files of one exported model ([`FILE_NAMES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFiles {
    /// `arch.json`: [`ir_json`], pretty-printed.
    pub arch_json: Vec<u8>,
    /// `weights.safetensors`: [`to_safetensors`].
    pub weights: Vec<u8>,
    /// `model.py`: [`pytorch_module`].
    pub model_py: Vec<u8>,
}

impl ExportFiles {
    /// The files of a weights artifact (its own architecture).
    pub fn of(weights: &WeightsFile) -> Result<ExportFiles, TrainError> {
        let arch = &weights.arch;
        let json = serde_json::to_vec_pretty(&ir_json(arch)?)
            .map_err(|e| TrainError::Artifact(format!("arch.json: {e}")))?;
        Ok(ExportFiles {
            arch_json: json,
            weights: to_safetensors(arch, weights)?,
            model_py: pytorch_module(arch)?.into_bytes(),
        })
    }

    /// Each file's name and bytes, in [`FILE_NAMES`] order.
    pub fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            (FILE_NAMES[0], &self.arch_json),
            (FILE_NAMES[1], &self.weights),
            (FILE_NAMES[2], &self.model_py),
        ]
    }

    /// One file by name, or `None` for a name not in [`FILE_NAMES`].
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use crate::model::Model;
    use hivemesh_evolve::arch::{MlpSpace, Node};
    use safetensors::SafeTensors;

    fn mlp() -> Architecture {
        MlpSpace {
            input: Shape::Image { c: 1, h: 8, w: 8 },
            classes: 10,
            max_layers: 2,
            widths: vec![16, 32],
        }
        .decode(&[2, 1])
        .expect("valid")
    }

    fn cnn() -> Architecture {
        crate::model::tests::macro_arch()
    }

    /// Every op of the IR, also those no search space emits today (avg pooling, tanh,
    /// sigmoid, batch norm on a flat input, a flat input).
    fn every_op() -> Architecture {
        let n = |op, inputs: &[u32]| Node {
            op,
            inputs: inputs.to_vec(),
        };
        Architecture {
            input: Shape::Image { c: 2, h: 6, w: 6 },
            classes: 3,
            nodes: vec![
                n(Op::Input, &[]),
                n(Op::Conv { out: 4, kernel: 3 }, &[0]),
                n(Op::BatchNorm, &[1]),
                n(Op::Act(Activation::Tanh), &[2]),
                n(Op::Conv { out: 4, kernel: 1 }, &[0]),
                n(Op::Add, &[3, 4]),
                n(Op::AvgPool { kernel: 2 }, &[5]),
                n(Op::MaxPool { kernel: 2 }, &[6]),
                n(Op::Flatten, &[7]),
                n(Op::Dense { out: 5 }, &[8]),
                n(Op::BatchNorm, &[9]),
                n(Op::Act(Activation::Sigmoid), &[10]),
                n(Op::Dense { out: 3 }, &[11]),
            ],
        }
    }

    fn weights(arch: &Architecture) -> WeightsFile {
        Model::<Cpu>::new(arch, [9; 32], &Default::default())
            .expect("builds")
            .weights_file(arch)
    }

    #[test]
    fn tensor_names_and_shapes_match_the_parameter_count() {
        for arch in [mlp(), cnn(), every_op()] {
            let specs = tensor_specs(&arch).expect("valid");
            let trainable: usize = specs
                .iter()
                .filter(|s| !s.role.starts_with("running"))
                .map(|s| s.shape.iter().product::<usize>())
                .sum();
            assert_eq!(trainable as u64, arch.params().expect("valid"));
            // One tensor per artifact tensor, in the same order, with the same values count.
            let w = weights(&arch);
            assert_eq!(specs.len(), w.tensors.len());
            for (s, t) in specs.iter().zip(&w.tensors) {
                assert_eq!(s.source, t.name);
                assert_eq!(s.name, format!("nodes.{}.{}", s.node, s.role));
                assert_eq!(4 * s.shape.iter().product::<usize>(), t.data.len());
            }
        }
        let dense: Vec<_> = tensor_specs(&mlp()).expect("valid");
        // 64 -> 32: PyTorch's Linear.weight is [out, in].
        assert_eq!(dense[0].name, "nodes.2.weight");
        assert_eq!(dense[0].shape, vec![32, 64]);
        let conv = tensor_specs(&cnn()).expect("valid");
        assert_eq!(conv[0].shape, vec![8, 1, 1, 1]);
    }

    #[test]
    fn safetensors_parse_back_with_the_crate_in_pytorch_layout() {
        for arch in [mlp(), cnn(), every_op()] {
            let w = weights(&arch);
            let bytes = to_safetensors(&arch, &w).expect("exports");
            let st = SafeTensors::deserialize(&bytes).expect("parses");
            let specs = tensor_specs(&arch).expect("valid");
            assert_eq!(st.len(), specs.len());
            for s in &specs {
                let t = st.tensor(&s.name).expect("present");
                assert_eq!(t.dtype(), Dtype::F32);
                assert_eq!(t.shape(), s.shape.as_slice());
                let src = w.tensors.iter().find(|t| t.name == s.source).expect("src");
                if !s.transposed {
                    assert_eq!(t.data(), src.data.as_slice(), "{}", s.name);
                    continue;
                }
                // Element [o, i] of the export is element [i, o] of the artifact.
                let (o_n, i_n) = (s.shape[0], s.shape[1]);
                fn val(d: &[u8], k: usize) -> &[u8] {
                    &d[4 * k..4 * k + 4]
                }
                for o in 0..o_n {
                    for i in 0..i_n {
                        assert_eq!(val(t.data(), o * i_n + i), val(&src.data, i * o_n + o));
                    }
                }
            }
            let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
            let meta = meta.metadata().clone().expect("metadata");
            assert_eq!(meta["format"], "pt");
            assert_eq!(meta["architecture_id"], hex(&arch.id()));
        }
    }

    #[test]
    fn weights_of_another_architecture_or_shape_are_refused() {
        let w = weights(&mlp());
        let err = to_safetensors(&cnn(), &w).expect_err("other arch");
        assert!(err.to_string().contains("belong to architecture"), "{err}");
        let mut bad = w.clone();
        bad.tensors[0].shape[0] += 1;
        let err = to_safetensors(&mlp(), &bad).expect_err("bad shape");
        assert!(err.to_string().contains("n2.dense.weight"), "{err}");
        let mut short = w.clone();
        short.tensors.pop();
        assert!(to_safetensors(&mlp(), &short).is_err());
        let mut broken = mlp();
        broken.classes = 11;
        assert!(ir_json(&broken).is_err());
        assert!(pytorch_module(&broken).is_err());
    }

    #[test]
    fn the_json_ir_names_every_node_and_tensor() {
        let arch = every_op();
        let v = ir_json(&arch).expect("valid");
        assert_eq!(v["format"], IR_FORMAT);
        assert_eq!(v["version"], IR_VERSION);
        assert_eq!(v["input"]["shape"], json!([2, 6, 6]));
        assert_eq!(v["params"], arch.params().expect("valid"));
        let nodes = v["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), arch.nodes.len());
        let ops: Vec<&str> = nodes
            .iter()
            .map(|n| n["op"].as_str().expect("op"))
            .collect();
        assert_eq!(
            ops,
            [
                "input",
                "conv2d",
                "batch_norm",
                "tanh",
                "conv2d",
                "add",
                "avg_pool2d",
                "max_pool2d",
                "flatten",
                "linear",
                "batch_norm",
                "sigmoid",
                "linear"
            ]
        );
        assert_eq!(nodes[1]["padding"], 1);
        assert_eq!(nodes[5]["inputs"], json!([3, 4]));
        assert_eq!(nodes[9]["in_features"], 4);
        assert_eq!(nodes[9]["tensors"]["weight"]["shape"], json!([5, 4]));
        assert_eq!(
            nodes[10]["tensors"]["running_var"]["name"],
            "nodes.10.running_var"
        );
        assert_eq!(nodes[12]["shape"], json!([3]));
    }

    #[test]
    fn npy_files_have_an_aligned_header_and_the_values() {
        let f = npy_f32(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.5]);
        assert_eq!(&f[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([f[8], f[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&f[10..10 + len]).expect("ascii");
        assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 1, 1, 2)"));
        assert_eq!(&f[10 + len..10 + len + 4], &1.0f32.to_le_bytes());
        assert_eq!(f.len(), 10 + len + 16);
        let y = npy_i64(&[3], &[7, 8, 9]);
        let len = u16::from_le_bytes([y[8], y[9]]) as usize;
        assert!(
            std::str::from_utf8(&y[10..10 + len])
                .expect("ascii")
                .contains("(3,)")
        );
        assert_eq!(&y[y.len() - 8..], &9i64.to_le_bytes());
    }

    #[test]
    fn the_python_module_is_stable_and_names_the_tensors() {
        for arch in [mlp(), cnn(), every_op()] {
            let a = pytorch_module(&arch).expect("valid");
            assert_eq!(a, pytorch_module(&arch.clone()).expect("valid"));
            assert!(a.contains("class Model(nn.Module):"));
            assert!(a.contains(&format!("PARAMS = {}", arch.params().expect("valid"))));
            for s in tensor_specs(&arch).expect("valid") {
                assert!(a.contains(&format!("\"{}\": nn.", s.node)), "{}", s.name);
            }
        }
        let m = pytorch_module(&every_op()).expect("valid");
        for line in [
            "x0 = x.reshape(x.shape[0], 2, 6, 6)",
            "\"1\": nn.Conv2d(2, 4, kernel_size=3, stride=1, padding=1),",
            "\"2\": nn.BatchNorm2d(4, eps=1e-5),",
            "x5 = x3 + x4",
            "x6 = F.avg_pool2d(x5, 2, stride=2)",
            "\"9\": nn.Linear(4, 5),",
            "\"10\": nn.BatchNorm1d(5, eps=1e-5),",
            "x11 = torch.sigmoid(x10)",
            "return x12",
        ] {
            assert!(m.contains(line), "{line} not in\n{m}");
        }
        let files = ExportFiles::of(&weights(&mlp())).expect("exports");
        assert_eq!(files.get("model.py"), Some(files.model_py.as_slice()));
        assert_eq!(files.get("best.bin"), None);
    }
}
