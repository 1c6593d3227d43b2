"""UCI regression benchmark: test NLL (nats, original units) and RMSE over the standard splits.

    python benchmarks/uci.py DATA_DIR [NAMES ...] [--splits K] [--out FILE.md]
                             [--methods mdn mdn1 ngboost] [--set PARAM=VALUE ...] [--holdout]

DATA_DIR holds one folder per data set in the layout of the UCI files of Hernández-Lobato &
Adams (2015) / Gal & Ghahramani (2016): ``data.txt`` (whitespace-separated), 0-based column
indices in ``index_features.txt`` and ``index_target.txt``, and 0-based row indices in
``index_train_<i>.txt`` / ``index_test_<i>.txt``. Every model is fitted on the training rows
of a split only and scored on its test rows; the table gives mean ± standard error over the
splits, beside the published NGBoost (Duan et al. 2020) and Deep Ensembles
(Lakshminarayanan et al. 2017) numbers (± their standard deviation over splits).

Methods: ``mdn`` = ``MDNRegressor()`` with its defaults (capacity chosen from the data);
``mdn1`` = the same with ``n_components=1`` (a heteroscedastic Gaussian); ``mdn5`` = 5 diagonal
components (the default before the automatic choice); ``ens5`` = ``n_estimators=5``; ``ngboost`` = ``ngboost.NGBRegressor()`` with
its defaults (Normal, 500 trees), run only if ngboost is installed, on the first
``--ngboost-splits`` splits (default 5: it takes ~20 s per kin8nm split on one core).

``--holdout`` is for choosing defaults without touching the test rows: each split's training
part is split again (90/10, seeded by the split number) and the 10% part is scored instead.
``--set`` overrides MDNRegressor parameters for every MDN method (e.g. ``--set noise_y=0.05``).
"""

from __future__ import annotations

import argparse
import ast
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from torchmdn import MDNRegressor

PUBLISHED = {  # NGBoost (Duan et al. 2020, Table 1), Deep Ensembles (Lakshminarayanan et al.)
    "bostonHousing": ((2.43, 0.15), (2.41, 0.25)),
    "concrete": ((3.04, 0.17), (3.06, 0.18)),
    "energy": ((0.60, 0.45), (1.38, 0.22)),
    "kin8nm": ((-0.49, 0.02), (-1.20, 0.02)),
    "wine-quality-red": ((0.91, 0.06), (0.94, 0.12)),
    "yacht": ((0.20, 0.26), (1.18, 0.21)),
}
PUBLISHED_RMSE = {  # same papers
    "bostonHousing": ((2.94, 0.53), (3.28, 1.00)),
    "concrete": ((5.06, 0.61), (6.03, 0.58)),
    "energy": ((0.46, 0.06), (2.09, 0.29)),
    "kin8nm": ((0.16, 0.00), (0.09, 0.00)),
    "wine-quality-red": ((0.63, 0.04), (0.64, 0.04)),
    "yacht": ((0.50, 0.20), (1.58, 0.48)),
}


