"""Ensembles of mixture density networks as one mixture: :func:`ensemble`.

The average of ``M`` members' predicted densities, ``p(y|x) = (1/M) Σ_m p_m(y|x)``, is itself
a Gaussian mixture: every member's components, each weight divided by ``M``. So an
:class:`Ensemble`'s ``forward(x)`` returns one :class:`~torchmdn.GaussianMixture`
(log-weights: each member's log-softmax minus ``log M``, concatenated over the components),
and every query (quantiles, intervals, modes, sampling), :func:`torchmdn.save` /
:func:`torchmdn.load` and export work on it unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .distributions.mixture import GaussianMixture
from .errors import InputError
from .nn.mdn import MDN, MDNHead

__all__ = ["Ensemble", "combine", "ensemble", "full_covariance"]

_MEMBER_CLASSES: dict[str, type[nn.Module]] = {"MDN": MDN}


class Ensemble(nn.Module):
    """Equal-weight mixture of trained models whose ``forward(x)`` is a GaussianMixture.

    Args:
        members: the models (:class:`~torchmdn.MDN`, or any module mapping ``x`` to a
            :class:`~torchmdn.GaussianMixture`); or, as written by :meth:`config` (what
            :func:`torchmdn.load` passes), dicts ``{"class": "MDN", "config": {...}}``. All
            must predict the same target dimension with the same covariance type.

    Example:
        >>> import torch, torchmdn
        >>> ens = torchmdn.ensemble([torchmdn.MDN(1, 1, n_components=2) for _ in range(3)])
        >>> ens(torch.zeros(4, 1)).n_components
        6
    """

    def __init__(self, members: Sequence[nn.Module | dict[str, Any]]) -> None:
        super().__init__()
        if isinstance(members, nn.Module) or not isinstance(members, Sequence) or not members:
            raise InputError(
                "ensemble needs a non-empty list of models; got "
                f"{type(members).__name__}{'' if not isinstance(members, Sequence) else ' (empty)'}"
            )
        built = [_build(m, i) for i, m in enumerate(members)]
        self.members = nn.ModuleList(built)
        first = built[0]
        self.in_features = getattr(first, "in_features", None)
        self.out_features = getattr(first, "out_features", None)
        self.feature_names = getattr(first, "feature_names", None)
        self.target_names = getattr(first, "target_names", None)
        self.metadata: dict[str, Any] = {}  # free-form, saved by torchmdn.save
        kinds = {_covariance(m) for m in built} - {None}
        dims = {getattr(m, "out_features", None) for m in built} - {None}
        if len(kinds) > 1 or len(dims) > 1:
            raise InputError(
                "ensemble members must agree on the target dimension and covariance type; got "
                f"dimensions {sorted(dims)} and covariance types {sorted(kinds)}. Train them "
                "with the same out_features and covariance"
            )

    @property
    def n_components(self) -> int:
        """Total number of components (the sum over the members)."""
        return sum(_components(m) for m in self.members)

    def config(self) -> dict[str, Any]:
        """The members' classes and configs (JSON; used by :func:`torchmdn.save`)."""
        out = []
        for m in self.members:
            if type(m).__name__ not in _MEMBER_CLASSES or not callable(getattr(m, "config", None)):
                raise InputError(
                    f"only ensembles of {sorted(_MEMBER_CLASSES)} can be saved; a member is a "
                    f"{type(m).__name__}"
                )
            out.append({"class": type(m).__name__, "config": m.config()})
        return {"members": out}

    def forward(self, x: Tensor) -> GaussianMixture:
        """One mixture holding every member's components, weights divided by the member count."""
        return combine([m(x) for m in self.members])

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x)`` of the ensemble: ``log (1/M) Σ_m p_m(y | x)``."""
        lps = torch.stack([_log_prob(m, x, y) for m in self.members])
        return torch.logsumexp(lps, 0) - math.log(len(self.members))


def combine(mixtures: Sequence[GaussianMixture]) -> GaussianMixture:
    """The equal-weight mixture of ``mixtures`` (same batch shape, dimension, covariance type)."""
    kinds = {g.covariance_type for g in mixtures}
    shapes = {(tuple(g.batch_shape), tuple(g.event_shape)) for g in mixtures}
    if len(kinds) > 1 or len(shapes) > 1:
        raise InputError(
            "the members' mixtures must have the same covariance type, batch and event shape; "
            f"got covariance types {sorted(kinds)} and (batch, event) shapes {sorted(shapes)}"
        )
    log_m = math.log(len(mixtures))
    logits = torch.cat([g.log_weights - log_m for g in mixtures], -1)
    loc = torch.cat([g.loc for g in mixtures], -2)
    if kinds == {"full"}:
        tril = torch.cat([g.scale_tril for g in mixtures], -3)
        return GaussianMixture(logits, loc, scale_tril=tril, validate_args=False)
    scale = torch.cat([g.scale for g in mixtures], -1 if kinds == {"isotropic"} else -2)
    return GaussianMixture(logits, loc, scale=scale, validate_args=False)


def ensemble(models: Sequence[nn.Module]) -> Ensemble:
    """An :class:`Ensemble` of trained ``models``: ``forward(x)`` is one GaussianMixture with
    every member's components, weights divided by ``len(models)`` (exact).

    Members with diagonal and members with full covariances (``covariance_type="auto"`` may
    choose either) are combined as full ones: copies of the diagonal members are turned into
    equal full ones with :func:`full_covariance`; the models passed in are not changed.
    """
    if isinstance(models, Sequence) and {_covariance(m) for m in models} == {"diagonal", "full"}:
        models = [full_covariance(copy.deepcopy(m)) if _covariance(m) == "diagonal" else m
                  for m in models]  # fmt: skip
    return Ensemble(models)


@torch.no_grad()
def full_covariance(model: MDN) -> MDN:
    """``model`` (changed in place) with its diagonal head turned into an equivalent full one.

    Exact: a full head's factor with zero off-diagonal outputs and the diagonal head's raw
    scale outputs on its diagonal is ``L = diag(floor + softplus(raw))``, the same standard
    deviations. Used to ensemble members that chose different covariance types.
    """
    head = model.head
    if head.covariance_type == "full":
        return model
    if head.covariance_type != "diagonal":
        raise InputError(
            f"only a diagonal head can be turned into a full one; got {head.covariance_type!r}"
        )
    n, d = head.n_components, head.out_features
    new = MDNHead(head.in_features, d, n, "full", head.min_scale, head.groups)
    new = new.to(head.linear.weight)
    new.scale_floor.copy_(head.scale_floor)
    m = d * (d + 1) // 2
    pos = [j * (j + 3) // 2 for j in range(d)]  # where (j, j) sits in the packed rows
    new.linear.weight.zero_()
    new.linear.bias.zero_()
    src_w, src_b, dst_w, dst_b = (
        head.linear.weight,
        head.linear.bias,
        new.linear.weight,
        new.linear.bias,
    )
    dst_w[: n + n * d], dst_b[: n + n * d] = src_w[: n + n * d], src_b[: n + n * d]
    for k in range(n):
        for j in range(d):
            src, dst = n + n * d + k * d + j, n + n * d + k * m + pos[j]
            dst_w[dst], dst_b[dst] = src_w[src], src_b[src]
    model.head = new
    model.auto_components = model.auto_covariance = False  # the head is now fixed
    return model


def _build(m: nn.Module | dict[str, Any], i: int) -> nn.Module:
    if isinstance(m, nn.Module):
        return m
    if (
        isinstance(m, dict)
        and m.get("class") in _MEMBER_CLASSES
        and isinstance(m.get("config"), dict)
    ):
        return _MEMBER_CLASSES[m["class"]](**m["config"])
    raise InputError(
        f"ensemble member {i} must be a model (torch.nn.Module) or a saved member config "
        f"{{'class': 'MDN', 'config': {{...}}}}; got {type(m).__name__}"
    )


def _covariance(m: nn.Module) -> str | None:
    head = getattr(m, "head", None)
    return getattr(head, "covariance_type", None)


def _components(m: nn.Module) -> int:
    k = getattr(m, "n_components", None)
    if isinstance(k, int):
        return k
    head = getattr(m, "head", None)
    return int(getattr(head, "n_components", 0))


def _log_prob(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    log_prob = getattr(m, "log_prob", None)
    return log_prob(x, y) if callable(log_prob) else m(x).log_prob(y)
