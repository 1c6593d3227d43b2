"""fit(): the training loop's contract."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import torchmdn
from torchmdn import MDN, History, fit
from torchmdn.errors import InputError, TrainingError


def small_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 4 - 2
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(n, 1, generator=g) * (1 + x[:, 1:].abs())
    return x, y


def small_model(**kw):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(2, 1, n_components=3, hidden=(16,), **kw)


def test_fit_learns_and_restores_the_best_state():
    x, y = small_data()
    model = small_model()
    h = fit(model, x, y, max_epochs=40, batch_size=32, progress=False, random_state=0)
    assert isinstance(h, History) and h.epochs == len(h.train_nll) == len(h.val_nll) == len(h.lr)
    assert h.train_nll[-1] < h.train_nll[0] - 0.3
    assert 0 <= h.best_epoch < h.epochs and h.best_val_nll == min(h.val_nll)
    assert h.time_s > 0 and h.skipped_steps == 0
    assert not model.training
    assert bool(model.standardized)
    # the model left behind is the best epoch's: recompute its validation NLL from scratch
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    xv, yv = x[perm[:30]], y[perm[:30]]
    with torch.no_grad():
        assert math.isclose(-model.log_prob(xv, yv).mean().item(), h.best_val_nll, rel_tol=1e-5)


def test_fit_is_reproducible_and_leaves_global_rng_alone():
    x, y = small_data()
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        model = small_model()
        h = fit(model, x, y, max_epochs=5, progress=False, random_state=3)
        runs.append((h.train_nll, [p.clone() for p in model.parameters()]))
    assert torch.equal(torch.get_rng_state(), state)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=False))
    other = fit(small_model(), x, y, max_epochs=5, progress=False, random_state=4)
    assert other.train_nll != runs[0][0]


def test_fit_accepts_numpy_and_1d_arrays():
    x, y = small_data()
    model = MDN(1, 1, n_components=2, hidden=(8,))
    h = fit(
        model, x[:, 0].numpy(), y[:, 0].numpy().astype(np.float64), max_epochs=3, progress=False
    )
    assert h.epochs == 3


def test_fit_with_explicit_validation_data_and_no_validation():
    x, y = small_data()
    h = fit(
        small_model(),
        x[:200],
        y[:200],
        validation_data=(x[200:], y[200:]),
        max_epochs=3,
        progress=False,
    )
    assert len(h.val_nll) == 3
    model = small_model()
    h = fit(model, x, y, validation_fraction=0.0, max_epochs=3, progress=False)
    # without validation rows the best epoch is chosen on the full training NLL
    assert h.val_nll == []
    with torch.no_grad():
        assert math.isclose(-model.log_prob(x, y).mean().item(), h.best_val_nll, rel_tol=1e-5)


def test_early_stopping_and_callback():
    x, y = small_data()
    h = fit(small_model(), x, y, max_epochs=1000, patience=2, progress=False)
    assert h.stopped_early and h.epochs < 1000
    h = fit(small_model(), x, y, max_epochs=50, progress=False, callback=lambda e, hist: e == 4)
    assert h.epochs == 5


def test_fit_trains_any_module_that_returns_a_distribution():
    class Gaussian(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            loc, raw = self.lin(x).chunk(2, -1)
            return torch.distributions.Independent(
                torch.distributions.Normal(loc, nn.functional.softplus(raw) + 1e-3), 1
            )

    x, y = small_data()
    h = fit(Gaussian(), x, y, max_epochs=20, progress=False)
    assert h.train_nll[-1] < h.train_nll[0]


def test_progress_false_prints_nothing(capsys):
    x, y = small_data()
    fit(small_model(), x, y, max_epochs=2, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_non_finite_loss_stops_with_a_clear_error_and_restores_the_model():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            scale = torch.log(self.w - 10).expand(len(x), 1)  # NaN for every w < 10
            return torch.distributions.Independent(
                torch.distributions.Normal(x[:, :1], scale, validate_args=False), 1
            )

    x, y = small_data()
    model = Broken()
    with pytest.raises(TrainingError, match=r"non-finite loss on training rows \[\d+"):
        fit(model, x, y, max_epochs=5, progress=False)
    assert model.w.item() == 1.0


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (torch.zeros(10, 2), torch.zeros(9, 1), {}, "same number of rows"),
        (torch.full((10, 2), math.nan), torch.zeros(10, 1), {}, "NaN"),
        (torch.zeros(0, 2), torch.zeros(0, 1), {}, "zero rows"),
        (np.array([["a", "b"]] * 10), torch.zeros(10, 1), {}, "numbers"),
        (torch.zeros(10, 2), torch.zeros(10, 1), {"max_epochs": 0}, "max_epochs"),
        (torch.zeros(10, 2), torch.zeros(10, 1), {"lr": -1.0}, "lr"),
        (
            torch.zeros(10, 2),
            torch.zeros(10, 1),
            {"validation_fraction": 1.5},
            "validation_fraction",
        ),
        (torch.zeros(3, 2), torch.zeros(3, 1), {"validation_fraction": 0.1}, "empty"),
        (torch.randn(10, 2), torch.ones(10, 1), {}, "constant"),
        (torch.randn(10, 3), torch.randn(10, 1), {}, r"\(\.\.\., 2\)"),
    ],
)
def test_bad_input_raises_clear_errors(x, y, kwargs, match):
    with pytest.raises(InputError, match=match):
        fit(small_model(), x, y, progress=False, **kwargs)


@pytest.mark.slow
def test_bishop_with_defaults_reaches_the_quality_target():
    x, t = torchmdn.datasets.bishop(3000, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MDN(1, 1)
    h = fit(model, x[:2000], t[:2000], random_state=0, progress=False)
    with torch.no_grad():
        nll = -model.log_prob(x[2000:], t[2000:]).mean().item()
    assert nll <= -1.25, (nll, h.epochs)
