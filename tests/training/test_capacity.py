"""n_components="auto": the candidates trained together, the choice, and what is reported."""

import math
import re

import pytest
import torch

import torchmdn
from torchmdn import MDN, fit
from torchmdn.training import capacity
from torchmdn.training.capacity import (
    FULL_ONLY_UP_TO,
    LADDER,
    LADDER_EXTRA,
    MODE_CHECK_EXTRA,
    MODE_CHECK_ROWS,
    candidates,
    choose,
)


def _model(d=1, **kw):
    """An MDN that chooses its capacity (unless ``kw`` fixes it)."""
    kw = {"n_components": "auto", "covariance_type": "auto", **kw}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(1, d, hidden=(16,), **kw)


def test_candidates_are_ordered_simplest_first():
    assert [k for k, _ in candidates(_model())] == list(LADDER)
    # a multi-column target also tries larger heads; up to FULL_ONLY_UP_TO columns with full
    # covariances only, beyond that each count both diagonal and full
    assert candidates(_model(FULL_ONLY_UP_TO)) == [(k, "full") for k in LADDER + LADDER_EXTRA]
    pairs = candidates(_model(FULL_ONLY_UP_TO + 1))
    assert pairs[0] == (1, "diagonal") and pairs[-1] == (LADDER_EXTRA[-1], "full")
    assert len(pairs) == 2 * len(LADDER + LADDER_EXTRA)
    fixed = _model(2, n_components=4)  # an explicit count: today's fixed diagonal model
    assert not fixed.auto_covariance and fixed.head.covariance_type == "diagonal"
    assert candidates(_model(2, covariance_type="full")) == [
        (k, "full") for k in LADDER + LADDER_EXTRA
    ]


def test_the_defaults_choose_the_capacity():
    assert MDN(1, 1).config()["n_components"] == "auto"
    assert MDN(1, 2).auto_covariance and MDN(1, 2).config()["covariance_type"] == "auto"
    assert torchmdn.MDNRegressor().get_params()["n_components"] == "auto"
    from torchmdn.cli import build_parser

    args = build_parser().parse_args(["fit", "data.csv", "--target", "y", "-o", "m.safetensors"])
    assert args.components == "auto" and args.covariance == "auto"


def test_the_choice_depends_on_random_state_only():
    """The candidate heads' initial weights come from random_state, not the global RNG."""
    x, y = _bimodal(200)
    results = []
    for global_seed in (1, 2):
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            model = _model()
            h = fit(model, x, y, max_epochs=4, validation_fraction=0.2, random_state=7,
                    progress=False)  # fmt: skip
        results.append((h.capacity["tried"], model.state_dict()))
    assert results[0][0] == results[1][0]
    for name, t in results[0][1].items():
        torch.testing.assert_close(t, results[1][1][name], rtol=0, atol=0, msg=name)


