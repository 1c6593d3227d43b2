"""What fit asks of a model: the ConditionalDensity and TrainableMixture protocols."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Normal

import torchmdn
from torchmdn import MDN, MDNRNN
from torchmdn.training.protocol import ConditionalDensity, TrainableMixture, responsibilities


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 10 + 100
    y = 3 * x + torch.randn(n, 1, generator=g)
    return x, y


def test_an_mdn_is_a_trainable_mixture_and_a_recurrent_model_is_not_by_itself():
    assert isinstance(MDN(1, 1, n_components=2), TrainableMixture)
    assert not isinstance(MDNRNN(1, 1, 2), TrainableMixture)  # fit_sequences adapts it
    assert not isinstance(nn.Linear(1, 2), ConditionalDensity)


class _Gaussian(nn.Module):
    """A model with its own normalisers and likelihood, but no mixture head."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 2)
        for name in ("x_loc", "x_scale", "y_loc", "y_scale"):
            self.register_buffer(name, torch.zeros(1) if "loc" in name else torch.ones(1))
        self.register_buffer("standardized", torch.tensor(False))
        self.standardize_calls = 0

    def standardize(self, x: Tensor, y: Tensor) -> None:
        self.standardize_calls += 1
        self.x_loc.copy_(x.mean(0))
        self.x_scale.copy_(x.std(0))
        self.y_loc.copy_(y.mean(0))
        self.y_scale.copy_(y.std(0))
        self.standardized.fill_(True)

    def forward(self, x: Tensor) -> Normal:
        out = self.linear((x - self.x_loc) / self.x_scale)
        return Normal(out[:, :1], nn.functional.softplus(out[:, 1:]) + 1e-3)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        z = (y - self.y_loc) / self.y_scale
        return (self(x).log_prob(z) - self.y_scale.log()).sum(-1)


def test_a_conditional_density_is_standardised_and_scored_by_its_own_log_prob():
    x, y = _data()
    model = _Gaussian()
    assert isinstance(model, ConditionalDensity) and not isinstance(model, TrainableMixture)
    history = torchmdn.fit(
        model, x, y, max_epochs=60, batch_size=64, progress=False, random_state=0
    )
    assert model.standardize_calls == 1 and bool(model.standardized)
    assert history.effective_components == []  # no mixture to track
    # the score fit reports is the model's own log_prob, in y's units
    torch.testing.assert_close(
        torch.tensor(history.train_nll[-1]), -model.log_prob(x, y).mean().detach(), atol=1.0, rtol=0
    )
    # inputs near 100, slope 3: the same budget without standardisation does far worse
    raw = _Gaussian()
    torchmdn.fit(
        raw, x, y, max_epochs=60, batch_size=64, progress=False, random_state=0, standardize=False
    )
    assert raw.standardize_calls == 0
    assert -model.log_prob(x, y).mean() < -raw.log_prob(x, y).mean() - 1.0


def test_a_plain_module_returning_a_distribution_trains_without_the_remedies():
    x, y = _data()
    x, y = (x - 105) / 3, (y - y.mean()) / y.std()

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(1, 2)

        def forward(self, x: Tensor) -> Normal:
            out = self.linear(x)
            return Normal(out[:, :1], nn.functional.softplus(out[:, 1:]) + 1e-3)

    model = Plain()
    before = -model(x).log_prob(y).mean().item()
    torchmdn.fit(model, x, y, max_epochs=30, batch_size=64, progress=False)
    assert -model(x).log_prob(y).mean().item() < before - 0.5


def test_responsibilities_are_shares_that_sum_to_one():
    x, y = _data()
    model = MDN(1, 1, n_components=3, hidden=(8,)).standardize(x, y)
    shares = responsibilities(model, x, y)
    assert shares.shape == (3,)
    torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
    dist, z = model.mixture_and_target(x, y)
    assert dist.batch_shape == (200,) and z.shape == (200, 1)
    torch.testing.assert_close(z, (y - model.y_loc) / model.y_scale)
