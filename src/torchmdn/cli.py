"""The ``torchmdn`` command line: parse arguments, call the library, map errors to exit codes.

``main(argv) -> int`` is testable without a subprocess. Every error the library raises on
purpose (and a missing file) ends with status 1 and one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._files import atomic_write, check_output
from .errors import InputError, ModelFileError, TorchMDNError
from .training.streaming import check_header, read_csv_text

__all__ = ["main"]

_MISSING = {"", "na", "nan", "null", "none", "?"}


# ---------------------------------------------------------------------- CSV at the edge


@dataclass
class Table:
    """A CSV file's header and data rows, with each row's line number for error messages."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]


def read_csv(path: str | Path) -> Table:
    """Read a CSV file with a header row (delimiter ``,``, ``;`` or tab, judged on the
    header line); repeated column names and rows of another length are refused."""
    path = Path(path)
    text, dialect = read_csv_text(path)
    reader = csv.reader(io.StringIO(text), dialect)
    # keep each row's real line number for error messages (blank lines are skipped)
    try:
        numbered = [(reader.line_num, r) for r in reader if r]
    except csv.Error as err:  # e.g. a stray carriage return inside a field
        raise InputError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    (_, first), rest = numbered[0], numbered[1:]
    header = check_header(path, first)
    if not rest:
        raise InputError(f"{path} has a header but no data rows")
    for line, r in rest:
        if len(r) != len(header):
            raise InputError(
                f"{path}, line {line}: {len(r)} fields but the header has {len(header)}"
            )
    return Table(path, header, [r for _, r in rest], [line for line, _ in rest])


def columns(table: Table, names: Sequence[str]) -> torch.Tensor:
    """The named columns as a float64 tensor ``(rows, len(names))``, with clear errors."""
    path, header, lines = table.path, table.header, table.lines
    unknown = [n for n in names if n not in header]
    if unknown:
        raise InputError(f"{path}: no column named {unknown}; the columns are {header}")
    idx = [header.index(n) for n in names]
    out = torch.empty(len(table.rows), len(idx), dtype=torch.float64)
    for i, row in enumerate(table.rows):
        for j, k in enumerate(idx):
            cell = row[k].strip()
            if cell.lower() in _MISSING:
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: missing value {cell!r}. "
                    "Drop or impute missing values first."
                )
            try:
                value = float(cell)
            except ValueError:
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: {cell!r} is not a number. "
                    "Use only numeric columns (encode categories first)."
                ) from None
            if not math.isfinite(value):
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: {cell!r} is not finite"
                )
            out[i, j] = value
    return out


def write_csv(
    path: str | Path | None,
    header: list[str],
    rows: torch.Tensor,
    lead: list[list[str]] | None = None,
) -> None:
    """Write rows (optionally prefixed by string columns) to ``path`` or stdout; a file is
    written whole or not at all (temporary file + rename)."""

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows.tolist()):
            w.writerow((lead[i] if lead else []) + [f"{v:.8g}" for v in r])

    if path is None:
        write(sys.stdout)
    else:
        atomic_write(path, write, text=True)


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where to compute: auto (CUDA when available; default), cpu, cuda, cuda:N",
    )


def _split_names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _levels(text: str, option: str) -> list[float]:
    """Comma-separated probabilities strictly between 0 and 1 (``--quantiles``, ``--level``)."""
    out = []
    for part in _split_names(text):
        try:
            value = float(part)
        except ValueError:
            raise InputError(
                f"{option}: {part!r} is not a number; give e.g. 0.05,0.5,0.95"
            ) from None
        if not 0.0 < value < 1.0:
            raise InputError(f"{option}: {part} must lie strictly between 0 and 1 (e.g. 0.9)")
        out.append(value)
    if not out:
        raise InputError(f"{option} names no level; give e.g. 0.9")
    return out


_INDEX_NAMES = {"", "rownames", "row.names", "row_names", "id", "index"}


def _index_name(name: str) -> str | None:
    key = name.strip().lower()
    if not key or key.startswith("unnamed:"):
        return "unnamed"
    return f"named {name!r}" if key in _INDEX_NAMES else None


