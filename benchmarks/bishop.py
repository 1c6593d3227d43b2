"""Bishop's inverse problem with default settings: test NLL and wall time per seed.

    python benchmarks/bishop.py [--seeds 0 1 2]

Data: bishop(3000, seed) split into the first 2000 rows (train) and the last 1000 (test).
Prints, per seed, the test NLL of `fit(MDN(1, 1), x, t)` with defaults, the NLL that the
true density scores on the same test rows (the best any model can do on them), the exact
conditional entropy (the floor on the expected NLL), and the wall time.
"""

from __future__ import annotations

import argparse
import time

import torch

import torchmdn
from torchmdn.datasets import BISHOP_ENTROPY, bishop, bishop_log_prob


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| seed | test NLL | true density on the same rows | epochs | time (s) |")
    print("|---|---|---|---|---|")
    nlls = []
    for seed in args.seeds:
        x, t = bishop(3000, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = torchmdn.MDN(1, 1)
        start = time.perf_counter()
        h = torchmdn.fit(model, x[:2000], t[:2000], random_state=seed, progress=False)
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            nll = -model.log_prob(x[2000:], t[2000:]).mean().item()
        oracle = -bishop_log_prob(x[2000:], t[2000:]).mean().item()
        nlls.append(nll)
        print(f"| {seed} | {nll:.4f} | {oracle:.4f} | {h.epochs} | {elapsed:.1f} |", flush=True)
    mean = sum(nlls) / len(nlls)
    print(f"\nmean test NLL {mean:.4f}; exact conditional entropy {BISHOP_ENTROPY}")


if __name__ == "__main__":
    main()
