"""The compiled CPU kernel (torchmdn.ops.kernel, csrc/mixture.cpp) against the tensor-level path.

The tensor-level Functions of torchmdn.ops.fused are themselves checked against plain autograd
and torch.distributions (test_fused.py, test_distributions.py); here the kernel must give the
same values and gradients on a grid of shapes, layouts, scales and edge cases, and fall back
cleanly where it cannot run.
"""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from torchmdn import GaussianMixture
from torchmdn.ops import fused, layout
from torchmdn.ops import kernel as kernels

F64, F32 = torch.float64, torch.float32
KINDS = (layout.DIAGONAL, layout.ISOTROPIC, layout.PRECISION, layout.CHOLESKY, layout.PACKED)


def floor(loc):
    """The per-dimension floor of a packed (head's) precision factor."""
    return 0.01 * torch.arange(1, loc.shape[-1] + 1, dtype=loc.dtype)


FUNCTION = {
    layout.DIAGONAL: lambda *t: fused.diag_log_prob(*t),
    layout.ISOTROPIC: lambda *t: fused.diag_log_prob(*t, isotropic=True),
    layout.PRECISION: fused.tril_log_prob,
    layout.CHOLESKY: fused.scale_tril_log_prob,
    layout.PACKED: lambda lg, mu, pk, y: fused.packed_log_prob(lg, mu, pk, floor(mu), y),
}
# (sample shape, batch shape, n, d): d = 1, n = 1, batch of 1, no batch, samples, many tasks
SHAPES = [
    ((), (), 1, 1),
    ((), (1,), 1, 1),
    ((), (3,), 2, 3),
    ((), (4096,), 5, 1),
    ((), (7, 3), 4, 5),
    ((2,), (7, 3), 4, 5),
    ((50,), (), 3, 2),
    ((3,), (5,), 8, 12),
    ((), (20000,), 2, 2),
    ((2,), (3,), 60, 40),  # one row holds more than a tile (2048 entries)
]


