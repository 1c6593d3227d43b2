r"""Questions asked of a predicted Gaussian mixture: CDF, quantiles, intervals,
marginals, conditionals, entropy and KL divergence.

Every function takes a :class:`~torchmdn.GaussianMixture` and is vectorised over its batch
shape ``B``; all arithmetic stays on the mixture's device and in its dtype (use float64 for
the accuracies quoted below). ``GaussianMixture`` has thin methods that call these.

- ``cdf`` is exact (closed form) for ``d = 1`` and, for ``d > 1``, for diagonal and isotropic
  components; ``icdf``/``interval`` invert the 1-d CDF by bracketed Newton + bisection.
- ``hdr`` (highest-density regions) and ``modes`` live in :mod:`torchmdn.distributions.hdr` and
  :mod:`torchmdn.distributions.modes`.
- ``marginal`` and ``condition`` are closed form and return a new ``GaussianMixture``.
- ``entropy`` and ``kl_divergence`` are Monte Carlo estimates with a standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.special import log_ndtr, ndtr, ndtri

from .._checks import integer
from .._math import LOG_2PI
from ..errors import InputError
from ._common import (
    as_value,
    broadcast,
    check_dims,
    check_event,
    check_level,
    component_std,
    dim,
    float32,
    log_normal_1d,
    require_1d,
    seeded_generator,
)

if TYPE_CHECKING:
    from .mixture import GaussianMixture

__all__ = [
    "MonteCarloEstimate",
    "cdf",
    "condition",
    "entropy",
    "icdf",
    "interval",
    "kl_divergence",
    "marginal",
    "marginals_1d",
]


class MonteCarloEstimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (both ``(*B,)``)."""

    value: Tensor
    stderr: Tensor


def marginals_1d(gm: GaussianMixture) -> GaussianMixture:
    """Every one-dimensional marginal at once, as a mixture with batch ``B + (d,)`` and d = 1.

    Element ``[..., k]`` is the marginal distribution of ``Y_k`` (exact for all covariance
    types: component ``i`` contributes ``N(μ_ik, Σ_i[k, k])``).
    """
    d = dim(gm)
    logits = gm.logits.unsqueeze(-2).expand(*gm.batch_shape, d, gm.n_components)  # [*B, d, n]
    loc = gm.loc.transpose(-1, -2).unsqueeze(-1)  # [*B, d, n, 1]
    std = component_std(gm).transpose(-1, -2).unsqueeze(-1)  # [*B, d, n, 1]
    return type(gm)(logits, loc, scale=std, validate_args=False)


# ---------------------------------------------------------------------- CDF and quantiles


def cdf(gm: GaussianMixture, value: Tensor) -> Tensor:
    r"""Joint CDF ``P(Y_1 <= y_1, ..., Y_d <= y_d)``.

    Exact: ``Σ_i π_i Π_k Φ((y_k - μ_ik) / σ_ik)`` for diagonal and isotropic components (any
    ``d``) and for ``d = 1``. A full-covariance mixture with ``d > 1`` has no closed form and
    raises :class:`~torchmdn.errors.InputError`.

    Args:
        gm: the mixture, batch shape ``B``, event shape ``(d,)``.
        value: ``(*S, *B, d)`` points (``S`` any sample shape).

    Returns:
        ``(*S, *B)`` probabilities.
    """
    value = as_value(gm, value, "value")
    check_event(gm, value, "value")
    d = dim(gm)
    if gm.covariance_type == "full" and d > 1:
        raise InputError(
            f"cdf of a full-covariance mixture in d = {d} has no closed form; take 1-d "
            "marginals (gm.marginal([k]).cdf(...)), or estimate it from samples: "
            "(gm.sample((N,)) <= value).all(-1).double().mean(0)"
        )
    z = (value.unsqueeze(-2) - gm.loc) / component_std(gm)  # [*S, *B, n, d]
    if d == 1:
        return (gm.probs * ndtr(z.squeeze(-1))).sum(-1)
    # the product of d CDFs can underflow: add logs
    return torch.logsumexp(gm.log_weights + log_ndtr(z).sum(-1), dim=-1).exp()


