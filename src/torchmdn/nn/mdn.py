"""Modules: ``MLP`` backbone, ``MDNHead`` (features -> GaussianMixture) and ``MDN``.

A head's ``forward`` *returns* a :class:`~torchmdn.GaussianMixture`; the distribution holds
tensors only. ``MDN`` standardises x and y with buffers, so ``model(x)`` is a distribution
over y in the user's units; the buffers are set from data by :meth:`MDN.standardize` (which
:func:`torchmdn.fit` calls), never in ``__init__``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import integer
from ..distributions.covariance import COVARIANCE_TYPES
from ..distributions.mixture import GaussianMixture
from ..errors import InputError
from ..ops.layout import HEAD_KINDS, head_parameters, head_width, scale_width, unpack_precision
from .standardize import add_normalizers, target_resolution, write_normalizers

__all__ = [
    "MLP",
    "MDNHead",
    "MDN",
    "ACTIVATIONS",
    "OVERLAP_SPREAD",
    "STARTS",
]

#: how a head's components start (:meth:`MDNHead.initialize`)
STARTS = ("clusters", "overlapping")
#: the ``"overlapping"`` start's standard deviations, as multiples of the targets': the
#: smallest and the largest, the others spaced geometrically between them
OVERLAP_SPREAD = (0.35, 1.4)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def _widths(hidden: Any) -> tuple[int, ...]:
    """Hidden layer widths: a sequence of positive integers, or one integer for one layer."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        return (integer("hidden width", hidden),)
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise InputError(f"hidden must be a sequence of positive integer widths; got {hidden!r}")
    return tuple(integer("hidden width", h) for h in hidden)


def _softplus_inverse(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def _scale_grad(loc: Tensor, scale: Tensor) -> Tensor:
    """Identity on ``loc`` whose backward multiplies the gradient by ``scale`` (detached).

    The RNADE remedy (Uria, Murray & Larochelle 2013): the gradient of the NLL with respect to
    a mean grows like 1/σ², so a narrow component takes huge steps; scaling by σ evens them out.
    """
    return loc + (scale.detach() - 1) * (loc - loc.detach())


class MLP(nn.Sequential):
    """A plain multilayer perceptron: ``Linear -> activation`` for each hidden width."""

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh"
    ):
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features = integer("in_features", in_features)
        for h in _widths(hidden):
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = width


