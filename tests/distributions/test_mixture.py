"""GaussianMixture against independent float64 oracles (torch MixtureSameFamily, SciPy)."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import MixtureSameFamily

from torchmdn import GaussianMixture
from torchmdn.errors import InputError, TorchMDNError

F64 = torch.float64
KINDS = ("diagonal", "isotropic", "full")
BATCHES = [(), (1,), (7,), (2, 3)]


def make(kind, batch, n, d, dtype=F64, scale_range=(0.2, 1.5), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, n, generator=g, dtype=dtype)
    loc = 2 * torch.randn(*batch, n, d, generator=g, dtype=dtype)
    lo, hi = scale_range
    if kind == "diagonal":
        return GaussianMixture(
            logits, loc, scale=lo + (hi - lo) * torch.rand(*batch, n, d, generator=g, dtype=dtype)
        )
    if kind == "isotropic":
        return GaussianMixture(
            logits, loc, scale=lo + (hi - lo) * torch.rand(*batch, n, generator=g, dtype=dtype)
        )
    a = torch.randn(*batch, n, d, d, generator=g, dtype=dtype)
    cov = a @ a.mT / d + lo**2 * torch.eye(d, dtype=dtype)
    return GaussianMixture(logits, loc, scale_tril=torch.linalg.cholesky(cov))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_log_prob_matches_torch_oracle(kind, batch, n, d):
    gm = make(kind, batch, n, d)
    oracle = gm.to_torch()
    assert isinstance(oracle, MixtureSameFamily)
    y = gm.sample((4,)) + 0.3 * torch.randn(4, *batch, d, dtype=F64)
    got, want = gm.log_prob(y), oracle.log_prob(y)
    assert got.shape == want.shape == (4, *batch)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    # batch_shape / event_shape / sample shape follow torch's rules
    assert gm.batch_shape == torch.Size(batch) and gm.event_shape == torch.Size((d,))
    assert gm.sample().shape == (*batch, d)
    assert gm.sample((2, 5)).shape == (2, 5, *batch, d)
    torch.testing.assert_close(gm.mean, oracle.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.variance, oracle.variance, rtol=1e-12, atol=1e-12)


def test_log_prob_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    gm = make("full", (), 3, 2)
    y = torch.tensor([[0.3, -1.0], [2.0, 1.0]], dtype=F64)
    w = gm.probs.numpy()
    cov = gm.component_covariance.numpy()
    want = np.log(
        sum(
            w[i] * stats.multivariate_normal(gm.loc[i].numpy(), cov[i]).pdf(y.numpy())
            for i in range(3)
        )
    )
    np.testing.assert_allclose(gm.log_prob(y).numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_covariance_matrix_matches_law_of_total_variance(kind):
    gm = make(kind, (3,), 4, 3)
    p, mu, cov = gm.probs, gm.loc, gm.component_covariance
    m = (p[..., None] * mu).sum(-2)
    second = (p[..., None, None] * (cov + mu[..., :, None] * mu[..., None, :])).sum(-3)
    torch.testing.assert_close(gm.covariance_matrix, second - m[..., :, None] * m[..., None, :])
    torch.testing.assert_close(gm.variance, gm.covariance_matrix.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(gm.stddev, gm.variance.sqrt())


@pytest.mark.parametrize("kind", KINDS)
def test_sample_moments_within_monte_carlo_tolerance(kind):
    gm = make(kind, (2,), 3, 2)
    n = 200_000
    s = gm.sample((n,), generator=torch.Generator().manual_seed(1))
    sd = gm.stddev
    # the sample mean has standard error sd/sqrt(n): 5 standard errors is a 1-in-a-million miss
    assert ((s.mean(0) - gm.mean).abs() <= 5 * sd / math.sqrt(n)).all()
    emp = torch.einsum("nbi,nbj->bij", s - s.mean(0), s - s.mean(0)) / (n - 1)
    # covariance entries: standard error about sqrt(E[(xi xj)^2]/n); a 3% relative band is > 5 SE here
    torch.testing.assert_close(
        emp, gm.covariance_matrix, rtol=0.03, atol=0.03 * sd.max().item() ** 2
    )


def test_sample_component_frequencies_match_weights():
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3], dtype=F64))
    loc = torch.tensor([[-100.0], [0.0], [100.0]], dtype=F64)
    gm = GaussianMixture(logits, loc, scale=torch.ones(3, 1, dtype=F64))
    s = gm.sample((100_000,), generator=torch.Generator().manual_seed(0))
    freq = torch.stack(
        [
            (s < -50).double().mean(),
            ((s > -50) & (s < 50)).double().mean(),
            (s > 50).double().mean(),
        ]
    )
    # binomial standard error <= 0.0016; 5 SE
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3], dtype=F64), atol=0.008, rtol=0)


def test_sample_is_reproducible_with_generator_and_does_not_touch_global_rng():
    gm = make("diagonal", (4,), 3, 2)
    state = torch.get_rng_state()
    a = gm.sample((10,), generator=torch.Generator().manual_seed(5))
    b = gm.sample((10,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)


def test_zero_weight_component_is_never_sampled():
    logits = torch.tensor([0.0, -math.inf, 0.0])
    loc = torch.tensor([[0.0], [1e6], [1.0]])
    gm = GaussianMixture(logits, loc, scale=torch.ones(3, 1))
    assert (gm.sample((50_000,)).abs() < 1e3).all()


@pytest.mark.parametrize("kind", KINDS)
def test_temperature(kind):
    gm = make(kind, (5,), 4, 2)
    # temperature 0: the mean of the most probable component
    top = gm.loc.gather(-2, gm.logits.argmax(-1)[..., None, None].expand(5, 1, 2)).squeeze(-2)
    torch.testing.assert_close(gm.sample((3,), temperature=0.0), top.expand(3, 5, 2))
    # small temperature concentrates near that mean; scale shrinks like sqrt(tau)
    s = gm.sample((2000,), temperature=1e-6)
    assert ((s - top).abs() < 0.05).float().mean() > 0.99
    with pytest.raises(InputError, match="temperature"):
        gm.sample(temperature=-1.0)


def test_affine_is_exact_change_of_units():
    for kind in KINDS:
        gm = make(kind, (3,), 4, 2)
        a = torch.tensor([2.5, -0.5], dtype=F64)
        b = torch.tensor([10.0, -3.0], dtype=F64)
        t = gm.affine(a, b)
        y = gm.sample((6,))
        # change of variables: log p_T(a y + b) = log p(y) - sum log|a|
        torch.testing.assert_close(
            t.log_prob(a * y + b), gm.log_prob(y) - a.abs().log().sum(), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(t.mean, a * gm.mean + b)
        torch.testing.assert_close(
            t.covariance_matrix, gm.covariance_matrix * a[:, None] * a[None, :]
        )
    iso = make("isotropic", (), 2, 3)
    assert iso.affine(2.0, 1.0).covariance_type == "isotropic"
    assert iso.affine(torch.tensor([1.0, 2.0, 3.0], dtype=F64)).covariance_type == "diagonal"
    with pytest.raises(InputError, match="non-zero"):
        iso.affine(0.0)


def test_expand():
    gm = make("full", (3,), 2, 2)
    e = gm.expand((4, 3))
    assert e.batch_shape == (4, 3)
    y = torch.randn(4, 3, 2, dtype=F64)
    torch.testing.assert_close(e.log_prob(y), gm.log_prob(y))
    assert e.sample((2,)).shape == (2, 4, 3, 2)


def test_views_and_properties():
    gm = make("diagonal", (2,), 3, 4)
    assert gm.mixture_distribution.batch_shape == (2,)
    assert gm.component_distribution.batch_shape == (2, 3)
    assert gm.component_distribution.event_shape == (4,)
    assert gm.n_components == 3 and gm.covariance_type == "diagonal"
    torch.testing.assert_close(gm.probs.sum(-1), torch.ones(2, dtype=F64))
    assert "GaussianMixture" in repr(gm)
    assert "scale" in gm.arg_constraints


def test_broadcasting_parameters():
    loc = torch.randn(5, 3, 2)
    gm = GaussianMixture(torch.zeros(3), loc, scale=torch.ones(3, 2))  # shared logits and scales
    assert gm.batch_shape == (5,)
    torch.testing.assert_close(
        gm.log_prob(torch.zeros(5, 2)), gm.to_torch().log_prob(torch.zeros(5, 2))
    )


def test_n_equals_d_scale_is_resolved_by_rank():
    loc = torch.randn(3, 3)
    assert (
        GaussianMixture(torch.zeros(3), loc, scale=torch.ones(3, 3)).covariance_type == "diagonal"
    )
    assert GaussianMixture(torch.zeros(3), loc, scale=torch.ones(3)).covariance_type == "isotropic"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_extreme_scales_stay_finite_and_exact(kind, scale):
    gm = make(kind, (4,), 3, 2, scale_range=(scale, 2 * scale))
    gm = gm.affine(1.0, 0.0)
    y = gm.sample((3,))
    got = gm.log_prob(y)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gm.to_torch().log_prob(y), rtol=1e-9, atol=0)


def test_log_prob_far_from_every_component_is_finite():
    gm = GaussianMixture(
        torch.zeros(2), torch.tensor([[0.0], [1.0]]), scale=torch.full((2, 1), 0.01)
    )
    lp = gm.log_prob(torch.tensor([[50.0]]))
    assert torch.isfinite(lp).all() and lp.item() < -1e6


def test_float32_gradients_flow_to_every_parameter():
    logits = torch.randn(4, 3, requires_grad=True)
    loc = torch.randn(4, 3, 2, requires_grad=True)
    scale = (torch.rand(4, 3, 2) + 0.5).requires_grad_()
    GaussianMixture(logits, loc, scale=scale).log_prob(torch.randn(4, 2)).sum().backward()
    for p in (logits, loc, scale):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2)), "exactly one of"),
        (
            dict(logits=torch.zeros(3), loc=torch.zeros(3), scale=torch.ones(3)),
            "loc must have shape",
        ),
        (
            dict(logits=torch.zeros(2), loc=torch.zeros(3, 2), scale=torch.ones(3, 2)),
            "logits must have shape",
        ),
        (
            dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=torch.ones(3, 5)),
            "scale must have shape",
        ),
        (
            dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale_tril=torch.ones(3, 2)),
            "scale_tril must have shape",
        ),
        (
            dict(logits=torch.zeros(4, 3), loc=torch.zeros(5, 3, 2), scale=torch.ones(3, 2)),
            "do not broadcast",
        ),
        (dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale=-torch.ones(3, 2)), "positive"),
        (
            dict(logits=torch.zeros(3), loc=torch.full((3, 2), math.nan), scale=torch.ones(3, 2)),
            "finite",
        ),
        (
            dict(
                logits=torch.tensor([0.0, math.nan, 0.0]),
                loc=torch.zeros(3, 2),
                scale=torch.ones(3, 2),
            ),
            "NaN",
        ),
        (
            dict(logits=torch.zeros(3), loc=torch.zeros(3, 2), scale_tril=torch.ones(3, 2, 2)),
            "lower triangular",
        ),
        (
            dict(
                logits=torch.zeros(3),
                loc=torch.zeros(3, 2),
                scale_tril=-torch.eye(2).expand(3, 2, 2),
            ),
            "positive diagonal",
        ),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, match):
    with pytest.raises(TorchMDNError, match=match):
        GaussianMixture(**kwargs, validate_args=True)


def test_validation_can_be_switched_off_per_instance():
    gm = GaussianMixture(
        torch.zeros(2), torch.zeros(2, 1), scale=-torch.ones(2, 1), validate_args=False
    )
    assert gm.batch_shape == ()


def test_log_prob_validates_value_shape():
    gm = make("diagonal", (), 2, 3)
    gm._validate_args = True
    with pytest.raises(ValueError):
        gm.log_prob(torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("validate_args", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_a_value_without_the_event_axis_is_refused_with_both_shapes_and_the_fix(
    kind, validate_args
):
    # y of shape (N,) against a batch (N,) of 1-d mixtures broadcasts to (N, N) numbers
    # that mean nothing; every method that takes a value refuses it, whatever validate_args
    torch.manual_seed(0)
    gm = make(kind, (6,), 3, 1)
    gm = type(gm)(gm.logits, gm.loc, gm.scale, gm.scale_tril, validate_args=validate_args)
    y = torch.randn(6, 1, dtype=F64)
    for method in (gm.log_prob, gm.joint_log_prob, gm.cdf):
        with pytest.raises(InputError) as info:
            method(y[:, 0])
        message = str(info.value)
        assert "(6,)" in message and "(..., 6, 1)" in message and "reshape(-1, 1)" in message
        assert method(y).shape[0] == 6  # the right shape still works
    d2 = make(kind, (4,), 2, 2)
    with pytest.raises(InputError, match=r"reshape\(-1, 2\)"):
        d2.log_prob(torch.zeros(4, 3, dtype=F64))


def test_the_event_shape_check_also_guards_a_heads_lazy_output():
    from torchmdn import MDN

    model = MDN(1, 1, hidden=(4,))
    dist = model(torch.zeros(5, 1))
    with pytest.raises(InputError, match=r"has shape \(5,\)"):
        dist.log_prob(torch.zeros(5))


# ---------------------------------------------------------------- devices and dtypes


def _to(gm, device):
    """The same mixture with its parameters on ``device``."""
    if gm.covariance_type == "full":
        return GaussianMixture(gm.logits.to(device), gm.loc.to(device),
                               scale_tril=gm.scale_tril.to(device))  # fmt: skip
    return GaussianMixture(gm.logits.to(device), gm.loc.to(device), scale=gm.scale.to(device))


@pytest.mark.parametrize("kind", KINDS)
def test_every_query_and_metric_runs_on_the_device_and_equals_the_cpu(device, kind):
    from torchmdn import metrics

    cpu = make(kind, (5,), 3, 2)
    gm = _to(cpu, device)
    y = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    yd = y.to(device)

    def same(got, want, **tol):
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), want, **tol)

    same(gm.log_prob(yd), cpu.log_prob(y))
    same(gm.joint_log_prob(yd), cpu.joint_log_prob(y))
    same(gm.marginal(0).cdf(yd[:, :1]), cpu.marginal(0).cdf(y[:, :1]))
    same(gm.mean, cpu.mean)
    same(gm.covariance_matrix, cpu.covariance_matrix)
    same(gm.mode(), cpu.mode(), atol=1e-6, rtol=1e-6)
    same(gm.marginal(0).icdf(0.3), cpu.marginal(0).icdf(0.3), atol=1e-7, rtol=1e-7)
    cond, cond_cpu = gm.condition(1, yd[:, 1:]), cpu.condition(1, y[:, 1:])
    same(cond.log_prob(yd[:, :1]), cond_cpu.log_prob(y[:, :1]))
    for low, high in zip(gm.marginal(1).interval(0.8), cpu.marginal(1).interval(0.8), strict=True):
        same(low, high, atol=1e-7, rtol=1e-7)
    assert len(gm.marginal(0).hdr(0.5)) == 5
    gen = torch.Generator(device=device).manual_seed(0)
    draws = gm.sample((4,), generator=gen)
    assert draws.shape == (4, 5, 2) and draws.device.type == device.type
    again = gm.sample((4,), generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(draws, again)  # seeded on the device: reproducible
    assert gm.entropy(n_samples=200).device.type == device.type
    same(metrics.nll(gm, yd), metrics.nll(cpu, y))
    same(metrics.crps(gm.marginal(0), yd[:, :1]), metrics.crps(cpu.marginal(0), y[:, :1]))
    same(metrics.pit(gm, yd), metrics.pit(cpu, y))
    same(metrics.interval_coverage(gm, yd), metrics.interval_coverage(cpu, y))
    same(metrics.calibration_error(gm, yd), metrics.calibration_error(cpu, y))
    es = metrics.energy_score(gm, yd, n_samples=64, generator=torch.Generator(device=device))
    assert es.device.type == device.type and torch.isfinite(es)


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_under_bf16_autocast_is_float32_on_every_device(device, kind):
    """The dtype contract: autocast does not reach inside log_prob / joint_log_prob; they
    return the promoted dtype of the parameters and the value, at least float32."""
    gm = _to(make(kind, (6,), 3, 2, dtype=torch.float32), device)
    y = torch.randn(6, 2, device=device)
    want = gm.log_prob(y)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = gm.log_prob(y)
        joint = gm.joint_log_prob(y)
        low = _to(make(kind, (6,), 3, 2, dtype=torch.bfloat16), device).log_prob(y.bfloat16())
    assert got.dtype == joint.dtype == low.dtype == torch.float32
    torch.testing.assert_close(got, want)  # the same numbers as without autocast
    with torch.autocast(device.type, dtype=torch.bfloat16):
        assert _to(make(kind, (6,), 3, 2), device).log_prob(y.double()).dtype == F64


def test_tiny_temperature_picks_the_most_probable_component():
    gm = GaussianMixture(torch.tensor([0.0, 1.0]), torch.tensor([[-5.0], [5.0]]), torch.ones(2, 1))
    draws = gm.sample((200,), temperature=1e-40, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(draws).all() and (draws > 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantiles_of_half_precision_mixtures(dtype):
    gm = GaussianMixture(torch.zeros(2, dtype=dtype), torch.tensor([[-1.0], [1.0]], dtype=dtype),
                         torch.ones(2, 1, dtype=dtype))  # fmt: skip
    ref = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
    got = gm.icdf(0.9)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.icdf(0.9), atol=2e-2, rtol=1e-2)
    low, high = gm.interval(0.9)
    assert low.dtype == dtype and float(low) < 0 < float(high)


def test_a_mixture_of_zero_rows():
    gm = GaussianMixture(torch.zeros(0, 2), torch.zeros(0, 2, 1), torch.ones(0, 2, 1),
                         validate_args=True)  # fmt: skip
    assert gm.batch_shape == (0,) and gm.sample((3,)).shape == (3, 0, 1)
    assert gm.log_prob(torch.zeros(0, 1)).shape == (0,) and gm.icdf(0.5).shape == (0, 1)
