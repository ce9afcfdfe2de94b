"""An independent forward pass of a hivemesh export (numpy and safetensors only).

    python check_export.py EXPORT_DIR X_TEST.npy Y_TEST.npy EXPECTED_CORRECT

Reads EXPORT_DIR/arch.json (the JSON IR, format "hivemesh-architecture" version 1) and
EXPORT_DIR/weights.safetensors, runs every sample of X_TEST (float32, [n, *input shape] or
[n, numel], the values the trainer fed) through the network in float32, and counts the
predictions (first index of the largest logit) equal to Y_TEST. Prints the count and exits 0
when it equals EXPECTED_CORRECT, 1 otherwise. Nothing of hivemesh's code is used: the
semantics come from the IR's documentation (trainer/src/export.rs).
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

F32 = np.float32


def conv2d(x, weight, bias, padding):
    """Cross-correlation, stride 1, zero padding: x [b, c, h, w], weight [o, c, k, k]."""
    b, c, h, w = x.shape
    o, _, k, _ = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    # Patches [b, oh, ow, c, k, k] -> [b*oh*ow, c*k*k].
    cols = np.empty((b, oh, ow, c, k, k), dtype=F32)
    for dy in range(k):
        for dx in range(k):
            cols[:, :, :, :, dy, dx] = xp[:, :, dy : dy + oh, dx : dx + ow].transpose(0, 2, 3, 1)
    y = cols.reshape(b * oh * ow, c * k * k) @ weight.reshape(o, c * k * k).T + bias
    return y.reshape(b, oh, ow, o).transpose(0, 3, 1, 2).astype(F32)


def pool(x, k, reduce):
    """k x k windows, stride k, no padding, floor mode."""
    b, c, h, w = x.shape
    oh, ow = h // k, w // k
    windows = x[:, :, : oh * k, : ow * k].reshape(b, c, oh, k, ow, k)
    return reduce(windows, axis=(3, 5)).astype(F32)


def batch_norm(x, t, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = t["running_mean"].reshape(shape), t["running_var"].reshape(shape)
    std = np.sqrt(var + F32(eps))
    return ((x - mean) / std * t["weight"].reshape(shape) + t["bias"].reshape(shape)).astype(F32)


def node_tensors(node, weights):
    """The node's tensors by role, checked against the shapes the IR declares."""
    out = {}
    for role, spec in node.get("tensors", {}).items():
        t = weights[spec["name"]]
        if list(t.shape) != spec["shape"] or t.dtype != F32:
            sys.exit(f"{spec['name']}: {t.dtype} {list(t.shape)}, the IR says float32 {spec['shape']}")
        out[role] = t
    return out


def apply(node, args, t):
    op = node["op"]
    x = args[0] if args else None
    if op == "conv2d":
        if node["stride"] != 1 or node["padding_mode"] != "zeros":
            sys.exit(f"node {node['index']}: unsupported conv options {node}")
        return conv2d(x, t["weight"], t["bias"], node["padding"])
    if op == "linear":
        return (x @ t["weight"].T + t["bias"]).astype(F32)
    if op == "batch_norm":
        return batch_norm(x, t, node["eps"])
    if op == "relu":
        return np.maximum(x, F32(0))
    if op == "tanh":
        return np.tanh(x)
    if op == "sigmoid":
        return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)
    if op == "max_pool2d":
        return pool(x, node["kernel_size"], np.max)
    if op == "avg_pool2d":
        return pool(x, node["kernel_size"], np.mean)
    if op == "global_avg_pool":
        return x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2, dtype=F32)
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "add":
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out
    sys.exit(f"node {node['index']}: unknown op {op!r}")


def forward(ir, weights, x):
    values = []
    for node in ir["nodes"]:
        if node["op"] == "input":
            values.append(x.reshape((x.shape[0], *ir["input"]["shape"])).astype(F32))
            continue
        args = [values[i] for i in node["inputs"]]
        y = apply(node, args, node_tensors(node, weights))
        if list(y.shape[1:]) != node["shape"]:
            sys.exit(f"node {node['index']} ({node['op']}): shape {list(y.shape[1:])}, the IR says {node['shape']}")
        values.append(y)
    return values[ir["output"]]


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    folder, x_path, y_path, expected = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    ir = json.loads((folder / "arch.json").read_text())
    if ir.get("format") != "hivemesh-architecture" or ir.get("version") != 1:
        sys.exit(f"{folder}/arch.json: format {ir.get('format')!r} version {ir.get('version')!r}, this checker reads hivemesh-architecture 1")
    weights = load_file(str(folder / "weights.safetensors"))
    named = {t["name"] for n in ir["nodes"] for t in n.get("tensors", {}).values()}
    if named != set(weights):
        sys.exit(f"tensors in the file but not the IR: {sorted(set(weights) - named)}; in the IR but not the file: {sorted(named - set(weights))}")
    x, y = np.load(x_path), np.load(y_path)
    if x.dtype != F32:
        sys.exit(f"{x_path}: {x.dtype}, expected float32")
    correct = 0
    for start in range(0, len(x), 1000):
        logits = forward(ir, weights, x[start : start + 1000])
        correct += int((logits.argmax(axis=1) == y[start : start + 1000]).sum())
    print(f"{folder}: {correct} of {len(x)} correct (hivemesh: {expected}), {ir['params']} params")
    sys.exit(0 if correct == expected else 1)


if __name__ == "__main__":
    main()
