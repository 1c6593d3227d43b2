"""Installing the kept candidates' average into a model (see
:mod:`torchmdn.training.capacity`): which of the ladder's recorded epochs, the check that the
average invents no modes, and the grouped head that holds it."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..nn.mdn import MDN, MDNHead
from .ladder import HeadBest

__all__ = [
    "MODE_GUARD_SE", "average_nll", "average_rows", "best_epoch", "cannot_tell", "install",
    "mean_modes", "paired_se", "without_new_modes",
]


def paired_se(diff: Tensor) -> float:
    """The standard error of the mean of per-row differences ``diff`` (infinite for one row)."""
    return float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.inf


def average_rows(rows: Tensor, kept: Sequence[int]) -> Tensor:
    """Per-row NLL of the equally weighted average of the ``kept`` heads' densities, from the
    per-row NLLs of every head ``(rows, heads)``."""
    return -(torch.logsumexp(-rows[:, list(kept)], -1) - math.log(len(kept)))


def average_nll(rows: Tensor, kept: Sequence[int]) -> float:
    """Mean NLL of the equally weighted average of the ``kept`` heads' densities, from the
    per-row NLLs of every head ``(rows, heads)``."""
    return float(average_rows(rows, kept).mean())


def best_epoch(best: Sequence[HeadBest], kept: Sequence[int]) -> HeadBest:
    """Of the heads' best epochs, the one where the average of the ``kept`` heads scores
    best (for one head, its own best epoch)."""
    return min(best, key=lambda b: average_nll(b.all_rows, kept))  # type: ignore[arg-type]


def mean_modes(model: MDN, x: Tensor) -> float:
    """Mean number of modes (above the library's negligible-mode threshold) of the model's
    density at the inputs ``x``."""
    with torch.no_grad():
        _, _, valid = model(x).modes()
    return float(valid.sum(-1).double().mean())


#: the mode check leaves a head out only if the average without it scores at most this many
#: paired standard errors worse on the validation rows: modes the rows need are kept.
#: Replayed on recorded fits (UCI splits 0-9 of five sets, four generated one-column problems
#: at 300 and 1000 rows, five seeds; benchmarks/RESULTS.md): at 0 the invented modes stayed
#: (heteroscedastic noise, 300 rows: extra modes at 20 of 205 inputs), at 2 UCI concrete lost
#: 0.10 nats; at 1, 3 extra modes there, concrete unchanged, boston 0.05 worse (one split)
MODE_GUARD_SE = 1.0


def cannot_tell(diff: Tensor) -> tuple[bool, float, float]:
    """The mode steps' test of whether the rows need the better fit: ``diff``, each row's NLL
    under the simpler (or fewer-moded) fit minus under the other; non-finite rows left out.
    Returns whether its mean is at most :data:`MODE_GUARD_SE` paired standard errors (never
    on fewer than two rows), the mean and the standard error."""
    diff = diff[torch.isfinite(diff)]
    if len(diff) < 2:
        return False, math.inf, math.inf
    mean, se = float(diff.mean()), paired_se(diff)
    return mean <= MODE_GUARD_SE * se, mean, se


def without_new_modes(
    model: MDN, best: Sequence[HeadBest], kept: list[int], pairs: Sequence[tuple[int, str]],
    x: Tensor, records: list[dict[str, Any]], reason: str,
) -> tuple[list[int], str, int]:
    """The kept heads less the largest ones while their average has more modes per input, on
    the validation inputs ``x``, than the simplest kept head alone, and leaving the next one
    out costs at most :data:`MODE_GUARD_SE` paired standard errors of validation NLL. An
    average of densities can have bumps that none of them has, and a large head that
    over-fits a few rows brings its spikes in; the best head on a few dozen rows is often
    such a head. Updates ``records``. Returns the heads kept, the reason and how many more
    modes than the simplest kept head the average still has over the inputs ``x`` (kept
    because the validation rows said they need them; 0 when none)."""
    simplest = min(kept, key=lambda i: pairs[i][0])
    trial = copy.deepcopy(model)
    install(trial, best[simplest].state, [simplest], pairs)  # type: ignore[arg-type]
    allowed = mean_modes(trial, x)
    dropped: list[int] = []
    needed, extra = "", 0
    at = best_epoch(best, kept)
    while len(kept) > 1:
        install(trial, at.state, kept, pairs)  # type: ignore[arg-type]
        found = mean_modes(trial, x)
        if found <= allowed:
            break
        largest = max(kept, key=lambda i: pairs[i][0])
        rest = [i for i in kept if i != largest]
        at_rest = best_epoch(best, rest)  # where the average without it is taken
        with_it = average_rows(at.all_rows, kept)  # type: ignore[arg-type]
        diff = average_rows(at_rest.all_rows, rest) - with_it  # type: ignore[arg-type]
        same, rise, se = cannot_tell(diff)
        if not same:
            needed = (f"; the rest of the modes kept ({found:.2f} per input against "
                      f"{allowed:.2f}): without {pairs[largest][0]} components the validation "
                      f"NLL rose by {rise:.4f}, more than {MODE_GUARD_SE:g} "
                      f"paired standard error(s) ({se:.4f})")  # fmt: skip
            extra = round((found - allowed) * len(x))
            break
        kept, at = rest, at_rest
        dropped.append(largest)
        records[largest]["kept"] = False
    if dropped:
        sizes = "+".join(str(pairs[i][0]) for i in kept)
        reason += (f"; then {', '.join(str(pairs[i][0]) for i in dropped)} left out (with "
                   "them the average had more modes per input than the simplest kept head "
                   f"alone, {allowed:.2f} on {len(x)} validation inputs, and the validation "
                   f"rows did not need them): {sizes}")  # fmt: skip
    return kept, reason + needed, extra


@torch.no_grad()
def install(
    model: MDN, state: dict[str, Tensor], members: Iterable[int], pairs: Sequence[tuple[int, str]]
) -> None:
    """Give ``model`` the backbone of a ladder's ``state`` and the heads of its ``members``
    (``pairs`` gives each member's size): one head, or for several a head of their summed
    size whose groups are the members' mixtures, equally weighted."""
    members = list(members)
    old = model.head
    d, cov = old.out_features, pairs[members[0]][1]
    sizes = [pairs[i][0] for i in members]
    head = MDNHead(old.in_features, d, sum(sizes), cov, old.min_scale, sizes)
    own = {n[len(f"members.{members[0]}."):]: t for n, t in state.items()
           if n.startswith(f"members.{members[0]}.")}  # normalisers and floor  # fmt: skip
    for p in ("weight", "bias"):  # each member's rows into the layout's three blocks
        blocks: list[list[Tensor]] = [[], [], []]  # logits, means, scale parameters
        for i, k in zip(members, sizes, strict=True):
            t = state[f"members.{i}.head.linear.{p}"]
            for block, part in zip(blocks, t.split([k, k * d, len(t) - k - k * d]), strict=True):
                block.append(part)
        own[f"head.linear.{p}"] = torch.cat([torch.cat(b) for b in blocks])
    backbone = {n: t for n, t in state.items() if n.startswith("backbone.")}
    model.head = head.to(next(old.parameters()))
    model.load_state_dict({**backbone, **own})
    model.auto_components = model.auto_covariance = False
    model.eval()
