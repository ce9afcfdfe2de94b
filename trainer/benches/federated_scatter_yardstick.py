"""The yardstick for issue 26's scattering figure, outside hivemesh: kymatio's scattering
features (J = 2, L = 8, group norm of 27 groups) of MNIST, 10 IID clients of 6,000 training
images each running DP-SGD on a linear model (Poisson sampling, per-record clipping to C,
Gaussian noise σC, SGD with momentum), FedAvg each round, σ from Opacus's accountant.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch kymatio==0.3.0 opacus scipy
    /tmp/tv/bin/python trainer/benches/federated_scatter_yardstick.py ../shared/data/mnist --eps 2

(2026-12-06: 96.98 % at ε = 2 with the defaults; hivemesh's own: BENCHMARKS.md.)
"""
import argparse
import gzip
import time

import numpy as np
import scipy.special

if not hasattr(scipy.special, "sph_harm"):
    scipy.special.sph_harm = None  # kymatio 0.3.0's 3-D transform imports it; unused here
import torch
from kymatio.torch import Scattering2D
from opacus.accountants.utils import get_noise_multiplier


def idx(path):
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def features(x, groups):
    s = Scattering2D(J=2, shape=(28, 28))
    out = [s(torch.from_numpy(x[i:i + 1000])) for i in range(0, len(x), 1000)]
    f = torch.nn.functional.group_norm(torch.cat(out), groups)
    return f.reshape(len(f), -1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mnist")
    p.add_argument("--eps", type=float, default=2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local", type=int, default=50)
    p.add_argument("--lr", type=float, default=4.0)
    p.add_argument("--clip", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--clients", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(2)
    d = a.mnist + "/"
    xtr = features(idx(d + "train-images-idx3-ubyte.gz").astype(np.float32) / 255, 27)
    xte = features(idx(d + "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255, 27)
    ytr = torch.from_numpy(idx(d + "train-labels-idx1-ubyte.gz").astype(np.int64))
    yte = torch.from_numpy(idx(d + "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    n = len(xtr) // a.clients
    q = a.batch / n
    steps = a.rounds * a.local
    sigma = get_noise_multiplier(target_epsilon=a.eps, target_delta=1e-5, sample_rate=q,
                                 steps=steps, accountant="rdp") if a.eps > 0 else 0.0
    print(f"records per client {n}, q {q:.4f}, steps {steps}, sigma {sigma:.3f}", flush=True)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(xtr), generator=g)
    parts = [perm[i * n:(i + 1) * n] for i in range(a.clients)]
    dim = xtr.shape[1]
    w, b = torch.zeros(dim, 10), torch.zeros(10)
    t0 = time.time()
    for r in range(a.rounds):
        dw, db = torch.zeros_like(w), torch.zeros_like(b)
        for c in range(a.clients):
            lw, lb = w.clone(), b.clone()
            mw, mb = torch.zeros_like(lw), torch.zeros_like(lb)
            x_c, y_c = xtr[parts[c]], ytr[parts[c]]
            for _ in range(a.local):
                pick = (torch.rand(n, generator=g) < q).nonzero().squeeze(1)
                x, y = x_c[pick], y_c[pick]
                e = torch.softmax(x @ lw + lb, 1)
                e[torch.arange(len(y)), y] -= 1
                # A linear layer's per-record gradient is x ⊗ e (+ e for the bias).
                norms = ((x * x).sum(1) + 1).sqrt() * e.norm(dim=1)
                e = e * torch.clamp(a.clip / (norms + 1e-12), max=1.0)[:, None]
                gw = (x.T @ e + sigma * a.clip * torch.randn(dim, 10, generator=g)) / a.batch
                gb = (e.sum(0) + sigma * a.clip * torch.randn(10, generator=g)) / a.batch
                mw, mb = a.momentum * mw + gw, a.momentum * mb + gb
                lw, lb = lw - a.lr * mw, lb - a.lr * mb
            dw, db = dw + lw - w, db + lb - b
        w, b = w + dw / a.clients, b + db / a.clients
        acc = ((xte @ w + b).argmax(1) == yte).float().mean().item()
        print(f"round {r + 1}: test accuracy {acc * 100:.2f} % ({time.time() - t0:.0f} s)", flush=True)


main()