def _cdf_sf_pdf(loc: Tensor, std: Tensor, w: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # x [..., 1] against components [..., n]: CDF, survival function and density of a 1-d mixture
    z = (x - loc) / std  # [..., n]
    cdf_ = (w * ndtr(z)).sum(-1)
    sf = (w * ndtr(-z)).sum(-1)
    pdf = (w * torch.exp(-0.5 * z.square()) / (std * math.sqrt(2.0 * math.pi))).sum(-1)
    return cdf_, sf, pdf


def icdf(gm: GaussianMixture, q: Tensor | float, max_iter: int = 200) -> Tensor:
    r"""Quantile function of a 1-d mixture: the ``y`` with ``cdf(y) = q``.

    Vectorised bracketed Newton iteration with a bisection fallback. The bracket
    ``[min_i(μ_i + σ_i z_q), max_i(μ_i + σ_i z_q)]`` with ``z_q = Φ⁻¹(q)`` always holds the
    answer. Above the median the survival function is matched instead of the CDF, so upper
    tail quantiles keep their relative accuracy. In float64 ``|cdf(icdf(q)) - q|`` is at the
    round-off level (far below 1e-6).

    Args:
        gm: a mixture with ``d = 1`` and batch shape ``B``.
        q: probabilities in ``[0, 1]``, any shape that broadcasts against ``B`` (e.g.
            ``(*S, *B)``); ``0`` and ``1`` give ``-inf`` and ``inf``.
        max_iter: iteration cap (convergence takes far fewer).

    Returns:
        ``broadcast(q.shape, B) + (1,)``: quantiles as points of the event space, so that
        ``cdf(icdf(q)) == q`` and ``log_prob(icdf(q))`` work directly.
    """
    require_1d(gm, "icdf")
    if gm.loc.dtype in (torch.float16, torch.bfloat16):  # computed in float32, returned as asked
        q = q if isinstance(q, (int, float)) else torch.as_tensor(q).float()
        return icdf(float32(gm), q, max_iter).to(gm.loc.dtype)
    q = as_value(gm, q, "q").to(gm.loc.dtype)
    if torch.isnan(q).any() or (q < 0).any() or (q > 1).any():
        raise InputError(
            f"q must hold probabilities in [0, 1]; got values from {q.min().item():.4g} to "
            f"{q.max().item():.4g}"
        )
    shape = broadcast(
        f"q of shape {tuple(q.shape)} does not broadcast against the batch shape "
        f"{tuple(gm.batch_shape)}",
        q.shape, gm.batch_shape,
    )  # fmt: skip
    q = q.expand(shape)
    w = gm.probs
    loc, std = gm.loc.squeeze(-1), component_std(gm).squeeze(-1)  # [*B, n]
    inner = q.clamp(torch.finfo(q.dtype).tiny, 1 - torch.finfo(q.dtype).eps / 2)
    zq = ndtri(inner).unsqueeze(-1)  # [*Q, 1]
    cand = loc + std * zq  # [*Q, n]
    live = w > 0  # a zero-weight component must not widen the bracket
    lo = torch.where(live, cand, torch.inf).amin(-1)
    hi = torch.where(live, cand, -torch.inf).amax(-1)
    upper = q > 0.5
    target = torch.where(upper, 1 - q, q)  # exact in floating point for q > 0.5
    x = 0.5 * (lo + hi)
    eps = torch.finfo(q.dtype).eps
    width_tol = 4 * eps * (x.abs() + std.amin(-1).expand(shape))
    for _ in range(max_iter):
        c, s, p = _cdf_sf_pdf(loc, std, w, x.unsqueeze(-1))
        # g is increasing in x on both branches
        g = torch.where(upper, target - s, c - target)
        below = g < 0
        lo = torch.where(below, x, lo)
        hi = torch.where(below, hi, x)
        step = g / p
        newton = x - step
        ok = torch.isfinite(newton) & (newton > lo) & (newton < hi)
        x_new = torch.where(ok, newton, 0.5 * (lo + hi))
        done = ((x_new - x).abs() <= width_tol) | ((hi - lo) <= width_tol) | (g == 0)
        x = torch.where(done, x, x_new)
        if bool(done.all()):
            break
    x = torch.where(q == 0, -torch.inf, torch.where(q == 1, torch.inf, x))
    return x.unsqueeze(-1)


def interval(gm: GaussianMixture, level: float = 0.9) -> tuple[Tensor, Tensor]:
    """Central interval holding probability ``level`` (d = 1): quantiles ``(1 ∓ level) / 2``.

    Args:
        gm: a mixture with ``d = 1`` and batch shape ``B``.
        level: coverage in ``(0, 1)``.

    Returns:
        ``(low, high)``, each ``(*B, 1)``.
    """
    require_1d(gm, "interval")
    level = check_level(level)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=gm.loc.dtype, device=gm.loc.device)
    q = q.reshape((2,) + (1,) * len(gm.batch_shape))
    both = icdf(gm, q)  # [2, *B, 1]
    return both[0], both[1]


