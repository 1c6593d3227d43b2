"""Small data (50-300 rows): the defaults against one Gaussian, and the modes they predict.

    python benchmarks/smalldata.py [--sizes 50 150 300] [--seeds 0 1 2 3 4] [--problems ...]
                                   [--n-estimators M]

Problems from ``benchmarks/density.py`` (known conditional densities). For each problem,
size and seed: the excess test NLL (over the true density, 5000 test rows) of
``MDNRegressor()`` (defaults: capacity chosen from the data) and of
``MDNRegressor(n_components=1)``; and the number of modes of the default model's predicted
density against the truth's, on 41 values of x spread over [-0.9, 0.9]. A mode counts when
its density is at least ``MIN_RELATIVE_DENSITY`` (5%) of the highest mode's at that x (the
threshold of ``GaussianMixture.modes``); the truth's modes are counted the same way on a
fine grid of y. The summary gives, per problem and size, the mean over seeds and the
standard error of the paired difference default - one component. ``--n-estimators M``
puts ``MDNRegressor(n_estimators=M)`` (an ensemble of M default models) in the default's
column.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import density  # noqa: E402

from torchmdn import MDNRegressor  # noqa: E402
from torchmdn.distributions.modes import MIN_RELATIVE_DENSITY  # noqa: E402

XS = np.linspace(-0.9, 0.9, 41)


def model_modes(reg: MDNRegressor) -> np.ndarray:
    """Modes above the threshold, per x in XS."""
    with torch.no_grad():
        found = reg.predict_dist(XS[:, None]).modes()
    return found.valid.sum(-1).numpy()


def true_modes(name: str) -> np.ndarray:
    ys = np.linspace(-4, 6, 4001)
    out = []
    for x in XS:
        lp = density.true_log_prob(name, np.full((len(ys), 1), x), ys[:, None])
        p = np.exp(lp)
        peak = (p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:])
        out.append(int(np.sum(peak & (p[1:-1] >= MIN_RELATIVE_DENSITY * p.max()))))
    return np.array(out)


def run(task: tuple) -> tuple:
    name, n, seed, members = task
    torch.set_num_threads(1)
    x, y = density.draw(name, n, seed)
    x_te, y_te = density.draw(name, 5000, 10_000 + seed)
    truth = -float(np.mean(density.true_log_prob(name, x_te, y_te)))
    auto = MDNRegressor(n_estimators=members, random_state=seed).fit(x, y)
    one = MDNRegressor(n_components=1, random_state=seed).fit(x, y)
    ea = -auto.log_likelihood(x_te, y_te) - truth
    e1 = -one.log_likelihood(x_te, y_te) - truth
    found = model_modes(auto)
    extra = int(np.sum(found > true_modes(name)))
    return name, n, seed, ea, e1, auto.n_components_, float(found.mean()), extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 150, 300])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--problems", nargs="+",
                   default=["heteroscedastic", "student_t", "bimodal", "skewed"])  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    p.add_argument("--n-estimators", type=int, default=1, help="ensemble members (default 1)")
    args = p.parse_args()
    tasks = [(name, n, s, args.n_estimators)
             for name in args.problems for n in args.sizes for s in args.seeds]  # fmt: skip
    out = {}
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for r in pool.imap_unordered(run, tasks):
            out[r[:3]] = r[3:]
            print(f"{r[0]} n={r[1]} seed={r[2]}: default {r[3]:.3f} one {r[4]:.3f} "
                  f"chosen {r[5]} modes {r[6]:.2f} extra {r[7]}", file=sys.stderr, flush=True)  # fmt: skip
    print(f"| problem | rows | default excess NLL | 1 component | default - 1 component (± SE) "
          f"| chosen | mean modes (default) | mean modes (truth) | x with extra modes (of "
          f"{len(XS)} x {len(args.seeds)}) |")  # fmt: skip
    print("|---" * 9 + "|")
    for name in args.problems:
        truth = true_modes(name).mean()
        for n in args.sizes:
            rows = [out[(name, n, s)] for s in args.seeds]
            ea, e1 = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
            diff = ea - e1
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            chosen = " ".join(str(r[2]) for r in rows)
            modes = np.mean([r[3] for r in rows])
            extra = sum(r[4] for r in rows)
            print(f"| {name} | {n} | {ea.mean():.3f} | {e1.mean():.3f} | {diff.mean():+.3f} ± "
                  f"{se:.3f} | {chosen} | {modes:.2f} | {truth:.2f} | {extra} |")  # fmt: skip


if __name__ == "__main__":
    main()
