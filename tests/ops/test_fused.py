"""The fused likelihood (torchmdn.ops.fused): exact gradients, second order, dtypes, compile.

Every test runs twice: through the compiled CPU kernel (torchmdn.ops.kernel) and through the
tensor-level Functions it falls back to.
"""

import pytest
import torch
from torch.distributions import Distribution

import torchmdn.distributions.mixture as tdist
from torchmdn import GaussianMixture
from torchmdn.nn.mdn import MDNHead
from torchmdn.ops import fused, layout, reference
from torchmdn.ops import kernel as kernels

F64 = torch.float64
KINDS = ("diagonal", "isotropic", "full", "precision")


@pytest.fixture(autouse=True, params=["kernel", "tensor"])
def path(request, monkeypatch):
    """Which implementation ``log_prob`` runs; the kernel one records the kinds it ran."""
    if request.param == "kernel":
        assert kernels.available(), kernels.status()
        ran = []
        real = kernels.log_prob

        def spy(kind, *args):
            out = real(kind, *args)
            ran.append(None if out is None else kind)
            return out

        monkeypatch.setattr(kernels, "log_prob", spy)
        return ran
    monkeypatch.setattr(kernels, "_USE_KERNEL", False)
    return None


def backward_name(path, tensor_level: str) -> str:
    return tensor_level if path is None else "_LogProbBackward"


def params(kind, batch, n, d, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, n, generator=g, dtype=dtype)
    loc = torch.randn(*batch, n, d, generator=g, dtype=dtype)
    if kind == "diagonal":
        scale = 0.5 + torch.rand(*batch, n, d, generator=g, dtype=dtype)
    elif kind == "isotropic":
        scale = 0.5 + torch.rand(*batch, n, generator=g, dtype=dtype)
    else:
        off = 0.3 * torch.randn(*batch, n, d, d, generator=g, dtype=dtype).tril(-1)
        scale = off + torch.diag_embed(0.5 + torch.rand(*batch, n, d, generator=g, dtype=dtype))
    return [t.requires_grad_() for t in (logits, loc, scale)]


def build(kind, logits, loc, scale):
    if kind == "full":
        return GaussianMixture(logits, loc, scale_tril=scale, validate_args=False)
    if kind == "precision":
        return GaussianMixture.from_precision_tril(logits, loc, scale, validate_args=False)
    return GaussianMixture(logits, loc, scale=scale, validate_args=False)


def log_prob_fn(kind):
    return lambda logits, loc, scale, y: build(kind, logits, loc, scale).log_prob(y)