def mixture(kind, batch, n, d, dtype=F64, seed=0, scale=1.0):
    """Random parameters (requiring grad); ``scale`` multiplies every length."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(*batch, n, generator=g, dtype=dtype)
    loc = scale * torch.randn(*batch, n, d, generator=g, dtype=dtype)
    if kind == layout.DIAGONAL:
        fac = scale * (0.3 + torch.rand(*batch, n, d, generator=g, dtype=dtype))
    elif kind == layout.ISOTROPIC:
        fac = scale * (0.3 + torch.rand(*batch, n, generator=g, dtype=dtype))
    elif kind == layout.PACKED:  # raw head outputs; diagonal A_jj = 1 / (softplus + floor)
        fac = torch.randn(*batch, n, d * (d + 1) // 2, generator=g, dtype=dtype) / scale
        fac[..., torch.arange(d) * (torch.arange(d) + 3) // 2] += 2 * math.log(scale)
    else:
        a = torch.randn(*batch, n, d, d, generator=g, dtype=dtype) / d**0.5
        chol = scale * torch.linalg.cholesky(a @ a.mT + 0.5 * torch.eye(d, dtype=dtype))
        fac = torch.linalg.inv(chol).tril() if kind == layout.PRECISION else chol
    return [t.requires_grad_() for t in (logits, loc, fac)]


def value_and_grads(kind, inputs, use_kernel, seed=1):
    old, kernels._USE_KERNEL = kernels._USE_KERNEL, use_kernel
    try:
        out = FUNCTION[kind](*inputs)
    finally:
        kernels._USE_KERNEL = old
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    wanted = [t for t in inputs if t.requires_grad]
    return out, torch.autograd.grad(out, wanted, g) if wanted else ()


def assert_same(kind, inputs, rtol):
    (out, grads), (ref, ref_grads) = (value_and_grads(kind, inputs, k) for k in (True, False))
    assert out.grad_fn.name() == "_LogProbBackward"
    scale = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * scale)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


def test_kernel_is_built_and_used():
    assert kernels.available(), kernels.status()
    assert "in use" in kernels.status() and ".so" in kernels.status()
    logits, loc, scale = mixture(layout.DIAGONAL, (4,), 3, 2)
    gm = GaussianMixture(logits, loc, scale=scale, validate_args=False)
    assert gm.log_prob(torch.zeros(4, 2, dtype=F64)).grad_fn.name() == "_LogProbBackward"


# the 20000-row batch (several tasks) for the diagonal kinds only: full factors add nothing
GRID = [
    (k, *shape) for k in KINDS for shape in SHAPES if k < layout.PRECISION or shape[1] != (20000,)
]


@pytest.mark.parametrize("kind, sample, batch, n, d", GRID)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_values_and_gradients_equal_the_tensor_path(kind, sample, batch, n, d, dtype):
    logits, loc, fac = mixture(kind, batch, n, d, dtype)
    y = (2 * torch.randn(*sample, *batch, d, dtype=dtype)).requires_grad_()
    assert_same(kind, (logits, loc, fac, y), 1e-12 if dtype == F64 else 2e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_extreme_scales(kind, scale):
    logits, loc, fac = mixture(kind, (64,), 4, 3, F32, scale=scale)
    y = (scale * torch.randn(64, 3)).requires_grad_()
    assert_same(kind, (logits, loc, fac, y), 2e-5)


def test_value_broadcast_against_the_batch_and_a_column_major_cholesky_factor():
    logits, loc, fac = mixture(layout.CHOLESKY, (6,), 3, 4)
    colmajor = fac.detach().mT.contiguous().mT.requires_grad_()  # LAPACK's layout
    assert not colmajor.is_contiguous() and colmajor.mT.is_contiguous()
    y = torch.randn(5, 1, 4, dtype=F64, requires_grad=True)  # broadcasts to (5, 6, 4)
    assert_same(layout.CHOLESKY, (logits, loc, colmajor, y), 1e-12)
    out, (*_, dfac, dy) = value_and_grads(layout.CHOLESKY, (logits, loc, colmajor, y), True)
    assert out.shape == (5, 6) and dy.shape == y.shape and dfac.shape == fac.shape


def test_non_contiguous_parameters():
    logits, loc, scale = mixture(layout.DIAGONAL, (8,), 3, 2)
    loc_t = loc.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not loc_t.is_contiguous()
    assert_same(layout.DIAGONAL, (logits, loc_t, scale, torch.randn(8, 2, dtype=F64)), 1e-12)


def test_gradcheck_through_the_kernel():
    for kind in KINDS:
        logits, loc, fac = mixture(kind, (3,), 2, 2)
        y = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(FUNCTION[kind], (logits, loc, fac, y))
        out = FUNCTION[kind](logits, loc, fac, y)
        assert out.grad_fn.name() == "_LogProbBackward"


@pytest.mark.parametrize("kind", KINDS)
def test_thread_count_does_not_change_a_bit(kind):
    logits, loc, fac = mixture(kind, (20000,), 3, 2, F32)
    y = torch.randn(20000, 2)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(value_and_grads(kind, (logits, loc, fac, y), True))
    finally:
        torch.set_num_threads(before)
    (a, ga), (b, gb) = results
    assert torch.equal(a, b) and all(torch.equal(x, z) for x, z in zip(ga, gb, strict=True))


def test_empty_batch_of_values():
    logits, loc, scale = mixture(layout.DIAGONAL, (), 3, 2)
    out, grads = value_and_grads(
        layout.DIAGONAL, (logits, loc, scale, torch.zeros(0, 2, dtype=F64)), True
    )
    assert out.shape == (0,)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_stays_in_its_row_and_overflow_stays_finite(kind):
    logits, loc, fac = mixture(kind, (4,), 3, 2, F32)
    y = torch.randn(4, 2)
    y[1, 0] = float("nan")
    y[2] = 1e30  # |z|² overflows float32: the lowest float, as on the tensor path, not NaN
    (out, grads), (ref, ref_grads) = (
        value_and_grads(kind, (logits, loc, fac, y), k) for k in (True, False)
    )
    assert torch.isnan(out[1]) and out[2] == torch.finfo(F32).min
    assert torch.isfinite(out[[0, 2, 3]]).all()
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert torch.isfinite(grads[0][[0, 2, 3]]).all()  # logits; loc/scale may overflow too
    for g, want in zip(grads, ref_grads, strict=True):
        if g.dim() == 4:  # the tensor path's masking leaves 0 * inf = NaN above L's diagonal
            g, want = g.tril(), want.tril().nan_to_num(nan=0.0, posinf=torch.inf, neginf=-torch.inf)
        torch.testing.assert_close(g[[0, 2, 3]], want[[0, 2, 3]], equal_nan=True)


def test_parameters_broadcast_among_themselves_take_the_tensor_path():
    logits, loc, scale = mixture(layout.DIAGONAL, (5,), 3, 2)
    shared = loc[:1].detach().clone().requires_grad_()  # one set of means for the batch
    y = torch.randn(5, 2, dtype=F64)
    assert kernels.log_prob(layout.DIAGONAL, logits, shared, scale, y) is None
    out = fused.diag_log_prob(logits, shared, scale, y)
    assert out.grad_fn.name() == "_DiagLogProbBackward"


def test_bfloat16_mixture_runs_the_kernel_in_float32():
    logits, loc, scale = (
        t.detach().to(torch.bfloat16) for t in mixture(layout.DIAGONAL, (9,), 3, 2)
    )
    gm = GaussianMixture(logits, loc, scale=scale, validate_args=False)
    y = torch.randn(9, 2, dtype=torch.bfloat16)
    want = GaussianMixture(logits.float(), loc.float(), scale=scale.float()).log_prob(y.float())
    got = gm.log_prob(y)
    assert got.dtype == F32
    torch.testing.assert_close(got, want)


def test_cached_library_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHMDN_CACHE", str(tmp_path))
    first = kernels.build()
    stamp = first.stat().st_mtime_ns
    assert kernels.build() == first and first.stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "kernels"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


CHECK = """
import warnings, torch
from torchmdn import GaussianMixture
from torchmdn.ops import kernel as kernels
from torchmdn.ops import layout, reference
gm = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
print(round(gm.log_prob(torch.tensor([0.0])).item(), 4))
print(kernels.status())
"""


def test_switched_off_by_the_environment():
    run = _run(CHECK, TORCHMDN_KERNEL="0")
    assert run.returncode == 0, run.stderr
    value, status = run.stdout.splitlines()
    assert value == "-1.4189" and "not in use (TORCHMDN_KERNEL=0)" in status


def test_a_failed_build_warns_once_and_falls_back(tmp_path):
    run = _run(CHECK, CXX="false", TORCHMDN_CACHE=str(tmp_path))
    assert run.returncode == 0, run.stderr
    value, status = run.stdout.splitlines()
    assert value == "-1.4189" and "build failed" in status
    assert run.stderr.count("could not build its compiled CPU kernel") == 1
    assert "TORCHMDN_KERNEL=0" in run.stderr


def test_no_warning_when_the_kernel_builds():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.available()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_one_gaussian_matches_its_closed_form_over_70_decades_of_scale(dtype):
    """log N(μ; μ, σ²) = −log σ − ½ log 2π: the kernel's vectorised log at full precision."""
    sd = torch.logspace(-35, 35, 20001, dtype=F64).to(dtype)
    n = sd.numel()
    zeros = torch.zeros(n, 1, dtype=dtype)
    out = fused.diag_log_prob(zeros, zeros.view(n, 1, 1), sd.view(n, 1, 1), zeros)
    assert (
        out.grad_fn is None
        and kernels.log_prob(0, zeros, zeros.view(n, 1, 1), sd.view(n, 1, 1), zeros) is not None
    )
    truth = -torch.log(sd.double()) - 0.5 * math.log(2 * math.pi)
    scale = truth.abs().clamp_min(1.0)  # round-off of the two terms, not of their difference
    err = ((out.double() - truth).abs() / scale).max().item()
    assert err <= 2 * torch.finfo(dtype).eps, err


