"""The one training-length rule (torchmdn.training.length) and its users: fit, the command
line and MDNRegressor."""

import math
import warnings

import numpy as np
import pytest
import torch

from torchmdn import MDN, fit
from torchmdn.errors import InputError
from torchmdn.training.length import default_steps, plan, validation_rows


def test_steps_scale_with_the_data_between_a_floor_and_a_cap():
    assert default_steps(50) == default_steps(1200) == 3000
    assert default_steps(1800) == 4500  # Bishop's problem: its former 300 epochs of 15 steps
    assert default_steps(10**6) == 20_000
    # epochs follow from the steps: 3000 steps of one batch each for 100 rows
    assert plan(100, 128) == (3000, 100)  # patience capped at 100 epochs
    assert plan(1800, 128) == (300, 60)
    assert plan(1800, 128, max_steps=150) == (10, 20)  # at least 20 epochs of patience
    assert plan(1800, 128, max_epochs=7, patience=None) == (7, None)
    assert plan(1800, 128, max_epochs=7, max_steps=10**6, patience=3) == (7, 3)
    for bad in ({"max_steps": 0}, {"max_epochs": 1.5}, {"patience": "soon"}, {"patience": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            plan(100, 10, **bad)


def _tiny(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    return x, x + 0.1 * torch.randn(n, 1, generator=g)


def _model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(1, 1, n_components=2, hidden=(8,))


def test_fit_counts_steps_and_stops_early_by_default():
    x, y = _tiny()
    # 54 training rows in batches of 10: 6 steps per epoch, so 30 steps are 5 epochs
    h = fit(_model(), x, y, max_steps=30, batch_size=10, progress=False, random_state=0)
    assert h.epochs == 5
    # a learning rate too small to change anything: the validation NLL never improves, and
    # early stopping (on by default) ends the run after max(20, 20% of the epochs) epochs
    h = fit(_model(), x, y, max_epochs=200, lr=1e-30, progress=False, random_state=0)
    assert h.stopped_early and h.epochs == 1 + 40
    h = fit(_model(), x, y, max_epochs=30, lr=1e-30, patience=None, progress=False)
    assert not h.stopped_early and h.epochs == 30


def test_the_estimator_follows_the_same_rule():
    pytest.importorskip("sklearn")
    from torchmdn import MDNRegressor

    x, y = _tiny()
    reg = MDNRegressor(hidden_layer_sizes=(8,), n_components=2, max_steps=30, batch_size=10,
                       random_state=0).fit(x.numpy(), y.numpy().ravel())  # fmt: skip
    assert reg.history_.epochs == math.ceil(30 / math.ceil(54 / 10))
    reg = MDNRegressor(hidden_layer_sizes=(8,), n_components=2, max_epochs=100,
                       learning_rate=1e-30, random_state=0).fit(x.numpy(), y.numpy().ravel())  # fmt: skip
    assert reg.history_.stopped_early and reg.history_.epochs == 21


def test_the_command_line_states_and_follows_the_rule(tmp_path, capsys):
    from torchmdn.cli import build_parser, main

    helptext = build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert "clip(2.5 N, 3000, 20000)" in helptext and "--patience" in helptext
    x, y = _tiny()
    data = tmp_path / "d.csv"
    data.write_text(
        "a,b\n"
        + "".join(
            f"{u:.5f},{v:.5f}\n" for u, v in zip(x[:, 0].tolist(), y[:, 0].tolist(), strict=True)
        )
    )
    out = tmp_path / "m.safetensors"
    argv = ["fit", str(data), "--target", "b", "--hidden", "8", "--components", "2", "--quiet"]
    assert main([*argv, "--steps", "12", "--batch-size", "10", "-o", str(out)]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out


def test_fit_takes_any_real_dtype_and_pandas_without_torch_warnings():
    pd = pytest.importorskip("pandas")
    x, y = _tiny()
    frame = pd.DataFrame({"x": x[:, 0].double().numpy(), "y": y[:, 0].double().numpy()})
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "NumPy array is not writable" among them
        fit(model, frame[["x"]], frame["y"], max_epochs=2, progress=False)
        fit(model, frame[["x"]].to_numpy(), frame["y"].to_numpy(), max_epochs=2, progress=False)
        fit(model, x.double(), y.double(), max_epochs=2, progress=False)
        fit(model, np.arange(60).reshape(-1, 1), y, max_epochs=2, progress=False)  # integers
    with torch.no_grad():  # model(x) and log_prob cast to the model's dtype too
        assert model(x.double()).mean.dtype == torch.float32
        assert model.log_prob(x.double(), y.double()).dtype == torch.float32
        torch.testing.assert_close(model.log_prob(x.double(), y.double()), model.log_prob(x, y))


def test_validation_rows_rounds_the_share():
    """The one split-size rule: fit holds out this many rows, and the capacity choice asks it
    whether one split would hold the 25 rows it needs (else it cross-validates)."""
    assert [validation_rows(n, 0.1) for n in (9, 120, 249, 250, 1000)] == [1, 12, 25, 25, 100]
    assert validation_rows(500, 0.0) == 0
