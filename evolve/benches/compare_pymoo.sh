#!/usr/bin/env bash
# NSGA-II: hivemesh-evolve vs pymoo, same problems, population, generations and seeds.
# Prints a Markdown table of median hypervolumes over the seeds (reference point 1.1).
#   bash evolve/benches/compare_pymoo.sh            (needs `pip install pymoo`)
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS="${SEEDS:-1 2 3 4 5}"
GENS="${GENS:-25 200}"
PROBLEMS="${PROBLEMS:-zdt1 zdt2 zdt3 dtlz2}"
TRUNCATION="${TRUNCATION:-auto}"      # ours: auto | iterative | mnn | crowding
PYMOO_CROWDING="${PYMOO_CROWDING:-cd}" # pymoo's crowding_func: cd (its default) | pcd | mnn
cargo build --release -q -p hivemesh-evolve --example zdt
out=$(mktemp -d)
for p in $PROBLEMS; do for g in $GENS; do for s in $SEEDS; do
  ./target/release/examples/zdt --problem "$p" --pop 100 --gens "$g" --seed "$s" --truncation "$TRUNCATION" | tail -1 | sed "s/^/$p $g $s /" >> "$out/ours"
done; done; done
# shellcheck disable=SC2086
python3 evolve/benches/pymoo_nsga2.py --problems $PROBLEMS --gens $GENS --seeds $SEEDS --crowding "$PYMOO_CROWDING" > "$out/pymoo"
python3 - "$out/ours" "$out/pymoo" <<'PY'
import statistics, sys
def load(path):
    d = {}
    for line in open(path):
        p, g, s, hv = line.split()
        d.setdefault((p, int(g)), []).append(float(hv.split("=")[1]))
    return d
ours, theirs = load(sys.argv[1]), load(sys.argv[2])
print("| problem | gens | hivemesh median HV | pymoo median HV | ratio | hivemesh per seed | pymoo per seed |")
print("|---|---:|---:|---:|---:|---|---|")
for key in sorted(ours):
    a, b = ours[key], theirs[key]
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{ma / mb:.4f}" if mb > 0 else "n/a (pymoo 0)"
    print(f"| {key[0]} | {key[1]} | {ma:.4f} | {mb:.4f} | {ratio} | {' '.join(f'{x:.4f}' for x in a)} | {' '.join(f'{x:.4f}' for x in b)} |")
PY
