"""The ``torchmdn`` command line, run in-process through ``torchmdn.cli.main``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchmdn
from torchmdn.cli import build_parser, main

FIT = ["--epochs", "3", "--hidden", "8", "--components", "2", "--quiet"]
ROWS = 60


def _write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(n: int = ROWS, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        out.append(
            [
                f"{a:.4f}",
                f"{b:.4f}",
                f"{a + b + rng.gauss(0, 0.1):.4f}",
                f"{a - b + rng.gauss(0, 0.1):.4f}",
            ]
        )
    return out


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _run_quietly(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data(workdir) -> Path:
    return _write_csv(workdir / "data.csv", ["x1", "x2", "y", "z"], _rows())


@pytest.fixture(scope="module")
def model(workdir, data) -> Path:
    """A model of y given x1, x2 and z (all other columns), trained once for the module."""
    out = workdir / "model.safetensors"
    assert _run_quietly(["fit", str(data), "--target", "y", *FIT, "-o", str(out)]) == 0
    return out


def _one_error_line(capsys, rc: int, command: str, *needles: str) -> str:
    """Exit status 1, exactly one line on stderr, no traceback, naming the problem."""
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err
    assert line.startswith(f"torchmdn {command}: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# ---------------------------------------------------------------------- happy paths


def test_help_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "torchmdn", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("fit", "predict", "sample", "evaluate"):
        assert command in proc.stdout


def test_kernel_command_builds_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHMDN_CACHE", str(tmp_path))
    assert main(["kernel", "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "compiled CPU kernel in use" in out
    assert list((tmp_path / "kernels").glob("mixture-*.so"))  # rebuilt into this cache
    monkeypatch.setenv("CXX", "false")  # a compiler that fails: a one-line error, status 1
    _one_error_line(capsys, main(["kernel", "--rebuild"]), "kernel", "false failed (exit 1)")


def test_fit_writes_a_loadable_model(tmp_path, data, capsys):
    out = tmp_path / "m.safetensors"
    rc = main(["fit", str(data), "--target", "y", *FIT, "-o", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"trained 3 epochs .*validation NLL -?\d+\.\d+", stdout), stdout
    assert str(out) in stdout
    m = torchmdn.load(out)
    assert m.feature_names == ["x1", "x2", "z"]
    assert m.target_names == ["y"]
    assert m.config()["hidden"] == [8]
    assert m.config()["n_components"] == 2
    assert bool(m.standardized)
    assert m.metadata["rows"] == ROWS
    assert m.metadata["trained_on"] == str(data)


def test_fit_an_ensemble_and_use_it(tmp_path, data, capsys):
    out = tmp_path / "e.safetensors"
    assert main(["fit", str(data), "--target", "y", *FIT, "--ensemble", "3", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "model 3 of 3: trained 3 epochs" in stdout and "6 components in all" in stdout
    ens = torchmdn.load(out)
    assert type(ens).__name__ == "Ensemble" and ens.n_components == 6
    assert ens.feature_names == ["x1", "x2", "z"] and ens.metadata["rows"] == ROWS
    # the members are the single models of seeds 0, 1, 2, averaged exactly
    singles = []
    for seed in range(3):
        path = tmp_path / f"s{seed}.safetensors"
        assert main(["fit", str(data), "--target", "y", *FIT, "--seed", str(seed),
                     "-o", str(path)]) == 0  # fmt: skip
        singles.append(torchmdn.load(path))
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    with torch.no_grad():
        expected = torch.logsumexp(torch.stack([m.log_prob(x, y) for m in singles]), 0)
        torch.testing.assert_close(ens.log_prob(x, y), expected - math.log(3))
    capsys.readouterr()
    assert main(["evaluate", str(out), str(data)]) == 0
    assert re.search(r"mean NLL \S+ nats over 60 rows", capsys.readouterr().out)
    assert main(["predict", str(out), str(data), "--quantiles", "0.1,0.9"]) == 0
    header, rows = _read_text(capsys.readouterr().out)
    assert len(rows) == ROWS and header == ["y_mean", "y_std", "y_q10", "y_q90"], header
    _one_error_line(capsys, main(["fit", str(data), "--target", "y", "--ensemble", "0",
                                  "-o", str(tmp_path / "z.safetensors")]), "fit", "--ensemble")  # fmt: skip


def test_fit_is_reproducible_with_the_same_seed(tmp_path, data):
    paths = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{name}.safetensors"
        assert (
            _run_quietly(["fit", str(data), "--target", "y", *FIT, "--seed", seed, "-o", str(out)])
            == 0
        )
        paths.append(out)
    sd = [torchmdn.load(p).state_dict() for p in paths]
    w = "head.linear.weight"
    assert (sd[0][w] == sd[1][w]).all()
    assert not (sd[0][w] == sd[2][w]).all()


def test_predict_to_a_file(tmp_path, model, data, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(data), "-o", str(out)]) == 0
    header, rows = _read(out)
    assert header == ["y_mean", "y_std"]
    assert len(rows) == ROWS
    values = [float(v) for r in rows for v in r]
    assert all(math.isfinite(v) for v in values)
    assert all(float(r[1]) > 0 for r in rows)
    assert capsys.readouterr().out == ""


def test_predict_to_stdout(model, data, capsys):
    assert main(["predict", str(model), str(data)]) == 0
    header, rows = _read_text(capsys.readouterr().out)
    assert header == ["y_mean", "y_std"]
    assert len(rows) == ROWS


def _read_text(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _sample(model: Path, data: Path, out: Path, *extra: str) -> tuple[list[str], list[list[str]]]:
    assert main(["sample", str(model), str(data), "-o", str(out), *extra]) == 0
    return _read(out)


def test_sample_three_per_row(tmp_path, model, data):
    header, rows = _sample(model, data, tmp_path / "s.csv", "-n", "3")
    assert header == ["row", "draw", "y"]
    assert len(rows) == ROWS * 3
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, k) for i in range(ROWS) for k in range(3)]
    assert all(math.isfinite(float(r[2])) for r in rows)
    assert len({r[2] for r in rows}) > ROWS  # real draws, not one value per row


def test_sample_seed(tmp_path, model, data):
    a = _sample(model, data, tmp_path / "a.csv", "-n", "3", "--seed", "7")
    b = _sample(model, data, tmp_path / "b.csv", "-n", "3", "--seed", "7")
    c = _sample(model, data, tmp_path / "c.csv", "-n", "3", "--seed", "8")
    assert a == b
    assert a[1] != c[1]


def test_sample_to_stdout(model, data, capsys):
    assert main(["sample", str(model), str(data), "-n", "2"]) == 0
    header, rows = _read_text(capsys.readouterr().out)
    assert header == ["row", "draw", "y"]
    assert len(rows) == ROWS * 2


def test_evaluate_prints_mean_nll(model, data, capsys):
    assert main(["evaluate", str(model), str(data)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"mean NLL (\S+) nats over (\d+) rows", out)
    assert m, out
    assert math.isfinite(float(m.group(1)))
    assert int(m.group(2)) == ROWS


def test_evaluate_with_explicit_target(tmp_path, model, data, capsys):
    # the target column may be named differently in the test file: TARGET=COLUMN says so
    header, rows = _read(data)
    renamed = _write_csv(tmp_path / "t.csv", ["x1", "x2", "truth", "z"], rows)
    assert main(["evaluate", str(model), str(renamed), "--target", "y=truth"]) == 0
    assert "mean NLL" in capsys.readouterr().out


def test_evaluate_refuses_a_target_the_model_was_not_trained_for(model, data, capsys):
    # the model predicts y; scoring it against another column (here z) is refused by name
    rc = main(["evaluate", str(model), str(data), "--target", "z"])
    line = _one_error_line(capsys, rc, "evaluate", "['y']", "'z'", "--target y=z")
    assert "trained to predict" in line


def test_evaluate_reports_coverage_at_several_levels(model, data, capsys):
    assert main(["evaluate", str(model), str(data), "--level", "0.8,0.9,0.95"]) == 0
    out = capsys.readouterr().out
    found = re.findall(r"(\d+(?:\.\d+)?)% interval coverage (\S+) \(ideal (\S+)\)", out)
    assert [(a, c) for a, _, c in found] == [("80", "0.800"), ("90", "0.900"), ("95", "0.950")]
    assert all(0 <= float(b) <= 1 for _, b, _ in found)
    rc = main(["evaluate", str(model), str(data), "--level", "90"])
    _one_error_line(capsys, rc, "evaluate", "--level", "between 0 and 1")


def test_predict_quantiles_intervals_hdrs_and_modes(tmp_path, model, data, capsys):
    extra = ["--quantiles", "0.05,0.5,0.95", "--interval", "0.9", "--hdr", "0.9", "--modes"]
    assert main(["predict", str(model), str(data), *extra]) == 0
    header, rows = _read_text(capsys.readouterr().out)
    assert header == ["y_mean", "y_std", "y_q5", "y_q50", "y_q95", "y_lo90", "y_hi90",
                      "y_hdr90", "y_modes"]  # fmt: skip
    assert len(rows) == ROWS
    for r in rows:
        q5, q50, q95, lo, hi = (float(v) for v in r[2:7])
        assert q5 < q50 < q95 and (lo, hi) == (q5, q95)  # the 90% interval is q5..q95
        pieces = re.findall(r"\[(\S+), (\S+)\]", r[7])
        assert pieces and " ∪ ".join(f"[{a}, {b}]" for a, b in pieces) == r[7]
        assert all(float(a) < float(b) for a, b in pieces)
        assert all(math.isfinite(float(m)) for m in r[8].split("; "))
    # the same as JSON Lines: numbers, HDRs as [[low, high], ...], modes as [[y], ...]
    assert main(["predict", str(model), str(data), *extra, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == ROWS and list(records[0]) == header
    first = records[0]
    assert first["y_q5"] == pytest.approx(float(rows[0][2]), rel=1e-6)
    assert all(len(pair) == 2 and pair[0] < pair[1] for pair in first["y_hdr90"])
    assert all(len(m) == 1 for m in first["y_modes"])


def test_predict_hdr_shows_two_pieces_for_a_bimodal_prediction(tmp_path, capsys):
    model = torchmdn.MDN(1, 1, n_components=2, hidden=(4,), feature_names=["x"],
                         target_names=["t"])  # fmt: skip
    with torch.no_grad():  # weights zero: the head's biases alone give modes at -2 and 2
        for p in model.parameters():
            p.zero_()
        model.head.linear.bias[2:4] = torch.tensor([-2.0, 2.0])
        model.head.linear.bias[4:6] = -3.0  # narrow components
    path = tmp_path / "bimodal.safetensors"
    torchmdn.save(model, path)
    new = _write_csv(tmp_path / "x.csv", ["x"], [["0.5"]])
    assert main(["predict", str(path), str(new), "--hdr", "0.9", "--modes"]) == 0
    header, rows = _read_text(capsys.readouterr().out)
    assert rows[0][header.index("t_hdr90")].count("∪") == 1
    assert len(rows[0][header.index("t_modes")].split("; ")) == 2


def test_fit_lists_its_features_and_leaves_out_row_index_columns(tmp_path, capsys):
    rows = _rows()
    header = ["", "rownames", "id", "row", "x1", "x2", "y", "z"]
    table = [[str(i), str(i + 1), str(1000 + i), str(i + 1), *r] for i, r in enumerate(rows)]
    data = _write_csv(tmp_path / "d.csv", header, table)
    out = tmp_path / "m.safetensors"
    assert main(["fit", str(data), "--target", "y", *FIT, "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "features (3): x1, x2, z" in stdout
    for name, why in (("''", "unnamed"), ("'rownames'", "named 'rownames'"),
                      ("'id'", "named 'id'"), ("'row'", "holds the integers 1..60 in order")):  # fmt: skip
        assert re.search(f"left out column {name}: it looks like a row index \\({why}", stdout), (
            name,
            stdout,
        )
    assert "name it in --features" in stdout
    assert torchmdn.load(out).feature_names == ["x1", "x2", "z"]
    # named in --features, such a column is used
    assert (
        main(["fit", str(data), "--target", "y", "--features", "row,x1", *FIT, "-o", str(out)]) == 0
    )
    assert "features (2): row, x1" in capsys.readouterr().out
    assert torchmdn.load(out).feature_names == ["row", "x1"]


def test_predict_matches_feature_columns_by_name(tmp_path, model, capsys):
    rows = _rows()
    # the same columns in another order give the same predictions
    shuffled = _write_csv(tmp_path / "s.csv", ["z", "y", "x2", "x1"], [r[::-1] for r in rows])
    plain = _write_csv(tmp_path / "p.csv", ["x1", "x2", "y", "z"], rows)
    assert main(["predict", str(model), str(shuffled)]) == 0
    a = capsys.readouterr().out
    assert main(["predict", str(model), str(plain)]) == 0
    assert capsys.readouterr().out == a
    # a column named differently is named in the error
    renamed = _write_csv(tmp_path / "r.csv", ["x1", "x2", "y", "zz"], rows)
    for command in ("predict", "sample", "evaluate"):
        line = _one_error_line(
            capsys, main([command, str(model), str(renamed)]), command, "lacks ['z']"
        )
        assert "'zz'" in line


def test_every_option_has_help_with_its_default():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            shown = sub._get_formatter()._expand_help(action) if action.help else ""
            rendered = sub._get_formatter()._get_help_string(action)
            assert "default" in rendered or action.required, (name, action.option_strings, shown)


def test_broken_pipe_ends_quietly(model, data):
    # torchmdn predict ... | head: no "error: [Errno 32] Broken pipe", the status of SIGPIPE
    script = (
        "import sys; from torchmdn.cli import main; "
        f"sys.exit(main(['sample', {str(model)!r}, {str(data)!r}, '-n', '500']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Broken pipe" not in err and "Errno" not in err and "Traceback" not in err, err


def test_multi_target_full_covariance(tmp_path, data, capsys):
    model = tmp_path / "full.safetensors"
    assert (
        _run_quietly(
            ["fit", str(data), "--target", "y,z", "--covariance", "full", *FIT, "-o", str(model)]
        )
        == 0
    )
    m = torchmdn.load(model)
    assert m.config()["covariance_type"] == "full"
    assert m.target_names == ["y", "z"]
    assert m.feature_names == ["x1", "x2"]

    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(data), "-o", str(out)]) == 0
    header, rows = _read(out)
    assert header == ["y_mean", "z_mean", "y_std", "z_std"]
    assert len(rows) == ROWS
    assert all(math.isfinite(float(v)) for r in rows for v in r)

    header, rows = _sample(model, data, tmp_path / "s.csv", "-n", "3")
    assert header == ["row", "draw", "y", "z"]
    assert len(rows) == ROWS * 3

    capsys.readouterr()
    assert main(["evaluate", str(model), str(data)]) == 0
    m = re.search(r"mean NLL (\S+) nats", capsys.readouterr().out)
    assert m and math.isfinite(float(m.group(1)))


def test_features_selection(tmp_path, data, capsys):
    model = tmp_path / "f.safetensors"
    assert (
        _run_quietly(
            ["fit", str(data), "--target", "y", "--features", "x1, x2", *FIT, "-o", str(model)]
        )
        == 0
    )
    m = torchmdn.load(model)
    assert m.feature_names == ["x1", "x2"]
    assert m.in_features == 2
    # a CSV with only the chosen features (in another order) is enough to predict
    header, rows = _read(data)
    only = _write_csv(tmp_path / "only.csv", ["x2", "x1"], [[r[1], r[0]] for r in rows])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(only), "-o", str(out)]) == 0
    assert len(_read(out)[1]) == ROWS


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_other_delimiters(tmp_path, delimiter, capsys):
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], _rows(), delimiter=delimiter)
    model = tmp_path / "m.safetensors"
    assert _run_quietly(["fit", str(data), "--target", "y", *FIT, "-o", str(model)]) == 0
    assert torchmdn.load(model).feature_names == ["x1", "x2", "z"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(data), "-o", str(out)]) == 0
    assert len(_read(out)[1]) == ROWS


# ---------------------------------------------------------------------- errors


def test_missing_data_file(tmp_path, capsys):
    path = tmp_path / "nope.csv"
    rc = main(["fit", str(path), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "not found", str(path))
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_data_file_for_predict(tmp_path, model, capsys):
    path = tmp_path / "nope.csv"
    rc = main(["predict", str(model), str(path)])
    _one_error_line(capsys, rc, "predict", "not found", str(path))


def test_unknown_target_column(tmp_path, data, capsys):
    rc = main(["fit", str(data), "--target", "price", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "price", "x1")


def test_unknown_feature_column(tmp_path, data, capsys):
    rc = main(
        [
            "fit",
            str(data),
            "--target",
            "y",
            "--features",
            "x1,size",
            "-o",
            str(tmp_path / "m.safetensors"),
        ]
    )
    _one_error_line(capsys, rc, "fit", "size")


def test_non_numeric_value_names_line_and_column(tmp_path, capsys):
    rows = _rows(20)
    rows[4][1] = "blue"  # line 6 of the file (header is line 1)
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], rows)
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "line 6", "'x2'", "'blue'", "not a number")


@pytest.mark.parametrize("cell", ["", "NA", "nan", "  "])
def test_missing_value(tmp_path, cell, capsys):
    rows = _rows(20)
    rows[9][2] = cell  # line 11, target column
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], rows)
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "line 11", "'y'", "missing value")


def test_infinite_value(tmp_path, capsys):
    rows = _rows(20)
    rows[0][0] = "inf"
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], rows)
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "line 2", "'x1'", "not finite")


def test_missing_value_at_predict_time(tmp_path, model, capsys):
    rows = _rows(5)
    rows[2][0] = "NA"
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], rows)
    rc = main(["predict", str(model), str(data)])
    _one_error_line(capsys, rc, "predict", "line 4", "'x1'", "missing value")


def test_header_but_no_rows(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x1,x2,y\n")
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "no data rows")


def test_empty_file(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("")
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", f"{data} is empty")


def test_ragged_row(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x1,x2,y\n1,2,3\n4,5,6\n7,8\n")
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "line 4", "2 fields", "3")


def test_model_file_does_not_exist(tmp_path, data, capsys):
    path = tmp_path / "nope.safetensors"
    for command in ("predict", "sample", "evaluate"):
        rc = main([command, str(path), str(data)])
        _one_error_line(capsys, rc, command, "not found", str(path))


def test_model_file_is_not_a_model(tmp_path, data, capsys):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 7 + b"definitely not a model")
    rc = main(["predict", str(path), str(data)])
    _one_error_line(capsys, rc, "predict", str(path))


def test_model_on_a_csv_lacking_its_features(tmp_path, model, capsys):
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y"], [r[:3] for r in _rows(5)])
    for command in ("predict", "sample", "evaluate"):
        rc = main([command, str(model), str(data)])
        line = _one_error_line(capsys, rc, command, "'z'")
        assert "x1', 'x2', 'z" in line  # names what the model expects


def test_evaluate_on_a_csv_lacking_the_target(tmp_path, model, capsys):
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "z"], [[r[0], r[1], r[3]] for r in _rows(5)])
    rc = main(["evaluate", str(model), str(data)])
    _one_error_line(capsys, rc, "evaluate", "'y'")


def test_evaluate_with_the_wrong_number_of_targets(model, data, capsys):
    rc = main(["evaluate", str(model), str(data), "--target", "y,z"])
    _one_error_line(capsys, rc, "evaluate", "1 target")


def test_constant_target_column(tmp_path, capsys):
    rows = _rows(20)
    for r in rows:
        r[2] = "3.5"
    data = _write_csv(tmp_path / "d.csv", ["x1", "x2", "y", "z"], rows)
    out = tmp_path / "m.safetensors"
    rc = main(["fit", str(data), "--target", "y", *FIT, "-o", str(out)])
    _one_error_line(capsys, rc, "fit", "constant")
    assert not out.exists()


def test_sample_n_must_be_positive(model, data, capsys):
    rc = main(["sample", str(model), str(data), "-n", "0"])
    _one_error_line(capsys, rc, "sample", "-n")


def test_no_feature_columns_left(tmp_path, capsys):
    data = _write_csv(tmp_path / "d.csv", ["y"], [[str(i)] for i in range(20)])
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "--features")


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2
    assert "--target" in capsys.readouterr().err


# ---------------------------------------------------------------------- known bugs


def test_line_numbers_count_blank_lines(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n\n3,abc\n")
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", "line 4")


def test_utf8_bom_header(tmp_path, capsys):
    rows = _rows()
    data = tmp_path / "d.csv"
    data.write_bytes(
        b"\xef\xbb\xbfx1,x2,y,z\n" + "".join(",".join(r) + "\n" for r in rows).encode()
    )
    rc = _run_quietly(["fit", str(data), "--target", "x1", *FIT, "-o", str(tmp_path / "m.st")])
    assert rc == 0, capsys.readouterr().err


def test_non_utf8_file(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_bytes(b"x,y\n1,2\n3,\xe9\n")
    rc = main(["fit", str(data), "--target", "y", "-o", str(tmp_path / "m.safetensors")])
    _one_error_line(capsys, rc, "fit", f"{data} is not UTF-8 text", "save it as UTF-8")


def test_device_option(tmp_path, model, data, capsys):
    out = tmp_path / "m.safetensors"
    argv = ["fit", str(data), "--target", "y", *FIT, "--device", "cpu", "-o", str(out)]
    assert _run_quietly(argv) == 0
    assert _run_quietly(["predict", str(model), str(data), "--device", "auto",
                         "-o", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    rc = main(["predict", str(model), str(data), "--device", "tpu:x"])
    _one_error_line(capsys, rc, "predict", "device must be", "tpu:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(model, data, capsys):
    rc = main(["predict", str(model), str(data), "--device", "cuda"])
    _one_error_line(capsys, rc, "predict", "no usable CUDA device", "device='cpu'")
