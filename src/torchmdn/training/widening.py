"""Widening a fit's standard deviations by the amount its held-out rows choose.

A mixture fitted to a few hundred rows or fewer is too sure of itself: its components are
narrower than the truth's spread, and a narrow component on a skewed tail makes a second
mode the truth does not have. Adding an amount to every standard deviation (a kernel's
smoothing of the predicted density) lowers the held-out NLL there, and the held-out rows
choose how much: the ladder scores its heads widened by each of :data:`WIDENINGS` when it
scores them as trained (:class:`~torchmdn.training.ladder.Ladder`), and :func:`widen` adds
the amount that scored best (or none) to the fitted head's standard-deviation floor, so the
model, its saved file and every query see the same density. For a one-column target whose
fit still has more than one mode per input, a larger amount with fewer modes is taken when
the held-out rows cannot tell it from the best (the mode guard of
:mod:`torchmdn.training.average`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.mdn import MDN
from .average import MODE_GUARD_SE, mean_modes, paired_se

__all__ = ["WIDENINGS", "widen"]

#: amounts (standardised units of y) by which a fit's standard deviations may be widened
WIDENINGS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


@torch.no_grad()
def widen(model: MDN, rows: Tensor, widened: Tensor, x: Tensor | None = None) -> str:
    """Widen every standard deviation of ``model`` by the amount of :data:`WIDENINGS` (or
    none) that scored the held-out rows best: ``rows``, their NLLs under the fit as trained,
    and ``widened``, the same rows' NLLs widened by each amount ``(rows, widenings)``; rows
    some amount never scored are left out. With ``x`` (a sample of inputs; one-column
    targets), while the fit so widened has more than one mode per input there, a larger
    amount whose held-out NLL is within
    :data:`~torchmdn.training.average.MODE_GUARD_SE` paired standard errors of the best
    amount's is taken if it has fewer modes. The amount is added to the head's floor
    (``head.scale_floor``). Returns a note for the reason.

    On 150 rows of skewed noise (five seeds) widening by the amount the folds chose lowered
    the test NLL and the inputs with a mode the truth lacks; where the modes are real
    (bimodal noise) the rows choose little or none (benchmarks/RESULTS.md, "Small data")."""
    table = torch.cat([rows[:, None], widened], -1)
    table = table[torch.isfinite(table).all(-1)]
    if not len(table):
        return ""
    amounts = (0.0, *WIDENINGS)
    floor = model.head.scale_floor.clone()
    means = table.mean(0)
    best = chosen = int(means.argmin())
    note = ""
    if x is not None and model.out_features == 1:

        def modes(i: int) -> float:
            model.head.scale_floor.copy_(floor + amounts[i])
            return mean_modes(model, x)

        found = before = modes(best)
        for i in range(best + 1, len(amounts)):
            if found <= 1:
                break
            diff = table[:, i] - table[:, best]
            if not float(diff.mean()) <= MODE_GUARD_SE * paired_se(diff):
                break
            now = modes(i)
            if now < found:
                chosen, found = i, now
        if chosen != best:
            note = (f"; by {amounts[chosen]:g} rather than {amounts[best]:g}: {before:.2f} modes "
                    f"per input before, {found:.2f} now, NLL within {MODE_GUARD_SE:g} paired "
                    "standard error(s)")  # fmt: skip
    model.head.scale_floor.copy_(floor + amounts[chosen])
    if chosen == 0:
        return "; not widened (the folds scored the fit as trained best)"
    return (f"; standard deviations widened by {amounts[chosen]:g} (standardised units: the "
            f"folds' NLL {float(means[0]):.4f} -> {float(means[chosen]):.4f}){note}")  # fmt: skip
