r"""Scoring rules and calibration diagnostics for predicted mixtures.

Each function is ``f(dist, y, reduction="mean")`` like a torch loss: ``dist`` is a
:class:`~torchmdn.GaussianMixture` with batch shape ``B`` and event shape ``(d,)``, ``y`` holds
the observed targets ``(*B, d)``, and ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.
Lower is better for ``nll``, ``crps``, ``energy_score`` and ``calibration_error``.

- ``nll``: ``-log p(y)`` in nats, ``(*B,)``.
- ``crps``: continuous ranked probability score for ``d = 1`` in closed form (Grimit et al.
  2006), ``(*B,)``, in the units of ``y``.
- ``energy_score``: the multivariate generalisation of the CRPS (Gneiting & Raftery 2007), by
  Monte Carlo, ``(*B,)``.
- ``pit``: probability integral transform ``F_k(y_k)`` of each target dimension (its marginal
  CDF), ``(*B, d)``; uniform on ``[0, 1]`` for a calibrated model.
- ``interval_coverage``: whether each ``y_k`` falls in the central ``level`` interval of its
  marginal, ``(*B, d)``; its mean should be ``level``.
- ``calibration_error``: ``|freq(PIT <= τ) - τ|`` over a set of levels ``τ``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.special import ndtr

from .distributions._common import component_std, require_1d, seeded_generator
from .distributions.mixture import GaussianMixture
from .distributions.queries import interval, marginals_1d
from .errors import InputError, InputTypeError

__all__ = ["calibration_error", "crps", "energy_score", "interval_coverage", "nll", "pit"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _check(dist: object, y: object, reduction: str, what: str) -> tuple[GaussianMixture, Tensor]:
    if not isinstance(dist, GaussianMixture):
        raise InputTypeError(
            f"{what} needs a torchmdn.GaussianMixture as dist; got {type(dist).__name__}"
        )
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y, dtype=dist.loc.dtype, device=dist.loc.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputTypeError(f"y must be a tensor of numbers; got {type(y).__name__}") from err
    y = y.to(dist.loc.dtype) if not y.is_floating_point() else y
    d, batch = dist.event_shape[0], tuple(dist.batch_shape)
    expected = batch + (d,)
    if tuple(y.shape) != expected:
        hint = (
            " Add the target axis: y.unsqueeze(-1)."
            if d == 1 and tuple(y.shape) == batch
            else " Pass one target row per prediction."
        )
        raise InputError(
            f"{what}: y must have shape {expected} (batch shape {batch} + event shape ({d},)); "
            f"got {tuple(y.shape)}.{hint}"
        )
    return dist, y


def nll(dist: GaussianMixture, y: Tensor, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood ``-log p(y)`` in nats.

    Args:
        dist: predicted mixture, batch shape ``B``, event ``(d,)``.
        y: observed targets ``(*B, d)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(*B,)``).
    """
    dist, y = _check(dist, y, reduction, "nll")
    return _reduce(-dist.log_prob(y), reduction)


def _a(m: Tensor, s: Tensor) -> Tensor:
    # A(m, s²) = 2 s φ(m/s) + m (2Φ(m/s) − 1)  (Grimit et al. 2006)
    z = m / s
    return 2 * s * torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi) + m * (2 * ndtr(z) - 1)


def crps(dist: GaussianMixture, y: Tensor, reduction: str = "mean") -> Tensor:
    r"""Continuous ranked probability score ``∫ (F(z) - 1{z >= y})² dz`` of a 1-d mixture.

    Closed form (Grimit et al. 2006):
    ``CRPS = Σ_i w_i A(y-μ_i, σ_i²) - ½ Σ_ij w_i w_j A(μ_i-μ_j, σ_i²+σ_j²)`` with
    ``A(m, s²) = 2 s φ(m/s) + m (2Φ(m/s) - 1)``. In the units of ``y``; lower is better.

    Args:
        dist: predicted mixture with ``d = 1``, batch shape ``B``.
        y: observed targets ``(*B, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(*B,)``).
    """
    dist, y = _check(dist, y, reduction, "crps")
    require_1d(dist, "crps", "Use energy_score for a d-dimensional target.")
    w = dist.probs  # [*B, n]
    mu = dist.loc.squeeze(-1)  # [*B, n]
    std = component_std(dist).squeeze(-1)
    first = (w * _a(y - mu, std)).sum(-1)
    pair_m = mu.unsqueeze(-1) - mu.unsqueeze(-2)  # [*B, n, n]
    # sqrt(σ_i² + σ_j²) without squaring (σ ~ 1e20 would overflow float32)
    pair_s = torch.hypot(std.unsqueeze(-1), std.unsqueeze(-2))
    second = (w.unsqueeze(-1) * w.unsqueeze(-2) * _a(pair_m, pair_s)).sum((-1, -2))
    return _reduce(first - 0.5 * second, reduction)


