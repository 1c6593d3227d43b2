"""Shared test mixtures and SciPy oracles for the query tests (test_queries, test_hdr,
test_modes), and a model head set by hand for the small-data steps' tests."""

import math

import numpy as np
import torch

try:
    from hypothesis import strategies as st
except ImportError:  # a bare image: the property tests (mixtures_1d's users) are not collected
    st = None
from scipy import stats

from torchmdn import MDN, GaussianMixture

F64 = torch.float64
KINDS = ("diagonal", "isotropic", "full")


def make(kind, batch, n, d, scale_range=(0.2, 1.5), seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, n, generator=g, dtype=F64)
    loc = spread * torch.randn(*batch, n, d, generator=g, dtype=F64)
    lo, hi = scale_range
    if kind == "diagonal":
        scale = lo + (hi - lo) * torch.rand(*batch, n, d, generator=g, dtype=F64)
        return GaussianMixture(logits, loc, scale=scale)
    if kind == "isotropic":
        scale = lo + (hi - lo) * torch.rand(*batch, n, generator=g, dtype=F64)
        return GaussianMixture(logits, loc, scale=scale)
    a = torch.randn(*batch, n, d, d, generator=g, dtype=F64)
    cov = a @ a.mT / d + lo**2 * torch.eye(d, dtype=F64)
    return GaussianMixture(logits, loc, scale_tril=torch.linalg.cholesky(cov))


def bimodal():
    return GaussianMixture(
        torch.log(torch.tensor([0.5, 0.5], dtype=F64)),
        torch.tensor([[-3.0], [3.0]], dtype=F64),
        scale=torch.tensor([[0.5], [0.5]], dtype=F64),
    )


def scipy_params(gm, index=()):
    """Weights, means and standard deviations of one 1-d batch element as NumPy arrays."""
    w = gm.probs[index].numpy()
    mu = gm.loc[index][..., 0].numpy()
    sd = gm.component_covariance[index][..., 0, 0].sqrt().numpy()
    return w, mu, sd


def scipy_cdf(w, mu, sd):
    return lambda y: float(np.sum(w * stats.norm.cdf(y, mu, sd)))


def scipy_pdf(w, mu, sd):
    return lambda y: float(np.sum(w * stats.norm.pdf(y, mu, sd)))


if st is not None:

    @st.composite
    def mixtures_1d(draw):
        n = draw(st.integers(1, 4))
        batch = draw(st.sampled_from([(), (1,), (3,)]))
        seed = draw(st.integers(0, 2**31 - 1))
        log_scale = draw(st.floats(math.log(1e-4), math.log(1e4)))
        g = torch.Generator().manual_seed(seed)
        base = math.exp(log_scale)
        scale = base * torch.exp(torch.randn(*batch, n, 1, generator=g, dtype=F64))
        loc = base * 3 * torch.randn(*batch, n, 1, generator=g, dtype=F64)
        logits = torch.randn(*batch, n, generator=g, dtype=F64)
        return GaussianMixture(logits, loc, scale=scale)


def with_components(model, locs, scale=0.2):
    """Give the one-column ``model`` a fresh head with components at ``locs`` (standardised
    units), standard deviation ``scale`` and equal weights, whatever the input."""
    fresh = MDN(1, 1, hidden=(8,), n_components=len(locs)).double()
    model.head = fresh.head.to(model.x_loc.device)
    with torch.no_grad():
        for k, loc in enumerate(locs):
            model.head.set_component(k, torch.tensor([loc]).double(), torch.tensor([scale]).double(), 0.0)
