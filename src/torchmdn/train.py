"""``fit``: the maximum-likelihood training loop, and the ``History`` it returns.

The loop: a validation split carved from the training data, Adam with a learning rate that
halves when the validation NLL stops improving, gradient clipping by norm, early stopping
with the best state restored, and a guard that skips any step whose loss or gradient is not
finite. Losses are averaged over the samples actually seen and reported in nats per sample,
in the user's units of ``y``.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError, TrainingError

__all__ = ["fit", "History", "as_tensor_2d"]


@dataclass
class History:
    """What happened during :func:`fit`.

    Attributes:
        train_nll: mean training NLL per epoch (nats per sample, user units).
        val_nll: mean validation NLL per epoch (empty without a validation set).
        lr: learning rate used in each epoch.
        best_epoch: epoch (0-based) whose state was restored.
        best_val_nll: validation NLL of that epoch (training NLL without validation).
        stopped_early: whether early stopping ended training.
        skipped_steps: optimiser steps skipped because the loss or gradient was not finite.
        time_s: wall-clock seconds spent in ``fit``.
    """

    train_nll: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_nll: float = math.inf
    stopped_early: bool = False
    skipped_steps: int = 0
    time_s: float = 0.0

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_nll)


def as_tensor_2d(
    name: str, value: Any, dtype: torch.dtype, device: torch.device | None = None
) -> Tensor:
    """Convert array-like data to a finite 2-d tensor ``(rows, columns)``; 1-d means one column."""
    if isinstance(value, Tensor):
        t = value.detach()
    else:
        try:
            arr = np.asarray(value)
        except Exception as err:  # noqa: BLE001 - anything numpy cannot read is a type error
            raise InputError(
                f"{name} must be an array of numbers; got {type(value).__name__}"
            ) from err
        if arr.dtype.kind not in "biuf":
            raise InputError(
                f"{name} must contain numbers only; got an array of dtype {arr.dtype}. "
                "Convert or drop non-numeric columns first."
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name} must be real numbers; got dtype {t.dtype}")
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.dim() != 2:
        raise InputError(f"{name} must be 1-d or 2-d (rows, columns); got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"{name} has zero rows; training needs data")
    t = t.to(dtype=dtype, device=device)
    bad = ~torch.isfinite(t)
    if bad.any():
        rows = torch.nonzero(bad.any(-1)).flatten()
        raise InputError(
            f"{name} contains {int(bad.sum())} NaN/inf values (first rows: {rows[:5].tolist()}). "
            "Drop or impute them before fitting."
        )
    return t


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters(), None)
    if p is None:
        raise InputError("the model has no parameters to train")
    return p.dtype, p.device


def _nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-row negative log-likelihood; uses ``model.log_prob(x, y)`` when the model has it."""
    log_prob = getattr(model, "log_prob", None)
    return -(log_prob(x, y) if callable(log_prob) else model(x).log_prob(y))


@torch.no_grad()
def _mean_nll(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(x), chunk):
        total += _nll(model, x[i : i + chunk], y[i : i + chunk]).sum().item()
    return total / len(x)