# ---------------------------------------------------------------------- highest-density regions


def marginal(gm: GaussianMixture, dims: Sequence[int] | int) -> GaussianMixture:
    """The marginal distribution of the dimensions ``dims`` (closed form).

    Args:
        gm: the mixture, batch shape ``B``, event ``(d,)``.
        dims: the dimensions kept, in the order wanted.

    Returns:
        A ``GaussianMixture`` with the same weights, batch shape ``B`` and event
        ``(len(dims),)``; the covariance type is kept (full components keep a Cholesky
        factor of the sub-covariance).
    """
    keep = check_dims(gm, dims, "dims")
    idx = torch.tensor(keep, device=gm.loc.device)
    loc = gm.loc.index_select(-1, idx)
    kind = gm.covariance_type
    if kind == "diagonal":
        return type(gm)(gm.logits, loc, scale=gm.scale.index_select(-1, idx))
    if kind == "isotropic":
        return type(gm)(gm.logits, loc, scale=gm.scale)
    cov = gm.component_covariance.index_select(-2, idx).index_select(-1, idx)
    return type(gm)(gm.logits, loc, scale_tril=torch.linalg.cholesky(cov))


def condition(gm: GaussianMixture, dims: Sequence[int] | int, values: Tensor) -> GaussianMixture:
    r"""The conditional distribution of the other dimensions given ``Y[dims] = values``.

    Each component is conditioned as a Gaussian; the weights are re-scaled by each
    component's marginal likelihood of the observed values:
    ``π_i' ∝ π_i N(v; μ_{i,o}, Σ_{i,oo})``. For full components
    ``μ_{i,u|o} = μ_{i,u} + Σ_{i,uo} Σ_{i,oo}^{-1} (v - μ_{i,o})`` and
    ``Σ_{i,u|o} = Σ_{i,uu} - Σ_{i,uo} Σ_{i,oo}^{-1} Σ_{i,ou}``, both read off one Cholesky
    factor of the covariance with the observed dimensions first.

    Args:
        gm: the mixture, batch shape ``B``, event ``(d,)``.
        dims: the observed dimensions (at least one dimension must remain).
        values: ``(*B', len(dims))`` observed values; ``B'`` broadcasts against ``B``.

    Returns:
        A ``GaussianMixture`` over the remaining dimensions (in increasing order), batch shape
        ``broadcast(B', B)``, same covariance type.
    """
    obs = check_dims(gm, dims, "dims")
    d = dim(gm)
    rest = [k for k in range(d) if k not in obs]
    if not rest:
        raise InputError(
            f"condition(dims={list(dims) if not isinstance(dims, int) else dims}) observes all "
            f"{d} dimensions, so nothing is left to predict; leave at least one out"
        )
    v = as_value(gm, values, "values")
    if v.dim() < 1 or v.shape[-1] != len(obs):
        raise InputError(
            f"values must have shape (*batch, {len(obs)}), one value per observed dim {obs}; "
            f"got shape {tuple(v.shape)}"
        )
    batch = broadcast(
        f"values of shape {tuple(v.shape)} do not broadcast against the batch shape "
        f"{tuple(gm.batch_shape)}",
        v.shape[:-1], gm.batch_shape,
    )  # fmt: skip
    dev = gm.loc.device
    o_idx, u_idx = torch.tensor(obs, device=dev), torch.tensor(rest, device=dev)
    kind = gm.covariance_type
    vo = v.unsqueeze(-2)  # [*B, 1, o]
    if kind == "full":
        perm = torch.tensor(obs + rest, device=dev)
        cov = gm.component_covariance.index_select(-2, perm).index_select(-1, perm)
        tril = torch.linalg.cholesky(cov)  # [[L_oo, 0], [L_uo, L_uu]]
        m = len(obs)
        l_oo, l_uo, l_uu = tril[..., :m, :m], tril[..., m:, :m], tril[..., m:, m:]
        diff = vo - gm.loc.index_select(-1, o_idx)  # [*B, n, o]
        w = torch.linalg.solve_triangular(l_oo, diff.unsqueeze(-1), upper=False)  # L_oo⁻¹ diff
        loglik = (
            -0.5 * w.squeeze(-1).square().sum(-1)
            - l_oo.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * m * LOG_2PI
        )  # [*B, n]
        loc = gm.loc.index_select(-1, u_idx) + (l_uo @ w).squeeze(-1)
        logits = gm.log_weights + loglik
        return type(gm)(torch.log_softmax(logits, -1), loc, scale_tril=l_uu)
    std = component_std(gm)
    so = std.index_select(-1, o_idx)
    loglik = log_normal_1d(vo, gm.loc.index_select(-1, o_idx), so).sum(-1)  # [*B, n]
    logits = torch.log_softmax(gm.log_weights + loglik, -1)
    loc = gm.loc.index_select(-1, u_idx).expand(batch + (gm.n_components, len(rest)))
    scale = gm.scale.index_select(-1, u_idx) if kind == "diagonal" else gm.scale
    return type(gm)(logits, loc, scale=scale)


