"""The training loop behind :func:`~torchmdn.fit`: one run's state, its steps and epochs.

:class:`Run` holds what a run changes (model, EMA of the weights, optimiser, learning-rate
schedule, counters, the best and the last good state) and what a checkpoint saves of it. Each
epoch: optimiser steps behind a guard that skips non-finite steps and rolls back; the
components' shares of responsibility (re-seeding dead ones); validation of the EMA and the
best state; early stopping. Under data parallelism every decision is taken from numbers
shared by all ranks (:mod:`torchmdn.training.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..errors import TrainingError
from ..nn.mdn import MDNHead
from .distributed import Group, local_slice
from .history import History, saved_history
from .protocol import ConditionalDensity, TrainableMixture, responsibilities
from .state import (
    copy_optimizer_state,
    copy_state,
    flat,
    load_optimizer_tensors,
    optimizer_tensors,
    saved_state,
    unflat,
)

__all__ = ["Data", "PRECISIONS", "Run", "Settings"]

_BAD_STEPS_BEFORE_ROLLBACK = 3
_ROLLBACKS_BEFORE_GIVING_UP = 4
#: the guard's last good state is taken at the end of an epoch once this many steps have
#: passed since the last one: every epoch on large data; on a few hundred rows (2 steps per
#: epoch) copying model, moving average and optimiser state every epoch cost ~13% of a fit
_SNAPSHOT_STEPS = 16
_DEAD_SHARE = 1e-3  # a component explaining < 0.1% of the rows counts as dead
#: optimiser steps between the host's reads of the NaN guard, per device type. The CPU has
#: no host to wait for: it checks every step before stepping. Elsewhere steps run unchecked
#: and a window in which some step was not finite is replayed checked, step by step, from
#: its start: the same result as checking every step, without a host round trip per step.
_CHECK_EVERY: dict[str, int] = {"cpu": 1}
_CHECK_EVERY_ELSEWHERE = 64
PRECISIONS = ("float32", "bf16")


@dataclass(frozen=True)
class Settings:
    """The settings of ``fit`` that shape the result; a checkpoint only resumes under equal ones."""

    max_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    validation_fraction: float
    warmup_fraction: float
    ema_decay: float
    clip_grad_norm: float | None
    clip_grad_value: float | None
    mean_grad_scaling: bool
    noise_x: float
    noise_y: float
    initialize: bool | str
    reseed_dead: bool
    standardize: bool
    precision: str = "float32"


class Data(Protocol):
    """The training rows as the loop sees them: in memory (``train._InMemory``) or streamed
    (:class:`~torchmdn.training.streaming.Scan`)."""

    n_train: int

    @property
    def sample(self) -> tuple[Tensor, Tensor]: ...

    def batches(
        self, epoch: int, batch_size: int, gen: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, tuple[torch.Generator, int, slice]]]: ...


class Run:
    """One call of ``fit``: the model, its EMA, the optimiser, the schedule and the counters.

    ``fit`` builds it, restores it from a checkpoint if asked (:meth:`restore`), then calls
    :meth:`begin`, :meth:`train` and, whatever happens, :meth:`end`.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        data: Data,
        validation: tuple[Tensor, Tensor],
        group: Group,
        gen: torch.Generator,
        seed: int,
        settings: Settings,
        fingerprint: str,
    ):
        s = self.settings = settings
        self.model, self.params, self.data, self.group, self.gen = model, params, data, group, gen
        self.seed, self.fingerprint = seed, fingerprint
        self.device = params[0].device
        self.head = model.head if isinstance(model, TrainableMixture) else None
        # a model may opt out of the per-epoch component tracking (the capacity ladder: its
        # ``head`` is one candidate's, not the model that will be installed)
        self.tracks_components = getattr(model, "tracks_components", True)
        self.x_val, self.y_val = validation
        self.x_fit, self.y_fit = data.sample
        # torch's fused AdamW (one kernel per step; on the CPU torch would otherwise loop over
        # the tensors in Python: 3.4x slower for an MLP's handful) where it exists
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        self.opt = torch.optim.AdamW(
            params,
            lr=s.lr,
            weight_decay=s.weight_decay,
            betas=(0.9, 0.99),
            **({"fused": True} if fused else {"foreach": True}),
        )
        self.ema_model = copy.deepcopy(model) if s.ema_decay > 0 else model
        self.ema_params = list(self.ema_model.parameters()) if self.ema_model is not model else []
        self.total_steps = s.max_epochs * math.ceil(data.n_train / s.batch_size)
        self.warm = max(1, int(s.warmup_fraction * self.total_steps))
        self.history = History()
        self.step, self.start_epoch, self.since_best, self.lr_mult = 0, 0, 0, 1.0
        self.best_state = copy_state(self.ema_model)
        # a model that keeps its own best states (the capacity ladder: one per head) is
        # neither copied at each better epoch nor restored at the end
        self.tracks_best = not getattr(model, "keeps_best_states", False)
        self.net: Callable[[Tensor, Tensor], Tensor] | None = None  # set by begin()
        self.check_every = _CHECK_EVERY.get(self.device.type, _CHECK_EVERY_ELSEWHERE)
        self.compile = False  # fit(compile=True) sets it before begin()

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: linear warm-up, then cosine decay to 0."""
        warm, total = self.warm, self.total_steps
        frac = (
            (step + 1) / warm
            if step < warm
            else 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        )
        return self.settings.lr * self.lr_mult * frac

    # ---- checkpoints: what save writes, restore reads back

    def save(self, path: str | Path, next_epoch: int) -> None:
        """Write a checkpoint from which training continues at ``next_epoch`` (rank 0 only)."""
        from ..io import save_checkpoint

        opt_tensors, groups = optimizer_tensors(self.opt)
        tensors = {
            **flat("model", self.model.state_dict()),
            **flat("ema", self.ema_model.state_dict()),
            **flat("best", self.best_state),
            **flat("opt", opt_tensors),
            "rng": self.gen.get_state(),
        }
        state = {
            "seed": self.seed, "epoch": next_epoch, "step": self.step,
            "since_best": self.since_best, "lr_mult": self.lr_mult,
            "history": asdict(self.history), "opt_groups": groups,
            "settings": asdict(self.settings), "fingerprint": self.fingerprint,
            "device": self.gen.device.type,
        }  # fmt: skip
        save_checkpoint(path, tensors, state)

    def restore(self, path: str | Path, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save` (already checked for its data
        and settings); a missing ``head.scale_floor`` (older checkpoints) is filled in."""
        self.model.load_state_dict(saved_state(path, self.model, tensors, "model"))
        self.ema_model.load_state_dict(saved_state(path, self.ema_model, tensors, "ema"))
        self.best_state = saved_state(path, self.model, tensors, "best")
        load_optimizer_tensors(self.opt, unflat("opt", tensors), state["opt_groups"])
        self.gen.set_state(tensors["rng"])
        self.history = saved_history(path, state["history"])
        self.step, self.start_epoch, self.since_best, self.lr_mult = (
            state[k] for k in ("step", "epoch", "since_best", "lr_mult")
        )

    # ---- the loop

    def begin(self, progress: bool) -> None:
        """Set up what the epochs share: the loss (under DDP when data parallel), noise
        scales, RNADE scaling, the guard's last good state, the clock and the progress bar."""
        s, model, group = self.settings, self.model, self.group
        self.history.time_s = 0.0
        # DDP synchronises gradients of what runs through its forward: the whole NLL does.
        # Reached through self.net only, so that end() can free it
        self.net = group.wrap(_NLL(model)) if group.world > 1 else partial(_nll, model)
        if self.compile:
            self.net = _compiled_loss(self.net)
        self.autocast = (
            partial(torch.autocast, self.device.type, torch.bfloat16)
            if s.precision == "bf16"
            else contextlib.nullcontext
        )
        self.noisy = s.noise_x > 0 or s.noise_y > 0
        if self.noisy:
            x_fit, y_fit = self.x_fit, self.y_fit
            one = len(x_fit) <= 1
            if isinstance(model, ConditionalDensity):
                self.sx, self.sy = model.x_scale, model.y_scale
            else:
                self.sx = torch.ones_like(x_fit[0]) if one else x_fit.std(0)
                self.sy = torch.ones_like(y_fit[0]) if one else y_fit.std(0)
        self.scaled_heads = [m for m in model.modules() if isinstance(m, MDNHead)]
        for m in self.scaled_heads:
            m.mean_grad_scaling = s.mean_grad_scaling
        self.good, self.good_at_step = self.snapshot(), self.step
        self.bad_in_a_row = self.rollbacks_since_good = self.good_steps = 0
        self.diagnosis = ""
        self.started = time.perf_counter()
        self.bar = None
        if progress and group.is_main and sys.stderr.isatty() and self.start_epoch < s.max_epochs:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=s.max_epochs, initial=self.start_epoch, desc="fit", unit="epoch", leave=False
            )

    def train(
        self,
        patience: int | None,
        callback: Callable[[int, History], bool | None] | None,
        checkpoint: str | Path | None,
        checkpoint_every: int,
    ) -> None:
        """The epochs, from ``start_epoch`` until ``max_epochs`` or a stop."""
        max_epochs = self.settings.max_epochs
        for epoch in range(self.start_epoch, max_epochs):
            self.train_epoch(epoch)
            self.watch_collapse(epoch)
            value = self.validate(epoch)
            stop = self.should_stop(epoch, patience, callback)
            due = (epoch + 1) % checkpoint_every == 0 or stop or epoch + 1 == max_epochs
            if checkpoint is not None and self.group.is_main and due:
                self.save(checkpoint, epoch + 1)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(train=f"{self.history.train_nll[-1]:.4f}", val=f"{value:.4f}")
            if stop:
                break
        if self.good_steps == 0 and max_epochs > self.start_epoch:
            raise TrainingError(
                f"no training step had a finite loss and gradient ({self.diagnosis}); "
                "check the data for extreme values, scale it, or lower lr"
            )
        _check_outcome(self.history, self.settings.lr)

    def end(self) -> None:
        """Clean up, whether training finished or raised: the progress bar, DDP (before the
        process group goes), RNADE scaling, and a non-finite model back to its last good state."""
        if self.bar is not None:
            self.bar.close()
        if self.group.world > 1:
            # free DDP (its reducer holds the process group and hooks on the parameters)
            # now, while the group still exists: freed later by the garbage collector,
            # its teardown can block on a destroyed group
            self.net = None
            gc.collect()
        for m in self.scaled_heads:
            m.mean_grad_scaling = False
        if not _all_finite(self.params):
            self.model.load_state_dict(self.good["model"])

    def train_epoch(self, epoch: int) -> None:
        """One pass over this rank's batches; records the epoch's mean training NLL and lr.

        The loss sum stays on the device (float64, in step order) and is read once, at the
        end; the NaN guard is read every ``check_every`` steps (see ``_CHECK_EVERY``).
        """
        s, history = self.settings, self.history
        self.model.train()
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.seen = 0
        window: list[tuple[Tensor, Tensor, Tensor, int]] = []
        batches = self.data.batches(epoch, s.batch_size, self.gen)
        for xb, yb, rows, (noise_gen, n_draw, mine) in batches:
            if self.noisy:  # drawn for the whole global batch: the same on every rank
                on = noise_gen.device
                ex = torch.randn((n_draw, xb.shape[1]), generator=noise_gen, device=on)[mine]
                ey = torch.randn((n_draw, yb.shape[1]), generator=noise_gen, device=on)[mine]
                xb = xb + s.noise_x * self.sx * ex.to(xb)
                yb = yb + s.noise_y * self.sy * ey.to(yb)
            if self.check_every == 1:
                self.checked_step(epoch, xb, yb, rows)
                continue
            if not window:
                self.window_start = self.bookkeeping()
            window.append((xb, yb, rows, n_draw))
            self.unchecked_step(xb, yb, rows, n_draw)
            if len(window) == self.check_every:
                self.check_window(epoch, window)
                window = []
        if window:
            self.check_window(epoch, window)
        total, seen = self.group.sum(self.total.item(), self.seen)
        history.train_nll.append(total / seen if seen else math.nan)
        history.lr.append(self.lr_at(max(self.step - 1, 0)))
        due = self.step - self.good_at_step >= _SNAPSHOT_STEPS
        if seen and due and _all_finite(self.params):
            self.good, self.rollbacks_since_good = self.snapshot(), 0
            self.good_at_step = self.step

    def checked_step(self, epoch: int, xb: Tensor, yb: Tensor, rows: Tensor) -> None:
        """One step behind the NaN guard, read before stepping."""
        loss = self.take_step(xb, yb, rows)
        if loss is None:
            self.skip_step(epoch, xb, yb, rows)
        else:
            self.total += loss
            self.seen += len(rows)

    def take_step(self, xb: Tensor, yb: Tensor, rows: Tensor) -> Tensor | None:
        """One optimiser step on this rank's share of a batch: the share's summed NLL (a
        float64 tensor), or ``None`` when the loss or gradient was not finite on some rank
        (no step taken)."""
        group = self.group
        self.opt.zero_grad(set_to_none=True)
        local = self.local_loss(xb, yb)
        n_batch, n_bad = group.sum(len(rows), not bool(torch.isfinite(local)))
        if n_bad != 0:
            return None
        norm = self.backward(local, group.world / n_batch)
        if group.sum(not bool(torch.isfinite(norm)))[0] != 0:
            return None
        self.apply_step()
        return local.detach().double()

    def unchecked_step(self, xb: Tensor, yb: Tensor, rows: Tensor, n_draw: int) -> None:
        """One optimiser step taken without reading anything on the host: the loss joins
        the device sum and a non-finite loss or gradient the window's count of bad steps
        (``check_window`` reads it)."""
        group = self.group
        self.opt.zero_grad(set_to_none=True)
        local = self.local_loss(xb, yb)
        if group.world == 1:
            weight: float | Tensor = 1 / len(rows) if len(rows) else 0.0
        else:  # the global batch's rows, summed on the device (no host round trip)
            weight = group.world / group.sum_on_device(float(len(rows)))
        norm = self.backward(local, weight)
        self.window_bad += (~torch.isfinite(local)) | (~torch.isfinite(norm))
        self.apply_step()
        self.total += local.detach().double()
        self.seen += len(rows)

    def local_loss(self, xb: Tensor, yb: Tensor) -> Tensor:
        """This rank's summed NLL (a rank without rows in a short batch still joins DDP's
        backward, with a zero loss)."""
        stub = len(xb) == 0
        with self.autocast():
            nll = self.net(self.x_fit[:1], self.y_fit[:1]) * 0.0 if stub else self.net(xb, yb)
        return nll.sum()

    def backward(self, local: Tensor, weight: float | Tensor) -> Tensor:
        """Gradients of ``weight * local`` (clipped), and their global norm."""
        s, params = self.settings, self.params
        for group_ in self.opt.param_groups:
            group_["lr"] = self.lr_at(self.step)
        # DDP averages gradients over ranks: weight so the result is the gradient of the
        # mean NLL over the whole global batch
        (local * weight).backward()
        if s.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, s.clip_grad_value)
        grads = [p.grad for p in params if p.grad is not None]
        return (
            torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
            if s.clip_grad_norm is not None
            else torch.nn.utils.get_total_norm(grads)
        )

    def apply_step(self) -> None:
        """The optimiser step and the EMA update; counted as a good step."""
        self.opt.step()
        self.step += 1
        self.good_steps += 1
        if self.ema_params:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, self.params, 1 - self.settings.ema_decay)
        self.bad_in_a_row = 0

    def bookkeeping(self) -> dict[str, Any]:
        """What a window of unchecked steps changes, to replay it from its start."""
        self.window_bad = torch.zeros((), dtype=torch.int64, device=self.device)
        return {
            **self.snapshot(),
            "counters": (self.step, self.good_steps, self.bad_in_a_row, self.seen),
            "total": self.total.clone(),
        }

    def check_window(self, epoch: int, window: list[tuple[Tensor, Tensor, Tensor, int]]) -> None:
        """Read the window's count of bad steps (one host round trip); if some step was not
        finite on some rank, go back to the window's start and take its steps again, each
        checked before stepping: exactly what checking every step would have done."""
        if self.group.sum(self.window_bad.item())[0] == 0:
            return
        start = self.window_start
        self.model.load_state_dict(start["model"])
        self.ema_model.load_state_dict(start["ema"])
        self.opt.load_state_dict(start["opt"])
        self.step, self.good_steps, self.bad_in_a_row, self.seen = start["counters"]
        self.total = start["total"]
        for xb, yb, rows, _ in window:
            self.checked_step(epoch, xb, yb, rows)

    def skip_step(self, epoch: int, xb: Tensor, yb: Tensor, rows: Tensor) -> None:
        """The NaN guard: count a skipped step; after a few in a row roll back to the last
        good state and halve the learning rate; after repeated roll-backs give up."""
        history = self.history
        history.skipped_steps += 1
        self.bad_in_a_row += 1
        if len(xb):  # not a stub
            self.diagnosis = _diagnose(self.model, xb, yb, rows)
        self.opt.zero_grad(set_to_none=True)
        if self.bad_in_a_row < _BAD_STEPS_BEFORE_ROLLBACK:
            return
        self.rollbacks_since_good += 1
        if self.rollbacks_since_good > _ROLLBACKS_BEFORE_GIVING_UP:
            raise TrainingError(
                f"training stopped at epoch {epoch}: {history.skipped_steps} steps had a "
                f"non-finite loss or gradient even after {_ROLLBACKS_BEFORE_GIVING_UP} "
                f"roll-backs with lower learning rates ({self.diagnosis}). The model holds "
                "its last good state. Check those rows, scale the data, or raise min_scale."
            )
        self.model.load_state_dict(self.good["model"])
        self.ema_model.load_state_dict(self.good["ema"])
        self.opt.load_state_dict(copy_optimizer_state(self.good["opt"]))  # keep it intact
        self.lr_mult *= 0.5
        history.rollbacks += 1
        self.bad_in_a_row = 0

    def snapshot(self) -> dict[str, Any]:
        """The last good state the guard rolls back to."""
        return {
            "model": copy_state(self.model),
            "ema": copy_state(self.ema_model),
            "opt": copy_optimizer_state(self.opt),
        }

    def watch_collapse(self, epoch: int) -> None:
        """Track the components' shares of responsibility; re-seed dead components."""
        s, head, history = self.settings, self.head, self.history
        # drawn whether or not anything is tracked: the batch order after it stays the same
        sub = torch.randperm(len(self.x_fit), generator=self.gen, device=self.gen.device)[:512]
        sub = sub.to(self.x_fit.device)
        x_sub, y_sub = self.x_fit[sub], self.y_fit[sub]
        if head is None or not (self.tracks_components or s.reseed_dead):
            return
        self.model.eval()
        shares = responsibilities(self.model, x_sub, y_sub)
        ent = -(shares * shares.clamp_min(1e-12).log()).sum().item()
        history.effective_components.append(math.exp(ent))
        dead = torch.nonzero(shares < _DEAD_SHARE).flatten().tolist()
        due = epoch % 5 == 4 and epoch < s.max_epochs // 2
        if not (s.reseed_dead and head is not None and dead and due):
            return
        _reseed(self.model, head, self.opt, dead, x_sub, y_sub)
        if self.ema_model is not self.model:  # the average restarts there too
            ema_head = self.ema_model.head
            with torch.no_grad():
                for k in dead:
                    rows = head.component_rows(k)
                    ema_head.linear.weight[rows] = head.linear.weight[rows]
                    ema_head.linear.bias[rows] = head.linear.bias[rows]
        history.reseeded += len(dead)

    def validate(self, epoch: int) -> float:
        """Score the EMA on the validation rows (training sample without them) and keep the
        best state; returns the score."""
        history = self.history
        self.ema_model.eval()
        has_val = len(self.x_val) > 0
        value = self.score(*((self.x_val, self.y_val) if has_val else (self.x_fit, self.y_fit)))
        if has_val:
            history.val_nll.append(value)
        if value < history.best_val_nll:
            history.best_val_nll, history.best_epoch = value, epoch
            if self.tracks_best:
                self.best_state = copy_state(self.ema_model)
            self.since_best = 0
        else:
            self.since_best += 1
        return value

    def score(self, x: Tensor, y: Tensor) -> float:
        """Mean NLL of the EMA over all ranks' shares; rank 0's number decides everywhere."""
        mine = local_slice(len(x), self.group)
        total, n = self.group.sum(_sum_nll(self.ema_model, x[mine], y[mine]), len(x[mine]))
        return self.group.from_main(total / n)

    def should_stop(
        self,
        epoch: int,
        patience: int | None,
        callback: Callable[[int, History], bool | None] | None,
    ) -> bool:
        """Early stopping (or the callback) says stop; rank 0's answer counts everywhere."""
        out_of_patience = patience is not None and self.since_best >= patience
        stop = (callback is not None and bool(callback(epoch, self.history))) or out_of_patience
        self.history.stopped_early = out_of_patience
        return bool(self.group.from_main(stop))


