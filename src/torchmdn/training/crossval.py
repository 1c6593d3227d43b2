"""Small data: an MDN's capacity chosen by cross-validation (the part of
:func:`torchmdn.training.capacity.select_capacity` for a few hundred rows or fewer; also
under 400 rows when one validation split's choice kept modes on the word of its few rows).

When the validation split would hold fewer than :data:`MIN_VALIDATION_ROWS` (25) rows (under
250 rows at the default 10%), one split's standard error is not an estimate (on 2 rows
anything can win). Then the choice is made by :data:`CV_FOLDS`-fold cross-validation
instead: a ladder is trained on each four fifths and scores the fifth left out, so every row
is a validation row once and the simplest candidate within half a paired standard error of
the best is chosen (:func:`simplest`; one component only when it is the best), and trained
on every row, with none held out, for the median of the folds' best epoch counts (on 50 rows
of four generated problems, 3 seeds each, better than early stopping on 5 validation rows in
9 of 12 cases, mean test excess NLL 0.46 against 0.86: benchmarks/RESULTS.md). For a
one-column target, if that fit has more than one mode per input on the folds' held-out
inputs, the next simpler size is trained instead when the pooled rows cannot tell it from
the chosen one (within a paired standard error), and kept if it has fewer modes
(:func:`fewer_modes`). If the fit kept still has more than one mode per input, its size
started with the components overlapping (all at the targets' median, different widths:
``initialize="overlapping"``) is cross-validated on the same folds and, when the pooled rows
cannot tell the two starts apart, trained on every row and kept if it has fewer modes
(:func:`overlapping_start`; the k-means start puts a component on a skewed tail from the
first step). Last, every standard deviation of the fit kept is multiplied by the factor the
folds' held-out rows scored best (each fold's ladder scores its heads widened too; for a
one-column target with more than one mode per input, a larger factor with fewer modes when
the rows cannot tell: :func:`~torchmdn.training.widening.widen`). This costs about 8-16 small
fits, on data sets where one fit takes seconds.

(An average there would have to be trained afresh on every row; so trained, on 50 rows of
heteroscedastic noise, it had 3.4 modes per input where the truth has one.)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.mdn import MDN
from .average import MODE_GUARD_SE, cannot_tell, mean_modes, paired_se
from .history import History
from .ladder import train_ladder
from .length import plan, validation_rows
from .widening import WIDENINGS, widen

__all__ = [
    "CV_FOLDS", "MIN_VALIDATION_ROWS", "TOLERANCE_SE", "cross_validate", "fewer_modes", "folds",
    "overlapping_start", "simplest", "train_fixed",
]  # fmt: skip


#: under cross-validation, the simplest candidate whose pooled NLL is within this many
#: paired standard errors of the best is trained (:func:`simplest`). Half, not the textbook
#: one: with one (when one head was chosen for every data size), a single Gaussian was kept
#: on UCI energy splits whose validation rows could not show its thin tails (test NLL 8.1
#: and 2.4 against 0.47 for five components), and on generated Student-t and bimodal
#: problems half a standard error chose better than one (benchmarks/RESULTS.md)
TOLERANCE_SE = 0.5


def simplest(
    per_row: Sequence[Tensor], candidates: Sequence[tuple[int, str]]
) -> tuple[int, list[dict[str, Any]], str]:
    """The rule under cross-validation (small data): the simplest candidate within
    :data:`TOLERANCE_SE` paired standard errors of the best per-row validation NLL
    (candidates simplest first): the index chosen, a record per candidate and the reason.

    A single Gaussian is taken only when it is the best: its tails are the thinnest of the
    family, and the validation rows rarely hold the one row that shows it (UCI energy split 8:
    one component within half a standard error of two on 69 validation rows, test NLL 8.13
    against 0.62 for the two). Choosing two components where one would do costs little.
    """
    means = [float(r.mean()) for r in per_row]
    best = min(range(len(means)), key=means.__getitem__)
    n = len(per_row[best])
    records: list[dict[str, Any]] = []
    chosen = None
    for i, ((k, cov), r) in enumerate(zip(candidates, per_row, strict=True)):
        diff = r - per_row[best]
        se = paired_se(diff)
        records.append(
            {"n_components": k, "covariance_type": cov, "val_nll": means[i], "se_vs_best": se}
        )
        single = k == 1 and i != best  # one component only when it is the best
        if chosen is None and not single and means[i] - means[best] <= TOLERANCE_SE * se:
            chosen = i
    assert chosen is not None  # the best itself qualifies
    k, cov = candidates[chosen]
    kb, covb = candidates[best]
    if chosen == best:
        reason = f"{k} {cov} component(s) had the lowest validation NLL ({means[best]:.4f})"
    else:
        simplest = "simplest mixture" if k > 1 and candidates[0][0] == 1 else "simplest candidate"
        reason = (
            f"{k} {cov} component(s): the {simplest} within {TOLERANCE_SE:g} paired "
            "standard error(s) of the "
            f"best ({kb} {covb}: {means[best]:.4f}; this one {means[chosen]:.4f}, paired "
            f"standard error {records[chosen]['se_vs_best']:.4f} over {n} validation rows)"
        )
    return chosen, records, reason


#: with fewer validation rows than this, the capacity is chosen by cross-validation
MIN_VALIDATION_ROWS = 25
#: folds of that cross-validation
CV_FOLDS = 5


def folds(
    x: Any, kwargs: dict[str, Any], below: int = MIN_VALIDATION_ROWS
) -> list[Tensor] | None:
    """The cross-validation folds (row indices) when the validation split would hold fewer
    than ``below`` rows (and the data allow it), else ``None``."""
    n = len(x)
    if kwargs.get("validation_data") is not None:
        return None
    held = validation_rows(n, float(kwargs["validation_fraction"]))
    if held >= below or n < 2 * CV_FOLDS:
        return None
    g = torch.Generator().manual_seed(int(kwargs["random_state"]))
    return list(torch.randperm(n, generator=g).tensor_split(CV_FOLDS))


def _rows(a: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of a tensor or an array-like (pandas, NumPy, nested lists)."""
    if isinstance(a, Tensor):
        return a[idx.to(a.device)]
    return np.asarray(a)[idx.numpy()]


