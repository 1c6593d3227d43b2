"""torchmdn: mixture density networks in PyTorch.

The network outputs a whole conditional distribution p(y|x), a Gaussian mixture, as a
``torch.distributions`` object. See the README for a tour.
"""

from . import datasets, metrics
from .distributions import GaussianMixture
from .errors import TorchMDNError
from .io import load, save
from .nn import MDN, MLP, MDNHead
from .sequence import MDNRNN, PenStateHead, SequenceGenerator, fit_sequences  # issue 7
from .streaming import TableSource  # issue 8: data larger than memory
from .train import History, fit

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "MDN",
    "MDNHead",
    "MLP",
    "History",
    "TorchMDNError",
    "datasets",
    "metrics",
    "fit",
    "TableSource",
    "load",
    "save",
    "__version__",
    "MDNRegressor",
    "nll_scorer",
    "MDNRNN",
    "PenStateHead",
    "SequenceGenerator",
    "fit_sequences",
]


def __getattr__(name: str):
    # scikit-learn is optional: import the estimator (and sklearn) only when it is used
    if name in ("MDNRegressor", "nll_scorer"):
        from . import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
