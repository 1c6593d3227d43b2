"""Save and load models: one ``.safetensors`` file holding the weights and a JSON config.

The config (architecture, column names, library version) lives in the safetensors header's
metadata, so a model is one file and loading it never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .ensemble import Ensemble
from .errors import ModelFileError
from .nn.mdn import MDN
from .nn.recurrent import MDNRNN

_CLASSES: dict[str, type] = {"MDN": MDN, "MDNRNN": MDNRNN, "Ensemble": Ensemble}

__all__ = ["save", "load", "read_header", "save_checkpoint", "load_checkpoint"]

_FORMAT = "torchmdn"
_FORMAT_VERSION = 1


def save(
    model: MDN | MDNRNN | Ensemble, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file), atomically.

    Args:
        model: the :class:`~torchmdn.MDN`, :class:`~torchmdn.MDNRNN` or
            :class:`~torchmdn.Ensemble` (of MDNs) to save.
        path: destination file; written to a temporary file first and then renamed, so an
            interrupted save never leaves a half-written model.
        metadata: extra JSON-serialisable information stored beside the config.

    Returns:
        The path written.
    """
    from ._version import __version__

    if type(model) not in _CLASSES.values():
        raise ModelFileError(
            f"save expects a torchmdn.MDN, MDNRNN or Ensemble; got {type(model).__name__}"
        )
    header = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "torchmdn_version": __version__,
        "class": type(model).__name__,
        "config": model.config(),
        "metadata": {**getattr(model, "metadata", {}), **(metadata or {})},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return _write(path, tensors, header)


def _write(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], header: dict[str, Any]
) -> Path:
    """Write tensors and a JSON header as one safetensors file: temp file, then rename."""
    path = Path(path)
    try:
        text = json.dumps(header)
    except TypeError as err:
        raise ModelFileError(f"metadata must be JSON-serialisable: {err}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_FORMAT: text})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a saved model (config, versions, metadata), without the weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a safetensors model file ({err})") from err
    if _FORMAT not in meta:
        raise ModelFileError(f"{path} is a safetensors file but not a torchmdn model")
    try:
        header = json.loads(meta[_FORMAT])
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: corrupt torchmdn header ({err})") from err
    if not isinstance(header, dict) or not isinstance(header.get("format_version"), int):
        raise ModelFileError(f"{path}: corrupt torchmdn header (no integer format_version)")
    if header["format_version"] > _FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer torchmdn ({header.get('torchmdn_version')}, "
            f"format {header.get('format_version')}); upgrade torchmdn to read it"
        )
    return header


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> MDN | MDNRNN:
    """Read a model written by :func:`save`. Never executes code from the file."""
    header = read_header(path)
    if header.get("class") == "checkpoint":
        raise ModelFileError(
            f"{path} is a training checkpoint, not a model: continue it with "
            "torchmdn.fit(..., resume=path), or load the model that fit saved"
        )
    cls = _CLASSES.get(header.get("class"))
    if cls is None:
        raise ModelFileError(f"{path}: unknown model class {header.get('class')!r}")
    try:
        model = cls(**_upgrade_config(header["config"]))
    except (TypeError, KeyError, ValueError) as err:
        raise ModelFileError(f"{path}: invalid model config ({err})") from err
    tensors = upgrade_state(model, load_file(str(path), device=str(map_location)))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: weights do not match the config ({err})") from err
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    model.metadata = header.get("metadata", {})
    return model.to(map_location).eval()


def _upgrade_config(config: Any) -> Any:
    """A model config from an older torchmdn in today's vocabulary (``covariance`` was the
    name of ``covariance_type``)."""
    if isinstance(config, dict) and "covariance" in config and "covariance_type" not in config:
        config = {("covariance_type" if k == "covariance" else k): v for k, v in config.items()}
    return config


def upgrade_state(model: torch.nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors``, a state dict for ``model`` from an older torchmdn, with what it lacks filled in.

    Files written before heads had a per-dimension floor have no ``head.scale_floor``: they
    behaved as a floor of the head's ``min_scale`` everywhere, which is what is filled in.
    Used by :func:`load` and by ``fit(..., resume=...)``.
    """
    out = dict(tensors)
    for key, value in model.state_dict().items():
        if key.endswith("head.scale_floor") and key not in out:
            head = model.get_submodule(key.rpartition(".")[0])
            out[key] = torch.full_like(value, head.min_scale)
    return out


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], state: dict[str, Any]
) -> Path:
    """Write a training checkpoint (tensors + JSON state) atomically; used by :func:`fit`."""
    from ._version import __version__

    header = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "torchmdn_version": __version__,
        "class": "checkpoint",
        "state": state,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return _write(path, tensors, header)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, state)``."""
    header = read_header(path)
    if header.get("class") != "checkpoint" or not isinstance(header.get("state"), dict):
        raise ModelFileError(f"{path} is not a torchmdn training checkpoint")
    return load_file(str(path)), header["state"]
