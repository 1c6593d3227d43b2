"""The kept candidates' average: the grouped head installed from a ladder's state equals the
average of those heads, the epoch it is taken at, and the check against invented modes."""

import math
import re

import pytest
import torch

from torchmdn import MDN
from torchmdn.training.average import (
    MODE_GUARD_SE,
    average_nll,
    average_rows,
    best_epoch,
    cannot_tell,
    install,
    without_new_modes,
)
from torchmdn.training.capacity import candidates
from torchmdn.training.ladder import HeadBest, Ladder


def _ladder(d, seed=0):
    """A ladder of an auto model's candidates with random heads, standardised on random data."""
    torch.manual_seed(seed)
    model = MDN(2, d, hidden=(8,)).double()
    pairs = candidates(model)
    ladder = Ladder(model, pairs, seed=seed).double()
    x, y = torch.randn(40, 2, dtype=torch.float64), torch.randn(40, d, dtype=torch.float64)
    ladder.standardize(x, y)
    with torch.no_grad():
        for m in ladder.members:
            m.head.linear.weight.normal_(0, 0.5)
            m.head.linear.bias.normal_(0, 0.5)
    return model, pairs, ladder.eval(), x, y


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("members", [[0, 2, 4], [3], [1, 5]])
def test_the_installed_head_is_the_average_of_the_kept_heads(d, members):
    """Oracle: each member of the ladder scored alone, densities averaged in float64."""
    model, pairs, ladder, x, y = _ladder(d)
    with torch.no_grad():
        each = torch.stack([ladder.members[i].log_prob(x, y) for i in members])
        expected = torch.logsumexp(each, 0) - math.log(len(members))
        install(model, ladder.state_dict(), members, pairs)
        got = model.log_prob(x, y)
    torch.testing.assert_close(got, expected)
    assert model.n_components == sum(pairs[i][0] for i in members)
    assert model.head.groups == (None if len(members) == 1 else tuple(pairs[i][0] for i in members))
    assert not model.auto_components and not model.training


def test_average_nll_and_the_epoch_it_is_taken_at():
    rows = torch.tensor([[1.0, 3.0], [2.0, 0.5]], dtype=torch.float64)  # (rows, heads) NLLs
    expected = -torch.logsumexp(-rows, -1).sub(math.log(2)).mean()
    assert average_nll(rows, [0, 1]) == pytest.approx(float(expected))
    assert average_nll(rows, [1]) == pytest.approx(1.75)
    # each head's best epoch; the average of both is best at the second head's
    a = HeadBest(1.0, 3, all_rows=torch.tensor([[1.0, 5.0]], dtype=torch.float64))
    b = HeadBest(0.2, 7, all_rows=torch.tensor([[1.5, 0.2]], dtype=torch.float64))
    assert best_epoch([a, b], [0, 1]) is b and best_epoch([a, b], [0]) is a


def _set_components(ladder, i, locs, scale):
    """Member ``i``'s head: components at ``locs`` (along the first target column) with
    ``scale`` in every column, equal weights, for any x."""
    head = ladder.members[i].head
    d = head.out_features
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
        for k, loc in enumerate(locs):
            at = torch.zeros(d, dtype=torch.float64)
            at[0] = loc
            head.set_component(k, at, torch.full((d,), scale, dtype=torch.float64), 0.0)


def _three_heads(d=1):
    """One component, two nearly on top of each other (unimodal) and three narrow, far apart."""
    model, pairs, ladder, x, _ = _ladder(d)
    _set_components(ladder, 0, [0.0], 1.0)
    _set_components(ladder, 1, [0.1, -0.1], 1.0)
    _set_components(ladder, 2, [-4.0, 0.0, 4.0], 0.2)
    return model, pairs, ladder.state_dict(), x


