"""The one exception base of torchmdn.

Every error the library raises on purpose derives from :class:`TorchMDNError` and from the
matching built-in (``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working and
the command line can map all of them to one exit status.
"""

from __future__ import annotations


class TorchMDNError(Exception):
    """Base class of the errors torchmdn raises on purpose."""


class InputError(TorchMDNError, ValueError):
    """A value handed in by the user is not what the library expects."""


class InputTypeError(TorchMDNError, TypeError):
    """A value handed in by the user has the wrong type."""


class TrainingError(TorchMDNError, RuntimeError):
    """Training cannot go on (for example: the loss stays non-finite)."""


class ModelFileError(TorchMDNError, ValueError):
    """A model file is missing, not a torchmdn model, or does not fit the data."""
