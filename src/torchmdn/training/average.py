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

__all__ = ["average_nll", "best_epoch", "install", "mean_modes", "without_new_modes"]


def average_nll(rows: Tensor, kept: Sequence[int]) -> float:
    """Mean NLL of the equally weighted average of the ``kept`` heads' densities, from the
    per-row NLLs of every head ``(rows, heads)``."""
    lp = torch.logsumexp(-rows[:, list(kept)], -1) - math.log(len(kept))
    return float(-lp.mean())


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


def without_new_modes(
    model: MDN, best: Sequence[HeadBest], kept: list[int], pairs: Sequence[tuple[int, str]],
    x: Tensor, records: list[dict[str, Any]], reason: str,
) -> tuple[list[int], str]:
    """The kept heads less the largest ones (never the best) until their average has no more
    modes per input, on the validation inputs ``x``, than the best head alone: an average of
    densities can have bumps that none of them has (two slightly shifted unimodal heads), and
    a large head that over-fits a few rows brings its spikes in. Updates ``records``.

    (Measured against the simplest kept head instead, the pruning went on to the best head
    alone, spikes included, more often: more invented modes, not fewer; benchmarks/RESULTS.md.)"""
    top = min(kept, key=lambda i: best[i].value)
    trial = copy.deepcopy(model)
    install(trial, best[top].state, [top], pairs)  # type: ignore[arg-type]
    allowed = mean_modes(trial, x)
    dropped: list[int] = []
    while len(kept) > 1:
        install(trial, best_epoch(best, kept).state, kept, pairs)  # type: ignore[arg-type]
        found = mean_modes(trial, x)
        if found <= allowed:
            break
        largest = max((i for i in kept if i != top), key=lambda i: pairs[i][0])
        kept = [i for i in kept if i != largest]
        dropped.append(largest)
        records[largest]["kept"] = False
    if dropped:
        sizes = "+".join(str(pairs[i][0]) for i in kept)
        reason += (f"; then {', '.join(str(pairs[i][0]) for i in dropped)} left out (with "
                   "them the average had more modes per input than the best head alone, "
                   f"{allowed:.2f} on {len(x)} validation inputs): {sizes}")  # fmt: skip
    return kept, reason


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
