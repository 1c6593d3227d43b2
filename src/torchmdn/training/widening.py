"""Widening a fit's standard deviations by the factor its held-out rows choose.

A mixture fitted to a few hundred rows or fewer is too sure of itself: its components are
narrower than the truth's spread, and a narrow component on a skewed tail makes a second
mode the truth does not have. Multiplying every standard deviation by a factor (the means
as they are) lowers the held-out NLL there, and the held-out rows choose the factor: the
ladder scores its heads widened by each of :data:`WIDENINGS` when it scores them as trained
(:class:`~torchmdn.training.ladder.Ladder`), and :func:`widen` applies the one that scored
best (or none) to the fitted model, exactly: its target scale ``y_scale`` is multiplied by
the factor and the head's (standardised) means divided by it, so the model, its saved file
and every query see the same density. For a one-column target whose fit still has more than
one mode per input, a larger factor with fewer modes is taken when the held-out rows cannot
tell it from the best (the mode guard of :mod:`torchmdn.training.average`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.mdn import MDN
from .average import MODE_GUARD_SE, cannot_tell, mean_modes

__all__ = ["WIDENINGS", "widen", "widened"]

#: factors by which a fit's standard deviations may be multiplied
WIDENINGS = (1.05, 1.1, 1.2, 1.3, 1.5, 1.8)


@torch.no_grad()
def widened(model: MDN, factor: float) -> MDN:
    """``model`` (in place) with every standard deviation multiplied by ``factor`` and the
    means as they were: ``y_scale`` times ``factor``, the head's standardised means (its
    output rows after the logits) divided by it. Returns the model."""
    head = model.head
    logits, means, _ = head.output_split
    model.y_scale.mul_(factor)
    head.linear.weight[logits : logits + means].div_(factor)
    head.linear.bias[logits : logits + means].div_(factor)
    return model


@torch.no_grad()
def widen(model: MDN, rows: Tensor, scores: Tensor, x: Tensor | None = None) -> str:
    """Widen every standard deviation of ``model`` by the factor of :data:`WIDENINGS` (or
    none) that scored the held-out rows best: ``rows``, their NLLs under the fit as trained,
    and ``scores``, the same rows' NLLs widened by each factor ``(rows, widenings)``; rows
    some factor never scored are left out. With ``x`` (a sample of inputs; one-column
    targets), while the fit so widened has more than one mode per input there, a larger
    factor whose held-out NLL is within
    :data:`~torchmdn.training.average.MODE_GUARD_SE` paired standard errors of the best
    factor's is taken if it has fewer modes. Returns a note for the reason.

    On 50 and 150 rows of four generated problems (five seeds) this lowered the mean test
    NLL and the inputs with a mode the truth lacks (benchmarks/RESULTS.md, "Small data")."""
    table = torch.cat([rows[:, None], scores], -1)
    table = table[torch.isfinite(table).all(-1)]
    if not len(table):
        return ""
    factors = (1.0, *WIDENINGS)
    means = table.mean(0)
    best = chosen = int(means.argmin())
    note = ""
    if x is not None and model.out_features == 1:
        original = {k: v.clone() for k, v in model.state_dict().items()}

        def modes(i: int) -> float:
            model.load_state_dict(original)
            return mean_modes(widened(model, factors[i]), x)

        found = before = modes(best)
        for i in range(best + 1, len(factors)):
            if found <= 1:
                break
            if not cannot_tell(table[:, i] - table[:, best])[0]:
                break
            now = modes(i)
            if now < found:
                chosen, found = i, now
        model.load_state_dict(original)
        if chosen != best:
            note = (f"; by {factors[chosen]:g} rather than {factors[best]:g}: {before:.2f} "
                    f"modes per input before, {found:.2f} now, NLL within {MODE_GUARD_SE:g} "
                    "paired standard error(s)")  # fmt: skip
    if chosen == 0:
        return "; not widened (the folds scored the fit as trained best)"
    widened(model, factors[chosen])
    return (f"; standard deviations widened {factors[chosen]:g}-fold (the folds' NLL "
            f"{float(means[0]):.4f} -> {float(means[chosen]):.4f}){note}")  # fmt: skip
