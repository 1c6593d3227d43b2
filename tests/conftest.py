"""Test fixtures: a seed per test, a guard that fails any test after which torch's global
defaults (default dtype, distribution validation, grad mode) have changed, and the
``device`` fixture: every test that takes it runs on the CPU and, where there is one, on
CUDA (``pytest -m gpu`` selects the CUDA cases; without CUDA they skip, saying why)."""

import os
from pathlib import Path

import pytest
import torch
from torch.distributions import Distribution

try:
    from hypothesis import settings
except ImportError:  # a bare image (the GPU check): the property-test modules are left out
    settings = None
    collect_ignore = [
        str(p.relative_to(Path(__file__).parent))
        for p in Path(__file__).parent.rglob("*.py")
        if "from hypothesis" in p.read_text(encoding="utf-8")
        and p.name not in ("conftest.py", "oracles.py")
    ]
else:
    # property tests draw the same examples on every run, so CI is reproducible; explore
    # more locally with HYPOTHESIS_PROFILE=explore
    settings.register_profile("ci", derandomize=True, deadline=None)
    settings.register_profile("explore", deadline=None, max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ],
)


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> torch.device:
    """The device to run on: the CPU always, CUDA when available (marked ``gpu``)."""
    return torch.device(request.param)


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
