"""Training from CSV/Parquet files read in chunks: statistics, samples, batches, errors."""

import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from torchmdn import MDN, TableSource, fit
from torchmdn.cli import main
from torchmdn.errors import InputError
from torchmdn.training.distributed import Group
from torchmdn.training.streaming import Scan, _Moments, _uniform


def frame(n=500, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-2, 2, n), rng.normal(5, 3, n)
    return pd.DataFrame({"a": a, "b": b, "y": np.sin(a) + 0.1 * rng.normal(size=n) * (1 + b)})


@pytest.fixture
def files(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet", row_group_size=128)
    return tmp_path, df


def scan(source, fraction=0.1, seed=0):
    return Scan(source, fraction, seed, Group(), torch.float64, torch.device("cpu"))


def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(2, 1, n_components=3, hidden=(16,)).double()


@pytest.mark.parametrize("name", ["d.csv", "d.parquet"])
def test_streamed_statistics_equal_the_in_memory_ones(files, name):
    path, _ = files
    df = pd.read_csv(path / name) if name.endswith("csv") else pd.read_parquet(path / name)
    small, big = (scan(TableSource(path / name, "y", chunk_rows=c)) for c in (7, 10_000))
    held = _uniform(np.arange(len(df)), 0) < 0.1  # row numbers hashed with the seed
    train = df[~held]
    assert small.n_train == big.n_train == len(train) and 20 < held.sum() < 80
    np.testing.assert_array_equal(
        np.sort(small.validation[1].numpy(), 0), np.sort(df[held][["y"]], 0)
    )
    for s in (small, big):
        np.testing.assert_allclose(s.x_moments.mean, train[["a", "b"]].mean(), rtol=1e-12)
        np.testing.assert_allclose(s.x_moments.std(), train[["a", "b"]].std(), rtol=1e-12)
        np.testing.assert_allclose(s.y_moments.std(), train["y"].std(), rtol=1e-12)
    # the samples do not depend on the chunking
    assert torch.equal(small.sample[0], big.sample[0])


def test_chan_merge_matches_one_pass():
    a = np.random.default_rng(0).normal(1e6, 1e-2, (1000, 2))  # large mean, tiny spread
    merged = _Moments.of(a[:1]).merge(_Moments.of(a[1:300])).merge(_Moments.of(a[300:]))
    np.testing.assert_allclose(merged.std(), a.std(0, ddof=1), rtol=1e-8)
    assert merged.n == 1000


def test_samples_are_bounded_uniform_and_seeded(files):
    path, _ = files
    source = TableSource(path / "d.csv", "y", chunk_rows=50, sample_rows=30, validation_rows=5)
    s = scan(source, fraction=0.5)
    assert len(s.sample[0]) == 30 and len(s.validation[0]) == 5
    assert s.n_train + 0 < 500 and abs(s.n_train - 250) < 60  # about half held out
    other = scan(source, fraction=0.5, seed=1)
    assert not torch.equal(other.sample[0], s.sample[0])
    assert torch.equal(scan(source, fraction=0.5).sample[0], s.sample[0])


def test_each_epoch_streams_every_training_row_once_in_a_new_order(files):
    path, _ = files
    s = scan(TableSource(path / "d.parquet", "y", chunk_rows=40, shuffle_rows=100))
    epochs = []
    for epoch in range(2):
        batches = list(s.batches(epoch, 64))
        assert len(batches) == math.ceil(s.n_train / 64)
        assert all(0 < len(b[0]) <= 64 for b in batches)
        epochs.append(torch.cat([b[2] for b in batches]))
    for rows in epochs:
        assert len(rows) == s.n_train and len(set(rows.tolist())) == s.n_train
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist())
    assert epochs[0].tolist() != epochs[1].tolist()
    assert epochs[0].tolist() != sorted(epochs[0].tolist())  # shuffled within the buffer


def test_fit_on_a_stream_learns_and_sets_the_normalisers(files):
    path, _ = files
    source = TableSource(path / "d.parquet", "y", chunk_rows=64, shuffle_rows=200)
    m = model()
    h = fit(m, source, max_epochs=15, progress=False, random_state=0)
    s = scan(source)
    torch.testing.assert_close(m.x_loc, torch.from_numpy(s.x_moments.mean))
    torch.testing.assert_close(m.y_scale, torch.from_numpy(s.y_moments.std()))
    assert h.train_nll[-1] < h.train_nll[0] - 0.3 and len(h.val_nll) == 15
    # the CSV copy (equal up to decimal round trips) gives the same result
    m2 = model()
    h2 = fit(m2, TableSource(path / "d.csv", "y", chunk_rows=64, shuffle_rows=200),
             max_epochs=15, progress=False, random_state=0)  # fmt: skip
    np.testing.assert_allclose(h2.train_nll, h.train_nll, rtol=1e-9)


