"""The History of a run: its summary, and reading it back from a checkpoint."""

from dataclasses import asdict

import pytest
import torch

from torchmdn import MDN, History, fit
from torchmdn.errors import ModelFileError
from torchmdn.training.history import saved_history


def test_history_prints_a_short_summary():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 2, generator=g)
    y = x[:, :1] + 0.1 * torch.randn(60, 1, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MDN(2, 1, n_components=3, hidden=(16,))
    h = fit(model, x, y, max_epochs=30, patience=None, progress=False, random_state=0)
    text = repr(h)
    assert len(text) < 200, text  # not 30 epochs of numbers times four lists
    assert text.startswith("History(epochs=30, best_epoch=")
    assert f"best_val_nll={h.best_val_nll:.4f}" in text and "time_s=" in text


def test_a_saved_history_reads_back_equal():
    h = History(train_nll=[1.0, 0.5], val_nll=[1.2, 0.7], lr=[0.01, 0.005], best_epoch=1,
                best_val_nll=0.7, stopped_early=True, skipped_steps=2, time_s=3.5,
                capacity={"chosen": {"n_components": 2}})  # fmt: skip
    assert saved_history("c", asdict(h)) == h
    assert saved_history("c", {"best_epoch": 4}) == History(best_epoch=4)  # older: fewer fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("train_nll", [1.0, "x"]),
        ("train_nll", 3.0),
        ("stopped_early", 1),
        ("best_epoch", 1.5),
        ("best_epoch", True),
        ("best_val_nll", "0.5"),
        ("capacity", []),
    ],
)
def test_a_damaged_history_field_is_a_model_file_error(field, value):
    with pytest.raises(ModelFileError, match=f"c.safetensors.*{field}.*damaged"):
        saved_history("c.safetensors", {field: value})