# ---------------------------------------------------------------------- information


def entropy(
    gm: GaussianMixture,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> MonteCarloEstimate:
    r"""Differential entropy ``H = -E[log p(Y)]`` in nats, by Monte Carlo.

    A Gaussian mixture's entropy has no closed form. This draws ``n_samples`` points per batch
    element and returns the sample mean of ``-log p(Y)`` with its standard error
    ``std(log p(Y)) / sqrt(n_samples)``: the estimate is unbiased and its error shrinks like
    ``1/sqrt(n_samples)``.

    Args:
        gm: the mixture, batch shape ``B``.
        n_samples: draws per batch element.
        generator: random source; by default a local generator seeded with 0 (reproducible,
            the global random state is not touched).

    Returns:
        :class:`MonteCarloEstimate` ``(value (*B,), stderr (*B,))``.
    """
    n_samples = integer("n_samples", n_samples, low=2)
    y = gm.sample((n_samples,), generator=seeded_generator(gm, generator, 0))
    lp = gm.log_prob(y)  # [N, *B]
    return MonteCarloEstimate(-lp.mean(0), lp.std(0) / math.sqrt(n_samples))


def kl_divergence(
    p: GaussianMixture,
    q: GaussianMixture,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> MonteCarloEstimate:
    r"""``KL(p || q) = E_p[log p(Y) - log q(Y)]`` by Monte Carlo, with its standard error.

    Args:
        p, q: mixtures with the same event shape and broadcastable batch shapes.
        n_samples: draws from ``p`` per batch element.
        generator: random source; by default a local generator seeded with 0.

    Returns:
        :class:`MonteCarloEstimate` ``(value (*B,), stderr (*B,))``.
    """
    if p.event_shape != q.event_shape:
        raise InputError(
            f"kl_divergence needs mixtures over the same space; got event shapes "
            f"{tuple(p.event_shape)} and {tuple(q.event_shape)}"
        )
    batch = broadcast(
        f"the batch shapes {tuple(p.batch_shape)} and {tuple(q.batch_shape)} do not broadcast",
        p.batch_shape, q.batch_shape,
    )  # fmt: skip
    n_samples = integer("n_samples", n_samples, low=2)
    y = p.expand(batch).sample((n_samples,), generator=seeded_generator(p, generator, 0))
    diff = p.log_prob(y) - q.log_prob(y)  # [N, *B]
    return MonteCarloEstimate(diff.mean(0), diff.std(0) / math.sqrt(n_samples))
