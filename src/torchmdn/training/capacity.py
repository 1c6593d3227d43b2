"""Choosing an MDN's capacity (number of components, covariance type) from the training data.

``MDN(n_components="auto")`` (the default) is trained by :func:`~torchmdn.fit` as a *ladder*:
one shared backbone with one mixture head per candidate (1, 2, 3, 5, 12 and 20
components, and 32 for a target of d > 1 dimensions; with ``covariance_type="auto"`` full
covariances for 2 or 3 target columns, from 4 columns each count both diagonal and full),
trained together on the mean of their NLLs (:class:`~torchmdn.training.ladder.Ladder`). An
epoch costs about 1.6-1.7x one 5-component model's on the UCI sets (kin8nm, yacht; one
thread); the heads' initial weights come from ``random_state`` like everything else. After
every epoch each head's per-row validation NLL is recorded, and at each head's best epoch
the ladder's state is kept.

Then every candidate whose validation NLL is within two paired standard errors of the best
(:data:`AVERAGE_SE`) is kept, and the model gets their *average*: one head holding the kept
heads' components, each head's weights divided by their number (``MDNHead(groups=...)``), at
the one of the heads' best epochs where that average scores best on the validation rows. On
a few dozen validation rows the ranking of the candidates is noise; averaging the ones the
rows cannot tell apart is more robust than betting on one (on 300 rows of six generated
problems, three seeds, test excess NLL 0.19 against 0.33 for the simplest candidate within
half a standard error, the rule before; at 2000 rows 0.035 against 0.041). The average
should not have more modes per input, on the validation inputs, than the simplest kept head
alone: the largest kept heads are dropped until it has none more, unless the validation rows
need the next one (without it the average scores more than a paired standard error worse):
an average of densities can have bumps that none of them has, and a large head that
over-fits a few rows brings its spikes. The
:class:`~torchmdn.History` holds every candidate's validation NLL, which were kept and the
reason (``history.capacity``); ``model.n_components`` is the total.

Small data: when the validation split would hold fewer than 25 rows (under 250 rows at
the default 10%), the choice is made by 5-fold cross-validation instead, the chosen size
trained on every row, and its standard deviations widened by the factor the folds choose
(:mod:`torchmdn.training.crossval`, :mod:`torchmdn.training.widening`). So it is too, for a
one-column target, when the validation rows kept :data:`MODE_CHECK_EXTRA` or more modes
beyond the simplest kept head's on fewer than :data:`MODE_CHECK_ROWS` rows: whether a few
dozen rows need a mode is itself noise.

Without a validation set (``validation_fraction=0`` and no ``validation_data``) nothing can
compare candidates: one component is trained. Streamed data, data-parallel runs and
checkpoints train the model's initial head (5 components) as a fixed model, and say so in
``history.capacity``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.mdn import MDN
from .average import average_nll, best_epoch, install, paired_se, without_new_modes
from .crossval import cross_validate, folds, train_fixed
from .history import History
from .ladder import train_ladder

__all__ = [
    "AVERAGE_SE", "FULL_ONLY_UP_TO", "LADDER", "LADDER_EXTRA", "MODE_CHECK_EXTRA",
    "MODE_CHECK_ROWS", "candidates", "choose",
    "select_capacity", "wants_selection",
]  # fmt: skip

#: component counts tried by ``n_components="auto"``. Eight components were tried too until
#: the candidates were averaged: replayed on recorded 300-row ladders, the average without
#: them scored as well (0.102 against 0.102 for one column, 0.336 against 0.337 for several;
#: benchmarks/RESULTS.md), and a default fit costs 15% less without them
LADDER = (1, 2, 3, 5, 12, 20)
#: tried in addition for a target of d > 1 columns (a density spread along a curve or surface
#: needs more components: on a 2-d ring 20 full components were still the best of the ladder)
LADDER_EXTRA = (32,)


#: with ``covariance_type="auto"`` a target of up to this many columns gets full covariances
#: only: a diagonal component saves just d(d-1)/2 of its 2d+1 or more outputs (one of six
#: for d = 2), yet on few validation rows the diagonal heads of the 2-d ring were chosen
#: where every full head was better (recorded ladders, 300 rows, 3 seeds: 0.81 and 0.61
#: installed, 0.42 and 0.50 for the full-only choice; benchmarks/RESULTS.md). From four
#: columns, where a full component has 1.7x the outputs and more, both are tried.
FULL_ONLY_UP_TO = 3


def wants_selection(model: nn.Module) -> bool:
    """Whether ``model`` asks for its capacity to be chosen from the data."""
    return bool(
        getattr(model, "auto_components", False) or getattr(model, "auto_covariance", False)
    )


def candidates(model: MDN) -> list[tuple[int, str]]:
    """``(n_components, covariance)`` pairs to try, simplest first (by head outputs per row)."""
    d = model.out_features
    counts = (LADDER if d == 1 else LADDER + LADDER_EXTRA) if model.auto_components else (
        model.head.n_components,
    )
    if model.auto_covariance:
        kinds: Sequence[str] = ("full",) if d <= FULL_ONLY_UP_TO else ("diagonal", "full")
    else:
        kinds = (model.head.covariance_type,)
    per = {"diagonal": 2 * d + 1, "isotropic": d + 2, "full": d + d * (d + 1) // 2 + 1}
    pairs = [(k, c) for k in counts for c in kinds if not (k == 1 and c == "full" and d == 1)]
    # one diagonal component and one full one differ for d > 1; for d == 1 all kinds agree
    return sorted(pairs, key=lambda kc: (kc[0] * per[kc[1]], kc[0]))


#: under this many validation rows (400 rows at the default 10%), when the validation rows
#: keep :data:`MODE_CHECK_EXTRA` or more modes in the average beyond its simplest head's
#: (:func:`~torchmdn.training.average.without_new_modes`), the choice is made again by
#: cross-validation (every row a validation row once, with its own mode steps; it costs
#: 5-10 ladders). On 300 rows of skewed noise, five seeds, the test excess NLL 0.155 -> 0.118
#: and the inputs with an extra mode 62 -> 14 of 205 (benchmarks/RESULTS.md). Over 400 rows
#: the folds' cost is not paid: UCI boston (455 rows) would pay it on some splits
MODE_CHECK_ROWS = 40
#: the extra modes, counted over the (about 30) validation inputs, that send the choice to
#: cross-validation: one extra mode at one input is the size of a shoulder crossing the mode
#: threshold (UCI yacht kept exactly one on 3 of 20 splits, where cross-validation cost 7-10x
#: the fit); skewed noise kept 3-19
MODE_CHECK_EXTRA = 2


#: every candidate whose validation NLL is within this many paired standard errors of the
#: best is kept, and the kept heads are averaged. Replayed on 18 recorded 300-row ladders
#: (six generated problems, three seeds; benchmarks/RESULTS.md), mean test excess NLL: the
#: simplest candidate within half a standard error (the rule before) 0.33, the best single
#: head in hindsight 0.20, the average within two standard errors 0.19, within one 0.20, of
#: every head 0.24 (one component then pulls multimodal targets down).
AVERAGE_SE = 2.0


def choose(
    per_row: Sequence[Tensor], candidates: Sequence[tuple[int, str]]
) -> tuple[list[int], list[dict[str, Any]], str]:
    """The candidates to average: every one of the best's covariance type whose per-row
    validation NLL is within :data:`AVERAGE_SE` paired standard errors of the best
    (candidates simplest first). Returns their indices, a record per candidate and the reason.
    """
    means = [float(r.mean()) for r in per_row]
    best = min(range(len(means)), key=means.__getitem__)
    kb, covb = candidates[best]
    n = len(per_row[best])
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    for i, ((k, cov), r) in enumerate(zip(candidates, per_row, strict=True)):
        se = paired_se(r - per_row[best])
        keep = i == best or (cov == covb and means[i] - means[best] <= AVERAGE_SE * se)
        records.append({"n_components": k, "covariance_type": cov, "val_nll": means[i],
                        "se_vs_best": se, "kept": keep})  # fmt: skip
        if keep:
            kept.append(i)
    if len(kept) == 1:
        reason = (f"{kb} {covb} component(s) had the lowest validation NLL ({means[best]:.4f}), "
                  f"no other candidate within {AVERAGE_SE:g} paired standard errors over {n} "
                  "validation rows")  # fmt: skip
    else:
        sizes = "+".join(str(candidates[i][0]) for i in kept)
        reason = (f"an equally weighted average of the {len(kept)} candidates within "
                  f"{AVERAGE_SE:g} paired standard errors of the best ({kb} {covb}: "
                  f"{means[best]:.4f} over {n} validation rows): {sizes} {covb} components")  # fmt: skip
    return kept, records, reason


def select_capacity(
    model: MDN, x: Any, y: Any, fit: Callable[..., History], kwargs: dict[str, Any]
) -> History:
    """Train ``model`` with its capacity chosen from the data (see the module's docstring).

    ``fit`` is :func:`torchmdn.fit` and ``kwargs`` its keyword arguments; the model ends with
    the kept candidates' average (or, after cross-validation, trained at the chosen size
    alone), with ``auto_components``/``auto_covariance`` cleared.
    """
    from .distributed import torchrun_environment
    from .streaming import TableSource

    unsupported = (
        "streamed data" if isinstance(x, TableSource)
        else "resuming a checkpoint" if kwargs.get("resume") is not None
        else "checkpoints" if kwargs.get("checkpoint") is not None
        else "data parallel training" if kwargs.get("distributed") or torchrun_environment()
        else None
    )  # fmt: skip
    if unsupported is not None:
        k, cov = model.head.n_components, model.head.covariance_type
        model.auto_components = model.auto_covariance = False
        reason = (
            f"automatic selection does not support {unsupported}: trained the fixed default "
            f"({k} {cov} components); pass n_components to choose"
        )
        return fit(model, x, y, **kwargs).record_capacity([], [(k, cov)], reason)

    seed = torch.Generator().seed() if kwargs.get("random_state") is None else kwargs["random_state"]
    kwargs = {**kwargs, "random_state": int(seed)}
    pairs = candidates(model)
    if kwargs.get("validation_data") is None and float(kwargs["validation_fraction"]) <= 0:
        history = train_fixed(model, 1, pairs[0][1], x, y, fit, kwargs)
        reason = (
            "no validation rows to compare candidates on: trained the simplest (one "
            "component); pass n_components to choose"
        )
        return history.record_capacity([], [pairs[0]], reason)
    held_out = folds(x, kwargs)
    if held_out is not None:  # too few validation rows to choose on: cross-validate
        return cross_validate(model, x, y, fit, kwargs, pairs, held_out)
    history, best, inputs = train_ladder(model, pairs, x, y, fit, kwargs, keep_states=True)
    if not (history.val_nll and all(b.state is not None for b in best)):
        # a candidate never scored a finite validation NLL: nothing to compare
        k, cov = pairs[0]
        history = train_fixed(model, k, cov, x, y, fit, kwargs)
        records = [{"n_components": k, "covariance_type": c} for k, c in pairs]
        reason = "not every candidate scored a finite validation NLL: trained the simplest"
        return history.record_capacity(records, [pairs[0]], reason)
    kept, records, reason = choose([b.rows for b in best], pairs)  # type: ignore[misc]
    if len(kept) > 1 and inputs is not None:
        kept, reason, extra = without_new_modes(model, best, kept, pairs, inputs, records, reason)
        # modes kept on the word of a few dozen rows: ask every row instead (one column only:
        # for the 2-d ring, whose every head has many modes, the folds chose 5 components)
        doubt = model.out_features == 1 and extra >= MODE_CHECK_EXTRA
        if doubt and (held_out := folds(x, kwargs, MODE_CHECK_ROWS)) is not None:
            return cross_validate(model, x, y, fit, kwargs, pairs, held_out, because=reason)
    at = best_epoch(best, kept)
    history.best_val_nll, history.best_epoch = average_nll(at.all_rows, kept), at.epoch
    install(model, at.state, kept, pairs)  # type: ignore[arg-type]
    return history.record_capacity(records, [pairs[i] for i in kept], reason)
