"""Checks and small helpers shared by the mixture's query modules (private module, public
names; they take a :class:`~torchmdn.GaussianMixture` but never import its module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._math import LOG_2PI
from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from .mixture import GaussianMixture

__all__ = [
    "as_value",
    "broadcast",
    "check_dims",
    "check_event",
    "check_level",
    "check_value_shape",
    "component_std",
    "dim",
    "seeded_generator",
    "log_normal_1d",
    "require_1d",
]


def dim(gm: GaussianMixture) -> int:
    return gm.loc.shape[-1]


def require_1d(gm: GaussianMixture, what: str, remedy: str | None = None) -> None:
    """Refuse a mixture whose target is not one-dimensional, naming ``what`` needs it and what
    to do instead (by default: take one dimension first)."""
    if dim(gm) != 1:
        remedy = remedy or f"Take one dimension first: gm.marginal([k]).{what}(...)"
        raise InputError(
            f"{what} is defined for a 1-d target; this mixture has d = {dim(gm)}. {remedy}"
        )


def float32(gm: GaussianMixture) -> GaussianMixture:
    """A float16/bfloat16 mixture as float32 (for queries whose maths needs the range)."""
    spread = {"scale_tril": gm.scale_tril} if gm.covariance_type == "full" else {"scale": gm.scale}
    return type(gm)(
        gm.logits.float(), gm.loc.float(), **{k: v.float() for k, v in spread.items()},
        validate_args=False,
    )  # fmt: skip


def component_std(gm: GaussianMixture) -> Tensor:
    """Marginal standard deviation of every component along every axis, ``(*B, n, d)``."""
    kind = gm.covariance_type
    if kind == "diagonal":
        return gm.scale
    if kind == "isotropic":
        return gm.scale.unsqueeze(-1).expand(gm.loc.shape)
    return gm.scale_tril.square().sum(-1).sqrt()  # sqrt(diag(L Lᵀ))


def as_value(gm: GaussianMixture, value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value, dtype=gm.loc.dtype, device=gm.loc.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputTypeError(f"{name} must be a tensor of numbers; got {value!r}") from err
    if not value.is_floating_point():
        value = value.to(gm.loc.dtype)
    return value


def check_value_shape(gm: GaussianMixture, value: object, name: str = "value") -> None:
    """Refuse a value whose last axis is not the mixture's event shape ``(d,)``.

    Always on (not only under ``validate_args``): a ``(N,)`` value given to a mixture with
    event shape ``(1,)`` would otherwise broadcast into numbers that mean nothing. Reads shapes
    only (no tensor is touched, no parameter is split off a head's output), so it costs about a
    microsecond.
    """
    event = gm.event_shape
    shape = getattr(value, "shape", None)
    if shape is not None and shape[-1:] == event:
        return
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    d = event[0]
    batch = tuple(gm.batch_shape)
    expected = ", ".join(map(str, (*batch, d)))
    raise InputError(
        f"{name} has shape {tuple(value.shape)}, but this mixture (batch shape {batch}, event "
        f"shape ({d},)) needs shape (..., {expected}): the last axis must be the target "
        f"dimension d = {d}. Fix: {name}.reshape(-1, {d}) (one row per prediction)"
    )


def check_event(gm: GaussianMixture, y: Tensor, name: str) -> None:
    check_value_shape(gm, y, name)
    d = dim(gm)
    broadcast(
        f"{name} of shape {tuple(y.shape)} does not broadcast against the batch shape "
        f"{tuple(gm.batch_shape)}: expected (*sample, {', '.join(map(str, gm.batch_shape))}"
        f"{', ' if gm.batch_shape else ''}{d})",
        y.shape[:-1], gm.batch_shape,
    )  # fmt: skip


def broadcast(message: str, *shapes: Sequence[int]) -> torch.Size:
    """``torch.broadcast_shapes(*shapes)``, or an :class:`InputError` saying ``message``."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError as err:
        raise InputError(message) from err


def check_level(level: object, name: str = "level") -> float:
    try:
        value = float(level)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"{name} must be a number in (0, 1); got {level!r}") from err
    if not 0.0 < value < 1.0:
        raise InputError(f"{name} must lie strictly between 0 and 1 (e.g. 0.9); got {value}")
    return value


def check_dims(gm: GaussianMixture, dims: object, name: str) -> list[int]:
    d = dim(gm)
    if isinstance(dims, int):
        dims = [dims]
    try:
        out = [int(k) for k in dims]  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"{name} must be a sequence of ints; got {dims!r}") from err
    if not out:
        raise InputError(f"{name} must name at least one dimension; got {dims!r}")
    bad = [k for k in out if not -d <= k < d]
    if bad:
        raise InputError(f"{name} {bad} out of range for a {d}-d mixture (valid: 0..{d - 1})")
    out = [k % d for k in out]
    if len(set(out)) != len(out):
        raise InputError(f"{name} must not repeat a dimension; got {dims!r}")
    return out


def log_normal_1d(y: Tensor, loc: Tensor, std: Tensor) -> Tensor:
    return -0.5 * ((y - loc) / std).square() - std.log() - 0.5 * LOG_2PI


def seeded_generator(
    gm: GaussianMixture, generator: torch.Generator | None, seed: int
) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator(device=gm.loc.device).manual_seed(seed)
