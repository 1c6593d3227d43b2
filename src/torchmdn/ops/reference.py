"""Plain-autograd Gaussian-mixture log densities: the reference every fused path and the
compiled kernel are tested against, and what their double backward differentiates."""

from __future__ import annotations

import torch
from torch import Tensor

from .._math import LOG_2PI

__all__ = [
    "cholesky_components",
    "diag_components",
    "diag_log_prob",
    "grads",
    "precision_components",
    "scale_tril_log_prob",
    "tril_log_prob",
]


def diag_components(loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool) -> Tensor:
    """``log N(value; μ_i, Σ_i)`` for every component, ``(..., n)``, of diagonal ``scale
    (*B, n, d)`` or isotropic ``scale (*B, n)`` standard deviations: the one definition of a
    component's log density (the fused paths and the kernel are tested against it)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc  # [*S, *B, n, d]
    if isotropic:
        comp = -0.5 * diff.square().sum(-1) / scale.square() - d * scale.log()
    else:
        comp = -0.5 * (diff / scale).square().sum(-1) - scale.log().sum(-1)
    return comp - 0.5 * d * LOG_2PI  # [*S, *B, n]


def precision_components(loc: Tensor, prec: Tensor, value: Tensor) -> Tensor:
    """``log N(value; μ_i, Σ_i)`` from lower-triangular precision factors ``A`` (``Σ⁻¹ = AᵀA``):
    quadratic form and log-determinant from the same ``A`` (its lower triangle only)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc  # [*S, *B, n, d]
    z = (prec.tril() @ diff.unsqueeze(-1)).squeeze(-1)  # [*S, *B, n, d]
    comp = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * z.square().sum(-1)
    return comp - 0.5 * d * LOG_2PI


def cholesky_components(loc: Tensor, tril: Tensor, value: Tensor) -> Tensor:
    """``log N(value; μ_i, Σ_i)`` from Cholesky factors ``L`` (``Σ = LLᵀ``), by substitution."""
    d = loc.shape[-1]
    diff = (value.unsqueeze(-2) - loc).unsqueeze(-1)  # [*S, *B, n, d, 1]
    z = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
    comp = -tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * z.square().sum(-1)
    return comp - 0.5 * d * LOG_2PI


def _mixture(logits: Tensor, comp: Tensor) -> Tensor:
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1)


def diag_log_prob(
    logits: Tensor, loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool
) -> Tensor:
    """Mixture log density, diagonal or isotropic components."""
    return _mixture(logits, diag_components(loc, scale, value, isotropic))


def tril_log_prob(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor) -> Tensor:
    """Mixture log density from precision factors ``A`` (``Σ⁻¹ = AᵀA``)."""
    return _mixture(logits, precision_components(loc, prec, value))


def scale_tril_log_prob(logits: Tensor, loc: Tensor, tril: Tensor, value: Tensor) -> Tensor:
    """Mixture log density from Cholesky factors ``L`` (``Σ = LLᵀ``)."""
    return _mixture(logits, cholesky_components(loc, tril, value))


def grads(fn, inputs: tuple[Tensor, ...], g: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` weighted by ``g``, with a graph for double backward."""
    with torch.enable_grad():
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(fn(*inputs), wanted, g, create_graph=True))
    return tuple(next(found) if t.requires_grad else None for t in inputs)
