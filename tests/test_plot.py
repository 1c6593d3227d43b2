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


def test_axes_carry_the_column_names_and_the_data_is_visible():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchmdn.MDN(1, 1, n_components=2, hidden=(4,), feature_names=["waiting"],
                             target_names=["eruptions"])  # fmt: skip
    x, y = torch.rand(30), torch.rand(30)
    ax = plot.conditional_density(model, (0, 1), (0, 1), data=(x, y), resolution=20)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("waiting", "eruptions")
    dots = ax.collections[-1]
    assert len(dots.get_offsets()) == 30
    assert dots.get_sizes().min() >= 8 and dots.get_alpha() >= 0.8  # not 2 px at 30% opacity
    assert dots.get_linewidths().max() > 0  # a rim sets them apart from any colour below
    _, gm = bimodal_batch(10)
    ax = plot.quantile_fan(torch.arange(10.0), gm, y=torch.zeros(10), xlabel="a", ylabel="b")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("a", "b")


def test_density_contours_grid_covers_every_mode_it_marks():
    # a narrow component of weight 1% far out: a real mode, outside mean ± 4 sd
    loc = torch.tensor([[0.0, 0.0], [20.0, 20.0]], dtype=F64)
    scale = torch.tensor([[1.0, 1.0], [0.05, 0.05]], dtype=F64)
    gm = GaussianMixture(torch.tensor([0.99, 0.01], dtype=F64).log(), loc, scale=scale)
    assert (gm.mean + 4 * gm.stddev < 20).all()
    ax = plot.density_contours(gm, labels=("cty", "hwy"), resolution=60)
    marks = ax.collections[-1].get_offsets()
    assert len(marks) == 2
    grid = ax.collections[0].get_datalim(ax.transData)  # the filled contours: the grid
    for mx, my in marks:
        assert grid.x0 <= mx <= grid.x1 and grid.y0 <= my <= grid.y1, (grid, mx, my)
    assert ax.get_xlim() == pytest.approx((grid.x0, grid.x1))  # no white margin
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("cty", "hwy")


def test_plot_is_reachable_without_importing_it():
    import subprocess
    import sys

    code = "import sys, torchmdn; assert 'torchmdn.plot' not in sys.modules; print(torchmdn.plot.conditional_density.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "conditional_density"


def test_plots_from_a_model_on_the_device(tmp_path, device):
    """Figures take mixtures and models wherever they are (drawn from CPU copies)."""
    torch.manual_seed(0)
    model = torchmdn.MDN(1, 1, n_components=2, hidden=(8,)).to(device)
    x = torch.linspace(0, 1, 40, device=device).unsqueeze(-1)
    y = torch.sin(6 * x) + 0.1 * torch.randn(40, 1, device=device)
    model.standardize(x, y)
    with torch.no_grad():
        dist = model(x)
    ax = plot.conditional_density(model, (0, 1), (-2, 2), data=(x, y), resolution=30, modes=True)
    saved(ax, tmp_path, "c.png")
    saved(plot.quantile_fan(x, dist, y=y), tmp_path, "q.png")
    saved(plot.pit_histogram(dist, y), tmp_path, "p.png")
