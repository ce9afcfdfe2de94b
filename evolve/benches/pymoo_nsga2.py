"""pymoo's NSGA-II on the same problems and budgets, as the yardstick for the zdt example.

Prints one line per (problem, generations, seed): `problem gens seed hv=<value>`, the
hypervolume of the final non-dominated front with reference point 1.1 on every axis.

    pip install pymoo
    python3 evolve/benches/pymoo_nsga2.py --gens 25 200 --seeds 1 2 3 4 5
"""
import argparse

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.optimize import minimize
from pymoo.problems import get_problem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="+", default=["zdt1", "zdt2", "zdt3", "dtlz2"])
    ap.add_argument("--gens", nargs="+", type=int, default=[25, 200])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--pop", type=int, default=100)
    ap.add_argument("--crowding", default="cd", help="pymoo crowding_func: cd (default), pcd, mnn, 2nn")
    a = ap.parse_args()
    for name in a.problems:
        problem = get_problem(name, n_var=12, n_obj=3) if name == "dtlz2" else get_problem(name, n_var=30)
        ref = np.full(problem.n_obj, 1.1)
        for gens in a.gens:
            for seed in a.seeds:
                # n_gen counts the initial population: gens generations of offspring after it,
                # the same budget as `--gens` in the Rust example.
                res = minimize(problem, NSGA2(pop_size=a.pop, survival=RankAndCrowding(crowding_func=a.crowding)), ("n_gen", gens + 1), seed=seed, verbose=False)
                print(f"{name} {gens} {seed} hv={HV(ref_point=ref)(res.F):.6f}", flush=True)


if __name__ == "__main__":
    main()
