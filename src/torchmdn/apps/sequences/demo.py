"""The sequence demos: ``torchmdn demo handwriting`` and ``torchmdn demo storms``.

Both need the data extra (``pip install 'torchmdn[data]'``) and matplotlib, train for about a
minute on two CPU cores, and write a PNG. Seeds make them reproducible; the global random
state is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...nn.recurrent import MDNRNN, lengths_to_mask
from ...training.fit import History
from ...training.sequences import fit_sequences

__all__ = ["SequenceDemoResult", "handwriting_demo", "storms_demo"]


@dataclass
class SequenceDemoResult:
    """What a sequence demo measured and wrote."""

    test_nll: float
    history: History
    figure: Path


@contextmanager
def one_thread() -> Iterator[None]:
    """Small recurrent steps run fastest on one thread (and far faster on a busy machine);
    the caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeded_model(seed: int, *args, **kwargs) -> MDNRNN:
    with torch.random.fork_rng(devices=[]):  # seeded init, global RNG state restored after
        torch.manual_seed(seed)
        return MDNRNN(*args, **kwargs)


def _glyph_inputs(strokes: Tensor, labels: Tensor, n_chars: int) -> Tensor:
    """Input at step t: the previous pen step (dx, dy, pen) and the character (one-hot)."""
    prev = torch.cat([torch.zeros_like(strokes[:, :1]), strokes[:, :-1]], 1)
    onehot = torch.nn.functional.one_hot(labels, n_chars).to(strokes.dtype)
    return torch.cat([prev, onehot[:, None].expand(-1, strokes.shape[1], -1)], -1)


def handwriting_demo(
    out: str | Path = "demo-out",
    seed: int = 0,
    progress: bool = True,
    chars: str = "0123456789",
    epochs: int = 50,
) -> SequenceDemoResult:
    """Learn to draw characters from augmented Hershey glyphs; plot real and generated ones.

    An LSTM conditioned on the character (one-hot at every step) predicts each pen offset with
    a 10-component mixture of correlated bivariate Gaussians and a 3-state categorical pen
    (0: pen stays down, 1: end of stroke, 2: end of the character). Writes
    ``handwriting.png``: for each character three real (augmented) glyphs beside three
    generated ones (temperature 1, sampling bias 0.5).
    """
    with one_thread():
        return _handwriting(Path(out), seed, progress, chars, epochs)


def _handwriting(
    out: Path, seed: int, progress: bool, chars: str, epochs: int
) -> SequenceDemoResult:
    from ...plot import require_matplotlib
    from .data import hershey_glyphs
    from .plots import strokes

    plt = require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_chars = len(chars)
    data, lengths, labels = hershey_glyphs(chars, n_per_char=60, seed=seed, jitter=0.006)
    last = lengths - 1
    data[torch.arange(len(data)), last, 2] = 2.0  # the last point ends the character
    x = _glyph_inputs(data, labels, n_chars)
    test = torch.arange(len(data)) % 10 == 0
    model = _seeded_model(
        seed, 3 + n_chars, 2, 10, hidden_size=128, covariance_type="full", pen_states=3
    )
    history = fit_sequences(
        model, x[~test], data[~test], lengths[~test], max_epochs=epochs, batch_size=16,
        lr=5e-3, random_state=seed, progress=progress, validation_fraction=0.1,
    )  # fmt: skip
    with torch.no_grad():
        test_nll = model.nll(x[test], data[test], lengths_to_mask(lengths[test], x.shape[1]))

    per_char = 3
    gen = model.generator(temperature=1.0, bias=0.5, seed=seed)
    want = torch.arange(n_chars).repeat_interleave(per_char)
    onehot = torch.nn.functional.one_hot(want, n_chars).float()
    x0 = torch.cat([torch.zeros(len(want), 3), onehot], -1)
    drawn = gen.generate(
        x0,
        steps=int(lengths.max()) + 10,
        next_input=lambda y, _: torch.cat([y, onehot], -1),
    )  # [C*3, T, 3]

    fig, axes = plt.subplots(n_chars, 2 * per_char, figsize=(2 * per_char * 1.0, n_chars * 1.0))
    for c in range(n_chars):
        real_rows = torch.nonzero(labels == c).flatten()[:per_char]
        for j, r in enumerate(real_rows.tolist()):
            strokes(data[r, : lengths[r]], ax=axes[c, j], color="0.2")
        for j in range(per_char):
            seq = drawn[c * per_char + j]
            stop = torch.nonzero(seq[:, 2] == 2).flatten()
            end = int(stop[0]) + 1 if len(stop) else len(seq)
            strokes(seq[:end], ax=axes[c, per_char + j], color="tab:blue")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    axes[0, 1].set_title("real (augmented Hershey)", fontsize=8)
    axes[0, per_char + 1].set_title("generated (MDN-RNN)", fontsize=8)
    fig.suptitle(f"held-out NLL {test_nll.item():.3f} nats/step", fontsize=8)
    fig.tight_layout()
    figure = out / "handwriting.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return SequenceDemoResult(test_nll.item(), history, figure)


