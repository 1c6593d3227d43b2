"""``fit``: the maximum-likelihood training loop, and the ``History`` it returns.

The loop: a validation split carved from the training rows; AdamW with a short linear
warm-up and a cosine decay; an exponential moving average (EMA) of the weights, which is what
is validated and returned; gradient clipping; data-driven initialisation of the mixture head;
optional noise regularisation, RNADE gradient scaling and re-seeding of dead components; a
guard that skips non-finite steps, rolls back and lowers the learning rate, and stops with a
precise error if that keeps happening; atomic checkpoints and exact resumption. Losses are
averaged over the samples actually seen, in nats per sample, in the user's units of ``y``.

The data is either in memory (``x``, ``y``) or streamed from files (a
:class:`~torchmdn.streaming.TableSource`); either way training can run data parallel on
several processes (:mod:`torchmdn.distributed`), with every decision shared by all ranks.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .distributed import Group, local_slice, process_group
from .errors import InputError, TrainingError
from .streaming import Scan, TableSource

__all__ = ["fit", "History", "as_tensor_2d"]

_BAD_STEPS_BEFORE_ROLLBACK = 3
_ROLLBACKS_BEFORE_GIVING_UP = 4
_DEAD_SHARE = 1e-3  # a component explaining < 0.1% of the rows counts as dead


@dataclass
class History:
    """What happened during :func:`fit`.

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

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_nll)