# ---------------------------------------------------------------- straight from a head's output

COVARIANCES = ("diagonal", "isotropic", "full")


def head_output(covariance, batch, n, d, dtype=F64, seed=0):
    from torchmdn.nn.mdn import MDNHead

    torch.manual_seed(seed)
    head = MDNHead(6, d, n, covariance_type=covariance).to(dtype)
    head.scale_floor.copy_(0.01 * torch.arange(1, d + 1, dtype=dtype))
    h = torch.randn(*batch, 6, dtype=dtype)
    out = head.linear(h)
    out.data[..., -1] += 25.0  # one raw scale above softplus' threshold (20)
    return head, out.detach().requires_grad_()


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize(
    "sample, batch, n, d", [((), (7,), 3, 2), ((4,), (2, 3), 2, 1), ((), (), 1, 3)]
)
def test_head_output_read_directly_equals_its_split_parameters(covariance, sample, batch, n, d):
    head, out = head_output(covariance, batch, n, d)
    y = torch.randn(*sample, *batch, d, dtype=F64, requires_grad=True)
    floor = head.scale_floor if covariance != "isotropic" else head.scale_floor.max()[None]
    direct = GaussianMixture.from_head_output(out, floor, covariance, n, d)
    lp = direct.log_prob(y)
    assert lp.grad_fn.name() == "_HeadLogProbBackward"
    got = torch.autograd.grad(lp.sum(), (out, y))
    split = GaussianMixture.from_head_output(out, floor, covariance, n, d)
    assert split.loc.shape == batch + (n, d)  # split off: log_prob then runs on them
    lp_split = split.log_prob(y)
    assert lp_split.grad_fn.name() != "_HeadLogProbBackward"
    want = torch.autograd.grad(lp_split.sum(), (out, y))
    torch.testing.assert_close(lp, lp_split, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_head_path_gradcheck_and_second_order(covariance):
    head, out = head_output(covariance, (3,), 2, 2)
    floor = head.scale_floor if covariance != "isotropic" else head.scale_floor.max()[None]
    y = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)

    def fn(out, y):
        return GaussianMixture.from_head_output(out, floor, covariance, 2, 2).log_prob(y)

    assert fn(out, y).grad_fn.name() == "_HeadLogProbBackward"
    assert torch.autograd.gradcheck(fn, (out, y))
    assert torch.autograd.gradgradcheck(fn, (out, y), fast_mode=True)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_mdn_head_float32_kernel_equals_tensor_path(covariance):
    head, out = head_output(covariance, (300,), 4, 3, dtype=F32)
    y = torch.randn(300, 3)
    results = []
    for use in (True, False):
        head.zero_grad()
        old, kernels._USE_KERNEL = kernels._USE_KERNEL, use
        try:
            lp = head(torch.randn(300, 6, generator=torch.Generator().manual_seed(1))).log_prob(y)
            lp.mean().backward()
        finally:
            kernels._USE_KERNEL = old
        results.append(
            (lp.detach(), head.linear.weight.grad.clone(), head.linear.bias.grad.clone())
        )
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * b.abs().max().item())


