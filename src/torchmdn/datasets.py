"""Synthetic problems with known conditional densities.

Each generator takes ``n`` and ``seed``, uses its own ``torch.Generator`` (the global random
state is never touched) and returns float32 tensors ``x (n, in)`` and ``y (n, d)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .distributions.mixture import GaussianMixture
from .errors import InputError

__all__ = [
    "bishop",
    "bishop_branches",
    "bishop_log_prob",
    "BISHOP_ENTROPY",
    "rotating_pair",
    "rotating_pair_density",
]

#: Exact conditional entropy H(t | x) of :func:`bishop` in nats, the floor on its expected
#: test NLL: ``log 0.2 - H(x)`` with ``H(x)`` integrated numerically (the test suite checks
#: it). Some write -1.315; that is not what the integral gives.
BISHOP_ENTROPY = -1.2823


def _generator(n: int, seed: int) -> torch.Generator:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer; got {seed!r}")
    return torch.Generator().manual_seed(seed)


def bishop(n: int = 3000, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Bishop's inverse problem (Pattern Recognition and Machine Learning, §5.6).

    ``t ~ U(0, 1)``, ``x = t + 0.3 sin(2πt) + U(-0.1, 0.1)``; the task is to predict ``t``
    from ``x``, which has up to three branches. Returns ``(x, t)``, each of shape ``(n, 1)``.
    The benchmark uses ``bishop(3000, seed=0)`` split into the first 2000 rows for training
    and the last 1000 for testing; the best possible test NLL is :data:`BISHOP_ENTROPY`.
    """
    g = _generator(n, seed)
    t = torch.rand(n, 1, generator=g, dtype=torch.float64)
    noise = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.2 - 0.1
    x = t + 0.3 * torch.sin(2 * math.pi * t) + noise
    return x.float(), t.float()


def bishop_log_prob(x: Tensor, t: Tensor, grid: int = 200_001) -> Tensor:
    """The true ``log p(t | x)`` of :func:`bishop` (exact up to a grid of ``grid`` points).

    ``p(t | x) = 1[|x - g(t)| < 0.1] / Z(x)`` with ``g(t) = t + 0.3 sin 2πt`` and ``Z(x)`` the
    length of ``{s in [0, 1] : |x - g(s)| < 0.1}``. Returns shape ``x.shape[:-1]``.
    """
    s = torch.linspace(0, 1, grid, dtype=torch.float64)
    g_sorted = (s + 0.3 * torch.sin(2 * math.pi * s)).sort().values
    xd, td = x.double().squeeze(-1), t.double().squeeze(-1)
    z = (
        torch.searchsorted(g_sorted, xd + 0.1) - torch.searchsorted(g_sorted, xd - 0.1)
    ).double() / grid
    inside = (xd - (td + 0.3 * torch.sin(2 * math.pi * td))).abs() < 0.1
    inside &= (td >= 0) & (td <= 1)
    return torch.where(inside, -torch.log(z), torch.full_like(z, -math.inf))


def bishop_branches(points: int = 500) -> tuple[Tensor, Tensor]:
    """The noise-free curve ``x = t + 0.3 sin(2πt)`` as ``(x, t)`` points, for plots."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    return (t + 0.3 * torch.sin(2 * math.pi * t)).float(), t.float()


def rotating_pair_density(x: Tensor) -> GaussianMixture:
    """The true ``p(y | x)`` of :func:`rotating_pair`: two correlated 2-d Gaussians.

    For ``x`` in ``[-1, 1]`` the two modes sit at ``±(cos πx, sin πx)``; each is elongated
    along its own direction (standard deviations 0.25 and 0.05), with weights ``σ(±3x)``.
    """
    if x.dim() < 1 or x.shape[-1] != 1:
        raise InputError(f"x must have shape (..., 1); got {tuple(x.shape)}")
    angle = math.pi * x  # [*, 1]
    u = torch.cat([torch.cos(angle), torch.sin(angle)], -1)  # [*, 2] unit direction
    loc = torch.stack([u, -u], -2)  # [*, 2, 2]
    v = torch.stack([-u[..., 1], u[..., 0]], -1)  # orthogonal direction
    cov = 0.25**2 * u.unsqueeze(-1) * u.unsqueeze(-2) + 0.05**2 * v.unsqueeze(-1) * v.unsqueeze(-2)
    tril = torch.linalg.cholesky(cov).unsqueeze(-3).expand(loc.shape + (2,))
    logits = torch.cat([3 * x, -3 * x], -1)
    return GaussianMixture(logits, loc, scale_tril=tril)


def rotating_pair(n: int = 2000, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A 2-d bimodal target with correlated components whose orientation follows ``x``.

    ``x ~ U(-1, 1)`` of shape ``(n, 1)``; ``y (n, 2)`` drawn from :func:`rotating_pair_density`.
    """
    g = _generator(n, seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    y = rotating_pair_density(x).sample(generator=g)
    return x.float(), y.float()


def stress_problems(seed: int = 0) -> dict[str, dict[str, Any]]:
    """Problems that break naive MDN training, each with a train/test split.

    Returns ``{name: {"x": x_train, "y": y_train, "x_test": ..., "y_test": ..., "model":
    MDN keyword arguments}}``: targets scaled by 1e-6 and by 1e6, heavy tails (Student-t with
    1.5 degrees of freedom), a 0-10 integer score (many duplicated targets), tiny data
    (20 rows), a 10-d target with full covariance, and an input column 1e5 times larger than
    the other.
    """
    g = torch.Generator().manual_seed(seed)

    def base(n: int, d_in: int = 2) -> tuple[Tensor, Tensor]:
        x = torch.rand(n, d_in, generator=g, dtype=torch.float64) * 4 - 2
        noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
        y = torch.sin(2 * x[:, :1]) + 0.3 * (1 + x[:, 1:2].abs()) * noise
        return x, y

    def split(x: Tensor, y: Tensor, n_test: int, **model: Any) -> dict[str, Any]:
        return {"x": x[:-n_test].float(), "y": y[:-n_test].float(), "x_test": x[-n_test:].float(),
                "y_test": y[-n_test:].float(), "model": model}  # fmt: skip

    out: dict[str, dict[str, Any]] = {}
    x, y = base(1500)
    out["y scaled 1e-6"] = split(x, y * 1e-6, 500)
    x, y = base(1500)
    out["y scaled 1e6"] = split(x, y * 1e6 + 3e6, 500)
    x, _ = base(1500)
    rng = np.random.default_rng(seed)  # torch's StudentT sampler has no generator argument
    t = torch.from_numpy(rng.standard_t(1.5, size=(1500, 1)))
    out["Student-t, 1.5 dof"] = split(x, torch.sin(2 * x[:, :1]) + 0.3 * t, 500)
    x, y = base(1500)
    out["0-10 score"] = split(x, (5 + 2 * y).round().clamp(0, 10), 500)
    x, y = base(520)
    out["tiny (n = 20)"] = split(x, y, 500)
    x = torch.rand(2000, 3, generator=g, dtype=torch.float64) * 2 - 1
    a = torch.randn(10, 10, generator=g, dtype=torch.float64) / 10**0.5
    z = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    y10 = torch.sin(2 * x[:, :1]) * torch.ones(10, dtype=torch.float64) + 0.3 * z @ a.T
    out["d = 10, full covariance"] = split(x, y10, 500, covariance_type="full", n_components=5)
    x, y = base(1500)
    out["input column x 1e5"] = split(x * torch.tensor([1e5, 1.0], dtype=torch.float64), y, 500)
    return out
