r"""Fused Gaussian-mixture log-likelihood with a hand-written backward.

At the batch sizes MDNs train with, the mixture loss is bound by per-operation overhead, not
arithmetic: plain autograd records a dozen small operations in the forward pass and about
twice as many in the backward. The :class:`torch.autograd.Function`\ s here compute
``log p(y) = logsumexp_i[log π_i + log N(y; μ_i, Σ_i)]`` in a few operations, save exactly
what the gradient needs, and write the backward by hand in a few more:

with responsibilities ``r_i = softmax_i(log π_i + log N_i)``, weights ``p = softmax(logits)``
and upstream gradient ``g``,

- ``∂/∂logits = g (r − p)``;
- diagonal, ``z = (y − μ)/σ``: ``∂/∂μ = g r z/σ``, ``∂/∂σ = g r (z² − 1)/σ``, ``∂/∂y = −Σ_i ∂/∂μ_i``;
- isotropic: the same with ``∂/∂σ = g r (|z|² − d)/σ``;
- full, through the lower-triangular precision factor ``A = L⁻¹`` (``Σ⁻¹ = AᵀA``,
  ``z = A (y − μ)``, ``log|Σ|^{-1/2} = Σ_j log A_jj``): ``∂/∂μ = g r Aᵀz``,
  ``∂/∂A = −g r z (y − μ)ᵀ + g r diag(1/A_jj)``.

Second-order use (``create_graph=True``, e.g. gradient penalties or Hessian-vector products)
is supported: the backward then recomputes the plain-autograd graph from the saved inputs, so
double backward is exact (and as slow as the plain path).

This module imports nothing but torch (``distributions.py`` imports it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["diag_log_prob", "tril_log_prob"]

_LOG_2PI = math.log(2.0 * math.pi)
# just above log of the smallest normal number: float32 -87.3, float64 -708.4
_EXP_FLOOR = {torch.float64: -708.0}


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rowsum(x: Tensor) -> Tensor:
    """Sum over the last dimension as a matrix-vector product.

    torch's reductions over a short innermost dimension (a few components, a few output
    dimensions) are several times slower than a BLAS ``gemv`` over the same memory.
    """
    k = x.shape[-1]
    if k == 1:
        return x.squeeze(-1)
    return (x.reshape(-1, k) @ x.new_ones(k)).reshape(x.shape[:-1])


def _shifted(a: Tensor) -> tuple[Tensor, Tensor]:
    """``m = max_i a_i`` (kept finite) and ``a − m``."""
    m = a.amax(-1, keepdim=True).clamp_(min=torch.finfo(a.dtype).min)
    return m, a - m


def _exp(x: Tensor) -> Tensor:
    """``exp`` of a fresh tensor of values <= 0, in place.

    Arguments below the smallest normal number's logarithm are raised to it first: the
    result changes by less than ``exp(-87) ≈ 1.6e-38`` (float32), far below round-off next
    to the largest term (1), while the vectorised exp avoids its scalar slow path for
    underflowing inputs (10 to 30 times slower).
    """
    return x.clamp_(min=_EXP_FLOOR.get(x.dtype, -87.0)).exp_()


def _mix(logits: Tensor, comp: Tensor, d: int) -> tuple[Tensor, ...]:
    """``log p = logsumexp(log_softmax(logits) + comp) − (d/2) log 2π`` and what the
    backward needs: the shifted exponentials of the logits and of the joint, and their sums.
    """
    _, c = _shifted(logits)  # log_softmax(logits) = c − log sc
    a = c + comp
    ec = _exp(c)
    sc = _rowsum(ec)  # softmax(logits) = ec / sc
    m, e = _shifted(a)
    e = _exp(e)
    s = _rowsum(e)  # responsibilities r = e / s
    out = (s / sc).log_().add_(m.squeeze(-1)).sub_(0.5 * d * _LOG_2PI)
    return out, ec, sc, e, s


def _logits_and_responsibility_grads(
    g: Tensor, ec: Tensor, sc: Tensor, e: Tensor, s: Tensor, shape: torch.Size, need: bool
) -> tuple[Tensor, Tensor | None]:
    """``g r`` (shape of the joint) and ``∂/∂logits = g (r − p)`` summed to ``shape``."""
    gr = e * (g / s).unsqueeze(-1)
    dlogits = None
    if need:
        dlogits = torch.addcmul(gr, ec, (g / sc).unsqueeze(-1), value=-1).sum_to_size(shape)
    return gr, dlogits


# ---------------------------------------------------------------- diagonal / isotropic


def _diag_reference(
    logits: Tensor, loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool
) -> Tensor:
    """Plain-autograd log density (the reference the fused path is tested against)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc
    if isotropic:
        comp = -0.5 * diff.square().sum(-1) / scale.square() - d * scale.log()
    else:
        comp = -0.5 * (diff / scale).square().sum(-1) - scale.log().sum(-1)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * _LOG_2PI


def _diag_forward(logits: Tensor, loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool):
    d = loc.shape[-1]
    inv = scale.reciprocal()  # [*B, n, d] or [*B, n]
    if isotropic:
        z = (value.unsqueeze(-2) - loc).mul_(inv.unsqueeze(-1))  # [*S, *B, n, d]
        logdet = inv.log().mul_(d)  # −d log σ
    else:
        z = (value.unsqueeze(-2) - loc).mul_(inv)
        logdet = _rowsum(inv.log())  # −Σ log σ
    q = _rowsum(z * z)  # |z|²  [*S, *B, n]
    out, ec, sc, e, s = _mix(logits, torch.add(logdet, q, alpha=-0.5), d)
    return out, z, inv, q, ec, sc, e, s


