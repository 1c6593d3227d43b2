"""torchmdn: mixture density networks in PyTorch.

The network outputs a whole conditional distribution p(y|x), a Gaussian mixture, as a
``torch.distributions`` object. See the README for a tour.
"""

from . import datasets, metrics
from .distributions import GaussianMixture
from .errors import TorchMDNError
from .io import load, save
from .nn import MDN, MLP, MDNHead
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
    "load",
    "save",
    "__version__",
]
