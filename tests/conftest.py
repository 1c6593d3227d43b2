"""Test fixtures: a seed per test, and a guard that fails any test after which torch's
global defaults (default dtype, distribution validation, grad mode) have changed."""

import pytest
import torch
from torch.distributions import Distribution


@pytest.fixture(autouse=True)
def _seed_and_guard_globals():
    torch.manual_seed(0)
    before = (torch.get_default_dtype(), Distribution._validate_args, torch.is_grad_enabled())
    yield
    after = (torch.get_default_dtype(), Distribution._validate_args, torch.is_grad_enabled())
    assert after == before, f"global torch state changed: {before} -> {after}"
