"""Figures for predicted mixtures (matplotlib is imported lazily: ``pip install torchmdn[plot]``).

Each function takes ``ax=None`` (a new figure when omitted) and returns the Axes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ._checks import require_extra
from ._files import atomic_write
from .distributions.mixture import GaussianMixture
from .errors import InputError

__all__ = [
    "calibration_curve",
    "conditional_density",
    "density_contours",
    "evaluation_plots",
    "pit_histogram",
    "quantile_fan",
    "require_matplotlib",
]


def require_matplotlib() -> Any:
    """Import ``matplotlib.pyplot`` with a non-interactive backend, or say what to install."""
    matplotlib = require_extra("matplotlib", "plot", "plotting")
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
    modes: bool = False,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Any:
    """Heat map of ``p(y | x)`` for a model with one input and one target.

    Args:
        model: maps ``x (R, 1)`` to a distribution over ``y (1,)`` with batch shape ``(R,)``.
        x_range, y_range: the plotted window.
        data: optional ``(x, y)`` points drawn on top.
        curves: optional ``(x, y, label)`` lines drawn on top (for example a true relation).
        resolution: grid points per axis.
        ax: the Axes to draw into.
        modes: overlay the local modes of each ``p(y | x)`` (needs a ``GaussianMixture``)
            that :meth:`~torchmdn.GaussianMixture.modes` keeps by default (density at least
            5% of the highest mode's); marker size grows with the density.
        xlabel, ylabel: axis labels; default: the model's ``feature_names`` /
            ``target_names`` when it records them, else ``x`` and ``y``.
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
        xs.cpu().numpy(),
        ys.cpu().numpy(),
        dens.numpy(),
        cmap=cmap,
        shading="auto",
        norm=PowerNorm(0.5, vmin=0.0, vmax=vmax),
    )
    xlabel = xlabel or _name(model, "feature_names", "x")
    ylabel = ylabel or _name(model, "target_names", "y")
    ax.figure.colorbar(mesh, ax=ax, label=f"p({ylabel} | {xlabel})")
    if data is not None:  # white dots with a dark rim: visible on dark and bright density
        ax.scatter(
            data[0].detach().cpu().flatten().numpy(),
            data[1].detach().cpu().flatten().numpy(),
            s=9,
            c="white",
            edgecolors="black",
            linewidths=0.4,
            alpha=0.85,
            label="data",
            zorder=3,
        )
    for cx, cy, label in curves or []:
        ax.plot(cx.cpu().numpy(), cy.cpu().numpy(), "w--", lw=1.2, label=label)
    if modes:
        _overlay_modes(ax, xs, dist)
    ax.set_xlim(*x_range)
    ax.set_ylim(*y_range)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if data is not None or curves or modes:
        ax.legend(loc="upper left", fontsize=8)
    return ax


def _overlay_modes(ax: Any, xs: Tensor, dist: Distribution) -> None:
    if not isinstance(dist, GaussianMixture):
        raise InputError(
            f"modes=True needs a model that returns a torchmdn.GaussianMixture; got "
            f"{type(dist).__name__}"
        )
    with torch.no_grad():
        found = dist.modes()
    loc = found.loc[..., 0].cpu()  # [R, k]
    size = found.density.cpu()
    size = 2 + 18 * size / size.max().clamp_min(1e-300)
    xk = xs.cpu().unsqueeze(-1).expand_as(loc)
    ok = found.valid.cpu()  # negligible modes are already left out by modes()
    ax.scatter(
        xk[ok].numpy(), loc[ok].numpy(), s=size[ok].numpy(), c="lime", linewidths=0, label="modes"
    )


def _name(model: object, attribute: str, default: str) -> str:
    """The model's one column name in ``attribute`` (feature_names, target_names), if any."""
    names = getattr(model, attribute, None)
    return names[0] if names and len(names) == 1 else default


