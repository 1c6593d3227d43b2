r"""Acoustic-model pieces of the speech example: the MSE baseline, generation, speech metrics.

**Generation with parameter smoothing.** A frame-wise mixture gives, at each frame ``t``, a
point ``μ_t`` (the most probable component's mean, the mixture's mode, or a
low-temperature sample) and how sure it is of it:
the precision ``w_t = Σ_i r_{ti} / σ_{ti}²`` (per dimension, ``r_{ti}`` the responsibility of
component ``i`` at that point). The trajectory :func:`smooth_trajectory` returns maximises

.. math::

    \sum_t -\tfrac12 w_t (y_t - μ_t)^2 \;-\; \tfrac{λ}{2} \sum_t (y_t - y_{t-1})^2

per dimension (a tridiagonal linear system, solved exactly): the parameter generation of
HMM/MDN synthesis (MLPG, Tokuda et al. 2000) with a fixed smoothness prior on the first
difference in place of predicted delta features. Sure frames stay where they are; unsure
frames and switches between components follow their neighbours. Everything here works in
*standardised* units of the model (``z = (y - y_loc) / y_scale``), so ``λ`` is unit-free.

**Metrics.** Log-spectral distance (dB) between generated and real log-mel frames, and the
*global variance* (Toda & Tokuda 2007): the variance over time of each mel band within an
utterance, averaged over bands and utterances. Mean-squared-error models over-smooth: their
global variance falls well short of the real one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ...distributions.mixture import GaussianMixture
from ...errors import InputError
from ...nn.mdn import MLP
from ...nn.standardize import add_normalizers, write_normalizers
from .audio import DB_PER_NAT

__all__ = [
    "MSEBaseline",
    "smooth_trajectory",
    "generate",
    "log_spectral_distance",
    "global_variance",
]


class MSEBaseline(nn.Module):
    """The same MLP as an :class:`~torchmdn.MDN` with a mean-squared-error head.

    ``forward(x)`` returns ``Normal(mean(x), scale)`` (independent over the ``d`` outputs, user
    units). While ``residual_scale`` is 1 (as built) the standardised scale is 1, so maximum
    likelihood with :func:`torchmdn.fit` *is* least squares on standardised targets; after
    training, :meth:`calibrate` sets the scale to the root-mean-square residual of each
    output, which turns the point predictor into the Gaussian whose held-out NLL can be
    compared with the mixtures'.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: tuple[int, ...] = (256, 256),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.backbone = MLP(in_features, hidden, activation)
        self.linear = nn.Linear(self.backbone.out_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        add_normalizers(self, in_features, out_features)
        self.register_buffer("residual_scale", torch.ones(out_features))

    @torch.no_grad()
    def standardize(self, x: Tensor, y: Tensor) -> MSEBaseline:
        """Set the normalisers from data (a constant input column gets scale 1)."""
        write_normalizers(self, x.mean(0), x.std(0), y.mean(0), y.std(0), " (MSEBaseline)")
        return self

    def standardized_mean(self, x: Tensor) -> Tensor:
        """The prediction in standardised units ``(*, d)``."""
        if x.shape[-1] != self.in_features:
            raise InputError(f"x must have shape (..., {self.in_features}); got {tuple(x.shape)}")
        return self.linear(self.backbone((x - self.x_loc) / self.x_scale))

    def forward(self, x: Tensor) -> Distribution:
        """``Independent(Normal(mean, scale), 1)`` over ``y`` in user units."""
        mean = self.standardized_mean(x) * self.y_scale + self.y_loc
        return Independent(Normal(mean, self.residual_scale * self.y_scale), 1)

    @torch.no_grad()
    def calibrate(self, x: Tensor, y: Tensor) -> MSEBaseline:
        """Set ``residual_scale`` to the RMS standardised residual per output on ``(x, y)``."""
        z = (y - self.y_loc) / self.y_scale
        rms = (z - self.standardized_mean(x)).square().mean(0).sqrt()
        self.residual_scale.copy_(rms.clamp_min(1e-6))
        return self


def smooth_trajectory(target: Tensor, precision: Tensor, smoothing: float = 1.0) -> Tensor:
    """The trajectory ``(T, d)`` that maximises the objective in the module docstring.

    Args:
        target: per-frame points ``μ_t`` ``(T, d)``.
        precision: per-frame precisions ``w_t > 0`` ``(T, d)``.
        smoothing: ``λ >= 0``; 0 returns ``target`` unchanged.
    """
    if target.dim() != 2 or precision.shape != target.shape:
        raise InputError(
            f"target and precision must both be (T, d); got {tuple(target.shape)} and "
            f"{tuple(precision.shape)}"
        )
    if smoothing < 0:
        raise InputError(f"smoothing must be >= 0; got {smoothing}")
    if not (precision > 0).all():
        raise InputError("precision must be positive everywhere")
    n = len(target)
    if smoothing == 0 or n == 1:
        return target.clone()
    lam = float(smoothing)
    # (W + λ DᵀD) y = W μ: tridiagonal, sub/super-diagonal -λ; Thomas algorithm over time
    links = torch.full((n, 1), 2 * lam, dtype=target.dtype, device=target.device)
    links[0] = links[-1] = lam
    diag = precision + links  # [T, d]
    rhs = precision * target  # [T, d]
    c = torch.empty_like(target)
    r = torch.empty_like(target)
    c[0] = -lam / diag[0]
    r[0] = rhs[0] / diag[0]
    for t in range(1, n):
        denom = diag[t] + lam * c[t - 1]
        c[t] = -lam / denom
        r[t] = (rhs[t] + lam * r[t - 1]) / denom
    y = torch.empty_like(target)
    y[-1] = r[-1]
    for t in range(n - 2, -1, -1):
        y[t] = r[t] - c[t] * y[t + 1]
    return y


def _precision_at(mixture: GaussianMixture, point: Tensor) -> Tensor:
    """Responsibility-weighted component precision at ``point`` ``(*B, d)`` (diagonal/iso)."""
    if mixture.covariance_type == "full":
        raise InputError("generate() supports diagonal and isotropic mixtures")
    resp = mixture.joint_log_prob(point).softmax(-1)  # [*B, n]
    scale = mixture.scale if mixture.covariance_type == "diagonal" else mixture.scale[..., None]
    return (resp.unsqueeze(-1) / scale.square()).sum(-2)  # [*B, d]


@torch.no_grad()
def generate(
    mixture: GaussianMixture,
    method: str = "component",
    temperature: float = 0.3,
    smoothing: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A smooth trajectory ``(T, d)`` from per-frame mixtures (batch shape ``(T,)``).

    Args:
        mixture: the frames' mixtures in standardised units, diagonal or isotropic.
        method: ``"component"``: the mean of each frame's most probable component (the
            choice of Zen & Senior 2014; a draw at temperature 0); ``"mode"``: the global
            mode of each frame's mixture (mean-shift; in many dimensions it favours narrow
            components, whatever their weight); ``"sample"``: a draw at ``temperature``
            (see :class:`~torchmdn.GaussianMixture`).
        temperature: used by ``"sample"``.
        smoothing: the ``λ`` of :func:`smooth_trajectory` (0: no smoothing).
        generator: random source for ``"sample"``.
    """
    if mixture.batch_shape.numel() == 0 or len(mixture.batch_shape) != 1:
        raise InputError(f"mixture must have batch shape (T,); got {tuple(mixture.batch_shape)}")
    if method == "component":
        point = mixture.sample(temperature=0.0)
    elif method == "mode":
        point = mixture.mode(max_iter=200)
    elif method == "sample":
        point = mixture.sample(temperature=temperature, generator=generator)
    else:
        raise InputError(f"method must be 'component', 'mode' or 'sample'; got {method!r}")
    return smooth_trajectory(point, _precision_at(mixture, point), smoothing)


def log_spectral_distance(generated: Tensor, real: Tensor) -> Tensor:
    """Mean over frames of the RMS (over bands) log-power difference, in dB; a scalar."""
    if generated.shape != real.shape or generated.dim() != 2:
        raise InputError(
            f"generated and real must be (T, n_mels) of the same shape; got "
            f"{tuple(generated.shape)} and {tuple(real.shape)}"
        )
    return (DB_PER_NAT * (generated - real)).square().mean(-1).sqrt().mean()


def global_variance(frames: Tensor) -> Tensor:
    """Per-band variance over time of one utterance's log-mel frames ``(T, d)`` -> ``(d,)``."""
    if frames.dim() != 2 or len(frames) < 2:
        raise InputError(f"frames must be (T >= 2, d); got {tuple(frames.shape)}")
    return frames.var(0)
