"""Data-parallel training on PyTorch's own engine: the process group and the collectives
:func:`~torchmdn.fit` needs.

``fit(..., distributed=True)`` (or a ``torchrun`` environment) trains one replica of the
model per process, wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`: gloo
when the model is on the CPU, NCCL when it is on CUDA. When ``fit`` starts the process group
itself it also destroys it before returning, so no global state is left behind.

Every decision that changes the model (skip a step, roll back, best epoch, early stop) is
taken from numbers that are identical on all ranks (all-reduced or broadcast from rank 0),
so the replicas never drift apart and no rank waits on a collective the others skip.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError

__all__ = ["Group", "launched_rank", "process_group", "torchrun_environment"]


_LAUNCHER_MARKS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")  # set by torchrun for each process
_INIT_TIMEOUT_S = 300  # how long starting a process group may wait for the other ranks


def torchrun_environment() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process.

    ``WORLD_SIZE``/``RANK`` alone, without what ``torchrun`` sets for each process it starts
    (``TORCHELASTIC_RUN_ID`` or ``LOCAL_RANK``), are taken as stale variables left in the
    environment: ignored with a warning, so that one process does not wait forever for the
    others of a group that does not exist.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    if world <= 1 or "RANK" not in os.environ:
        return False
    if not any(mark in os.environ for mark in _LAUNCHER_MARKS):
        warnings.warn(
            f"WORLD_SIZE={world} and RANK are set but this process was not started by "
            "torchrun (no TORCHELASTIC_RUN_ID or LOCAL_RANK): training in this process "
            "alone. Unset them, or launch with torchrun --nproc_per_node=N",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def launched_rank() -> int:
    """This process's rank under ``torchrun`` (0 when not launched by it)."""
    return int(os.environ["RANK"]) if torchrun_environment() else 0


class Group:
    """This process's place in the group (``rank`` of ``world``) and the collectives on it.

    With ``world == 1`` every collective is the identity, so the training loop reads the
    same with and without data parallelism.
    """

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")  # where collectives' tensors live

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes checkpoints, logs and progress."""
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (float64)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_on_device(self, value: float) -> torch.Tensor:
        """``value`` summed over all ranks, as a float64 tensor on the collectives' device:
        with NCCL the host does not wait for it."""
        t = torch.tensor(value, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def from_main(self, value: float) -> float:
        """Rank 0's value, on every rank (decisions are taken once and shared)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.item()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel (unchanged when ``world == 1``)."""
        if self.world == 1:
            return module
        device = next(module.parameters()).device
        ids = [device] if device.type == "cuda" else None
        # buffers (the normalisers) are set identically on every rank before wrapping
        return nn.parallel.DistributedDataParallel(
            module, device_ids=ids, forward_sync_buffers=False
        )


def _wanted(distributed: bool | None) -> bool:
    if distributed is None:  # auto: an initialised group of several, or a torchrun launch
        initialised = dist.is_available() and dist.is_initialized()
        return dist.get_world_size() > 1 if initialised else torchrun_environment()
    if not isinstance(distributed, bool):
        raise InputError(f"distributed must be True, False or None (auto); got {distributed!r}")
    return distributed


@contextmanager
def process_group(distributed: bool | None, device: torch.device) -> Iterator[Group]:
    """The :class:`Group` to train in; starts (and then destroys) the process group if needed.

    Args:
        distributed: ``True``: data parallel (an initialised process group, or a ``torchrun``
            environment to start one from); ``False``: one process; ``None``: data parallel
            exactly when one of those exists with more than one process.
        device: the model's device: NCCL on CUDA, gloo otherwise.
    """
    if not _wanted(distributed):
        yield Group()
        return
    if not dist.is_available():
        raise InputError("distributed=True but this torch build has no torch.distributed")
    started = not dist.is_initialized()
    if started:
        if "MASTER_ADDR" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise InputError(
                "distributed=True needs an initialised process group or a torchrun launch "
                "(environment variables MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE); run "
                "'torchrun --nproc_per_node=N your_script.py' or pass distributed=False"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        kwargs["timeout"] = timedelta(seconds=_INIT_TIMEOUT_S)  # never wait forever
        dist.init_process_group(backend, init_method="env://", **kwargs)
    try:
        nccl = dist.get_backend() == "nccl"
        yield Group(dist.get_rank(), dist.get_world_size(), device if nccl else None)
        if started:
            dist.barrier()  # every rank is done with the group before it goes
    finally:
        if started:
            dist.destroy_process_group()


def local_slice(n: int, group: Group) -> slice:
    """This rank's contiguous share of ``n`` rows (shares differ by at most one row)."""
    return slice(group.rank * n // group.world, (group.rank + 1) * n // group.world)