@pytest.mark.parametrize("d", [1, 2])
def test_heads_that_bring_modes_are_left_out(d):
    """A narrow, spread-out large head averaged with a unimodal best head adds modes: it is
    left out (and its record says so); a head that agrees with the best is kept. For one
    target column and for several (full covariances)."""
    model, pairs, state, x = _three_heads(d)  # the one-component head scores best
    rows = torch.zeros(5, len(pairs), dtype=torch.float64)
    best = [HeadBest(float(i), 0, rows[:, i], rows, state) for i in range(len(pairs))]
    records = [{"kept": True} for _ in pairs]
    kept, reason, extra = without_new_modes(model, best, [0, 1, 2], pairs, x[:8], records, "start")
    assert kept == [0, 1] and not records[2]["kept"] and records[1]["kept"] and extra == 0
    assert reason.startswith("start; then 3 left out") and "more modes per input" in reason
    kept, reason, extra = without_new_modes(model, best, [0, 1], pairs, x[:8], records, "start")
    assert kept == [0, 1] and reason == "start" and extra == 0


@pytest.mark.parametrize("best_head", [0, 2])
def test_modes_are_checked_against_the_simplest_kept_head(best_head):
    """The spiky head is left out when the validation rows cannot tell the heads apart, even
    when it scored best: its modes are measured against the simplest kept head's."""
    model, pairs, state, x = _three_heads()
    rows = torch.randn(30, len(pairs), generator=torch.Generator().manual_seed(0)).double()
    values = [0.0 if i == best_head else 1.0 for i in range(len(pairs))]
    best = [HeadBest(values[i], 0, rows[:, i], rows, state) for i in range(len(pairs))]
    records = [{"kept": True} for _ in pairs]
    kept, reason, extra = without_new_modes(model, best, [0, 1, 2], pairs, x[:8], records, "start")
    assert kept == [0, 1] and not records[2]["kept"] and extra == 0
    assert "than the simplest kept head" in reason


def test_modes_the_validation_rows_need_are_kept():
    """When the average scores clearly worse on the validation rows without the head that
    brings the modes, it stays, and the reason gives the rise against its standard error."""
    model, pairs, state, x = _three_heads()
    rows = torch.rand(30, len(pairs), generator=torch.Generator().manual_seed(0)).double()
    rows[:, 2] -= 3.0  # the three-component head fits every validation row far better
    best = [HeadBest(float(rows[:, i].mean()), 0, rows[:, i], rows, state) for i in range(len(pairs))]
    records = [{"kept": True} for _ in pairs]
    kept, reason, extra = without_new_modes(model, best, [0, 1, 2], pairs, x[:8], records, "start")
    assert kept == [0, 1, 2] and records[2]["kept"]
    # the modes kept beyond the simplest head's, counted over the eight inputs
    found, allowed = map(float, re.search(r"\(([\d.]+) per input against ([\d.]+)\)", reason).groups())
    assert extra == round(8 * (found - allowed)) and extra >= 8
    rise = float((average_rows(rows, [0, 1]) - average_rows(rows, [0, 1, 2])).mean())
    assert rise > 1 and f"validation NLL rose by {rise:.4f}" in reason
    assert f"more than {MODE_GUARD_SE:g} paired standard error" in reason


def test_cannot_tell_compares_the_mean_difference_with_its_standard_error():
    """The mode steps' test: within MODE_GUARD_SE paired standard errors (the rows cannot
    tell the fits apart), else not; non-finite rows left out; never on fewer than two."""
    noisy = torch.tensor([1.0, -1.0, 1.2, -0.8], dtype=torch.float64)  # mean 0.1, se 0.55
    same, mean, se = cannot_tell(noisy)
    assert same and mean == pytest.approx(0.1) and se == pytest.approx(float(noisy.std()) / 2)
    worse = torch.tensor([1.0, 1.1, 0.9, 1.0], dtype=torch.float64)  # mean 1, se 0.04
    assert not cannot_tell(worse)[0]
    assert cannot_tell(worse - 1.0)[0]  # the same rows, no mean difference
    with_inf = torch.cat([noisy, torch.tensor([math.inf, math.nan], dtype=torch.float64)])
    assert cannot_tell(with_inf) == cannot_tell(noisy)
    assert cannot_tell(torch.tensor([0.0, math.inf], dtype=torch.float64))[0] is False
