"""Standardisation inside the model: buffers ``x_loc``, ``x_scale``, ``y_loc``, ``y_scale``
and a ``standardized`` flag, set from training data by one rule for every model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["add_normalizers", "target_resolution", "write_normalizers"]


def add_normalizers(module: nn.Module, in_features: int, out_features: int) -> None:
    """Register the identity normalisers on ``module`` (set later by :func:`write_normalizers`)."""
    module.register_buffer("x_loc", torch.zeros(in_features))
    module.register_buffer("x_scale", torch.ones(in_features))
    module.register_buffer("y_loc", torch.zeros(out_features))
    module.register_buffer("y_scale", torch.ones(out_features))
    module.register_buffer("standardized", torch.tensor(False))


def target_resolution(y: Tensor) -> Tensor:
    """The recording resolution of each target column of ``y (N, d)``; 0 for continuous ones.

    A column whose values repeat (at most half as many distinct values as rows) is taken to
    be recorded on a grid: scores 0-10, prices in cents, counts. Its resolution is the
    smallest gap between distinct values. Columns with fewer repeats count as continuous.
    """
    y = y.detach().reshape(len(y), -1).double().cpu()
    out = torch.zeros(y.shape[1], dtype=torch.float64)
    for j in range(y.shape[1]):
        values = torch.unique(y[:, j])  # sorted
        if 2 <= len(values) <= len(y) / 2:
            out[j] = (values[1:] - values[:-1]).min()
    return out


@torch.no_grad()
def write_normalizers(
    module: nn.Module, x_loc: Tensor, x_scale: Tensor, y_loc: Tensor, y_scale: Tensor,
    context: str = "",
) -> None:  # fmt: skip
    """Copy column means and standard deviations into ``module``'s ``x_loc``, ``x_scale``,
    ``y_loc``, ``y_scale`` buffers and mark it ``standardized``: the rules every model here
    follows. A constant input column gets scale 1 (it carries no information); a constant or
    non-finite target column is an :class:`InputError` (``context`` says where it was seen),
    since a density over a constant is not defined."""
    wide = torch.as_tensor(y_scale).double()
    y_std = wide.to(module.y_scale)
    overflow = torch.isfinite(wide) & (wide > 0) & ~(torch.isfinite(y_std) & (y_std > 0))
    if overflow.any():
        raise InputError(
            f"target column(s) {torch.nonzero(overflow).flatten().tolist()} have a spread "
            f"({wide[overflow].tolist()[:3]}) beyond the range of {module.y_scale.dtype}; "
            "use dtype=float64 (model.double(), MDNRegressor(dtype='float64')) or change units"
        )
    bad = ~(torch.isfinite(y_std) & (y_std > 0))
    if bad.any():
        raise InputError(
            f"target column(s) {torch.nonzero(bad).flatten().tolist()} are constant or not "
            f"finite{context}: a density over a constant is not defined. Drop the column or "
            "add more varied data."
        )
    x_std = torch.as_tensor(x_scale).to(module.x_scale)
    module.x_loc.copy_(torch.as_tensor(x_loc))
    module.x_scale.copy_(torch.where(x_std > 0, x_std, torch.ones_like(x_std)))
    module.y_loc.copy_(torch.as_tensor(y_loc))
    module.y_scale.copy_(y_std)
    module.standardized.fill_(True)
