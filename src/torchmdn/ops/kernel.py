"""The compiled CPU kernel for the mixture log-likelihood: build once, load, call.

Callers are :mod:`torchmdn.ops.fused` (``log_prob``: parameters as tensors) and
:class:`~torchmdn.GaussianMixture` made by an MDN head (``head_log_prob``: the head's raw
output); both return ``None`` where the kernel does not apply, and the caller takes its
tensor-level path.

:mod:`torchmdn.ops.fused` computes the likelihood as a dozen whole-tensor operations; at the
batch sizes MDNs train with, their fixed cost per operation dominates. ``csrc/mixture.cpp``
does the same maths in one pass over the rows (vectorised ``exp``/``log`` from ATen), forward
and backward. It is compiled on first use with the system's C++ compiler against the
installed torch (a few seconds, once per torch version and CPU), cached under
``$TORCHMDN_CACHE`` (default ``~/.cache/torchmdn``), and loaded as ``torch.ops.torchmdn``.
Loading a library runs its code, so the cache is a private folder (``0700``, this user's,
else refused) and a library is loaded only when its sha256 equals the one recorded when
this library built it; anything else there is compiled again, never loaded.

Nothing is required: without a compiler, on other devices or layouts, under
``torch.compile``, or with ``TORCHMDN_KERNEL=0`` in the environment, :mod:`torchmdn.ops.fused`
runs its tensor-level path with the same results. A failed build warns once, naming the
compiler's message and how to switch the kernel off.

    torchmdn kernel     # build it now (``make`` does) and say where it is, or why not
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .._files import atomic_write
from . import reference
from .layout import (
    CHOLESKY,
    DIAGONAL,
    ISOTROPIC,
    PACKED,
    PRECISION,
    head_parameters,
    head_width,
    unpack_precision,
)

__all__ = [
    "available", "build", "head_log_prob", "heads_log_prob", "log_prob", "status", "trusted",
]  # fmt: skip

_SOURCE = Path(__file__).with_name("csrc") / "mixture.cpp"
_log = logging.getLogger("torchmdn")
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


def _private_folder(folder: Path) -> Path:
    """``folder``, created ``0700`` if missing, checked to be this user's own and private.

    A folder of ours that others may write is made private (``chmod 0700``): what was
    planted there meanwhile is caught by the hash check. Another user's folder, a symlink,
    or anything else is refused (``OSError``): whoever can write the folder could plant a
    library that loading would run.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"kernel cache {folder} is not a plain folder (a symlink?); refused")
    if hasattr(os, "getuid"):  # (POSIX: ownership and mode; Windows has neither)
        if st.st_uid != os.getuid():
            raise OSError(
                f"kernel cache {folder} belongs to user {st.st_uid}, not to this user "
                f"({os.getuid()}); refused. Set TORCHMDN_CACHE to a folder of your own"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(folder, 0o700)
    return folder


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def trusted(path: Path) -> bool:
    """Whether ``path`` is a library this torchmdn built: a regular file of this user's (not
    a symlink) in a private folder, whose sha256 equals the one recorded beside it when it
    was built. Only such a file is ever loaded."""
    try:
        _private_folder(path.parent)
        for p in (path, _sidecar(path)):
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                return False
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                return False
        return _sidecar(path).read_text().strip() == _digest(path)
    except OSError:
        return False


def build(force: bool = False) -> Path:
    """Compile the kernel (unless a trusted build is cached) and return the library's path.

    The cache folder is private (created ``0700``, owned by this user, else refused), and
    the library's sha256 is recorded beside it; a cached file is used only when it matches
    (:func:`trusted`), otherwise it is compiled again. Raises ``RuntimeError`` with the
    compiler's message when there is no compiler or the build fails, ``OSError`` when no
    private folder can be had. Safe to run from several processes at once (each writes its
    own temporary file and renames it into place).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (looked for $CXX, c++ and g++)")
    path = _library_path(compiler)
    try:
        _private_folder(path.parent)
    except OSError as first:  # a read-only home: this machine's temporary folder instead
        user = os.getuid() if hasattr(os, "getuid") else "user"  # (no uid on Windows)
        path = Path(tempfile.gettempdir()) / f"torchmdn-{user}" / "kernels" / path.name
        try:
            _private_folder(path.parent.parent)
            _private_folder(path.parent)
        except OSError as err:
            raise OSError(f"{first}; and {err}") from None
    if not force and trusted(path):
        return path
    if path.exists() and not force:
        _log.warning("torchmdn: %s does not match its recorded hash; compiling it again", path)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        _log.info(
            "torchmdn: compiling the CPU likelihood kernel once (a few seconds) into %s", path
        )
        try:
            run = subprocess.run(
                [compiler, str(_SOURCE), "-o", tmp, *_flags()],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RuntimeError(f"{compiler} could not run: {err}") from err
        if run.returncode != 0:
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{compiler} failed (exit {run.returncode}):\n{tail}")
        digest = _digest(Path(tmp))
        os.replace(tmp, path)
        atomic_write(_sidecar(path), digest + "\n", text=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if not trusted(path):  # another process replaced it between our rename and our check
        raise RuntimeError(f"{path} changed while it was being built; build again")
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
        if not trusted(path):  # checked again right before loading
            raise RuntimeError(f"{path} does not match its recorded hash; not loaded")
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


# ---------------------------------------------------------------- calling it

#: ``False`` keeps the tensor-level path even where the kernel could run (tests, benchmarks).
_USE_KERNEL = True


def _ready(t: Tensor) -> bool:
    """Whether the kernel may run on ``t``'s device and dtype, here and now."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # torch.compile and tracing see the tensor-level path
    if not _USE_KERNEL or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return False
    return available()


def _value_rows(value: Tensor, batch: torch.Size, d: int) -> tuple[Tensor, torch.Size] | None:
    """``value`` as rows ``[N, d]`` against the parameter rows (row ``i`` uses parameter row
    ``i % P``) and the shape of the result; ``None`` unless it broadcasts to ``(*S, *B, d)``."""
    if value.shape[-1:] != (d,):
        return None
    shape = value.shape[:-1]
    if shape[len(shape) - len(batch) :] != batch:
        try:
            shape = torch.broadcast_shapes(shape, batch)
        except RuntimeError:
            return None
        if shape[len(shape) - len(batch) :] != batch:
            return None
        value = value.expand(shape + (d,))
    return _rows(value, (-1, d)), shape


def _rows(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t`` as a contiguous tensor of ``shape`` (no copy, no autograd node when it is one)."""
    if t.dim() != len(shape) or (shape[0] != -1 and t.shape[0] != shape[0]):
        t = t.reshape(shape)
    return t.contiguous()


def log_prob(
    kind: int, logits: Tensor, loc: Tensor, fac: Tensor, value: Tensor, floor: Tensor | None = None
) -> Tensor | None:
    """``log p(value)`` of a mixture by the kernel, or ``None`` where it does not apply.

    It applies on the CPU in float32/float64 when the parameters share one batch shape ``B``
    (no broadcasting among them) and ``value`` broadcasts to ``(*S, *B, d)``. ``fac`` is the
    covariance parameter of ``kind`` (see :mod:`torchmdn.ops.fused` for the maths); ``floor``
    only for ``PACKED``.
    """
    if not _ready(logits):
        return None
    batch, (n, d) = logits.shape[:-1], loc.shape[-2:]
    tail = {DIAGONAL: (n, d), ISOTROPIC: (n,), PACKED: (n, d * (d + 1) // 2)}.get(kind, (n, d, d))
    rows = _value_rows(value, batch, d)
    if loc.shape != batch + (n, d) or fac.shape != batch + tail or rows is None:
        return None
    value, shape = rows
    P = math.prod(batch)
    transposed = kind == CHOLESKY and not fac.is_contiguous() and fac.mT.is_contiguous()
    fac = fac.mT if transposed else fac  # a column-major factor (LAPACK's) read as such
    args = (_rows(logits, (P, n)), _rows(loc, (P, n, d)), _rows(fac, (P,) + tail))
    floor = logits.new_empty(0) if floor is None else floor.to(logits.dtype).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*args, value)):
        return _LogProb.apply(*args, value, floor, kind, transposed, shape)
    out = torch.ops.torchmdn.mixture_forward(*args, floor, value, kind, transposed, False)
    return out[0].view(shape)


def head_log_prob(out: Tensor, floor: Tensor, kind: int, n: int, value: Tensor) -> Tensor | None:
    """``log p(value)`` straight from an MDN head's output ``(*B, n + n d + scales)`` (see
    :func:`torchmdn.ops.head_parameters`), or ``None`` where the kernel does not apply:
    no split, copies or softplus as separate operations, one gradient for the whole output."""
    if not _ready(out):
        return None
    d = value.shape[-1]
    rows = _value_rows(value, out.shape[:-1], d)
    if rows is None:
        return None
    value, shape = rows
    args = (_rows(out, (math.prod(out.shape[:-1]), out.shape[-1])), value)
    floor = floor.to(out.dtype).contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _HeadLogProb.apply(*args, floor, kind, n, shape)
    return torch.ops.torchmdn.head_forward(*args[:1], floor, value, kind, n, False)[0].view(shape)


def heads_log_prob(
    out: Tensor, heads: Sequence[tuple[int, int, Tensor]], value: Tensor
) -> Tensor | None:
    """``log p(value)`` under several MDN heads whose outputs sit side by side in
    ``out (N, W)``, one column per head ``(N, heads)``, or ``None`` where the kernel does not
    apply (it needs ``value (N, d)``, one row per output row, and ``W`` the heads' widths).

    ``heads`` holds each head's ``(kind, n_components, floor)`` in the order of its columns.
    One autograd node and one kernel call for all of them in each direction: a call per head
    (forward and backward, batch 128, the six one-column heads of ``n_components="auto"``)
    took 233 us against 86 us for one head of all 43 components.
    """
    if not _ready(out) or out.dim() != 2 or value.dim() != 2 or value.shape[0] != out.shape[0]:
        return None
    d = value.shape[-1]
    widths = [head_width(kind, n, d) for kind, n, _ in heads]
    if sum(widths) != out.shape[-1] or value.dtype != out.dtype:
        return None
    columns = (
        [kind for kind, _, _ in heads],
        [n for _, n, _ in heads],
        [floor.to(out.dtype).contiguous() for _, _, floor in heads],
    )
    out, value = out.contiguous(), value.contiguous()
    if torch.is_grad_enabled() and (out.requires_grad or value.requires_grad):
        return _HeadsLogProb.apply(out, value, columns, widths)
    return _heads_call(out, value, columns, False)[0].t()


def _heads_call(
    out: Tensor, value: Tensor, columns: tuple[list[int], list[int], list[Tensor]], keep: bool
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The kernel's forward pass over every head (``columns``: the heads' kinds, component
    counts and floors): ``log p`` ``(heads, N)`` and each head's ``r`` and ``p`` (what the
    backward pass needs, when ``keep``)."""
    kinds, ns, floors = columns
    return torch.ops.torchmdn.heads_forward(out, floors, value, kinds, ns, keep)


def _reference(kind: int, transposed: bool, P: int, floor: Tensor):
    """The plain-autograd function of the kernel's inputs (for double backward)."""

    def fn(logits: Tensor, loc: Tensor, fac: Tensor, value: Tensor) -> Tensor:
        value = value.view(-1, P, value.shape[-1])
        if kind in (DIAGONAL, ISOTROPIC):
            return reference.diag_log_prob(logits, loc, fac, value, kind == ISOTROPIC)
        if kind == PACKED:
            return reference.tril_log_prob(logits, loc, unpack_precision(fac, floor), value)
        if kind == PRECISION:
            return reference.tril_log_prob(logits, loc, fac, value)
        return reference.scale_tril_log_prob(logits, loc, fac.mT if transposed else fac, value)

    return fn


def _head_reference(kind: int, n: int, floor: Tensor):
    """The plain-autograd function of a head's output and the values (for double backward)."""

    def fn(out: Tensor, value: Tensor) -> Tensor:
        d = value.shape[-1]
        logits, loc, scale = head_parameters(out, floor, kind, n, d)
        return _reference(kind, False, out.shape[0], floor)(logits, loc, scale, value)

    return fn


class _LogProb(torch.autograd.Function):
    """Value rows ``[N, d]`` against parameter rows ``[P, ...]`` (row ``i`` uses parameter
    row ``i % P``); ``log p`` returned in ``shape``."""

    @staticmethod
    def forward(ctx, logits, loc, fac, value, floor, kind, transposed, shape):
        out, r, p = torch.ops.torchmdn.mixture_forward(
            logits, loc, fac, floor, value, kind, transposed, True
        )
        ctx.kind, ctx.transposed = kind, transposed
        ctx.save_for_backward(logits, loc, fac, value, floor, r, p)
        return out.view(shape)

    @staticmethod
    def backward(ctx, g):
        logits, loc, fac, value, floor, r, p = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph
            fn = _reference(ctx.kind, ctx.transposed, logits.shape[0], floor)
            inputs = (logits, loc, fac, value)
            return reference.grads(fn, inputs, g.reshape(-1, logits.shape[0])) + (None,) * 4
        grads = torch.ops.torchmdn.mixture_backward(
            g.reshape(-1), r, p, logits, loc, fac, floor, value, ctx.kind, ctx.transposed
        )
        return _wanted(ctx, grads) + (None,) * 4


class _HeadLogProb(torch.autograd.Function):
    """A head's output rows ``[P, F]`` and value rows ``[N, d]``; ``log p`` in ``shape``."""

    @staticmethod
    def forward(ctx, out, value, floor, kind, n, shape):
        lp, r, p = torch.ops.torchmdn.head_forward(out, floor, value, kind, n, True)
        ctx.kind, ctx.n = kind, n
        ctx.save_for_backward(out, value, floor, r, p)
        return lp.view(shape)

    @staticmethod
    def backward(ctx, g):
        out, value, floor, r, p = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph
            fn = _head_reference(ctx.kind, ctx.n, floor)
            return reference.grads(fn, (out, value), g.reshape(-1, out.shape[0])) + (None,) * 4
        grads = torch.ops.torchmdn.head_backward(
            g.reshape(-1), r, p, out, floor, value, ctx.kind, ctx.n
        )
        return _wanted(ctx, grads) + (None,) * 4


class _HeadsLogProb(torch.autograd.Function):
    """Several heads' output rows side by side ``[N, W]`` and value rows ``[N, d]``;
    ``log p`` per head ``[N, heads]``."""

    @staticmethod
    def forward(ctx, out, value, columns, widths):
        lp, r, p = _heads_call(out, value, columns, True)
        ctx.columns, ctx.widths = columns, widths
        ctx.save_for_backward(out, value, *r, *p)
        return lp.t()

    @staticmethod
    def backward(ctx, g):
        out, value, *rp = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference graph

            def fn(out: Tensor, value: Tensor) -> Tensor:
                pieces = zip(out.split(ctx.widths, -1), *ctx.columns, strict=True)
                return torch.stack(
                    [
                        _head_reference(k, n, fl)(part, value).reshape(-1)
                        for part, k, n, fl in pieces
                    ],
                    -1,
                )

            return reference.grads(fn, (out, value), g) + (None, None)
        kinds, ns, floors = ctx.columns
        heads = len(kinds)
        grads = torch.ops.torchmdn.heads_backward(
            g.t(), rp[:heads], rp[heads:], out, floors, value, kinds, ns
        )
        return _wanted(ctx, grads) + (None, None)


def _wanted(ctx, grads: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    return tuple(t if want else None for t, want in zip(grads, ctx.needs_input_grad, strict=False))
