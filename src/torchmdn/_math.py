"""Constants and small pieces of Gaussian algebra shared across the package (one definition
each; private module, public names)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LOG_2PI", "tril_inverse"]

#: ``log(2π)``
LOG_2PI = math.log(2.0 * math.pi)


def tril_inverse(tril: Tensor) -> Tensor:
    """Inverse of lower-triangular matrices ``(*, d, d)`` by a triangular solve (never a
    general inverse): the precision factor ``A = L⁻¹`` of a Cholesky factor ``L``, and back.
    Half and bfloat16 are solved in float32 (no triangular solve exists for them) and rounded
    back."""
    work = tril if torch.finfo(tril.dtype).bits >= 32 else tril.float()
    eye = torch.eye(tril.shape[-1], dtype=work.dtype, device=tril.device)
    return torch.linalg.solve_triangular(work, eye, upper=False).to(tril.dtype)