METHODS = {  # MDNRegressor arguments of each MDN method
    "mdn": {},
    "mdn1": {"n_components": 1},
    "mdn5": {"n_components": 5, "covariance_type": "diag"},
    "ens5": {"n_estimators": 5},
}
LABELS = {
    "mdn": "MDN (defaults)",
    "mdn1": "MDN, 1 component",
    "mdn5": "MDN, 5 components",
    "ens5": "MDN, 5-member ensemble",
    "ngboost": "NGBoost (ours)",
}


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Inputs, target and the number of splits of one data set folder."""
    data = np.loadtxt(folder / "data.txt")
    features = np.loadtxt(folder / "index_features.txt", dtype=int, ndmin=1)
    target = int(np.loadtxt(folder / "index_target.txt", dtype=int))
    n_splits = int(np.loadtxt(folder / "n_splits.txt")) if (folder / "n_splits.txt").exists() else 0
    if not n_splits:
        n_splits = len(list(folder.glob("index_train_*.txt")))
    return data[:, features], data[:, target], n_splits


def split(folder: Path, i: int, holdout: bool) -> tuple[np.ndarray, np.ndarray]:
    train = np.loadtxt(folder / f"index_train_{i}.txt", dtype=int, ndmin=1)
    test = np.loadtxt(folder / f"index_test_{i}.txt", dtype=int, ndmin=1)
    if holdout:  # never look at the test rows: score a 10% part of the training rows instead
        perm = np.random.default_rng(1000 + i).permutation(train)
        n_hold = max(1, round(0.1 * len(train)))
        train, test = perm[n_hold:], perm[:n_hold]
    return train, test


def gaussian_nll(y: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> float:
    return float(
        np.mean(0.5 * ((y - loc) / scale) ** 2 + np.log(scale) + 0.5 * math.log(2 * math.pi))
    )


def run_method(method: str, params: dict, X, y, X_te, y_te, seed: int) -> tuple[float, float]:
    """Test NLL (nats, original units) and RMSE of one method on one split."""
    if method == "ngboost":
        from ngboost import NGBRegressor

        reg = NGBRegressor(random_state=seed, verbose=False).fit(X, y)
        dist = reg.pred_dist(X_te)
        loc, scale = dist.params["loc"], dist.params["scale"]
        rmse = float(np.sqrt(np.mean((loc - y_te) ** 2)))
        return gaussian_nll(y_te, loc, scale), rmse, 1
    extra = METHODS[method]
    reg = MDNRegressor(**{**params, **extra, "random_state": seed}).fit(X, y)
    nll = -reg.log_likelihood(X_te, y_te)
    rmse = float(np.sqrt(np.mean((reg.predict(X_te) - y_te) ** 2)))
    return nll, rmse, reg.n_components_


def one_thread() -> None:
    torch.set_num_threads(1)  # parallelism comes from the worker processes


def _task(task: tuple) -> tuple:
    name, i, method, params, X, y, X_te, y_te = task
    t0 = time.perf_counter()
    out = run_method(method, params, X, y, X_te, y_te, seed=i)
    return name, i, method, out, time.perf_counter() - t0


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(se)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("names", nargs="*", help="data sets (default: every folder in DATA_DIR)")
    p.add_argument("--splits", type=int, default=None, help="first K splits (default: all)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--methods", nargs="+", default=["mdn", "mdn1", "ngboost"], choices=[*METHODS, "ngboost"])
    p.add_argument("--set", nargs="*", default=[], metavar="PARAM=VALUE")
    p.add_argument("--holdout", action="store_true", help="score a part of the training rows")
    p.add_argument("--ngboost-splits", type=int, default=5, help="splits for ngboost (slow)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    args = p.parse_args(argv)

    params: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    methods = list(args.methods)
    if "ngboost" in methods:
        try:
            import ngboost  # noqa: F401
        except ImportError:
            print("ngboost is not installed: skipping it (pip install ngboost)", file=sys.stderr)
            methods.remove("ngboost")
    names = args.names or sorted(d.name for d in args.data_dir.iterdir() if d.is_dir())
    jobs = []
    for name in names:
        X, y, n_splits = load(args.data_dir / name)
        k = n_splits if args.splits is None else min(args.splits, n_splits)
        jobs += [(name, i, X, y) for i in range(k)]

    tasks = []
    for name, i, X, y in jobs:
        tr, te = split(args.data_dir / name, i, args.holdout)
        for method in methods:  # the slowest (ngboost) first, so workers finish together
            if method != "ngboost" or i < args.ngboost_splits:
                tasks.append((name, i, method, params, X[tr], y[tr], X[te], y[te]))
    tasks.sort(key=lambda t: (t[2] != "ngboost", -len(t[4])))
    results: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    started = time.perf_counter()
    bar = tqdm(total=len(tasks), unit="fit", file=sys.stderr)
    with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=one_thread) as pool:
        for name, i, method, out, elapsed in pool.imap_unordered(_task, tasks):
            results.setdefault((name, method), {})[i] = out
            seconds[method] += elapsed
            bar.set_description(f"{name} split {i} {method}")
            bar.write(f"{name} split {i} {method}: NLL {out[0]:.3f} RMSE {out[1]:.3f} "
                      f"components {out[2]} ({elapsed:.1f} s)")  # fmt: skip
            bar.update(1)
    bar.close()
    total = time.perf_counter() - started
    results = {k: [v[i] for i in sorted(v)] for k, v in results.items()}

    labels = LABELS
    head = " | ".join(f"{labels[m]} NLL" for m in methods)
    lines = [
        f"| data set | splits | {head} | NGBoost (paper) | Deep Ens. (paper) | "
        + " | ".join(f"{labels[m]} RMSE" for m in methods)
        + " | RMSE NGBoost / Deep Ens. (paper) |",
        "|---" * (4 + 2 * len(methods)) + "|---|",
    ]
    for name in names:
        cells, rmse_cells = [], []
        for m in methods:
            rows = results[(name, m)]
            nll, nll_se = mean_se([r[0] for r in rows])
            rmse, rmse_se = mean_se([r[1] for r in rows])
            cells.append(f"{nll:.2f} ± {nll_se:.2f}")
            rmse_cells.append(f"{rmse:.2f} ± {rmse_se:.2f}")
        (ng, ngs), (de, des) = PUBLISHED.get(name, ((math.nan, math.nan),) * 2)
        (ngr, _), (der, _) = PUBLISHED_RMSE.get(name, ((math.nan, math.nan),) * 2)
        n = "/".join(str(len(results[(name, m)])) for m in methods)
        lines.append(
            f"| {name} | {n} | " + " | ".join(cells) + f" | {ng:.2f} ± {ngs:.2f} | "
            f"{de:.2f} ± {des:.2f} | " + " | ".join(rmse_cells) + f" | {ngr:.2f} / {der:.2f} | "
            + "; ".join(
                f"{m}: {np.mean(ks):.1f} ({min(ks)}-{max(ks)})"
                for m in methods
                if m != "ngboost" and (ks := [r[2] for r in results[(name, m)]])
            )
            + " |"
        )
    settings = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
    footer = (
        f"\nNLL: mean ± standard error over splits of the per-point test NLL in nats, original "
        f"target units (lower is better); papers: ± standard deviation over splits. "
        f"{'HOLDOUT (10% of each training part; test rows unused). ' if args.holdout else ''}"
        f"MDNRegressor settings: {settings}. torch {torch.__version__}, "
        f"{args.jobs} worker processes x 1 thread, {os.cpu_count()} CPUs. Wall time "
        f"{total / 60:.1f} min (CPU time in fits: "
        + ", ".join(f"{labels[m]} {s / 60:.1f} min" for m, s in seconds.items())
        + ")."
    )
    table = "\n".join(lines) + "\n" + footer + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
