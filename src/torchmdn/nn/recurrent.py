r"""Mixture density RNNs: a recurrent backbone with a mixture head (and a pen-state head).

At every time step ``t`` the network reads ``x_t`` and predicts the distribution of ``y_t``:

.. math::

    p(y_{1:T} | x_{1:T}) = \prod_t p(y_t | h_t), \qquad h_t = \mathrm{RNN}(x_t, h_{t-1}),

with ``p(y_t | h_t)`` a :class:`~torchmdn.GaussianMixture` (Graves 2013: a mixture of correlated
bivariate Gaussians is ``covariance_type="full"`` with ``d = 2``), optionally times the probability
of a discrete pen state (Graves' end-of-stroke Bernoulli, or Sketch-RNN's categorical pen
states; Ha & Eck 2017). For autoregressive use ``x_t`` holds ``y_{t-1}`` (and any conditioning).

Data layout (``batch_first``): ``x (B, T, in_features)``, ``y (B, T, out_features [+ 1])``;
the extra last column of ``y`` holds the pen state as a number ``0 .. pen_states - 1`` when the
model has a pen-state head. Padded steps of variable-length sequences are marked by a boolean
``mask (B, T)`` (``True`` = real step; :func:`lengths_to_mask`); they never change a loss.

**Sampling** uses torchmdn's one meaning of temperature (see :mod:`torchmdn.distributions`):
components from ``softmax(logits / τ)``, covariances times ``τ``; pen states from
``softmax(logits / τ)``. Graves' **sampling bias** ``b >= 0`` is applied first: mixture logits
times ``1 + b`` and standard deviations times ``exp(-b)`` (``b = 0``: the model itself; large
``b``: the most probable, cleanest strokes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution

from .._checks import integer
from ..distributions.covariance import COVARIANCE_TYPES
from ..distributions.mixture import GaussianMixture
from ..errors import InputError
from .mdn import MDNHead
from .standardize import add_normalizers, write_normalizers

__all__ = [
    "MDNRNN",
    "PenStateHead",
    "SequenceGenerator",
    "StepPrediction",
    "apply_sampling_bias",
    "lengths_to_mask",
    "pad_sequences",
]

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}
State = Tensor | tuple[Tensor, Tensor]


def lengths_to_mask(lengths: Tensor | Sequence[int], max_len: int | None = None) -> Tensor:
    """Boolean mask ``(B, T)`` that is ``True`` on the first ``lengths[b]`` steps of row ``b``.

    Example:
        >>> lengths_to_mask([2, 3])
        tensor([[ True,  True, False],
                [ True,  True,  True]])
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or (lengths < 0).any():
        raise InputError(
            f"lengths must be a 1-d tensor of non-negative integers (one per sequence); got "
            f"{lengths.tolist() if lengths.numel() < 10 else tuple(lengths.shape)}"
        )
    t = int(lengths.max()) if max_len is None and len(lengths) else int(max_len or 0)
    return torch.arange(t, device=lengths.device) < lengths.unsqueeze(-1)


def pad_sequences(
    sequences: Sequence[Tensor], value: float = 0.0, max_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """Stack variable-length ``(T_i, F)`` tensors into ``(B, T, F)`` plus ``lengths (B,)``."""
    if not sequences:
        raise InputError("pad_sequences needs at least one sequence; got an empty list")
    feats = {tuple(s.shape[1:]) for s in sequences}
    if len(feats) != 1 or any(s.dim() != 2 for s in sequences):
        raise InputError(
            f"every sequence must be a (T_i, F) tensor with the same F; got shapes "
            f"{sorted({tuple(s.shape) for s in sequences})[:5]}"
        )
    lengths = torch.tensor([len(s) for s in sequences])
    t = int(lengths.max()) if max_len is None else max_len
    out = sequences[0].new_full((len(sequences), t) + sequences[0].shape[1:], value)
    for i, s in enumerate(sequences):
        out[i, : min(len(s), t)] = s[:t]
    return out, lengths.clamp(max=t)


def _check_bias(bias: Any) -> float:
    try:
        value = float(bias)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"sampling bias must be a finite number >= 0; got {bias!r} (0 = off)")
    return value


