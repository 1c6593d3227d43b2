"""Queries on GaussianMixture (cdf, icdf, intervals, marginal, condition, entropy, KL)
against independent float64 oracles: SciPy, torch's MixtureSameFamily, grids, sampling."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from oracles import F64, KINDS, bimodal, make, mixtures_1d, scipy_cdf, scipy_params
from torchmdn import GaussianMixture
from torchmdn.distributions import queries as Q
from torchmdn.errors import InputError

# ---------------------------------------------------------------------- cdf


@pytest.mark.parametrize("kind", KINDS)
def test_cdf_1d_matches_scipy(kind):
    gm = make(kind, (5,), 4, 1)
    y = torch.linspace(-4, 4, 5, dtype=F64).reshape(5, 1)
    got = gm.cdf(y)
    assert got.shape == (5,)
    for b in range(5):
        want = scipy_cdf(*scipy_params(gm, b))(y[b, 0].item())
        assert got[b].item() == pytest.approx(want, abs=1e-14)


@pytest.mark.parametrize("kind", ["diagonal", "isotropic"])
def test_cdf_joint_matches_integrated_samples_and_scipy(kind):
    gm = make(kind, (), 3, 2)
    y = torch.tensor([[0.5, -0.3], [1.0, 2.0]], dtype=F64)
    got = gm.cdf(y)
    w, mu, cov = gm.probs.numpy(), gm.loc.numpy(), gm.component_covariance.numpy()
    for k in range(2):
        want = sum(
            w[i] * stats.multivariate_normal(mu[i], cov[i]).cdf(y[k].numpy()) for i in range(3)
        )
        assert got[k].item() == pytest.approx(want, abs=1e-6)  # SciPy's own accuracy


def test_cdf_full_covariance_multivariate_is_a_clear_error():
    gm = make("full", (), 2, 2)
    with pytest.raises(InputError, match="no closed form.*marginal"):
        gm.cdf(torch.zeros(2, dtype=F64))
    # d = 1 full covariance is fine
    assert gm.marginal([0]).cdf(torch.zeros(1, dtype=F64)).shape == ()


def test_cdf_rejects_wrong_event_shape():
    gm = make("diagonal", (3,), 2, 1)
    with pytest.raises(
        InputError, match=r"has shape \(3,\).*needs shape \(\.\.\., 3, 1\).*reshape\(-1, 1\)"
    ):
        gm.cdf(torch.zeros(3, dtype=F64))


# ---------------------------------------------------------------------- icdf and intervals


@pytest.mark.parametrize("kind", KINDS)
def test_icdf_round_trip_and_shape(kind):
    gm = make(kind, (4, 3), 5, 1)
    q = torch.tensor([1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.99, 1 - 1e-9], dtype=F64)
    q = q.reshape(-1, 1, 1)  # sample shape (8,) broadcast against B = (4, 3)
    x = gm.icdf(q)
    assert x.shape == (8, 4, 3, 1)
    assert (gm.cdf(x) - q).abs().max() <= 1e-6
    # float64: far better than the required 1e-6
    assert (gm.cdf(x) - q).abs().max() <= 1e-12
    # quantiles are monotone in q
    assert (x.diff(dim=0) > 0).all()


def test_icdf_matches_scipy_brentq_on_the_oracle_density():
    gm = make("diagonal", (6,), 4, 1, spread=3.0)
    qs = [0.001, 0.05, 0.25, 0.5, 0.8, 0.975]
    got = gm.icdf(torch.tensor(qs, dtype=F64).reshape(-1, 1))  # [6 q, 6 B, 1]
    for b in range(6):
        F = scipy_cdf(*scipy_params(gm, b))
        for i, q in enumerate(qs):
            want = optimize.brentq(lambda y, q=q, F=F: F(y) - q, -100, 100, xtol=1e-14, rtol=1e-14)
            assert got[i, b, 0].item() == pytest.approx(want, abs=1e-9)


def test_icdf_endpoints_and_errors():
    gm = bimodal()
    x = gm.icdf(torch.tensor([0.0, 1.0], dtype=F64))
    assert x[0].item() == -math.inf and x[1].item() == math.inf
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        gm.icdf(torch.tensor(1.5, dtype=F64))
    with pytest.raises(InputError, match="1-d target.*marginal"):
        make("diagonal", (), 2, 2).icdf(0.5)


def test_zero_weight_component_does_not_change_quantiles():
    gm = GaussianMixture(
        torch.tensor([0.0, -math.inf], dtype=F64),
        torch.tensor([[0.0], [1e6]], dtype=F64),
        scale=torch.ones(2, 1, dtype=F64),
    )
    assert gm.icdf(torch.tensor(0.975, dtype=F64)).item() == pytest.approx(1.959963984540054)


def test_interval_is_central_and_covers_level():
    gm = make("full", (7,), 3, 1)
    low, high = gm.interval(0.8)
    assert low.shape == high.shape == (7, 1)
    torch.testing.assert_close(gm.cdf(low), torch.full((7,), 0.1, dtype=F64))
    torch.testing.assert_close(gm.cdf(high), torch.full((7,), 0.9, dtype=F64))
    with pytest.raises(InputError, match="between 0 and 1"):
        gm.interval(1.0)


# ---------------------------------------------------------------------- marginal and condition


@pytest.mark.parametrize("kind", KINDS)
def test_marginal_matches_torch_oracle_and_numerical_integration(kind):
    gm = make(kind, (2,), 3, 3)
    m = gm.marginal([2, 0])
    assert m.event_shape == (2,) and m.covariance_type == kind
    # oracle: a MixtureSameFamily of MultivariateNormals with the sub-covariance
    cov = gm.component_covariance[..., [2, 0], :][..., :, [2, 0]]
    oracle = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=gm.logits),
        torch.distributions.MultivariateNormal(gm.loc[..., [2, 0]], covariance_matrix=cov),
    )
    y = torch.randn(5, 2, 2, dtype=F64)
    torch.testing.assert_close(m.log_prob(y), oracle.log_prob(y), rtol=1e-10, atol=1e-12)
    # numerical integration of the 2-d density over the dropped dim 1 of a 1-d marginal
    m1 = gm.marginal([0])
    y0 = 0.4
    dens, _ = integrate.quad(
        lambda t: gm.log_prob(torch.tensor([[y0, t, 0.0]], dtype=F64)).exp()[0].item(), -30, 30
    )
    joint2 = gm.marginal([0, 2])
    want = joint2.log_prob(torch.tensor([[y0, 0.0]], dtype=F64)).exp()[0].item()
    assert dens == pytest.approx(want, rel=1e-7)
    assert m1.log_prob(torch.tensor([[y0]], dtype=F64))[0].exp().item() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_condition_matches_bayes_rule_by_numerical_integration(kind):
    gm = make(kind, (), 3, 2, seed=1)
    v = torch.tensor([0.7], dtype=F64)
    c = gm.condition([0], v)
    assert c.event_shape == (1,) and c.covariance_type == kind

    def joint(t):
        return gm.log_prob(torch.tensor([0.7, t], dtype=F64)).exp().item()

    evidence, _ = integrate.quad(joint, -40, 40, epsabs=1e-13)
    for t in (-1.0, 0.3, 2.0):
        want = joint(t) / evidence  # p(y1 | y0) = p(y0, y1) / p(y0)
        got = c.log_prob(torch.tensor([t], dtype=F64)).exp().item()
        assert got == pytest.approx(want, rel=1e-8)
    torch.testing.assert_close(
        gm.marginal([0]).log_prob(v).exp(), torch.tensor(evidence, dtype=F64), rtol=1e-8, atol=0
    )


def test_condition_full_matches_torch_mvn_conditional():
    gm = make("full", (4,), 3, 3, seed=2)
    v = torch.randn(4, 1, dtype=F64)
    c = gm.condition([1], v)
    y = torch.randn(6, 4, 2, dtype=F64)
    # log p(y_u | y_o) = log p(y) - log p(y_o), with the torch oracle for both
    full_y = torch.stack([y[..., 0], v[:, 0].expand(6, 4), y[..., 1]], -1)
    want = gm.to_torch().log_prob(full_y) - gm.marginal([1]).to_torch().log_prob(v)
    torch.testing.assert_close(c.log_prob(y), want, rtol=1e-10, atol=1e-10)


def test_condition_broadcasts_values_against_the_batch():
    gm = make("diagonal", (3,), 2, 3)
    c = gm.condition([0, 2], torch.zeros(5, 1, 2, dtype=F64))
    assert c.batch_shape == (5, 3) and c.event_shape == (1,)


@pytest.mark.parametrize(
    "dims, values, match",
    [
        ([0, 1], torch.zeros(2), "nothing is left"),
        ([5], torch.zeros(1), "out of range"),
        ([0, 0], torch.zeros(2), "repeat"),
        ([0], torch.zeros(3), r"shape \(\*batch, 1\)"),
        ([], torch.zeros(0), "at least one"),
    ],
)
def test_condition_errors(dims, values, match):
    gm = make("diagonal", (), 2, 2)
    with pytest.raises(InputError, match=match):
        gm.condition(dims, values.to(F64))


# ---------------------------------------------------------------------- entropy and KL


def test_entropy_of_a_single_gaussian_is_within_monte_carlo_error():
    s = torch.tensor([[0.5, 2.0]], dtype=F64)
    gm = GaussianMixture(torch.zeros(1, dtype=F64), torch.zeros(1, 2, dtype=F64), scale=s)
    value, err = gm.entropy(n_samples=20_000, return_stderr=True)
    exact = 0.5 * 2 * (1 + math.log(2 * math.pi)) + s.log().sum().item()
    assert 0 < err.item() < 0.02
    assert abs(value.item() - exact) <= 5 * err.item()
    # reproducible by default, global RNG untouched
    state = torch.get_rng_state()
    assert gm.entropy(n_samples=100).item() == gm.entropy(n_samples=100).item()
    assert torch.equal(torch.get_rng_state(), state)


def test_entropy_of_well_separated_mixture():
    # disjoint components: H = H(weights) + Σ w_i H_i
    w = torch.tensor([0.3, 0.7], dtype=F64)
    gm = GaussianMixture(
        w.log(),
        torch.tensor([[-50.0], [50.0]], dtype=F64),
        scale=torch.tensor([[1.0], [3.0]], dtype=F64),
    )
    est = Q.entropy(gm, n_samples=50_000)
    h_i = 0.5 * (1 + math.log(2 * math.pi)) + torch.tensor([0.0, math.log(3.0)], dtype=F64)
    exact = -(w * w.log()).sum() + (w * h_i).sum()
    assert abs(est.value.item() - exact.item()) <= 5 * est.stderr.item()


def test_kl_divergence_of_gaussians_and_self():
    p = GaussianMixture(
        torch.zeros(1, dtype=F64), torch.zeros(1, 1, dtype=F64), scale=torch.ones(1, 1, dtype=F64)
    )
    q = GaussianMixture(
        torch.zeros(1, dtype=F64),
        torch.ones(1, 1, dtype=F64),
        scale=torch.full((1, 1), 2.0, dtype=F64),
    )
    est = Q.kl_divergence(p, q, n_samples=40_000)
    exact = math.log(2.0) + (1 + 1) / (2 * 4) - 0.5
    assert abs(est.value.item() - exact) <= 5 * est.stderr.item()
    assert Q.kl_divergence(p, p).value.item() == 0.0
    with pytest.raises(InputError, match="same space"):
        Q.kl_divergence(p, make("diagonal", (), 2, 2))


# ---------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(gm=mixtures_1d(), q=st.floats(1e-6, 1 - 1e-6))
def test_property_icdf_round_trip_any_scale(gm, q):
    x = gm.icdf(torch.tensor(q, dtype=F64))
    assert x.shape == gm.batch_shape + (1,)
    assert torch.isfinite(x).all()
    assert (gm.cdf(x) - q).abs().max().item() <= 1e-6


def test_shapes_that_do_not_broadcast_are_clear_errors():
    gm = make("diagonal", (3,), 2, 1)
    with pytest.raises(InputError, match=r"q of shape \(2,\) does not broadcast.*\(3,\)"):
        gm.icdf(torch.tensor([0.1, 0.9], dtype=F64))
    with pytest.raises(InputError, match=r"batch shapes \(3,\) and \(4,\) do not broadcast"):
        Q.kl_divergence(gm, make("diagonal", (4,), 2, 1))