def _rows(seed=0, n=200):
    """Per-row validation NLLs of a best candidate, centred noise, and the paired standard
    error of ``best + noise + c``, for any shift c."""
    g = torch.Generator().manual_seed(seed)
    best = torch.randn(n, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    noise -= noise.mean()
    return best, noise, float(noise.std() / n**0.5)


def test_every_candidate_within_two_standard_errors_is_averaged():
    best, noise, se = _rows()
    pairs = [(1, "diagonal"), (2, "diagonal"), (3, "diagonal"), (5, "diagonal")]
    rows = [best + noise + 2.5 * se, best + noise + 1.5 * se, best, best + noise + 1.9 * se]
    kept, records, reason = choose(rows, pairs)
    assert kept == [1, 2, 3]  # simplest first; 2.5 standard errors is out
    assert [r["kept"] for r in records] == [False, True, True, True]
    assert records[1]["se_vs_best"] == pytest.approx(se) and records[2]["se_vs_best"] == 0.0
    assert "average of the 3 candidates within 2 paired standard errors" in reason
    assert "2+3+5 diagonal" in reason and "3 diagonal: " in reason  # the best named
    # one candidate clearly best (0.5 nats on every row): it alone
    kept, _, reason = choose([best + 0.5, best, best + 0.4], pairs[:3])
    assert kept == [1] and "lowest validation NLL" in reason
    # one component is averaged like any other candidate when it is within noise
    kept, _, _ = choose([best, best + noise + 0.5 * se], pairs[:2])
    assert kept == [0, 1]


def test_only_the_best_covariance_type_is_averaged():
    best, noise, se = _rows(1)
    pairs = [(2, "diagonal"), (2, "full"), (3, "full")]
    kept, records, _ = choose([best + noise + 0.1 * se, best, best + noise + 0.5 * se], pairs)
    assert kept == [1, 2] and not records[0]["kept"]


def _bimodal(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    sign = torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
    return x, sign * (1 + x) + 0.1 * torch.randn(n, 1, generator=g)


def test_auto_finds_two_branches_and_reports_the_choice():
    x, y = _bimodal(600)
    model = _model()
    assert model.n_components == 5 and model.config()["n_components"] == "auto"
    h = fit(model, x, y, max_epochs=40, random_state=0, progress=False)
    assert model.n_components >= 2
    assert model.config()["n_components"] == model.n_components == model.head.n_components
    assert h.capacity["chosen"]["n_components"] == model.n_components
    assert len(h.capacity["tried"]) == len(LADDER)
    assert all(math.isfinite(r["val_nll"]) for r in h.capacity["tried"])
    one = next(r for r in h.capacity["tried"] if r["n_components"] == 1)
    assert one["val_nll"] > h.best_val_nll + 0.3  # one Gaussian cannot fit two branches
    assert isinstance(h.capacity["reason"], str) and h.capacity["reason"]
    assert not model.training


def test_the_installed_average_scores_what_was_recorded():
    """The installed model is the kept heads' average at the recorded epoch: on the
    validation rows it scores the validation NLL the choice saw."""
    x, y = _bimodal(400)
    xv, yv = _bimodal(200, seed=1)
    model = _model()
    h = fit(model, x, y, validation_data=(xv, yv), max_epochs=30, random_state=0, progress=False)
    sizes = h.capacity["chosen"]["averaged"]
    assert sum(sizes) == model.n_components
    assert model.head.groups == (tuple(sizes) if len(sizes) > 1 else None)
    kept = [r for r in h.capacity["tried"] if r["kept"]]
    assert [r["n_components"] for r in kept] == sizes
    with torch.no_grad():
        nll = float(-model.log_prob(xv, yv).mean())
    assert nll == pytest.approx(h.best_val_nll, abs=1e-4)
    assert h.best_val_nll <= min(r["val_nll"] for r in kept) + 1e-4 or len(sizes) == 1


def test_auto_keeps_one_gaussian_data_simple():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(150, 1, generator=g) * 2 - 1
    y = 2 * x + 0.3 * torch.randn(150, 1, generator=g)
    model = _model()
    h = fit(model, x, y, max_epochs=30, validation_fraction=0.2, random_state=0, progress=False)
    assert min(h.capacity["chosen"]["averaged"]) <= 2, h.capacity
    # large heads that brought modes into the average were dropped (and say so)
    kept = [r["n_components"] for r in h.capacity["tried"] if r["kept"]]
    assert kept == h.capacity["chosen"]["averaged"]
    assert _mode_counts(model, x) == {1}, h.capacity  # an average of heads adds no mode


def _mode_counts(model, x):
    """The set of mode counts (library threshold) of the model's density over ``x``."""
    with torch.no_grad():
        _, _, valid = model(x).modes()
    return set(valid.sum(-1).tolist())


def test_an_explicit_count_keeps_todays_behaviour():
    x, y = _bimodal(200)
    model = _model(n_components=3)
    h = fit(model, x, y, max_epochs=3, random_state=0, progress=False)
    assert model.n_components == 3 and h.capacity == {}


def test_auto_model_round_trips_through_save(tmp_path):
    x, y = _bimodal(200)
    model = _model()
    fit(model, x, y, max_epochs=5, validation_fraction=0.2, random_state=0, progress=False)
    path = torchmdn.save(model, tmp_path / "m.safetensors")
    loaded = torchmdn.load(path)
    assert loaded.n_components == model.n_components
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, y), model.log_prob(x, y))


def test_without_validation_rows_the_simplest_is_chosen():
    x, y = _bimodal(100)
    model = _model()
    h = fit(model, x, y, max_epochs=3, validation_fraction=0.0, random_state=0, progress=False)
    assert model.n_components == 1 and "no validation rows" in h.capacity["reason"]


def test_checkpoints_train_the_fixed_default(tmp_path):
    x, y = _bimodal(100)
    model = _model()
    h = fit(model, x, y, max_epochs=2, checkpoint=tmp_path / "c.safetensors", progress=False)
    assert model.n_components == 5 and "checkpoints" in h.capacity["reason"]


@pytest.mark.parametrize("d", [2, 4])
def test_multi_column_target_chooses_a_covariance(d):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, generator=g) * 2 - 1
    t = torch.randn(300, 1, generator=g)
    noise = 0.1 * torch.randn(300, d - 1, generator=g)
    y = torch.cat([t, 0.9 * t + noise], 1) + x  # correlated columns
    model = _model(d)
    h = fit(model, x, y, max_epochs=15, random_state=0, progress=False)
    kinds = {r["covariance_type"] for r in h.capacity["tried"]}
    if d <= FULL_ONLY_UP_TO:  # a diagonal head saves too few outputs to be worth trying
        assert kinds == {"full"} and model.head.covariance_type == "full"
        assert len(h.capacity["tried"]) == len(LADDER + LADDER_EXTRA)
    else:
        assert kinds == {"diagonal", "full"}
        assert len(h.capacity["tried"]) == 2 * len(LADDER + LADDER_EXTRA)
    assert h.capacity["chosen"]["covariance_type"] == model.head.covariance_type


