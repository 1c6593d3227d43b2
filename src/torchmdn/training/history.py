"""What :func:`~torchmdn.fit` reports: the :class:`History` of a run (and reading it back
from a checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

__all__ = ["History", "saved_history"]


@dataclass
class History:
    """What happened during :func:`~torchmdn.fit`.

    Attributes:
        train_nll: mean training NLL per epoch (nats per sample, user units).
        val_nll: mean validation NLL per epoch (empty without a validation set).
        lr: learning rate at the end of each epoch.
        effective_components: per epoch, ``exp(entropy)`` of the components' shares of
            responsibility on training rows (``n`` when all are used equally, 1 when one
            component explains everything); empty for models that are not mixtures.
        best_epoch: epoch (0-based) whose state was restored.
        best_val_nll: validation NLL of that epoch (training NLL without validation).
        stopped_early: whether early stopping ended training.
        skipped_steps: optimiser steps skipped because the loss or gradient was not finite.
        rollbacks: times the model was rolled back to its last good state (lr halved each time).
        reseeded: components re-seeded because they had died.
        time_s: wall-clock seconds spent in ``fit`` (this call only).
        capacity: for a model whose capacity ``fit`` chose (``n_components="auto"``): the
            candidates tried (``"tried"``: component count, covariance, validation NLL,
            paired standard error against the best, whether it was kept), ``"chosen"``
            (the total component count, the covariance type and the sizes ``"averaged"``)
            and the ``"reason"``.
    """

    train_nll: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    effective_components: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_nll: float = math.inf
    stopped_early: bool = False
    skipped_steps: int = 0
    rollbacks: int = 0
    reseeded: int = 0
    time_s: float = 0.0
    capacity: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_nll)

    def record_capacity(
        self, tried: list[dict[str, Any]], chosen: Sequence[tuple[int, str]], reason: str
    ) -> History:
        """Fill :attr:`capacity`: the candidates ``tried``, the ``chosen`` ``(n_components,
        covariance)`` pairs (averaged, one or more) and the ``reason``; returns ``self``."""
        self.capacity = {
            "tried": tried,
            "chosen": {
                "n_components": sum(k for k, _ in chosen),
                "covariance_type": chosen[0][1],
                "averaged": [k for k, _ in chosen],
            },
            "reason": reason,
        }
        return self

    def __repr__(self) -> str:
        # a summary, not thousands of per-epoch numbers (those stay in the attributes)
        val = f", best_val_nll={self.best_val_nll:.4f}" if self.val_nll else ""
        last = f", last train_nll={self.train_nll[-1]:.4f}" if self.train_nll else ""
        flags = "".join(
            f", {name}={value}"
            for name, value in (("skipped_steps", self.skipped_steps),
                                ("rollbacks", self.rollbacks), ("reseeded", self.reseeded))
            if value
        )  # fmt: skip
        return (
            f"History(epochs={self.epochs}, best_epoch={self.best_epoch}{val}{last}, "
            f"stopped_early={self.stopped_early}{flags}, time_s={self.time_s:.1f})"
        )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def saved_history(path: str | Path, saved: dict[str, Any]) -> History:
    """The History a checkpoint holds, each field checked against its type (a damaged or
    edited field is a ModelFileError, never a TypeError later)."""
    defaults = History()
    values = {}
    for f in fields(History):
        if f.name not in saved:
            continue
        value, default = saved[f.name], getattr(defaults, f.name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(_number(v) for v in value)
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
        else:
            ok = _number(value) and (not isinstance(default, int) or isinstance(value, int))
        if not ok:
            raise ModelFileError(
                f"{path}: the checkpoint's history field {f.name!r} is {str(value)[:40]!r}; "
                "the file is damaged"
            )
        values[f.name] = value
    return History(**values)