def _one_d(dist: object, what: str) -> GaussianMixture:
    if not isinstance(dist, GaussianMixture):
        raise InputError(f"{what} needs a torchmdn.GaussianMixture; got {type(dist).__name__}")
    if dist.event_shape != (1,):
        raise InputError(
            f"{what} needs a 1-d target; this mixture has event shape "
            f"{tuple(dist.event_shape)}. Plot one dimension: dist.marginal([k])"
        )
    if len(dist.batch_shape) != 1:
        raise InputError(
            f"{what} needs a batch of predictions with batch shape (R,); got "
            f"{tuple(dist.batch_shape)}"
        )
    return dist


def quantile_fan(
    x: Tensor,
    dist: GaussianMixture,
    *,
    levels: tuple[float, ...] = (0.5, 0.8, 0.95),
    y: Tensor | None = None,
    ax: Any = None,
    color: str = "C0",
    xlabel: str = "x",
    ylabel: str = "y",
) -> Any:
    """Quantile fan chart: nested central intervals and the median of ``p(y | x)`` along ``x``.

    Args:
        x: ``(R,)`` positions on the horizontal axis (an input feature, a time index...);
            the predictions are sorted by it.
        dist: predictions with batch shape ``(R,)`` and ``d = 1``.
        levels: central interval probabilities, drawn from widest (lightest) to narrowest.
        y: optional ``(R,)`` or ``(R, 1)`` observations drawn as points.
        ax: the Axes to draw into.
        color: colour of the bands.
        xlabel, ylabel: axis labels (column names, for example).
    """
    plt = require_matplotlib()
    dist = _one_d(dist, "quantile_fan")
    x = torch.as_tensor(x).flatten()
    if x.shape[0] != dist.batch_shape[0]:
        raise InputError(
            f"x must have one position per prediction: {dist.batch_shape[0]} values; "
            f"got {x.shape[0]}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    order = x.argsort()
    xs = x[order].cpu()
    with torch.no_grad():
        for level in sorted(levels, reverse=True):
            low, high = dist.interval(level)
            alpha = 0.15 + 0.5 * (1 - level)
            ax.fill_between(
                xs,
                low[order, 0].cpu(),
                high[order, 0].cpu(),
                color=color,
                alpha=alpha,
                linewidth=0,
                label=f"{level:.0%} interval",
            )
        median = dist.icdf(torch.tensor(0.5, dtype=dist.loc.dtype, device=dist.loc.device))
    ax.plot(xs, median[order, 0].cpu(), color=color, lw=1.5, label="median")
    if y is not None:
        yy = torch.as_tensor(y).reshape(-1)
        ax.scatter(x.cpu(), yy.cpu(), s=10, c="k", alpha=0.7, linewidths=0, label="data", zorder=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    return ax


def pit_histogram(dist: GaussianMixture, y: Tensor, *, bins: int = 20, ax: Any = None) -> Any:
    """Histogram of the PIT values ``F(y)``: flat for a calibrated model.

    A U shape means over-confident predictions, a hump under-confident ones, a slope bias. The
    shaded band is the 95% range of a bin count under perfect calibration.

    Args:
        dist: predictions, batch shape ``B``, event ``(d,)`` (each dimension's marginal PIT
            is pooled when ``d > 1``).
        y: observations ``(*B, d)``.
        bins: number of bins on ``[0, 1]``.
        ax: the Axes to draw into.
    """
    from .metrics import pit

    plt = require_matplotlib()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    with torch.no_grad():
        u = pit(dist, y).flatten().cpu().double()
    n = u.numel()
    ax.hist(u.numpy(), bins=bins, range=(0, 1), density=True, color="C0", alpha=0.8)
    # binomial band for a bin's density under uniformity
    p = 1.0 / bins
    half = 1.96 * (p * (1 - p) / max(n, 1)) ** 0.5 / p
    ax.axhspan(1 - half, 1 + half, color="0.5", alpha=0.25, label="95% band if calibrated")
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT = F(y)")
    ax.set_ylabel("density")
    ax.set_title(f"PIT histogram ({n} values)")
    ax.legend(loc="upper center", fontsize=8)
    return ax


def calibration_curve(dist: GaussianMixture, y: Tensor, *, ax: Any = None) -> Any:
    """Observed frequency ``freq(PIT <= τ)`` against the nominal level ``τ``.

    A calibrated model follows the diagonal; a curve below it at high ``τ`` means the
    predicted quantiles are too low.

    Args:
        dist: predictions, batch shape ``B``, event ``(d,)`` (one curve per dimension).
        y: observations ``(*B, d)``.
        ax: the Axes to draw into.
    """
    from .metrics import pit

    plt = require_matplotlib()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    with torch.no_grad():
        u = pit(dist, y).reshape(-1, y.shape[-1]).cpu().double()  # [N, d]
    tau = torch.linspace(0, 1, 101, dtype=u.dtype)
    freq = (u.unsqueeze(0) <= tau[:, None, None]).double().mean(1)  # [T, d]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    for k in range(freq.shape[1]):
        label = "model" if freq.shape[1] == 1 else f"dimension {k}"
        ax.plot(tau, freq[:, k], lw=1.8, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal level τ")
    ax.set_ylabel("observed frequency of PIT ≤ τ")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def density_contours(
    dist: GaussianMixture,
    *,
    data: Tensor | None = None,
    resolution: int = 150,
    modes: bool = True,
    ax: Any = None,
    cmap: str = "viridis",
    labels: tuple[str, str] = ("y₁", "y₂"),
) -> Any:
    """Contours of a 2-d predicted density ``p(y_1, y_2)``, with its modes and optional data.

    The grid spans four standard deviations around the mean and covers every data point and
    every mode drawn.

    Args:
        dist: one prediction with ``d = 2`` (batch shape ``()`` or any batch of one element).
        data: optional ``(N, 2)`` points drawn on top.
        resolution: grid points per axis.
        modes: mark the local modes (those :meth:`~torchmdn.GaussianMixture.modes` keeps by
            default).
        ax: the Axes to draw into.
        labels: the two axis labels (column names, for example).
    """
    plt = require_matplotlib()
    if not isinstance(dist, GaussianMixture):
        raise InputError(
            f"density_contours needs a torchmdn.GaussianMixture; got {type(dist).__name__}"
        )
    if dist.event_shape != (2,):
        raise InputError(
            f"density_contours needs a 2-d target; got event shape {tuple(dist.event_shape)}. "
            "Take two dimensions first: dist.marginal([i, j])"
        )
    if dist.batch_shape.numel() != 1:
        raise InputError(
            f"density_contours draws one prediction; got batch shape {tuple(dist.batch_shape)}. "
            "Predict for one input row, e.g. model(x[i : i + 1])"
        )
    dist = dist.expand((1,))  # one batch element, whatever the batch layout
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    with torch.no_grad():
        mean, sd = dist.mean[0], dist.stddev[0]
        lo, hi = mean - 4 * sd, mean + 4 * sd
        found = dist.modes() if modes else None
        if found is not None:
            m = found.loc[0][found.valid[0]]
            lo, hi = torch.minimum(lo, m.amin(0) - sd), torch.maximum(hi, m.amax(0) + sd)
        if data is not None:
            pts = torch.as_tensor(data, dtype=mean.dtype, device=mean.device).reshape(-1, 2)
            pad = 0.03 * (pts.amax(0) - pts.amin(0))
            lo = torch.minimum(lo, pts.amin(0) - pad)
            hi = torch.maximum(hi, pts.amax(0) + pad)
        g1 = torch.linspace(lo[0].item(), hi[0].item(), resolution, dtype=mean.dtype)
        g2 = torch.linspace(lo[1].item(), hi[1].item(), resolution, dtype=mean.dtype)
        mesh = torch.stack(torch.meshgrid(g1, g2, indexing="xy"), -1).to(mean.device)
        dens = dist.log_prob(mesh.reshape(-1, 1, 2)).exp().reshape(resolution, resolution)
    cs = ax.contourf(g1.numpy(), g2.numpy(), dens.cpu().numpy(), levels=14, cmap=cmap)
    ax.figure.colorbar(cs, ax=ax, label=f"p({labels[0]}, {labels[1]})")
    if data is not None:
        p = pts.cpu()
        ax.scatter(p[:, 0], p[:, 1], s=10, c="white", edgecolors="black", linewidths=0.4,
                   alpha=0.85, label="data", zorder=3)  # fmt: skip
    if found is not None:
        m = found.loc[0][found.valid[0]].cpu()
        ax.scatter(m[:, 0], m[:, 1], marker="x", s=60, c="red", label="modes", zorder=4)
    ax.set_xlim(g1[0].item(), g1[-1].item())
    ax.set_ylim(g2[0].item(), g2[-1].item())
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if data is not None or found is not None:
        ax.legend(loc="upper left", fontsize=8)
    return ax


def evaluation_plots(
    out: str | Path, model: Callable[[Tensor], Distribution], x: Tensor, y: Tensor, dist: Any
) -> list[Path]:
    """Write the diagnostic figures of ``torchmdn evaluate --plots`` into the folder ``out``.

    Always ``pit.png`` and ``calibration.png``; for ``d = 1`` also ``fan.png`` (along the
    input when there is one, else along the row number) and, for one input, ``density.png``
    (the conditional density heat map with data and modes); for ``d = 2`` ``contours.png``
    (the first row's predicted density over all targets).

    Args:
        out: folder (created if missing).
        model: the model that made ``dist`` (called again for the heat map).
        x: ``(R, in_features)`` inputs; y: ``(R, d)`` targets; dist: ``model(x)``.

    Returns:
        The paths written.
    """
    plt = require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(ax: Any, name: str) -> None:
        path = out / name
        ax.figure.tight_layout()
        buffer = io.BytesIO()  # written whole or not at all
        ax.figure.savefig(buffer, dpi=110, format="png")
        atomic_write(path, buffer.getvalue())
        plt.close(ax.figure)
        written.append(path)

    save(pit_histogram(dist, y), "pit.png")
    save(calibration_curve(dist, y), "calibration.png")
    if y.shape[-1] == 1:
        names = getattr(model, "feature_names", None)
        if x.shape[-1] == 1:  # along the one input
            pos, label = x[:, 0], names[0] if names else "x"
        else:  # rows ranked by their predicted median
            with torch.no_grad():
                median = dist.icdf(torch.tensor(0.5, dtype=y.dtype, device=y.device))[:, 0]
            pos = median.argsort().argsort().to(y.dtype)
            label = "rows ranked by predicted median"
        targets = getattr(model, "target_names", None)
        ax = quantile_fan(pos, dist, y=y[:, 0], xlabel=label, ylabel=targets[0] if targets else "y")
        save(ax, "fan.png")
        if x.shape[-1] == 1:
            pad_x = 0.05 * float(x.max() - x.min()) or 1.0
            pad_y = 0.05 * float(y.max() - y.min()) or 1.0
            ax = conditional_density(
                model,
                (float(x.min()) - pad_x, float(x.max()) + pad_x),
                (float(y.min()) - pad_y, float(y.max()) + pad_y),
                data=(x[:, 0], y[:, 0]),
                modes=True,
            )
            save(ax, "density.png")
    elif y.shape[-1] == 2:
        with torch.no_grad():
            first = model(x[:1])
        targets = getattr(model, "target_names", None) or ["y₁", "y₂"]
        ax = density_contours(first, data=y, labels=(targets[0], targets[1]))
        ax.set_title("p(y | x) for the first row; points: all targets")
        save(ax, "contours.png")
    return written