def _fold_scores(
    model: MDN, x: Any, y: Any, fit: Callable[..., History], kwargs: dict[str, Any],
    pairs: Sequence[tuple[int, str]], folds: list[Tensor],
) -> tuple[list[Tensor], list[list[int]], list[Tensor], list[Tensor]]:
    """Each fold's rows scored by a ladder of ``pairs`` trained on the other folds: every
    candidate's per-row NLLs of all held-out rows pooled (``inf`` where a candidate never
    scored), its best epoch in each fold, a sample of each fold's held-out inputs, and every
    candidate's pooled per-row NLLs with its standard deviations widened by each of
    :data:`WIDENINGS` ``(rows, widenings)``."""
    per_row: list[list[Tensor]] = [[] for _ in pairs]
    widened: list[list[Tensor]] = [[] for _ in pairs]
    epochs: list[list[int]] = [[] for _ in pairs]
    held_inputs: list[Tensor] = []
    for j, held in enumerate(folds):
        rest = torch.cat([f for i, f in enumerate(folds) if i != j])
        fold_kwargs = {**kwargs, "validation_data": (_rows(x, held), _rows(y, held)),
                       "progress": False, "callback": None}  # fmt: skip
        _, best, inputs = train_ladder(
            model, pairs, _rows(x, rest), _rows(y, rest), fit, fold_kwargs, keep_states=False,
            widenings=WIDENINGS,
        )
        if inputs is not None:
            held_inputs.append(inputs)
        missing = torch.full((len(held), len(WIDENINGS)), math.inf, dtype=torch.float64)
        for i, b in enumerate(best):
            per_row[i].append(b.rows if b.rows is not None else missing[:, 0])
            widened[i].append(b.widened if b.widened is not None else missing)
            epochs[i].append(b.epoch)
    pooled = [torch.cat(r) for r in per_row]
    return pooled, epochs, held_inputs, [torch.cat(r) for r in widened]