class MDNHead(nn.Module):
    r"""One linear layer from features to the parameters of a Gaussian mixture.

    The output is split into ``logits (*, n)``, ``loc (*, n, d)`` and the scale parameters:
    ``(*, n, d)`` diagonal, ``(*, n)`` isotropic, or the ``d(d+1)/2`` entries of a
    lower-triangular factor per component (full). Standard deviations are
    ``min_scale + softplus(raw)``: a real floor, in the units the head sees.

    Full covariances are parameterised by the lower-triangular *precision* factor
    ``A = L⁻¹`` (``Σ⁻¹ = AᵀA``, ``L`` the Cholesky factor of ``Σ``), so the loss needs no
    triangular solve: ``A``'s off-diagonal entries are the raw outputs and its diagonal is
    ``1 / (min_scale + softplus(raw))``. The floor therefore applies exactly as before to the
    diagonal of ``L = A⁻¹`` (``L_jj = 1/A_jj >= min_scale``: the conditional standard
    deviation of ``y_j`` given ``y_<j``), and so also to every marginal standard deviation
    (``Σ_jj >= L_jj²``). With zero off-diagonal outputs ``L = diag(min_scale + softplus(raw))``.

    Args:
        in_features: size of the feature vector.
        out_features: dimension ``d`` of the target.
        n_components: number of mixture components ``n``.
        covariance_type: ``"diagonal"``, ``"isotropic"`` or ``"full"``.
        min_scale: the floor on standard deviations (``1e-3`` in standardised units matches
            scikit-learn's ``reg_covar=1e-6`` on variances).
        groups: ``None`` (one mixture), or the component counts of equally weighted
            sub-mixtures, summing to ``n_components``: the weights are a softmax within each
            group, divided by the number of groups (an average of mixtures, as installed by
            ``n_components="auto"`` when several candidate sizes fit equally well).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_components: int,
        covariance_type: str = "diagonal",
        min_scale: float = 1e-3,
        groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if covariance_type not in COVARIANCE_TYPES:
            raise InputError(
                f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
            )
        if not (
            isinstance(min_scale, (int, float)) and math.isfinite(min_scale) and min_scale >= 0
        ):
            raise InputError(f"min_scale must be a finite number >= 0; got {min_scale!r}")
        self.in_features = integer("in_features", in_features)
        self.out_features = d = integer("out_features", out_features)
        self.n_components = n = integer("n_components", n_components)
        self.covariance_type = covariance_type
        self.min_scale = float(min_scale)
        self.groups = _groups(groups, n)
        #: per-dimension floor on standard deviations (>= min_scale); MDN.standardize raises it
        #: to the resolution of a target recorded on a grid (see MDN's ``target_resolution``)
        self.register_buffer("scale_floor", torch.full((d,), self.min_scale))
        kind = HEAD_KINDS[covariance_type]
        self._split = [n, n * d, scale_width(kind, n, d)]
        self.linear = nn.Linear(in_features, head_width(kind, n, d))
        #: scale the gradient reaching each mean by its component's σ (RNADE); set by fit()
        self.mean_grad_scaling = False
        if covariance_type == "full":
            rows, cols = torch.tril_indices(d, d)
            self.register_buffer("_tril_is_diag", rows == cols, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small weights, equal mixture weights, unit scales and spread-out means."""
        n, d = self.n_components, self.out_features
        with torch.no_grad():
            self.linear.reset_parameters()
            self.linear.weight.mul_(0.1)
            logit_b, loc_b, scale_b = self.linear.bias.split(self._split)
            logit_b.zero_()
            # means spread over [-1.5, 1.5] (standardised units) so components start apart
            spread = torch.linspace(-1.5, 1.5, n) if n > 1 else torch.zeros(1)
            loc_b.copy_(spread.repeat_interleave(d))
            unit = _softplus_inverse(torch.tensor(max(1.0 - self.min_scale, 1e-3)))
            if self.covariance_type == "full":
                scale_b.zero_()
                scale_b.view(n, -1)[:, self._tril_is_diag] = unit
            else:
                scale_b.fill_(unit.item())

    @property
    def output_split(self) -> list[int]:
        """Widths of the output's three blocks: logits, means, scale parameters (the layout
        of :mod:`torchmdn.ops.layout`)."""
        return list(self._split)

    def component_rows(self, k: int) -> list[int]:
        """Indices of the output units (rows of ``linear``) that belong to component ``k``."""
        n, d = self.n_components, self.out_features
        per = self._split[2] // n
        return [
            k,
            *range(n + k * d, n + (k + 1) * d),
            *range(n + n * d + k * per, n + n * d + (k + 1) * per),
        ]

    @torch.no_grad()
    def set_component(
        self, k: int, loc: Tensor, scale: Tensor, logit: float, zero_weights: bool = True
    ) -> None:
        """Make component ``k`` start at ``loc`` (d,) with standard deviations ``scale`` (d,);
        with ``zero_weights`` its output rows ignore the features until trained."""
        n, d = self.n_components, self.out_features
        if zero_weights:
            self.linear.weight[self.component_rows(k)] = 0.0
        bias = self.linear.bias
        bias[k] = logit
        bias[n + k * d : n + (k + 1) * d] = loc
        floor = self.scale_floor
        if self.covariance_type == "isotropic":  # one scale: the RMS of the d wanted ones
            scale, floor = scale.square().mean().sqrt(), floor.max()
        raw = _softplus_inverse((scale - floor).clamp_min(1e-4))
        start = n + n * d
        if self.covariance_type == "diagonal":
            bias[start + k * d : start + (k + 1) * d] = raw
        elif self.covariance_type == "isotropic":
            bias[start + k] = raw
        else:
            m = self._split[2] // n
            block = torch.zeros(m, dtype=bias.dtype, device=bias.device)
            block[self._tril_is_diag] = raw
            bias[start + k * m : start + (k + 1) * m] = block

    @torch.no_grad()
    def initialize(
        self, z: Tensor, generator: torch.Generator | None = None, iters: int = 20,
        start: str = "clusters",
    ) -> None:  # fmt: skip
        """Start at the unconditional mixture fit of targets ``z (N, d)`` (in the head's units).

        ``start="clusters"``: k-means (k-means++ seeding, ``iters`` Lloyd steps; cost
        O(N n d) each, for ``N`` rows of ``z``) places one component on each cluster with
        that cluster's standard deviations; weights start near uniform (half uniform, half
        the cluster shares) and the weight rows stay small, so training starts from the
        unconditional fit, a known cure for components that never get used.

        ``start="overlapping"``: every component at the targets' median, with standard
        deviations from the first to the second of :data:`OVERLAP_SPREAD` times theirs and
        equal weights: a one-mode start that training separates only where the rows ask for
        it (on a few dozen rows k-means clusters of skewed noise become modes the data do
        not have).
        One component starts the same either way.
        """
        if start not in STARTS:
            raise InputError(f"start must be one of {STARTS}; got {start!r}")
        n, d = self.n_components, self.out_features
        bias = self.linear.bias
        z = z.detach().reshape(-1, d).to(bias.dtype)
        if start == "overlapping" and n > 1 and len(z) > 1:
            self._start_overlapping(z)
            return
        if len(z) < n:
            z = z.repeat(math.ceil(n / len(z)), 1)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        # k-means++ seeding on the generator's device: each row's distance to its nearest
        # centre is kept up to date (one new centre at a time), so seeding costs O(N n d)
        seed_z = z.to(gen.device)
        centers = torch.empty(n, d, dtype=z.dtype, device=gen.device)
        centers[0] = seed_z[torch.randint(len(z), (1,), generator=gen, device=gen.device)][0]
        dist2 = (seed_z - centers[0]).square().sum(1)
        for k in range(1, n):
            total = dist2.sum()
            probs = dist2 / total if total > 0 else torch.full_like(dist2, 1 / len(z))
            centers[k] = seed_z[torch.multinomial(probs, 1, generator=gen)][0]
            dist2 = torch.minimum(dist2, (seed_z - centers[k]).square().sum(1))
        z, centers = z.to(bias.device), centers.to(bias.device)  # the clustering: the head's
        for _ in range(iters):  # Lloyd steps: O(N n d) each, the centres by one index_add
            assign = torch.cdist(z, centers).argmin(1)
            sums = torch.zeros_like(centers).index_add_(0, assign, z)
            counts = torch.bincount(assign, minlength=n).to(z.dtype)
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        assign = torch.cdist(z, centers).argmin(1)
        fallback = z.std(0).clamp_min(1e-3) / n ** (1 / d)
        self.linear.bias.zero_()
        for k in range(n):
            members = z[assign == k]
            share = len(members) / len(z)
            std = members.std(0) if len(members) > 1 else fallback
            std = torch.maximum(torch.where(std > 0, std, fallback), 2 * self.scale_floor)
            self.set_component(
                k, centers[k], std, math.log(0.5 * share + 0.5 / n), zero_weights=False
            )

    def _start_overlapping(self, z: Tensor) -> None:
        """The ``"overlapping"`` start of :meth:`initialize` (``z``: ``(N, d)``, N > 1)."""
        n = self.n_components
        center, spread = z.median(0).values, z.std(0).clamp_min(1e-3)
        low, high = OVERLAP_SPREAD
        factors = torch.logspace(math.log10(low), math.log10(high), n).tolist()
        self.linear.bias.zero_()
        for k, f in enumerate(factors):
            std = torch.maximum(spread * f, 2 * self.scale_floor)
            self.set_component(k, center, std, -math.log(n), zero_weights=False)

    @property
    def floor(self) -> Tensor:
        """The standard-deviation floor as this head's covariance kind reads it: one per
        target column, or for ``"isotropic"`` (one scale for every column) the largest of
        them, shape ``(1,)``."""
        if self.covariance_type == "isotropic":
            return self.scale_floor.max()[None]
        return self.scale_floor

    def forward(self, h: Tensor) -> GaussianMixture:
        """Map features ``(*, in_features)`` to a GaussianMixture with batch shape ``*``."""
        n, d = self.n_components, self.out_features
        out = self.group_normalized(self.linear(h))
        kind = HEAD_KINDS[self.covariance_type]
        floor = self.floor
        if not self.mean_grad_scaling:  # log_prob reads the output as it is
            return GaussianMixture.from_head_output(out, floor, self.covariance_type, n, d)
        logits, loc, scale = head_parameters(out, floor, kind, n, d)
        if self.covariance_type == "full":
            prec = unpack_precision(scale, floor)
            with torch.no_grad():  # per-dimension standard deviations: rows of L = A⁻¹
                eye = torch.eye(d, dtype=prec.dtype, device=prec.device)
                sd = torch.linalg.solve_triangular(prec, eye, upper=False).norm(dim=-1)
            loc = _scale_grad(loc, sd)
            return GaussianMixture.from_precision_tril(logits, loc, prec, validate_args=False)
        loc = _scale_grad(loc, scale if self.covariance_type == "diagonal" else scale.unsqueeze(-1))
        return GaussianMixture(logits, loc, scale=scale, validate_args=False)

    def group_normalized(self, out: Tensor) -> Tensor:
        """The linear layer's output with, for a head of :attr:`groups`, each group's logits
        replaced by its log-softmax minus ``log(len(groups))``: log-weights that already sum to
        one, which the mixture's softmax then leaves as they are."""
        if self.groups is None:
            return out
        n, shift = self.n_components, math.log(len(self.groups))
        parts = [g.log_softmax(-1) - shift for g in out[..., :n].split(self.groups, -1)]
        return torch.cat([*parts, out[..., n:]], -1)

    def extra_repr(self) -> str:
        groups = "" if self.groups is None else f", groups={list(self.groups)}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_components={self.n_components}, covariance_type={self.covariance_type!r}, "
            f"min_scale={self.min_scale}{groups}"
        )


