#!/usr/bin/env python3
"""Writes the fixture `opacus_accountant.jsonl` that `protocol/src/privacy.rs` is tested
against: for a grid of sampling rates q, noise multipliers sigma, step counts and deltas, the
RDP of the sampled Gaussian mechanism at Opacus's default orders (RDPAccountant.DEFAULT_ALPHAS)
and the epsilon and order Opacus's conversion picks, computed by Opacus itself.

Opacus's accountant math (`opacus/accountants/analysis/rdp.py`) needs only numpy and scipy,
but importing the `opacus` package pulls in PyTorch. With PyTorch installed this script uses
`opacus.accountants.RDPAccountant`; without it, it loads that one file by path from an
installed or unpacked Opacus (`--opacus DIR`, the directory holding the `opacus` package).

    python3 -m venv /tmp/op && /tmp/op/bin/pip install numpy scipy
    /tmp/op/bin/pip download opacus==1.6.0 --no-deps -d /tmp/opx
    (cd /tmp/opx && unzip -q opacus-1.6.0-py3-none-any.whl)
    /tmp/op/bin/python protocol/benches/opacus_accountant.py --opacus /tmp/opx \
        > protocol/benches/opacus_accountant.jsonl
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import warnings

GRID_Q = [1e-4, 1e-3, 4.27e-3, 0.01, 0.05, 0.1, 0.3, 0.7, 1.0]
GRID_SIGMA = [0.3, 0.5, 0.8, 1.0, 1.1, 2.0, 4.0, 10.0]
GRID_STEPS = [1, 100, 10000]
GRID_DELTA = [1e-5, 1e-3]


def load(opacus_dir):
    """(compute_rdp, get_privacy_spent, alphas, where they came from)."""
    try:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp

        import opacus

        return rdp.compute_rdp, rdp.get_privacy_spent, RDPAccountant.DEFAULT_ALPHAS, (
            f"opacus {opacus.__version__} (RDPAccountant.DEFAULT_ALPHAS, analysis.rdp)"
        )
    except ImportError:
        if opacus_dir is None:
            sys.exit("opacus does not import (no PyTorch?): give --opacus DIR (see the docstring)")
    path = os.path.join(opacus_dir, "opacus", "accountants", "analysis", "rdp.py")
    spec = importlib.util.spec_from_file_location("opacus_rdp", path)
    rdp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rdp)
    # RDPAccountant.DEFAULT_ALPHAS, read from its source so nothing is retyped.
    src = open(os.path.join(opacus_dir, "opacus", "accountants", "rdp.py")).read()
    line = next(l for l in src.splitlines() if "DEFAULT_ALPHAS =" in l)
    alphas = eval(line.split("=", 1)[1])  # noqa: S307 (Opacus's own literal)
    version = next(
        (d.removeprefix("opacus-").removesuffix(".dist-info") for d in os.listdir(opacus_dir)
         if d.startswith("opacus-") and d.endswith(".dist-info")),
        "unknown",
    )
    return rdp.compute_rdp, rdp.get_privacy_spent, alphas, (
        f"opacus {version} analysis/rdp.py loaded by path, RDPAccountant.DEFAULT_ALPHAS from accountants/rdp.py"
    )


def finite(x):
    """A float for JSON, or None where it is infinite or NaN (no privacy)."""
    return float(x) if math.isfinite(x) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opacus", help="directory holding an unpacked `opacus` package")
    args = ap.parse_args()
    compute_rdp, get_privacy_spent, alphas, source = load(args.opacus)
    print(f"# {source}; made by protocol/benches/opacus_accountant.py")
    for q in GRID_Q:
        for sigma in GRID_SIGMA:
            for steps in GRID_STEPS:
                rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=alphas)
                for k, delta in enumerate(GRID_DELTA):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        eps, order = get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)
                    print(json.dumps({
                        "q": q, "sigma": sigma, "steps": steps, "delta": delta,
                        "epsilon": finite(eps),
                        "order": finite(order),
                        # The curve does not depend on delta: written once per (q, sigma, steps).
                        "rdp": [finite(r) for r in rdp] if k == 0 else None,
                    }))


if __name__ == "__main__":
    main()