def energy_score(
    dist: GaussianMixture,
    y: Tensor,
    reduction: str = "mean",
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Energy score ``E‖X - y‖ - ½ E‖X - X'‖`` (Gneiting & Raftery 2007), by Monte Carlo.

    Draws two independent sets of ``n_samples`` points per batch element: both estimate
    ``E‖X - y‖`` and their pairs estimate ``E‖X - X'‖`` (unbiased; Monte Carlo error about
    ``spread / sqrt(n_samples)``). Meant for ``d > 1``; for ``d = 1`` it equals the CRPS (use
    :func:`crps`, which is exact).

    Args:
        dist: predicted mixture, batch shape ``B``, event ``(d,)``.
        y: observed targets ``(*B, d)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(*B,)``).
        n_samples: draws per batch element for each of the two sets.
        generator: random source; by default a local generator seeded with 0 (reproducible,
            the global random state is untouched).
    """
    dist, y = _check(dist, y, reduction, "energy_score")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be an int >= 1 (e.g. 1000); got {n_samples!r}")
    gen = seeded_generator(dist, generator, 0)
    x = dist.sample((2, n_samples), generator=gen)  # [2, N, *B, d]
    to_y = (x - y).norm(dim=-1).mean((0, 1))  # [*B]
    spread = (x[0] - x[1]).norm(dim=-1).mean(0)
    return _reduce(to_y - 0.5 * spread, reduction)


def pit(dist: GaussianMixture, y: Tensor, reduction: str = "none") -> Tensor:
    """Probability integral transform: each target's marginal CDF at the observation.

    For ``d = 1`` this is ``F(y)``; for ``d > 1`` each dimension gets its marginal CDF (exact for
    every covariance type). Calibrated predictions give values uniform on ``[0, 1]``. Unlike
    the scores, the default ``reduction`` is ``"none"``: the values are what one looks at.

    Args:
        dist: predicted mixture, batch shape ``B``, event ``(d,)``.
        y: observed targets ``(*B, d)``.
        reduction: ``"none"`` (``(*B, d)``), ``"mean"`` or ``"sum"``.
    """
    dist, y = _check(dist, y, reduction, "pit")
    w = dist.probs.unsqueeze(-1)  # [*B, n, 1]
    z = (y.unsqueeze(-2) - dist.loc) / component_std(dist)  # [*B, n, d]
    return _reduce((w * ndtr(z)).sum(-2).clamp(0, 1), reduction)


def interval_coverage(
    dist: GaussianMixture, y: Tensor, level: float = 0.9, reduction: str = "mean"
) -> Tensor:
    """Whether each target lies in its marginal central ``level`` interval (1.0 or 0.0).

    With ``reduction="mean"`` this is the empirical coverage, which should be close to
    ``level`` (binomial standard error ``sqrt(level (1 - level) / N)``).

    Args:
        dist: predicted mixture, batch shape ``B``, event ``(d,)``.
        y: observed targets ``(*B, d)``.
        level: nominal coverage in ``(0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(*B, d)``).
    """
    dist, y = _check(dist, y, reduction, "interval_coverage")
    low, high = interval(marginals_1d(dist), level)  # [*B, d, 1] each
    inside = (y >= low.squeeze(-1)) & (y <= high.squeeze(-1))
    return _reduce(inside.to(y.dtype), reduction)


def calibration_error(
    dist: GaussianMixture,
    y: Tensor,
    levels: Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Calibration error of the predicted quantiles (Kuleshov et al. 2018).

    For each level ``τ`` the observed frequency ``freq(PIT <= τ)`` over the whole batch is
    compared with ``τ``; the error at ``τ`` is ``|freq - τ|``. With N observations the error of
    a perfectly calibrated model is about ``sqrt(τ (1 - τ) / N)``.

    Args:
        dist: predicted mixture, batch shape ``B``, event ``(d,)``.
        y: observed targets ``(*B, d)``.
        levels: probability levels ``τ``; default ``0.05, 0.10, ..., 0.95``.
        reduction: ``"mean"`` (mean absolute calibration error), ``"sum"`` or ``"none"``
            (``(K, d)``: one error per level and target dimension).
    """
    dist, y = _check(dist, y, reduction, "calibration_error")
    if levels is None:
        tau = torch.linspace(0.05, 0.95, 19, dtype=y.dtype, device=y.device)
    else:
        tau = torch.as_tensor(levels, dtype=y.dtype, device=y.device).flatten()
        if tau.numel() == 0 or (tau <= 0).any() or (tau >= 1).any():
            raise InputError(f"levels must be probabilities in (0, 1); got {tau.tolist()}")
    u = pit(dist, y).reshape(-1, y.shape[-1])  # [N, d]
    if u.shape[0] == 0:
        raise InputError("calibration_error needs at least one observation; got an empty batch")
    freq = (u.unsqueeze(0) <= tau[:, None, None]).to(y.dtype).mean(1)  # [K, d]
    return _reduce((freq - tau[:, None]).abs(), reduction)