def _groups(groups: Sequence[int] | None, n: int) -> tuple[int, ...] | None:
    """``groups`` checked: positive component counts summing to ``n`` (``None`` stays)."""
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise InputError(f"groups must be a sequence of component counts or None; got {groups!r}")
    counts = tuple(integer("group size", g) for g in groups)
    if sum(counts) != n:
        raise InputError(
            f"groups must add up to n_components={n}; got {list(counts)} (sum {sum(counts)})"
        )
    return counts if len(counts) > 1 else None


def _as_model_dtype(t: Tensor, like: Tensor, name: str) -> Tensor:
    """``t`` in the model's dtype: any real dtype is accepted and cast (a float64 tensor from
    ``torch.tensor(df.values)`` given to a float32 model), a complex or bool one refused."""
    if t.dtype == like.dtype:
        return t
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name} must hold real numbers; got dtype {t.dtype}")
    return t.to(like.dtype)


class MDN(nn.Module):
    """A mixture density network: MLP backbone + :class:`MDNHead`, with built-in standardisation.

    ``model(x)`` returns a :class:`~torchmdn.GaussianMixture` over ``y`` in the user's units
    (batch shape ``x.shape[:-1]``, event shape ``(out_features,)``). ``x`` and ``y`` of any
    real dtype are cast to the model's dtype (that of its parameters) first.

    Args:
        in_features: number of input features.
        out_features: dimension of the target ``y``.
        n_components: ``"auto"`` (default): the number of mixture components is chosen from
            the training data by :func:`torchmdn.fit` (see :mod:`torchmdn.training.capacity`;
            until then the head has 5 components), possibly as an average of several
            candidate sizes (``groups``); or an integer, which fixes it.
            ``model.n_components`` says how many in all.
        hidden: widths of the hidden layers.
        covariance_type: ``"auto"`` (default): with ``n_components="auto"`` and a target of
            d > 1 columns, full (d <= 3) or, from d = 4, diagonal or full chosen from the data
            with the component count (diagonal until fit); otherwise diagonal; or
            ``"diagonal"``, ``"isotropic"``, ``"full"``.
        activation: ``"tanh"``, ``"relu"``, ``"silu"`` or ``"gelu"``.
        min_scale: floor on the standard deviations, in standardised units of y.
        target_resolution: the resolution ``h`` at which y is recorded (a number or one per
            column, in y's units; 0 for continuous), or ``"auto"`` to detect it in
            :meth:`standardize` with :func:`target_resolution`, or ``None`` for no such floor.
            Standard deviations are floored at ``h / sqrt(12)``, the spread of rounding to
            a grid of step ``h`` (Sheppard): without it, components of a target with few
            distinct values (a 0-10 score) collapse onto the grid points, and the density
            spikes that result score arbitrarily well on grid points and arbitrarily badly
            between them.
        feature_names, target_names: optional column names, kept in saved models.
        groups: ``None`` (one mixture), or component counts summing to an integer
            ``n_components``: the head is an equally weighted average of mixtures of those
            sizes (see :class:`MDNHead`). ``fit`` installs such a head when
            ``n_components="auto"`` finds several candidate sizes equally good.

    Example:
        >>> import torch, torchmdn
        >>> model = torchmdn.MDN(1, 1, n_components=3)
        >>> model(torch.zeros(4, 1)).batch_shape
        torch.Size([4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_components: int | str = "auto",
        hidden: Sequence[int] = (128, 128),
        covariance_type: str = "auto",
        activation: str = "silu",
        min_scale: float = 1e-3,
        target_resolution: str | float | Sequence[float] | None = "auto",
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        in_features = integer("in_features", in_features)
        if groups is not None and n_components == "auto":
            raise InputError(
                f"groups={groups!r} needs an integer n_components (their sum); got 'auto'"
            )
        out_features = integer("out_features", out_features)
        self.target_resolution = self._check_resolution(target_resolution, out_features)
        #: capacity still to be chosen from the data by fit (see torchmdn.training.capacity)
        self.auto_components = n_components == "auto"
        # an explicit component count keeps the fixed default covariance (diagonal)
        self.auto_covariance = (
            covariance_type == "auto" and out_features > 1 and self.auto_components
        )
        n_components = 5 if n_components == "auto" else n_components
        covariance_type = "diagonal" if covariance_type == "auto" else covariance_type
        self.backbone = MLP(in_features, _widths(hidden), activation)
        self.head = MDNHead(
            self.backbone.out_features, out_features, n_components, covariance_type, min_scale,
            groups,
        )
        self.in_features, self.out_features = in_features, out_features
        self.feature_names = None if feature_names is None else [str(c) for c in feature_names]
        self.target_names = None if target_names is None else [str(c) for c in target_names]
        self.metadata: dict[str, Any] = {}  # free-form, saved by torchmdn.save
        for names, size, what in (
            (self.feature_names, in_features, "feature_names"),
            (self.target_names, out_features, "target_names"),
        ):
            if names is not None and len(names) != size:
                raise InputError(f"{what} must have {size} entries; got {len(names)}: {names}")
        add_normalizers(self, in_features, out_features)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (used by :func:`torchmdn.save`)."""
        linears = [m for m in self.backbone if isinstance(m, nn.Linear)]
        act = next(
            (k for k, v in ACTIVATIONS.items() for m in self.backbone if type(m) is v), "tanh"
        )
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "n_components": "auto" if self.auto_components else self.head.n_components,
            "hidden": [m.out_features for m in linears],
            "covariance_type": "auto" if self.auto_covariance else self.head.covariance_type,
            "activation": act,
            "min_scale": self.head.min_scale,
            "target_resolution": self.target_resolution,
            "feature_names": self.feature_names,
            "target_names": self.target_names,
            "groups": None if self.head.groups is None else list(self.head.groups),
        }

    @property
    def n_components(self) -> int:
        """Number of mixture components of the head (chosen by ``fit`` under ``"auto"``)."""
        return self.head.n_components

    @torch.no_grad()
    def standardize(self, x: Tensor, y: Tensor) -> MDN:
        """Set the normalisers from data: per-column mean and standard deviation (see
        :meth:`set_normalizers` for the rules)."""
        x, y = self._check_x(x), self._check_y(y)
        x, y = (
            x.double(),
            y.double(),
        )  # (float32 squares overflow for |y| ~ 1e20, underflow at 1e-25)
        one = len(y) < 2  # one row: std is undefined; set_normalizers reports it
        return self.set_normalizers(
            x.mean(0), torch.ones_like(x[0]) if one else x.std(0),
            y.mean(0), torch.zeros_like(y[0]) if one else y.std(0), y_sample=y,
        )  # fmt: skip

    @torch.no_grad()
    def set_normalizers(
        self, x_loc: Tensor, x_scale: Tensor, y_loc: Tensor, y_scale: Tensor,
        y_sample: Tensor | None = None,
    ) -> MDN:  # fmt: skip
        """Set the normalisers from column means and standard deviations (e.g. computed in a
        streaming pass). A constant input column gets scale 1 (it carries no information); a
        constant target column is an error, since its density is not defined. With
        ``target_resolution="auto"`` the grid step of y is detected on ``y_sample`` (rows of
        y; ``None``: no detection)."""
        write_normalizers(self, x_loc, x_scale, y_loc, y_scale, " (or have one row)")
        if self.target_resolution != "auto":
            self.set_resolution(self.target_resolution)
        else:
            sample = None if y_sample is None else self._check_y(y_sample)
            self.set_resolution(None if sample is None else target_resolution(sample))
        return self

    @torch.no_grad()
    def set_resolution(self, resolution: float | Sequence[float] | Tensor | None) -> MDN:
        """Floor each target column's standard deviations at ``resolution / sqrt(12)`` (y's
        units; at least ``min_scale`` standardised units). Needs ``y_scale`` to be set."""
        floor = self.head.scale_floor
        floor.fill_(self.head.min_scale)
        if resolution is not None:
            h = torch.as_tensor(resolution, dtype=floor.dtype).to(floor.device).expand_as(floor)
            floor.copy_(torch.maximum(floor, h / math.sqrt(12) / self.y_scale))
        return self

    @staticmethod
    def _check_resolution(value: Any, d: int) -> str | float | list[float] | None:
        if value is None or value == "auto":
            return value
        vals = value if isinstance(value, (list, tuple)) else [value]
        ok = len(vals) in (1, d) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in vals
        )
        if not ok:
            raise InputError(
                f"target_resolution must be 'auto', None, a number >= 0 or {d} such numbers "
                f"(one per target column); got {value!r}"
            )
        return [float(v) for v in vals] if isinstance(value, (list, tuple)) else float(value)

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputError(
                f"x must have shape (..., {self.in_features}) (in_features={self.in_features}); "
                f"got shape {tuple(x.shape)}"
                + (". For one feature, use x.unsqueeze(-1)." if self.in_features == 1 else "")
            )
        return _as_model_dtype(x, self.x_loc, "x")

    def _check_y(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor):
            raise InputError(f"y must be a torch.Tensor; got {type(y).__name__}")
        if y.dim() == 0 or y.shape[-1] != self.out_features:
            raise InputError(
                f"y must have shape (..., {self.out_features}) (out_features="
                f"{self.out_features}); got shape {tuple(y.shape)}"
                + (". For one target, use y.unsqueeze(-1)." if self.out_features == 1 else "")
            )
        return _as_model_dtype(y, self.y_loc, "y")

    @torch.no_grad()
    def initialize(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        start: str = "clusters",
    ) -> MDN:  # fmt: skip
        """Start the head at the unconditional mixture fit of ``y`` (``start``: see
        :meth:`MDNHead.initialize`)."""
        z = (self._check_y(y) - self.y_loc) / self.y_scale
        self.head.initialize(z, generator, start=start)
        return self

    def mixture_and_target(self, x: Tensor, y: Tensor) -> tuple[GaussianMixture, Tensor]:
        """``p(z | x)`` in standardised units and ``z = (y − y_loc) / y_scale`` (what training
        looks at to track components)."""
        return self.standardized_forward(x), (y - self.y_loc) / self.y_scale

    def standardized_forward(self, x: Tensor) -> GaussianMixture:
        """The mixture over standardised ``z = (y - y_loc) / y_scale`` (what the head predicts)."""
        x = self._check_x(x)
        return self.head(self.backbone((x - self.x_loc) / self.x_scale))

    def forward(self, x: Tensor) -> GaussianMixture:
        """The predicted mixture over ``y`` in user units, batch shape ``x.shape[:-1]``."""
        return self.standardized_forward(x).affine(self.y_scale, self.y_loc)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x)`` in user units, computed in standardised units for accuracy."""
        z = (self._check_y(y) - self.y_loc) / self.y_scale
        return self.standardized_forward(x).log_prob(z) - self.y_scale.log().sum()
