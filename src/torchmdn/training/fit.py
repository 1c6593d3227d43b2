"""``fit``: the maximum-likelihood training loop, and the ``History`` it returns.

The loop: a validation split carved from the training rows; AdamW with a short linear
warm-up and a cosine decay; an exponential moving average (EMA) of the weights, which is what
is validated and returned; gradient clipping; data-driven initialisation of the mixture head;
optional noise regularisation, RNADE gradient scaling and re-seeding of dead components; a
guard that skips non-finite steps, rolls back and lowers the learning rate, and stops with a
precise error if that keeps happening; atomic checkpoints and exact resumption. Losses are
averaged over the samples actually seen, in nats per sample, in the user's units of ``y``.

The data is either in memory (``x``, ``y``) or streamed from files (a
:class:`~torchmdn.training.streaming.TableSource`); either way training can run data parallel on
several processes (:mod:`torchmdn.training.distributed`), with every decision shared by all ranks.

This module checks the arguments, prepares the data and the validation split, and starts or
resumes a run; the epochs themselves are in :mod:`torchmdn.training.loop`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError, ModelFileError, TorchMDNError
from ..nn.mdn import STARTS
from .capacity import select_capacity, wants_selection
from .distributed import Group, local_slice, process_group
from .history import History
from .length import plan as plan_epochs
from .length import validation_rows
from .loop import PRECISIONS, Run, Settings
from .protocol import ConditionalDensity, TrainableMixture
from .streaming import Scan, TableSource

__all__ = ["fit", "History", "as_tensor_2d"]


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
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # pandas' copy-on-write views: torch would warn
            arr = arr.copy()
        t = torch.from_numpy(arr)
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


def fit(
    model: nn.Module,
    x: Any,
    y: Any = None,
    *,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.1,
    validation_data: tuple[Any, Any] | None = None,
    patience: int | str | None = "auto",
    warmup_fraction: float = 0.05,
    ema_decay: float = 0.99,
    clip_grad_norm: float | None = 10.0,
    clip_grad_value: float | None = None,
    mean_grad_scaling: bool = False,
    noise_x: float = 0.0,
    noise_y: float = 0.0,
    initialize: bool | str = True,
    reseed_dead: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: str | Path | None = None,
    standardize: bool = True,
    progress: bool = True,
    random_state: int | None = None,
    callback: Callable[[int, History], bool | None] | None = None,
    distributed: bool | None = None,
    compile: bool = False,
    precision: str = "float32",
) -> History:
    """Train ``model`` by maximum likelihood on ``(x, y)`` and return its :class:`History`.

    Args:
        model: a module whose ``forward(x)`` returns a distribution over ``y`` (an
            :class:`~torchmdn.MDN` or any module returning a ``torch.distributions`` object).
        x, y: tensors or array-likes (NumPy, pandas) with one row per sample; 1-d means one
            column. Any real dtype is cast to the model's dtype (that of its parameters). Or, for data larger than memory, a :class:`~torchmdn.TableSource` as
            ``x`` and no ``y``: then the normalisers, the head's initialisation and the
            validation set come from one streaming pass and bounded samples, and batches are
            shuffled within a bounded buffer (see :mod:`torchmdn.training.streaming`).
        max_epochs, max_steps, patience: how long to train, by the rule that ``fit``, the
            ``torchmdn fit`` command and :class:`~torchmdn.MDNRegressor` share
            (:mod:`torchmdn.training.length`). By default (all ``None`` / ``"auto"``):
            ``clip(2.5 N, 3000, 20000)`` optimiser steps for ``N`` training rows, as epochs
            ``ceil(steps / steps_per_epoch)`` (the learning-rate schedule spans them), with
            early stopping once the validation NLL has not improved for
            ``clip(ceil(0.2 epochs), 20, 100)`` epochs. ``max_steps`` sets the steps,
            ``max_epochs`` the epochs directly (it wins over ``max_steps``); ``patience`` is
            ``"auto"``, ``None`` (run every epoch) or a number of epochs. The best epoch is
            restored either way.
        batch_size: samples per optimiser step.
        lr, weight_decay: peak AdamW learning rate and decoupled weight decay.
        validation_fraction: share of rows held out to pick the best epoch (0 for none);
            ignored when ``validation_data`` is given.
        warmup_fraction: share of the steps with a linear warm-up; then cosine decay to 0.
        ema_decay: decay of the exponential moving average of the weights that is validated
            and returned (0: use the raw weights).
        clip_grad_norm, clip_grad_value: clip the gradient's global norm / each entry
            (``None``: off).
        mean_grad_scaling: multiply the gradient reaching each component mean by that
            component's standard deviation (RNADE; Uria, Murray & Larochelle 2013).
        noise_x, noise_y: standard deviation of fresh Gaussian noise added to standardised
            x and y in every batch (noise regularisation, Rothfuss et al. 2019).
        initialize: start an MDN's head at the unconditional mixture fit of y: ``True`` or
            ``"clusters"`` puts its components on k-means clusters of y, ``"overlapping"``
            all at y's median with several widths (see :meth:`~torchmdn.MDNHead.initialize`);
            ``False``: leave the head as it is.
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
        compile: run the model and its loss under ``torch.compile`` (the batch dimension
            dynamic, so the last short batch does not recompile). Worth it on a GPU for
            models larger than a few layers; the first epoch pays the compilation.
        precision: ``"float32"`` or ``"bf16"``: the forward pass under
            ``torch.autocast(dtype=torch.bfloat16)`` on the model's device (the mixture
            likelihood itself stays float32; weights, optimiser and EMA stay float32).

    On a GPU the loop does not wait for the device after each step: losses are summed on
    the device and read once per epoch, and the guard against non-finite steps is read every
    few dozen steps; a stretch with a bad step is taken again step by step from its start,
    so the result is the same as checking every step.

    Returns:
        The :class:`History`; the model is left in its best state, in eval mode.

    Raises:
        InputError: bad data or settings, or a checkpoint written for other data/settings.
        ModelFileError: ``resume`` is not a checkpoint, or one written for another model.
        TrainingError: the loss stayed non-finite after repeated roll-backs; the message
            names the parameter blocks and training rows involved.
    """
    if wants_selection(model):  # n_components="auto": train candidates, keep the best
        kwargs = {k: v for k, v in locals().items() if k not in ("model", "x", "y")}
        return select_capacity(model, x, y, fit, kwargs)
    max_epochs, batch_size, checkpoint_every, patience = (
        _plain_int(v) for v in (max_epochs, batch_size, checkpoint_every, patience)
    )
    settings = Settings(
        max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        validation_fraction=validation_fraction, warmup_fraction=warmup_fraction,
        ema_decay=ema_decay, clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
        mean_grad_scaling=mean_grad_scaling, noise_x=noise_x, noise_y=noise_y,
        initialize=initialize, reseed_dead=reseed_dead, standardize=standardize,
        precision=precision,
    )  # fmt: skip
    _check_arguments(settings, checkpoint_every)
    plan_epochs(1, batch_size, max_epochs, max_steps, patience)  # checks them now
    if not isinstance(compile, bool):
        raise InputError(f"compile must be True or False; got {compile!r}")
    params = list(model.parameters())
    if not params:
        raise InputError("the model has no parameters to train")
    dtype, device = params[0].dtype, params[0].device
    x, y = _check_data(x, y, dtype, device)
    ckpt_tensors: dict[str, Tensor] = {}
    ckpt: dict[str, Any] = {}
    if resume is not None:
        from ..io import load_checkpoint

        ckpt_tensors, ckpt = load_checkpoint(resume)
        _check_state(resume, ckpt)
        random_state = ckpt["seed"]
    seed = torch.Generator().seed() if random_state is None else int(random_state)
    gen = _generator(device, seed)

    with process_group(distributed, device) as group:
        if len(set(group.gather(seed))) > 1:
            raise InputError(
                "distributed training needs the same random_state on every process; pass one"
            )
        data, validation, fingerprint = _prepare_data(
            x, y, validation_data, validation_fraction, seed, gen, group, dtype, device
        )
        epochs, patience = plan_epochs(data.n_train, batch_size, max_epochs, max_steps, patience)
        settings = replace(settings, max_epochs=epochs)
        if resume is not None:
            _check_checkpoint(resume, ckpt, fingerprint, settings, gen)
        else:
            _start_fresh(model, data, standardize, initialize, gen)
        run = Run(model, params, data, validation, group, gen, seed, settings, fingerprint)
        run.compile = compile
        if resume is not None:
            try:
                run.restore(resume, ckpt_tensors, ckpt)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
                if isinstance(err, TorchMDNError):
                    raise
                raise ModelFileError(
                    f"{resume}: the checkpoint's state is damaged ({err!r})"
                ) from None
        run.begin(progress)  # wraps the loss in DDP when data parallel
        try:
            run.train(patience, callback, checkpoint, checkpoint_every)
        finally:
            run.end()  # frees DDP while the process group still exists
    if run.tracks_best:
        model.load_state_dict(run.best_state)
    model.eval()
    run.history.time_s = time.perf_counter() - run.started
    return run.history


# ---------------------------------------------------------------------- the pieces of fit


def _plain_int(value: Any) -> Any:
    """A NumPy integer as a Python ``int`` (what JSON and the checks take); else unchanged."""
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_arguments(s: Settings, checkpoint_every: int) -> None:
    """Reject out-of-range numeric arguments of ``fit``, naming the argument and its value."""
    for name, value in (("batch_size", s.batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1; got {value!r}")
    for name, value, lo, hi in (("lr", s.lr, 0, math.inf), ("weight_decay", s.weight_decay, 0, math.inf),
                                ("noise_x", s.noise_x, 0, math.inf), ("noise_y", s.noise_y, 0, math.inf),
                                ("ema_decay", s.ema_decay, 0, 1), ("warmup_fraction", s.warmup_fraction, 0, 1),
                                ("validation_fraction", s.validation_fraction, 0, 1)):  # fmt: skip
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (lo <= value < hi) or (name == "lr" and value == 0):
            raise InputError(f"{name} must be a number in [{lo}, {hi}); got {value!r}")
    if s.precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}; got {s.precision!r}")
    if not isinstance(s.initialize, bool) and s.initialize not in STARTS:
        raise InputError(f"initialize must be True, False or one of {STARTS}; got {s.initialize!r}")
    for name, value in (
        ("clip_grad_norm", s.clip_grad_norm),
        ("clip_grad_value", s.clip_grad_value),
    ):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise InputError(f"{name} must be None or a positive number; got {value!r}")


def _check_data(x: Any, y: Any, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    """``(x, y)`` as finite 2-d tensors of equal length, or a TableSource ``x`` and no ``y``."""
    if isinstance(x, TableSource):
        if y is not None:
            raise InputError("with a TableSource as x, pass no y: the source names the targets")
        return x, y
    if y is None:
        raise InputError("y is missing: pass x and y, or a TableSource as x")
    x, y = as_tensor_2d("x", x, dtype, device), as_tensor_2d("y", y, dtype, device)
    if len(x) != len(y):
        raise InputError(f"x and y must have the same number of rows; got {len(x)} and {len(y)}")
    return x, y


def _check_validation(
    validation_data: Any, x: Any, y: Any, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``validation_data`` as ``(x, y)`` tensors with rows and columns matching the training data."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise InputError(
            "validation_data must be a pair (x_val, y_val); "
            f"got {type(validation_data).__name__}"
            + (f" of length {len(validation_data)}" if hasattr(validation_data, "__len__") else "")
        )
    vx = as_tensor_2d("validation x", validation_data[0], dtype, device)
    vy = as_tensor_2d("validation y", validation_data[1], dtype, device)
    if len(vx) != len(vy):  # (as_tensor_2d refuses zero rows)
        raise InputError(
            f"validation x and y must have the same number of rows; got {len(vx)} and {len(vy)}"
        )
    if not isinstance(x, TableSource):
        for name, got, want in (("x", vx, x), ("y", vy, y)):
            if got.shape[1] != want.shape[1]:
                raise InputError(
                    f"validation {name} has {got.shape[1]} columns but the training {name} has "
                    f"{want.shape[1]}; pass the same columns in the same order"
                )
    return vx, vy


def _prepare_data(
    x: Tensor | TableSource,
    y: Tensor | None,
    validation_data: tuple[Any, Any] | None,
    validation_fraction: float,
    seed: int,
    gen: torch.Generator,
    group: Group,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[_InMemory | Scan, tuple[Tensor, Tensor], str]:
    """The training rows, the validation rows ``(x, y)`` and a fingerprint of both.

    The split only depends on the seed, so a resumed run reproduces it exactly; the
    fingerprint lets a checkpoint refuse other data.
    """
    given = None
    if validation_data is not None:
        given = _check_validation(validation_data, x, y, dtype, device)
    if isinstance(x, TableSource):
        fraction = 0.0 if given else validation_fraction
        data: _InMemory | Scan = Scan(x, fraction, seed, group, dtype, device)
        fingerprint = data.fingerprint() + (_fingerprint(*given) if given else "")
    else:
        data = _InMemory(x, y, given, validation_fraction, gen, group)
        fingerprint = data.fingerprint()
    return data, given or data.validation, fingerprint


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """The run's random stream, on the data's device (batches are drawn where the data is,
    without host copies); a device without generators of its own gets a CPU one."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:
        return torch.Generator().manual_seed(seed)


