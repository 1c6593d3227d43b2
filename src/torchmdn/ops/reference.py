"""Plain-autograd Gaussian-mixture log densities: the reference every fused path and the
compiled kernel are tested against, and what their double backward differentiates."""

from __future__ import annotations

import torch
from torch import Tensor

from .._math import LOG_2PI

__all__ = ["diag_log_prob", "grads", "scale_tril_log_prob", "tril_log_prob"]


def diag_log_prob(
    logits: Tensor, loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool
) -> Tensor:
    """Plain-autograd log density (the reference the fused path is tested against)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc
    if isotropic:
        comp = -0.5 * diff.square().sum(-1) / scale.square() - d * scale.log()
    else:
        comp = -0.5 * (diff / scale).square().sum(-1) - scale.log().sum(-1)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * LOG_2PI


def tril_log_prob(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor) -> Tensor:
    """Plain-autograd log density from the precision factor ``A`` (``Σ⁻¹ = AᵀA``)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc
    z = (prec.tril() @ diff.unsqueeze(-1)).squeeze(-1)
    comp = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * z.square().sum(-1)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * LOG_2PI


def scale_tril_log_prob(logits: Tensor, loc: Tensor, tril: Tensor, value: Tensor) -> Tensor:
    """Plain-autograd log density from the Cholesky factor ``L`` (``Σ = LLᵀ``)."""
    d = loc.shape[-1]
    diff = (value.unsqueeze(-2) - loc).unsqueeze(-1)
    z = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
    comp = -tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * z.square().sum(-1)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * LOG_2PI


def grads(fn, inputs: tuple[Tensor, ...], g: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` weighted by ``g``, with a graph for double backward."""
    with torch.enable_grad():
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(fn(*inputs), wanted, g, create_graph=True))
    return tuple(next(found) if t.requires_grad else None for t in inputs)