def cross_validate(
    model: MDN, x: Any, y: Any, fit: Callable[..., History], kwargs: dict[str, Any],
    pairs: list[tuple[int, str]], folds: list[Tensor], because: str = "",
) -> History:
    """Choose with :data:`CV_FOLDS`-fold cross-validation (each fold's rows scored by a ladder
    trained on the others: every row is a validation row once), then train the chosen size
    on every row for the folds' median best epoch count (no rows held out: the folds have
    already said when to stop, on five times as many validation rows as one split holds).
    ``because``: what a validation split chose before, when its choice is being checked."""
    pooled, epochs, held_inputs, widened = _fold_scores(model, x, y, fit, kwargs, pairs, folds)
    idx, records, reason = simplest(pooled, pairs)
    user_callback = kwargs.get("callback")
    # the folds' schedule (warm-up, cosine decay) spans their planned epochs: the same here
    planned, _ = plan(len(x) - len(folds[0]), kwargs["batch_size"], kwargs.get("max_epochs"),
                      kwargs.get("max_steps"), None)  # fmt: skip

    def train_final(
        i: int, trial: bool = False, start: str | None = None, stops: Sequence[int] | None = None
    ) -> tuple[History, int]:
        """Candidate ``i`` trained on every row for its folds' median best epoch count
        (``stops``, when given: those folds' best epochs; ``start``: the head's start, when
        not the caller's); a ``trial``, like a fold, without the caller's callback and
        progress bar."""
        stop_after = max(1, int(np.median(epochs[i] if stops is None else stops)) + 1)
        callback = None if trial else user_callback

        def stop(epoch: int, history: History) -> bool:
            asked = callback(epoch, history) if callback is not None else None
            return bool(asked) or epoch + 1 >= stop_after

        final = {**kwargs, "validation_fraction": 0.0, "patience": None, "callback": stop,
                 "max_epochs": planned, **({"progress": False} if trial else {}),
                 **({"initialize": start} if start is not None else {})}  # fmt: skip
        return train_fixed(model, *pairs[i], x, y, fit, final), stop_after

    trained = train_final(idx)
    sample, new_scores = None, None  # (the mode steps' inputs; the folds' scores of a new fit)
    if model.out_features == 1 and held_inputs:
        sample = torch.cat(held_inputs)
        idx, trained, note, found = fewer_modes(
            model, sample, pooled, pairs, idx, lambda i: train_final(i, trial=True), trained
        )
        reason += note
        if kwargs.get("initialize", True) in (True, "clusters") and pairs[idx][0] > 1:

            def score() -> tuple[Tensor, list[int], Tensor]:
                overlapping = {**kwargs, "initialize": "overlapping"}
                rows, stops, _, wide = _fold_scores(
                    model, x, y, fit, overlapping, [pairs[idx]], folds
                )
                return rows[0], stops[0], wide[0]

            trained, note, new_scores = overlapping_start(
                model, sample, found, pooled[idx], score,
                lambda stops: train_final(idx, trial=True, start="overlapping", stops=stops),
                trained,
            )  # fmt: skip
            reason += note
    reason += widen(model, *(new_scores or (pooled[idx], widened[idx])), sample)
    history, stop_after = trained
    reason = (f"{CV_FOLDS}-fold cross-validation over {len(x)} rows: {reason}; trained on every "
              f"row for {stop_after} epochs (the folds' median best epoch)")  # fmt: skip
    if because:
        reason = (f"the validation split chose {because}; modes kept on so few rows were "
                  f"checked: {reason}")  # fmt: skip
    return history.record_capacity(records, [pairs[idx]], reason)