def index_like(table: Table, name: str) -> str | None:
    """Why column ``name`` looks like a row index (so not a feature), or ``None``.

    A column is index-like when it is unnamed (an empty header cell, pandas' ``Unnamed: 0``),
    is named ``rownames``, ``id`` or ``index`` (any case), or holds the integers 0..N-1 or 1..N
    in order.
    """
    why = _index_name(name)
    if why:
        return why
    k = table.header.index(name)
    try:
        values = [float(row[k]) for row in table.rows]
    except ValueError:
        return None
    for start in (0, 1):
        if values == [float(i) for i in range(start, start + len(values))]:
            return f"holds the integers {start}..{start + len(values) - 1} in order"
    return None


def _widths(text: str | None) -> tuple[int, ...]:
    """``--hidden 128,128`` as widths, with a clear error for anything else."""
    if not text:
        return (128, 128)
    try:
        widths = tuple(int(h) for h in _split_names(text))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise InputError(
            f"--hidden must be positive integer widths separated by commas (e.g. 128,128); "
            f"got {text!r}"
        )
    return widths


def _save_or_rescue(model, path: str, metadata: dict) -> None:
    """Save the trained model to ``path``; when that fails, to a new file in the temporary
    folder, and raise an error naming both (training is never lost to a failed save)."""
    from .io import save

    try:
        save(model, path, metadata=metadata)
    except (OSError, ModelFileError) as err:
        fd, rescue = tempfile.mkstemp(prefix="torchmdn-rescued-", suffix=".safetensors")
        os.close(fd)
        try:
            save(model, rescue, metadata=metadata)
        except (OSError, ModelFileError) as again:
            raise OSError(f"could not write {path} ({err}) nor {rescue} ({again})") from None
        raise OSError(
            f"could not write {path} ({err}); the trained model was saved to {rescue} instead"
        ) from None


# ---------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.name == "bishop":
        from .apps.bishop import bishop_demo as run
    elif args.name == "speech":
        from .apps.speech.demo import speech_demo as run
    else:
        from .apps.sequences.demo import handwriting_demo, storms_demo

        run = handwriting_demo if args.name == "handwriting" else storms_demo
    result = run(args.out, seed=args.seed, progress=not args.quiet)
    if args.name == "bishop":
        print(
            f"test NLL {result.test_nll:.4f} nats  (floor {result.floor}: no model can do better)"
        )
    elif args.name == "speech":
        print(result.table)
        print(f"wrote {len(result.files)} files (PNG images, WAV files) to {args.out}")
        return 0
    else:
        print(f"{args.name}: held-out NLL {result.test_nll:.4f} nats per step")
    print(f"epochs {result.history.epochs}, {result.history.time_s:.1f} s")
    written = [result.figure, getattr(result, "model_path", None)]
    print("wrote " + " and ".join(str(w) for w in written if w is not None))
    return 0


def _auto_or_integer(minimum: int) -> Callable[[str], int | str]:
    """An argparse type: ``auto`` or an integer >= ``minimum`` (``--components``,
    ``--patience``)."""

    def parse(text: str) -> int | str:
        if text == "auto":
            return text
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected 'auto' or an integer >= {minimum}; got {text!r}"
            )
        return value

    return parse