class _DiagLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, loc, scale, value, isotropic):
        out, *saved = _diag_forward(logits, loc, scale, value, isotropic)
        ctx.isotropic = isotropic
        ctx.save_for_backward(logits, loc, scale, value, *saved)
        return out

    @staticmethod
    def backward(ctx, g):
        logits, loc, scale, value, z, inv, q, ec, sc, e, s = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph
            return _reference_grads(
                lambda *t: _diag_reference(*t, ctx.isotropic), (logits, loc, scale, value), g
            ) + (None,)
        gr, dlogits = _logits_and_responsibility_grads(g, ec, sc, e, s, logits.shape, need[0])
        dloc = dscale = dvalue = None
        if need[1] or need[2] or need[3]:
            if ctx.isotropic:
                gi = gr * inv  # g r / σ  [*S, *B, n]
                dz = z * gi.unsqueeze(-1)  # g r z / σ = ∂/∂μ
                if need[2]:
                    dscale = (q - z.shape[-1]).mul_(gi).sum_to_size(scale.shape)
            else:
                gi = gr.unsqueeze(-1) * inv  # g r / σ  [*S, *B, n, d]
                dz = z * gi
                if need[2]:
                    dscale = (dz * z).sub_(gi).sum_to_size(scale.shape)
            if need[3]:
                dvalue = dz.sum(-2).neg_().sum_to_size(value.shape)
            if need[1]:
                dloc = dz.sum_to_size(loc.shape)
        return dlogits, dloc, dscale, dvalue, None


def diag_log_prob(
    logits: Tensor, loc: Tensor, scale: Tensor, value: Tensor, isotropic: bool = False
) -> Tensor:
    """``log p(value)`` of a diagonal (``scale (*B, n, d)``) or isotropic (``(*B, n)``) mixture.

    ``value (*S, *B, d)`` broadcasts against the batch shape; all inputs share one dtype.
    """
    if _needs_graph(logits, loc, scale, value):
        return _DiagLogProb.apply(logits, loc, scale, value, isotropic)
    return _diag_forward(logits, loc, scale, value, isotropic)[0]


# ---------------------------------------------------------------- full covariance


def _tril_reference(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor) -> Tensor:
    """Plain-autograd log density from the precision factor ``A`` (``Σ⁻¹ = AᵀA``)."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc
    z = (prec @ diff.unsqueeze(-1)).squeeze(-1)
    comp = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * z.square().sum(-1)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * _LOG_2PI


def _tril_forward(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor):
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc  # [*S, *B, n, d]
    z = (prec @ diff.unsqueeze(-1)).squeeze(-1)  # one batched matmul, no solve
    logdet = _rowsum(prec.diagonal(dim1=-2, dim2=-1).log())  # log |Σ|^{-1/2}
    out, ec, sc, e, s = _mix(logits, torch.add(logdet, _rowsum(z * z), alpha=-0.5), d)
    return out, diff, z, ec, sc, e, s


class _TrilLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, loc, prec, value):
        out, *saved = _tril_forward(logits, loc, prec, value)
        ctx.save_for_backward(logits, loc, prec, value, *saved)
        return out

    @staticmethod
    def backward(ctx, g):
        logits, loc, prec, value, diff, z, ec, sc, e, s = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph
            return _reference_grads(_tril_reference, (logits, loc, prec, value), g)
        gr, dlogits = _logits_and_responsibility_grads(g, ec, sc, e, s, logits.shape, need[0])
        dloc = dprec = dvalue = None
        gz = z * gr.unsqueeze(-1)  # g r z   [*S, *B, n, d]
        if need[2]:
            dprec = (gz.unsqueeze(-1) * diff.unsqueeze(-2)).neg_()  # −g r z (y − μ)ᵀ
            diag = prec.diagonal(dim1=-2, dim2=-1)
            dprec.diagonal(dim1=-2, dim2=-1).add_(gr.unsqueeze(-1) / diag)
            dprec = dprec.sum_to_size(prec.shape)
        if need[1] or need[3]:
            dmu = (prec.mT @ gz.unsqueeze(-1)).squeeze(-1)  # g r Aᵀ z  [*S, *B, n, d]
            if need[3]:
                dvalue = dmu.sum(-2).neg_().sum_to_size(value.shape)
            if need[1]:
                dloc = dmu.sum_to_size(loc.shape)
        return dlogits, dloc, dprec, dvalue


def tril_log_prob(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor) -> Tensor:
    """``log p(value)`` of a full-covariance mixture given its precision factor.

    ``prec (*B, n, d, d)`` is lower triangular with a positive diagonal, ``Σ_i⁻¹ = A_iᵀA_i``
    (``A = L⁻¹`` for the Cholesky factor ``L`` of ``Σ``). Both the quadratic form and the
    log-determinant come from ``A`` itself, so the density stays exactly normalised whatever
    jitter or floor went into ``A``.
    """
    if _needs_graph(logits, loc, prec, value):
        return _TrilLogProb.apply(logits, loc, prec, value)
    return _tril_forward(logits, loc, prec, value)[0]


# ---------------------------------------------------------------- second order


def _reference_grads(fn, inputs: tuple[Tensor, ...], g: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` weighted by ``g``, with a graph for double backward."""
    with torch.enable_grad():
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(fn(*inputs), wanted, g, create_graph=True))
    return tuple(next(grads) if t.requires_grad else None for t in inputs)
