"""torchmdn: mixture density networks in PyTorch.

The network outputs a whole conditional distribution p(y|x), a Gaussian mixture, as a
``torch.distributions`` object. See the README for a tour.
"""

from .distributions import GaussianMixture
from .errors import TorchMDNError
from .nn import MDN, MLP, MDNHead

__version__ = "0.1.0"

__all__ = ["GaussianMixture", "MDN", "MDNHead", "MLP", "TorchMDNError", "__version__"]
