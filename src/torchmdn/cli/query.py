"""``torchmdn predict``, ``sample`` and ``evaluate``: a saved model on the rows of a CSV
file, its feature columns matched by name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write, check_output
from ..errors import InputError, ModelFileError
from .tables import columns, in_dtype, read_csv, split_names, write_csv

__all__ = ["run_evaluate", "run_predict", "run_sample"]


def _levels(text: str, option: str) -> list[float]:
    """Comma-separated probabilities strictly between 0 and 1 (``--quantiles``, ``--level``)."""
    out = []
    for part in split_names(text):
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


def _load_with_data(args: argparse.Namespace):
    """The model, the table and its feature columns, matched by the names the model records."""
    from ..io import load

    output = getattr(args, "output", None)
    if output is not None:  # found before any work, and never an input
        check_output(output, inputs=[args.model, args.data])
    model = load(args.model, device=args.device)
    table = read_csv(args.data)
    features = model.feature_names
    if args.features:
        features = split_names(args.features)
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
    x = in_dtype(columns(table, features), ref.dtype, args.data).to(ref.device)
    return model, table, x


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


def run_predict(args: argparse.Namespace) -> int:
    """Write the predictions for every row (CSV or JSON Lines); returns the exit status."""
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


def run_sample(args: argparse.Namespace) -> int:
    """Write ``-n`` draws of the targets per row; returns the exit status."""
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
    given = split_names(args.target)
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


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the NLL, the CRPS or energy score and interval coverage (and write plots);
    returns the exit status."""
    model, table, x = _load_with_data(args)
    targets = _target_columns(args, model)
    levels = _levels(args.level, "--level")
    y = in_dtype(columns(table, targets), x.dtype, args.data).to(x.device)
    from .. import metrics

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
        from ..plot import evaluation_plots

        if Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise InputError(f"--plots {args.plots} is a file; name a folder")

        for path in evaluation_plots(args.plots, model, x, y, dist):
            print(f"wrote {path}")
    return 0
