"""The GPU likelihood (torchmdn.ops.compiled): its maths against the plain-autograd
reference, and, compiled on the CPU (where torch.compile also works), equal to the eager
path without recompiling for a new batch size."""

import pytest
import torch
from torch._dynamo.utils import counters

from torchmdn import GaussianMixture
from torchmdn.nn.mdn import MDNHead
from torchmdn.ops import compiled, layout, reference
from torchmdn.ops import kernel as kernels

F64 = torch.float64


def rows(kind, N, n, d, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, n, generator=g, dtype=dtype)
    loc = torch.randn(N, n, d, generator=g, dtype=dtype)
    value = torch.randn(N, d, generator=g, dtype=dtype)
    if kind == layout.DIAGONAL:
        fac = 0.5 + torch.rand(N, n, d, generator=g, dtype=dtype)
    elif kind == layout.ISOTROPIC:
        fac = 0.5 + torch.rand(N, n, generator=g, dtype=dtype)
    else:
        off = 0.3 * torch.randn(N, n, d, d, generator=g, dtype=dtype).tril(-1)
        fac = off + torch.diag_embed(0.5 + torch.rand(N, n, d, generator=g, dtype=dtype))
    return logits, loc, fac, value


def ref(kind, logits, loc, fac, value):
    if kind == layout.PRECISION:
        return reference.tril_log_prob(logits, loc, fac, value)
    return reference.diag_log_prob(logits, loc, fac, value, kind == layout.ISOTROPIC)


@pytest.mark.parametrize("kind", [layout.DIAGONAL, layout.ISOTROPIC, layout.PRECISION])
def test_forward_and_backward_match_the_reference(kind):
    inputs = [t.requires_grad_() for t in rows(kind, 7, 3, 2)]
    g = torch.randn(7, dtype=F64)
    want = ref(kind, *inputs)
    want_grads = torch.autograd.grad(want, inputs, g)
    with torch.no_grad():
        got = compiled._forward(*inputs, kind)
        got_grads = compiled._backward(*inputs, g, kind)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("covariance", ["diagonal", "isotropic", "full"])
def test_head_backward_is_the_gradient_of_the_head_forward(covariance):
    head = MDNHead(4, 3, 2, covariance).double()
    out = head.linear(torch.randn(5, 4, dtype=F64)).detach().requires_grad_()
    out = out + 0.3 * torch.randn_like(out)  # off-diagonal factor entries not zero
    out = out.detach().requires_grad_()
    value = torch.randn(5, 3, dtype=F64, requires_grad=True)
    kind, floor = layout.HEAD_KINDS[covariance], head.scale_floor.double()
    if covariance == "isotropic":  # one floor (as the head's forward passes it)
        floor = floor.max()[None]
    g = torch.randn(5, dtype=F64)
    want = compiled._head_forward(out, floor, value, kind, 2)
    want_grads = torch.autograd.grad(want, (out, value), g)
    with torch.no_grad():
        got_grads = compiled._head_backward(out, floor, value, g, kind, 2)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)
    # and the forward is the mixture the head describes
    gm = GaussianMixture.from_head_output(out.detach(), floor, covariance, 2, 3)
    torch.testing.assert_close(want.detach(), gm._log_prob_reference(value.detach()))


@pytest.fixture
def on_cpu(monkeypatch):
    """The compiled path on the CPU (the C++ kernel off), fresh compilations and counters."""
    monkeypatch.setattr(compiled, "DEVICES", {"cpu", "cuda"})
    monkeypatch.setattr(compiled, "_compiled", {})
    monkeypatch.setitem(compiled._state, "failed", None)
    monkeypatch.setattr(kernels, "_USE_KERNEL", False)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_head_equals_eager_and_a_new_batch_size_does_not_recompile(on_cpu):
    """One MDN head, float32, fwd + bwd at two batch sizes: results equal to the eager
    tensor path, one graph per direction (the batch dimension is dynamic)."""
    torch.manual_seed(0)
    head = MDNHead(8, 2, 4, "diagonal")
    for batch in (64, 37):
        h = torch.randn(batch, 8)
        y = torch.randn(batch, 2)
        gm = head(h)
        lp = gm.log_prob(y)
        grads = torch.autograd.grad(lp.sum(), head.parameters())
        with torch.no_grad():  # the eager reference from the same output
            out = head.linear(h)
        out.requires_grad_()
        want = GaussianMixture.from_head_output(out, head.scale_floor, "diagonal", 4, 2)
        compiled.DEVICES.discard("cpu")
        want_lp = want.log_prob(y)
        compiled.DEVICES.add("cpu")
        torch.testing.assert_close(lp, want_lp, rtol=1e-5, atol=1e-5)
        (g_out,) = torch.autograd.grad(want_lp.sum(), out)
        torch.testing.assert_close(grads[0], g_out.T @ h, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grads[1], g_out.sum(0), rtol=1e-4, atol=1e-4)
    assert compiled._state["failed"] is None
    assert set(compiled._compiled) == {"head_forward", "head_backward"}
    # one graph for the forward, one for the backward, reused by the second batch size
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_compiled_full_covariance_and_double_backward(on_cpu):
    logits, loc, fac, value = (t.requires_grad_() for t in rows(layout.PRECISION, 16, 3, 2))
    gm = GaussianMixture.from_precision_tril(logits, loc, fac, validate_args=False)
    lp = gm.log_prob(value)
    want = reference.tril_log_prob(logits, loc, fac, value)
    torch.testing.assert_close(lp, want)
    (gv,) = torch.autograd.grad(lp.sum(), value, create_graph=True)
    (gv_want,) = torch.autograd.grad(want.sum(), value, create_graph=True)
    torch.testing.assert_close(gv, gv_want)
    (hv,) = torch.autograd.grad(gv.sum(), loc)  # second order through the plain functions
    (hv_want,) = torch.autograd.grad(gv_want.sum(), loc)
    torch.testing.assert_close(hv, hv_want)
    assert set(compiled._compiled) == {"forward"}


