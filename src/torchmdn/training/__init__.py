"""Training: ``fit`` and its loop, in-memory and streamed data, distributed runs, sequences."""

from .fit import History, fit
from .sequences import fit_sequences
from .streaming import TableSource

__all__ = ["History", "TableSource", "fit", "fit_sequences"]
