"""Bishop's inverse problem with default settings: test NLL and wall time per seed.

    python benchmarks/bishop.py [--seeds 0 1 2] [--train-rows 2000] [--components auto]

Data: bishop(N + 1000, seed) split into the first N = 2000 rows (train) and the last 1000
(test). Prints, per seed, the test NLL of `fit(MDN(1, 1), x, t)` with defaults (capacity
chosen from the data), the NLL that the true density scores on the same test rows (the best
any model can do on them), the exact conditional entropy (the floor on the expected NLL),
the number of components and the wall time. `--train-rows` measures what more data gives;
`--components K` fixes the number of components instead.
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
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--components", default="auto", help="'auto' (the default) or an integer")
    args = p.parse_args()
    n = args.train_rows
    k = args.components if args.components == "auto" else int(args.components)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{n} training rows, n_components={k!r}")
    print("| seed | test NLL | true density on the same rows | components | epochs | time (s) |")
    print("|---|---|---|---|---|---|")
    nlls = []
    for seed in args.seeds:
        x, t = bishop(n + 1000, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = torchmdn.MDN(1, 1, n_components=k)
        start = time.perf_counter()
        h = torchmdn.fit(model, x[:n], t[:n], random_state=seed, progress=False)
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            nll = -model.log_prob(x[n:], t[n:]).mean().item()
        oracle = -bishop_log_prob(x[n:], t[n:]).mean().item()
        nlls.append(nll)
        print(
            f"| {seed} | {nll:.4f} | {oracle:.4f} | {model.n_components} | {h.epochs} | "
            f"{elapsed:.1f} |",
            flush=True,
        )
    mean = sum(nlls) / len(nlls)
    print(f"\nmean test NLL {mean:.4f}; exact conditional entropy {BISHOP_ENTROPY}")


if __name__ == "__main__":
    main()
