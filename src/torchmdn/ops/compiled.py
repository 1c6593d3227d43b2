r"""The mixture log-likelihood on GPUs: the fused maths compiled by ``torch.compile``.

On a GPU the loss is bound by memory traffic and kernel launches, not arithmetic. The tensor
path of :mod:`torchmdn.ops.fused` launches a dozen kernels per direction and writes every
intermediate to memory; here the same maths (the formulas in that module's docstring) is
written as pure functions of the parameters, one for the forward and one for the backward,
and compiled once with ``torch.compile`` (Triton kernels on CUDA): each direction reads its
inputs once, fuses the softplus of a head's raw output, the quadratic forms, the
``logsumexp`` and the gradients, and writes only its results. The backward recomputes what it
needs from the inputs instead of saving intermediates.

- The batch dimension is compiled as dynamic (``maybe_mark_dynamic``): a new batch size, such
  as the last short batch of an epoch, reuses the compiled code instead of recompiling.
- Double backward (``create_graph=True``) differentiates the same functions uncompiled, so
  it is exact.
- It applies to row-aligned inputs (all parameters and ``value`` share one batch shape, the
  training case) in float32/float64, for diagonal and isotropic covariances, the precision
  factor of full ones, and an MDN head's raw output; elsewhere the caller takes its tensor
  path. Used on the device types in :data:`DEVICES` (CUDA); the CPU keeps its compiled C++
  kernel (:mod:`torchmdn.ops.kernel`).
- ``TORCHMDN_COMPILE=0`` switches it off; a compilation that fails warns once, naming the
  error, and the uncompiled functions (same results) are used from then on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .._math import LOG_2PI
from . import reference
from .layout import DIAGONAL, ISOTROPIC, PACKED, PRECISION, head_parameters, unpack_precision

__all__ = ["DEVICES", "available", "compile_keeping_globals", "head_log_prob", "log_prob"]

#: device types on which the compiled path is used (tests add ``"cpu"`` to exercise it)
DEVICES: set[str] = {"cuda"}
_state: dict[str, object] = {"failed": None}
_compiled: dict[str, Callable] = {}


def _enabled() -> bool:
    return os.environ.get("TORCHMDN_COMPILE", "1").strip().lower() not in {
        "0", "off", "false", "no"
    }  # fmt: skip


def _triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - torch without the helper
        return False
    return has_triton()


def available(device_type: str = "cuda") -> bool:
    """Whether the compiled path may run on ``device_type`` here (it is listed in
    :data:`DEVICES`, not switched off, has not failed, and CUDA has Triton)."""
    if device_type not in DEVICES or not _enabled() or _state["failed"] is not None:
        return False
    return device_type != "cuda" or _triton()


def _ready(t: Tensor) -> bool:
    if t.dtype not in (torch.float32, torch.float64):
        return False
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    if torch.compiler.is_compiling() or exporting():
        return False  # an outer compilation or export traces the tensor path itself
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return available(t.device.type)


def compile_keeping_globals(fn: Callable, **options: object) -> Callable:
    """``torch.compile(fn, **options)``, called with torch's global switches kept as they were.

    torch's first compilation in a process turns off the default argument validation of
    ``torch.distributions`` (a global flag); a library must not change it for its caller, so
    each call puts it back.
    """
    from torch.distributions import Distribution

    validate = Distribution._validate_args
    try:  # (the switch flips when the first compiled function is made)
        compiled_fn = torch.compile(fn, **options)
    finally:
        Distribution.set_default_validate_args(validate)

    def call(*args: object, **kwargs: object) -> object:
        validate = Distribution._validate_args
        try:
            return compiled_fn(*args, **kwargs)
        finally:
            Distribution.set_default_validate_args(validate)

    return call


def _call(name: str, fn: Callable, *args: object) -> object:
    """``fn(*args)`` compiled (once per ``name``; the batch dimension dynamic), or plain
    when compiling failed."""
    if _state["failed"] is None:
        try:
            compiled = _compiled.get(name)
            if compiled is None:
                compiled = _compiled[name] = compile_keeping_globals(fn, fullgraph=True)
            rows = args[0].shape[0]  # the batch: dynamic in every input that has it
            for a in args:
                if isinstance(a, Tensor) and a.dim() and a.shape[0] == rows > 1:
                    torch._dynamo.maybe_mark_dynamic(a, 0)
            return compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, once
            _state["failed"] = f"{type(err).__name__}: {err}"
            warnings.warn(
                "torchmdn: torch.compile of the mixture likelihood failed; using the "
                f"uncompiled functions (same results, slower). Reason: {_state['failed']}. "
                "Set TORCHMDN_COMPILE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=4,
            )
    return fn(*args)


# ---------------------------------------------------------------- the maths, rows [N, ...]


def _components(loc: Tensor, fac: Tensor, value: Tensor, kind: int) -> tuple[Tensor, ...]:
    """``log|Σ|^{-1/2} − |z|²/2`` per component and what the backward reuses."""
    d = loc.shape[-1]
    diff = value.unsqueeze(-2) - loc  # [N, n, d]
    if kind == DIAGONAL:
        inv = fac.reciprocal()
        z = diff * inv
        return inv.log().sum(-1) - 0.5 * (z * z).sum(-1), diff, z, inv
    if kind == ISOTROPIC:
        inv = fac.reciprocal()
        z = diff * inv.unsqueeze(-1)
        return d * inv.log() - 0.5 * (z * z).sum(-1), diff, z, inv
    a = fac.tril()  # PRECISION: z = A (y − μ), elementwise products and a short sum
    z = (a * diff.unsqueeze(-2)).sum(-1)
    logdet = a.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return logdet - 0.5 * (z * z).sum(-1), diff, z, a


def _forward(logits: Tensor, loc: Tensor, fac: Tensor, value: Tensor, kind: int) -> Tensor:
    comp = _components(loc, fac, value, kind)[0]
    joint = logits.log_softmax(-1) + comp
    return joint.logsumexp(-1) - 0.5 * loc.shape[-1] * LOG_2PI


def _backward(
    logits: Tensor, loc: Tensor, fac: Tensor, value: Tensor, g: Tensor, kind: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``Σ g · log p`` with respect to ``logits, loc, fac, value``."""
    comp, diff, z, aux = _components(loc, fac, value, kind)
    joint = logits.log_softmax(-1) + comp
    g1 = g.unsqueeze(-1)
    gr = g1 * torch.softmax(joint, -1)  # g r  [N, n]
    dlogits = gr - g1 * torch.softmax(logits, -1)
    if kind == DIAGONAL:
        gi = gr.unsqueeze(-1) * aux  # g r / σ
        dloc = z * gi
        dfac = dloc * z - gi
    elif kind == ISOTROPIC:
        gi = gr * aux
        dloc = z * gi.unsqueeze(-1)
        dfac = ((z * z).sum(-1) - loc.shape[-1]) * gi
    else:
        gz = z * gr.unsqueeze(-1)  # g r z
        dloc = (aux * gz.unsqueeze(-1)).sum(-2)  # g r Aᵀ z
        outer = -(gz.unsqueeze(-1) * diff.unsqueeze(-2))
        diag = gr.unsqueeze(-1) / aux.diagonal(dim1=-2, dim2=-1)
        dfac = (outer + torch.diag_embed(diag)).tril()
    return dlogits, dloc, dfac, -dloc.sum(-2)


