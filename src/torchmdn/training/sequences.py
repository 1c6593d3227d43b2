"""Training an MDNRNN with :func:`torchmdn.fit`: padded sequences presented as rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..distributions.mixture import GaussianMixture
from ..errors import InputError
from ..nn.mdn import MDNHead
from ..nn.recurrent import MDNRNN, lengths_to_mask
from .fit import fit


class _PackedSequences(nn.Module):
    """Presents an :class:`MDNRNN` to :func:`torchmdn.fit` as a model of 2-d rows.

    A row of ``x`` is one sequence's inputs, flattened, followed by its mask; a row of ``y`` is
    its targets, flattened. ``log_prob`` returns one value per row: the mean log-likelihood per
    real step of that sequence (so ``fit`` weights every sequence equally).
    """

    def __init__(self, model: MDNRNN, steps: int) -> None:
        super().__init__()
        self.model, self.steps = model, steps

    @property
    def head(self) -> MDNHead:
        return self.model.head

    @property
    def standardized(self) -> Tensor:
        return self.model.standardized

    @property
    def x_scale(self) -> Tensor:
        return self.model.x_scale

    @property
    def y_scale(self) -> Tensor:
        return self.model.y_scale

    def unpack_x(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self.steps
        return x[:, :-t].reshape(len(x), t, -1), x[:, -t:] > 0.5

    def unpack_y(self, y: Tensor) -> Tensor:
        return y.reshape(len(y), self.steps, -1)

    def standardize(self, x: Tensor, y: Tensor) -> None:
        xs, mask = self.unpack_x(x)
        self.model.standardize(xs, self.unpack_y(y), mask)

    def initialize(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        start: str = "clusters",
    ) -> None:  # fmt: skip
        xs, mask = self.unpack_x(x)
        self.model.initialize(xs, self.unpack_y(y), mask, generator=generator, start=start)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        xs, mask = self.unpack_x(x)
        lp = self.model.log_prob(xs, self.unpack_y(y), mask)  # [B, T]
        return lp.sum(-1) / mask.sum(-1).clamp_min(1)

    def mixture_and_target(self, x: Tensor, y: Tensor) -> tuple[GaussianMixture, Tensor]:
        """The step mixtures and standardised targets of the real steps, ``(M,)`` and
        ``(M, d)``."""
        m = self.model
        xs, mask = self.unpack_x(x)
        cont, _ = m.split_targets(self.unpack_y(y), mask)
        h, _ = m.features(xs)
        z = (cont - m.y_loc) / m.y_scale
        mixture = m.head(h)  # batch (B, T)
        keep = mask.flatten()
        return _rows(mixture, keep), z.flatten(0, 1)[keep]

    def forward(self, x: Tensor) -> GaussianMixture:
        raise TypeError("a packed sequence model is trained through fit_sequences only")


def _rows(mixture: GaussianMixture, keep: Tensor) -> GaussianMixture:
    """The mixtures of a ``(B, T)`` batch at the steps ``keep`` (flattened), batch ``(M,)``."""
    logits = mixture.logits.flatten(0, 1)[keep]
    loc = mixture.loc.flatten(0, 1)[keep]
    if mixture.covariance_type == "full":
        return GaussianMixture.from_precision_tril(
            logits, loc, mixture.precision_tril.flatten(0, 1)[keep], validate_args=False
        )
    return GaussianMixture(
        logits, loc, scale=mixture.scale.flatten(0, 1)[keep], validate_args=False
    )


def _pack(model: MDNRNN, x: Any, y: Any, lengths: Any, what: str) -> tuple[Tensor, Tensor, int]:
    param = next(model.parameters())
    try:
        x = torch.as_tensor(x, dtype=param.dtype, device=param.device)
        y = torch.as_tensor(y, dtype=param.dtype, device=param.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{what} x and y must be arrays of numbers: {err}") from err
    x = model.check_inputs(x)
    y = model.check_targets(y, x)
    if lengths is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    else:
        lengths = torch.as_tensor(lengths, device=x.device)
        if lengths.shape != x.shape[:1] or (lengths < 1).any() or (lengths > x.shape[1]).any():
            raise InputError(
                f"{what} lengths must hold one integer in 1..{x.shape[1]} per sequence "
                f"({x.shape[0]}); got {lengths.tolist()[:10]}"
            )
        mask = lengths_to_mask(lengths, x.shape[1])
    real = mask.unsqueeze(-1)
    bad = mask & ~(torch.isfinite(x).all(-1) & torch.isfinite(y).all(-1))
    if bad.any():
        rows = torch.nonzero(bad.any(-1)).flatten()[:5].tolist()
        raise InputError(
            f"{what} x or y has NaN/inf values on real steps (sequences {rows}); "
            "only padded steps (beyond lengths) may hold them"
        )
    x = torch.where(real & torch.isfinite(x), x, x.new_zeros(()))
    y = torch.where(real & torch.isfinite(y), y, y.new_zeros(()))
    model.split_targets(y, mask)  # checks the pen-state codes
    x2 = torch.cat([x.flatten(1), mask.to(x.dtype)], 1)
    return x2, y.flatten(1), x.shape[1]


def fit_sequences(
    model: MDNRNN,
    x: Any,
    y: Any,
    lengths: Any = None,
    *,
    validation_data: tuple[Any, ...] | None = None,
    **fit_kwargs: Any,
) -> Any:
    """Train an :class:`MDNRNN` with :func:`torchmdn.fit` on padded sequences.

    The same loop as ``fit`` (validation split by sequence, EMA, clipping, NaN guard, early
    stopping, checkpoints and resumption, progress bar); each sequence is one "row", and the
    reported losses are the mean NLL per real step of a sequence, averaged over sequences.

    Args:
        model: the model to train (standardised and initialised from the training sequences
            unless ``standardize=False`` / ``initialize=False`` or already standardised).
        x: inputs ``(N, T, in_features)``.
        y: targets ``(N, T, out_features [+ 1])``.
        lengths: real steps per sequence ``(N,)``; ``None``: all ``T`` steps are real.
        validation_data: ``(x, y)`` or ``(x, y, lengths)`` with the training data's ``T``.
        **fit_kwargs: any argument of :func:`torchmdn.fit` except ``noise_x``, ``noise_y``
            and ``reseed_dead`` (not defined for sequences).

    Returns:
        ``fit``'s :class:`~torchmdn.History`; the model is left in its best state, in eval mode.
    """

    if not isinstance(model, MDNRNN):
        raise InputError(f"fit_sequences trains an MDNRNN; got {type(model).__name__}")
    for key in ("noise_x", "noise_y", "reseed_dead"):
        if fit_kwargs.get(key):
            raise InputError(f"fit_sequences does not support {key}; leave it at its default")
    x2, y2, steps = _pack(model, x, y, lengths, "training")
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise InputError(
                "validation_data must be (x, y) or (x, y, lengths); got "
                f"{len(validation_data)} items"
            )
        vx, vy, vl = (*validation_data, None)[:3]
        vx2, vy2, vsteps = _pack(model, vx, vy, vl, "validation")
        if vsteps != steps:
            raise InputError(
                f"validation sequences must be padded to the training length {steps}; got "
                f"{vsteps}. Use pad_sequences(..., max_len={steps})."
            )
        fit_kwargs["validation_data"] = (vx2, vy2)
    return fit(_PackedSequences(model, steps), x2, y2, **fit_kwargs)
