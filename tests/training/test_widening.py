"""Widening a fit's standard deviations by the factor its held-out rows chose."""

import re

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from oracles import with_components
from torchmdn import MDN, fit, load, save
from torchmdn.training.widening import WIDENINGS, widen, widened


def _oracle(gm, factor, y):
    """torch's mixture of normals with ``gm``'s weights and means and its standard deviations
    times ``factor``, at ``y``."""
    normal = Independent(Normal(gm.loc, gm.scale * factor), 1)
    return MixtureSameFamily(Categorical(logits=gm.logits), normal).log_prob(y)


@pytest.mark.parametrize(("d", "cov", "groups"), [(1, "diagonal", None), (2, "diagonal", (2, 1)),
                                                   (2, "isotropic", None), (3, "full", None)])  # fmt: skip
def test_widened_multiplies_every_standard_deviation_and_keeps_the_means(d, cov, groups, device):
    """Means, weights and covariances (times the factor squared) against the model before;
    for diagonal heads the density against torch's mixture of normals."""
    model = MDN(2, d, hidden=(8,), n_components=3, covariance_type=cov, groups=groups)
    model = model.double().to(device)
    x = torch.randn(30, 2, dtype=torch.float64, device=device)
    y = torch.randn(30, d, dtype=torch.float64, device=device) * 3 + 1
    model.standardize(x, y)
    with torch.no_grad():
        model.head.linear.weight.normal_()
        before = model(x)
        widened(model, 1.3)
        after = model(x)
        got = model.log_prob(x, y)
    torch.testing.assert_close(after.loc, before.loc)
    torch.testing.assert_close(after.probs, before.probs)
    torch.testing.assert_close(after.component_covariance, before.component_covariance * 1.69)
    if cov == "diagonal":
        torch.testing.assert_close(got, _oracle(before, 1.3, y))


@pytest.mark.parametrize("best", [0, 1, 4])
def test_the_fit_is_widened_by_the_factor_the_folds_scored_best(best, device):
    """The factor of WIDENINGS whose pooled held-out NLL is lowest (or none) multiplies every
    standard deviation. Rows some factor never scored are left out of the comparison."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, 3 * x + 1)
    with_components(model, [-1.0, 0.5])
    y = torch.linspace(-3, 5, 40, dtype=torch.float64, device=device)[:, None]
    with torch.no_grad():
        before = model(x)
    g = torch.Generator().manual_seed(0)
    table = torch.rand(50, 1 + len(WIDENINGS), generator=g, dtype=torch.float64) + 1.0
    table[:, best] -= 0.5
    table[7, 1:] = float("inf")  # a row only the fit as trained scored: left out
    table[7, 0] = -100.0
    note = widen(model, table[:, 0], table[:, 1:])
    factor = 1.0 if best == 0 else WIDENINGS[best - 1]
    assert ("not widened" in note) == (best == 0)
    assert (f"widened {factor:g}-fold" in note) == (best > 0)
    with torch.no_grad():
        torch.testing.assert_close(model(x).scale, before.scale * factor)
        torch.testing.assert_close(model.log_prob(x, y), _oracle(before, factor, y))


@pytest.mark.parametrize("case", ["fewer modes within noise", "rows need the modes", "no inputs"])
def test_a_larger_factor_is_taken_when_it_has_fewer_modes_and_the_rows_cannot_tell(case, device):
    """Two components 0.56 apart (standardised units), standard deviation 0.2: two modes
    until widened 1.5-fold (sd 0.3 > 0.56 / 2; at 1.3, 0.26 < 0.28). The rows score 1.05 best; when
    every factor is within a paired standard error of it, the widening with one mode (1.5)
    is taken; when the larger factors score clearly worse, or no inputs are given to count
    modes on, 1.05."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, x)
    with_components(model, [-0.28, 0.28])
    g = torch.Generator().manual_seed(0)
    own = 0.1 * torch.randn(200, 1 + len(WIDENINGS), generator=g, dtype=torch.float64)
    table = 1.0 + torch.randn(200, 1, generator=g, dtype=torch.float64) + own - own.mean(0)
    table[:, 1] -= 1e-3  # 1.05 the best, the others within noise of it (paired SE 0.01)
    if case == "rows need the modes":
        table[:, 2:] += torch.tensor(WIDENINGS[1:], dtype=torch.float64)  # clearly worse
    with torch.no_grad():
        before = model(x)
    note = widen(model, table[:, 0], table[:, 1:], None if case == "no inputs" else x)
    factor = 1.5 if case == "fewer modes within noise" else 1.05
    with torch.no_grad():
        after = model(x)
        torch.testing.assert_close(after.scale, before.scale * factor)
        modes = after.modes().valid.sum(-1)
    assert (modes == (1 if factor == 1.5 else 2)).all()
    assert ("rather than 1.05: 2.00 modes per input before, 1.00 now" in note) == (factor == 1.5)


def test_a_small_data_fit_reports_its_widening_and_saves_it(tmp_path):
    """A default fit on 60 rows (cross-validated) says in ``history.capacity`` by how much it
    widened: ``y_scale`` is y's spread times that factor, and a saved and loaded model has
    the same density."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, generator=g) * 2 - 1
    y = x**2 + torch.exp(0.6 * torch.randn(60, 1, generator=g)) - 1  # skewed noise
    model = MDN(1, 1, hidden=(16,))
    history = fit(model, x, y, max_epochs=40, random_state=0, progress=False)
    reason = history.capacity["reason"]
    found = re.search(r"widened ([0-9.]+)-fold", reason)
    assert found or "not widened" in reason
    factor = float(found.group(1)) if found else 1.0
    plain = MDN(1, 1, hidden=(16,)).standardize(x, y)
    torch.testing.assert_close(model.y_scale, plain.y_scale * factor)
    loaded = load(save(model, tmp_path / "m.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, y), model.log_prob(x, y))
        torch.testing.assert_close(loaded(x).scale, model(x).scale)
