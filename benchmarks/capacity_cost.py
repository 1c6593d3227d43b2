"""Cost of the automatic capacity choice: wall time of ``MDNRegressor()`` (defaults) over
``MDNRegressor(n_components=5, covariance_type="diag")`` (the old default), interleaved in one
process on the first split of UCI data sets, median ratio of the repeats.

    python benchmarks/capacity_cost.py DATA_DIR [NAMES ...] [--repeats 3] [--max-steps 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import uci  # noqa: E402

from torchmdn import MDNRegressor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("names", nargs="*", default=["bostonHousing", "kin8nm"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=3000)
    args = p.parse_args()
    torch.set_num_threads(1)
    MDNRegressor(n_components=1, max_epochs=1).fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 3.0])  # warm-up
    print("| data set | rows | auto (s) | 5 components (s) | ratio (median) |")
    print("|---|---|---|---|---|")
    for name in args.names:
        X, y, _ = uci.load(args.data_dir / name)
        tr, _ = uci.split(args.data_dir / name, 0, False)
        times: dict[str, list[float]] = {"auto": [], "5": []}
        for r in range(args.repeats):
            for k in ("auto", "5"):
                kw = {} if k == "auto" else {"n_components": 5, "covariance_type": "diag"}
                t0 = time.perf_counter()
                MDNRegressor(**kw, max_steps=args.max_steps, random_state=r).fit(X[tr], y[tr])
                times[k].append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(times["auto"], times["5"], strict=True)]
        print(
            f"| {name} | {len(tr)} | {statistics.median(times['auto']):.1f} | "
            f"{statistics.median(times['5']):.1f} | {statistics.median(ratios):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
