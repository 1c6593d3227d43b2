"""Small data: the capacity rule under cross-validation and the steps after it that take out
modes the rows do not need."""

import pytest
import torch

from oracles import with_components
from torchmdn import MDN
from torchmdn.training.average import mean_modes
from torchmdn.training.capacity import candidates
from torchmdn.training.crossval import TOLERANCE_SE, fewer_modes, overlapping_start, simplest
from torchmdn.training.history import History


def test_simplest_takes_the_simplest_within_half_a_standard_error():
    """Candidates simplest first: the first within TOLERANCE_SE paired standard errors of the
    best is chosen, but one component only when it is the best itself."""
    pairs = [(1, "diagonal"), (2, "diagonal"), (3, "diagonal"), (5, "diagonal")]
    g = torch.Generator().manual_seed(0)
    best = torch.rand(400, generator=g, dtype=torch.float64)
    e = torch.randn(400, generator=g, dtype=torch.float64)
    e = (e - e.mean()) / e.std()  # per-row noise of mean 0: paired standard error 1/20
    shifts = [1e-3, 0.5, 0.4 * TOLERANCE_SE / 20]  # one component within; 2 far; 3 within
    rows = [best + c + e for c in shifts] + [best]
    idx, records, reason = simplest(rows, pairs)
    assert idx == 2 and reason.startswith("3 diagonal component(s): the simplest mixture")
    assert [r["n_components"] for r in records] == [1, 2, 3, 5]
    assert records[2]["se_vs_best"] == pytest.approx(1 / 20)
    rows[2] = best + 2 * TOLERANCE_SE / 20 + e  # outside: the best itself
    assert simplest(rows, pairs)[0] == 3
    rows[0] = best - 0.1  # one component the best: taken
    idx, _, reason = simplest(rows, pairs)
    mean = float(rows[0].mean())
    assert idx == 0 and reason == f"1 diagonal component(s) had the lowest validation NLL ({mean:.4f})"


@pytest.mark.parametrize("case", ["simpler", "no fewer modes", "rows need them"])
def test_after_cross_validation_a_simpler_size_replaces_one_that_invents_modes(case, device):
    """The chosen size (3 components, 2 modes) gives way to 2 (one mode) when the pooled rows
    cannot tell them apart; stays when 2 has as many modes (restored as it was) or when
    the rows clearly prefer 3. The model and inputs on the device, the pooled rows on the
    CPU (as the folds record them)."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, x)
    pairs = candidates(MDN(1, 1, hidden=(8,)))  # the default: every size
    layouts = {2: [-4.0, -3.9, 4.0], 1: [-4.0, 4.0] if case == "no fewer modes" else [0.1, -0.1],
               0: [0.0]}  # fmt: skip
    calls = []

    def train(i):
        calls.append(i)
        with_components(model, layouts[i])
        return History(), 10 + i

    g = torch.Generator().manual_seed(0)
    pooled = [torch.rand(40, generator=g, dtype=torch.float64) for _ in pairs]
    pooled[0] += 5.0  # one component: far behind
    if case == "rows need them":
        pooled[1] += 1.0
    trained = train(2)
    chosen_state = {k: v.clone() for k, v in model.state_dict().items()}
    idx, (history, epochs), note, found = fewer_modes(model, x, pooled, pairs, 2, train, trained)
    assert found == mean_modes(model, x)  # the kept fit's, handed on to the next step
    if case == "simpler":
        assert (idx, epochs, model.n_components) == (1, 11, 2) and calls == [2, 1]
        assert note.startswith("; then 2 instead of 3 (that had 2.00 modes per training input")
    else:
        assert (idx, epochs, model.n_components, note) == (2, 12, 3, "")
        assert calls == ([2, 1] if case == "no fewer modes" else [2])
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, chosen_state[k])


@pytest.mark.parametrize("case", ["adopted", "worse on the folds", "no fewer modes", "one mode"])
def test_after_cross_validation_an_overlapping_start_replaces_one_that_invents_modes(
    case, device
):
    """A chosen fit with two modes per input is cross-validated again started overlapping
    and, when the pooled rows cannot tell the starts apart, retrained so: kept with one mode,
    restored as it was otherwise; not tried when the folds clearly prefer the chosen start,
    nor when the fit has one mode already."""
    model = MDN(1, 1, hidden=(8,)).double().to(device)
    x = torch.linspace(-1, 1, 40, dtype=torch.float64, device=device)[:, None]
    model.standardize(x, x)
    with_components(model, [0.0, 0.1] if case == "one mode" else [-4.0, 4.0])
    chosen_state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    pooled = torch.rand(40, generator=g, dtype=torch.float64)
    calls = []

    def score():
        calls.append("score")
        rows = pooled + torch.rand(40, generator=g, dtype=torch.float64) * 0.1 - 0.05
        rows = rows + (1.0 if case == "worse on the folds" else 0.0)
        return rows, [7, 9, 8, 30, 8], wide

    def train(stops):
        calls.append(sorted(stops))
        with_components(model, [-4.0, 4.0] if case == "no fewer modes" else [0.1, -0.1])
        return History(), 8

    found = mean_modes(model, x)
    wide = torch.rand(40, 3, generator=g, dtype=torch.float64)
    (history, epochs), note, kept = overlapping_start(
        model, x, found, pooled, score, train, (History(), 5)
    )
    assert (kept is not None) == (case == "adopted")  # the new fit's fold scores, when kept
    if case == "adopted":
        assert kept[1] is wide and kept[0].shape == (40,)
        assert calls == ["score", [7, 8, 8, 9, 30]] and epochs == 8
        assert note.startswith("; then started with its components overlapping (2.00 modes")
        with torch.no_grad():
            assert (model(x).modes().valid.sum(-1) == 1).all()
        return
    assert epochs == 5
    assert calls == {"worse on the folds": ["score"], "one mode": [],
                     "no fewer modes": ["score", [7, 8, 8, 9, 30]]}[case]  # fmt: skip
    assert ("not tried" in note) == (case == "worse on the folds")
    assert ("not kept" in note) == (case == "no fewer modes")
    assert (note == "") == (case == "one mode")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, chosen_state[k])

