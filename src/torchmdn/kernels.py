"""The compiled CPU kernel for the mixture log-likelihood: build once, load, call.

:mod:`torchmdn.fused` computes the likelihood as a dozen whole-tensor operations; at the
batch sizes MDNs train with, their fixed cost per operation dominates. ``csrc/mixture.cpp``
does the same maths in one pass over the rows (vectorised ``exp``/``log`` from ATen), forward
and backward. It is compiled on first use with the system's C++ compiler against the
installed torch (a few seconds, once per torch version and CPU), cached under
``$TORCHMDN_CACHE`` (default ``~/.cache/torchmdn``), and loaded as ``torch.ops.torchmdn``.

Nothing is required: without a compiler, on other devices or layouts, under
``torch.compile``, or with ``TORCHMDN_KERNEL=0`` in the environment, :mod:`torchmdn.fused`
runs its tensor-level path with the same results. A failed build warns once, naming the
compiler's message and how to switch the kernel off.

    torchmdn kernel     # build it now (``make`` does) and say where it is, or why not
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "build", "status"]

_SOURCE = Path(__file__).with_name("csrc") / "mixture.cpp"
_lock = threading.Lock()
_state: dict[str, object] = {"loaded": None, "reason": None}


def _enabled() -> bool:
    return os.environ.get("TORCHMDN_KERNEL", "1").strip().lower() not in {"0", "off", "false", "no"}


def _flags() -> list[str]:
    """Compiler flags for this torch and CPU (part of the cache key)."""
    torch_dir = Path(torch.__file__).parent
    flags = [
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fopenmp",  # ATen's parallel_for is OpenMP in torch's CPU builds
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in {"AVX2", "AVX512"}:  # ATen's 256-bit vector code, SLEEF from libtorch
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:  # ATen's portable vector type (plain loops)
        flags += ["-DCPU_CAPABILITY=DEFAULT"]
    lib = torch_dir / "lib"
    return flags + [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]


def _cache_dir() -> Path:
    root = os.environ.get("TORCHMDN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchmdn"
    )
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (
        _SOURCE.read_bytes(),
        torch.__version__.encode(),
        compiler.encode(),
        " ".join(_flags()).encode(),
        sysconfig.get_platform().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return _cache_dir() / f"mixture-{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the kernel (unless cached) and return the shared library's path.

    Raises ``RuntimeError`` with the compiler's message when there is no compiler or the
    build fails. Safe to run from several processes at once (each writes its own temporary
    file and renames it into place).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (looked for $CXX, c++ and g++)")
    path = _library_path(compiler)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        run = subprocess.run(
            [compiler, str(_SOURCE), "-o", tmp, *_flags()],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{compiler} failed (exit {run.returncode}):\n{tail}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def available() -> bool:
    """Whether the compiled kernel is in use (building and loading it on the first call)."""
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    with _lock:
        if _state["loaded"] is None:
            _state["loaded"] = _load()
    return bool(_state["loaded"])


def status() -> str:
    """One line: whether the kernel is used, and from where or why not."""
    if available():
        return f"compiled CPU kernel in use: {_state['path']}"
    return f"compiled CPU kernel not in use ({_state['reason']}); tensor-level fused path"


def _load() -> bool:
    if not _enabled():
        _state["reason"] = "TORCHMDN_KERNEL=0"
        return False
    if hasattr(torch.ops.torchmdn, "mixture_forward"):  # loaded by another copy of torchmdn
        _state["path"] = "already registered"
        return True
    try:
        path = build()
        torch.ops.load_library(str(path))
    except (RuntimeError, OSError) as err:
        _state["reason"] = f"build failed: {str(err).splitlines()[0]}"
        warnings.warn(
            "torchmdn: could not build its compiled CPU kernel; using the tensor-level path "
            f"(same results, slower). Set TORCHMDN_KERNEL=0 to skip the attempt.\n{err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    _state["path"] = str(path)
    return True