def overlapping_start(
    model: MDN, x: Tensor, found: float, pooled: Tensor,
    score: Callable[[], tuple[Tensor, Sequence[int], Tensor]],
    train: Callable[[Sequence[int]], tuple[History, int]], trained: tuple[History, int],
) -> tuple[tuple[History, int], str, tuple[Tensor, Tensor] | None]:
    """After cross-validation, for a one-column target whose fit (``model``, just trained;
    ``trained``: its history and epoch count; ``pooled``: its per-row held-out NLLs) still
    has more than one mode per input on ``x`` (a sample of the training inputs; ``found``:
    the fit's modes per input there, as :func:`fewer_modes` left them): the same
    size started with its components overlapping (``initialize="overlapping"``) is
    cross-validated on the same folds (``score()``: its pooled per-row NLLs, each fold's
    best epoch and the widened NLLs) and, when its pooled NLL is within
    :data:`~torchmdn.training.average.MODE_GUARD_SE` paired standard errors of the chosen
    start's, trained on every row (``train(stops)``, for those folds' median best epoch
    count) and kept if it has fewer modes (else the model is restored). Returns the
    history and epoch count kept, a note for the reason, and the folds' scores (pooled and
    widened) of the fit kept when it is the new one (else ``None``). On a few dozen rows of skewed
    noise the k-means start's clusters become modes the data do not have (measured:
    benchmarks/RESULTS.md, "Small data")."""
    if found <= 1:
        return trained, "", None
    rows, stops, wide = score()
    same, worse, _ = cannot_tell(rows - pooled)
    if not same:
        return trained, (f"; {found:.2f} modes per training input; started overlapping, "
                         f"{worse:+.4f} per row on the folds: not tried"), None  # fmt: skip
    trained, now = _keep_if_fewer_modes(model, x, found, trained, partial(train, stops))
    if now >= found:
        return trained, (f"; {found:.2f} modes per training input; started overlapping, as "
                         f"good on the folds but {now:.2f} modes: not kept"), None  # fmt: skip
    return trained, (f"; then started with its components overlapping ({found:.2f} modes per "
                     f"training input before, {now:.2f} now; pooled NLL {worse:+.4f} per "
                     "row)"), (rows, wide)  # fmt: skip


def _keep_if_fewer_modes(
    model: MDN, x: Tensor, found: float, trained: tuple[History, int],
    train: Callable[[], tuple[History, int]],
) -> tuple[tuple[History, int], float]:
    """Train ``model`` afresh (``train()``) and keep that fit only if it has fewer than
    ``found`` modes per input on ``x``; else restore the fit before (``trained``: its
    history and epoch count). Returns the history and epoch count kept, and the new fit's
    modes per input."""
    before = (copy.deepcopy(model), trained)
    trained = train()
    now = mean_modes(model, x)
    if now >= found:
        old, trained = before
        model.head = old.head
        model.load_state_dict(old.state_dict())
    return trained, now


def fewer_modes(
    model: MDN, x: Tensor, pooled: Sequence[Tensor], pairs: Sequence[tuple[int, str]],
    idx: int, train: Callable[[int], tuple[History, int]], trained: tuple[History, int],
) -> tuple[int, tuple[History, int], str, float]:
    """After cross-validation, for a one-column target: while ``model`` (candidate ``idx``,
    just trained) has more than one mode per input on ``x`` (a sample of the training inputs;
    the simplest candidate, one component, has one), the next simpler candidate is trained
    instead if its pooled per-row NLL is within
    :data:`~torchmdn.training.average.MODE_GUARD_SE` paired standard errors of the chosen
    one's, and kept only if it has fewer modes (else the model is restored). ``train(i)``
    trains candidate ``i`` into ``model`` and returns its history and epoch count;
    ``trained`` is the chosen one's. Returns the candidate kept, its history and epoch count,
    a note for the reason and the kept fit's modes per input on ``x`` (measured:
    benchmarks/RESULTS.md, "Small data")."""
    chosen, note = idx, ""
    found = mean_modes(model, x)
    while idx > 0 and found > 1:
        if not cannot_tell(pooled[idx - 1] - pooled[chosen])[0]:
            break
        trained, now = _keep_if_fewer_modes(model, x, found, trained, partial(train, idx - 1))
        if now >= found:  # no fewer modes: the one before was restored
            break
        note += (f"; then {pairs[idx - 1][0]} instead of {pairs[idx][0]} (that had {found:.2f} "
                 f"modes per training input, this {now:.2f}; pooled NLL within "
                 f"{MODE_GUARD_SE:g} paired standard error(s) of the chosen)")  # fmt: skip
        idx, found = idx - 1, now
    return idx, trained, note, found


def train_fixed(
    model: MDN, k: int, cov: str, x: Any, y: Any, fit: Callable[..., History],
    kwargs: dict[str, Any],
) -> History:
    """Make ``model`` a fresh MDN with ``k`` ``cov`` components (weights drawn from
    ``random_state``, normalisers unset) and train it like any fixed-size model."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(kwargs["random_state"]))
        fresh = MDN(**{**model.config(), "n_components": k, "covariance_type": cov, "groups": None})
        model.head = fresh.head
        model.load_state_dict(fresh.state_dict())
        model.to(next(model.backbone.parameters()))
    model.auto_components = model.auto_covariance = False
    return fit(model, x, y, **kwargs)
