#!/usr/bin/env python3
"""PyTorch CPU yardstick for `cargo run --release -p hivemesh-trainer --example mnist -- bench`.

Same models (784-128-10 MLP; Conv3x3(32)-ReLU-MaxPool2-Conv3x3(64)-ReLU-MaxPool2-Dense128-ReLU-
Dense10), same batch (64), same optimiser (Adam, lr 1e-3), same data (MNIST scaled to [0, 1]),
same number of threads as the machine's cores. Prints training steps/s after 20 warm-up steps.

    pip install torch
    python3 trainer/benches/pytorch_mnist.py --mnist ../shared/data/mnist --steps 100 \
        --macro target/macro_model.py   # written by `mnist bench --write-macro`
"""
import argparse, gzip, importlib.util, os, struct, time

import torch
import torch.nn as nn


def idx(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    rank = raw[3]
    dims = struct.unpack(">" + "I" * rank, raw[4:4 + 4 * rank])
    return torch.frombuffer(bytearray(raw[4 + 4 * rank:]), dtype=torch.uint8).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--models", default="mlp,cnn,macro",
                    help="comma-separated: mlp, cnn, macro (macro needs --macro)")
    ap.add_argument("--macro", help="the macro genome's generated module, written by "
                    "`mnist bench --write-macro FILE`")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    x = idx(os.path.join(a.mnist, "train-images-idx3-ubyte.gz")).float().div(255).unsqueeze(1)
    y = idx(os.path.join(a.mnist, "train-labels-idx1-ubyte.gz")).long()
    models = {
        "mlp 784-128-10": nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)),
        "small cnn": nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)),
    }
    if a.macro:
        spec = importlib.util.spec_from_file_location("macro_model", a.macro)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        models["macro 32ch 5x5"] = mod.Model()
    keys = {"mlp": "mlp 784-128-10", "cnn": "small cnn", "macro": "macro 32ch 5x5"}
    wanted = [keys[m] for m in a.models.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, model in models.items():
        if name not in wanted:
            continue
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        perm = torch.randperm(x.shape[0])
        t0 = None
        for step in range(20 + a.steps):
            if step == 20:
                t0 = time.perf_counter()
            idx_b = perm[(step * 64) % (x.shape[0] - 64):][:64]
            opt.zero_grad()
            loss = loss_fn(model(x[idx_b]), y[idx_b])
            loss.backward()
            opt.step()
        secs = time.perf_counter() - t0
        print(f"{name}: {a.steps / secs:.1f} steps/s at batch 64 ({a.steps} steps in {secs:.2f} s, final loss {loss.item():.3f})")


if __name__ == "__main__":
    main()
