"""Figures for predicted mixtures (matplotlib is imported lazily: ``pip install torchmdn[plot]``).

Each function takes ``ax=None`` (a new figure when omitted) and returns the Axes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from .errors import InputError

__all__ = ["conditional_density", "require_matplotlib"]


def require_matplotlib() -> Any:
    """Import ``matplotlib.pyplot`` with a non-interactive backend, or say what to install."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'torchmdn[plot]'") from err
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo", "ps"):
        import os

        if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def conditional_density(
    model: Callable[[Tensor], Distribution],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    *,
    data: tuple[Tensor, Tensor] | None = None,
    curves: list[tuple[Tensor, Tensor, str]] | None = None,
    resolution: int = 200,
    ax: Any = None,
    cmap: str = "magma",
) -> Any:
    """Heat map of ``p(y | x)`` for a model with one input and one target.

    Args:
        model: maps ``x (R, 1)`` to a distribution over ``y (1,)`` with batch shape ``(R,)``.
        x_range, y_range: the plotted window.
        data: optional ``(x, y)`` points drawn on top.
        curves: optional ``(x, y, label)`` lines drawn on top (for example a true relation).
        resolution: grid points per axis.
        ax: the Axes to draw into.
    """
    plt = require_matplotlib()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    param = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else "cpu"
    xs = torch.linspace(*x_range, resolution, dtype=dtype, device=device)
    ys = torch.linspace(*y_range, resolution, dtype=dtype, device=device)
    with torch.no_grad():
        dist = model(xs.unsqueeze(-1))
        if dist.event_shape != (1,):
            raise InputError(
                f"conditional_density needs a 1-d target; the model's event shape is "
                f"{tuple(dist.event_shape)}"
            )
        dens = dist.log_prob(ys.view(-1, 1, 1)).exp().cpu()  # [y, x]
    from matplotlib.colors import PowerNorm

    # a square-root colour scale capped at the 99th percentile keeps the thin, tall peaks
    # from washing out the rest of the picture
    vmax = torch.quantile(dens.flatten().float(), 0.99).item() or None
    mesh = ax.pcolormesh(
        xs.cpu(),
        ys.cpu(),
        dens,
        cmap=cmap,
        shading="auto",
        norm=PowerNorm(0.5, vmin=0.0, vmax=vmax),
    )
    ax.figure.colorbar(mesh, ax=ax, label="p(y | x)")
    if data is not None:
        ax.scatter(
            data[0].cpu().flatten(),
            data[1].cpu().flatten(),
            s=2,
            c="cyan",
            alpha=0.3,
            linewidths=0,
            label="data",
        )
    for cx, cy, label in curves or []:
        ax.plot(cx.cpu(), cy.cpu(), "w--", lw=1.2, label=label)
    ax.set_xlim(*x_range)
    ax.set_ylim(*y_range)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if data is not None or curves:
        ax.legend(loc="upper left", fontsize=8)
    return ax
