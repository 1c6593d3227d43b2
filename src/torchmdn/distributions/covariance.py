r"""``Covariance``: the components' covariances of a mixture, in the form they were given.

One holder, three kinds:

- ``"diagonal"``: ``scale (*B, n, d)``, ``Σ_i = diag(scale_i²)``;
- ``"isotropic"``: ``scale (*B, n)``, ``Σ_i = scale_i² I``;
- ``"full"``: any one of three equivalent forms, the others derived from it on first use and
  kept: the Cholesky factor ``scale_tril`` ``L`` (``Σ = LLᵀ``), the precision factor
  ``precision_tril`` ``A = L⁻¹`` (``Σ⁻¹ = AᵀA``; the log-density needs one matmul and no
  solve), or an MDN head's *packed* precision factor (its raw output and the floor; see
  :func:`torchmdn.ops.layout.unpack_precision`), which the compiled kernel reads directly.

:meth:`Covariance.log_prob` picks the fused likelihood that reads the form held, so no form is
ever computed only to evaluate a density.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._math import tril_inverse
from ..ops import fused, layout

__all__ = ["COVARIANCE_TYPES", "Covariance", "at_least_float32", "autocast_on"]

#: the kinds of covariance, in the library's one vocabulary
COVARIANCE_TYPES = ("diagonal", "isotropic", "full")


def at_least_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Promote to one floating dtype, at least float32 (half/bfloat16 accumulate in float32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        dtype = torch.float32
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for types autocast does not know):
    mixture densities are computed with it off, in at least float32."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


class Covariance:
    """The covariances of ``n`` components (see the module docstring).

    Args:
        kind: ``"diagonal"``, ``"isotropic"`` or ``"full"``.
        scale: standard deviations (diagonal or isotropic).
        scale_tril: Cholesky factors ``(*B, n, d, d)`` (full).
        precision_tril: precision factors ``A = L⁻¹`` ``(*B, n, d, d)`` (full).
        packed: ``(raw (*B, n, d(d+1)/2), floor (d,))``, a head's packed precision factor (full).

    Shapes are not checked here: :class:`~torchmdn.GaussianMixture` checks what users pass.
    """

    def __init__(
        self,
        kind: str,
        *,
        scale: Tensor | None = None,
        scale_tril: Tensor | None = None,
        precision_tril: Tensor | None = None,
        packed: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        given = [t is not None for t in (scale, scale_tril, precision_tril, packed)]
        if kind not in COVARIANCE_TYPES or sum(given) != 1 or (kind == "full") == given[0]:
            raise ValueError(f"Covariance({kind!r}) needs exactly one form that fits the kind")
        self.kind = kind
        self.scale = scale
        self._scale_tril = scale_tril
        self._precision_tril = precision_tril
        self._packed = packed

    @property
    def stored(self) -> tuple[str, ...]:
        """The forms held now (the one given and any derived so far)."""
        forms = {
            "scale": self.scale,
            "scale_tril": self._scale_tril,
            "precision_tril": self._precision_tril,
            "packed": self._packed,
        }
        return tuple(k for k, v in forms.items() if v is not None)

    @property
    def scale_tril(self) -> Tensor | None:
        """Cholesky factors ``L`` ``(*B, n, d, d)``; ``None`` unless full."""
        if self._scale_tril is None and self.kind == "full":
            self._scale_tril = tril_inverse(self.precision_tril)
        return self._scale_tril

    @property
    def precision_tril(self) -> Tensor | None:
        """Precision factors ``A = L⁻¹`` ``(*B, n, d, d)``; ``None`` unless full."""
        if self._precision_tril is None and self.kind == "full":
            if self._packed is not None:
                self._precision_tril = layout.unpack_precision(*self._packed)
            else:
                self._precision_tril = tril_inverse(self._scale_tril)
        return self._precision_tril

    def precision_for_eval(self) -> Tensor:
        """``precision_tril`` for computing densities: a half or bfloat16 Cholesky factor is
        inverted in float32 and kept there (no rounding back)."""
        if (
            self._precision_tril is None
            and self._packed is None
            and torch.finfo(self._scale_tril.dtype).bits < 32
        ):
            return tril_inverse(self._scale_tril.float())
        return self.precision_tril

    def component_variances(self, d: int) -> Tensor:
        """The diagonal of every ``Σ_i``, ``(*B, n, d)``."""
        if self.kind == "full":
            return self.scale_tril.square().sum(-1)  # diag(L Lᵀ)
        if self.kind == "isotropic":
            return self.scale.square().unsqueeze(-1).expand(*self.scale.shape, d)
        return self.scale.square()

    def matrices(self, d: int) -> Tensor:
        """Every ``Σ_i`` as a matrix, ``(*B, n, d, d)``."""
        if self.kind == "full":
            return self.scale_tril @ self.scale_tril.mT
        return torch.diag_embed(self.component_variances(d))

    def log_prob(self, logits: Tensor, loc: Tensor, value: Tensor) -> Tensor:
        """``log p(value)`` of the mixture ``(logits, loc, self)`` by the fused path that reads
        the form held: packed > precision factor > Cholesky factor (by substitution)."""
        if self.kind != "full":
            logits, loc, scale, value = at_least_float32(logits, loc, self.scale, value)
            return fused.diag_log_prob(logits, loc, scale, value, self.kind == "isotropic")
        if self._packed is not None and self._precision_tril is None:
            packed, floor = self._packed
            logits, loc, packed, value = at_least_float32(logits, loc, packed, value)
            return fused.packed_log_prob(logits, loc, packed, floor, value)
        if self._precision_tril is None:  # no inverse is formed for a density
            logits, loc, tril, value = at_least_float32(logits, loc, self._scale_tril, value)
            return fused.scale_tril_log_prob(logits, loc, tril, value)
        logits, loc, prec, value = at_least_float32(logits, loc, self._precision_tril, value)
        return fused.tril_log_prob(logits, loc, prec, value)

    def expand(self, shape: torch.Size) -> Covariance:
        """A view with batch shape ``shape`` (no copy); full covariances keep the factors held
        (a packed factor is unpacked: the kernel reads only unbroadcast rows)."""
        if self.kind != "full":
            trailing = self.scale.shape[-2 if self.kind == "diagonal" else -1 :]
            return Covariance(self.kind, scale=self.scale.expand(shape + trailing))
        if self._scale_tril is None:
            prec = self.precision_tril
            return Covariance("full", precision_tril=prec.expand(shape + prec.shape[-3:]))
        full = shape + self._scale_tril.shape[-3:]
        out = Covariance("full", scale_tril=self._scale_tril.expand(full))
        if self._precision_tril is not None or self._packed is not None:
            out._precision_tril = self.precision_tril.expand(full)  # keep it: no solve needed
        return out