def apply_sampling_bias(mixture: GaussianMixture, bias: float) -> GaussianMixture:
    """Graves' (2013) sampling bias: logits times ``1 + b``, standard deviations times ``exp(-b)``."""
    bias = _check_bias(bias)
    if bias == 0:
        return mixture
    shrink = math.exp(-bias)
    if mixture.covariance_type == "full":
        return GaussianMixture(
            mixture.logits * (1 + bias), mixture.loc, scale_tril=mixture.scale_tril * shrink
        )
    return GaussianMixture(mixture.logits * (1 + bias), mixture.loc, scale=mixture.scale * shrink)


class PenStateHead(nn.Module):
    """Linear layer from features to a discrete pen state: Bernoulli or categorical.

    ``n_states=2`` is Graves' end-of-stroke bit (a ``Bernoulli`` over ``{0, 1}``, one logit);
    ``n_states >= 3`` is a ``Categorical`` (Sketch-RNN's pen down / pen up / end of sketch).

    Args:
        in_features: size of the feature vector.
        n_states: number of pen states (>= 2).
    """

    def __init__(self, in_features: int, n_states: int = 2) -> None:
        super().__init__()
        self.in_features = integer("in_features", in_features, 1)
        self.n_states = integer("pen_states", n_states, 2)
        self.linear = nn.Linear(in_features, 1 if n_states == 2 else n_states)
        with torch.no_grad():
            self.linear.weight.mul_(0.1)
            self.linear.bias.zero_()

    def forward(self, h: Tensor) -> Distribution:
        """``h (*, in_features)`` -> a ``Bernoulli`` or ``Categorical`` with batch shape ``*``."""
        logits = self.linear(h)
        if self.n_states == 2:
            return Bernoulli(logits=logits.squeeze(-1), validate_args=False)
        return Categorical(logits=logits, validate_args=False)

    @torch.no_grad()
    def initialize(self, pen: Tensor) -> None:
        """Start at the empirical frequencies of the pen states ``pen (M,)``."""
        counts = torch.bincount(pen.long().flatten(), minlength=self.n_states)[: self.n_states]
        logp = (counts.to(self.linear.bias.dtype) + 0.5).log()
        bias = logp[1] - logp[0] if self.n_states == 2 else logp - logp.mean()
        self.linear.bias.copy_(bias.reshape(self.linear.bias.shape))

    def sample(
        self, dist: Distribution, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw pen states (as float codes) at ``temperature`` (``0``: the most probable state)."""
        logits = dist.logits
        if self.n_states == 2:
            logits = torch.stack([torch.zeros_like(logits), logits], -1)
        if temperature == 0:
            return logits.argmax(-1).to(logits.dtype)
        probs = torch.softmax(logits / temperature, -1)
        shape = probs.shape[:-1] + (1,)
        u = torch.rand(shape, generator=generator, dtype=probs.dtype, device=probs.device)
        cdf = probs.cumsum(-1)
        # scale by the last entry so round-off can never give an index past the last state
        idx = (u * cdf[..., -1:] >= cdf).sum(-1).clamp_(max=probs.shape[-1] - 1)
        return idx.to(logits.dtype)


@dataclass
class StepPrediction:
    """The model's prediction for each step: the mixture, the pen state (or None), the state."""

    mixture: GaussianMixture
    pen: Distribution | None
    state: State


class MDNRNN(nn.Module):
    """A mixture density RNN: LSTM/GRU backbone + :class:`~torchmdn.MDNHead` (+ pen-state head).

    Inputs and targets are standardised inside the model with buffers, set from data by
    :meth:`standardize` (which :func:`fit_sequences` calls), never in ``__init__``; the
    returned mixtures and log-likelihoods are in the user's units.

    Args:
        in_features: size of ``x_t``.
        out_features: dimension ``d`` of the continuous part of ``y_t``.
        n_components: mixture components per step.
        hidden_size: width of the recurrent state.
        num_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"``.
        covariance_type: ``"full"`` (correlated Gaussians, the default), ``"diagonal"`` or
            ``"isotropic"``.
        min_scale: floor on standard deviations, in standardised units of ``y``.
        pen_states: ``0`` (no pen state), ``2`` (end-of-stroke Bernoulli) or ``k >= 3``
            (categorical); the pen state is the last column of ``y``.
        dropout: dropout between stacked recurrent layers.

    Example:
        >>> import torch, torchmdn
        >>> rnn = torchmdn.MDNRNN(3, 2, n_components=4, hidden_size=16, pen_states=2)
        >>> mixture, state = rnn(torch.zeros(5, 7, 3))
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([5, 7]), torch.Size([2]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_components: int = 5,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: str = "lstm",
        covariance_type: str = "full",
        min_scale: float = 1e-3,
        pen_states: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise InputError(f"cell must be one of {sorted(CELLS)}; got {cell!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise InputError(
                f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
            )
        if pen_states != 0:
            integer("pen_states", pen_states, 2)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise InputError(f"dropout must be a number in [0, 1); got {dropout!r}")
        self.in_features = integer("in_features", in_features, 1)
        self.out_features = integer("out_features", out_features, 1)
        self.hidden_size = integer("hidden_size", hidden_size, 1)
        self.num_layers = integer("num_layers", num_layers, 1)
        self.cell, self.pen_states, self.dropout = cell, int(pen_states), float(dropout)
        self.rnn = CELLS[cell](
            self.in_features, self.hidden_size, self.num_layers, batch_first=True, dropout=dropout
        )
        self.head = MDNHead(hidden_size, out_features, n_components, covariance_type, min_scale)
        self.pen = PenStateHead(hidden_size, pen_states) if pen_states else None
        self.metadata: dict[str, Any] = {}
        add_normalizers(self, in_features, out_features)

    @property
    def target_features(self) -> int:
        """Columns of ``y``: ``out_features``, plus one for the pen state."""
        return self.out_features + (1 if self.pen_states else 0)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "n_components": self.head.n_components,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "cell": self.cell,
            "covariance_type": self.head.covariance_type,
            "min_scale": self.head.min_scale,
            "pen_states": self.pen_states,
            "dropout": self.dropout,
        }

    # ------------------------------------------------------------------ checks

    def check_inputs(self, x: Tensor) -> Tensor:
        """``x`` itself if it is a ``(batch, time, in_features)`` tensor; else an InputError."""
        if not isinstance(x, Tensor):
            raise InputError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise InputError(
                f"x must have shape (batch, time, {self.in_features}) (batch_first, in_features="
                f"{self.in_features}); got shape {tuple(x.shape)}. For one sequence use x[None]."
            )
        return x

    def check_targets(self, y: Tensor, x: Tensor) -> Tensor:
        """``y`` itself if its shape matches ``x``'s batch and time and the target columns."""
        if not isinstance(y, Tensor):
            raise InputError(f"y must be a torch.Tensor; got {type(y).__name__}")
        k = self.target_features
        if y.dim() != 3 or y.shape[-1] != k or y.shape[:2] != x.shape[:2]:
            pen = " (the last column is the pen state)" if self.pen_states else ""
            raise InputError(
                f"y must have shape {tuple(x.shape[:2]) + (k,)} (x's batch and time, "
                f"{k} target columns{pen}); got shape {tuple(y.shape)}"
            )
        return y

    def _mask(self, mask: Tensor | None, x: Tensor) -> Tensor:
        if mask is None:
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if not isinstance(mask, Tensor) or mask.shape != x.shape[:2]:
            raise InputError(
                f"mask must be a boolean tensor of shape {tuple(x.shape[:2])} (True = real "
                f"step); got {getattr(mask, 'shape', type(mask).__name__)}. "
                "Build one with torchmdn.nn.recurrent.lengths_to_mask(lengths, T)."
            )
        return mask.to(device=x.device, dtype=torch.bool)

    def split_targets(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The continuous targets with padded steps zeroed (so NaN padding cannot reach a
        gradient) and the pen states (``None`` without a pen-state head), checked."""
        y = torch.where(mask.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))
        d = self.out_features
        if not self.pen_states:
            return y, None
        pen = y[..., d]
        bad = (pen != pen.round()) | (pen < 0) | (pen >= self.pen_states)
        if bad.any():
            raise InputError(
                f"the pen-state column (y[..., {d}]) must hold integers 0..{self.pen_states - 1}; "
                f"got {pen[bad][:5].tolist()}"
            )
        return y[..., :d], pen

    # ------------------------------------------------------------------ data-driven set-up

    @torch.no_grad()
    def standardize(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> MDNRNN:
        """Set the normalisers from the real (unmasked) steps: per-column mean and std.

        A constant input column gets scale 1; a constant target column is an error.
        """
        x = self.check_inputs(x)
        y = self.check_targets(y, x)
        mask = self._mask(mask, x)
        xs, ys = x[mask], y[mask][:, : self.out_features]  # [M, in], [M, d]
        if len(ys) < 2:
            raise InputError(f"standardize needs at least 2 real steps; got {len(ys)}")
        write_normalizers(self, xs.mean(0), xs.std(0), ys.mean(0), ys.std(0), " on the real steps")
        return self

    @torch.no_grad()
    def initialize(
        self,
        x: Tensor,
        y: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        max_points: int = 4096,
        start: str = "clusters",
    ) -> MDNRNN:
        """Start the heads at the unconditional fit of the targets on the real steps.

        The mixture head starts at a fit of at most ``max_points`` standardised targets
        (:meth:`MDNHead.initialize`; ``start``: k-means clusters or overlapping components);
        the pen head at the pen states' frequencies.
        """
        x = self.check_inputs(x)
        mask = self._mask(mask, x)
        cont, pen = self.split_targets(self.check_targets(y, x), mask)
        z = ((cont[mask] - self.y_loc) / self.y_scale).reshape(-1, self.out_features)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if len(z) > max_points:
            pick = torch.randperm(len(z), generator=gen, device=gen.device)[:max_points]
            z = z[pick.to(z.device)]
        self.head.initialize(z, generator=gen, start=start)
        if self.pen is not None:
            self.pen.initialize(pen[mask])
        return self

    # ------------------------------------------------------------------ prediction

    def features(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Recurrent features ``(B, T, hidden_size)`` and the new state for ``x (B, T, in)``."""
        x = self.check_inputs(x)
        return self.rnn((x - self.x_loc) / self.x_scale, state)

    def step_distributions(self, x: Tensor, state: State | None = None) -> StepPrediction:
        """Mixtures (user units) and pen distributions with batch shape ``(B, T)``, new state."""
        h, state = self.features(x, state)
        mixture = self.head(h).affine(self.y_scale, self.y_loc)
        return StepPrediction(mixture, self.pen(h) if self.pen is not None else None, state)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[GaussianMixture, State]:
        """The predicted mixture for every step (batch shape ``(B, T)``, user units) and state.

        Args:
            x: inputs ``(B, T, in_features)``.
            state: the recurrent state to start from (``None``: zeros); LSTM: ``(h, c)``,
                GRU: ``h``, each ``(num_layers, B, hidden_size)``.
        """
        h, state = self.features(x, state)
        return self.head(h).affine(self.y_scale, self.y_loc), state

    def log_prob(
        self, x: Tensor, y: Tensor, mask: Tensor | None = None, state: State | None = None
    ) -> Tensor:
        """Per-step joint log-likelihood ``log p(y_t | x_{1:t})`` in nats, user units, ``(B, T)``.

        With a pen-state head this is ``log p(offset_t) + log P(pen_t)`` (both given ``h_t``,
        as in Graves 2013). Padded steps (``mask == False``) get exactly 0 and no gradient;
        their values may be anything, NaN included.
        """
        x = self.check_inputs(x)
        y = self.check_targets(y, x)
        mask = self._mask(mask, x)
        cont, pen = self.split_targets(y, mask)
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        h, _ = self.features(x, state)
        z = (cont - self.y_loc) / self.y_scale
        lp = self.head(h).log_prob(z) - self.y_scale.log().sum()  # [B, T]
        if self.pen is not None:
            lp = lp + self.pen(h).log_prob(pen if self.pen_states == 2 else pen.long())
        return torch.where(mask, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))

    def nll(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood per real step (a scalar, nats per step)."""
        mask = self._mask(mask, self.check_inputs(x))
        return -self.log_prob(x, y, mask).sum() / mask.sum().clamp_min(1)

    def generator(
        self, temperature: float = 1.0, bias: float = 0.0, seed: int | None = None
    ) -> SequenceGenerator:
        """A :class:`SequenceGenerator` for step-by-step sampling from this model."""
        return SequenceGenerator(self, temperature=temperature, bias=bias, seed=seed)

    def extra_repr(self) -> str:
        return f"pen_states={self.pen_states}"


class SequenceGenerator:
    """Step-by-step sampling from an :class:`MDNRNN`, vectorised over ``B`` sequences.

    Holds the recurrent state and the prediction for the next step. Feed inputs with
    :meth:`prime` (a whole prefix) or :meth:`observe` (one step), draw with :meth:`sample`, or
    let :meth:`generate` run the loop, feeding each draw back as the next input.

    Args:
        model: the trained model (switched to eval mode).
        temperature: see the module docstring (``0``: the most probable component's mean and
            the most probable pen state; deterministic).
        bias: Graves' sampling bias ``b >= 0`` (0 = off).
        seed: seed of the generator's own ``torch.Generator`` (``None``: a fresh one). The
            global random state is never touched.

    Example:
        >>> import torch, torchmdn
        >>> rnn = torchmdn.MDNRNN(2, 2, n_components=3, hidden_size=8)
        >>> gen = rnn.generator(temperature=0.5, seed=0)
        >>> gen.generate(torch.zeros(4, 2), steps=10).shape   # 4 sequences of 10 steps
        torch.Size([4, 10, 2])
    """

    def __init__(
        self, model: MDNRNN, temperature: float = 1.0, bias: float = 0.0, seed: int | None = None
    ) -> None:
        if not isinstance(model, MDNRNN):
            raise InputError(f"SequenceGenerator needs an MDNRNN; got {type(model).__name__}")
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise InputError(
                f"temperature must be a finite number >= 0; got {temperature} (1 = the model)"
            )
        _check_bias(bias)
        self.model = model.eval()
        self.temperature, self.bias = temperature, float(bias)
        self.seed = torch.Generator().seed() if seed is None else int(seed)
        self.rng = torch.Generator(device=model.x_loc.device).manual_seed(self.seed)
        self.state: State | None = None
        self.prediction: StepPrediction | None = None
        #: the last input step fed in, ``(B, in_features)``
        self.last_input: Tensor | None = None

    def reset(self) -> SequenceGenerator:
        """Forget the state and the prediction (the random stream goes on)."""
        self.state, self.prediction, self.last_input = None, None, None
        return self

    @torch.no_grad()
    def prime(self, x: Tensor, state: State | None = None) -> SequenceGenerator:
        """Run the model over a prefix ``x (B, T, in)``; the prediction is for the step after it."""
        out = self.model.step_distributions(x, state)
        self.state, self.last_input = out.state, x[:, -1]
        self.prediction = StepPrediction(
            _last(out.mixture),
            None if out.pen is None else _last_pen(out.pen),
            out.state,
        )
        return self

    @torch.no_grad()
    def observe(self, x_t: Tensor) -> StepPrediction:
        """Feed one input step ``x_t (B, in)``; return the prediction for the next target."""
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            raise InputError(
                f"x_t must be one step for every sequence, shape (B, {self.model.in_features}); "
                f"got {getattr(x_t, 'shape', type(x_t).__name__)}"
            )
        return self.prime(x_t.unsqueeze(1), self.state).prediction  # type: ignore[return-value]

    def _require_prediction(self) -> StepPrediction:
        if self.prediction is None:
            raise InputError(
                "the generator has no prediction yet: call prime(prefix) or observe(x_t) first"
            )
        return self.prediction

    @torch.no_grad()
    def log_prob(self, y_t: Tensor) -> Tensor:
        """Joint log-likelihood ``(B,)`` of ``y_t (B, d [+ 1])`` under the current prediction."""
        pred = self._require_prediction()
        d = self.model.out_features
        lp = pred.mixture.log_prob(y_t[..., :d])
        if pred.pen is not None:
            pen = y_t[..., d]
            lp = lp + pred.pen.log_prob(pen if self.model.pen_states == 2 else pen.long())
        return lp

    @torch.no_grad()
    def sample(self) -> Tensor:
        """Draw ``y_t (B, d [+ 1])`` from the current prediction (temperature and bias applied)."""
        pred = self._require_prediction()
        mixture = apply_sampling_bias(pred.mixture, self.bias)
        draw = mixture.sample(temperature=self.temperature, generator=self.rng)
        if pred.pen is not None:
            pen = self.model.pen.sample(pred.pen, self.temperature, self.rng)  # type: ignore[union-attr]
            draw = torch.cat([draw, pen.unsqueeze(-1).to(draw)], -1)
        return draw

    @torch.no_grad()
    def generate(
        self,
        x0: Tensor | None = None,
        steps: int = 100,
        next_input: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Sample ``steps`` targets per sequence, feeding each draw back in: ``(B, steps, k)``.

        Args:
            x0: first input ``(B, in)``; ``None`` continues from :meth:`prime`/:meth:`observe`.
            steps: number of steps to draw.
            next_input: maps ``(draw (B, k), previous input (B, in))`` to the next input; by
                default the draw itself (needs ``in_features == out_features [+ 1]``).
        """
        integer("steps", steps, 1)
        if next_input is None and self.model.in_features != self.model.target_features:
            raise InputError(
                f"the model reads {self.model.in_features} input features but draws "
                f"{self.model.target_features}: pass next_input(draw, x_prev) -> x_next"
            )
        if x0 is not None:
            self.observe(x0)
        self._require_prediction()
        x_prev = self.last_input
        draws = []
        for t in range(steps):
            y = self.sample()
            draws.append(y)
            if t + 1 < steps:
                x_prev = y if next_input is None else next_input(y, x_prev)
                self.observe(x_prev)
        return torch.stack(draws, 1)


def _last(mixture: GaussianMixture) -> GaussianMixture:
    """The mixture at the last time step: batch ``(B, T)`` -> ``(B,)``."""
    if mixture.covariance_type == "full":
        return GaussianMixture(
            mixture.logits[:, -1], mixture.loc[:, -1], scale_tril=mixture.scale_tril[:, -1]
        )
    return GaussianMixture(mixture.logits[:, -1], mixture.loc[:, -1], scale=mixture.scale[:, -1])


def _last_pen(pen: Distribution) -> Distribution:
    if isinstance(pen, Bernoulli):
        return Bernoulli(logits=pen.logits[:, -1], validate_args=False)
    return Categorical(logits=pen.logits[:, -1], validate_args=False)