def _cmd_fit(args: argparse.Namespace) -> int:
    from .io import resolve_device
    from .nn.mdn import MDN
    from .training.distributed import launched_rank
    from .training.fit import fit
    from .training.streaming import TableSource

    def say(text: str) -> None:  # under torchrun, rank 0 alone reports
        if launched_rank() == 0:
            print(text)

    targets = _split_names(args.target)
    if not targets:
        raise InputError("--target names no column")
    hidden = _widths(args.hidden)
    if launched_rank() == 0:  # found now, not after training
        check_output(args.output, inputs=args.data)
    if not 0 <= args.validation_fraction < 1:
        raise InputError(f"--validation-fraction must be in [0, 1); got {args.validation_fraction}")
    if args.ensemble < 1:
        raise InputError(f"--ensemble is the number of models to train (>= 1); got {args.ensemble}")
    parquet = any(Path(p).suffix.lower() in (".parquet", ".pq") for p in args.data)
    if args.stream or parquet or len(args.data) > 1:
        features = _split_names(args.features) if args.features else None
        source = TableSource(args.data, targets, features, chunk_rows=args.chunk_rows)
        if features is None:  # row-index columns by name only: the rows are not read here
            names = {c: _index_name(c) for c in source.features}
            if any(names.values()):
                for c, why in names.items():
                    if why:
                        say(f"left out column {c!r}: it looks like a row index ({why}); "
                              "name it in --features to use it as a feature")  # fmt: skip
                kept = [c for c, why in names.items() if not why]
                if not kept:
                    raise InputError(
                        f"no feature columns left besides the targets {targets}; pass --features"
                    )
                source = TableSource(args.data, targets, kept, chunk_rows=args.chunk_rows)
        data, features, rows = (source,), source.features, "streamed"
    else:
        table = read_csv(args.data[0])
        features = _split_names(args.features) if args.features else None
        if features is None:
            features = []
            for c in table.header:
                if c in targets:
                    continue
                why = index_like(table, c)
                if why is None:
                    features.append(c)
                else:
                    say(
                        f"left out column {c!r}: it looks like a row index ({why}); "
                        "name it in --features to use it as a feature"
                    )
        if not features:
            raise InputError(
                f"no feature columns left besides the targets {targets}; pass --features"
            )
        data = (
            _in_dtype(columns(table, features), torch.float32, args.data[0]),
            _in_dtype(columns(table, targets), torch.float32, args.data[0]),
        )
        rows = len(data[0])
        n_val = round(args.validation_fraction * rows)
        if args.validation_fraction > 0 and not 1 <= n_val < rows:
            raise InputError(
                f"{args.data[0]} has {rows} rows: too few to hold out a validation share of "
                f"{args.validation_fraction}; add rows or pass --validation-fraction 0"
            )
    say(f"features ({len(features)}): {', '.join(features)}; targets: {', '.join(targets)}")
    device = resolve_device(args.device)
    if not isinstance(data[0], TableSource):
        data = tuple(t.to(device) for t in data)
    models = []
    for member in range(args.ensemble):
        seed = args.seed + member
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            model = MDN(
                len(features),
                len(targets),
                n_components=args.components,
                hidden=hidden,
                covariance_type=args.covariance,
                feature_names=features,
                target_names=targets,
            )
        history = fit(
            model.to(device),
            *data,
            max_epochs=args.epochs,
            max_steps=args.steps,
            patience=None if args.patience == 0 else args.patience,
            batch_size=args.batch_size,
            validation_fraction=args.validation_fraction,
            random_state=seed,
            progress=not args.quiet,
        )
        models.append(model)
        val = f", validation NLL {history.best_val_nll:.4f}" if history.val_nll else ""
        stop = " (stopped early)" if history.stopped_early else ""
        which = f"model {member + 1} of {args.ensemble}: " if args.ensemble > 1 else ""
        say(
            f"{which}trained {history.epochs} epochs{stop} in {history.time_s:.1f} s{val}; "
            f"best epoch {history.best_epoch + 1}"
        )
        if history.capacity:
            say(f"components: {history.capacity['reason']}")
    if launched_rank() != 0:  # under torchrun, rank 0 alone writes and reports
        return 0
    trained_on = ",".join(str(p) for p in args.data)
    if len(models) > 1:
        from .ensemble import ensemble

        out = ensemble(models)
        print(f"ensemble of {len(models)} models, {out.n_components} components in all")
    else:
        out = models[0]
    _save_or_rescue(out, args.output, {"trained_on": trained_on, "rows": rows})
    print(f"wrote {args.output}")
    return 0


