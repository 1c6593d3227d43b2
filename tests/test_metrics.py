"""torchmdn.metrics against independent oracles: properscoring, SciPy quadrature and tests."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from torchmdn import GaussianMixture, metrics
from torchmdn.errors import InputError

F64 = torch.float64
properscoring = pytest.importorskip("properscoring")


def mixture_1d(batch, n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(
        torch.randn(*batch, n, generator=g, dtype=F64),
        scale * 2 * torch.randn(*batch, n, 1, generator=g, dtype=F64),
        scale=scale * (0.2 + torch.rand(*batch, n, 1, generator=g, dtype=F64)),
    )


def numpy_cdf(gm, b):
    w = gm.probs[b].numpy()
    mu = gm.loc[b][:, 0].numpy()
    sd = gm.scale[b][:, 0].numpy()
    return lambda y: np.sum(w * stats.norm.cdf(np.asarray(y)[..., None], mu, sd), axis=-1)


def test_crps_matches_properscoring_quadrature():
    gm = mixture_1d((8,), 4)
    y = torch.linspace(-3, 3, 8, dtype=F64).unsqueeze(-1)
    got = metrics.crps(gm, y, reduction="none")
    assert got.shape == (8,)
    for b in range(8):
        cdf = numpy_cdf(gm, b)
        want = properscoring.crps_quadrature(y[b, 0].item(), cdf, xmin=-20, xmax=20, tol=1e-6)
        assert got[b].item() == pytest.approx(float(want), abs=1e-6)


def test_crps_of_one_gaussian_matches_properscoring_closed_form():
    loc = torch.tensor([[[0.3]], [[-2.0]], [[5.0]]], dtype=F64)
    sd = torch.tensor([[[1e-3]], [[1.0]], [[40.0]]], dtype=F64)
    gm = GaussianMixture(torch.zeros(3, 1, dtype=F64), loc, scale=sd)
    y = torch.tensor([[0.3005], [1.0], [-7.0]], dtype=F64)
    want = properscoring.crps_gaussian(y[:, 0].numpy(), loc[:, 0, 0].numpy(), sd[:, 0, 0].numpy())
    np.testing.assert_allclose(metrics.crps(gm, y, reduction="none").numpy(), want, rtol=1e-10)


def test_crps_against_direct_integral_of_squared_cdf_difference():
    gm = mixture_1d((), 3, seed=4)
    y0 = 0.25
    F = numpy_cdf(gm, ())
    left, _ = integrate.quad(lambda z: F(z) ** 2, -60, y0, epsabs=1e-12, limit=200)
    right, _ = integrate.quad(lambda z: (F(z) - 1) ** 2, y0, 60, epsabs=1e-12, limit=200)
    got = metrics.crps(gm, torch.tensor([y0], dtype=F64))
    assert got.item() == pytest.approx(left + right, abs=1e-8)


def test_reductions_and_nll():
    gm = mixture_1d((5,), 3)
    y = torch.randn(5, 1, dtype=F64)
    per = metrics.nll(gm, y, reduction="none")
    torch.testing.assert_close(per, -gm.log_prob(y))
    torch.testing.assert_close(metrics.nll(gm, y), per.mean())
    torch.testing.assert_close(metrics.nll(gm, y, reduction="sum"), per.sum())
    with pytest.raises(InputError, match="reduction must be one of"):
        metrics.nll(gm, y, reduction="avg")


@pytest.mark.parametrize(
    "fn", [metrics.nll, metrics.crps, metrics.pit, metrics.interval_coverage, metrics.energy_score]
)
def test_wrong_shapes_name_the_expected_shape(fn):
    gm = mixture_1d((5,), 3)
    with pytest.raises(InputError, match=r"\(5, 1\).*got \(5,\).*unsqueeze"):
        fn(gm, torch.zeros(5, dtype=F64))
    with pytest.raises(InputError, match=r"\(5, 1\).*got \(4, 1\)"):
        fn(gm, torch.zeros(4, 1, dtype=F64))


def test_crps_needs_one_dimension():
    gm = GaussianMixture(torch.zeros(2), torch.zeros(2, 2), scale=torch.ones(2, 2))
    with pytest.raises(InputError, match="energy_score"):
        metrics.crps(gm, torch.zeros(2))


def test_energy_score_equals_crps_in_one_dimension_within_monte_carlo_error():
    gm = mixture_1d((50,), 3, seed=1)
    y = gm.sample(generator=torch.Generator().manual_seed(2))
    es = metrics.energy_score(gm, y, reduction="none", n_samples=20_000)
    cr = metrics.crps(gm, y, reduction="none")
    # per-element MC error is about spread / sqrt(N) ~ 3 / 141: a 0.1 band is > 4 SE
    assert (es - cr).abs().max() < 0.1
    assert abs((es - cr).mean().item()) < 0.02
    # reproducible: the default generator is local and seeded
    state = torch.get_rng_state()
    a = metrics.energy_score(gm, y, n_samples=100)
    assert torch.equal(a, metrics.energy_score(gm, y, n_samples=100))
    assert torch.equal(torch.get_rng_state(), state)


def test_energy_score_multivariate_prefers_the_true_model():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(200, 2, 3, generator=g, dtype=F64)
    true = GaussianMixture(
        torch.zeros(200, 2, dtype=F64), loc, scale=torch.ones(200, 2, 3, dtype=F64)
    )
    wrong = GaussianMixture(true.logits, loc + 1.5, scale=true.scale)
    y = true.sample(generator=g)
    assert metrics.energy_score(true, y) < metrics.energy_score(wrong, y)


def test_pit_of_samples_from_the_true_model_is_uniform():
    gm = mixture_1d((2000,), 4, seed=3)
    y = gm.sample(generator=torch.Generator().manual_seed(7))
    u = metrics.pit(gm, y)
    assert u.shape == (2000, 1)
    assert stats.kstest(u[:, 0].numpy(), "uniform").pvalue > 0.01
    # a mis-specified model (too narrow) fails the same test
    narrow = GaussianMixture(gm.logits, gm.loc, scale=gm.scale * 0.5)
    assert stats.kstest(metrics.pit(narrow, y)[:, 0].numpy(), "uniform").pvalue < 1e-6


def test_pit_multivariate_uses_marginals():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, 2, 2, generator=g, dtype=F64)
    tril = torch.linalg.cholesky(a @ a.mT + 0.1 * torch.eye(2, dtype=F64))
    gm = GaussianMixture(
        torch.zeros(3000, 2, dtype=F64),
        torch.randn(3000, 2, 2, generator=g, dtype=F64),
        scale_tril=tril,
    )
    y = gm.sample(generator=g)
    u = metrics.pit(gm, y)
    assert u.shape == (3000, 2)
    for k in range(2):
        assert stats.kstest(u[:, k].numpy(), "uniform").pvalue > 0.01
    torch.testing.assert_close(u[:, 1], gm.marginal([1]).cdf(y[:, 1:]))


def test_interval_coverage_and_calibration_error_on_the_true_model():
    gm = mixture_1d((4000,), 3, seed=5)
    y = gm.sample(generator=torch.Generator().manual_seed(1))
    cov = metrics.interval_coverage(gm, y, level=0.9)
    assert abs(cov.item() - 0.9) < 5 * math.sqrt(0.09 / 4000)
    none = metrics.interval_coverage(gm, y, level=0.9, reduction="none")
    assert none.shape == (4000, 1) and set(none.unique().tolist()) <= {0.0, 1.0}
    ce = metrics.calibration_error(gm, y)
    assert ce.item() < 0.02  # each level's SE <= 0.008
    per = metrics.calibration_error(gm, y, levels=[0.1, 0.5, 0.9], reduction="none")
    assert per.shape == (3, 1)
    overconfident = GaussianMixture(gm.logits, gm.loc, scale=gm.scale * 0.3)
    assert metrics.calibration_error(overconfident, y) > 0.05
    assert metrics.interval_coverage(overconfident, y).item() < 0.7
    with pytest.raises(InputError, match="levels must be probabilities"):
        metrics.calibration_error(gm, y, levels=[0.5, 1.0])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    batch=st.sampled_from([(), (1,), (3,)]),
    log_scale=st.floats(math.log(1e-4), math.log(1e4)),
    seed=st.integers(0, 10_000),
    offset=st.floats(-3, 3),
)
def test_property_crps_is_positive_and_matches_quadrature(n, batch, log_scale, seed, offset):
    s = math.exp(log_scale)
    gm = mixture_1d(batch, n, seed=seed, scale=s)
    y = torch.full((*batch, 1), offset * s, dtype=F64)
    got = metrics.crps(gm, y, reduction="none")
    assert got.shape == batch and (got > 0).all()
    # CRPS scales like the units of y: compare in units of s against quadrature
    b = (0,) * len(batch)
    F = numpy_cdf(gm, b)
    mu, sd = gm.loc[b][:, 0] / s, gm.scale[b][:, 0] / s
    # ∫ (F(z) - 1{z >= y})² dz in units of s, split at y, with the component means as breaks
    lo = min((mu - 12 * sd).min().item(), offset) - 1
    hi = max((mu + 12 * sd).max().item(), offset) + 1
    kw = dict(epsabs=1e-11, epsrel=1e-11, limit=400)
    left = integrate.quad(lambda u: F(u * s) ** 2, lo, offset, **kw)[0]
    right = integrate.quad(lambda u: (1 - F(u * s)) ** 2, offset, hi, **kw)[0]
    want = s * (left + right)
    assert got[b].item() / s == pytest.approx(float(want) / s, abs=1e-6)
