"""The commands' options (every one with its default in its help), ``main`` (errors to exit
codes) and the small commands ``demo`` and ``kernel``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import TorchMDNError
from .fit import run_fit
from .query import run_evaluate, run_predict, run_sample

__all__ = ["build_parser", "main"]


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


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where to compute: auto (CUDA when available; default), cpu, cuda, cuda:N",
    )


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


def _run_demo(args: argparse.Namespace) -> int:
    """``torchmdn demo NAME``: train a demo model, plot it, say what was written."""
    if args.name == "bishop":
        from ..apps.bishop import bishop_demo as run
    elif args.name == "speech":
        from ..apps.speech.demo import speech_demo as run
    else:
        from ..apps.sequences.demo import handwriting_demo, storms_demo

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


def _run_kernel(args: argparse.Namespace) -> int:
    """``torchmdn kernel``: build the compiled CPU kernel (again with ``--rebuild``) and report."""
    from ..ops import kernel as kernels

    if args.rebuild:
        try:
            kernels.build(force=True)
        except RuntimeError as err:
            print(f"torchmdn kernel: error: {err}", file=sys.stderr)
            return 1
    print(kernels.status())
    return 0 if kernels.available() else 1


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
    d.set_defaults(run=_run_demo)

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
        "with --components auto, full for 2-3 targets, chosen from the data from 4",
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
    f.set_defaults(run=run_fit)

    for name, fn, helptext in (
        ("predict", run_predict, "mean and standard deviation per target, and on request "
         "quantiles, central intervals, highest-density regions and modes"),
        ("sample", run_sample, "draw samples of the targets"),
        ("evaluate", run_evaluate, "NLL, CRPS/energy score, interval coverage (and plots)"),
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
    k.set_defaults(run=_run_kernel)
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