def _head_split(out: Tensor, floor: Tensor, kind: int, n: int, d: int):
    logits, loc, scale = head_parameters(out, floor, kind, n, d)
    fac = unpack_precision(scale, floor) if kind == PACKED else scale
    return logits, loc, fac


def _head_forward(out: Tensor, floor: Tensor, value: Tensor, kind: int, n: int) -> Tensor:
    d = value.shape[-1]
    logits, loc, fac = _head_split(out, floor, kind, n, d)
    return _forward(logits, loc, fac, value, PRECISION if kind == PACKED else kind)


def _head_backward(
    out: Tensor, floor: Tensor, value: Tensor, g: Tensor, kind: int, n: int
) -> tuple[Tensor, Tensor]:
    """Gradients with respect to the head's output and ``value``."""
    d = value.shape[-1]
    logits, loc, fac = _head_split(out, floor, kind, n, d)
    dlogits, dloc, dfac, dvalue = _backward(
        logits, loc, fac, value, g, PRECISION if kind == PACKED else kind
    )
    raw = out[..., n + n * d :]
    if kind == PACKED:  # back to the packing; diagonal entries through 1 / (softplus + floor)
        rows, cols = torch.tril_indices(d, d, device=out.device)
        draw = dfac.flatten(-2)[..., rows * d + cols]  # [N, n, m]
        pos = torch.arange(d, device=out.device)
        pos = pos * (pos + 3) // 2
        a_diag = fac.diagonal(dim1=-2, dim2=-1)
        sig = torch.sigmoid(raw.unflatten(-1, (n, -1))[..., pos])
        chain = torch.ones_like(draw).index_copy(-1, pos, -(a_diag * a_diag) * sig)
        draw = draw * chain
    else:
        draw = dfac * torch.sigmoid(raw).reshape(dfac.shape)  # softplus' = sigmoid
    return torch.cat([dlogits, dloc.flatten(1), draw.flatten(1)], -1), dvalue


