"""The stress suite with and without torchmdn's safeguards.

    python benchmarks/stress.py [--seeds 0 1 2] [--epochs 300]

For each problem of `torchmdn.datasets.stress_problems()` and each seed, trains
(a) `fit(MDN(...), x, y)` with every default (standardisation, k-means initialisation, scale
floor, clipping, EMA, the non-finite-step guard), and
(b) the same network trained the way most MDN code does it: raw (unstandardised) data, no
scale floor (min_scale=0), default PyTorch initialisation, plain Adam (lr 1e-3), no
clipping, no guard.
Counts runs whose loss went NaN/inf, runs that collapsed (fewer than 1.5 effective
components on the test rows, for n >= 3), and reports the mean test NLL of the finite runs
in user units.
"""

from __future__ import annotations

import argparse
import math

import torch

import torchmdn


def effective_components(model: torchmdn.MDN, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        dist = model.standardized_forward(x)
        share = torch.softmax(dist.joint_log_prob((y - model.y_loc) / model.y_scale), -1).mean(0)
    return math.exp(-(share * share.clamp_min(1e-12).log()).sum().item())


def naive_fit(
    model: torchmdn.MDN, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> bool:
    """Train without safeguards; returns False if the loss ever became non-finite."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            loss = -model.log_prob(x[idx], y[idx]).mean()
            if not torch.isfinite(loss):
                return False
            opt.zero_grad()
            loss.backward()
            opt.step()
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300)
    args = p.parse_args()
    problems = torchmdn.datasets.stress_problems(seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seeds {args.seeds}, "
          f"{args.epochs} epochs\n")  # fmt: skip
    print(
        "| problem | safeguards: NaN runs | collapsed | test NLL | without: NaN runs | collapsed | test NLL |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = [0, 0, 0, 0]
    for name, prob in problems.items():
        row = []
        for safe in (True, False):
            nan = collapsed = 0
            nlls = []
            for seed in args.seeds:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    kwargs = dict(prob["model"])
                    if not safe:
                        kwargs["min_scale"] = 0.0
                    model = torchmdn.MDN(prob["x"].shape[1], prob["y"].shape[1], **kwargs)
                if safe:
                    try:
                        torchmdn.fit(model, prob["x"], prob["y"], max_epochs=args.epochs,
                                     progress=False, random_state=seed)  # fmt: skip
                        ok = True
                    except torchmdn.TorchMDNError:
                        ok = False
                else:
                    ok = naive_fit(model, prob["x"], prob["y"], args.epochs, seed)
                if not ok:
                    nan += 1
                    continue
                with torch.no_grad():
                    nll = -model.log_prob(prob["x_test"], prob["y_test"]).double().mean().item()
                if not math.isfinite(nll):
                    nan += 1
                    continue
                nlls.append(nll)
                if (
                    model.head.n_components >= 3
                    and effective_components(model, prob["x_test"], prob["y_test"]) < 1.5
                ):
                    collapsed += 1
            mean = f"{sum(nlls) / len(nlls):.3f}" if nlls else "–"
            row += [str(nan), str(collapsed), mean]
            totals[0 if safe else 2] += nan
            totals[1 if safe else 3] += collapsed
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)
    runs = len(problems) * len(args.seeds)
    print(f"\nwith safeguards: {totals[0]}/{runs} runs NaN, {totals[1]}/{runs} collapsed; "
          f"without: {totals[2]}/{runs} NaN, {totals[3]}/{runs} collapsed")  # fmt: skip


if __name__ == "__main__":
    main()
