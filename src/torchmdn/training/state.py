"""A run's state: copies of a model's and an optimiser's state (the best epoch, the NaN
guard's last good state) and the flat tensor names a checkpoint stores them under."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelFileError

__all__ = [
    "copy_optimizer_state", "copy_state", "flat", "load_optimizer_tensors", "optimizer_tensors",
    "saved_state", "unflat",
]  # fmt: skip


def copy_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of ``model.state_dict()`` (a clone per tensor: 4x cheaper than ``deepcopy``); a
    tensor that several entries share (a module used twice) is cloned once."""
    clones: dict[tuple, Tensor] = {}
    out: dict[str, Any] = {}
    for k, v in model.state_dict().items():
        if isinstance(v, Tensor):
            if not v.numel():
                out[k] = v.clone()
                continue
            key = (v.data_ptr(), v.dtype, v.shape, v.stride(), v.device)
            if key not in clones:  # cloned once, however many entries share it
                clones[key] = v.detach().clone()
            out[k] = clones[key]
        else:
            out[k] = copy.deepcopy(v)
    return out


def copy_optimizer_state(opt: torch.optim.Optimizer | dict[str, Any]) -> dict[str, Any]:
    """A copy of ``opt.state_dict()`` (or of such a dict): its tensors cloned, the rest
    deep-copied (several times cheaper than ``deepcopy`` of the whole, which the guard would
    take at every snapshot)."""
    state = opt if isinstance(opt, dict) else opt.state_dict()
    return {
        "state": {
            i: {n: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for n, v in s.items()}
            for i, s in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def saved_state(
    path: str | Path, module: nn.Module, tensors: dict[str, Tensor], prefix: str
) -> dict[str, Tensor]:
    """The state of ``module`` that a checkpoint holds under ``prefix``, checked against it.

    What checkpoints from older versions lack is filled in as :func:`torchmdn.io.load` does
    for model files (a missing ``head.scale_floor``: the head's ``min_scale``).
    """
    from ..io import upgrade_state

    state = upgrade_state(module, unflat(prefix, tensors))
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    reshaped = [k for k in want if k in state and state[k].shape != want[k].shape]
    found = {"missing": missing, "unexpected": unexpected, "of another shape": reshaped}
    problems = [f"{what} {keys}" for what, keys in found.items() if keys]
    if problems:
        raise ModelFileError(
            f"{path} does not match this model ({prefix} weights: {'; '.join(problems)}); "
            "resume with a model built with the same arguments as the one that wrote it"
        )
    return state


def flat(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` under the checkpoint names ``prefix/name``."""
    return {f"{prefix}/{k}": v for k, v in state.items()}


def unflat(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``tensors`` named ``prefix/name``, as ``name`` (:func:`flat` undone)."""
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """``opt``'s state as flat tensors named ``parameter index/buffer`` and its parameter
    groups (JSON-ready)."""
    sd = opt.state_dict()
    tensors = {f"{i}/{k}": v for i, s in sd["state"].items() for k, v in s.items()}
    return tensors, sd["param_groups"]


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list
) -> None:
    """Load into ``opt`` what :func:`optimizer_tensors` gave (``betas`` back to a tuple, as
    JSON returns a list)."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