def heads_output(d, dtype=F64, rows=9):
    """Four heads of different kinds and sizes, their outputs side by side ``(rows, W)``."""
    g = torch.Generator().manual_seed(3)
    spec = [
        (layout.DIAGONAL, 1, 0.05 + 0.1 * torch.rand(d, generator=g, dtype=dtype)),
        (layout.DIAGONAL, 5, 0.05 + 0.1 * torch.rand(d, generator=g, dtype=dtype)),
        (layout.ISOTROPIC, 3, torch.tensor([0.1], dtype=dtype)),
        (layout.PACKED, 2, 0.05 + 0.1 * torch.rand(d, generator=g, dtype=dtype)),
    ]
    width = sum(layout.head_width(kind, n, d) for kind, n, _ in spec)
    out = torch.randn(rows, width, generator=g, dtype=dtype)
    out[0, -1] += 25.0  # a raw scale above softplus' threshold (20)
    y = torch.randn(rows, d, generator=g, dtype=dtype)
    return spec, out.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("rows", [9, 700])  # 700: several tiles of rows per head
@pytest.mark.parametrize("d", [1, 3])
def test_several_heads_in_one_call_equal_each_head_alone(d, rows):
    """Values and gradients of ``fused.heads_log_prob`` (one kernel node for all heads)
    against each head's columns evaluated alone on the tensor-level path."""
    spec, out, y = heads_output(d, rows=rows)
    lp = fused.heads_log_prob(out, spec, y)
    assert lp.grad_fn.name() == "_HeadsLogProbBackward" and lp.shape == (rows, len(spec))
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    got = torch.autograd.grad((lp * w).sum(), (out, y))
    parts = out.split([layout.head_width(kind, n, d) for kind, n, _ in spec], -1)
    old, kernels._USE_KERNEL = kernels._USE_KERNEL, False
    try:
        pieces = zip(parts, spec, strict=True)
        each = torch.stack([fused.head_log_prob(p, fl, k, n, y) for p, (k, n, fl) in pieces], -1)
        assert fused.heads_log_prob(out, spec, y).grad_fn.name() != "_HeadsLogProbBackward"
    finally:
        kernels._USE_KERNEL = old
    want = torch.autograd.grad((each * w).sum(), (out, y))
    torch.testing.assert_close(lp, each, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no graph: the same values
        torch.testing.assert_close(fused.heads_log_prob(out, spec, y), each.detach())


def test_several_heads_gradcheck_second_order_and_where_the_kernel_declines():
    spec, out, y = heads_output(2)

    def fn(out, y):
        return fused.heads_log_prob(out, spec, y)

    assert torch.autograd.gradcheck(fn, (out, y))
    assert torch.autograd.gradgradcheck(fn, (out, y), fast_mode=True)
    # value rows that do not match the output rows, or widths that do not add up: not the kernel
    assert kernels.heads_log_prob(out, spec, y[:1]) is None
    assert kernels.heads_log_prob(out[:, :-1], spec, y) is None
    assert kernels.heads_log_prob(out.float(), spec, y) is None


def test_a_read_only_cache_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # the cache folder cannot be created below a file
    monkeypatch.setenv("TORCHMDN_CACHE", str(blocked))
    monkeypatch.setattr(kernels.tempfile, "tempdir", str(tmp_path / "tmp"))
    path = kernels.build()
    assert path.exists() and path.is_relative_to(tmp_path / "tmp")


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("MARKER"), "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


def _plant(tmp_path, compiler: str, monkeypatch) -> tuple:
    """A shared library whose constructor writes $MARKER, planted where the kernel for
    ``compiler`` would be cached under ``tmp_path`` (with a sidecar that does not match)."""
    monkeypatch.setenv("TORCHMDN_CACHE", str(tmp_path / "cache"))
    path = kernels._library_path(compiler)
    path.parent.mkdir(parents=True)
    src = tmp_path / "planted.c"
    src.write_text("#include <stdlib.h>\n" + PLANTED)
    cc = os.environ.get("CC") or "cc"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "\n")
    return path, tmp_path / "marker"


