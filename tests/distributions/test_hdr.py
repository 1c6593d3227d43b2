"""Highest-density regions (torchmdn.distributions.hdr) against SciPy, Monte Carlo and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from oracles import F64, bimodal, make, mixtures_1d, scipy_cdf, scipy_params, scipy_pdf
from torchmdn import GaussianMixture

# ---------------------------------------------------------------------- HDR


def test_hdr_bimodal_has_two_intervals_with_the_right_mass_and_is_shorter():
    gm = bimodal()
    region = gm.hdr(0.9)
    assert len(region) == 2
    (a, b), (c, d) = region
    assert a < b < c < d
    # by symmetry each interval is mu ± 0.5 z with 2 * 0.5 * (Φ(z) - Φ(-z)) = 0.9 (no overlap)
    z = stats.norm.ppf(0.95)
    assert b - a == pytest.approx(2 * 0.5 * z, abs=1e-6)
    mass = sum(
        gm.cdf(torch.tensor([hi], dtype=F64)) - gm.cdf(torch.tensor([lo], dtype=F64))
        for lo, hi in region
    )
    assert float(mass) == pytest.approx(0.9, abs=1e-9)
    low, high = gm.interval(0.9)
    assert (b - a) + (d - c) < (high - low).item() / 2  # far shorter than the central interval
    # Monte Carlo coverage: 200k draws, binomial SE 6.7e-4, 5 SE band
    s = gm.sample((200_000,), generator=torch.Generator().manual_seed(3))[:, 0]
    inside = ((s >= a) & (s <= b)) | ((s >= c) & (s <= d))
    assert abs(inside.double().mean().item() - 0.9) < 5 * math.sqrt(0.9 * 0.1 / 200_000)


def test_hdr_unimodal_gaussian_is_the_central_interval():
    gm = GaussianMixture(
        torch.zeros(1, dtype=F64),
        torch.zeros(1, 1, dtype=F64),
        scale=torch.full((1, 1), 2.0, dtype=F64),
    )
    [(lo, hi)] = gm.hdr(0.95)
    assert lo == pytest.approx(-2 * 1.959963984540054, abs=1e-7)
    assert hi == pytest.approx(2 * 1.959963984540054, abs=1e-7)


def test_hdr_batch_layout_and_density_threshold():
    gm = make("isotropic", (2, 3), 3, 1, spread=3.0)
    region = gm.hdr(0.7)
    assert len(region) == 2 and all(len(row) == 3 for row in region)
    for i in range(2):
        for j in range(3):
            ints = region[i][j]
            w, mu, sd = scipy_params(gm, (i, j))
            F, p = scipy_cdf(w, mu, sd), scipy_pdf(w, mu, sd)
            assert sum(F(hi) - F(lo) for lo, hi in ints) == pytest.approx(0.7, abs=1e-8)
            # every boundary has the same density (the threshold); inside is denser than that
            ends = [p(v) for iv in ints for v in iv]
            assert max(ends) == pytest.approx(min(ends), rel=1e-6)
            for lo, hi in ints:
                assert p(0.5 * (lo + hi)) >= min(ends) * (1 - 1e-9)


@settings(max_examples=25, deadline=None)
@given(gm=mixtures_1d(), level=st.floats(0.05, 0.99))
def test_property_hdr_mass_and_modes_any_scale(gm, level):
    region = gm.hdr(level)
    rows = [region] if not gm.batch_shape else region
    for b, ints in enumerate(rows):
        assert ints, "an HDR is never empty"
        lo = torch.tensor([iv[0] for iv in ints], dtype=F64).unsqueeze(-1)
        hi = torch.tensor([iv[1] for iv in ints], dtype=F64).unsqueeze(-1)
        one = gm if not gm.batch_shape else gm.marginal([0]).expand(gm.batch_shape)
        element = GaussianMixture(
            one.logits[b] if gm.batch_shape else one.logits,
            one.loc[b] if gm.batch_shape else one.loc,
            scale=one.scale[b] if gm.batch_shape else one.scale,
        )
        mass = (element.cdf(hi) - element.cdf(lo)).sum().item()
        assert mass == pytest.approx(level, abs=1e-6)
        # the HDR is never longer than the central interval of the same level
        c_lo, c_hi = element.interval(level)
        assert (hi - lo).sum().item() <= (c_hi - c_lo).item() * (1 + 1e-6)
    found = gm.modes()
    assert found.valid[..., 0].all()
    # the density at the global mode is at least that at every component mean
    lp_means = gm.log_prob(gm.loc.movedim(-2, 0))  # [n, *B]
    assert (found.log_prob[..., 0] >= lp_means.amax(0) - 1e-9 * lp_means.abs().amax(0)).all()


def test_hdr_near_tangent_threshold():
    # found by hypothesis: log p nearly flat at the threshold inside one grid cell used to
    # misplace a boundary (mass off by 2e-3) before the extrema of log p joined the grid
    g = torch.Generator().manual_seed(1351683036)
    base = math.exp(8.076341155678607)
    scale = base * torch.exp(torch.randn(3, 3, 1, generator=g, dtype=F64))
    loc = base * 3 * torch.randn(3, 3, 1, generator=g, dtype=F64)
    logits = torch.randn(3, 3, generator=g, dtype=F64)
    gm = GaussianMixture(logits[1], loc[1], scale=scale[1])
    level = 0.9052601067607963
    ints = gm.hdr(level)
    lo = torch.tensor([iv[0] for iv in ints], dtype=F64).unsqueeze(-1)
    hi = torch.tensor([iv[1] for iv in ints], dtype=F64).unsqueeze(-1)
    assert (gm.cdf(hi) - gm.cdf(lo)).sum().item() == pytest.approx(level, abs=1e-6)


def test_hdr_in_chunks_equals_one_pass_and_refuses_huge_mixtures(monkeypatch):
    import torchmdn.distributions.hdr as H
    from torchmdn.errors import InputError

    g = torch.Generator().manual_seed(3)
    gm = GaussianMixture(
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        3 * torch.randn(7, 3, 1, generator=g, dtype=torch.float64),
        torch.rand(7, 3, 1, generator=g, dtype=torch.float64) + 0.2,
    )
    whole = gm.hdr(0.8)
    monkeypatch.setattr(H, "_CHUNK", 1)  # one row at a time
    assert gm.hdr(0.8) == whole
    big = GaussianMixture(torch.zeros(100_000), torch.zeros(100_000, 1), torch.ones(100_000, 1))
    with pytest.raises(InputError, match="GiB per row"):
        big.hdr(0.9)


def test_hdr_near_one_in_float32_and_of_zero_rows():
    gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))  # float32
    ((low, high),) = gm.hdr(0.99999999)
    assert low < -5.5 and high > 5.5  # ±5.73 standard deviations
    empty = GaussianMixture(torch.zeros(0, 2), torch.zeros(0, 2, 1), torch.ones(0, 2, 1))
    assert empty.hdr(0.9) == []
