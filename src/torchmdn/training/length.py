"""How long to train: the one rule shared by :func:`~torchmdn.fit`, the ``torchmdn fit``
command and :class:`~torchmdn.MDNRegressor`.

Training is planned in optimiser steps, not epochs, because what a network needs is a number
of updates: a small data set needs many passes to fit a sharp relationship, a large one few.

- **Steps**: ``max_steps`` if given, else :func:`default_steps` of the number of training rows
  ``N``: ``clip(2.5 N, 3000, 20000)``. 3000 steps were the best fixed budget on the training
  parts of the UCI regression splits (about 1500 epochs for 250 rows); above 1200 rows the
  budget grows with the data (Bishop's problem, 1800 training rows: 4500 steps) up to 20000
  steps (about 14 epochs of a million rows).
- **Epochs**: ``max_epochs`` if given, else ``ceil(steps / ceil(N / batch_size))``; the
  learning-rate schedule (warm-up, cosine decay) spans them.
- **Early stopping** on the validation split, on by default (``patience="auto"``): stop once
  the validation NLL has not improved for ``clip(ceil(0.2 * epochs), 20, 100)`` epochs; the
  best epoch's weights are restored either way. ``patience=None`` runs every epoch; an integer
  sets it in epochs. Without a validation split the training NLL is watched instead. (On
  Bishop's problem, 300 epochs, the best epoch comes late and a patience of 30 would stop too
  soon; data sets of a few hundred rows overfit after a few hundred of their 1500-3000
  epochs, hence the cap.)
"""

from __future__ import annotations

import math

from .._checks import integer
from ..errors import InputError

__all__ = ["DEFAULT_STEPS", "MAX_DEFAULT_STEPS", "default_steps", "plan", "validation_rows"]

DEFAULT_STEPS = 3000  #: the step budget for data sets of up to 1200 training rows
MAX_DEFAULT_STEPS = 20_000  #: the largest budget the default rule gives
_STEPS_PER_ROW = 2.5
_PATIENCE_SHARE, _MIN_PATIENCE, _MAX_PATIENCE = 0.2, 20, 100


def default_steps(n_train: int) -> int:
    """Optimiser steps for ``n_train`` training rows: ``clip(2.5 n_train, 3000, 20000)``."""
    return int(min(MAX_DEFAULT_STEPS, max(DEFAULT_STEPS, round(_STEPS_PER_ROW * n_train))))


def validation_rows(n: int, fraction: float) -> int:
    """How many of ``n`` rows a validation split of ``fraction`` holds: ``round(fraction n)``
    (the rule ``fit`` splits by, and the capacity choice asks before it does)."""
    return int(round(fraction * n))


def plan(
    n_train: int,
    batch_size: int,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    patience: int | str | None = "auto",
) -> tuple[int, int | None]:
    """``(epochs, patience)`` for a run on ``n_train`` rows in batches of ``batch_size``.

    Args:
        n_train: training rows (after the validation split).
        batch_size: rows per optimiser step.
        max_epochs: passes over the data; ``None`` derives them from the steps.
        max_steps: optimiser steps to aim for; ``None``: :func:`default_steps`.
        (NumPy integers are accepted for all three.)
        patience: ``"auto"`` (``clip(ceil(0.2 epochs), 20, 100)``), ``None`` (no early
            stopping) or epochs without a better validation NLL before stopping.

    Returns:
        The number of epochs and the patience in epochs (``None``: run them all).
    """
    max_epochs = None if max_epochs is None else integer("max_epochs", max_epochs)
    max_steps = None if max_steps is None else integer("max_steps", max_steps)
    if patience != "auto" and patience is not None:
        if isinstance(patience, str):
            raise InputError(
                f"patience must be 'auto', None (no early stopping) or a positive integer; "
                f"got {patience!r}"
            )
        patience = integer("patience", patience)
    if max_epochs is not None:
        epochs = max_epochs
    else:
        steps = default_steps(n_train) if max_steps is None else max_steps
        epochs = math.ceil(steps / max(1, math.ceil(n_train / batch_size)))
    if patience == "auto":
        patience = min(_MAX_PATIENCE, max(_MIN_PATIENCE, math.ceil(_PATIENCE_SHARE * epochs)))
    return epochs, patience
