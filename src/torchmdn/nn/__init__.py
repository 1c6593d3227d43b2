"""Networks: the MLP backbone, the mixture head, the MDN and the recurrent MDN-RNN."""

from .mdn import MDN, MLP, MDNHead
from .recurrent import MDNRNN, PenStateHead, SequenceGenerator

__all__ = ["MDN", "MDNHead", "MDNRNN", "MLP", "PenStateHead", "SequenceGenerator"]
