"""Save and load models: one ``.safetensors`` file holding the weights and a JSON config.

The config (architecture, column names, library version) lives in the safetensors header's
metadata, so a model is one file and loading it never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor

from ._files import atomic_write, loads_bounded, numel, read_safetensors_header
from .ensemble import Ensemble
from .errors import InputError, ModelFileError
from .nn.mdn import MDN
from .nn.recurrent import MDNRNN

_CLASSES: dict[str, type] = {"MDN": MDN, "MDNRNN": MDNRNN, "Ensemble": Ensemble}

__all__ = [
    "save",
    "load",
    "read_header",
    "resolve_device",
    "save_checkpoint",
    "load_checkpoint",
]

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
    """Write tensors and a JSON header as one safetensors file, atomically (temporary file,
    fsync, rename: see :func:`torchmdn._files.atomic_write`). Any failure of the disk is an
    ``OSError`` naming the path, and the destination is left as it was."""
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"metadata must be JSON-serialisable: {err}") from err
    try:
        payload = save_bytes(tensors, metadata={_FORMAT: text})
    except SafetensorError as err:  # (safetensors' own error is neither OSError nor ours)
        raise ModelFileError(f"cannot write {path}: {err}") from None
    try:
        return atomic_write(path, payload)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a saved model (config, versions, metadata), without the weights."""
    return _read(path)[0]


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The torchmdn header and the safetensors tensor table of ``path``, both checked."""
    meta, table = read_safetensors_header(path)
    if _FORMAT not in meta:
        raise ModelFileError(f"{path} is a safetensors file but not a torchmdn model")
    header = loads_bounded(meta[_FORMAT], f"{path}: torchmdn header")
    if not isinstance(header, dict) or type(header.get("format_version")) is not int:
        raise ModelFileError(f"{path}: corrupt torchmdn header (no integer format_version)")
    if header["format_version"] > _FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer torchmdn ({header.get('torchmdn_version')}, "
            f"format {header.get('format_version')}); upgrade torchmdn to read it"
        )
    return header, table


def _tensors(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """The tensors of a checked safetensors file (safetensors' errors as ModelFileError)."""
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path}: cannot read the weights ({err})") from None


def _is_int(value: Any, lo: int = 1) -> bool:
    return type(value) is int and value >= lo