def test_a_planted_library_is_never_loaded(tmp_path, monkeypatch):
    # the compiler cannot build (CXX=false): the old code loaded whatever sat at the path
    path, marker = _plant(tmp_path, "false", monkeypatch)
    assert not kernels.trusted(path)
    run = _run(CHECK, CXX="false", TORCHMDN_CACHE=str(tmp_path / "cache"), MARKER=str(marker))
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), "the planted library's code ran"
    assert "build failed" in run.stdout.splitlines()[1]


def test_a_planted_library_is_compiled_over(tmp_path, monkeypatch):
    path, marker = _plant(tmp_path, kernels._compiler(), monkeypatch)

    def compile_(cmd, **kw):  # stands in for the compiler (a real build takes a minute here)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"what the compiler built")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(kernels.subprocess, "run", compile_)
    assert kernels.build() == path
    assert path.read_bytes() == b"what the compiler built" and kernels.trusted(path)
    assert not marker.exists()
    path.write_bytes(b"changed afterwards")  # a later change is caught before loading
    assert not kernels.trusted(path)


def test_the_cache_folder_is_private(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o777)
    os.chmod(mine, 0o777)
    kernels._private_folder(mine)
    assert (mine.stat().st_mode & 0o777) == 0o700
    fresh = kernels._private_folder(tmp_path / "new" / "kernels")
    assert (fresh.stat().st_mode & 0o777) == 0o700
    if hasattr(os, "getuid") and os.getuid() == 0:  # as root: a folder of another user
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, -1)
        with pytest.raises(OSError, match="belongs to user 65534"):
            kernels._private_folder(other)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(OSError, match="not a plain folder"):
        kernels._private_folder(link)