def _check_outcome(history: History, lr: float) -> None:
    """No epoch with a finite score is a failure; a best score above 1e6 nats per sample (a
    diverging run: lr far too high) gets a warning."""
    if not math.isfinite(history.best_val_nll):
        raise TrainingError(
            f"no epoch gave a finite validation NLL (lr={lr:g}): the model diverged and is "
            "untrained. Lower lr (the default is 1e-2) or scale the data"
        )
    if history.best_val_nll > 1e6:  # nats per sample: no working density scores this
        warnings.warn(
            f"training diverged: the best validation NLL is {history.best_val_nll:.3g} nats "
            f"per sample (lr={lr:g}); lower lr",
            RuntimeWarning,
            stacklevel=4,
        )


def _nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-row negative log-likelihood: the model's own ``log_prob(x, y)`` (in user units,
    normalisers included) where it has one, else ``model(x).log_prob(y)``."""
    if isinstance(model, ConditionalDensity):
        return -model.log_prob(x, y)
    return -model(x).log_prob(y)


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
    """The summed NLL, by chunks; summed on the device in float64 and read once."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        total += _nll(model, x[i : i + chunk], y[i : i + chunk]).sum().double()
    return total.item()


def _all_finite(params: list[nn.Parameter]) -> bool:
    """Whether every parameter is finite (one host read)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _compiled_loss(net: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``net`` under ``torch.compile`` with a dynamic batch dimension (a short last batch
    does not recompile)."""
    from ..ops.compiled import compile_keeping_globals

    compiled = compile_keeping_globals(net)

    def call(x: Tensor, y: Tensor) -> Tensor:
        for t in (x, y):
            if len(t) > 1:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        return compiled(x, y)

    return call


