"""Writes the fixture `kymatio_scattering.jsonl` that `hivemesh_trainer::scatter`'s test compares
against: kymatio's own Scattering2D output for a few real images.

    python3 -m venv /tmp/ky && /tmp/ky/bin/pip install kymatio==0.3.0 torch numpy scipy
    /tmp/ky/bin/python trainer/benches/kymatio_scattering.py ../shared/data/mnist > trainer/benches/kymatio_scattering.jsonl

(kymatio 0.3.0 imports `scipy.special.sph_harm`, gone from recent SciPy; only its 3-D transform
uses it: the script stubs it before importing kymatio.)
"""
import gzip
import json
import sys

import numpy as np
import scipy.special

if not hasattr(scipy.special, "sph_harm"):
    scipy.special.sph_harm = None
import torch
from kymatio.torch import Scattering2D


def digits(rows):
    text = gzip.open("trainer/data/digits.csv.gz").read().decode().splitlines()
    return [np.array([float(v) for v in text[r].split(",")[:64]], np.float32) / 16 for r in rows]


def mnist_test_image(d, i):
    b = gzip.open(d + "/t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(b, np.uint8, offset=16 + 784 * i, count=784).astype(np.float32) / 255


def case(img, side, j, l):
    s = Scattering2D(J=j, shape=(side, side), L=l)
    out = s(torch.from_numpy(img.reshape(1, side, side))).numpy().reshape(-1)
    return {"side": side, "j": j, "l": l, "input": img.tolist(), "output": out.astype(float).tolist()}


def main():
    d0, d1 = digits([0, 1])
    cases = [
        case(d0, 8, 2, 8),
        case(d1, 8, 1, 6),
        case(d1, 8, 2, 5),
        case(mnist_test_image(sys.argv[1], 0), 28, 2, 8),
    ]
    for c in cases:
        print(json.dumps(c))


main()
