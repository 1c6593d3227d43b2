"""The capacity ladder: candidate mixture heads of several sizes on one shared backbone,
trained together (see :mod:`torchmdn.training.capacity`, which chooses among them).

``Ladder.log_prob`` is the mean of the heads' log-likelihoods, so one training run fits every
head; when the training loop scores the validation rows each head's per-row values are
recorded. The heads are evaluated together: their linear layers as one matrix product and
their mixtures as one padded log-sum-exp, or, on the CPU, each head at its own size by one
call of the compiled kernel (padding evaluates every head at the largest head's size). With
``widenings``, each head is also scored with its standard deviations multiplied by each of
them: what cross-validation chooses a widening from (:mod:`torchmdn.training.widening`).
:func:`train_ladder` trains one with :func:`torchmdn.fit` and keeps each head's best epoch
(:class:`HeadBest`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._math import LOG_2PI
from ..distributions.covariance import at_least_float32, autocast_on
from ..distributions.mixture import GaussianMixture
from ..nn.mdn import MDN, MDNHead
from ..ops import fused, kernel
from ..ops.layout import HEAD_KINDS, unpack_precision
from .history import History

__all__ = ["HeadBest", "Ladder", "SAMPLE_ROWS", "train_ladder"]

#: validation inputs kept by the recorder (see ``_Recorder``)
SAMPLE_ROWS = 32


class _Recorder:
    """Per-head validation NLL of the epoch being scored; shared by a module and its copies
    (the training loop's moving average of the weights is a deep copy: scored, not trained).
    ``inputs`` keeps the first :data:`SAMPLE_ROWS` validation inputs scored (every epoch
    scores the same rows), for checks on the candidates afterwards."""

    def __init__(self, n_heads: int) -> None:
        self.n_heads = n_heads
        self.inputs: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.rows: list[list[Tensor]] = [[] for _ in range(self.n_heads)]
        self.features: list[tuple[Tensor, Tensor]] = []  # (h, z) per batch, with widenings
        self.source: Ladder | None = None

    def __deepcopy__(self, memo: dict) -> _Recorder:
        return self


class Ladder(nn.Module):
    """Candidate MDNs sharing one backbone (and the normalisers): ``log_prob`` is the mean of
    their log-likelihoods, so one training run fits every head. ``widenings``: factors by
    which the heads' standard deviations are also multiplied when the validation rows are
    scored (recorded, not trained)."""

    #: the capacity choice keeps each head's best state itself, from the recorded validation
    #: rows: the training loop neither copies the ladder's best state (every epoch the mean
    #: improves: 6% of a small fit) nor restores it
    keeps_best_states = True
    #: nor does the loop track the components' shares every epoch (``head`` is the largest
    #: candidate's: no diagnostic of the model installed; 14% of a fit on 277 rows) unless
    #: dead components are to be re-seeded
    tracks_components = False

    def __init__(
        self, model: MDN, candidates: Sequence[tuple[int, str]], seed: int,
        widenings: Sequence[float] = (),
    ) -> None:  # fmt: skip
        super().__init__()
        self.candidates = list(candidates)
        self.widenings = tuple(float(w) for w in widenings)
        cfg = model.config()
        members = []
        with torch.random.fork_rng(devices=[]):  # the heads' initial weights come from seed
            torch.manual_seed(seed)
            heads = [MDN(**{**cfg, "n_components": k, "covariance_type": cov, "groups": None})
                     for k, cov in self.candidates]  # fmt: skip
        for m in heads:
            m.load_state_dict(
                {n: t for n, t in model.state_dict().items() if not n.startswith("head.")},
                strict=False,
            )
            members.append(m)
        self.backbone = copy.deepcopy(model.backbone)  # registered once, here
        for m in members:  # shared by every member, but not registered in each: the state
            del m._modules["backbone"]  # (copied every epoch) holds one backbone, not one each
            object.__setattr__(m, "backbone", self.backbone)
        self.members = nn.ModuleList(members)
        self.recorder = _Recorder(len(members))

    def train(self, mode: bool = True) -> Ladder:
        """``nn.Module.train`` in one flat pass over the submodules: the training loop switches
        modes several times an epoch and the ladder has a few dozen modules (the recursive
        pass was 9% of a fit on 277 rows). A submodule with a ``train`` of its own (a custom
        backbone) gets the recursive pass."""
        flat = self.__dict__.get("_flat_modules")
        if flat is None:
            found = list(self.modules())
            plain = all(type(m).train is nn.Module.train for m in found[1:])
            flat = self.__dict__["_flat_modules"] = found if plain else []
        if not flat or not isinstance(mode, bool):
            return super().train(mode)
        for m in flat:  # what nn.Module.__setattr__ ends in for a plain attribute
            m.__dict__["training"] = mode
        return self

    @property
    def standardized(self) -> Tensor:
        """Whether the normalisers are set (the training loop asks)."""
        return self.members[0].standardized

    @property
    def x_scale(self) -> Tensor:
        """The shared input scales."""
        return self.members[0].x_scale

    @property
    def y_scale(self) -> Tensor:
        """The shared target scales."""
        return self.members[0].y_scale

    @property
    def head(self) -> MDNHead:
        """The largest candidate's head (what the loop's component tracking looks at)."""
        return self.members[-1].head

    def mixture_and_target(self, x: Tensor, y: Tensor) -> tuple[GaussianMixture, Tensor]:
        """The largest candidate's mixture and the standardised targets (component tracking)."""
        return self.members[-1].mixture_and_target(x, y)

    @torch.no_grad()
    def standardize(self, x: Tensor, y: Tensor) -> Ladder:
        """Set every member's normalisers (and grid floor) from the training rows."""
        self.members[0].standardize(x, y)
        state = {n: t for n, t in self.members[0].state_dict().items() if not n.startswith("head.")}
        for m in self.members[1:]:
            m.load_state_dict(state, strict=False)
            m.head.scale_floor.copy_(self.members[0].head.scale_floor)
        return self

    @torch.no_grad()
    def initialize(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        start: str = "clusters",
    ) -> Ladder:  # fmt: skip
        """Start every head at the unconditional mixture fit of ``y`` with its component count
        (``start``: see :meth:`~torchmdn.MDNHead.initialize`)."""
        for m in self.members:
            m.initialize(x, y, generator, start=start)
        return self

    def forward(self, x: Tensor):
        """The largest candidate's mixture (for the loop's diagnostics)."""
        return self.members[-1](x)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean over the heads of ``log p(y | x)``; when scoring (eval mode, no gradient)
        each head's per-row values are recorded for the choice."""
        first = self.members[0]
        h = first.backbone((first._check_x(x) - first.x_loc) / first.x_scale)
        z = (first._check_y(y) - first.y_loc) / first.y_scale
        lps = self.head_log_probs(h, z) - first.y_scale.log().sum()  # (rows, heads)
        if not self.training and not torch.is_grad_enabled():
            for i in range(len(self.members)):
                self.recorder.rows[i].append(-lps[:, i].detach().double().cpu())
            if self.widenings:  # scored widened only at a head's best epoch (widened_rows)
                self.recorder.features.append((h.detach(), z.detach()))
            self.recorder.source = self
            if self.recorder.inputs is None:
                self.recorder.inputs = x[:SAMPLE_ROWS].detach().clone()
        return lps.mean(-1)

    @torch.no_grad()
    def widened_rows(self, features: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Every head's per-row NLLs of the recorded validation ``features`` (the backbone's
        features and the standardised targets, per batch) with its standard deviations
        multiplied by each of ``widenings``, ``(rows, heads, widenings)``."""
        log_scale = self.members[0].y_scale.log().sum()
        out = []
        for h, z in features:  # every widening in one call: the rows repeated, one per block
            k, rows = len(self.widenings), len(h)
            dtype = torch.promote_types(z.dtype, torch.float32)
            factors = torch.tensor(self.widenings, dtype=dtype, device=h.device)
            lp = self.head_log_probs(h.repeat(k, 1), z.repeat(k, 1),
                                     factors.repeat_interleave(rows)[:, None])  # fmt: skip
            out.append(lp.unflatten(0, (k, rows)).permute(1, 2, 0))
        return -(torch.cat(out) - log_scale).double().cpu()

    def head_log_probs(self, h: Tensor, z: Tensor, widen: float | Tensor = 1.0) -> Tensor:
        """``log p(z | h)`` under every head at once, ``(rows, heads)``: the heads' linear
        layers as one matrix product and their mixtures as one padded log-sum-exp; on the
        CPU, each head by the compiled kernel instead (:meth:`each_head_log_prob`). Under
        autocast the linear layers run in its dtype and the mixtures, as for one head, in
        float32 with autocast off. ``widen``: a factor on every standard deviation (the
        means as they are; or one per row, ``(rows, 1)``): the mixture evaluated at
        ``z / widen`` with its means divided by it, less ``d log(widen)``."""
        if h.device.type == "cpu" and kernel.available():
            return self.each_head_log_prob(h, z, widen)
        groups = self._groups()
        outs = []
        for idx, heads in groups.values():
            weight = torch.cat([m.head.linear.weight for m in heads])
            bias = torch.cat([m.head.linear.bias for m in heads])
            outs.append(F.linear(h, weight, bias).index_select(-1, idx))
        *outs, z = at_least_float32(*outs, z)
        if autocast_on(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                return self._padded_log_probs(outs, z, widen)
        return self._padded_log_probs(outs, z, widen)

    def _padded_log_probs(self, outs: list[Tensor], z: Tensor, widen: float | Tensor) -> Tensor:
        """The mixtures of :meth:`head_log_probs` from each covariance kind's grouped outputs
        (``[all logits | all means | all scale parameters]``), padded to the largest head."""
        d = z.shape[-1]
        floor = self.members[0].head.scale_floor
        wide = _widens(widen)
        if wide:
            z = z / widen
        logits_all, comp_all = [], []
        for out, (kind, (_, heads)) in zip(outs, self._groups().items(), strict=True):
            n = sum(m.head.n_components for m in heads)
            logits, loc, raw = out.split([n, n * d, out.shape[-1] - n - n * d], dim=-1)
            loc = loc.unflatten(-1, (n, d))
            diff = z.unsqueeze(-2) - (loc / _per_component(widen) if wide else loc)
            if kind == "diagonal":
                scale = F.softplus(raw.unflatten(-1, (n, d))) + floor
                comp = -0.5 * (diff / scale).square().sum(-1) - scale.log().sum(-1)
            elif kind == "isotropic":
                scale = F.softplus(raw) + heads[0].head.floor
                comp = -0.5 * diff.square().sum(-1) / scale.square() - d * scale.log()
            else:
                prec = unpack_precision(raw.unflatten(-1, (n, -1)), floor)
                white = (prec @ diff.unsqueeze(-1)).squeeze(-1)
                comp = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * white.square().sum(-1)
            logits_all.append(logits)
            comp_all.append(comp)
        logits = torch.cat([*logits_all, torch.full_like(comp_all[0][:, :1], -math.inf)], -1)
        comp = torch.cat([*comp_all, torch.zeros_like(comp_all[0][:, :1])], -1)
        pad, shape = self._padding()
        logits = logits.index_select(-1, pad).unflatten(-1, shape)
        comp = comp.index_select(-1, pad).unflatten(-1, shape)
        lp = torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1) - 0.5 * d * LOG_2PI
        return lp - d * _log(widen) if wide else lp

    def each_head_log_prob(self, h: Tensor, z: Tensor, widen: float | Tensor = 1.0) -> Tensor:
        """:meth:`head_log_probs` with each head's mixture evaluated at its own size by the
        compiled kernel, on its columns of the one matrix product, all heads one autograd node
        and one kernel call (:func:`torchmdn.ops.fused.heads_log_prob`). Padding evaluates
        every head at the largest size (for one column 6 x 20 component slots where 43 are
        used, for full heads three times the components); at batch 128 (one thread, backbone
        included; with an 8-component head still on the ladder and a kernel call per head) a
        step of the one- and two-column ladders took 1.8 and 3.5 ms this way against 3.0 and
        5.2 padded. On CUDA the compiled path would compile once per head size."""
        heads = [m.head for m in self.members]
        weight = torch.cat([hd.linear.weight for hd in heads])
        bias = torch.cat([hd.linear.bias for hd in heads])
        out, z = at_least_float32(F.linear(h, weight, bias), z)  # under autocast too
        spec = [(HEAD_KINDS[hd.covariance_type], hd.n_components, hd.floor) for hd in heads]
        if not _widens(widen):  # (training: the hot path, as it was)
            return fused.heads_log_prob(out, spec, z)
        out, z = torch.where(_mean_columns(heads, out.device), out / widen, out), z / widen
        return fused.heads_log_prob(out, spec, z) - z.shape[-1] * _log(widen)

    def _groups(self) -> dict[str, tuple[Tensor, list[MDN]]]:
        """Members by covariance kind, each with the permutation that takes their stacked
        head outputs to ``[all logits | all means | all scale parameters]``."""
        cached = getattr(self, "_group_cache", None)
        if cached is not None:
            return cached
        groups: dict[str, tuple[Tensor, list[MDN]]] = {}
        d = self.members[0].out_features
        for kind in ("diagonal", "isotropic", "full"):
            heads = [m for m in self.members if m.head.covariance_type == kind]
            if not heads:
                continue
            parts: tuple[list[int], list[int], list[int]] = ([], [], [])
            offset = 0
            for m in heads:
                n = m.head.n_components
                width = m.head.linear.out_features
                parts[0].extend(range(offset, offset + n))
                parts[1].extend(range(offset + n, offset + n + n * d))
                parts[2].extend(range(offset + n + n * d, offset + width))
                offset += width
            device = self.members[0].x_loc.device
            idx = torch.tensor(parts[0] + parts[1] + parts[2], device=device)
            groups[kind] = (idx, heads)
        self._group_cache = groups
        return groups

    def _padding(self) -> tuple[Tensor, tuple[int, int]]:
        """Where each (head, component) sits among the grouped columns; ``(heads, n_max)``
        with the padding pointing at the extra last column."""
        cached = getattr(self, "_pad_cache", None)
        if cached is not None:
            return cached
        columns: dict[int, list[int]] = {}
        start = 0
        for _, heads in self._groups().values():
            for m in heads:
                i = next(j for j, other in enumerate(self.members) if other is m)
                columns[i] = list(range(start, start + m.head.n_components))
                start += m.head.n_components
        n_max = max(len(c) for c in columns.values())
        flat = [c + [start] * (n_max - len(c)) for _, c in sorted(columns.items())]
        device = self.members[0].x_loc.device
        pad = torch.tensor([j for row in flat for j in row], device=device)
        self._pad_cache = (pad, (len(self.members), n_max))
        return self._pad_cache


def _widens(widen: float | Tensor) -> bool:
    """Whether ``widen`` changes anything (a factor other than 1, or one per row)."""
    return isinstance(widen, Tensor) or widen != 1.0


def _per_component(widen: float | Tensor) -> float | Tensor:
    """A widening factor (or one per row, ``(rows, 1)``) that broadcasts against
    ``(rows, n, d)``."""
    return widen.unsqueeze(-1) if isinstance(widen, Tensor) else widen


def _log(widen: float | Tensor) -> float | Tensor:
    """``log(widen)`` (per row for a tensor ``(rows, 1)``: against ``(rows, heads)``)."""
    return widen.log() if isinstance(widen, Tensor) else math.log(widen)


def _mean_columns(heads: Sequence[MDNHead], device: torch.device) -> Tensor:
    """Which columns of the heads' outputs side by side (each ``[logits | means | scale
    parameters]``) are means."""
    is_mean = torch.tensor([False, True, False], device=device)
    widths = torch.tensor([w for hd in heads for w in hd.output_split], device=device)
    return is_mean.repeat(len(heads)).repeat_interleave(widths)


@dataclass
class HeadBest:
    """A candidate's best epoch in a ladder: its validation NLL, the epoch (0-based), its
    per-row validation NLLs, every head's at that epoch ``(rows, heads)``, (when kept) the
    ladder's state then (shared by the heads whose best epoch it is) and (when the ladder has
    ``widenings``) its per-row NLLs then with its standard deviations multiplied by each,
    ``(rows, widenings)``."""

    value: float = math.inf
    epoch: int = -1
    rows: Tensor | None = None
    all_rows: Tensor | None = None
    state: dict[str, Tensor] | None = None
    widened: Tensor | None = None


def train_ladder(
    model: MDN, pairs: Sequence[tuple[int, str]], x: Any, y: Any, fit: Callable[..., History],
    kwargs: dict[str, Any], keep_states: bool, widenings: Sequence[float] = (),
) -> tuple[History, list[HeadBest], Tensor | None]:
    """Train a :class:`Ladder` of ``model``'s candidates ``pairs`` with ``fit`` (its keyword
    arguments ``kwargs``); for each head, its best epoch (with the ladder's state then when
    ``keep_states``, its widened scores with ``widenings``). Also returns a sample of the
    validation inputs."""
    ladder = Ladder(model, pairs, int(kwargs["random_state"]), widenings)
    ladder.to(next(model.parameters()))
    best = [HeadBest() for _ in pairs]
    user_callback = kwargs.get("callback")
    listed: dict[int, list[tuple[str, Tensor]]] = {}

    def snapshot(source: nn.Module) -> dict[str, Tensor]:
        """A copy of the state of ``source`` (the ladder or the loop's moving average of it):
        its tensors are listed once, as training updates them in place (3x cheaper than
        walking the modules every epoch)."""
        items = listed.get(id(source))
        if items is None:
            items = listed[id(source)] = list(source.state_dict().items())
        return {name: t.clone() for name, t in items}  # (state_dict's tensors are detached)

    def keep_best(epoch: int, history: History) -> bool | None:
        rec = ladder.recorder
        if rec.source is not None and rec.rows[0]:
            all_rows = torch.stack([torch.cat(r) for r in rec.rows], -1)
            state: dict[str, Tensor] | None = None  # copied once for the heads that improved
            wide: Tensor | None = None  # scored widened once, likewise
            for i in range(len(pairs)):
                value = float(all_rows[:, i].mean())
                if value >= best[i].value:
                    continue
                if keep_states and state is None:
                    state = snapshot(rec.source)
                if rec.features and wide is None:
                    wide = rec.source.widened_rows(rec.features)
                own = None if wide is None else wide[:, i]
                best[i] = HeadBest(value, epoch, all_rows[:, i], all_rows, state, own)
        rec.reset()
        return user_callback(epoch, history) if user_callback is not None else None

    history = fit(ladder, x, y, **{**kwargs, "callback": keep_best})
    return history, best, ladder.recorder.inputs
