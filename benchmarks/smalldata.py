"""Small data (50-300 rows): the defaults against one Gaussian, and the modes they predict.

    python benchmarks/smalldata.py [--sizes 50 150 300] [--seeds 0] [--problems ...]

Problems from ``benchmarks/density.py`` (known conditional densities). For each problem,
size and seed: the excess test NLL (over the true density, 5000 test rows) of
``MDNRegressor()`` (defaults: capacity chosen from the data) and of
``MDNRegressor(n_components=1)``; and the number of modes of the default model's predicted
density against the truth's, on 41 values of x spread over [-0.9, 0.9]. A mode counts when
its density is at least 1% of the highest mode's at that x (the negligible-mode threshold
of ``torchmdn.plot``); the truth's modes are counted the same way on a fine grid of y.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import density  # noqa: E402

from torchmdn import MDNRegressor  # noqa: E402

XS = np.linspace(-0.9, 0.9, 41)


def model_modes(reg: MDNRegressor) -> np.ndarray:
    """Modes above 1% of the highest, per x in XS."""
    with torch.no_grad():
        found = reg.predict_dist(XS[:, None]).modes()
    dens = found.density
    ok = found.valid & (dens >= 0.01 * dens[..., :1])
    return ok.sum(-1).numpy()


def true_modes(name: str) -> np.ndarray:
    ys = np.linspace(-4, 6, 4001)
    out = []
    for x in XS:
        lp = density.true_log_prob(name, np.full((len(ys), 1), x), ys[:, None])
        p = np.exp(lp)
        peak = (p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:])
        out.append(int(np.sum(peak & (p[1:-1] >= 0.01 * p.max()))))
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 150, 300])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--problems", nargs="+", default=["heteroscedastic", "student_t", "bimodal"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| problem | rows | seed | default excess NLL | 1 component excess NLL | chosen | "
          "mean modes (default) | mean modes (truth) | x with extra modes |")  # fmt: skip
    print("|---" * 9 + "|")
    for name in args.problems:
        truth_modes = true_modes(name)
        for n in args.sizes:
            for seed in args.seeds:
                x, y = density.draw(name, n, seed)
                x_te, y_te = density.draw(name, 5000, 10_000 + seed)
                truth = -float(np.mean(density.true_log_prob(name, x_te, y_te)))
                auto = MDNRegressor(random_state=seed).fit(x, y)
                one = MDNRegressor(n_components=1, random_state=seed).fit(x, y)
                ea = -auto.log_likelihood(x_te, y_te) - truth
                e1 = -one.log_likelihood(x_te, y_te) - truth
                found = model_modes(auto)
                extra = int(np.sum(found > truth_modes))
                print(
                    f"| {name} | {n} | {seed} | {ea:.3f} | {e1:.3f} | {auto.n_components_} | "
                    f"{found.mean():.2f} | {truth_modes.mean():.2f} | {extra}/{len(XS)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
