"""Generate handwritten digits with an MDN-RNN (Graves 2013 style, Sketch-RNN pen states).

    python examples/handwriting.py --out demo-out       (about a minute on one CPU core)

The same as ``torchmdn demo handwriting``; see ``torchmdn.apps.sequences.demo.handwriting_demo``
for the code: Hershey glyphs rendered to pen offsets with random slant, scale and jitter;
an LSTM conditioned on the character; a 10-component mixture of correlated bivariate
Gaussians per pen step plus a 3-state pen (down / end of stroke / end of character).
Needs ``pip install 'torchmdn[data,plot]'``.
"""

import argparse

from torchmdn.apps.sequences.demo import handwriting_demo

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="demo-out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = handwriting_demo(args.out, seed=args.seed)
    print(f"held-out NLL {result.test_nll:.3f} nats/step; wrote {result.figure}")
