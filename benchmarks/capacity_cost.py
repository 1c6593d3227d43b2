"""Cost of the automatic capacity choice: wall time of ``MDNRegressor()`` (defaults) over
``MDNRegressor(n_components=5, covariance_type="diag")`` (the old default), interleaved in one
process on the first split of UCI data sets (or the first ``--splits K``), the median ratio
of the fits and the ratio of the total times.

    python benchmarks/capacity_cost.py DATA_DIR [NAMES ...] [--repeats 3] [--max-steps 3000]
                                       [--splits 1] [--baseline-src DIR]

On a few hundred rows the time of one fit depends on when early stopping ends it, which
varies from split to split and seed to seed: ``--splits K`` (each split with seeds
``0 .. repeats - 1``) gives a figure less at the mercy of one split.

``--baseline-src DIR`` compares with another version's defaults instead: DIR is the ``src``
folder of another checkout (``git archive REV src | tar -x -C OUT`` gives ``OUT/src``), and
each fit, of that version and of this one, runs in a fresh process (the time of the fit
alone), the two alternated.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import uci  # noqa: E402

from torchmdn import MDNRegressor  # noqa: E402

#: a fit in a fresh process: argv data_dir, name, seed, max_steps; prints its seconds
_ONE_FIT = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import uci
from pathlib import Path
from torchmdn import MDNRegressor
torch.set_num_threads(1)
MDNRegressor(n_components=1, max_epochs=1).fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 3.0])
folder = Path(sys.argv[2]) / sys.argv[3]
X, y, _ = uci.load(folder)
tr, _ = uci.split(folder, int(sys.argv[6]), False)
t0 = time.perf_counter()
MDNRegressor(max_steps=int(sys.argv[5]), random_state=int(sys.argv[4])).fit(X[tr], y[tr])
print(time.perf_counter() - t0)
"""


def _fit_elsewhere(
    src: Path, data_dir: Path, name: str, seed: int, max_steps: int, split: int
) -> float:
    """Seconds of one default fit by the torchmdn in ``src``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    args = [str(Path(__file__).parent), str(data_dir), name, str(seed), str(max_steps), str(split)]
    out = subprocess.run([sys.executable, "-c", _ONE_FIT, *args], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("names", nargs="*", default=["bostonHousing", "kin8nm"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--splits", type=int, default=1, help="the first K splits (default 1)")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="another version's src folder: its defaults are the baseline")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(1)
    MDNRegressor(n_components=1, max_epochs=1).fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 3.0])  # warm-up
    base = "5 components" if args.baseline_src is None else f"defaults of {args.baseline_src}"
    print(f"| data set | rows | fits | auto (s, median) | {base} (s, median) | ratio (median) "
          "| ratio of totals |")
    print("|---|---|---|---|---|---|---|")
    here = Path(__file__).resolve().parents[1] / "src"
    for name in args.names:
        X, y, _ = uci.load(args.data_dir / name)
        times: dict[str, list[float]] = {"auto": [], "base": []}
        for split, r in itertools.product(range(args.splits), range(args.repeats)):
            tr, _ = uci.split(args.data_dir / name, split, False)
            if args.baseline_src is not None:
                for k, src in (("base", args.baseline_src), ("auto", here)):
                    times[k].append(
                        _fit_elsewhere(src, args.data_dir, name, r, args.max_steps, split)
                    )
                continue
            for k in ("auto", "base"):
                kw = {} if k == "auto" else {"n_components": 5, "covariance_type": "diag"}
                t0 = time.perf_counter()
                MDNRegressor(**kw, max_steps=args.max_steps, random_state=r).fit(X[tr], y[tr])
                times[k].append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(times["auto"], times["base"], strict=True)]
        print(
            f"| {name} | {len(tr)} | {len(ratios)} | {statistics.median(times['auto']):.1f} | "
            f"{statistics.median(times['base']):.1f} | {statistics.median(ratios):.2f} | "
            f"{sum(times['auto']) / sum(times['base']):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
