"""Widening a fit's standard deviations by the amount its held-out rows chose."""

import math
import re

import pytest
import torch

from torchmdn import MDN, fit, load, save
from torchmdn.training.widening import WIDENINGS, widen


def _two_components(model, locs, scale=0.2):
    """Give ``model`` a fresh head with components at ``locs`` (standardised units), equal
    weights, whatever the input."""
    fresh = MDN(1, 1, hidden=(8,), n_components=len(locs)).double()
    model.head = fresh.head.to(model.x_loc.device)
    with torch.no_grad():
        for k, loc in enumerate(locs):
            model.head.set_component(k, torch.tensor([loc]).double(), torch.tensor([scale]).double(), 0.0)


@pytest.mark.parametrize("best", [0, 1, 4])
def test_after_cross_validation_the_fit_is_widened_by_the_amount_the_folds_scored_best(
    best, device
):
    """The amount of WIDENINGS whose pooled held-out NLL is lowest (or none) is added to every
    standard deviation, through the head's floor: the model's density is then torch's mixture
    of normals with every standard deviation widened by it (times y's scale). Rows some
    amount never scored are left out of the comparison."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, 3 * x + 1)
    _two_components(model, [-1.0, 0.5])
    y = torch.linspace(-3, 5, 40, dtype=torch.float64, device=device)[:, None]
    with torch.no_grad():
        before = model(x)
    g = torch.Generator().manual_seed(0)
    table = torch.rand(50, 1 + len(WIDENINGS), generator=g, dtype=torch.float64) + 1.0
    table[:, best] -= 0.5
    table[7, 1:] = math.inf  # a row only the fit as trained scored: left out
    table[7, 0] = -100.0
    note = widen(model, table[:, 0], table[:, 1:])
    with torch.no_grad():
        after = model(x)
        got = model.log_prob(x, y)
    amount = 0.0 if best == 0 else WIDENINGS[best - 1]
    assert ("not widened" in note) == (best == 0)
    assert (f"widened by {amount:g}" in note) == (best > 0)
    torch.testing.assert_close(after.scale, before.scale + amount * model.y_scale)
    normal = torch.distributions.Independent(torch.distributions.Normal(after.loc, after.scale), 1)
    mix = torch.distributions.Categorical(logits=before.logits)
    want = torch.distributions.MixtureSameFamily(mix, normal).log_prob(y)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case", ["fewer modes within noise", "rows need the modes", "no inputs"])
def test_a_larger_amount_is_taken_when_it_has_fewer_modes_and_the_rows_cannot_tell(case, device):
    """Two components 0.9 apart (standardised units), standard deviation 0.2: two modes
    until widened by 0.3 (sd 0.5 > 0.9 / 2). The rows score 0.02 best; when every amount is
    within a paired standard error of it, the widening with one mode (0.3) is taken; when
    the larger amounts score clearly worse, or no inputs are given to count modes on, 0.02."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, x)
    _two_components(model, [-0.45, 0.45])
    g = torch.Generator().manual_seed(0)
    own = 0.1 * torch.randn(200, 1 + len(WIDENINGS), generator=g, dtype=torch.float64)
    table = 1.0 + torch.randn(200, 1, generator=g, dtype=torch.float64) + own - own.mean(0)
    table[:, 1] -= 1e-3  # 0.02 the best, the others within noise of it (paired SE 0.01)
    if case == "rows need the modes":
        table[:, 2:] += torch.tensor(WIDENINGS[1:], dtype=torch.float64)  # clearly worse
    floor = model.head.scale_floor.clone()
    note = widen(model, table[:, 0], table[:, 1:], None if case == "no inputs" else x)
    amount = 0.3 if case == "fewer modes within noise" else 0.02
    torch.testing.assert_close(model.head.scale_floor, floor + amount)
    with torch.no_grad():
        modes = model(x).modes().valid.sum(-1)
    assert (modes == (1 if amount == 0.3 else 2)).all()
    assert ("rather than 0.02: 2.00 modes per input before, 1.00 now" in note) == (amount == 0.3)


def test_a_small_data_fit_reports_its_widening_and_saves_it(tmp_path):
    """A default fit on 60 rows (cross-validated) says in ``history.capacity`` by how much it
    widened; the head's floor is the one standardising sets plus that amount, and a saved and
    loaded model has the same density."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, generator=g) * 2 - 1
    y = x**2 + torch.exp(0.6 * torch.randn(60, 1, generator=g)) - 1  # skewed noise
    model = MDN(1, 1, hidden=(16,))
    history = fit(model, x, y, max_epochs=40, random_state=0, progress=False)
    reason = history.capacity["reason"]
    found = re.search(r"widened by ([0-9.]+) ", reason)
    assert found or "not widened" in reason
    amount = float(found.group(1)) if found else 0.0
    plain = MDN(1, 1, hidden=(16,)).standardize(x, y)
    torch.testing.assert_close(model.head.scale_floor, plain.head.scale_floor + amount)
    loaded = load(save(model, tmp_path / "m.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, y), model.log_prob(x, y))
        torch.testing.assert_close(loaded(x).scale, model(x).scale)
