"""Figures: each returns an Axes with something drawn and saves to PNG; ``evaluate --plots``."""

import math
import re

import pytest
import torch

import torchmdn
from torchmdn import GaussianMixture, plot
from torchmdn.cli import main
from torchmdn.errors import InputError

pytest.importorskip("matplotlib")
F64 = torch.float64


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def bimodal_batch(r=60):
    x = torch.linspace(0, 1, r, dtype=F64)
    loc = torch.stack([x - 1, 1 - x], -1).unsqueeze(-1)  # [R, 2, 1]
    gm = GaussianMixture(
        torch.zeros(r, 2, dtype=F64), loc, scale=torch.full((r, 2, 1), 0.2, dtype=F64)
    )
    return x, gm


def saved(ax, tmp_path, name):
    path = tmp_path / name
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return path


def test_quantile_fan(tmp_path):
    x, gm = bimodal_batch()
    y = gm.sample(generator=torch.Generator().manual_seed(0))
    ax = plot.quantile_fan(x, gm, y=y)
    assert len(ax.collections) == 4  # three bands and the data
    assert len(ax.lines) == 1  # the median
    saved(ax, tmp_path, "fan.png")
    with pytest.raises(InputError, match="one position per prediction"):
        plot.quantile_fan(x[:5], gm)


def test_pit_histogram_and_calibration_curve(tmp_path):
    _, gm = bimodal_batch(500)
    y = gm.sample(generator=torch.Generator().manual_seed(0))
    ax = plot.pit_histogram(gm, y, bins=10)
    assert len(ax.patches) >= 10
    heights = [p.get_height() for p in ax.patches[:10]]
    assert all(0.5 < h < 1.5 for h in heights)  # roughly flat for the true model
    saved(ax, tmp_path, "pit.png")
    ax = plot.calibration_curve(gm, y)
    xs, ys = ax.lines[1].get_data()
    assert max(abs(a - b) for a, b in zip(xs, ys, strict=True)) < 0.1  # near the diagonal
    saved(ax, tmp_path, "cal.png")


def test_density_contours_2d(tmp_path):
    loc = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64)
    gm = GaussianMixture(torch.zeros(2, dtype=F64), loc, scale=torch.full((2, 2), 0.7, dtype=F64))
    ax = plot.density_contours(gm, data=gm.sample((50,)))
    assert ax.collections, "contours drawn"
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["data", "modes"]
    saved(ax, tmp_path, "contours.png")
    with pytest.raises(InputError, match="2-d target"):
        plot.density_contours(gm.marginal([0]))
    with pytest.raises(InputError, match="one prediction"):
        plot.density_contours(gm.expand((3,)))


def test_conditional_density_with_modes(tmp_path):
    def model(x):
        _, gm = bimodal_batch(x.shape[0])
        return gm

    ax = plot.conditional_density(model, (0, 1), (-2, 2), modes=True, resolution=40)
    assert "modes" in ax.get_legend_handles_labels()[1]
    saved(ax, tmp_path, "density.png")


def test_plots_reject_wrong_inputs():
    gm = GaussianMixture(torch.zeros(2), torch.zeros(2, 2), scale=torch.ones(2, 2))
    with pytest.raises(InputError, match="1-d target"):
        plot.quantile_fan(torch.zeros(()), gm)


@pytest.fixture(scope="module")
def bishop_model(tmp_path_factory):
    x, t = torchmdn.datasets.bishop(600, 0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchmdn.MDN(1, 1, n_components=3, hidden=(16, 16), feature_names=["x"])
    torchmdn.fit(model, x[:500], t[:500], max_epochs=8, progress=False, random_state=0)
    folder = tmp_path_factory.mktemp("bishop")
    path = folder / "m.safetensors"
    torchmdn.save(model, path)
    data = folder / "test.csv"
    rows = ["x,y"] + [
        f"{a:.6f},{b:.6f}" for a, b in zip(x[500:, 0].tolist(), t[500:, 0].tolist(), strict=True)
    ]
    data.write_text("\n".join(rows) + "\n")
    return path, data


def test_cli_evaluate_prints_scores_and_writes_plots(bishop_model, tmp_path, capsys):
    path, data = bishop_model
    out = tmp_path / "plots"
    assert main(["evaluate", str(path), str(data), "--target", "y", "--plots", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"mean NLL \S+ nats over 100 rows", text)
    crps = float(re.search(r"mean CRPS (\S+)", text).group(1))
    cov = float(re.search(r"90% interval coverage (\S+)", text).group(1))
    assert 0 < crps < 1 and 0 <= cov <= 1 and math.isfinite(crps)
    for name in ("pit.png", "calibration.png", "fan.png", "density.png"):
        assert (out / name).stat().st_size > 1000, name
