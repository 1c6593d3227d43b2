"""Synthetic data sets: reproducible, right shapes, and their stated densities are right."""

import math

import pytest
import torch

from torchmdn import datasets
from torchmdn.errors import InputError


def test_bishop_shapes_ranges_and_seed():
    x, t = datasets.bishop(1000, seed=3)
    assert x.shape == t.shape == (1000, 1) and x.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1
    resid = x - (t + 0.3 * torch.sin(2 * math.pi * t))
    assert resid.abs().max() <= 0.1 + 1e-6
    assert torch.equal(datasets.bishop(1000, seed=3)[0], x)
    assert not torch.equal(datasets.bishop(1000, seed=4)[0], x)


def test_bishop_entropy_constant_matches_numerical_integration():
    # H(t|x) = H(t) + H(x|t) - H(x) = log 0.2 - H(x); H(x) by integrating p(x) on a grid
    t = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    g = (t + 0.3 * torch.sin(2 * math.pi * t)).sort().values
    xs = torch.linspace(-0.1, 1.1, 2401, dtype=torch.float64)
    px = (torch.searchsorted(g, xs + 0.1) - torch.searchsorted(g, xs - 0.1)).double() / len(t) / 0.2
    dx = xs[1] - xs[0]
    hx = -(px * torch.log(px.clamp_min(1e-300))).sum() * dx
    assert abs(math.log(0.2) - hx.item() - datasets.BISHOP_ENTROPY) < 0.001


def test_bishop_log_prob_is_the_true_density():
    x, t = datasets.bishop(20_000, seed=7)
    lp = datasets.bishop_log_prob(x, t)
    assert lp.shape == (20_000,) and torch.isfinite(lp).all()
    # Monte Carlo estimate of the conditional entropy agrees with the constant (SE ~ 0.004)
    assert abs(-lp.mean().item() - datasets.BISHOP_ENTROPY) < 0.02
    # normalised: integrates to 1 over t for a fixed x
    ts = torch.linspace(0, 1, 100_001, dtype=torch.float64).unsqueeze(-1)
    for x0 in (0.1, 0.5, 0.62):
        dens = datasets.bishop_log_prob(torch.full_like(ts, x0), ts).exp()
        assert abs(dens.sum().item() * 1e-5 - 1) < 0.01


def test_rotating_pair_samples_follow_its_density():
    x, y = datasets.rotating_pair(20_000, seed=1)
    assert x.shape == (20_000, 1) and y.shape == (20_000, 2)
    dens = datasets.rotating_pair_density(x.double())
    # the mean log-density of its own samples estimates minus the entropy; samples of another
    # distribution (shuffled x) must score clearly worse
    own = dens.log_prob(y.double()).mean()
    shuffled = dens.log_prob(y.double()[torch.randperm(20_000)]).mean()
    assert own > shuffled + 1.0
    torch.testing.assert_close(y.double().mean(0), dens.mean.mean(0), atol=0.03, rtol=0)


def test_generators_reject_bad_arguments():
    with pytest.raises(InputError, match="n must be"):
        datasets.bishop(0)
    with pytest.raises(InputError, match="seed"):
        datasets.rotating_pair(10, seed="a")