def test_a_failed_compilation_warns_once_and_falls_back(monkeypatch, on_cpu):
    def broken(fn, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    inputs = rows(layout.DIAGONAL, 5, 2, 1)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        out = compiled.log_prob(layout.DIAGONAL, *inputs)
    torch.testing.assert_close(out, ref(layout.DIAGONAL, *inputs))
    assert not compiled.available("cpu")  # switched off from then on: no second warning
    assert compiled.log_prob(layout.DIAGONAL, *inputs) is None


def test_it_does_not_apply_off_its_devices_or_to_broadcast_inputs(monkeypatch):
    inputs = rows(layout.DIAGONAL, 5, 2, 1)
    assert compiled.log_prob(layout.DIAGONAL, *inputs) is None  # the CPU is not listed
    monkeypatch.setattr(compiled, "DEVICES", {"cpu"})
    logits, loc, fac, value = inputs
    # a sample dimension in front of the batch: the tensor path's job
    assert compiled.log_prob(layout.DIAGONAL, logits, loc, fac, value.expand(3, 5, 1)) is None
    assert compiled.log_prob(layout.CHOLESKY, logits, loc, fac, value) is None
    monkeypatch.setenv("TORCHMDN_COMPILE", "0")
    assert compiled.log_prob(layout.DIAGONAL, *inputs) is None


@pytest.mark.parametrize("kind", [layout.DIAGONAL, layout.ISOTROPIC, layout.PRECISION])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_likelihood_on_each_device_matches_the_reference(device, kind, dtype):
    """Whatever path the device takes (CPU: the C++ kernel; CUDA: the compiled functions),
    log_prob and its gradients equal the float64 reference, for two batch sizes."""
    for batch in (33, 20):
        cpu = rows(kind, batch, 4, 3, dtype=F64, seed=batch)
        want_inputs = [t.clone().requires_grad_() for t in cpu]
        want = ref(kind, *want_inputs)
        want_grads = torch.autograd.grad(want.sum(), want_inputs)
        inputs = [t.to(device, dtype).requires_grad_() for t in cpu]
        logits, loc, fac, value = inputs
        if kind == layout.PRECISION:
            gm = GaussianMixture.from_precision_tril(logits, loc, fac, validate_args=False)
        else:
            gm = GaussianMixture(logits, loc, scale=fac, validate_args=False)
        got = gm.log_prob(value)
        grads = torch.autograd.grad(got.sum(), inputs)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
        assert got.device.type == device.type and got.dtype == dtype
        torch.testing.assert_close(got.cpu().double(), want.detach(), **tol)
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a.cpu().double(), b, **tol)


@pytest.mark.parametrize("covariance", ["diagonal", "isotropic", "full"])
def test_a_heads_likelihood_on_each_device_matches_the_cpu(device, covariance):
    torch.manual_seed(0)
    head = MDNHead(6, 3, 4, covariance)
    there = MDNHead(6, 3, 4, covariance).to(device)
    there.load_state_dict(head.state_dict())
    h, y = torch.randn(50, 6), torch.randn(50, 3)
    want = head(h).log_prob(y)
    want_grad = torch.autograd.grad(want.sum(), head.linear.weight)[0]
    got = there(h.to(device)).log_prob(y.to(device))
    got_grad = torch.autograd.grad(got.sum(), there.linear.weight)[0]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad.cpu(), want_grad, rtol=1e-4, atol=1e-4)