def _load_with_data(args: argparse.Namespace):
    """The model, the table and its feature columns, matched by the names the model records."""
    from .io import load

    output = getattr(args, "output", None)
    if output is not None:  # found before any work, and never an input
        check_output(output, inputs=[args.model, args.data])
    model = load(args.model, device=args.device)
    table = read_csv(args.data)
    features = model.feature_names
    if args.features:
        features = _split_names(args.features)
        if len(features) != model.in_features:
            raise InputError(
                f"--features names {len(features)} column(s) but the model {args.model} takes "
                f"{model.in_features}: {features}"
            )
    elif features is None:
        raise ModelFileError(
            f"the model {args.model} was saved without feature names, so its columns cannot "
            f"be matched by name; pass --features with its {model.in_features} feature "
            "column(s) in training order"
        )
    missing = [c for c in features if c not in table.header]
    if missing:
        raise ModelFileError(
            f"the model {args.model} was trained on the feature columns {features}; "
            f"{args.data} lacks {missing} (its columns: {table.header}). Rename the columns "
            "to match, or train a model on these columns"
        )
    ref = next(model.parameters())  # an MDN's or an ensemble's: dtype and device
    x = _in_dtype(columns(table, features), ref.dtype, args.data).to(ref.device)
    return model, table, x


def _in_dtype(values: torch.Tensor, dtype: torch.dtype, where: object) -> torch.Tensor:
    """``values`` converted to the model's dtype, refusing those it cannot hold."""
    out = values.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise InputError(
            f"{where}: values up to {values.abs().max().item():.3g} overflow the model's "
            f"{dtype}; change units, or train with dtype=float64"
        )
    return out


def _finite_output(out: torch.Tensor, what: str, dtype: torch.dtype) -> torch.Tensor:
    """Refuse outputs that overflowed the model's dtype rather than write inf or nan."""
    if not bool(torch.isfinite(out).all()):
        raise InputError(
            f"the {what} overflow the model's {dtype} (inf or nan); the data lie beyond its "
            "range: change units, or train with dtype=float64"
        )
    return out


def _target_names(model) -> list[str]:
    return model.target_names or [f"y{i}" for i in range(model.out_features)]


def _pct(level: float) -> str:
    """``0.9`` -> ``"90"``, ``0.975`` -> ``"97.5"`` (for column names)."""
    return f"{100 * level:.10g}"


def _interval_text(pairs: list[tuple[float, float]]) -> str:
    return " ∪ ".join(f"[{a:.4g}, {b:.4g}]" for a, b in pairs)


def _predictions(
    args: argparse.Namespace, model, x: torch.Tensor
) -> tuple[list[str], list[list], dict[str, str]]:
    """Column names, rows (numbers, or lists for HDRs and modes) and the kind of each
    non-numeric column (``"hdr"`` or ``"modes"``) of ``predict``."""
    names = _target_names(model)
    quantiles = _levels(args.quantiles, "--quantiles") if args.quantiles else []
    intervals = _levels(args.interval, "--interval") if args.interval else []
    hdrs = _levels(args.hdr, "--hdr") if args.hdr else []
    with torch.no_grad():
        dist = model(x)
        _finite_output(torch.cat([dist.mean, dist.stddev], -1), "predictions", x.dtype)
        marg = [dist.marginal([k]) for k in range(len(names))]
        cols: list[tuple[str, list]] = []
        kinds: dict[str, str] = {}  # columns that are not plain numbers
        for name, value in zip(names, dist.mean.T, strict=True):
            cols.append((f"{name}_mean", value.tolist()))
        for name, value in zip(names, dist.stddev.T, strict=True):
            cols.append((f"{name}_std", value.tolist()))
        for name, m in zip(names, marg, strict=True):
            for q in quantiles:
                cols.append((f"{name}_q{_pct(q)}", m.icdf(q)[:, 0].tolist()))
            for level in intervals:
                low, high = m.interval(level)
                cols.append((f"{name}_lo{_pct(level)}", low[:, 0].tolist()))
                cols.append((f"{name}_hi{_pct(level)}", high[:, 0].tolist()))
            for level in hdrs:
                regions = m.hdr(level)
                cols.append((f"{name}_hdr{_pct(level)}", [[list(p) for p in r] for r in regions]))
                kinds[cols[-1][0]] = "hdr"
        if args.modes:
            found = dist.modes()
            modes = [
                [loc.tolist() for loc, ok in zip(row_loc, row_ok, strict=True) if ok]
                for row_loc, row_ok in zip(found.loc, found.valid, strict=True)
            ]
            cols.append(("_".join(names) + "_modes", modes))
            kinds[cols[-1][0]] = "modes"
    header = [c for c, _ in cols]
    return header, [list(r) for r in zip(*(v for _, v in cols), strict=True)], kinds


