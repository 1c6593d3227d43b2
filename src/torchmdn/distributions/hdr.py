r"""Highest-density regions of a 1-d Gaussian mixture (Hyndman 1996).

The density threshold is found on a grid fitted to every component (bisection on its
logarithm); the region's boundaries are refined by Newton steps on ``log p`` and its mass is
computed exactly from the CDF.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.special import ndtr

from .._math import LOG_2PI
from ..errors import InputError
from ._common import check_level, component_std, require_1d

if TYPE_CHECKING:
    from .mixture import GaussianMixture

__all__ = ["hdr"]

_HDR_GRID = 256  # grid points per component, spread over ±_HDR_SPAN standard deviations
_HDR_SPAN = 9.0
_CHUNK = 2**22  # numbers per chunk of rows (about 32 MB in float64, a few such at once)
_MAX_PER_ROW = 2**26  # one row alone beyond this (n > ~500 components) is refused


def _dlogp(loc: Tensor, std: Tensor, logw: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    # log density of a 1-d mixture and its derivative at x [..., k], components [..., 1, n]
    z = (x.unsqueeze(-1) - loc) / std  # [..., k, n]
    comp = logw - 0.5 * z.square() - std.log() - 0.5 * LOG_2PI
    logp = torch.logsumexp(comp, -1)
    resp = torch.exp(comp - logp.unsqueeze(-1))  # responsibilities
    return logp, (resp * (-z / std)).sum(-1)


def _extrema(grid: Tensor, lc: Tensor, sd: Tensor, lw: Tensor, iters: int = 60) -> Tensor:
    """Points where ``d log p / dy`` changes sign between neighbours of the sorted ``grid``
    ``(*B, N)``, located by bisection; unused slots repeat the grid's last point."""
    _, slope = _dlogp(lc, sd, lw, grid)
    pos = slope > 0
    change = pos[..., 1:] != pos[..., :-1]  # [*B, N-1]
    k = max(1, int(change.sum(-1).max().item()))
    score, idx = change.to(grid.dtype).topk(k, dim=-1)
    a, b = grid.gather(-1, idx), grid.gather(-1, idx + 1)
    a_pos = pos.gather(-1, idx)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        like_a = (_dlogp(lc, sd, lw, mid)[1] > 0) == a_pos
        a, b = torch.where(like_a, mid, a), torch.where(like_a, b, mid)
    return torch.where(score > 0, 0.5 * (a + b), grid[..., -1:])