# ---------------------------------------------------------------- autograd


class _LogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, loc, fac, value, kind):
        ctx.kind = kind
        ctx.save_for_backward(logits, loc, fac, value)
        return _call("forward", _forward, logits, loc, fac, value, kind)

    @staticmethod
    def backward(ctx, g):
        inputs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain functions
            fn = lambda *t: _forward(*t, ctx.kind)  # noqa: E731
            return reference.grads(fn, inputs, g) + (None,)
        grads = _call("backward", _backward, *inputs, g.contiguous(), ctx.kind)
        need = ctx.needs_input_grad
        return tuple(t if w else None for t, w in zip(grads, need, strict=False)) + (None,)


class _HeadLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, value, floor, kind, n):
        ctx.kind, ctx.n = kind, n
        ctx.save_for_backward(out, value, floor)
        return _call("head_forward", _head_forward, out, floor, value, kind, n)

    @staticmethod
    def backward(ctx, g):
        out, value, floor = ctx.saved_tensors
        if torch.is_grad_enabled():
            fn = lambda o, v: _head_forward(o, floor, v, ctx.kind, ctx.n)  # noqa: E731
            return reference.grads(fn, (out, value), g) + (None,) * 3
        dout, dvalue = _call(
            "head_backward", _head_backward, out, floor, value, g.contiguous(), ctx.kind, ctx.n
        )
        need = ctx.needs_input_grad
        return (dout if need[0] else None, dvalue if need[1] else None) + (None,) * 3


# ---------------------------------------------------------------- entry points


def log_prob(kind: int, logits: Tensor, loc: Tensor, fac: Tensor, value: Tensor) -> Tensor | None:
    """``log p(value)`` by the compiled functions, or ``None`` where they do not apply.

    ``kind`` is :data:`~torchmdn.ops.layout.DIAGONAL`, ``ISOTROPIC`` or ``PRECISION`` (the
    lower-triangular precision factor); every input has the batch shape of ``value[..., 0]``.
    """
    if kind not in (DIAGONAL, ISOTROPIC, PRECISION) or not _ready(logits):
        return None
    batch, (n, d) = value.shape[:-1], loc.shape[-2:]
    tail = {DIAGONAL: (n, d), ISOTROPIC: (n,)}.get(kind, (n, d, d))
    if logits.shape != batch + (n,) or loc.shape != batch + (n, d) or fac.shape != batch + tail:
        return None
    if not len(batch) or not all(t.dtype == logits.dtype for t in (loc, fac, value)):
        return None
    rows = [t.reshape((-1,) + t.shape[len(batch) :]) for t in (logits, loc, fac, value)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in rows):
        out = _LogProb.apply(*rows, kind)
    else:
        out = _call("forward", _forward, *rows, kind)
    return out.reshape(batch)


def head_log_prob(out: Tensor, floor: Tensor, kind: int, n: int, value: Tensor) -> Tensor | None:
    """``log p(value)`` from an MDN head's output ``(*B, F)`` (``value (*B, d)``) by the
    compiled functions, or ``None`` where they do not apply."""
    if not _ready(out) or value.dtype != out.dtype or out.shape[:-1] != value.shape[:-1]:
        return None
    batch = value.shape[:-1]
    if not len(batch):
        return None
    floor = floor.to(out.dtype)
    rows = (out.reshape(-1, out.shape[-1]), value.reshape(-1, value.shape[-1]))
    if torch.is_grad_enabled() and any(t.requires_grad for t in rows):
        lp = _HeadLogProb.apply(*rows, floor, kind, n)
    else:
        lp = _call("head_forward", _head_forward, rows[0], floor, rows[1], kind, n)
    return lp.reshape(batch)