def test_streamed_grid_target_gets_the_same_floor_as_in_memory(tmp_path):
    df = frame()
    df["y"] = np.round(2 * df["y"]) / 2  # recorded on a grid of step 0.5
    df.to_csv(tmp_path / "g.csv", index=False)
    streamed = model()
    scan(TableSource(tmp_path / "g.csv", "y", chunk_rows=64)).standardize(streamed)
    want = 0.5 / math.sqrt(12) / streamed.y_scale
    torch.testing.assert_close(streamed.head.scale_floor, want.to(streamed.head.scale_floor))
    with pytest.raises(InputError, match="set_normalizers"):
        scan(TableSource(tmp_path / "g.csv", "y")).standardize(torch.nn.Linear(2, 1))


def test_streamed_checkpoint_and_resume_give_the_uninterrupted_result(files):
    path, _ = files
    source = TableSource(path / "d.csv", "y", chunk_rows=64, shuffle_rows=200)
    kw = dict(max_epochs=6, progress=False, random_state=2, noise_y=0.1)
    full = model()
    h_full = fit(full, source, **kw)
    ckpt = path / "run.ckpt"
    fit(model(), source, checkpoint=ckpt, callback=lambda e, h: e == 2, **kw)
    resumed = model()
    h_res = fit(resumed, source, resume=ckpt, **kw)
    assert h_res.train_nll == h_full.train_nll
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "text, match",
    [
        ("a,b,y\n1,2,3\n4,x7,6\n", r"bad\.csv, data row 2, column 'b': 'x7' is not a number"),
        ("a,b,y\n1,2,3\n4,,6\n", r"data row 2, column 'b': missing value"),
        ("a,b,y\n1,2,3\n4,?,6\n", r"data row 2, column 'b': missing value"),
        ("a,b,y\n1,2,3\n4,inf,6\n", r"column 'b': inf is not finite"),
        ("", r"bad\.csv is empty"),
        ("a,b,y\n", r"header but no data rows"),
        ("a,c,y\n1,2,3\n", r"no column named \['b'\]; the columns are \['a', 'c', 'y'\]"),
    ],
)
def test_bad_csv_files_give_errors_naming_file_row_and_column(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        fit(model(), TableSource(path, "y", ["a", "b"], chunk_rows=1), max_epochs=1, progress=False)


def test_bad_sources_and_arguments(files, monkeypatch):
    path, df = files
    df.assign(b=df["b"].astype(str)).to_parquet(path / "s.parquet")
    with pytest.raises(InputError, match=r"column 'b' has type (large_)?string; expected numbers"):
        TableSource(path / "s.parquet", "y")
    (path / "bin.csv").write_bytes(b"\xff\xfe\x00a,y")
    with pytest.raises(InputError, match=r"bin\.csv is not UTF-8 text .*; save it as UTF-8"):
        TableSource(path / "bin.csv", "y")
    # a bad byte far past the first line: found while streaming, named like the first line's
    late = b"a,b,y\n" + b"1,2,3\n" * 50_000 + b"1,\xff,3\n"
    (path / "late.csv").write_bytes(late)
    with pytest.raises(InputError, match=r"late\.csv is not UTF-8 text after data row \d+ .*UTF-8"):
        list(TableSource(path / "late.csv", "y", chunk_rows=1000).chunks())
    with pytest.raises(InputError, match="not found"):
        TableSource(path / "nope.csv", "y")
    with pytest.raises(InputError, match="chunk_rows must be an integer >= 1"):
        TableSource(path / "d.csv", "y", chunk_rows=0)
    with pytest.raises(InputError, match="pass no y"):
        fit(model(), TableSource(path / "d.csv", "y"), torch.zeros(3, 1), progress=False)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"torchmdn\[stream\]"):
        TableSource(path / "d.parquet", "y")


def test_cli_fit_streams_parquet_and_several_files(files, capsys):
    path, _ = files
    out = path / "m.safetensors"
    args = ["--target", "y", "--epochs", "2", "--hidden", "8", "--quiet", "-o", str(out)]
    assert main(["fit", str(path / "d.parquet"), "--chunk-rows", "100", *args]) == 0
    assert out.exists() and "trained 2 epochs" in capsys.readouterr().out
    assert main(["fit", str(path / "d.csv"), str(path / "d.csv"), *args]) == 0
    assert main(["fit", str(path / "d.csv"), "--stream", "--features", "a,q", *args]) == 1
    assert "no column named ['q']" in capsys.readouterr().err


def test_fit_on_a_stream_on_the_device(files, device):
    """Streamed chunks go to the model's device; the result is the CPU's up to round-off."""
    path, _ = files
    source = TableSource(path / "d.parquet", "y", chunk_rows=64, shuffle_rows=200)
    m = model().to(device)
    h = fit(m, source, max_epochs=2, progress=False, random_state=0)
    assert m.x_loc.device.type == device.type and len(h.val_nll) == 2
    cpu = model()
    h_cpu = fit(cpu, source, max_epochs=2, progress=False, random_state=0)
    np.testing.assert_allclose(h.train_nll, h_cpu.train_nll, rtol=1e-6)
