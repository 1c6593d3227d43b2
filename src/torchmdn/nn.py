"""Modules: ``MLP`` backbone, ``MDNHead`` (features -> GaussianMixture) and ``MDN``.

A head's ``forward`` *returns* a :class:`~torchmdn.GaussianMixture`; the distribution holds
tensors only. ``MDN`` standardises x and y with buffers, so ``model(x)`` is a distribution
over y in the user's units; the buffers are set from data by :meth:`MDN.standardize` (which
:func:`torchmdn.fit` calls), never in ``__init__``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import GaussianMixture
from .errors import InputError

__all__ = ["MLP", "MDNHead", "MDN", "COVARIANCES", "ACTIVATIONS"]

COVARIANCES = ("diagonal", "isotropic", "full")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}")
    return value


def _softplus_inverse(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


class MLP(nn.Sequential):
    """A plain multilayer perceptron: ``Linear -> activation`` for each hidden width."""

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh"
    ):
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        layers: list[nn.Module] = []
        width = _check_positive_int("in_features", in_features)
        for h in hidden:
            layers += [
                nn.Linear(width, _check_positive_int("hidden width", h)),
                ACTIVATIONS[activation](),
            ]
            width = h
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = width


class MDNHead(nn.Module):
    r"""One linear layer from features to the parameters of a Gaussian mixture.

    The output is split into ``logits (*, n)``, ``loc (*, n, d)`` and the scale parameters:
    ``(*, n, d)`` diagonal, ``(*, n)`` isotropic, or the ``d(d+1)/2`` entries of a
    lower-triangular factor per component (full). Standard deviations (and the diagonal of the
    factor) are ``min_scale + softplus(raw)``: a real floor, in the units the head sees.

    Args:
        in_features: size of the feature vector.
        out_features: dimension ``d`` of the target.
        n_components: number of mixture components ``n``.
        covariance: ``"diagonal"``, ``"isotropic"`` or ``"full"``.
        min_scale: the floor on standard deviations (``1e-3`` in standardised units matches
            scikit-learn's ``reg_covar=1e-6`` on variances).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_components: int,
        covariance: str = "diagonal",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise InputError(f"covariance must be one of {COVARIANCES}; got {covariance!r}")
        if not (
            isinstance(min_scale, (int, float)) and math.isfinite(min_scale) and min_scale >= 0
        ):
            raise InputError(f"min_scale must be a finite number >= 0; got {min_scale!r}")
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = d = _check_positive_int("out_features", out_features)
        self.n_components = n = _check_positive_int("n_components", n_components)
        self.covariance = covariance
        self.min_scale = float(min_scale)
        n_scale = {"diagonal": n * d, "isotropic": n, "full": n * d * (d + 1) // 2}[covariance]
        self._split = [n, n * d, n_scale]
        self.linear = nn.Linear(in_features, sum(self._split))
        if covariance == "full":
            rows, cols = torch.tril_indices(d, d)
            self.register_buffer("_tril_index", rows * d + cols, persistent=False)
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
            if self.covariance == "full":
                scale_b.zero_()
                scale_b.view(n, -1)[:, self._tril_is_diag] = unit
            else:
                scale_b.fill_(unit.item())

    def forward(self, h: Tensor) -> GaussianMixture:
        """Map features ``(*, in_features)`` to a GaussianMixture with batch shape ``*``."""
        n, d = self.n_components, self.out_features
        logits, loc, raw = self.linear(h).split(self._split, dim=-1)
        loc = loc.unflatten(-1, (n, d))
        if self.covariance == "full":
            raw = raw.unflatten(-1, (n, -1))  # [*, n, d(d+1)/2]
            entries = torch.where(self._tril_is_diag, F.softplus(raw) + self.min_scale, raw)
            flat = raw.new_zeros(raw.shape[:-1] + (d * d,))
            flat = flat.index_copy(-1, self._tril_index, entries)
            return GaussianMixture(
                logits, loc, scale_tril=flat.unflatten(-1, (d, d)), validate_args=False
            )
        scale = F.softplus(raw) + self.min_scale
        if self.covariance == "diagonal":
            scale = scale.unflatten(-1, (n, d))
        return GaussianMixture(logits, loc, scale=scale, validate_args=False)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_components={self.n_components}, covariance={self.covariance!r}, "
            f"min_scale={self.min_scale}"
        )


class MDN(nn.Module):
    """A mixture density network: MLP backbone + :class:`MDNHead`, with built-in standardisation.

    ``model(x)`` returns a :class:`~torchmdn.GaussianMixture` over ``y`` in the user's units
    (batch shape ``x.shape[:-1]``, event shape ``(out_features,)``).

    Args:
        in_features: number of input features.
        out_features: dimension of the target ``y``.
        n_components: number of mixture components.
        hidden: widths of the hidden layers.
        covariance: ``"diagonal"``, ``"isotropic"`` or ``"full"``.
        activation: ``"tanh"``, ``"relu"``, ``"silu"`` or ``"gelu"``.
        min_scale: floor on the standard deviations, in standardised units of y.
        feature_names, target_names: optional column names, kept in saved models.

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
        n_components: int = 10,
        hidden: Sequence[int] = (128, 128),
        covariance: str = "diagonal",
        activation: str = "tanh",
        min_scale: float = 1e-3,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = MLP(in_features, tuple(hidden), activation)
        self.head = MDNHead(
            self.backbone.out_features, out_features, n_components, covariance, min_scale
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
        self.register_buffer("x_loc", torch.zeros(in_features))
        self.register_buffer("x_scale", torch.ones(in_features))
        self.register_buffer("y_loc", torch.zeros(out_features))
        self.register_buffer("y_scale", torch.ones(out_features))
        self.register_buffer("standardized", torch.tensor(False))

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (used by :func:`torchmdn.save`)."""
        linears = [m for m in self.backbone if isinstance(m, nn.Linear)]
        act = next(
            (k for k, v in ACTIVATIONS.items() for m in self.backbone if type(m) is v), "tanh"
        )
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "n_components": self.head.n_components,
            "hidden": [m.out_features for m in linears],
            "covariance": self.head.covariance,
            "activation": act,
            "min_scale": self.head.min_scale,
            "feature_names": self.feature_names,
            "target_names": self.target_names,
        }

    @torch.no_grad()
    def standardize(self, x: Tensor, y: Tensor) -> MDN:
        """Set the normalisers from data: per-column mean and standard deviation.

        A constant input column gets scale 1 (it carries no information); a constant target
        column is an error, since its density is not defined.
        """
        x, y = self._check_x(x), self._check_y(y)
        y_std = y.std(0) if len(y) > 1 else torch.zeros_like(y[0])
        if (y_std == 0).any() or not torch.isfinite(y_std).all():
            cols = torch.nonzero(y_std == 0).flatten().tolist()
            raise InputError(
                f"target column(s) {cols} are constant (or have one row): a density over a "
                "constant is not defined. Drop the column or add more varied data."
            )
        x_std = x.std(0) if len(x) > 1 else torch.ones_like(x[0])
        self.x_loc.copy_(x.mean(0))
        self.x_scale.copy_(torch.where(x_std > 0, x_std, torch.ones_like(x_std)))
        self.y_loc.copy_(y.mean(0))
        self.y_scale.copy_(y_std)
        self.standardized.fill_(True)
        return self

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputError(
                f"x must have shape (..., {self.in_features}) (in_features={self.in_features}); "
                f"got shape {tuple(x.shape)}"
                + (". For one feature, use x.unsqueeze(-1)." if self.in_features == 1 else "")
            )
        return x

    def _check_y(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor):
            raise InputError(f"y must be a torch.Tensor; got {type(y).__name__}")
        if y.dim() == 0 or y.shape[-1] != self.out_features:
            raise InputError(
                f"y must have shape (..., {self.out_features}) (out_features="
                f"{self.out_features}); got shape {tuple(y.shape)}"
                + (". For one target, use y.unsqueeze(-1)." if self.out_features == 1 else "")
            )
        return y

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