def _diagnose(model: nn.Module, xb: Tensor, yb: Tensor, rows: Tensor) -> str:
    """Say which rows give a non-finite loss and which parameter blocks broke."""
    parts = []
    with torch.no_grad():
        per_row = _nll(model, xb, yb)
    bad_rows = rows[~torch.isfinite(per_row)].tolist()
    if bad_rows:
        parts.append(f"non-finite loss on training rows {bad_rows[:10]}")
    head = model.head if isinstance(model, TrainableMixture) else None
    head_params = (head.linear.weight, head.linear.bias) if head is not None else ()
    blocks: dict[str, bool] = {}
    for name, p in model.named_parameters():
        for label, t in (("value", p), ("gradient", p.grad)):
            if t is None or torch.isfinite(t).all():
                continue
            if any(p is q for q in head_params):
                scale_name = "factor" if head.covariance_type == "full" else "scales"
                names = ("mixture weights", "means", scale_name)
                for block, part in zip(names, t.split(head.output_split), strict=True):
                    if not torch.isfinite(part).all():
                        blocks[f"{block} ({label})"] = True
            else:
                blocks[f"{name} ({label})"] = True
    if blocks:
        parts.append("non-finite " + ", ".join(blocks))
    return "; ".join(parts) or "non-finite gradient norm"


@torch.no_grad()
def _reseed(
    model: TrainableMixture,
    head: MDNHead,
    opt: torch.optim.Optimizer,
    dead: list[int],
    x: Tensor,
    y: Tensor,
) -> None:
    """Move dead components onto the worst-explained rows; reset their optimiser state."""
    dist, z = model.mixture_and_target(x, y)
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
