"""``torchmdn fit``: train an MDN (or an ensemble) on a CSV file or streamed CSV/Parquet
files and save it."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from .._files import check_output
from ..errors import InputError, ModelFileError
from .tables import columns, in_dtype, index_like, index_name, read_csv, split_names

__all__ = ["run_fit"]


def run_fit(args: argparse.Namespace) -> int:
    """Train what the options ask for on the data and save it; returns the exit status."""
    from ..io import resolve_device
    from ..nn.mdn import MDN
    from ..training.distributed import launched_rank
    from ..training.fit import fit
    from ..training.streaming import TableSource

    def say(text: str) -> None:  # under torchrun, rank 0 alone reports
        if launched_rank() == 0:
            print(text)

    targets = split_names(args.target)
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
        features = split_names(args.features) if args.features else None
        source = TableSource(args.data, targets, features, chunk_rows=args.chunk_rows)
        if features is None:  # row-index columns by name only: the rows are not read here
            names = {c: index_name(c) for c in source.features}
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
        features = split_names(args.features) if args.features else None
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
            in_dtype(columns(table, features), torch.float32, args.data[0]),
            in_dtype(columns(table, targets), torch.float32, args.data[0]),
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
        from ..ensemble import ensemble

        out = ensemble(models)
        print(f"ensemble of {len(models)} models, {out.n_components} components in all")
    else:
        out = models[0]
    _save_or_rescue(out, args.output, {"trained_on": trained_on, "rows": rows})
    print(f"wrote {args.output}")
    return 0


def _widths(text: str | None) -> tuple[int, ...]:
    """``--hidden 128,128`` as widths, with a clear error for anything else."""
    if not text:
        return (128, 128)
    try:
        widths = tuple(int(h) for h in split_names(text))
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
    from ..io import save

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
