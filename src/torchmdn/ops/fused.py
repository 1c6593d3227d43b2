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
  ``∂/∂A = −tril(g r z (y − μ)ᵀ) + g r diag(1/A_jj)``;
- full, from the Cholesky factor ``L`` itself (``z = L⁻¹(y − μ)`` by forward substitution,
  ``log|Σ|^{-1/2} = −Σ_j log L_jj``), with ``w = L⁻ᵀ(g r z)`` by back substitution:
  ``∂/∂μ = w``, ``∂/∂L = tril(w zᵀ) − g r diag(1/L_jj)``.

Second-order use (``create_graph=True``, e.g. gradient penalties or Hessian-vector products)
is supported: the backward then recomputes the plain-autograd graph from the saved inputs, so
double backward is exact (and as slow as the plain path).

On the CPU the same Functions' maths runs as one compiled pass per direction when the
kernel of :mod:`torchmdn.ops.kernel` is available (built on first use); on CUDA it runs as
``torch.compile``\ d (Triton) functions of :mod:`torchmdn.ops.compiled`. The tensor-level code
below is the fallback for other devices, layouts, an outer ``torch.compile`` and machines
without a compiler, and all are tested against each other and the plain-autograd reference.

This module imports nothing but torch and the other ``torchmdn.ops`` modules
(``distributions/mixture.py`` imports it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._math import LOG_2PI
from . import compiled, kernel, layout, reference
from .layout import head_parameters, unpack_precision

__all__ = [
    "diag_log_prob",
    "head_log_prob",
    "heads_log_prob",
    "packed_log_prob",
    "scale_tril_log_prob",
    "tril_log_prob",
]

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
    out = (s / sc).log_().add_(m.squeeze(-1)).sub_(0.5 * d * LOG_2PI)
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
            return reference.grads(
                lambda *t: reference.diag_log_prob(*t, ctx.isotropic),
                (logits, loc, scale, value),
                g,
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
    kind = layout.ISOTROPIC if isotropic else layout.DIAGONAL
    out = kernel.log_prob(kind, logits, loc, scale, value)
    if out is None:
        out = compiled.log_prob(kind, logits, loc, scale, value)
    if out is not None:
        return out
    if _needs_graph(logits, loc, scale, value):
        return _DiagLogProb.apply(logits, loc, scale, value, isotropic)
    return _diag_forward(logits, loc, scale, value, isotropic)[0]


# ---------------------------------------------------------------- full covariance


def _tril_forward(logits: Tensor, loc: Tensor, prec: Tensor, value: Tensor):
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc  # [*S, *B, n, d]
    z = (prec.tril() @ diff.unsqueeze(-1)).squeeze(-1)  # one batched matmul, no solve
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
            return reference.grads(reference.tril_log_prob, (logits, loc, prec, value), g)
        gr, dlogits = _logits_and_responsibility_grads(g, ec, sc, e, s, logits.shape, need[0])
        dloc = dprec = dvalue = None
        gz = z * gr.unsqueeze(-1)  # g r z   [*S, *B, n, d]
        if need[2]:
            dprec = (gz.unsqueeze(-1) * diff.unsqueeze(-2)).neg_().tril_()  # −tril(g r z (y − μ)ᵀ)
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
    jitter or floor went into ``A``. ``prec`` must be lower triangular: the compiled kernel
    reads only its lower triangle (and gives a zero gradient above the diagonal).
    """
    out = kernel.log_prob(layout.PRECISION, logits, loc, prec, value)
    if out is None:
        out = compiled.log_prob(layout.PRECISION, logits, loc, prec, value)
    if out is not None:
        return out
    if _needs_graph(logits, loc, prec, value):
        return _TrilLogProb.apply(logits, loc, prec, value)
    return _tril_forward(logits, loc, prec, value)[0]


# ---------------------------------------------------------------- full, packed as a head emits it


def head_log_prob(out: Tensor, floor: Tensor, kind: int, n: int, value: Tensor) -> Tensor:
    """``log p(value)`` of the mixture in an MDN head's output (see :func:`head_parameters`):
    the compiled kernel reads the output itself; elsewhere its pieces take the paths above."""
    lp = kernel.head_log_prob(out, floor, kind, n, value)
    if lp is None:
        lp = compiled.head_log_prob(out, floor, kind, n, value)
    if lp is not None:
        return lp
    logits, loc, scale = head_parameters(out, floor, kind, n, value.shape[-1])
    if kind == layout.PACKED:
        return packed_log_prob(logits, loc, scale, floor, value)
    return diag_log_prob(logits, loc, scale, value, kind == layout.ISOTROPIC)


def heads_log_prob(out: Tensor, heads: Sequence[tuple[int, int, Tensor]], value: Tensor) -> Tensor:
    """``log p(value)`` under several heads whose outputs sit side by side in ``out (N, W)``
    (each ``(kind, n_components, floor)``, in the order of its columns), ``(N, heads)``: one
    node of the compiled kernel for all where it runs, else :func:`head_log_prob` per head."""
    lp = kernel.heads_log_prob(out, heads, value)
    if lp is not None:
        return lp
    d = value.shape[-1]
    widths = [layout.head_width(kind, n, d) for kind, n, _ in heads]
    parts = out.split(widths, -1)
    return torch.stack(
        [
            head_log_prob(part, floor, kind, n, value)
            for part, (kind, n, floor) in zip(parts, heads, strict=True)
        ],
        -1,
    )


def packed_log_prob(
    logits: Tensor, loc: Tensor, packed: Tensor, floor: Tensor, value: Tensor
) -> Tensor:
    """``log p(value)`` of a full-covariance mixture from a head's packed precision factor
    (see :func:`unpack_precision`): the compiled kernel reads the packing itself; elsewhere
    the dense factor goes to :func:`tril_log_prob`."""
    out = kernel.log_prob(layout.PACKED, logits, loc, packed, value, floor)
    if out is not None:
        return out
    return tril_log_prob(logits, loc, unpack_precision(packed, floor), value)


# ---------------------------------------------------------------- full, from scale_tril


def _dim_major(tril: Tensor, ndim: int) -> Tensor:
    """``L`` viewed as ``[d, d, 1, ..., 1, *B, n]`` (no copy), ``ndim`` dimensions after the
    leading two, so that ``L[i, j:k]`` broadcasts against ``res[j:k]`` of ``[d, *S, *B, n]``."""
    lt = tril.movedim((-2, -1), (0, 1))
    return lt[(slice(None), slice(None)) + (None,) * (ndim - lt.dim() + 2)]


def _forward_substitution(lt: Tensor, res: Tensor) -> Tensor:
    """``L⁻¹ r`` in place on ``res [d, *S, *B, n]`` (``lt`` from :func:`_dim_major`).

    LAPACK's batched triangular solve pays a fixed cost per (tiny) matrix; ``d`` vectorised
    steps over all matrices at once are two to three times faster for ``d`` up to a few tens.
    """
    d = res.shape[0]
    for j in range(d):
        res[j].div_(lt[j, j])
        if j + 1 < d:
            res[j + 1 :].addcmul_(lt[j + 1 :, j], res[j], value=-1)
    return res


def _back_substitution(lt: Tensor, res: Tensor) -> Tensor:
    """``L⁻ᵀ r`` in place on ``res [d, *S, *B, n]``."""
    for j in range(res.shape[0] - 1, -1, -1):
        res[j].div_(lt[j, j])
        if j:
            res[:j].addcmul_(lt[j, :j], res[j], value=-1)
    return res


def _scale_tril_forward(logits: Tensor, loc: Tensor, tril: Tensor, value: Tensor):
    d = loc.shape[-1]
    # y − μ with the output dimension first: [d, *S, *B, n], contiguous
    diff = (value.unsqueeze(-2) - loc).movedim(-1, 0).contiguous()
    z = _forward_substitution(_dim_major(tril, diff.dim() - 1), diff)  # L⁻¹ (y − μ)
    q = (z * z).sum(0)  # |z|²  [*S, *B, n]
    # log |Σ|^{-1/2}; log of a contiguous copy (4x faster than of the strided diagonal)
    diag = tril.diagonal(dim1=-2, dim2=-1).clone(memory_format=torch.contiguous_format)
    logdet = _rowsum(diag.log_()).neg_()
    out, ec, sc, e, s = _mix(logits, torch.add(logdet, q, alpha=-0.5), d)
    return out, z, ec, sc, e, s


class _ScaleTrilLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, loc, tril, value):
        out, *saved = _scale_tril_forward(logits, loc, tril, value)
        ctx.save_for_backward(logits, loc, tril, value, *saved)
        return out

    @staticmethod
    def backward(ctx, g):
        logits, loc, tril, value, z, ec, sc, e, s = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph
            return reference.grads(reference.scale_tril_log_prob, (logits, loc, tril, value), g)
        gr, dlogits = _logits_and_responsibility_grads(g, ec, sc, e, s, logits.shape, need[0])
        dloc = dtril = dvalue = None
        if need[1] or need[2] or need[3]:
            lt = _dim_major(tril, z.dim() - 1)
            w = _back_substitution(lt, z * gr)  # L⁻ᵀ (g r z)   [d, *S, *B, n]
            w = w.movedim(0, -1).contiguous()  # = ∂/∂μ in L's layout [*S, *B, n, d]
            if need[2]:  # tril(w zᵀ) − g r diag(1/L_jj)
                d = z.shape[0]
                zn = z.movedim(0, -1).contiguous()
                shape = w.shape + (d,)
                # in L's own memory layout when the shapes agree (a Cholesky factor from LAPACK
                # is column-major): the gradient is then accumulated without a copy
                dtril = torch.empty_like(tril) if shape == tril.shape else w.new_empty(shape)
                mask = z.new_ones(d, d).tril_()
                a, b, out = (zn, w, dtril.mT) if dtril.mT.is_contiguous() else (w, zn, dtril)
                if out is not dtril:  # fill the contiguous transposed view, vectorised
                    mask = mask.mT
                torch.mul(a.unsqueeze(-1), b.unsqueeze(-2), out=out).mul_(mask)
                diag = tril.diagonal(dim1=-2, dim2=-1)
                dtril.diagonal(dim1=-2, dim2=-1).sub_(gr.unsqueeze(-1) / diag)
                dtril = dtril.sum_to_size(tril.shape)
            if need[3]:
                dvalue = w.sum(-2).neg_().sum_to_size(value.shape)
            if need[1]:
                dloc = w.sum_to_size(loc.shape)
        return dlogits, dloc, dtril, dvalue


def scale_tril_log_prob(logits: Tensor, loc: Tensor, tril: Tensor, value: Tensor) -> Tensor:
    """``log p(value)`` of a full-covariance mixture given its Cholesky factors.

    ``tril (*B, n, d, d)`` is lower triangular with a positive diagonal, ``Σ_i = L_iL_iᵀ``.
    No inverse is formed: ``L⁻¹(y − μ)`` is one forward substitution, the backward one back
    substitution; entries above the diagonal are ignored (their gradient is zero).
    """
    out = kernel.log_prob(layout.CHOLESKY, logits, loc, tril, value)
    if out is not None:
        return out
    if _needs_graph(logits, loc, tril, value):
        return _ScaleTrilLogProb.apply(logits, loc, tril, value)
    return _scale_tril_forward(logits, loc, tril, value)[0]


# ---------------------------------------------------------------- second order