_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "seed": (int,), "epoch": (int,), "step": (int,), "since_best": (int,),
    "lr_mult": (int, float), "history": (dict,), "opt_groups": (list,),
    "settings": (dict,), "fingerprint": (str,),
}  # fmt: skip


def _check_state(path: str | Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint state with missing fields or fields of the wrong type."""
    for key, types in _STATE_TYPES.items():
        value = state.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ModelFileError(
                f"{path}: the checkpoint's state field {key!r} is {str(value)[:40]!r}; "
                "the file is damaged"
            )
    if min(state["epoch"], state["step"], state["since_best"]) < 0:
        raise ModelFileError(f"{path}: the checkpoint's counters are negative; the file is damaged")


def _check_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    fingerprint: str,
    settings: Settings,
    gen: torch.Generator,
) -> None:
    """Refuse a checkpoint written for other data, with other settings or on another kind
    of device (random streams differ between devices)."""
    if state.get("fingerprint") != fingerprint:
        raise InputError(f"{path} was written for other training data; pass the same x and y")
    saved_device = state.get("device", "cpu")  # older checkpoints: CPU runs
    if saved_device != gen.device.type:
        raise InputError(
            f"{path} was written by a run on {saved_device}, this run is on {gen.device.type}: "
            f"the random streams differ between devices, so resume on {saved_device} "
            "(move the model there) or start afresh"
        )
    saved = state["settings"]
    # settings added since a checkpoint was written count as their defaults
    defaults = {"precision": "float32"}
    changed = [k for k, v in asdict(settings).items() if saved.get(k, defaults.get(k)) != v]
    if changed:
        raise InputError(
            f"{path} was written with other settings: {changed} differ "
            f"(checkpoint: {[saved.get(k) for k in changed]}); pass the same ones"
        )


def _start_fresh(
    model: nn.Module,
    data: _InMemory | Scan,
    standardize: bool,
    initialize: bool | str,
    gen: torch.Generator,
) -> None:
    """Set an MDN's normalisers from the training rows and start its head at the
    unconditional fit of y, unless the model was standardised already."""
    if not isinstance(model, ConditionalDensity) or bool(model.standardized) or not standardize:
        return
    data.standardize(model)
    if initialize is not False and isinstance(model, TrainableMixture):
        if initialize is True or initialize == "clusters":  # what every mixture model takes
            model.initialize(*data.sample, generator=gen)
        else:
            model.initialize(*data.sample, generator=gen, start=initialize)


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
            self.x, self.y, self.rows = x, y, torch.arange(len(x), device=device)
            self.validation = validation
        else:
            n_val = validation_rows(len(x), fraction)
            if fraction > 0 and (n_val < 1 or n_val >= len(x)):
                raise InputError(
                    f"validation_fraction={fraction} of {len(x)} rows leaves an empty "
                    "training or validation set; use more data or validation_fraction=0"
                )
            perm = torch.randperm(len(x), generator=gen, device=gen.device).to(device)
            self.rows = perm[n_val:]
            held = perm[:n_val]
            self.validation = (x[held], y[held])
            self.x, self.y = x[self.rows], y[self.rows]
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
        # drawn and cut on the data's device: no host copy per batch
        order = torch.randperm(self.n_train, generator=gen, device=gen.device).to(self.x.device)
        for i in range(0, self.n_train, batch_size):
            idx = order[i : i + batch_size]
            mine = local_slice(len(idx), self.group)
            local = idx[mine]
            yield self.x[local], self.y[local], self.rows[local], (gen, len(idx), mine)


def _fingerprint(*tensors: Tensor) -> str:
    """A hash of the tensors' shapes and values (checkpoints refuse other data)."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
