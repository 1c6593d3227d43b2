"""Figures for sequence demos: pen strokes and fans of sampled trajectories.

matplotlib is imported lazily (``pip install torchmdn[plot]``); each function takes ``ax=None``
and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import InputError
from ...plot import require_matplotlib

__all__ = ["strokes", "trajectory_fan"]


def strokes(
    offsets: Tensor,
    *,
    pen: Tensor | None = None,
    ax: Any = None,
    color: Any = "k",
    linewidth: float = 1.5,
    **kwargs: Any,
) -> Any:
    """Draw pen strokes given as offsets ``(T, 2)`` (Graves' format), lifting the pen after
    each point whose pen state is non-zero.

    Args:
        offsets: ``(T, 2)`` displacements; the points are their cumulative sum. A ``(T, 3)``
            tensor carries the pen state in its last column.
        pen: ``(T,)`` pen states (0: pen stays down; anything else ends the stroke after that
            point); ignored when ``offsets`` has 3 columns.
        ax: the Axes to draw into (equal aspect is set).
        color, linewidth, **kwargs: passed to ``ax.plot``.
    """
    plt = require_matplotlib()
    offsets = torch.as_tensor(offsets).detach().cpu().double()
    if offsets.dim() != 2 or offsets.shape[-1] not in (2, 3):
        raise InputError(
            f"strokes needs offsets of shape (T, 2) or (T, 3) (with the pen state); got "
            f"{tuple(offsets.shape)}"
        )
    if offsets.shape[-1] == 3:
        offsets, pen = offsets[:, :2], offsets[:, 2]
    pts = offsets.cumsum(0)
    ends = (
        torch.nonzero(torch.as_tensor(pen).cpu() != 0).flatten().tolist() if pen is not None else []
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    start = 0
    for end in [*ends, len(pts) - 1]:
        if end >= start:
            seg = pts[start : end + 1]
            ax.plot(seg[:, 0], seg[:, 1], color=color, linewidth=linewidth, **kwargs)
        start = end + 1
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def trajectory_fan(
    samples: Tensor,
    *,
    real: Tensor | None = None,
    past: Tensor | None = None,
    ax: Any = None,
    color: Any = "tab:red",
    alpha: float = 0.25,
) -> Any:
    """A fan of sampled future trajectories, with the observed past and the real future.

    Args:
        samples: ``(S, T, 2)`` sampled futures (x, y per step; for maps pass (lon, lat)).
        real: ``(T', 2)`` the real future, drawn in black (optional).
        past: ``(P, 2)`` the observed past; each sample is drawn from its last point.
        ax: the Axes to draw into.
        color, alpha: of the sampled paths.
    """
    plt = require_matplotlib()
    samples = torch.as_tensor(samples).detach().cpu()
    if samples.dim() != 3 or samples.shape[-1] != 2:
        raise InputError(
            f"trajectory_fan needs samples of shape (S, T, 2); got {tuple(samples.shape)}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    if past is not None:
        past = torch.as_tensor(past).detach().cpu()
        samples = torch.cat([past[-1].expand(len(samples), 1, 2), samples], 1)
        ax.plot(past[:, 0], past[:, 1], "k-", linewidth=1.5, label="observed")
    for i, s in enumerate(samples):
        ax.plot(s[:, 0], s[:, 1], color=color, alpha=alpha, linewidth=0.8,
                label="sampled" if i == 0 else None)  # fmt: skip
    if real is not None:
        real = torch.as_tensor(real).detach().cpu()
        if past is not None:
            real = torch.cat([past[-1:], real])
        ax.plot(real[:, 0], real[:, 1], "k--", linewidth=1.5, label="real")
    ax.legend(loc="best", fontsize=7)
    return ax