def _cell(value: Any, kind: str | None) -> str:
    """A CSV cell: numbers as ``%.8g``, HDRs as ``[a, b] ∪ [c, d]``, modes (best first) as
    ``a; b`` (d = 1) or ``(a1, a2); (b1, b2)``."""
    if kind is None:
        return f"{value:.8g}"
    if kind == "hdr":
        return _interval_text([tuple(p) for p in value])
    return "; ".join(
        f"{m[0]:.4g}" if len(m) == 1 else "(" + ", ".join(f"{v:.4g}" for v in m) + ")"
        for m in value
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    model, _, x = _load_with_data(args)
    header, rows, kinds = _predictions(args, model, x)
    if args.json:
        import json

        def write(f) -> None:
            for r in rows:
                f.write(json.dumps(dict(zip(header, r, strict=True))) + "\n")

        if args.output is None:
            write(sys.stdout)
        else:
            atomic_write(args.output, write, text=True)
        return 0
    cells = [[_cell(v, kinds.get(c)) for c, v in zip(header, r, strict=True)] for r in rows]
    write_csv(args.output, header, torch.empty(len(cells), 0), cells)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError(f"-n must be >= 1; got {args.n}")
    model, _, x = _load_with_data(args)
    gen = torch.Generator(device=x.device).manual_seed(args.seed)
    with torch.no_grad():
        draws = model(x).sample((args.n,), generator=gen)  # [n, rows, d]
    rows = _finite_output(draws.transpose(0, 1).reshape(-1, draws.shape[-1]), "samples", x.dtype)
    lead = [[str(i), str(k)] for i in range(len(x)) for k in range(args.n)]
    write_csv(args.output, ["row", "draw"] + _target_names(model), rows, lead)
    return 0


def _target_columns(args: argparse.Namespace, model) -> list[str]:
    """The CSV columns holding the model's targets: by name, or ``MODEL_NAME=COLUMN``."""
    trained = model.target_names
    if not args.target:
        return _target_names(model)
    given = _split_names(args.target)
    if len(given) != model.out_features:
        raise ModelFileError(
            f"the model predicts {model.out_features} target(s) {trained or ''}; --target names "
            f"{len(given)}: {given}"
        )
    out = []
    for k, item in enumerate(given):
        name, sep, column = item.partition("=")
        name, column = name.strip(), (column.strip() if sep else name.strip())
        if trained is not None and name != trained[k]:
            raise ModelFileError(
                f"the model {args.model} was trained to predict {trained}; --target names "
                f"{name!r} in place of {trained[k]!r}. Evaluate with --target {trained[k]}, or, "
                f"if the column is only named differently here, --target {trained[k]}={name}"
            )
        out.append(column)
    return out


def _cmd_evaluate(args: argparse.Namespace) -> int:
    model, table, x = _load_with_data(args)
    targets = _target_columns(args, model)
    levels = _levels(args.level, "--level")
    y = _in_dtype(columns(table, targets), x.dtype, args.data).to(x.device)
    from . import metrics

    with torch.no_grad():
        nll = -model.log_prob(x, y).mean().item()
        dist = model(x)
        if y.shape[-1] == 1:
            score = f"mean CRPS {metrics.crps(dist, y).item():.4f}"
        else:
            gen = torch.Generator(device=y.device).manual_seed(0)
            score = f"mean energy score {metrics.energy_score(dist, y, generator=gen).item():.4f}"
        coverage = [metrics.interval_coverage(dist, y, level=lv).item() for lv in levels]
    _finite_output(torch.tensor([nll]).nan_to_num(posinf=0.0), "scores", x.dtype)  # NaN only
    print(f"mean NLL {nll:.4f} nats over {len(x)} rows")
    print(f"{score} (in target units; lower is better)")
    for level, c in zip(levels, coverage, strict=True):
        print(f"{_pct(level)}% interval coverage {c:.3f} (ideal {level:.3f})")
    if args.plots:
        from .plot import evaluation_plots

        if Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise InputError(f"--plots {args.plots} is a file; name a folder")

        for path in evaluation_plots(args.plots, model, x, y, dist):
            print(f"wrote {path}")
    return 0


def _cmd_kernel(args: argparse.Namespace) -> int:
    from .ops import kernel as kernels

    if args.rebuild:
        try:
            kernels.build(force=True)
        except RuntimeError as err:
            print(f"torchmdn kernel: error: {err}", file=sys.stderr)
            return 1
    print(kernels.status())
    return 0 if kernels.available() else 1


# ---------------------------------------------------------------------- parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help that states every option's default: ``(default: X)`` appended, ``off`` for flags;
    an option whose default is ``None`` says in its own words what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        if action.default is False:
            return text + " (default: off)"
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="torchmdn", description="Mixture density networks.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="train a demo model (default: Bishop's inverse problem) and plot",
        formatter_class=_Help,
    )  # fmt: skip
    d.add_argument("name", nargs="?", default="bishop", choices=["bishop", "handwriting", "storms", "speech"],
                   help="bishop (default), handwriting or storms (these two need torchmdn[data]), "
                        "speech (needs torchmdn[speech]; a few minutes)")  # fmt: skip
    d.add_argument("--out", default="demo-out", help="output folder")
    d.add_argument("--seed", type=int, default=0, help="random seed of the data and the training")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(run=_cmd_demo)

    f = sub.add_parser(
        "fit",
        help="train an MDN on a CSV file (or stream CSV/Parquet files; data parallel "
        "under torchrun --nproc_per_node=N -m torchmdn fit ...)",
        description="Train an MDN. How long: by default clip(2.5 N, 3000, 20000) optimiser "
        "steps for N training rows, with early stopping on a 10% validation split once its "
        "NLL has not improved for clip(20% of the epochs, 20, 100) epochs; the best epoch is kept "
        "(the rule of torchmdn.fit and MDNRegressor).",
        formatter_class=_Help,
    )
    f.add_argument("data", nargs="+", help="CSV file with a header row, or CSV/Parquet files")
    f.add_argument("--stream", action="store_true",
                   help="read the data in chunks (implied by Parquet or several files)")  # fmt: skip
    f.add_argument("--chunk-rows", type=int, default=65_536, help="rows per chunk when streaming")
    f.add_argument("--batch-size", type=int, default=128, help="rows per optimiser step")
    f.add_argument("--target", required=True, help="target column(s), comma-separated (required)")
    f.add_argument(
        "--features",
        help="feature columns, comma-separated (default: all other columns except row-index "
        "columns: unnamed, rownames, id, index, or the integers 0..N-1 / 1..N in order)",
    )
    f.add_argument(
        "--components", type=_auto_or_integer(1), default="auto",
        help="mixture components: 'auto' (default) chooses them from the data (a "
        "validation-likelihood ladder; see torchmdn.training.capacity), an integer fixes them",
    )  # fmt: skip
    f.add_argument(
        "--covariance", choices=["auto", "diagonal", "isotropic", "full"], default="auto",
        help="covariance of each component (matters for several targets); 'auto' (default): "
        "chosen from the data with --components auto",
    )  # fmt: skip
    f.add_argument("--ensemble", type=int, default=1, metavar="M",
                   help="train M models (seeds SEED..SEED+M-1) and save their average, one "
                        "mixture with every member's components (default 1; 5 was better "
                        "than one model on every UCI split we measured, at 5x the time)")  # fmt: skip
    f.add_argument("--hidden", default="128,128", help="hidden layer widths, comma-separated")
    f.add_argument("--steps", type=int,
                   help="optimiser steps (default: clip(2.5 N, 3000, 20000) for N training rows)")  # fmt: skip
    f.add_argument("--epochs", type=int,
                   help="passes over the data, instead of --steps (default: steps / steps per epoch)")  # fmt: skip
    f.add_argument("--patience", type=_auto_or_integer(0), default="auto",
                   help="stop after this many epochs without a better validation NLL; 'auto': "
                        "clip(20%% of the epochs, 20, 100); 0: never stop early")  # fmt: skip
    f.add_argument(
        "--seed", type=int, default=0, help="random seed of the split, batches and weights"
    )
    f.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of rows held out to pick the best epoch and stop early "
                        "(0: none, every epoch runs)")  # fmt: skip
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_option(f)
    f.add_argument("-o", "--output", required=True,
                   help="model file to write (.safetensors; required); checked before training, "
                        "never an input, a folder or a device; a symlink is written through")  # fmt: skip
    f.set_defaults(run=_cmd_fit)

    for name, fn, helptext in (
        ("predict", _cmd_predict, "mean and standard deviation per target, and on request "
         "quantiles, central intervals, highest-density regions and modes"),
        ("sample", _cmd_sample, "draw samples of the targets"),
        ("evaluate", _cmd_evaluate, "NLL, CRPS/energy score, interval coverage (and plots)"),
    ):  # fmt: skip
        c = sub.add_parser(name, help=helptext, description=helptext, formatter_class=_Help)
        c.add_argument("model", help="model file written by 'torchmdn fit'")
        c.add_argument("data", help="CSV file with the model's feature columns (matched by name)")
        _device_option(c)
        if name == "predict":
            c.add_argument("--quantiles", help="quantile levels, e.g. 0.05,0.5,0.95: columns "
                           "<target>_q5, _q50, _q95 (default: none)")  # fmt: skip
            c.add_argument("--interval", help="central interval levels, e.g. 0.9: columns "
                           "<target>_lo90, <target>_hi90 (default: none)")  # fmt: skip
            c.add_argument("--hdr", help="highest-density region levels, e.g. 0.9: column "
                           "<target>_hdr90 as '[a, b] ∪ [c, d]' (default: none)")  # fmt: skip
            c.add_argument("--modes", action="store_true",
                           help="column <targets>_modes: the local modes, most probable first, "
                                "negligible ones (density < 5%% of the highest) left out")  # fmt: skip
            c.add_argument("--json", action="store_true",
                           help="write JSON Lines (one object per row; HDRs as [[low, high], ...], "
                                "modes as [[y...], ...]) instead of CSV")  # fmt: skip
        c.add_argument("--features", help="feature columns, comma-separated, in training "
                       "order (default: the names saved in the model)")  # fmt: skip
        if name == "sample":
            c.add_argument("-n", type=int, default=10, help="draws per row")
            c.add_argument("--seed", type=int, default=0, help="random seed of the draws")
        if name == "evaluate":
            c.add_argument("--target", help="target column(s) (default: the model's, by name); "
                           "TARGET=COLUMN when a column is named differently here")  # fmt: skip
            c.add_argument("--level", default="0.9",
                           help="central interval levels whose coverage is reported, e.g. 0.8,0.9,0.95")  # fmt: skip
            c.add_argument(
                "--plots", help="folder to write diagnostic plots (PNG) into (default: no plots)"
            )
        else:
            c.add_argument("-o", "--output", help="CSV to write (default: stdout); never an "
                       "input, a folder or a device; a symlink is written through")  # fmt: skip
        c.set_defaults(run=fn)

    k = sub.add_parser(
        "kernel",
        help="build the compiled CPU likelihood kernel now (else on first use) and say where",
        formatter_class=_Help,
    )
    k.add_argument("--rebuild", action="store_true", help="compile again even if cached")
    k.set_defaults(run=_cmd_kernel)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # the reader went away (``torchmdn predict ... | head``): stop quietly, as Unix tools
        # do, with the status of a process ended by SIGPIPE; stdout goes to /dev/null so
        # that the final flush at exit does not complain again
        _silence_stdout()
        return 141
    except TorchMDNError as err:
        print(f"torchmdn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"torchmdn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"torchmdn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"torchmdn {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no real file (a test's buffer)
        pass
