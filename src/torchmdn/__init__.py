"""torchmdn: mixture density networks in PyTorch.

The network outputs a whole conditional distribution p(y|x), a Gaussian mixture, as a
``torch.distributions`` object. See the README for a tour.
"""

from . import datasets, metrics
from ._version import __version__
from .distributions import GaussianMixture
from .ensemble import Ensemble, ensemble
from .errors import TorchMDNError
from .io import load, save
from .nn import MDN, MDNRNN, MLP, MDNHead, PenStateHead, SequenceGenerator
from .training import History, TableSource, fit, fit_sequences

__all__ = [
    "GaussianMixture",
    "MDN",
    "MDNHead",
    "Ensemble",
    "ensemble",
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
    # optional parts load on first use: the estimator imports scikit-learn, plot matplotlib
    if name in ("MDNRegressor", "nll_scorer"):
        from . import estimator

        return getattr(estimator, name)
    if name in ("plot", "estimator", "export", "cli"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