def as_tensor_2d(
    name: str, value: Any, dtype: torch.dtype, device: torch.device | str | None = None
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
                "Convert or drop non-numeric columns (and columns of mixed types) first."
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


def _nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-row negative log-likelihood; uses ``model.log_prob(x, y)`` when the model has it."""
    log_prob = getattr(model, "log_prob", None)
    return -(log_prob(x, y) if callable(log_prob) else model(x).log_prob(y))


class _NLL(nn.Module):
    """Per-row NLL as a module, so the whole loss runs inside DDP's ``forward`` (DDP only
    synchronises gradients of computations that went through its forward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return _nll(self.model, x, y)


@torch.no_grad()
def _sum_nll(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(x), chunk):
        total += _nll(model, x[i : i + chunk], y[i : i + chunk]).sum().item()
    return total


def _head(model: nn.Module) -> Any:
    """The model's MDNHead, if it is an MDN (duck-typed: has ``head.component_rows``)."""
    head = getattr(model, "head", None)
    return head if callable(getattr(head, "component_rows", None)) else None


@torch.no_grad()
def _shares(model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
    """Each component's mean responsibility on ``(x, y)``, or None for non-mixture models."""
    if callable(getattr(model, "standardized_forward", None)):
        dist, target = model.standardized_forward(x), (y - model.y_loc) / model.y_scale
    else:
        dist, target = model(x), y
    joint = getattr(dist, "joint_log_prob", None)
    if not callable(joint):
        return None
    return torch.softmax(joint(target), -1).mean(0)


def _diagnose(model: nn.Module, xb: Tensor, yb: Tensor, rows: Tensor) -> str:
    """Say which rows give a non-finite loss and which parameter blocks broke."""
    parts = []
    with torch.no_grad():
        per_row = _nll(model, xb, yb)
    bad_rows = rows[~torch.isfinite(per_row)].tolist()
    if bad_rows:
        parts.append(f"non-finite loss on training rows {bad_rows[:10]}")
    head = _head(model)
    head_params = (head.linear.weight, head.linear.bias) if head is not None else ()
    blocks: dict[str, bool] = {}
    for name, p in model.named_parameters():
        for label, t in (("value", p), ("gradient", p.grad)):
            if t is None or torch.isfinite(t).all():
                continue
            if any(p is q for q in head_params):
                n, d = head.n_components, head.out_features
                scale_name = "factor" if head.covariance == "full" else "scales"
                bounds = {
                    "mixture weights": (0, n),
                    "means": (n, n + n * d),
                    scale_name: (n + n * d, None),
                }
                for block, (lo, hi) in bounds.items():
                    if not torch.isfinite(t[lo:hi]).all():
                        blocks[f"{block} ({label})"] = True
            else:
                blocks[f"{name} ({label})"] = True
    if blocks:
        parts.append("non-finite " + ", ".join(blocks))
    return "; ".join(parts) or "non-finite gradient norm"


def _fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _flat(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def _unflat(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def _opt_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {f"{i}/{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, sd["param_groups"]


def _load_opt_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def fit(
    model: nn.Module,
    x: Any,
    y: Any = None,
    *,
    max_epochs: int = 300,
    batch_size: int = 128,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.1,
    validation_data: tuple[Any, Any] | None = None,
    patience: int | None = None,
    warmup_fraction: float = 0.05,
    ema_decay: float = 0.99,
    clip_grad_norm: float | None = 10.0,
    clip_grad_value: float | None = None,
    mean_grad_scaling: bool = False,
    noise_x: float = 0.0,
    noise_y: float = 0.0,
    initialize: bool = True,
    reseed_dead: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: str | Path | None = None,
    standardize: bool = True,
    progress: bool = True,
    random_state: int | None = None,
    callback: Callable[[int, History], bool | None] | None = None,
    distributed: bool | None = None,
) -> History:
    """Train ``model`` by maximum likelihood on ``(x, y)`` and return its :class:`History`.

    Args:
        model: a module whose ``forward(x)`` returns a distribution over ``y`` (an
            :class:`~torchmdn.MDN` or any module returning a ``torch.distributions`` object).
        x, y: tensors or array-likes (NumPy, pandas) with one row per sample; 1-d means one
            column. Or, for data larger than memory, a :class:`~torchmdn.TableSource` as
            ``x`` and no ``y``: then the normalisers, the head's initialisation and the
            validation set come from one streaming pass and bounded samples, and batches are
            shuffled within a bounded buffer (see :mod:`torchmdn.streaming`).
        max_epochs: passes over the training rows (the learning-rate schedule spans them).
        batch_size: samples per optimiser step.
        lr, weight_decay: peak AdamW learning rate and decoupled weight decay.
        validation_fraction: share of rows held out to pick the best epoch (0 for none);
            ignored when ``validation_data`` is given.
        patience: stop after this many epochs without a better validation NLL (``None``:
            run all epochs; the best epoch is restored either way).
        warmup_fraction: share of the steps with a linear warm-up; then cosine decay to 0.
        ema_decay: decay of the exponential moving average of the weights that is validated
            and returned (0: use the raw weights).
        clip_grad_norm, clip_grad_value: clip the gradient's global norm / each entry
            (``None``: off).
        mean_grad_scaling: multiply the gradient reaching each component mean by that
            component's standard deviation (RNADE; Uria, Murray & Larochelle 2013).
        noise_x, noise_y: standard deviation of fresh Gaussian noise added to standardised
            x and y in every batch (noise regularisation, Rothfuss et al. 2019).
        initialize: start an MDN's head at the unconditional mixture fit of y (k-means).
        reseed_dead: move components that explain almost no rows onto badly explained rows
            (checked every 5 epochs during the first half of training).
        checkpoint, checkpoint_every: write a checkpoint to this path every N epochs
            (atomically: temp file + rename) and at the end.
        resume: continue from a checkpoint written by a run with the same data and
            settings; the result equals that of an uninterrupted run.
        standardize: set an MDN's normalisers from the training rows if not already set.
        progress: show a progress bar (only when stderr is a terminal).
        random_state: seed of the split, batch order, noise and initialisation; ``None``
            picks a fresh one. Uses a local ``torch.Generator``: global state is untouched.
        callback: called as ``callback(epoch, history)`` after each epoch; returning
            ``True`` stops training (under data parallelism rank 0's answer counts).
        distributed: train data parallel with DistributedDataParallel, one process per
            replica (gloo on CPU, NCCL on CUDA): ``True``; ``False``: this process alone;
            ``None`` (default): data parallel when launched by ``torchrun`` with several
            processes or inside an initialised process group. A process group that ``fit``
            starts it also destroys. Every rank passes the same data and ``random_state``;
            each trains on a contiguous share of every global batch of ``batch_size`` rows,
            so the result equals the one-process run up to floating-point reduction order
            (streamed data: each rank reads its own share of the chunks, so batches differ).
            Only rank 0 writes checkpoints and shows progress.

    Returns:
        The :class:`History`; the model is left in its best state, in eval mode.

    Raises:
        InputError: bad data or settings, or a checkpoint written for other data/settings.
        TrainingError: the loss stayed non-finite after repeated roll-backs; the message
            names the parameter blocks and training rows involved.
    """
    for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size),
                        ("checkpoint_every", checkpoint_every)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1; got {value!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be None or an integer >= 1; got {patience!r}")
    for name, value, lo, hi in (("lr", lr, 0, math.inf), ("weight_decay", weight_decay, 0, math.inf),
                                ("noise_x", noise_x, 0, math.inf), ("noise_y", noise_y, 0, math.inf),
                                ("ema_decay", ema_decay, 0, 1), ("warmup_fraction", warmup_fraction, 0, 1),
                                ("validation_fraction", validation_fraction, 0, 1)):  # fmt: skip
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (lo <= value < hi) or (name == "lr" and value == 0):
            raise InputError(f"{name} must be a number in [{lo}, {hi}); got {value!r}")
    for name, value in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise InputError(f"{name} must be None or a positive number; got {value!r}")
    params = list(model.parameters())
    if not params:
        raise InputError("the model has no parameters to train")
    dtype, device = params[0].dtype, params[0].device
    streamed = isinstance(x, TableSource)
    if streamed and y is not None:
        raise InputError("with a TableSource as x, pass no y: the source names the targets")
    if not streamed:
        if y is None:
            raise InputError("y is missing: pass x and y, or a TableSource as x")
        x, y = as_tensor_2d("x", x, dtype, device), as_tensor_2d("y", y, dtype, device)
        if len(x) != len(y):
            raise InputError(
                f"x and y must have the same number of rows; got {len(x)} and {len(y)}"
            )

    settings = {
        "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "validation_fraction": validation_fraction, "warmup_fraction": warmup_fraction,
        "ema_decay": ema_decay, "clip_grad_norm": clip_grad_norm, "clip_grad_value": clip_grad_value,
        "mean_grad_scaling": mean_grad_scaling, "noise_x": noise_x, "noise_y": noise_y,
        "initialize": initialize, "reseed_dead": reseed_dead, "standardize": standardize,
    }  # fmt: skip
    ckpt_tensors: dict[str, Tensor] = {}
    ckpt: dict[str, Any] = {}
    if resume is not None:
        from .io import load_checkpoint

        ckpt_tensors, ckpt = load_checkpoint(resume)
        random_state = ckpt["seed"]
    seed = torch.Generator().seed() if random_state is None else int(random_state)
    gen = torch.Generator().manual_seed(seed)

    with process_group(distributed, device) as group:
        if len(set(group.gather(seed))) > 1:
            raise InputError(
                "distributed training needs the same random_state on every process; pass one"
            )
        # ---- the data: the split only depends on the seed (reproduced exactly on resume)
        val_given = None
        if validation_data is not None:
            val_given = (
                as_tensor_2d("validation x", validation_data[0], dtype, device),
                as_tensor_2d("validation y", validation_data[1], dtype, device),
            )
        if streamed:
            fraction = 0.0 if val_given else validation_fraction
            data: _InMemory | Scan = Scan(x, fraction, seed, group, dtype, device)
        else:
            data = _InMemory(x, y, val_given, validation_fraction, gen, group)
        x_val, y_val = val_given or data.validation
        x_fit, y_fit = data.sample
        has_val = len(x_val) > 0
        n_tr = data.n_train
        fingerprint = data.fingerprint()
        if streamed and val_given is not None:
            fingerprint += _fingerprint(*val_given)

        # ---- model state: fresh (standardise + initialise) or resumed
        head = _head(model)
        if resume is not None:
            if ckpt.get("fingerprint") != fingerprint:
                raise InputError(
                    f"{resume} was written for other training data; pass the same x and y"
                )
            changed = [k for k, v in settings.items() if ckpt["settings"].get(k) != v]
            if changed:
                raise InputError(
                    f"{resume} was written with other settings: {changed} differ "
                    f"(checkpoint: {[ckpt['settings'].get(k) for k in changed]}); pass the same ones"
                )
            model.load_state_dict(_unflat("model", ckpt_tensors))
        else:
            already = bool(getattr(model, "standardized", torch.tensor(True)))
            if standardize and callable(getattr(model, "standardize", None)) and not already:
                data.standardize(model)
                if initialize and callable(getattr(model, "initialize", None)):
                    model.initialize(x_fit, y_fit, generator=gen)

        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
        ema_model = copy.deepcopy(model) if ema_decay > 0 else model
        steps_per_epoch = math.ceil(n_tr / batch_size)
        total_steps = max_epochs * steps_per_epoch
        warm = max(1, int(warmup_fraction * total_steps))
        history = History()
        step, start_epoch, since_best, lr_mult = 0, 0, 0, 1.0
        best_state = copy.deepcopy(ema_model.state_dict())
        if resume is not None:
            ema_model.load_state_dict(_unflat("ema", ckpt_tensors))
            best_state = _unflat("best", ckpt_tensors)
            _load_opt_state(opt, _unflat("opt", ckpt_tensors), ckpt["opt_groups"])
            gen.set_state(ckpt_tensors["rng"])
            saved = ckpt["history"]
            history = History(**{f.name: saved[f.name] for f in fields(History) if f.name in saved})
            step, start_epoch, since_best, lr_mult = (
                ckpt[k] for k in ("step", "epoch", "since_best", "lr_mult")
            )
        history.time_s = 0.0
        ema_params = list(ema_model.parameters()) if ema_model is not model else []
        # DDP synchronises gradients of what runs through its forward: the whole NLL does
        net = group.wrap(_NLL(model)) if group.world > 1 else partial(_nll, model)

        def lr_at(s: int) -> float:
            frac = (
                (s + 1) / warm
                if s < warm
                else 0.5
                * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total_steps - warm))))
            )
            return lr * lr_mult * frac

        def snapshot() -> dict[str, Any]:
            return {
                "model": copy.deepcopy(model.state_dict()),
                "ema": copy.deepcopy(ema_model.state_dict()),
                "opt": copy.deepcopy(opt.state_dict()),
            }

        def write_checkpoint(next_epoch: int) -> None:
            from .io import save_checkpoint

            opt_tensors, groups = _opt_state(opt)
            tensors = {
                **_flat("model", model.state_dict()),
                **_flat("ema", ema_model.state_dict()),
                **_flat("best", best_state),
                **_flat("opt", opt_tensors),
                "rng": gen.get_state(),
            }
            state = {
                "seed": seed, "epoch": next_epoch, "step": step, "since_best": since_best,
                "lr_mult": lr_mult, "history": asdict(history), "opt_groups": groups,
                "settings": settings, "fingerprint": fingerprint,
            }  # fmt: skip
            save_checkpoint(checkpoint, tensors, state)

        def score(x_s: Tensor, y_s: Tensor) -> float:
            """Mean NLL over all ranks' shares; rank 0's number decides everywhere."""
            mine = local_slice(len(x_s), group)
            total, n = group.sum(_sum_nll(ema_model, x_s[mine], y_s[mine]), len(x_s[mine]))
            return group.from_main(total / n)

        noisy = noise_x > 0 or noise_y > 0
        if noisy:
            n_fit = len(x_fit)
            sx = getattr(model, "x_scale", x_fit.std(0) if n_fit > 1 else torch.ones_like(x_fit[0]))
            sy = getattr(model, "y_scale", y_fit.std(0) if n_fit > 1 else torch.ones_like(y_fit[0]))
        scaled_heads = [m for m in model.modules() if hasattr(m, "mean_grad_scaling")]
        for m in scaled_heads:
            m.mean_grad_scaling = mean_grad_scaling
        good = snapshot()
        bad_in_a_row = rollbacks_since_good = good_steps = 0
        diagnosis = ""
        started = time.perf_counter()
        bar = None
        if progress and group.is_main and sys.stderr.isatty() and start_epoch < max_epochs:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_epochs, initial=start_epoch, desc="fit", unit="epoch", leave=False)
        try:
            for epoch in range(start_epoch, max_epochs):
                model.train()
                total, seen = 0.0, 0
                for xb, yb, rows, (noise_gen, n_draw, mine) in data.batches(epoch, batch_size, gen):
                    if noisy:  # drawn for the whole global batch: the same on every rank
                        ex = torch.randn((n_draw, xb.shape[1]), generator=noise_gen)[mine]
                        ey = torch.randn((n_draw, yb.shape[1]), generator=noise_gen)[mine]
                        xb, yb = xb + noise_x * sx * ex.to(xb), yb + noise_y * sy * ey.to(yb)
                    for group_ in opt.param_groups:
                        group_["lr"] = lr_at(step)
                    opt.zero_grad(set_to_none=True)
                    # a rank without rows in this (short) batch still joins DDP's backward
                    stub = len(xb) == 0
                    nll = net(x_fit[:1], y_fit[:1]) * 0.0 if stub else net(xb, yb)
                    local = nll.sum()
                    n_batch, n_bad = group.sum(len(rows), not bool(torch.isfinite(local)))
                    ok = n_bad == 0
                    if ok:
                        # DDP averages gradients over ranks: weight so the result is the
                        # gradient of the mean NLL over the whole global batch
                        (local * (group.world / n_batch)).backward()
                        if clip_grad_value is not None:
                            torch.nn.utils.clip_grad_value_(params, clip_grad_value)
                        grads = [p.grad for p in params if p.grad is not None]
                        norm = (
                            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                            if clip_grad_norm is not None
                            else torch.nn.utils.get_total_norm(grads)
                        )
                        ok = group.sum(not bool(torch.isfinite(norm)))[0] == 0
                    if ok:
                        opt.step()
                        step += 1
                        good_steps += 1
                        if ema_params:
                            with torch.no_grad():
                                torch._foreach_lerp_(ema_params, params, 1 - ema_decay)
                        bad_in_a_row = 0
                        total += local.item()
                        seen += len(rows)
                        continue
                    # ---- the guard: skip; after a few bad steps roll back and lower the lr
                    history.skipped_steps += 1
                    bad_in_a_row += 1
                    if not stub:
                        diagnosis = _diagnose(model, xb, yb, rows)
                    opt.zero_grad(set_to_none=True)
                    if bad_in_a_row >= _BAD_STEPS_BEFORE_ROLLBACK:
                        rollbacks_since_good += 1
                        if rollbacks_since_good > _ROLLBACKS_BEFORE_GIVING_UP:
                            raise TrainingError(
                                f"training stopped at epoch {epoch}: {history.skipped_steps} steps had a "
                                f"non-finite loss or gradient even after {_ROLLBACKS_BEFORE_GIVING_UP} "
                                f"roll-backs with lower learning rates ({diagnosis}). The model holds "
                                "its last good state. Check those rows, scale the data, or raise min_scale."
                            )
                        model.load_state_dict(good["model"])
                        ema_model.load_state_dict(good["ema"])
                        opt.load_state_dict(good["opt"])
                        lr_mult *= 0.5
                        history.rollbacks += 1
                        bad_in_a_row = 0
                total, seen = group.sum(total, seen)
                history.train_nll.append(total / seen if seen else math.nan)
                history.lr.append(lr_at(max(step - 1, 0)))
                finite = all(bool(torch.isfinite(p).all()) for p in params)
                if seen and finite:
                    good, rollbacks_since_good = snapshot(), 0

                # ---- collapse: track responsibility shares, re-seed dead components
                sub = torch.randperm(len(x_fit), generator=gen)[:512].to(device)
                model.eval()
                shares = _shares(model, x_fit[sub], y_fit[sub])
                if shares is not None:
                    ent = -(shares * shares.clamp_min(1e-12).log()).sum().item()
                    history.effective_components.append(math.exp(ent))
                    dead = torch.nonzero(shares < _DEAD_SHARE).flatten().tolist()
                    if (
                        reseed_dead
                        and head is not None
                        and dead
                        and epoch % 5 == 4
                        and epoch < max_epochs // 2
                    ):
                        _reseed(model, head, opt, dead, x_fit[sub], y_fit[sub])
                        if ema_model is not model:  # the average restarts there too
                            ema_head = _head(ema_model)
                            with torch.no_grad():
                                for k in dead:
                                    rows = head.component_rows(k)
                                    ema_head.linear.weight[rows] = head.linear.weight[rows]
                                    ema_head.linear.bias[rows] = head.linear.bias[rows]
                        history.reseeded += len(dead)

                ema_model.eval()
                value = score(x_val, y_val) if has_val else score(x_fit, y_fit)
                if has_val:
                    history.val_nll.append(value)
                if value < history.best_val_nll:
                    history.best_val_nll, history.best_epoch = value, epoch
                    best_state = copy.deepcopy(ema_model.state_dict())
                    since_best = 0
                else:
                    since_best += 1
                stop = (callback is not None and bool(callback(epoch, history))) or (
                    patience is not None and since_best >= patience
                )
                stop = bool(group.from_main(stop))
                history.stopped_early = patience is not None and since_best >= patience
                if (
                    checkpoint is not None
                    and group.is_main
                    and ((epoch + 1) % checkpoint_every == 0 or stop or epoch + 1 == max_epochs)
                ):
                    write_checkpoint(epoch + 1)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(train=f"{history.train_nll[-1]:.4f}", val=f"{value:.4f}")
                if stop:
                    break
            if good_steps == 0 and max_epochs > start_epoch:
                raise TrainingError(
                    f"no training step had a finite loss and gradient ({diagnosis}); "
                    "check the data for extreme values, scale it, or lower lr"
                )
        finally:
            if bar is not None:
                bar.close()
            if group.world > 1:
                # free DDP (its reducer holds the process group and hooks on the parameters)
                # now, while the group still exists: freed later by the garbage collector,
                # its teardown can block on a destroyed group
                net = None
                gc.collect()
            for m in scaled_heads:
                m.mean_grad_scaling = False
            if not all(bool(torch.isfinite(p).all()) for p in params):
                model.load_state_dict(good["model"])
    model.load_state_dict(best_state)
    model.eval()
    history.time_s = time.perf_counter() - started
    return history


