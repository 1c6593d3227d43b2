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
