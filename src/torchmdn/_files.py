"""Files on disk, done once: atomic writes, output-path checks, safetensors headers.

Every file torchmdn writes (models, checkpoints, CSV outputs, plots, the compiled kernel)
goes through :func:`atomic_write`: the content goes to a temporary file beside the
destination, is flushed to disk, and only then renamed over it, so a crash or a full disk
never leaves a half-written file. A symlink at the destination is written *through*: its
target is replaced and the link stays.

Reading a safetensors header (:func:`read_safetensors_header`) checks its size against the
file and the nesting depth of its JSON before parsing, so a forged header costs memory
proportional to the file and no deep recursion.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from .errors import ModelFileError

__all__ = [
    "MAX_JSON_DEPTH",
    "atomic_write",
    "check_output",
    "describe_input",
    "json_depth",
    "loads_bounded",
    "numel",
    "read_safetensors_header",
    "resolve_output",
]

#: deepest nesting of JSON arrays/objects a model file may hold (ours need 4)
MAX_JSON_DEPTH = 32
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header (100 MB)


def resolve_output(path: str | os.PathLike[str]) -> Path:
    """The file an output to ``path`` really writes: the target of a symlink (followed to
    the end), else ``path`` itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def describe_input(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data or model file, or ``None`` when it can be:
    missing, a directory, or not a regular file (FIFO, device such as /dev/null, socket)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} not found"
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )  # fmt: skip
        return f"{path} is {kind}, not a regular file"
    return None


def check_output(
    path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (), probe: bool = True
) -> Path:
    """Check before any work that ``path`` can take an output; returns the file to write.

    Refused (``OSError`` with a one-line message): a directory; something other than a
    regular file (a device such as ``/dev/null``, a FIFO); one of ``inputs`` (the same file,
    also through a symlink or hard link). A symlink is written through (its target is
    checked). With ``probe`` a temporary file is created and removed in the destination's
    folder (created if missing), so a missing permission shows now, not after training.
    """
    target = resolve_output(path)
    try:
        st = target.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"output {path} is a directory; name a file to write")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(
                f"output {path} exists and is not a regular file (a device, FIFO or socket); "
                "name a regular file to write"
            )
        for given in inputs:
            try:
                same = os.path.samefile(target, given)
            except OSError:
                continue
            if same:
                raise OSError(f"output {path} is the input file {given}; name another file")
    if probe:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(target)
        os.close(tmp[0])
        os.unlink(tmp[1])
    return target


def _create_temp(target: Path) -> tuple[int, str]:
    """A new file beside ``target`` (mode 0666 less the umask, as ``open`` would make it)."""
    for attempt in range(100):
        name = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(name)
        except FileExistsError:
            if attempt == 99:
                raise
    raise AssertionError("unreachable")


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[Any]], None] | bytes | str,
    *,
    text: bool = False,
    mode: int | None = None,
) -> Path:
    """Write a file all at once or not at all: a temporary file, fsync, then rename.

    Args:
        path: destination; a symlink is written through (its target is replaced).
        write: the content (``bytes``/``str``) or a function writing it to an open file
            (binary, or text with ``newline=""`` when ``text``).
        text: open the temporary file in text mode (UTF-8).
        mode: permission bits for the new file (default: as ``open`` makes them; an
            existing destination keeps its own).

    Returns:
        The path written (the symlink's target for a symlink).

    Raises:
        OSError: the destination's folder cannot be written, the disk is full, or ``path``
            is a directory or not a regular file. The destination is then left as it was.
    """
    target = check_output(path, probe=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"newline": "", "encoding": "utf-8"} if text else {})) as f:  # fmt: skip
            if callable(write):
                write(f)
            else:
                f.write(write)
            f.flush()
            os.fsync(f.fileno())
        try:
            keep = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            keep = None
        if mode is not None or keep is not None:
            os.chmod(tmp, mode if mode is not None else keep)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (strings skipped), in time
    linear in its length, without recursion (one pass of C-speed string operations)."""
    import numpy as np

    outside = "".join(re.sub(r"\\.", "", text).split('"')[::2])  # escapes, then strings out
    codes = np.frombuffer(outside.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    steps = (codes == ord("[")).astype(np.int64) + (codes == ord("{"))
    steps -= (codes == ord("]")).astype(np.int64) + (codes == ord("}"))
    return int(np.cumsum(steps).max(initial=0))


def loads_bounded(text: str, what: str) -> Any:
    """``json.loads(text)``, refusing (``ModelFileError``) nesting deeper than
    :data:`MAX_JSON_DEPTH` before parsing (deep nesting would exhaust the recursion)."""
    opening = text.count("[") + text.count("{")  # depth can be no more (the cheap common case)
    if opening > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise ModelFileError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ModelFileError(f"{what}: corrupt JSON ({err})") from None


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """The metadata and tensor table of a safetensors file, checked, without reading tensors.

    Returns ``(metadata, tensors)`` with ``tensors[name] = {"dtype", "shape", "data_offsets"}``.

    Raises:
        ModelFileError: not a regular file, truncated, a header larger than the file or than
            100 MB, JSON nested too deep, or entries of the wrong types.
    """
    path = Path(path)
    problem = describe_input(path)
    if problem is not None:
        raise ModelFileError(f"model file {problem}")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path} is not a safetensors model file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise ModelFileError(
                    f"{path} is not a safetensors model file (header of {n} bytes in a file "
                    f"of {size})"
                )
            raw = f.read(n)
    except OSError as err:
        raise ModelFileError(f"{path} cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{path} is not a safetensors model file (header not UTF-8)") from None
    table = loads_bounded(text, f"{path} header")
    if not isinstance(table, dict):
        raise ModelFileError(f"{path} is not a safetensors model file (header not an object)")
    meta = table.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{path}: safetensors metadata must map names to strings")
    end = size - 8 - n
    for name, info in table.items():
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(info.get("shape"), list)
            and all(type(s) is int and s >= 0 for s in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(type(o) is int and 0 <= o <= end for o in info["data_offsets"])
        )
        if not ok:
            raise ModelFileError(f"{path}: malformed safetensors entry for tensor {name!r}")
    return meta, table


def numel(shape: list[int]) -> int:
    """Number of elements of a tensor of ``shape``."""
    out = 1
    for s in shape:
        out *= s
    return out