class _InMemory:
    """Training rows held in memory (by every rank), and the validation rows split off them.

    Each epoch draws one permutation from the seeded generator, the same on every rank, and
    cuts it into global batches of ``batch_size``; rank ``r`` of ``W`` takes the ``r``-th
    contiguous share of each. So the union of the ranks' rows at every step is exactly the
    one-process batch, and with the loss weighted by ``W / len(global batch)`` DDP's averaged
    gradient is the one-process gradient: results agree up to floating-point reduction order.
    (A ``DistributedSampler`` would give each rank a strided subset of the permutation, padded
    to equal length, so batch composition, and so the result, would depend on ``W``.)
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        validation: tuple[Tensor, Tensor] | None,
        fraction: float,
        gen: torch.Generator,
        group: Group,
    ):
        self.group, device = group, x.device
        self._xy = (x, y)
        if validation is not None:
            self.x, self.y, self.rows = x, y, torch.arange(len(x))
            self.validation = validation
        else:
            n_val = int(round(fraction * len(x)))
            if fraction > 0 and (n_val < 1 or n_val >= len(x)):
                raise InputError(
                    f"validation_fraction={fraction} of {len(x)} rows leaves an empty "
                    "training or validation set; use more data or validation_fraction=0"
                )
            perm = torch.randperm(len(x), generator=gen)
            self.rows = perm[n_val:]
            held = perm[:n_val].to(device)
            self.validation = (x[held], y[held])
            self.x, self.y = x[self.rows.to(device)], y[self.rows.to(device)]
        self.n_train = len(self.x)
        self.sample = (self.x, self.y)

    def fingerprint(self) -> str:
        return _fingerprint(*self._xy, *self.validation)

    def standardize(self, model: nn.Module) -> None:
        model.standardize(self.x, self.y)

    def batches(
        self, epoch: int, batch_size: int, gen: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, tuple[torch.Generator, int, slice]]]:
        """This rank's share of each global batch: ``(x, y, rows, (gen, global rows, share))``."""
        order = torch.randperm(self.n_train, generator=gen)
        for i in range(0, self.n_train, batch_size):
            idx = order[i : i + batch_size]
            mine = local_slice(len(idx), self.group)
            local = idx[mine].to(self.x.device)
            yield self.x[local], self.y[local], self.rows[idx[mine]], (gen, len(idx), mine)


@torch.no_grad()
def _reseed(
    model: nn.Module, head: Any, opt: torch.optim.Optimizer, dead: list[int], x: Tensor, y: Tensor
) -> None:
    """Move dead components onto the worst-explained rows; reset their optimiser state."""
    dist = model.standardized_forward(x)
    z = (y - model.y_loc) / model.y_scale
    worst = dist.log_prob(z).argsort()[: len(dead)]
    alive = [k for k in range(head.n_components) if k not in dead]
    scale = dist.stddev.median(0).values / max(1, len(alive)) ** 0.5
    logit = head.linear.bias[alive].mean().item() if alive else 0.0
    for k, row in zip(dead, worst.tolist(), strict=False):
        head.set_component(k, z[row], scale, logit)
        rows = head.component_rows(k)
        for p in (head.linear.weight, head.linear.bias):
            for buf in opt.state.get(p, {}).values():
                if isinstance(buf, Tensor) and buf.shape == p.shape:
                    buf[rows] = 0.0
