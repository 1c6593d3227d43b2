"""Conditional density estimation on generated problems with a known answer: excess NLL.

    python benchmarks/density.py [--quick] [--sizes 50 300 2000 10000] [--seeds 0]
                                 [--problems NAME ...] [--methods auto fixed5 flow ...]

Every problem draws x ~ U(-1, 1)^p and y | x from a density that is known exactly, so each
method's test NLL can be compared with the NLL of the true density on the same test rows:
the *excess NLL* (nats per row, >= 0 in expectation; lower is better). Test rows: 5000 per
problem and seed, drawn independently of the training rows.

Problems (``PROBLEMS``): ``bimodal`` (two branches that cross, weights varying with x),
``heteroscedastic`` (noise sd growing 15-fold across x), ``student_t`` (3 degrees of
freedom), ``skewed`` (log-normal noise), ``ring`` (a 2-d target spread around a circle
whose radius depends on x: a curved one-dimensional manifold), ``clusters3d`` (a 3-d
target: two correlated Gaussian clusters that move and rotate with x, weights varying).

Methods: ``auto`` = ``MDNRegressor()`` with every default (capacity chosen from the data);
``fixed5`` = ``MDNRegressor(n_components=5, covariance_type="diag")`` (the old default);
``ens5`` = ``MDNRegressor(n_estimators=5)``; ``flow`` = a conditional neural spline flow
(zuko ``NSF``: 3 transforms, hidden (128, 128); ``pip install 'torchmdn[bench]'``) on
standardised x and y, Adam 1e-3, batch 128, the same 3000-step budget as the MDN, 10% of
the training rows held out, validated every 50 steps, the best state kept and training
stopped after 10 validations without improvement. ``--quick``: sizes 300 and 2000, one seed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time

import numpy as np
import torch
from scipy import special, stats

from torchmdn import MDNRegressor

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- problems


def _bimodal(x: np.ndarray, rng: np.random.Generator | None, y: np.ndarray | None):
    t = x[:, 0]
    w = 1 / (1 + np.exp(-3 * t))  # weight of the upper branch
    mu = np.stack([np.sin(3 * t) + 0.5, -np.sin(3 * t) - 0.5], 1)
    sd = np.array([0.15, 0.25])
    if y is None:
        upper = rng.random(len(t)) < w
        k = np.where(upper, 0, 1)
        return (mu[np.arange(len(t)), k] + sd[k] * rng.standard_normal(len(t)))[:, None]
    lp = np.stack(
        [np.log(w) + stats.norm.logpdf(y[:, 0], mu[:, 0], sd[0]),
         np.log1p(-w) + stats.norm.logpdf(y[:, 0], mu[:, 1], sd[1])], 1
    )  # fmt: skip
    return special.logsumexp(lp, axis=1)


def _heteroscedastic(x, rng, y):
    t = x[:, 0]
    mu, sd = np.sin(2 * t), 0.05 + 0.7 * (t + 1) / 2
    if y is None:
        return (mu + sd * rng.standard_normal(len(t)))[:, None]
    return stats.norm.logpdf(y[:, 0], mu, sd)


def _student_t(x, rng, y):
    t = x[:, 0]
    mu, sd = 2 * t + np.cos(3 * t), 0.3
    if y is None:
        return (mu + sd * rng.standard_t(3, len(t)))[:, None]
    return stats.t.logpdf(y[:, 0], 3, mu, sd)


def _skewed(x, rng, y):
    t = x[:, 0]
    mu, s = t**2, 0.6 + 0.2 * t  # y = mu + lognormal(0, s) - 1
    if y is None:
        return (mu + np.exp(s * rng.standard_normal(len(t))) - 1)[:, None]
    return stats.lognorm.logpdf(y[:, 0] - mu + 1, s)


def _ring(x, rng, y):
    t = x[:, 0]
    r, s = 1.0 + 0.5 * t, 0.05
    if y is None:
        theta = rng.uniform(0, 2 * np.pi, len(t))
        ring = np.stack([np.cos(theta), np.sin(theta)], 1) * r[:, None]
        return ring + s * rng.standard_normal((len(t), 2))
    # p(y) = (1/2π) ∫ N(y; r u(θ), s² I) dθ = exp(-(ρ² + r²)/2s²) I0(ρ r / s²) / (2π s²)
    rho = np.hypot(y[:, 0], y[:, 1])
    a = rho * r / s**2
    return -math.log(2 * math.pi * s**2) - (rho - r) ** 2 / (2 * s**2) + np.log(special.i0e(a))


def _clusters3d(x, rng, y):
    t = x[:, 0]
    w = 0.5 + 0.3 * np.sin(2 * t)
    c, sn = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
    mu1 = np.stack([t, np.ones_like(t), 0.5 * t], 1)
    mu2 = np.stack([-t, -np.ones_like(t), c], 1)
    base = np.array([[0.3, 0.0, 0.0], [0.25, 0.15, 0.0], [0.1, -0.1, 0.1]])
    # component 1: fixed correlated factor; component 2: rotated with x in the (y0, y2) plane
    rot = np.zeros((len(t), 3, 3))
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 2, 0], rot[:, 2, 2] = c, -sn, sn, c
    rot[:, 1, 1] = 1
    L1 = np.broadcast_to(base, (len(t), 3, 3))
    L2 = rot @ (0.7 * base)
    if y is None:
        z = rng.standard_normal((len(t), 3, 1))
        first = rng.random(len(t)) < w
        return np.where(first[:, None], mu1 + (L1 @ z)[..., 0], mu2 + (L2 @ z)[..., 0])

    def mvn(mu, L):
        cov = L @ np.swapaxes(L, 1, 2)
        diff = (y - mu)[..., None]
        sol = np.linalg.solve(cov, diff)[..., 0]
        _, logdet = np.linalg.slogdet(cov)
        return -0.5 * (3 * LOG_2PI + logdet + np.sum((y - mu) * sol, 1))

    lp = np.stack([np.log(w) + mvn(mu1, L1), np.log1p(-w) + mvn(mu2, L2)], 1)
    return special.logsumexp(lp, axis=1)


#: name -> (function(x, rng, y): samples y when y is None, else log p(y | x); input dim)
PROBLEMS = {
    "bimodal": (_bimodal, 1),
    "heteroscedastic": (_heteroscedastic, 1),
    "student_t": (_student_t, 1),
    "skewed": (_skewed, 1),
    "ring": (_ring, 1),
    "clusters3d": (_clusters3d, 1),
}


def draw(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    fn, p = PROBLEMS[name]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, p))
    return x, fn(x, rng, None)


def true_log_prob(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return PROBLEMS[name][0](x, None, y)


# ---------------------------------------------------------------------- methods


def flow_nll(x, y, x_te, y_te, seed: int, steps: int = 3000, batch: int = 128) -> float:
    """Test NLL of a conditional NSF (zuko) trained like the MDN: same steps, early stopping."""
    import zuko

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = zuko.flows.NSF(y.shape[1], x.shape[1], transforms=3, hidden_features=(128, 128))
    x_t, y_t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    mx, sx = x_t.mean(0), x_t.std(0).clamp_min(1e-8)
    my, sy = y_t.mean(0), y_t.std(0).clamp_min(1e-8)
    xs, ys = (x_t - mx) / sx, (y_t - my) / sy
    perm = torch.randperm(len(xs), generator=gen)
    n_val = max(1, round(0.1 * len(xs)))
    val, tr = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    best, best_state, bad = math.inf, None, 0
    bsz = min(batch, len(tr))
    step = 0
    while step < steps and bad < 10:
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order) - bsz + 1, bsz):
            idx = order[i : i + bsz]
            loss = -flow(xs[idx]).log_prob(ys[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == steps:
                with torch.no_grad():
                    v = -flow(xs[val]).log_prob(ys[val]).mean().item()
                if v < best:
                    best, bad = v, 0
                    best_state = {k: t.clone() for k, t in flow.state_dict().items()}
                else:
                    bad += 1
            if step >= steps or bad >= 10:
                break
    if best_state is not None:
        flow.load_state_dict(best_state)
    with torch.no_grad():
        xt = (torch.tensor(x_te, dtype=torch.float32) - mx) / sx
        yt = (torch.tensor(y_te, dtype=torch.float32) - my) / sy
        lp = flow(xt).log_prob(yt) - sy.log().sum()
    return float(-lp.mean())


METHODS = {
    "auto": {},
    "fixed5": {"n_components": 5, "covariance_type": "diag"},
    "ens5": {"n_estimators": 5},
}


def run(task: tuple) -> tuple:
    name, n, seed, method = task
    x, y = draw(name, n, seed)
    x_te, y_te = draw(name, 5000, 10_000 + seed)
    truth = -float(np.mean(true_log_prob(name, x_te, y_te)))
    t0 = time.perf_counter()
    info = ""
    if method == "flow":
        nll = flow_nll(x, y, x_te, y_te, seed)
    else:
        reg = MDNRegressor(**METHODS[method], random_state=seed).fit(x, y)
        nll = -reg.log_likelihood(x_te, y_te)
        info = f"{reg.n_components_}{'' if y.shape[1] == 1 else reg.covariance_type_}"
    return name, n, seed, method, nll - truth, info, time.perf_counter() - t0


def one_thread() -> None:
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sizes 300 and 2000, one seed")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 300, 2000, 10000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--methods", nargs="+", default=["auto", "fixed5", "flow"],
                   choices=[*METHODS, "flow"])  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    args = p.parse_args(argv)
    sizes, seeds = ([300, 2000], [0]) if args.quick else (args.sizes, args.seeds)
    tasks = [
        (name, n, seed, m)
        for n in sorted(sizes, reverse=True)
        for name in args.problems
        for seed in seeds
        for m in args.methods
    ]
    out: dict[tuple, tuple[float, str, float]] = {}
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=one_thread) as pool:
        for name, n, seed, m, excess, info, sec in pool.imap_unordered(run, tasks):
            out[(name, n, seed, m)] = (excess, info, sec)
            print(f"{name} n={n} seed={seed} {m}: excess {excess:.4f} {info} ({sec:.1f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    wall = time.perf_counter() - started

    methods = args.methods
    print("| problem | rows | " + " | ".join(f"{m} excess NLL" for m in methods) + " | chosen |")
    print("|---|---" + "|---" * len(methods) + "|---|")
    means: dict[str, list[float]] = {m: [] for m in methods}
    for name in args.problems:
        for n in sorted(sizes):
            cells = []
            for m in methods:
                vals = [out[(name, n, s, m)][0] for s in seeds]
                means[m].append(float(np.mean(vals)))
                cells.append(f"{np.mean(vals):.3f}")
            chosen = (
                " ".join(out[(name, n, s, "auto")][1] for s in seeds) if "auto" in methods else ""
            )
            print(f"| {name} | {n} | " + " | ".join(cells) + f" | {chosen} |")
    print("| **mean** | | " + " | ".join(f"**{np.mean(v):.3f}**" for v in means.values()) + " | |")
    secs = {m: sum(v[2] for k, v in out.items() if k[3] == m) for m in methods}
    print(
        f"\nexcess NLL = test NLL - NLL of the true density on the same 5000 test rows (nats); "
        f"seeds {seeds}; torch {torch.__version__}; {args.jobs} processes x 1 thread; wall "
        f"{wall / 60:.1f} min; CPU time in fits: "
        + ", ".join(f"{m} {s / 60:.1f} min" for m, s in secs.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
