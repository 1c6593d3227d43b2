"""Copies of a run's state and the flat names a checkpoint stores it under."""

import pytest
import torch
from torch import nn

from torchmdn import MDN
from torchmdn.errors import ModelFileError
from torchmdn.training.state import (
    copy_optimizer_state,
    copy_state,
    flat,
    load_optimizer_tensors,
    optimizer_tensors,
    saved_state,
    unflat,
)


def test_a_copied_state_is_independent_and_a_shared_tensor_is_cloned_once():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # one module used twice
    state = copy_state(model)
    assert state.keys() == model.state_dict().keys()
    assert state["0.weight"] is state["2.weight"]  # one clone for both entries
    with torch.no_grad():
        shared.weight.add_(1.0)
    assert not torch.equal(state["0.weight"], shared.weight)  # a copy, not a view
    model.load_state_dict(state)
    torch.testing.assert_close(shared.weight, state["0.weight"])


def test_optimizer_state_round_trips_through_flat_tensors():
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    copied = copy_optimizer_state(opt)
    tensors, groups = optimizer_tensors(opt)
    named = unflat("opt", flat("opt", tensors))
    assert named.keys() == tensors.keys()
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    groups = [{**g, "betas": list(g["betas"])} for g in groups]  # as JSON gives them back
    load_optimizer_tensors(fresh, named, groups)
    assert fresh.param_groups[0]["lr"] == 0.1 and fresh.param_groups[0]["betas"] == (0.9, 0.99)
    for i, s in fresh.state_dict()["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(v, copied["state"][i][k])
    opt.step()  # the copy is not changed by later steps
    assert not torch.equal(opt.state_dict()["state"][0]["exp_avg"], copied["state"][0]["exp_avg"])


def test_a_saved_state_for_another_model_is_a_model_file_error():
    small, large = MDN(1, 1, n_components=2, hidden=(4,)), MDN(1, 1, n_components=3, hidden=(4,))
    tensors = flat("best", small.state_dict())
    assert saved_state("c", small, tensors, "best").keys() == small.state_dict().keys()
    with pytest.raises(ModelFileError, match="of another shape.*same arguments"):
        saved_state("c", large, tensors, "best")
    tensors.pop("best/head.linear.bias")
    with pytest.raises(ModelFileError, match="missing.*head.linear.bias"):
        saved_state("c", small, tensors, "best")
