"""The command line's inputs and outputs: never overwrite an input, a folder or a device;
find output problems before training; never lose a trained model or leave half a file."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import pytest
import torch

import torchmdn
from torchmdn.cli import main

FIT = ["--epochs", "2", "--hidden", "4", "--components", "1", "--quiet"]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(n: int = 40) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(n, generator=g)
    return "".join(
        f"{a:.4f},{b:.4f},{c:.4f}\n" for (a, b), c in zip(x.tolist(), y.tolist(), strict=True)
    )


@pytest.fixture
def data(tmp_path) -> Path:
    return _csv(tmp_path / "data.csv", "x1,x2,y\n" + _rows())


@pytest.fixture
def model(tmp_path, data) -> Path:
    out = tmp_path / "model.safetensors"
    assert _quiet(["fit", str(data), "--target", "y", *FIT, "-o", str(out)]) == 0
    return out


def _quiet(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def _error(capsys, rc: int, *needles: str) -> str:
    _, err = capsys.readouterr()
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_fit_refuses_to_overwrite_its_input(tmp_path, data, capsys):
    before = data.read_bytes()
    rc = main(["fit", str(data), "--target", "y", *FIT, "-o", str(data)])
    _error(capsys, rc, "is the input file")
    assert data.read_bytes() == before


def test_predict_refuses_to_overwrite_its_inputs(tmp_path, data, model, capsys):
    for victim in (data, model):
        before = victim.read_bytes()
        rc = main(["predict", str(model), str(data), "-o", str(victim)])
        _error(capsys, rc, "is the input file")
        assert victim.read_bytes() == before
    link = tmp_path / "link.csv"  # the same file through a symlink
    link.symlink_to(data)
    _error(capsys, main(["sample", str(model), str(data), "-o", str(link)]), "is the input file")


def test_a_folder_or_device_is_never_an_output(tmp_path, data, model, capsys):
    rc = main(["predict", str(model), str(data), "-o", str(tmp_path)])
    _error(capsys, rc, "is a directory")
    rc = main(["predict", str(model), str(data), "-o", os.devnull])
    _error(capsys, rc, "not a regular file")
    assert Path(os.devnull).is_char_device()


def test_a_symlinked_output_is_written_through(tmp_path, data, model):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "out.csv"
    link.symlink_to(target)
    assert _quiet(["predict", str(model), str(data), "-o", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("y_mean,y_std")


def test_output_problems_are_found_before_training(tmp_path, data, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the output was checked")

    import sys

    monkeypatch.setattr(sys.modules["torchmdn.training.fit"], "fit", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    rc = main(["fit", str(data), "--target", "y", *FIT, "-o", str(blocker / "m.safetensors")])
    _error(capsys, rc, "m.safetensors")
    rc = main(["fit", str(data), "--target", "y", *FIT, "-o", str(tmp_path)])
    _error(capsys, rc, "is a directory")


def test_a_failed_save_keeps_the_model_in_a_fallback_file(tmp_path, data, capsys, monkeypatch):
    import errno

    from torchmdn import io as mio

    real = mio.save
    wanted = tmp_path / "m.safetensors"

    def full_disk(model, path, metadata=None):
        if Path(path) == wanted:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path, metadata)

    monkeypatch.setattr(mio, "save", full_disk)
    rc = _quiet(["fit", str(data), "--target", "y", *FIT, "-o", str(wanted)])
    err = _error(capsys, rc, "No space left", "saved to")
    rescued = Path(err.split("saved to ")[1].split(" instead")[0])
    try:
        assert torchmdn.load(rescued).target_names == ["y"]
    finally:
        rescued.unlink()
    assert not wanted.exists()


def test_a_failed_csv_write_leaves_the_old_file(tmp_path, data, model, capsys, monkeypatch):
    out = tmp_path / "draws.csv"
    out.write_text("old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("torchmdn._files.os.fsync", full_disk)
    rc = main(["sample", str(model), str(data), "-o", str(out)])
    _error(capsys, rc, "No space left")
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data.csv", "model.safetensors", "draws.csv"]
    )


def test_inputs_that_are_not_files_say_what_they_are(tmp_path, model, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, what in ((tmp_path, "is a directory"), (fifo, "FIFO"), (os.devnull, "a device")):
        _error(
            capsys, main(["fit", str(path), "--target", "y", *FIT, "-o", str(tmp_path / "m")]), what
        )
        _error(capsys, main(["predict", str(model), str(path)]), what)


def test_a_model_without_feature_names_needs_features(tmp_path, data, capsys):
    model = torchmdn.MDN(2, 1, n_components=1, hidden=(4,))
    model.standardize(torch.rand(10, 2), torch.rand(10, 1))
    path = tmp_path / "anon.safetensors"
    torchmdn.save(model, path)
    reordered = _csv(tmp_path / "r.csv", "y,x1,x2\n1,0.5,0.5\n")
    _error(
        capsys, main(["predict", str(path), str(reordered)]), "--features", "without feature names"
    )
    assert _quiet(["predict", str(path), str(reordered), "--features", "x1,x2"]) == 0
    _error(capsys, main(["predict", str(path), str(reordered), "--features", "x1"]), "takes 2")


def test_bad_hidden_and_tiny_data_give_advice_the_cli_can_follow(tmp_path, capsys):
    rows = "".join(f"{i + 0.5},{i * i % 7}\n" for i in range(4))  # x is no row index
    data = _csv(tmp_path / "d.csv", "x,y\n" + rows)
    out = tmp_path / "m.safetensors"
    _error(
        capsys,
        main(["fit", str(data), "--target", "y", "--hidden", "a,b", "-o", str(out)]),
        "--hidden",
    )
    _error(
        capsys,
        main(["fit", str(data), "--target", "y", *FIT, "-o", str(out)]),
        "--validation-fraction 0",
    )
    assert (
        _quiet(
            ["fit", str(data), "--target", "y", *FIT, "--validation-fraction", "0", "-o", str(out)]
        )
        == 0
    )


def test_repeated_column_names_are_refused(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", "x,x,y\n" + _rows())
    out = str(tmp_path / "m.safetensors")
    for extra in ([], ["--stream"]):
        _error(
            capsys,
            main(["fit", str(data), "--target", "y", *FIT, *extra, "-o", out]),
            "more than once",
        )


def test_a_streamed_row_with_extra_fields_is_refused(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    for rows in (_rows()[:-1] + ",5,6\n", "1,2,3,4,5\n" + _rows()):
        data = _csv(tmp_path / "d.csv", "x1,x2,y\n" + rows)
        rc = main(["fit", str(data), "--target", "y", *FIT, "--stream", "-o", out])
        _error(capsys, rc, "field")


def test_a_hostile_header_is_read_in_linear_time(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", ', "x' * 20_000 + "\n1\n")  # csv.Sniffer: ~50 s at 64 KB
    started = time.perf_counter()
    _error(capsys, main(["fit", str(data), "--target", "y", *FIT, "-o", str(tmp_path / "m")]))
    assert time.perf_counter() - started < 2.0


def test_values_beyond_the_model_dtype_are_refused(tmp_path, model, capsys):
    data = _csv(tmp_path / "big.csv", "x1,x2,y\n1e39,0.5,1\n")  # finite in float64 only
    _error(capsys, main(["predict", str(model), str(data)]), "overflow", "float64")
    _error(capsys, main(["evaluate", str(model), str(data)]), "overflow", "float64")
