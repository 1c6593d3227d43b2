"""The mixture distribution and its queries.

:class:`GaussianMixture` (``mixture``) is a ``torch.distributions.Distribution``; the queries
that take more than a few lines live beside it: quantiles, intervals, marginals and
conditioning (``queries``), highest-density regions (``hdr``) and modes (``modes``).
"""

from .mixture import GaussianMixture

__all__ = ["GaussianMixture"]
