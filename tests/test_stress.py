"""The stress suite: problems that break naive MDN training train to a sane NLL with defaults."""

import math

import pytest
import torch

import torchmdn

PROBLEMS = torchmdn.datasets.stress_problems(seed=0)


def gaussian_nll(y_train: torch.Tensor, y_test: torch.Tensor) -> float:
    """Test NLL of one unconditional Gaussian (diagonal) fitted to the training targets."""
    y_train, y_test = y_train.double(), y_test.double()
    dist = torch.distributions.Normal(y_train.mean(0), y_train.std(0))
    return -dist.log_prob(y_test).sum(-1).mean().item()


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_stress_problem_trains_to_a_sane_nll(name):
    p = PROBLEMS[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchmdn.MDN(p["x"].shape[1], p["y"].shape[1], **p["model"])
    h = torchmdn.fit(model, p["x"], p["y"], max_epochs=60, progress=False, random_state=0)
    with torch.no_grad():
        nll = -model.log_prob(p["x_test"], p["y_test"]).double().mean().item()
    reference = gaussian_nll(p["y"], p["y_test"])
    assert math.isfinite(nll) and all(math.isfinite(v) for v in h.train_nll)
    assert all(torch.isfinite(q).all() for q in model.parameters())
    # sane in user units: no worse than an unconditional Gaussian (tiny data gets 1 nat slack)
    slack = 1.0 if p["x"].shape[0] < 100 else 0.0
    assert nll <= reference + slack, (nll, reference)
