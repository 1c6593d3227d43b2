"""Learn LASA pen trajectories with an MDN-RNN, then continue held-out demonstrations.

    python examples/lasa_generation.py --out lasa-out      (about 30 s on one CPU core)

Needs ``pip install 'torchmdn[data,plot]'``. Trains on demonstrations 0-5 of six shapes,
primes the generator with the first 30 steps of the held-out demonstration 6, and draws
eight continuations of each (Graves' sampling bias 0.5), written to ``lasa.png``.
"""

import argparse
from pathlib import Path

import torch

import torchmdn
from torchmdn.apps.sequences.data import lasa_positions, trajectory_task
from torchmdn.apps.sequences.plots import trajectory_fan
from torchmdn.plot import require_matplotlib

SHAPES = ("GShape", "Sine", "Snake", "WShape", "Leaf_1", "heee")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="lasa-out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)  # tiny recurrent steps: one thread is fastest
    pos = torch.stack(list(lasa_positions(SHAPES, every=10).values()))  # [6, 7, 100, 2]
    x, y = trajectory_task(pos.flatten(0, 1))
    x, y = x.view(6, 7, *x.shape[1:]), y.view(6, 7, *y.shape[1:])

    torch.manual_seed(args.seed)
    model = torchmdn.MDNRNN(4, 2, n_components=5, hidden_size=64, covariance_type="full")
    torchmdn.fit_sequences(
        model, x[:, :6].flatten(0, 1), y[:, :6].flatten(0, 1),
        max_epochs=150, batch_size=8, lr=3e-3, random_state=args.seed, validation_fraction=0.15,
    )  # fmt: skip
    x_test, y_test = x[:, 6], y[:, 6]
    with torch.no_grad():
        print(f"held-out NLL {model.nll(x_test, y_test).item():.3f} nats/step")

    prefix, n_draws = 30, 8
    gen = model.generator(bias=0.5, seed=args.seed)
    gen.prime(x_test[:, :prefix].repeat_interleave(n_draws, 0))

    def next_input(step, x_prev):  # (position, last displacement) from the drawn step
        return torch.cat([x_prev[:, :2] + x_prev[:, 2:], step], -1)

    steps = gen.generate(steps=x.shape[2] - prefix, next_input=next_input)  # [6*8, T', 2]
    start = pos[:, 6, prefix].repeat_interleave(n_draws, 0)  # position where drawing begins
    paths = start[:, None] + steps.cumsum(1)

    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for k, ax in enumerate(axes.flat):
        real = pos[k, 6]
        trajectory_fan(paths[k * n_draws : (k + 1) * n_draws], past=real[: prefix + 1],
                       real=real[prefix + 1 :], ax=ax)  # fmt: skip
        ax.set_title(f"{SHAPES[k]}: primed on {prefix} steps")
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "lasa.png", dpi=110)
    print(f"wrote {out / 'lasa.png'}")


if __name__ == "__main__":
    main()
