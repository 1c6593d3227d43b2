r"""Modes of a Gaussian mixture: the fixed-point (mean-shift) iteration of
Carreira-Perpiñán (2000) started from every component mean, for diagonal, isotropic and full
covariances; results deduplicated and sorted best first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ._common import component_std, dim

if TYPE_CHECKING:
    from .mixture import GaussianMixture

__all__ = ["Modes", "modes", "mode"]

_CHUNK = 2**20  # numbers per chunk of rows in the iteration (a few MB; rows converge per chunk)
_MAX_PER_ROW = 2**26  # one row alone beyond this is refused


class Modes(NamedTuple):
    """Local modes of each mixture in a batch, most probable first.

    Attributes:
        loc: ``(*B, k, d)`` mode locations, ``k`` the most modes of any batch element;
            slots past an element's own count hold NaN.
        log_prob: ``(*B, k)`` log density at each mode (``-inf`` in unused slots).
        valid: ``(*B, k)`` boolean, ``True`` where the slot holds a mode.
    """

    loc: Tensor
    log_prob: Tensor
    valid: Tensor

    @property
    def density(self) -> Tensor:
        """Density at each mode, ``(*B, k)`` (0 in unused slots)."""
        return self.log_prob.exp()


def _precisions(gm: GaussianMixture) -> Tensor:
    """Per-component precision ``Σ_i⁻¹`` as ``(*B, n, d, d)`` (full) or ``(*B, n, d)``."""
    kind = gm.covariance_type
    if kind == "full":
        eye = torch.eye(dim(gm), dtype=gm.loc.dtype, device=gm.loc.device)
        inv = torch.linalg.solve_triangular(gm.scale_tril, eye, upper=False)  # L⁻¹
        return inv.mT @ inv
    return component_std(gm).square().reciprocal()


#: modes whose density is below this share of the highest mode's are left out by default
MIN_RELATIVE_DENSITY = 0.05


def _modes(
    gm: GaussianMixture, max_iter: int, tol: float | None, min_relative_density: float
) -> Modes:
    """:func:`modes` on one chunk of rows."""
    if tol is None:
        tol = 1e-10 if gm.loc.dtype == torch.float64 else 1e-4
    full = gm.covariance_type == "full"
    eps = torch.finfo(gm.loc.dtype).eps
    loc, logw = gm.loc, gm.log_weights  # [*B, n, d], [*B, n]
    prec = _precisions(gm)
    prec_mu = (prec @ loc.unsqueeze(-1)).squeeze(-1) if full else prec * loc  # [*B, n, d]
    x = loc.clone()  # one start per component mean: [*B, s=n, d]
    if full:
        eye = torch.eye(dim(gm), dtype=loc.dtype, device=loc.device)
        inv_tril = torch.linalg.solve_triangular(gm.scale_tril, eye, upper=False).unsqueeze(-4)
        half_log_det = gm.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1).unsqueeze(-2)
    else:
        std = component_std(gm).unsqueeze(-3)  # [*B, 1, n, d]
        half_log_det = std.log().sum(-1)  # [*B, 1, n]

    def weighted(x: Tensor) -> tuple[Tensor, Tensor]:
        # responsibilities of each component for each start: [*B, s, n]
        diff = x.unsqueeze(-2) - loc.unsqueeze(-3)  # [*B, s, n, d]
        z = (inv_tril @ diff.unsqueeze(-1)).squeeze(-1) if full else diff / std
        comp = -0.5 * z.square().sum(-1) - half_log_det  # [*B, s, n] (constants dropped)
        joint = logw.unsqueeze(-2) + comp
        r = torch.exp(joint - torch.logsumexp(joint, -1, keepdim=True))  # responsibilities
        if full:
            a = torch.einsum("...sn,...nij->...sij", r, prec)  # [*B, s, d, d]
        else:
            a = torch.einsum("...sn,...nd->...sd", r, prec)  # [*B, s, d]
        b = torch.einsum("...sn,...nd->...sd", r, prec_mu)
        return a, b

    a = None
    for i in range(max_iter):
        a, b = weighted(x)
        x_new = torch.linalg.solve(a, b) if full else b / a
        step = x_new - x
        x = x_new
        if i % 10 == 9:
            # step length in local standard deviations (metric A = Σ r_i Σ_i⁻¹)
            if full:
                dist2 = (step.unsqueeze(-2) @ a @ step.unsqueeze(-1)).squeeze(-1).squeeze(-1)
            else:
                dist2 = (a * step.square()).sum(-1)
            # ... or a step at the round-off level of x (float32 can cycle there)
            tiny = (step.abs() <= 8 * eps * x.abs()).all(-1)
            if bool(((dist2 <= tol**2) | tiny).all()):
                break
    a, _ = weighted(x)
    # merge end points within 1e-3 local standard deviations (pairs [*B, s, s])
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)  # [*B, s, t, d]
    if full:
        d2 = (diff.unsqueeze(-2) @ a.unsqueeze(-3) @ diff.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    else:
        d2 = (a.unsqueeze(-2) * diff.square()).sum(-1)
    close = d2 <= 1e-6
    logp = gm.log_prob(x.movedim(-2, 0)).movedim(0, -1)  # [*B, s]
    s = x.shape[-2]
    idx = torch.arange(s, device=x.device)
    # a start is kept when no better (higher density, or equal and earlier) start is close
    better = (logp.unsqueeze(-2) > logp.unsqueeze(-1)) | (
        (logp.unsqueeze(-2) == logp.unsqueeze(-1)) & (idx < idx.unsqueeze(-1))
    )  # [*B, s, t]: t better than s
    keep = ~(close & better).any(-1)
    keep = keep & (logw > -torch.inf)  # a zero-weight component's mean is no start at all
    if min_relative_density > 0:
        best = torch.where(keep, logp, -torch.inf).amax(-1, keepdim=True)
        keep = keep & (logp >= best + math.log(min_relative_density))
    score = torch.where(keep, logp, -torch.inf)
    order = score.argsort(-1, descending=True)
    k = max(int(keep.sum(-1).max().item()), 1) if keep.numel() else 1
    order = order[..., :k]
    valid = keep.gather(-1, order)
    loc_out = x.gather(-2, order.unsqueeze(-1).expand(*order.shape, x.shape[-1]))
    loc_out = torch.where(valid.unsqueeze(-1), loc_out, torch.nan)
    lp = torch.where(valid, logp.gather(-1, order), -torch.inf)
    return Modes(loc_out, lp, valid)


def modes(
    gm: GaussianMixture,
    max_iter: int = 2000,
    tol: float | None = None,
    min_relative_density: float = MIN_RELATIVE_DENSITY,
) -> Modes:
    r"""The local modes of each mixture that matter, with their log densities.

    Starts the fixed-point (mean-shift) iteration of Carreira-Perpiñán (2000),

    .. math::

        x \leftarrow \Big(\sum_i r_i(x) Σ_i^{-1}\Big)^{-1} \sum_i r_i(x) Σ_i^{-1} μ_i,
        \qquad r_i(x) = \frac{π_i N(x; μ_i, Σ_i)}{p(x)},

    from every component mean (all batch elements and starts at once; the density never
    decreases along the iteration), then merges the end points that lie within 1e-3 local
    standard deviations of each other. This finds every mode in all cases we know of in
    practice, but there is no proof that a mode can never be missed for heteroscedastic
    mixtures. Convergence is linear; near a flat top (two components about to merge) it is slow,
    hence the generous ``max_iter``.

    Mathematically every component of negligible weight far from the others is a local mode
    too; modes whose density is below ``min_relative_density`` times the highest mode's density
    (default 5%) are left out. Pass ``min_relative_density=0`` to get them all.

    Cost: rows are processed in chunks (bounded memory; a chunk stops iterating when its
    own rows have converged, so time grows linearly with the rows): per row and iteration
    about ``n² d`` numbers (``n² d²`` for full covariances) for ``n`` components in ``d``
    dimensions. Mixtures whose single row would exceed 2^26 such numbers are refused.

    Args:
        gm: the mixture (diagonal, isotropic or full), batch shape ``B``, event ``(d,)``.
        max_iter: iteration cap.
        tol: stopping step size in local standard deviations (default ``1e-10`` in float64,
            ``1e-4`` in lower precision).
        min_relative_density: leave out modes whose density is below this share of the
            highest mode's (in ``[0, 1)``; 0 keeps every mode).

    Returns:
        :class:`Modes` ``(loc (*B, k, d), log_prob (*B, k), valid (*B, k))`` sorted by density,
        highest first; ``k`` is the largest number of modes in the batch.
    """
    if not 0.0 <= min_relative_density < 1.0:
        raise InputError(
            "min_relative_density must be in [0, 1) (0 keeps every mode); "
            f"got {min_relative_density!r}"
        )
    n, d = gm.n_components, dim(gm)
    per_row = n * n * d * (d if gm.covariance_type == "full" else 1)
    if per_row > _MAX_PER_ROW:
        raise InputError(
            f"modes of a mixture of {n} components in {d} dimensions would hold about "
            f"{8 * per_row / 2**30:.0f} GiB per row (it grows as n² d²); reduce the components"
        )
    batch = gm.batch_shape
    rows = max(1, _CHUNK // per_row)
    total = batch.numel()
    if total <= rows:
        return _modes(gm, max_iter, tol, min_relative_density)
    logits, loc = gm.logits.reshape(-1, n), gm.loc.reshape(-1, n, d)
    full = gm.covariance_type == "full"
    spread = gm.scale_tril if full else gm.scale
    spread = spread.reshape(total, *spread.shape[len(batch) :])
    parts = []
    for i in range(0, total, rows):
        chunk = slice(i, i + rows)
        part = type(gm)(
            logits[chunk], loc[chunk], scale=None if full else spread[chunk],
            scale_tril=spread[chunk] if full else None, validate_args=False,
        )  # fmt: skip
        parts.append(_modes(part, max_iter, tol, min_relative_density))
    k = max(p.loc.shape[-2] for p in parts)
    pad = k - torch.tensor([p.loc.shape[-2] for p in parts])
    out_loc = torch.cat(
        [F.pad(p.loc, (0, 0, 0, int(e)), value=torch.nan) for p, e in zip(parts, pad, strict=True)]
    )
    out_lp = torch.cat(
        [F.pad(p.log_prob, (0, int(e)), value=-torch.inf) for p, e in zip(parts, pad, strict=True)]
    )
    out_valid = torch.cat(
        [F.pad(p.valid, (0, int(e)), value=False) for p, e in zip(parts, pad, strict=True)]
    )
    return Modes(
        out_loc.reshape(*batch, k, d), out_lp.reshape(*batch, k), out_valid.reshape(*batch, k)
    )


def mode(gm: GaussianMixture, **kwargs: object) -> Tensor:
    """The global mode (the most probable of :func:`modes`), ``(*B, d)``."""
    return modes(gm, **kwargs).loc[..., 0, :]  # type: ignore[arg-type]


# ---------------------------------------------------------------------- marginal, condition