def test_small_data_is_cross_validated():
    """Under 25 validation rows the choice pools five folds' held-out rows."""
    x, y = _bimodal(120)  # 12 validation rows: too few for one split
    model = _model()
    seen = []
    h = fit(model, x, y, max_epochs=20, random_state=0, progress=False,
            callback=lambda epoch, history: seen.append(epoch))  # fmt: skip
    assert "5-fold cross-validation over 120 rows" in h.capacity["reason"]
    assert model.n_components == h.capacity["chosen"]["n_components"]
    assert len(h.capacity["tried"]) == len(LADDER)
    # the chosen sizes were then trained on every row (no validation split) for the folds'
    # median best epoch count: the history is their own
    stop_after = int(re.search(r"for (\d+) epochs", h.capacity["reason"]).group(1))
    assert 1 <= stop_after <= 20 and h.epochs == stop_after == len(seen)
    assert not h.val_nll and h.best_val_nll < math.inf
    # two branches, 120 rows: one Gaussian is clearly worse on the pooled held-out rows
    one = next(r for r in h.capacity["tried"] if r["n_components"] == 1)
    best = min(r["val_nll"] for r in h.capacity["tried"])
    assert model.n_components >= 2 and one["val_nll"] > best + 0.1
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x, y)).all()


def test_tiny_data_does_not_chase_two_validation_rows():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 2, generator=g) * 4 - 2
    y = x[:, :1] + 0.3 * torch.randn(20, 1, generator=g)
    model = MDN(2, 1, hidden=(16,))  # the defaults: capacity chosen from the data
    h = fit(model, x, y, max_epochs=30, random_state=0, progress=False)
    assert "cross-validation over 20 rows" in h.capacity["reason"]
    assert h.capacity["chosen"]["averaged"] == [model.n_components]  # one size, not averaged
    assert model.n_components <= 2, h.capacity


@pytest.mark.parametrize(
    "extra_rows, extra_modes, checked",
    [(-10, MODE_CHECK_EXTRA, True), (0, MODE_CHECK_EXTRA, False), (-10, MODE_CHECK_EXTRA - 1, False)],
)
def test_modes_kept_on_few_validation_rows_are_cross_validated(
    monkeypatch, extra_rows, extra_modes, checked
):
    """When the validation split keeps MODE_CHECK_EXTRA modes or more in the average beyond
    its simplest head's, on fewer than MODE_CHECK_ROWS validation rows, the choice is made
    again by cross-validation over every row; with that many rows or more, or fewer extra
    modes, the split's choice stands."""
    real = capacity.without_new_modes
    calls = []

    def doubting(*args):
        kept, reason, _ = real(*args)
        calls.append(reason)
        return kept, reason, extra_modes  # as if the rows had kept that many modes

    monkeypatch.setattr(capacity, "without_new_modes", doubting)
    n = 10 * MODE_CHECK_ROWS + extra_rows  # validation rows at the default 10%
    x, y = _bimodal(n)
    model = _model()
    h = fit(model, x, y, max_epochs=4, random_state=0, progress=False)
    assert calls, "the split kept one head: the mode check never ran"
    reason = h.capacity["reason"]
    assert reason.startswith(f"the validation split chose {calls[0]}") is checked
    assert (f"5-fold cross-validation over {n} rows" in reason) is checked
    assert model.n_components == h.capacity["chosen"]["n_components"]
    if checked:  # one size trained on every row
        assert h.capacity["chosen"]["averaged"] == [model.n_components] and not h.val_nll
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x, y)).all()


def test_several_columns_are_mode_checked_but_not_cross_validated(monkeypatch):
    """A multi-column target's average gets the mode check too; modes it keeps on few
    validation rows do not send the choice to cross-validation (every head of a density
    spread along a curve has many modes)."""
    real = capacity.without_new_modes
    calls = []

    def doubting(*args):
        kept, reason, _ = real(*args)
        calls.append(reason)
        return kept, reason, MODE_CHECK_EXTRA + 5

    monkeypatch.setattr(capacity, "without_new_modes", doubting)
    n = 10 * MODE_CHECK_ROWS - 10
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    y = torch.cat([x, -x], 1) + 0.1 * torch.randn(n, 2, generator=g)
    model = _model(2)
    h = fit(model, x, y, max_epochs=4, random_state=0, progress=False)
    assert calls, "the split kept one head: the mode check never ran"
    assert h.capacity["reason"] == calls[0] and "cross-validation" not in h.capacity["reason"]
    assert model.n_components == h.capacity["chosen"]["n_components"]
