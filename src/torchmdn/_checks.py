"""Argument checks and optional imports shared across the package (private module, public
names): one definition each, one wording for the errors users read."""

from __future__ import annotations

import importlib
import numbers
from typing import Any

from .errors import InputError

__all__ = ["integer", "require_extra"]


def integer(name: str, value: Any, low: int = 1) -> int:
    """``value`` as a Python int ``>= low`` (NumPy integers included, bools refused), or an
    :class:`InputError` that names the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        expected = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise InputError(f"{name} must be {expected}; got {value!r}")
    return int(value)


def require_extra(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or say which extra installs it.

    ``what`` names the feature that needs it, e.g. ``require_extra("pandas", "stream",
    "streaming training data")``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}: pip install 'torchmdn[{extra}]'"
        ) from err
