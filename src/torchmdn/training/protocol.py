"""What :func:`torchmdn.fit` asks of a model: a small explicit protocol.

Any ``nn.Module`` whose ``forward(x)`` returns a distribution with ``log_prob(y)`` trains; a
:class:`ConditionalDensity` is also standardised and scored by its own ``log_prob(x, y)``; a
:class:`TrainableMixture` (``MDN``, and ``MDNRNN`` through the sequence trainer) also gets the
mixture remedies: standardisation, the k-means start, component
tracking and re-seeding, RNADE scaling and a diagnosis that names the broken head blocks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..distributions.mixture import GaussianMixture
from ..nn.mdn import MDNHead

__all__ = ["ConditionalDensity", "TrainableMixture", "responsibilities"]


@runtime_checkable
class ConditionalDensity(Protocol):
    """A model of ``p(y | x)`` with its own normalisers and per-row likelihood.

    Attributes:
        standardized: a boolean buffer, ``True`` once the normalisers are set.
        x_scale, y_scale: the normalisers' scales (noise is drawn in these units).
    """

    standardized: Tensor
    x_scale: Tensor
    y_scale: Tensor

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-row log-likelihood in the user's units, ``(N,)``."""
        ...

    def standardize(self, x: Tensor, y: Tensor) -> object:
        """Set the normalisers from training rows."""
        ...


@runtime_checkable
class TrainableMixture(ConditionalDensity, Protocol):
    """A conditional mixture model ``fit`` can train with every remedy.

    Attributes:
        head: the :class:`~torchmdn.MDNHead` that emits the mixture.
    """

    head: MDNHead

    def initialize(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
        start: str = "clusters",
    ) -> object:  # fmt: skip
        """Start the head at the unconditional mixture fit of ``y`` (``start``: how its
        components start, see :meth:`~torchmdn.MDNHead.initialize`)."""
        ...

    def mixture_and_target(self, x: Tensor, y: Tensor) -> tuple[GaussianMixture, Tensor]:
        """The predicted mixture in standardised units and the standardised targets it
        scores, one row per observation (``(M,)`` batch and ``(M, d)``; for sequences, the
        real steps): what component tracking and re-seeding look at."""
        ...


@torch.no_grad()
def responsibilities(model: TrainableMixture, x: Tensor, y: Tensor) -> Tensor:
    """Each component's mean responsibility over the rows ``(x, y)``, ``(n,)``."""
    dist, z = model.mixture_and_target(x, y)
    return torch.softmax(dist.joint_log_prob(z), -1).mean(0)