def _planned_size(cls: type, config: dict[str, Any], path: Any, n_tensors: int) -> int:
    """The numbers a model of ``config`` holds (its parameters and buffers), from the config
    alone; refuses sizes of the wrong type before anything is allocated."""
    if cls is Ensemble:
        members = config.get("members")
        if not isinstance(members, list) or not members or len(members) > n_tensors:
            raise ModelFileError(f"{path}: invalid ensemble config (members)")
        total = 0
        for m in members:
            kind = m.get("class") if isinstance(m, dict) else None
            member = {"MDN": MDN, "MDNRNN": MDNRNN}.get(kind) if isinstance(kind, str) else None
            if member is None or not isinstance(m.get("config"), dict):
                raise ModelFileError(f"{path}: invalid ensemble member {str(m)[:80]}")
            total += _planned_size(member, _upgrade_config(m["config"]), path, n_tensors)
        return total
    sizes = ["in_features", "out_features", "n_components"]
    sizes += ["hidden_size", "num_layers"] if cls is MDNRNN else []
    for key in sizes:
        if key in config and not _is_int(config[key]):
            raise ModelFileError(f"{path}: invalid model config ({key}={config[key]!r})")
    i, d = config.get("in_features", 1), config.get("out_features", 1)
    n = config.get("n_components", 5)
    cov = config.get("covariance_type", "diagonal" if cls is MDN else "full")
    per = {"diagonal": 1 + 2 * d, "isotropic": 2 + d, "full": 1 + d + d * (d + 1) // 2}
    if not isinstance(cov, str) or cov not in per:
        raise ModelFileError(f"{path}: invalid model config (covariance_type={str(cov)[:40]!r})")
    if cls is MDN:
        hidden = config.get("hidden", [128, 128])
        if isinstance(hidden, list) and 2 * len(hidden) > n_tensors:  # a weight and a bias each
            raise ModelFileError(
                f"{path}: the config names {len(hidden)} hidden layers; the file holds "
                f"{n_tensors} tensors"
            )
        if not (isinstance(hidden, list) and all(_is_int(h) for h in hidden)):
            raise ModelFileError(f"{path}: invalid model config (hidden={str(hidden)[:80]})")
        widths = [i, *hidden]
        body = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
        last = widths[-1]
    else:
        h, layers = config.get("hidden_size", 128), config.get("num_layers", 1)
        cell = config.get("cell", "lstm")
        gates = {"lstm": 4, "gru": 3}.get(cell, 1) if isinstance(cell, str) else 1
        body = gates * h * (i + h + 2) + (layers - 1) * gates * h * (2 * h + 2)
        last = h
    return body + (last + 1) * n * per[cov] + 2 * i + 3 * d + 1


def load(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    map_location: str | torch.device | None = None,
) -> MDN | MDNRNN:
    """Read a model written by :func:`save`. Never executes code from the file.

    Args:
        path: the ``.safetensors`` file.
        device: where the model goes (default the CPU: a file written from a CUDA model loads
            on a machine without one); ``"auto"``: CUDA when available.
        map_location: the same as ``device`` (the name ``torch.load`` uses).

    The file is checked before anything is built: the header's size against the file, its
    JSON nesting, the config's types, and the numbers the config would allocate against the
    numbers the file holds; after loading, the normalisers must be finite (scales > 0) and
    the weights finite. Every problem is a :class:`~torchmdn.errors.ModelFileError`.
    """
    if device is not None and map_location is not None and str(device) != str(map_location):
        raise InputError(
            f"load got device={device!r} and map_location={map_location!r}; pass one of them"
        )
    target = resolve_device(device if device is not None else map_location)
    header, table = _read(path)
    kind = header.get("class")
    if kind == "checkpoint":
        raise ModelFileError(
            f"{path} is a training checkpoint, not a model: continue it with "
            "torchmdn.fit(..., resume=path), or load the model that fit saved"
        )
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelFileError(f"{path}: unknown model class {str(kind)[:80]!r}")
    config = _upgrade_config(header.get("config"))
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: invalid model config (not an object)")
    held = sum(numel(info["shape"]) for info in table.values())
    planned = _planned_size(cls, config, path, len(table))
    if planned > 2 * held + 4096:  # (slack: the exact comparison follows, once built)
        raise ModelFileError(
            f"{path}: the config describes a model of {planned} numbers but the file holds "
            f"{held}; the file is damaged or forged"
        )
    try:
        model = cls(**config)
    except (TypeError, KeyError, ValueError) as err:
        raise ModelFileError(f"{path}: invalid model config ({err})") from err
    tensors = upgrade_state(model, _tensors(path, "cpu"))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: weights do not match the config ({err})") from err
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    _check_values(path, model)
    metadata = header.get("metadata", {})
    model.metadata = metadata if isinstance(metadata, dict) else {}
    return model.to(target).eval()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``: ``None`` is the CPU, ``"auto"`` CUDA when available
    (under ``torchrun``, the GPU numbered by ``LOCAL_RANK``).

    Raises:
        InputError: not a device name, or a CUDA device on a machine without one.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # one process per GPU under torchrun: this process's own
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device; got {device!r}"
        ) from err
    if out.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} asked for CUDA, but this machine has no usable CUDA device; "
            "use device='cpu' (or 'auto')"
        )
    return out


def _upgrade_config(config: Any) -> Any:
    """A model config from an older torchmdn in today's vocabulary (``covariance`` was the
    name of ``covariance_type``)."""
    if isinstance(config, dict) and "covariance" in config and "covariance_type" not in config:
        config = {("covariance_type" if k == "covariance" else k): v for k, v in config.items()}
    return config


def _check_values(path: Any, model: torch.nn.Module) -> None:
    """Refuse non-finite weights and normalisers that are not finite scales > 0."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
    for module in model.modules():  # an ensemble's members too
        for name in ("x_scale", "y_scale"):
            t = getattr(module, name, None)
            if isinstance(t, Tensor) and not bool((t > 0).all()):
                raise ModelFileError(
                    f"{path}: {name} holds values <= 0 ({t.tolist()[:5]}); the file is damaged"
                )


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


def _checksum(tensors: dict[str, Tensor], state: dict[str, Any]) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes) and the JSON state."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(state, sort_keys=True, allow_nan=True).encode())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], state: dict[str, Any]
) -> Path:
    """Write a training checkpoint (tensors + JSON state) atomically; used by :func:`fit`.

    The header carries a sha256 checksum of the tensors and the state, which
    :func:`load_checkpoint` verifies.
    """
    from ._version import __version__

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "torchmdn_version": __version__,
        "class": "checkpoint",
        "state": state,
        "checksum": _checksum(tensors, state),
    }
    return _write(path, tensors, header)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, state)``.

    Raises:
        ModelFileError: not a checkpoint, or its checksum does not match its tensors and
            state (a damaged or edited file, or one written before checkpoints had one).
    """
    header, _ = _read(path)
    if header.get("class") != "checkpoint" or not isinstance(header.get("state"), dict):
        raise ModelFileError(f"{path} is not a torchmdn training checkpoint")
    tensors = _tensors(path)
    if header.get("checksum") != _checksum(tensors, header["state"]):
        raise ModelFileError(
            f"{path}: checksum mismatch (the checkpoint is damaged, edited, or from an older "
            "torchmdn without one); start training again or use another checkpoint"
        )
    return tensors, header["state"]