def fit(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    max_epochs: int = 1000,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.1,
    validation_data: tuple[Any, Any] | None = None,
    patience: int = 60,
    lr_patience: int = 15,
    lr_factor: float = 0.5,
    clip_grad_norm: float | None = 10.0,
    standardize: bool = True,
    progress: bool = True,
    random_state: int | None = None,
    callback: Callable[[int, History], bool | None] | None = None,
) -> History:
    """Train ``model`` by maximum likelihood on ``(x, y)`` and return its :class:`History`.

    Args:
        model: a module whose ``forward(x)`` returns a distribution over ``y`` (an
            :class:`~torchmdn.MDN` or any module returning a ``torch.distributions`` object).
        x, y: tensors or array-likes with one row per sample (1-d means one column).
        max_epochs: upper bound on passes over the training data.
        batch_size: samples per optimiser step.
        lr, weight_decay: Adam(W) learning rate and decoupled weight decay.
        validation_fraction: share of rows held out for early stopping (0 for none);
            ignored when ``validation_data`` is given.
        patience: epochs without a better validation NLL before stopping.
        lr_patience, lr_factor: the learning rate is multiplied by ``lr_factor`` after
            ``lr_patience`` epochs without improvement.
        clip_grad_norm: clip the gradient's global norm to this value (``None``: no clipping).
        standardize: set an MDN's normalisers from the training rows if not already set.
        progress: show a progress bar (only when stderr is a terminal).
        random_state: seed of the split and the batch order; ``None`` picks a fresh one.
            Uses a local ``torch.Generator``: the global random state is not touched.
        callback: called as ``callback(epoch, history)`` after each epoch; returning
            ``True`` stops training.

    Returns:
        The :class:`History`; the model is left in its best state, in eval mode.
    """
    for name, value, lo in (
        ("max_epochs", max_epochs, 1),
        ("batch_size", batch_size, 1),
        ("patience", patience, 1),
        ("lr_patience", lr_patience, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise InputError(f"{name} must be an integer >= {lo}; got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise InputError(f"lr must be a positive number; got {lr!r}")
    if not 0 <= validation_fraction < 1:
        raise InputError(f"validation_fraction must be in [0, 1); got {validation_fraction!r}")
    dtype, device = _model_dtype_device(model)
    x, y = as_tensor_2d("x", x, dtype, device), as_tensor_2d("y", y, dtype, device)
    if len(x) != len(y):
        raise InputError(f"x and y must have the same number of rows; got {len(x)} and {len(y)}")

    seed = torch.Generator().seed() if random_state is None else int(random_state)
    gen = torch.Generator().manual_seed(seed)
    if validation_data is not None:
        x_val = as_tensor_2d("validation x", validation_data[0], dtype, device)
        y_val = as_tensor_2d("validation y", validation_data[1], dtype, device)
        x_tr, y_tr = x, y
    else:
        n_val = int(round(validation_fraction * len(x)))
        if validation_fraction > 0 and (n_val < 1 or n_val >= len(x)):
            raise InputError(
                f"validation_fraction={validation_fraction} of {len(x)} rows leaves an empty "
                "training or validation set; use more data or validation_fraction=0"
            )
        perm = torch.randperm(len(x), generator=gen).to(device)
        x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
        x_tr, y_tr = x[perm[n_val:]], y[perm[n_val:]]
    has_val = len(x_val) > 0

    standardize_fn = getattr(model, "standardize", None)
    already = bool(getattr(model, "standardized", torch.tensor(False)))
    if standardize and callable(standardize_fn) and not already:
        standardize_fn(x_tr, y_tr)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()
    best_state = copy.deepcopy(model.state_dict())
    since_best = since_lr_drop = 0
    bad_in_a_row = 0
    start = time.perf_counter()
    n_tr = len(x_tr)
    epochs = range(max_epochs)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc="fit", unit="epoch", leave=False)
        epochs = bar
    try:
        for epoch in epochs:
            model.train()
            order = torch.randperm(n_tr, generator=gen).to(device)
            total, seen = 0.0, 0
            for i in range(0, n_tr, batch_size):
                idx = order[i : i + batch_size]
                loss = _nll(model, x_tr[idx], y_tr[idx]).mean()
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad_in_a_row += 1
                else:
                    loss.backward()
                    norm = (
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                        if clip_grad_norm is not None
                        else torch.nn.utils.get_total_norm(
                            [p.grad for p in model.parameters() if p.grad is not None]
                        )
                    )
                    if torch.isfinite(norm):
                        opt.step()
                        bad_in_a_row = 0
                        total += loss.item() * len(idx)
                        seen += len(idx)
                    else:
                        bad_in_a_row += 1
                if bad_in_a_row:
                    history.skipped_steps += 1
                end_of_epoch = i + batch_size >= n_tr
                if bad_in_a_row >= 20 or (end_of_epoch and seen == 0):
                    model.load_state_dict(best_state)
                    raise TrainingError(
                        f"the loss or its gradient was not finite for {bad_in_a_row} steps "
                        f"in a row (epoch {epoch}); the model was restored to its best "
                        "state. Lower lr, raise min_scale, or check the data for outliers."
                    )
            train_nll = total / seen if seen else math.nan
            history.train_nll.append(train_nll)
            history.lr.append(opt.param_groups[0]["lr"])
            model.eval()
            score = _mean_nll(model, x_val, y_val) if has_val else train_nll
            if has_val:
                history.val_nll.append(score)
            if score < history.best_val_nll:
                history.best_val_nll, history.best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
                since_best = since_lr_drop = 0
            else:
                since_best += 1
                since_lr_drop += 1
            if since_lr_drop >= lr_patience:
                for group in opt.param_groups:
                    group["lr"] *= lr_factor
                since_lr_drop = 0
            if bar is not None:
                bar.set_postfix(train=f"{train_nll:.4f}", val=f"{score:.4f}")
            if callback is not None and callback(epoch, history):
                break
            if since_best >= patience:
                history.stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(best_state)
    model.eval()
    history.time_s = time.perf_counter() - start
    return history