def _hdr_threshold(
    loc: Tensor, std: Tensor, logw: Tensor, level: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-density threshold ``(R,)`` and the region's boundaries as crossing points, for
    ``R`` mixtures given by their component means, standard deviations and log weights
    ``(R, n)``.

    Returns ``(log_c, roots, sign)``: ``roots (R, k)`` where ``log p`` crosses ``log_c`` and
    ``sign`` ``+1`` (entering the region), ``-1`` (leaving it) or ``0`` (unused slot).
    """
    dtype, device = loc.dtype, loc.device
    t = torch.linspace(-_HDR_SPAN, _HDR_SPAN, _HDR_GRID, dtype=dtype, device=device)
    # a grid fitted to every component: narrow and wide components are both resolved
    grid = (loc.unsqueeze(-1) + std.unsqueeze(-1) * t).flatten(-2)  # [*B, n*G]
    grid = grid.sort(-1).values
    lw, lc, sd = logw.unsqueeze(-2), loc.unsqueeze(-2), std.unsqueeze(-2)  # [*B, 1, n]
    # add every local extremum of log p seen on the grid, so that log p is monotone between
    # neighbouring points: a peak or dip near the threshold inside one cell is then not missed
    grid = torch.cat([grid, _extrema(grid, lc, sd, lw)], -1).sort(-1).values
    z = (grid.unsqueeze(-1) - lc) / sd
    logp = torch.logsumexp(lw - 0.5 * z.square() - sd.log(), -1) - 0.5 * LOG_2PI  # [*B, N]
    cdf_grid = (lw.exp() * ndtr(z)).sum(-1)  # [*B, N]
    cell = (cdf_grid[..., 1:] - cdf_grid[..., :-1]).clamp_min(0)  # exact cell masses

    # at most one up- and one down-crossing per local maximum seen on the grid
    peaks = logp[..., 1:-1] > torch.maximum(logp[..., :-2], logp[..., 2:])
    k = 2 * int(peaks.sum(-1).max().item()) + 4 if logp.shape[-1] > 2 else 4
    k = min(k, logp.shape[-1] - 1)

    finite = torch.isfinite(logp)
    hi_c = logp.amax(-1)
    lo_c = torch.where(finite, logp, torch.inf).amin(-1)

    def mass(log_c: Tensor, polish: int) -> tuple[Tensor, Tensor, Tensor]:
        inside = logp >= log_c.unsqueeze(-1)  # [*B, N]
        both = inside[..., 1:] & inside[..., :-1]
        full = (cell * both).sum(-1)
        change = inside[..., 1:] != inside[..., :-1]  # [*B, N-1]
        score, idx = change.to(dtype).topk(k, dim=-1)  # crossing cells first
        used = score > 0
        a, b = grid.gather(-1, idx), grid.gather(-1, idx + 1)
        la, lb = logp.gather(-1, idx), logp.gather(-1, idx + 1)
        up = inside.gather(-1, idx + 1)  # entering the region at this crossing
        # start from linear interpolation of log p, then Newton on log p(r) = log c,
        # safeguarded by bisection of the bracket [a, b] (log p is monotone inside it)
        frac = ((log_c.unsqueeze(-1) - la) / (lb - la)).nan_to_num(0.5).clamp(0, 1)
        r = a + frac * (b - a)
        a_in = la >= log_c.unsqueeze(-1)  # which end of the bracket lies in the region
        lo_r, hi_r = a.clone(), b.clone()
        for _ in range(polish):
            lp, dlp = _dlogp(lc, sd, lw, r)
            f = lp - log_c.unsqueeze(-1)
            like_a = (f >= 0) == a_in
            lo_r, hi_r = torch.where(like_a, r, lo_r), torch.where(like_a, hi_r, r)
            r_new = r - f / dlp
            ok = torch.isfinite(r_new) & (r_new >= lo_r) & (r_new <= hi_r)
            r = torch.where(ok, r_new, 0.5 * (lo_r + hi_r))
        fr = (lw.exp() * ndtr((r.unsqueeze(-1) - lc) / sd)).sum(-1)  # [*B, k]
        ca = cdf_grid.gather(-1, idx)
        cb = cdf_grid.gather(-1, idx + 1)
        part = torch.where(up, cb - fr, fr - ca) * used
        total = full + part.sum(-1)
        # region touching the grid's ends (only for levels close to 1)
        total = (
            total + inside[..., 0] * cdf_grid[..., 0] + inside[..., -1] * (1 - cdf_grid[..., -1])
        )
        sign = torch.where(used, torch.where(up, 1, -1), 0)
        return total, r, sign

    # bisection on log c: mass(c) falls as c rises
    lo, hi = lo_c.clone(), hi_c.clone()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        m, _, _ = mass(mid, polish=8)
        too_much = m > level
        lo = torch.where(too_much, mid, lo)
        hi = torch.where(too_much, hi, mid)
    log_c = 0.5 * (lo + hi)
    _, roots, sign = mass(log_c, polish=8)
    return log_c, roots, sign


def hdr(gm: GaussianMixture, level: float = 0.9) -> list:
    r"""Highest-density region (Hyndman 1996) of a 1-d mixture: ``{y : p(y) >= c}`` with ``c``
    chosen so that the region holds probability ``level``.

    The density is evaluated on a grid of 256 points over ±9 standard deviations of *every*
    component (so a narrow peak next to a wide one is resolved), the threshold ``c`` is found
    by 60 bisection steps on ``log c``, each boundary is refined by Newton's method on
    ``log p(y) = log c``, and the enclosed mass is computed exactly from the CDF. In float64
    the returned region holds ``level`` to about 1e-9. The local extrema of ``log p`` between
    grid points join the grid (bisection on its slope), so ``log p`` is monotone between
    neighbouring points and a boundary is never missed; density bumps narrower than 1/28 of
    their own component's standard deviation (possible only as tiny ripples of near-coincident
    components) can be missed.

    Cost: computed in float64, in chunks of rows, so memory stays bounded (about 100 MB)
    and time grows linearly with the rows: per row about ``n² · 258`` numbers and
    ``60 · (n · 258 + 8 k n)`` density evaluations for ``n`` components (``k`` crossings).
    Mixtures of more than about 500 components are refused (the cost per row grows as n²).

    Args:
        gm: a mixture with ``d = 1``, batch shape ``B``.
        level: probability in ``(0, 1)`` the region holds.

    Returns:
        A list of ``(low, high)`` float pairs for ``B = ()``; otherwise nested lists in the
        layout of ``Tensor.tolist()`` over ``B``, one list of intervals per batch element
        (several intervals for a multimodal prediction), sorted from left to right.
    """
    require_1d(gm, "hdr")
    level = check_level(level)
    n = gm.n_components
    per_row = n * n * (_HDR_GRID + 2)  # numbers held per row: the grid against every component
    if per_row > _MAX_PER_ROW:
        raise InputError(
            f"hdr of a mixture of {n} components would hold about {8 * per_row / 2**30:.0f} "
            f"GiB per row (it grows as n²); it supports up to "
            f"{int((_MAX_PER_ROW / (_HDR_GRID + 2)) ** 0.5)} components"
        )
    # float64 throughout: a float32 threshold cannot resolve levels within 1e-7 of 1
    loc = gm.loc.squeeze(-1).reshape(-1, n).double()
    std = component_std(gm).squeeze(-1).expand(*gm.batch_shape, n).reshape(-1, n).double()
    logw = gm.log_weights.reshape(-1, n).double()
    rows = max(1, _CHUNK // per_row)
    parts = [
        _hdr_threshold(loc[i : i + rows], std[i : i + rows], logw[i : i + rows], level)[1:]
        for i in range(0, len(loc), rows)
    ]
    if not parts:  # no rows: an empty list in the batch's layout
        return [] if not gm.batch_shape else torch.empty(gm.batch_shape).tolist()
    k = max(r.shape[-1] for r, _ in parts)
    roots = torch.cat([torch.nn.functional.pad(r, (0, k - r.shape[-1])) for r, _ in parts])
    sign = torch.cat([torch.nn.functional.pad(g, (0, k - g.shape[-1])) for _, g in parts])
    order = torch.where(sign != 0, roots, torch.inf).argsort(-1)
    roots, sign = roots.gather(-1, order), sign.gather(-1, order)
    flat_r = roots.reshape(-1, roots.shape[-1]).tolist()
    flat_s = sign.reshape(-1, sign.shape[-1]).tolist()
    out = []
    for rs, ss in zip(flat_r, flat_s, strict=True):
        intervals, start = [], None
        for r, s in zip(rs, ss, strict=True):
            if s == 1:
                start = r
            elif s == -1:
                intervals.append((-math.inf if start is None else start, r))
                start = None
        if start is not None:
            intervals.append((start, math.inf))
        out.append(intervals)
    if not gm.batch_shape:
        return out[0]
    for size in reversed(gm.batch_shape[1:]):
        out = [out[i : i + size] for i in range(0, len(out), size)]
    return out


# ---------------------------------------------------------------------- modes
