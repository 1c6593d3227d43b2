"""The layout of an MDN head's output, defined once: ``[logits | loc | scale parameters]``.

``out (*B, n + n d + s)`` holds the ``n`` mixture logits, the ``n × d`` means (component-major)
and ``s`` raw scale parameters whose meaning depends on the covariance kind:

- :data:`DIAGONAL`: ``n d`` raw values, ``σ = softplus(raw) + floor`` (``floor (d,)``);
- :data:`ISOTROPIC`: ``n`` raw values, ``σ = softplus(raw) + floor`` (``floor (1,)``);
- :data:`PACKED`: ``n d(d+1)/2`` entries of the lower-triangular precision factor, row by row,
  whose diagonal entries are raw (see :func:`unpack_precision`).

The compiled kernel (``csrc/mixture.cpp``, enum ``Kind``) reads the same layout;
:data:`PRECISION` and :data:`CHOLESKY` name the dense full-covariance parameterisations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CHOLESKY",
    "DIAGONAL",
    "HEAD_KINDS",
    "ISOTROPIC",
    "PACKED",
    "PRECISION",
    "head_parameters",
    "head_width",
    "scale_width",
    "unpack_precision",
]

#: the kinds of covariance parameter (the kernel's ``Kind``)
DIAGONAL, ISOTROPIC, PRECISION, CHOLESKY, PACKED = range(5)
#: the kind of scale parameter an MDN head emits for each ``covariance_type``
HEAD_KINDS = {"diagonal": DIAGONAL, "isotropic": ISOTROPIC, "full": PACKED}


def scale_width(kind: int, n: int, d: int) -> int:
    """How many raw scale parameters ``s`` a head of ``kind`` emits for ``n`` components."""
    return {DIAGONAL: n * d, ISOTROPIC: n}.get(kind, n * d * (d + 1) // 2)


def head_width(kind: int, n: int, d: int) -> int:
    """The width ``n + n d + s`` of a head's output."""
    return n + n * d + scale_width(kind, n, d)


def unpack_precision(packed: Tensor, floor: Tensor) -> Tensor:
    """Dense precision factors ``(*B, n, d, d)`` from a head's packed output.

    ``packed (*B, n, d(d+1)/2)`` holds the lower triangle row by row; its diagonal entries
    ``x`` are raw: ``A_jj = 1 / (softplus(x) + floor_j)`` (``floor (d,)``), so the standard
    deviations of the conditional ``y_j | y_<j`` are at least ``floor_j``.
    """
    d = floor.shape[-1]
    rows, cols = torch.tril_indices(d, d, device=packed.device)
    pos = torch.arange(d, device=packed.device)
    pos = pos * (pos + 3) // 2  # where (j, j) sits in the packing
    diag = (F.softplus(packed.index_select(-1, pos)) + floor).reciprocal()
    entries = packed.index_copy(-1, pos, diag)
    flat = packed.new_zeros(packed.shape[:-1] + (d * d,))
    return flat.index_copy(-1, rows * d + cols, entries).unflatten(-1, (d, d))


def head_parameters(
    out: Tensor, floor: Tensor, kind: int, n: int, d: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``logits (*B, n)``, ``loc (*B, n, d)`` and the scale parameter in an MDN head's output
    ``out (*B, n + n d + s)``: ``scale = softplus(raw) + floor`` (diagonal ``(*B, n, d)``,
    ``floor (d,)``; isotropic ``(*B, n)``, ``floor (1,)``) or the packed precision factor
    ``(*B, n, d(d+1)/2)`` (``kind`` :data:`PACKED`; see :func:`unpack_precision`).
    """
    scales = scale_width(kind, n, d)
    # contiguous pieces: elementwise kernels on strided column slices of the output take a
    # slow path (softplus on a slice of a [1024, 40] output: ~10x slower than on a copy)
    logits, loc, raw = (t.contiguous() for t in out.split([n, n * d, scales], dim=-1))
    loc = loc.unflatten(-1, (n, d))
    if kind == DIAGONAL:
        return logits, loc, F.softplus(raw.unflatten(-1, (n, d))) + floor
    if kind == ISOTROPIC:
        return logits, loc, F.softplus(raw) + floor
    return logits, loc, raw.unflatten(-1, (n, -1))
