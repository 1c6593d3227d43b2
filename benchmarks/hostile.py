"""Hostile inputs: how long the library takes to refuse (or handle) each one, and what it says.

    PYTHONPATH=src python benchmarks/hostile.py

Each case prints its wall time, peak resident memory of this process so far, and the first
80 characters of the outcome (the error's message, or the result).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import torchmdn
from torchmdn import MDN, GaussianMixture
from torchmdn.nn.mdn import MDNHead
from torchmdn.training.streaming import read_csv_text


def forged(root: Path, name: str, edit) -> Path:
    good = root / "good.safetensors"
    torchmdn.save(MDN(2, 1, n_components=2, hidden=(8,)), good)
    with safe_open(str(good), framework="pt") as f:
        header = json.loads(f.metadata()["torchmdn"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    text = edit(header)
    path = root / f"{name}.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={"torchmdn": text if isinstance(text, str) else json.dumps(header)},
    )
    return path


def run(name: str, fn) -> None:
    started = time.perf_counter()
    try:
        outcome = repr(fn())
    except Exception as err:  # noqa: BLE001 - the outcome is what we report
        outcome = f"{type(err).__name__}: {err}"
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"| {name} | {took:.3f} s | {peak:.0f} MiB | {outcome[:80]} |")


def main() -> None:
    root = Path(tempfile.mkdtemp())
    print("| case | time | peak RSS | outcome |\n|---|---|---|---|")
    cases = {
        "hidden=[16000,16000]": lambda h: h["config"].update(hidden=[16000, 16000]),
        "hidden=[1]*300000": lambda h: h["config"].update(hidden=[1] * 300_000),
        "in_features=10**12": lambda h: h["config"].update(in_features=10**12),
        "n_components=10**12": lambda h: h["config"].update(n_components=10**12),
        'class=["MDN"]': lambda h: h.update({"class": ["MDN"]}),
        "header nested 100000 deep": lambda h: "[" * 100_000 + "]" * 100_000,
    }
    for name, edit in cases.items():
        path = forged(root, name.replace("/", "_").replace('"', ""), edit)
        run(f"load: {name}", lambda p=path: torchmdn.load(p))
    csv = root / "hostile.csv"
    csv.write_text(', "x' * 16_384 + "\n1\n")  # a 64 KB header line
    run("CSV header of 64 KB ', \"x'", lambda: read_csv_text(csv)[1].delimiter)
    big = GaussianMixture(torch.zeros(100_000), torch.zeros(100_000, 1), torch.ones(100_000, 1))
    run("hdr, K = 10^5 components", lambda: big.hdr(0.9))
    run("mode, K = 10^5 components", lambda: big.mode())
    run("k-means start: 1000 components, 200 rows",
        lambda: MDNHead(4, 1, 1000).initialize(torch.randn(200, 1)))  # fmt: skip
    two = GaussianMixture(torch.tensor([0.0, 1.0]), torch.tensor([[-5.0], [5.0]]), torch.ones(2, 1))
    run("sample(temperature=1e-40): mean of 1000 draws (most probable at +5)",
        lambda: round(two.sample((1000,), temperature=1e-40).mean().item(), 3))  # fmt: skip
    one = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
    run("hdr(0.99999999) in float32", lambda: one.hdr(0.99999999))
    half = GaussianMixture(torch.zeros(1, dtype=torch.float16), torch.zeros(1, 1, dtype=torch.float16),
                           torch.ones(1, 1, dtype=torch.float16))  # fmt: skip
    run("icdf(0.9) in float16", lambda: half.icdf(0.9).item())


if __name__ == "__main__":
    main()