CASES = [((), (), 1, 1), ((3,), (), 2, 2), ((), (4,), 3, 2), ((2,), (3,), 2, 3)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sample, batch, n, d", CASES)
def test_gradcheck_and_double_backward_float64(kind, sample, batch, n, d):
    logits, loc, scale = params(kind, batch, n, d)
    y = torch.randn(*sample, *batch, d, dtype=F64, requires_grad=True)
    fn = log_prob_fn(kind)
    assert torch.autograd.gradcheck(fn, (logits, loc, scale, y))
    if (sample, batch) == ((2,), (3,)):
        # second order is supported (the backward falls back to the reference graph)
        assert torch.autograd.gradgradcheck(fn, (logits, loc, scale, y), fast_mode=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_float32_values_and_gradients_equal_the_reference(kind, seed):
    g = torch.Generator().manual_seed(seed)
    batch = tuple(torch.randint(1, 40, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g))
    n, d = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    logits, loc, scale = params(kind, batch, n, d, dtype=torch.float32, seed=seed)
    y = (2 * torch.randn(*batch, d, generator=g)).requires_grad_()
    inputs = (logits, loc, scale, y)

    def grads(use_fused):
        old, tdist._USE_FUSED = tdist._USE_FUSED, use_fused
        try:
            lp = build(kind, logits, loc, scale).log_prob(y)
            return lp, torch.autograd.grad(lp.sum(), inputs)
        finally:
            tdist._USE_FUSED = old

    (lp, got), (lp_ref, want) = grads(True), grads(False)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-6, atol=1e-6 * lp_ref.abs().max().item())
    for a, b in zip(got, want, strict=True):
        # 1e-6 relative to the size of the gradient (entries near 0 get the same absolute slack)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


def test_fused_is_the_default_and_matches_joint_log_prob():
    assert tdist._USE_FUSED
    gm = build("diagonal", *params("diagonal", (5,), 3, 2))
    y = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(gm.log_prob(y), gm.joint_log_prob(y).logsumexp(-1))


def test_precision_factor_and_scale_tril_describe_the_same_mixture():
    logits, loc, prec = (t.detach() for t in params("precision", (4,), 3, 3))
    gm = GaussianMixture.from_precision_tril(logits, loc, prec)
    same = GaussianMixture(logits, loc, scale_tril=gm.scale_tril)  # lazily computed L = A⁻¹
    y = torch.randn(6, 4, 3, dtype=F64)
    torch.testing.assert_close(gm.log_prob(y), same.log_prob(y), rtol=1e-12, atol=0)
    torch.testing.assert_close(gm.log_prob(y), same.to_torch().log_prob(y), rtol=1e-10, atol=0)
    torch.testing.assert_close(gm.scale_tril @ prec, torch.eye(3, dtype=F64).expand(4, 3, 3, 3))
    # affine and expand keep the precision factor (no solve) and stay exact
    gm = GaussianMixture.from_precision_tril(logits, loc, prec)
    a, b = torch.tensor([2.0, -0.5, 3.0], dtype=F64), torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    t = gm.affine(a, b)
    assert "scale_tril" not in t.covariance.stored
    torch.testing.assert_close(
        t.log_prob(a * y + b), gm.log_prob(y) - a.abs().log().sum(), rtol=1e-12, atol=1e-12
    )
    e = gm.expand((2, 4))
    assert "scale_tril" not in e.covariance.stored
    torch.testing.assert_close(e.log_prob(y[:2]), gm.log_prob(y[:2]))


def test_full_head_log_det_is_consistent_with_its_floor():
    head = MDNHead(3, 3, 2, covariance_type="full", min_scale=0.05).double()
    with torch.no_grad():
        head.linear.weight.normal_()
    gm = head(torch.randn(5, 3, dtype=F64))
    assert "scale_tril" not in gm.covariance.stored  # the head's path needs no triangular solve
    assert (gm.scale_tril.diagonal(dim1=-2, dim2=-1) >= 0.05).all()
    assert (gm.variance >= 0.05**2).all()
    y = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(gm.log_prob(y), gm.to_torch().log_prob(y), rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_accumulates_in_float32_and_float64_stays_float64(kind):
    p64 = [t.detach() for t in params(kind, (6,), 3, 2)]
    y = torch.randn(6, 2, dtype=F64)
    p16 = [t.to(torch.bfloat16).requires_grad_() for t in p64]
    lp = build(kind, *p16).log_prob(y.to(torch.bfloat16))
    assert lp.dtype == torch.float32
    exact = build(kind, *(t.double() for t in p16)).log_prob(y.to(torch.bfloat16).double())
    torch.testing.assert_close(lp.double(), exact, rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in p16)
    assert build(kind, *p64).log_prob(y).dtype == F64
    joint = build(kind, *p16).joint_log_prob(y.to(torch.bfloat16))
    assert joint.dtype == torch.float32


def test_far_from_every_component_gradients_stay_finite():
    logits, loc, scale = params("diagonal", (3,), 4, 2, dtype=torch.float32)
    y = torch.full((3, 2), 1e4)
    lp = build("diagonal", logits, loc, scale).log_prob(y)
    lp.sum().backward()
    assert torch.isfinite(lp).all()
    assert all(torch.isfinite(t.grad).all() for t in (logits, loc, scale))


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_torch_compile_head_and_loss_without_graph_breaks(covariance):
    validate = Distribution._validate_args
    try:
        _compile_and_compare(covariance)
    finally:  # dynamo's first use switches torch.distributions validation off globally
        Distribution.set_default_validate_args(validate)


def _compile_and_compare(covariance):
    torch._dynamo.reset()
    head = MDNHead(4, 2, 3, covariance_type=covariance)

    def loss(h, y):
        return -head(h).log_prob(y).mean()

    compiled = torch.compile(loss, fullgraph=True)  # fullgraph: any graph break is an error
    h, y = torch.randn(16, 4), torch.randn(16, 2)
    got = compiled(h, y)
    (g_got,) = torch.autograd.grad(got, head.linear.weight)
    want = loss(h, y)
    (g_want,) = torch.autograd.grad(want, head.linear.weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- full, from scale_tril itself

# (value shape, batch of logits/loc, batch of L): sample dims, value broadcast against the
# batch, L broadcast against loc
TRIL_CASES = [((3, 3), (), (), 2, 3), ((2, 4, 3), (4,), (4,), 3, 3), ((3,), (4,), (), 2, 3)]


def tril_params(value_shape, batch, tril_batch, n, d, dtype=F64, seed=0, upper=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, n, generator=g, dtype=dtype)
    loc = torch.randn(*batch, n, d, generator=g, dtype=dtype)
    off = 0.3 * torch.randn(*tril_batch, n, d, d, generator=g, dtype=dtype)
    tril = off.tril(-1) + upper * off.triu(1)  # entries above the diagonal must be ignored
    tril = tril + torch.diag_embed(0.5 + torch.rand(*tril_batch, n, d, generator=g, dtype=dtype))
    y = 2 * torch.randn(*value_shape, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (logits, loc, tril, y)]


@pytest.mark.parametrize("case", TRIL_CASES)
def test_scale_tril_function_gradcheck_with_sample_and_batch_broadcasting(case, path):
    inputs = tril_params(*case, upper=1.0)
    fn = fused.scale_tril_log_prob
    shared_factor = case[1] != case[2]  # one L for the whole batch: tensor level only
    expected = backward_name(None if shared_factor else path, "_ScaleTrilLogProbBackward")
    assert fn(*inputs).grad_fn.name() == expected
    torch.testing.assert_close(
        fn(*inputs), reference.scale_tril_log_prob(*inputs), rtol=1e-12, atol=1e-12
    )
    assert torch.autograd.gradcheck(fn, tuple(inputs))
    # second order falls back to the reference graph, like the other Functions
    assert torch.autograd.gradgradcheck(fn, tuple(inputs), fast_mode=True)


def test_mixture_from_scale_tril_dispatches_to_the_scale_tril_function(path):
    logits, loc, tril, y = tril_params((5, 4, 3), (4,), (4,), 3, 3)
    gm = GaussianMixture(logits, loc, scale_tril=tril, validate_args=False)
    assert gm.log_prob(y).grad_fn.name() == backward_name(path, "_ScaleTrilLogProbBackward")
    assert "precision_tril" not in gm.covariance.stored  # no inverse was formed
    gm.joint_log_prob(y)  # materialises the precision factor, which is then used
    assert gm.log_prob(y).grad_fn.name() == backward_name(path, "_TrilLogProbBackward")
    if path is not None:
        assert path == [layout.CHOLESKY, layout.PRECISION]
    with torch.no_grad():
        lp = GaussianMixture(logits, loc, scale_tril=tril).log_prob(y)
    torch.testing.assert_close(lp, gm.to_torch().log_prob(y), rtol=1e-10, atol=0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("column_major", [False, True])
def test_scale_tril_float32_values_and_gradients_match_the_reference(seed, column_major):
    """float32 fused and reference paths, both measured against float64.

    The kind="full" case of the float32 test above holds the two paths to 1e-6 of each
    other. Over 120 random shapes here each path is itself up to 2-2.6e-6 (relative to the
    largest entry) off float64 (fused 2.6e-6, reference 2.1e-6; the fused path is the closer
    one in 78% of the tensors), so both are held to 3e-6 of float64 instead of 1e-6 of each
    other, which would be rounding noise against rounding noise.
    """
    g = torch.Generator().manual_seed(100 + seed)
    batch = tuple(int(v) for v in torch.randint(1, 30, (int(seed % 2 + 1),), generator=g))
    sample = (3,) if seed % 3 == 0 else ()
    n, d = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    p64 = tril_params(sample + batch + (d,), batch, batch, n, d, seed=seed)
    # values near the data; far out (|z|² ~ 10³) both paths drift to ~5e-6 in ∂/∂logits
    p64[3] = (0.5 * p64[3].detach() + p64[1].detach()[..., 0, :]).requires_grad_()
    p32 = [t.detach().float() for t in p64]
    if column_major:  # the layout torch.linalg.cholesky returns
        p32[2] = p32[2].mT.contiguous().mT
    p32 = [t.requires_grad_() for t in p32]

    def grads(inputs, use_fused):
        old, tdist._USE_FUSED = tdist._USE_FUSED, use_fused
        try:
            logits, loc, tril, y = inputs
            lp = GaussianMixture(logits, loc, scale_tril=tril, validate_args=False).log_prob(y)
            return (lp, *torch.autograd.grad(lp.sum(), inputs))
        finally:
            tdist._USE_FUSED = old

    exact, got, ref = grads(p64, False), grads(p32, True), grads(p32, False)
    assert got[3].triu(1).eq(0).all()  # entries above the diagonal get no gradient
    for a, b, e in zip(got, ref, exact, strict=True):
        assert a.shape == b.shape == e.shape and a.dtype == torch.float32
        for x in (a, b):
            torch.testing.assert_close(x.double(), e, rtol=0, atol=3e-6 * e.abs().max().item())


def test_scale_tril_double_backward_matches_the_reference():
    logits, loc, tril, y = tril_params((2, 3, 2), (3,), (3,), 2, 2)

    def hvp(use_fused):
        old, tdist._USE_FUSED = tdist._USE_FUSED, use_fused
        try:
            lp = GaussianMixture(logits, loc, scale_tril=tril, validate_args=False).log_prob(y)
            (gy,) = torch.autograd.grad(lp.sum(), y, create_graph=True)
            return torch.autograd.grad(gy.square().sum(), (logits, loc, tril, y))
        finally:
            tdist._USE_FUSED = old

    for a, b in zip(hvp(True), hvp(False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
