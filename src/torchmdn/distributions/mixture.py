r"""``GaussianMixture``: a Gaussian mixture as a ``torch.distributions.Distribution``.

.. math::

    p(y) = \sum_{i=1}^{n} \pi_i \, \mathcal{N}(y;\ \mu_i, \Sigma_i), \qquad
    \pi = \operatorname{softmax}(\text{logits})

Shapes follow ``torch.distributions``: ``batch_shape`` is ``B`` and ``event_shape`` is ``(d,)``.
Parameters: ``logits (*B, n)``, ``loc (*B, n, d)`` and exactly one of

- ``scale (*B, n, d)``: diagonal covariances, ``Σ_i = diag(scale_i²)``;
- ``scale (*B, n)``: isotropic covariances, ``Σ_i = scale_i² I``;
- ``scale_tril (*B, n, d, d)``: full covariances, ``Σ_i = L_i L_iᵀ`` (lower-triangular ``L_i``
  with a positive diagonal).

When ``n == d`` a ``scale`` with as many dimensions as ``loc`` is diagonal, one with fewer is
isotropic.

**Temperature** (one meaning everywhere in torchmdn): sampling at temperature ``τ`` draws the
component from ``softmax(logits / τ)`` and then draws from that component with its covariance
multiplied by ``τ`` (standard deviations by ``√τ``). ``τ = 1`` is the model itself; ``τ → 0``
returns the mean of the most probable component; ``τ > 1`` spreads the samples out.

**Speed.** ``log_prob`` runs a fused forward with a hand-written backward
(:mod:`torchmdn.ops.fused`); full covariances go through the lower-triangular precision factor
``A = L⁻¹`` (``Σ⁻¹ = AᵀA``: one matmul, no solve per call). Half and bfloat16 mixtures are
evaluated in float32, and ``log_prob``/``joint_log_prob`` return float32 for them.

The components' covariances live in one :class:`~torchmdn.distributions.covariance.Covariance`
holder (``gm.covariance``), in the form they were given; the longer queries live in
``queries``, ``hdr`` and ``modes`` beside this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    constraints,
)
from torch.distributions.utils import lazy_property

from ..errors import InputError, InputTypeError
from ..ops import fused, layout, reference
from ._common import check_value_shape
from .covariance import Covariance, at_least_float32, autocast_on

__all__ = ["GaussianMixture"]

_DIAGONAL, _ISOTROPIC, _FULL = "diagonal", "isotropic", "full"
#: ``True``: ``log_prob`` uses the fused autograd Functions of :mod:`torchmdn.ops.fused`;
#: ``False``: the plain-autograd reference path (``GaussianMixture._log_prob_reference``).
_USE_FUSED = True


def _as_tensor(name: str, value: object, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float, Sequence)) or hasattr(value, "__array__"):
        kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
        try:
            return torch.as_tensor(value, **kwargs)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputTypeError(f"{name} must be a tensor of numbers; got {value!r}") from err
    raise InputTypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _expand(t: Tensor, shape: torch.Size) -> Tensor:
    """``t.expand(shape)``, or ``t`` itself when it has that shape (no autograd node)."""
    return t if t.shape == shape else t.expand(shape)


class GaussianMixture(Distribution):
    r"""A mixture of ``n`` Gaussians in ``R^d`` with diagonal, isotropic or full covariances.

    Args:
        logits: ``(*B, n)`` unnormalised log mixture weights.
        loc: ``(*B, n, d)`` component means.
        scale: ``(*B, n, d)`` diagonal or ``(*B, n)`` isotropic standard deviations.
        scale_tril: ``(*B, n, d, d)`` lower-triangular Cholesky factors of the covariances.
        validate_args: check the parameters (and the values given to ``log_prob``); ``None``
            follows ``torch.distributions.Distribution``'s default.

    Example:
        >>> import torch
        >>> from torchmdn import GaussianMixture
        >>> gm = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
        >>> gm.batch_shape, gm.event_shape
        (torch.Size([]), torch.Size([1]))
        >>> round(gm.log_prob(torch.tensor([0.0])).item(), 4)
        -1.4189
    """

    has_rsample = False
    support = constraints.real_vector
    # made by an MDN head (from_head_output): its output (out, floor, n, d), read directly by
    # log_prob; logits, loc and the covariances are split off it when anything else asks
    _head: tuple[Tensor, Tensor, int, int] | None = None
    _logits: Tensor | None = None
    _loc: Tensor | None = None
    _covariance: Covariance | None = None

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor | None = None,
        scale_tril: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        loc = _as_tensor("loc", loc)
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        logits = _as_tensor("logits", logits, loc)
        if (scale is None) == (scale_tril is None):
            raise InputError(
                "GaussianMixture takes exactly one of scale (diagonal (*B, n, d) or isotropic "
                f"(*B, n)) and scale_tril (full, (*B, n, d, d)); got "
                f"{'both' if scale is not None else 'neither'}"
            )
        if loc.dim() < 2:
            raise InputError(
                f"loc must have shape (*batch, n_components, d); got shape {_shape(loc)}. "
                "For one component in one dimension use loc.reshape(1, 1)."
            )
        n, d = loc.shape[-2], loc.shape[-1]
        if logits.dim() < 1 or logits.shape[-1] != n:
            raise InputError(
                f"logits must have shape (*batch, {n}) to match loc {_shape(loc)} "
                f"(n_components = {n}); got shape {_shape(logits)}"
            )
        shapes = [logits.shape[:-1], loc.shape[:-2]]
        if scale_tril is not None:
            scale_tril = _as_tensor("scale_tril", scale_tril, loc)
            if scale_tril.dim() < 3 or _shape(scale_tril)[-3:] != (n, d, d):
                raise InputError(
                    f"scale_tril must have shape (*batch, {n}, {d}, {d}) to match loc "
                    f"{_shape(loc)}; got shape {_shape(scale_tril)}"
                )
            kind, trailing = _FULL, 3
            shapes.append(scale_tril.shape[:-3])
        else:
            scale = _as_tensor("scale", scale, loc)
            diag_ok = scale.dim() >= 2 and _shape(scale)[-2:] == (n, d)
            iso_ok = scale.dim() >= 1 and scale.shape[-1] == n
            if diag_ok and iso_ok:  # only possible when n == d
                diag_ok = scale.dim() >= loc.dim()
            if not (diag_ok or iso_ok):
                raise InputError(
                    f"scale must have shape (*batch, {n}, {d}) (diagonal) or (*batch, {n}) "
                    f"(isotropic) to match loc {_shape(loc)}; got shape {_shape(scale)}"
                )
            kind, trailing = (_DIAGONAL, 2) if diag_ok else (_ISOTROPIC, 1)
            shapes.append(scale.shape[:-trailing])
        try:
            batch_shape = torch.broadcast_shapes(*shapes)
        except RuntimeError as err:
            raise InputError(
                "the batch shapes of logits, loc and the scale do not broadcast: "
                f"logits {_shape(logits)}, loc {_shape(loc)}, "
                f"{'scale_tril' if kind == _FULL else 'scale'} "
                f"{_shape(scale_tril if kind == _FULL else scale)}"
            ) from err

        self._kind = kind
        self._logits = _expand(logits, batch_shape + (n,))
        self._loc = _expand(loc, batch_shape + (n, d))
        if kind == _FULL:
            tril = _expand(scale_tril, batch_shape + (n, d, d))
            self._covariance = Covariance(kind, scale_tril=tril)
        else:
            scale = _expand(scale, batch_shape + scale.shape[-trailing:])
            self._covariance = Covariance(kind, scale=scale)
        validate = Distribution._validate_args if validate_args is None else validate_args
        if validate:
            self._check_parameters()
        # (torch's checks cannot reshape zero rows: none for an empty batch; ours above ran)
        empty = batch_shape.numel() == 0
        super().__init__(
            batch_shape, torch.Size((d,)), validate_args=False if empty else validate_args
        )

    # ------------------------------------------------------------------ validation

    def _check_parameters(self) -> None:
        if torch.isnan(self.logits).any() or (self.logits == math.inf).any():
            raise InputError(
                "logits must not contain NaN or +inf; got "
                f"{int((~torch.isfinite(self.logits)).sum())} non-finite values. "
                "A NaN here usually comes from the network: check its inputs and weights."
            )
        if self.logits.numel() and (self.logits == -math.inf).all(-1).any():
            raise InputError("every mixture needs one component with logit > -inf")
        if not torch.isfinite(self.loc).all():
            raise InputError(
                f"loc must be finite; got {int((~torch.isfinite(self.loc)).sum())} NaN/inf "
                "values. Check the inputs of the network."
            )
        if self._kind == _FULL:
            tril = self.scale_tril
            diag = tril.diagonal(dim1=-2, dim2=-1)
            if not torch.isfinite(tril).all() or not (diag > 0).all():
                raise InputError(
                    "scale_tril must be finite with a positive diagonal (a Cholesky factor); "
                    f"smallest diagonal entry: {diag.min().item():.3g}"
                )
            if (tril.triu(1) != 0).any():
                raise InputError(
                    "scale_tril must be lower triangular; use torch.linalg.cholesky(cov) "
                    "to get it from a covariance matrix"
                )
        else:
            bad = ~(torch.isfinite(self.scale) & (self.scale > 0))
            if bad.any():
                raise InputError(
                    f"scale must be positive and finite; got {int(bad.sum())} invalid values "
                    f"(smallest: {self.scale.min().item():.3g})"
                )

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:  # type: ignore[override]
        out = {
            "logits": constraints.real_vector,
            "loc": constraints.independent(constraints.real, 2),
        }
        if self._kind == _FULL:
            out["scale_tril"] = constraints.lower_cholesky
        else:
            out["scale"] = constraints.positive
        return out

    # ------------------------------------------------------------------ basic facts

    @property
    def covariance_type(self) -> str:
        """``"diagonal"``, ``"isotropic"`` or ``"full"``."""
        return self._kind

    @property
    def n_components(self) -> int:
        """Number of mixture components ``n``."""
        return self.loc.shape[-2]

    @lazy_property
    def probs(self) -> Tensor:
        """Mixture weights ``softmax(logits)``, ``(*B, n)``."""
        return torch.softmax(self.logits, dim=-1)

    @lazy_property
    def log_weights(self) -> Tensor:
        """``log_softmax(logits)``, ``(*B, n)``."""
        return torch.log_softmax(self.logits, dim=-1)

    @classmethod
    def from_precision_tril(
        cls, logits: Tensor, loc: Tensor, precision_tril: Tensor, validate_args: bool | None = None
    ) -> GaussianMixture:
        """Full covariances from lower-triangular precision factors ``A = L⁻¹`` (``Σ⁻¹ = AᵀA``),
        ``(*B, n, d, d)``, as ``MultivariateNormal(precision_matrix=...)`` but by its factor.

        ``log_prob`` then needs no triangular solve at all; ``scale_tril`` is computed (once)
        only when something asks for it. Shape checks and validation are those of ``scale_tril``
        (``A`` is lower triangular with a positive diagonal too).
        """
        gm = cls(logits, loc, scale_tril=precision_tril, validate_args=validate_args)
        gm._covariance = Covariance(_FULL, precision_tril=gm._covariance.scale_tril)
        return gm

    @classmethod
    def from_head_output(
        cls, out: Tensor, floor: Tensor, covariance_type: str, n: int, d: int
    ) -> GaussianMixture:
        """The mixture in an MDN head's output ``out (*B, n + n d + s)`` (layout and ``floor``:
        :mod:`torchmdn.ops.layout`). ``log_prob`` reads ``out`` itself (the compiled kernel:
        one pass, one gradient for the whole output); ``logits``, ``loc`` and the covariances
        are split off it on first use by anything else. Not validated (valid by construction).
        """
        gm = cls.__new__(cls)
        gm._kind, gm._head = covariance_type, (out, floor, n, d)
        Distribution.__init__(gm, out.shape[:-1], torch.Size((d,)), validate_args=False)
        return gm

    def _split_head(self) -> None:
        """Split a head's output into logits, loc and the covariances (once)."""
        out, floor, n, d = self._head
        self._logits, self._loc, scale = layout.head_parameters(
            out, floor, layout.HEAD_KINDS[self._kind], n, d
        )
        if self._kind == _FULL:
            self._covariance = Covariance(_FULL, packed=(scale, floor))
        else:
            self._covariance = Covariance(self._kind, scale=scale)

    @property
    def logits(self) -> Tensor:
        """Unnormalised log mixture weights, ``(*B, n)``."""
        if self._logits is None:
            self._split_head()
        return self._logits

    @property
    def loc(self) -> Tensor:
        """Component means, ``(*B, n, d)``."""
        if self._loc is None:
            self._split_head()
        return self._loc

    @property
    def covariance(self) -> Covariance:
        """The components' covariances, in the forms held (see :class:`Covariance`)."""
        if self._covariance is None:
            self._split_head()
        return self._covariance

    @property
    def scale(self) -> Tensor | None:
        """Standard deviations, ``(*B, n, d)`` diagonal or ``(*B, n)`` isotropic; ``None`` for
        full covariances."""
        return self.covariance.scale

    @property
    def scale_tril(self) -> Tensor | None:
        """Lower-triangular Cholesky factors ``L`` of the covariances, ``(*B, n, d, d)``
        (``None`` unless the covariance is full)."""
        return self.covariance.scale_tril

    @property
    def precision_tril(self) -> Tensor | None:
        """Lower-triangular precision factors ``A = L⁻¹`` (``Σ⁻¹ = AᵀA``), ``(*B, n, d, d)``
        (``None`` unless the covariance is full)."""
        return self.covariance.precision_tril

    @lazy_property
    def component_covariance(self) -> Tensor:
        """Covariance matrix of each component, ``(*B, n, d, d)``."""
        return self.covariance.matrices(self.event_shape[0])

    # ------------------------------------------------------------------ log density

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density ``log p(value)``, shape ``value.shape[:-1]`` broadcast with ``B``.

        One fused computation with a hand-written backward (:mod:`torchmdn.ops.fused`); twice
        differentiable. Computed in the promoted dtype of the parameters and ``value``, at
        least float32, on every device and whether or not autocast is on: under
        ``torch.autocast`` (bfloat16 or float16, CPU or CUDA) the result is float32 (float64
        for float64 inputs), since autocast does not reach inside. ``value`` must end in the
        event shape ``(d,)`` (checked always).
        """
        return self._outside_autocast(self._log_prob, value)

    def _log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if not _USE_FUSED:
            return self._log_prob_reference(value)
        if self._head is not None and self._logits is None:
            # an MDN head's output, read as it is (once the parameters have been split off,
            # they are used instead: gradients then reach the tensors the caller holds)
            out, floor, n, _ = self._head
            out, value = at_least_float32(out, value)
            return fused.head_log_prob(out, floor, layout.HEAD_KINDS[self._kind], n, value)
        return self.covariance.log_prob(self.logits, self.loc, value)

    def _log_prob_reference(self, value: Tensor) -> Tensor:
        """``log_prob`` by plain autograd (the reference for the fused path)."""
        return torch.logsumexp(self.joint_log_prob(value), dim=-1)

    def joint_log_prob(self, value: Tensor) -> Tensor:
        """``log π_i + log N(value; μ_i, Σ_i)`` for every component: shape ``(..., n)``.

        Its ``logsumexp`` over the last dimension is :meth:`log_prob`; its ``softmax`` is the
        posterior responsibility of each component for ``value``. Same dtype rule as
        :meth:`log_prob` (at least float32, autocast or not).
        """
        return self._outside_autocast(self._joint_log_prob, value)

    def _outside_autocast(self, density, value: Tensor) -> Tensor:
        """``density(value)`` after the event-shape check, with autocast off (the dtype rule
        of :meth:`log_prob` and :meth:`joint_log_prob`)."""
        check_value_shape(self, value)
        device_type = value.device.type if isinstance(value, Tensor) else "cpu"
        if autocast_on(device_type):
            with torch.autocast(device_type, enabled=False):
                return density(value)
        return density(value)

    def _joint_log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if self._kind == _FULL:
            logits, loc, scale, value = at_least_float32(
                self.logits, self.loc, self.covariance.precision_for_eval(), value
            )
        else:
            logits, loc, scale, value = at_least_float32(self.logits, self.loc, self.scale, value)
        log_weights = self.log_weights if logits is self.logits else logits.log_softmax(-1)
        if self._kind == _FULL:
            return log_weights + reference.precision_components(loc, scale, value)
        return log_weights + reference.diag_components(loc, scale, value, self._kind == _ISOTROPIC)

    # ------------------------------------------------------------------ moments

    @property
    def mean(self) -> Tensor:
        """Mixture mean ``Σ π_i μ_i``, ``(*B, d)``."""
        return (self.probs.unsqueeze(-1) * self.loc).sum(-2)

    @property
    def variance(self) -> Tensor:
        """Marginal variances by the law of total variance, ``(*B, d)``."""
        dev = self.loc - self.mean.unsqueeze(-2)  # [*B, n, d]
        comp_var = self.covariance.component_variances(self.event_shape[0])  # [*B, n, d]
        return (self.probs.unsqueeze(-1) * (comp_var + dev.square())).sum(-2)

    @property
    def stddev(self) -> Tensor:
        """Marginal standard deviations, ``(*B, d)``."""
        return self.variance.sqrt()

    @property
    def covariance_matrix(self) -> Tensor:
        """Full covariance by the law of total variance, ``(*B, d, d)``."""
        dev = self.loc - self.mean.unsqueeze(-2)  # [*B, n, d]
        outer = dev.unsqueeze(-1) * dev.unsqueeze(-2)  # [*B, n, d, d]
        w = self.probs[..., None, None]
        return (w * (self.component_covariance + outer)).sum(-3)

    # ------------------------------------------------------------------ queries
    # Thin wrappers: the math lives in torchmdn.distributions.queries, .hdr and .modes (imported lazily,
    # so that this module still imports nothing else from the package at load time).

    def cdf(self, value: Tensor) -> Tensor:
        """Joint CDF ``P(Y <= value)``: ``(*S, *B, d) -> (*S, *B)``; see ``queries.cdf``."""
        from .queries import cdf

        return cdf(self, value)

    def icdf(self, value: Tensor | float) -> Tensor:
        """Quantiles for d = 1: ``q`` broadcast with ``B`` -> ``(..., 1)``; see ``queries.icdf``."""
        from .queries import icdf

        return icdf(self, value)

    def interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central ``level`` interval for d = 1: ``(low, high)``, each ``(*B, 1)``."""
        from .queries import interval

        return interval(self, level)

    def hdr(self, level: float = 0.9) -> list:
        """Highest-density region for d = 1: lists of ``(low, high)``; see ``torchmdn.distributions.hdr``."""
        from .hdr import hdr

        return hdr(self, level)

    def modes(
        self, max_iter: int = 2000, tol: float | None = None, min_relative_density: float = 0.05
    ):
        """Local modes ``(loc (*B, k, d), log_prob (*B, k), valid (*B, k))``, best first.

        Fixed-point iteration from every component mean; modes with less than
        ``min_relative_density`` of the highest mode's density are left out (0: all); see
        ``torchmdn.distributions.modes``.
        """
        from .modes import modes

        return modes(self, max_iter=max_iter, tol=tol, min_relative_density=min_relative_density)

    def mode(self, max_iter: int = 2000, tol: float | None = None) -> Tensor:  # type: ignore[override]
        """The global mode, ``(*B, d)``.

        A *method* here (``gm.mode()``), where ``torch.distributions.Distribution`` has a
        property: finding a mixture's mode is an iterative search with options, not a lookup.
        Nothing in torch reads ``mode`` of a mixture except ``Independent(gm, k).mode``, which
        is not supported.
        """
        from .modes import mode

        return mode(self, max_iter=max_iter, tol=tol)

    def marginal(self, dims: Sequence[int] | int) -> GaussianMixture:
        """The marginal over ``dims`` (closed form); see ``queries.marginal``."""
        from .queries import marginal

        return marginal(self, dims)

    def condition(self, dims: Sequence[int] | int, values: Tensor) -> GaussianMixture:
        """The other dims given ``Y[dims] = values`` (closed form); see ``queries.condition``."""
        from .queries import condition

        return condition(self, dims, values)

    def entropy(
        self,
        n_samples: int = 10_000,
        generator: torch.Generator | None = None,
        return_stderr: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Monte Carlo estimate of the entropy in nats, ``(*B,)`` (no closed form exists).

        With ``return_stderr=True`` returns ``(estimate, standard_error)``; the error shrinks
        like ``1/sqrt(n_samples)``. The default generator is a local one seeded with 0.
        """
        from .queries import entropy

        est = entropy(self, n_samples=n_samples, generator=generator)
        return (est.value, est.stderr) if return_stderr else est.value

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        sample_shape: torch.Size | Sequence[int] = (),
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw samples of shape ``sample_shape + B + (d,)``.

        The component is picked by inverse CDF from one uniform per sample (never a draw from
        every component), then one Gaussian draw is made from it. See the module docstring for
        the meaning of ``temperature``; ``generator`` makes the draw reproducible without
        touching the global random state.
        """
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise InputError(
                f"temperature must be a finite number >= 0; got {temperature} "
                "(1 samples the model itself, 0 returns the most probable component's mean)"
            )
        shape = self._extended_shape(torch.Size(sample_shape))  # S + B + (d,)
        lead = shape[:-1]  # S + B
        loc = self.loc
        with torch.no_grad():
            if temperature == 0:
                idx = self.logits.argmax(-1).expand(lead)  # [*S, *B]
            else:
                # unnormalised CDF: exp((logits - max) / t) is exact for -inf logits, avoids
                # softmax (its CPU kernel is slow over a short last dimension), and for a tiny
                # t underflows to 0 except at the most probable component (logits / t: inf - inf)
                shifted = self.logits - self.logits.amax(-1, keepdim=True)
                weights = (shifted if temperature == 1 else shifted / temperature).exp_()
                cdf = weights.cumsum(-1)  # [*B, n]
                u = torch.rand(lead + (1,), dtype=cdf.dtype, device=cdf.device, generator=generator)
                # scale by the last entry so round-off can never push u past the total mass
                idx = (u * cdf[..., -1:] >= cdf).sum(-1).clamp_(max=self.n_components - 1)
            d = loc.shape[-1]
            pick = idx[..., None, None]  # [*S, *B, 1, 1]
            mu = loc.expand(lead + loc.shape[-2:]).gather(-2, pick.expand(lead + (1, d)))
            mu = mu.squeeze(-2)  # [*S, *B, d]
            if temperature == 0:
                return mu.clone()
            eps = torch.randn(shape, dtype=loc.dtype, device=loc.device, generator=generator)
            root_t = math.sqrt(temperature)  # standard deviations scale by sqrt(temperature)
            if self._kind == _FULL:
                tril = self.scale_tril.expand(lead + self.scale_tril.shape[-3:])
                tril = tril.gather(-3, pick[..., None].expand(lead + (1, d, d))).squeeze(-3)
                noise = (tril @ eps.unsqueeze(-1)).squeeze(-1)
                return mu + noise if temperature == 1 else torch.add(mu, noise, alpha=root_t)
            if self._kind == _DIAGONAL:
                s = self.scale.expand(lead + self.scale.shape[-2:])
                s = s.gather(-2, pick.expand(lead + (1, d))).squeeze(-2)
            else:
                s = self.scale.expand(lead + self.scale.shape[-1:])
                s = s.gather(-1, idx.unsqueeze(-1))
            return torch.addcmul(mu, s, eps, value=root_t)  # mu + sqrt(t) s eps, one op

    # ------------------------------------------------------------------ views and transforms

    @property
    def mixture_distribution(self) -> Categorical:
        """The distribution of the component index, a ``Categorical``."""
        return Categorical(logits=self.logits, validate_args=False)

    @property
    def component_distribution(self) -> Distribution:
        """The components as one batched torch distribution with batch shape ``B + (n,)``."""
        if self._kind == _FULL:
            return MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False)
        scale = self.scale if self._kind == _DIAGONAL else self.scale.unsqueeze(-1)
        normal = Normal(self.loc, scale.expand_as(self.loc), validate_args=False)
        return Independent(normal, 1, validate_args=False)

    def to_torch(self) -> MixtureSameFamily:
        """The equivalent ``torch.distributions.MixtureSameFamily`` (slower; for interop)."""
        return MixtureSameFamily(
            self.mixture_distribution, self.component_distribution, validate_args=False
        )

    def _new(self, logits: Tensor, loc: Tensor, scale: Tensor | None, tril: Tensor | None):
        return GaussianMixture(
            logits, loc, scale=scale, scale_tril=tril, validate_args=self._validate_args
        )

    def affine(self, scale: Tensor | float, shift: Tensor | float = 0.0) -> GaussianMixture:
        """The distribution of ``scale * Y + shift`` (an exact change of units).

        ``scale`` and ``shift`` broadcast against ``B + (d,)``; ``scale`` must be non-zero. An
        isotropic mixture stays isotropic when ``scale`` is one number per batch element
        (last dimension of size 1), otherwise it becomes diagonal.
        """
        a = _as_tensor("scale", scale, self.loc)
        b = _as_tensor("shift", shift, self.loc)
        if not torch.isfinite(a).all() or (a == 0).any():
            raise InputError(f"affine scale must be finite and non-zero; got {a}")
        if not torch.isfinite(b).all():
            raise InputError(f"affine shift must be finite; got {b}")
        if a.dim() == 0:
            a = a.reshape(1)
        a_abs = a.abs().unsqueeze(-2)  # [*B, 1, d or 1]
        loc = self.loc * a.unsqueeze(-2) + (b.unsqueeze(-2) if b.dim() else b)
        if self._kind == _FULL:
            a_full = a.expand(a.shape[:-1] + self.loc.shape[-1:])
            if "scale_tril" not in self.covariance.stored:  # only A = L⁻¹: stay solve-free
                # (D L S)⁻¹ = S A D⁻¹ for D = diag(a), S = diag(sign a)
                prec = self.precision_tril * a_full.sign().unsqueeze(-1) / a_full.unsqueeze(-2)
                return GaussianMixture.from_precision_tril(
                    self.logits, loc, prec, validate_args=self._validate_args
                )
            # rows scaled by a, columns by sign(a): a Cholesky factor of diag(a) Σ diag(a)
            tril = self.scale_tril * a_full.unsqueeze(-1) * a_full.sign().unsqueeze(-2)
            return self._new(self.logits, loc, None, tril)
        if self._kind == _ISOTROPIC:
            if a.shape[-1] == 1:
                return self._new(self.logits, loc, self.scale * a_abs.squeeze(-1), None)
            return self._new(self.logits, loc, self.scale.unsqueeze(-1) * a_abs, None)
        return self._new(self.logits, loc, self.scale * a_abs, None)

    def expand(self, batch_shape: torch.Size | Sequence[int], _instance=None) -> GaussianMixture:
        """A view of this mixture with a larger batch shape (no copy)."""
        new = self._get_checked_instance(GaussianMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        n, d = self.loc.shape[-2:]
        new._kind = self._kind
        new._logits = self.logits.expand(batch_shape + (n,))
        new._loc = self.loc.expand(batch_shape + (n, d))
        new._covariance = self.covariance.expand(batch_shape)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, n_components="
            f"{self.n_components}, d={self.event_shape[0]}, covariance_type={self._kind!r})"
        )
