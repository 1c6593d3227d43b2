"""Test fixtures: a seed per test, and a guard that fails any test after which torch's
global defaults (default dtype, distribution validation, grad mode) have changed."""

import pytest
import torch
from hypothesis import settings
from torch.distributions import Distribution

# property tests draw the same examples on every run, so CI is reproducible; explore more
# locally with HYPOTHESIS_PROFILE=explore
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_and_guard_globals():
    torch.manual_seed(0)
    before = (torch.get_default_dtype(), Distribution._validate_args, torch.is_grad_enabled())
    yield
    after = (torch.get_default_dtype(), Distribution._validate_args, torch.is_grad_enabled())
    assert after == before, f"global torch state changed: {before} -> {after}"


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (the demos' own setting), restoring it afterwards."""
    from torchmdn.apps.sequences.demo import one_thread

    with one_thread():
        yield