def storms_demo(
    out: str | Path = "demo-out",
    seed: int = 0,
    progress: bool = True,
    epochs: int = 40,
    n_storms: int = 6,
    horizon: int = 8,
) -> SequenceDemoResult:
    """Forecast Atlantic storm tracks; plot a fan of sampled tracks for held-out storms.

    Trains a 5-component MDN-RNN (bivariate full-covariance mixture over the next 6-hour
    displacement in km) on storms before 2017, then for ``n_storms`` held-out storms
    (2017-2022) draws 40 tracks ``horizon`` steps (6 h each) ahead from mid-track and writes
    ``storms.png`` with the observed past and the real future.
    """
    with one_thread():
        return _storms(Path(out), seed, progress, epochs, n_storms, horizon)


def _storms(
    out: Path, seed: int, progress: bool, epochs: int, n_storms: int, horizon: int
) -> SequenceDemoResult:
    from ...plot import require_matplotlib
    from .data import storm_rollouts, storm_task, storm_tracks
    from .plots import trajectory_fan

    plt = require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = storm_tracks()
    gen = torch.Generator().manual_seed(seed)
    past = torch.nonzero(tracks.years < 2017).flatten()
    past = past[torch.randperm(len(past), generator=gen)]
    train, val = tracks.subset(past[len(past) // 10 :]), tracks.subset(past[: len(past) // 10])
    test = tracks.subset(torch.nonzero(tracks.years >= 2017).flatten())
    model = _seeded_model(seed, 5, 2, 5, hidden_size=64, covariance_type="full")
    history = fit_sequences(
        model, *storm_task(train), validation_data=storm_task(val), max_epochs=epochs,
        batch_size=32, lr=3e-3, random_state=seed, progress=progress,
    )  # fmt: skip
    xe, ye, le = storm_task(test)
    with torch.no_grad():
        test_nll = model.nll(xe, ye, lengths_to_mask(le, xe.shape[1])).item()

    # long held-out storms, origin where the storm has moved furthest so far (often recurving)
    long_ones = torch.nonzero(le >= 2 * horizon + 4).flatten()
    pick = long_ones[torch.randperm(len(long_ones), generator=gen)[:n_storms]].sort().values
    origins = torch.stack([pick, (le[pick] - horizon) // 2], 1)
    samples = storm_rollouts(model, test, origins, horizon, n_samples=40, seed=seed)
    cols = 3
    rows = -(-len(pick) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for k, (i, t) in enumerate(origins.tolist()):
        ax = axes.flat[k]
        lonlat = test.positions[i, : test.lengths[i]].flip(-1)
        now = t + 1
        trajectory_fan(
            samples[:, k].flip(-1),
            past=lonlat[: now + 1],
            real=lonlat[now + 1 : now + 1 + horizon],
            ax=ax,
        )
        ax.set_title(f"{test.names[i].title()}: next {6 * horizon} h", fontsize=9)
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
        ax.set_aspect("equal", adjustable="datalim")
    for ax in list(axes.flat)[len(pick) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Held-out Atlantic storms: 40 sampled tracks each (test NLL {test_nll:.2f} nats/step)",
        fontsize=10,
    )
    fig.tight_layout()
    figure = out / "storms.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return SequenceDemoResult(test_nll, history, figure)
