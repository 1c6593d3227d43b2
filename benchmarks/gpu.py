"""GPU figures in one run: the likelihood table, the training step, fit against a plain loop.

    python benchmarks/gpu.py            # the full run (a few minutes on one GPU)
    python benchmarks/gpu.py --quick    # fewer repetitions and epochs (what `make gpu-check` runs)
    python benchmarks/gpu.py --smoke    # tiny sizes on the CPU, no torch.compile: checks the script

1. fwd+bwd of ``log_prob(y).sum()`` at B = 2^20 rows for diagonal mixtures (K, D) = (5, 1),
   (8, 2), (32, 8): torchmdn (its CUDA path, compiled), torchmdn's eager tensor path,
   torch.distributions eager and under torch.compile, and the memory-bandwidth bound: the
   bytes a fused forward and backward must move (read the parameters and y twice, write
   the result and every gradient) over the device's bandwidth, measured by a large
   device-to-device copy. Medians of CUDA-event timings.
2. One training step (forward, backward, fused AdamW) of an MLP 8-256-256 with an
   MDNHead(256, 2, 8) against the same MLP with a linear layer and an MSE loss, B = 65536,
   eager and under torch.compile.
3. ``fit`` rows/s against a plain loop (permutation on the device, index, forward, backward,
   fused AdamW) on 2M rows with MDN(8, 2, 8 components, hidden (256, 256)), at batch 8192
   and 65536; both timed after a first epoch (fit's set-up, caches and compilation).
4. Bishop's inverse problem with every default of ``fit`` and with 5 fixed components
   (wall times, and their ratio: the cost of the capacity choice on the device; the CPU's
   are in RESULTS.md).

Without CUDA it says so and exits (status 0) unless ``--smoke`` is given.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import torchmdn
from torchmdn import GaussianMixture
from torchmdn.nn.mdn import MLP, MDNHead
from torchmdn.ops import compiled as compiled_path

CASES = [(5, 1), (8, 2), (32, 8)]


def bytes_moved(rows: int, k: int, d: int, itemsize: int = 4) -> int:
    """Bytes a fused forward + backward of a diagonal mixture's ``log_prob(y).sum()`` must
    move: the parameters and ``y`` read twice (forward, backward), the result written, its
    gradient read, and a gradient written for each input."""
    inputs = rows * (k + 2 * k * d + d)
    return itemsize * (3 * inputs + 2 * rows)


def bound_ms(rows: int, k: int, d: int, bandwidth: float) -> float:
    """The memory-bandwidth bound in milliseconds (``bandwidth`` in bytes/s)."""
    return 1e3 * bytes_moved(rows, k, d) / bandwidth


class Timer:
    """Median wall time of a callable, synchronising the device around each repetition
    (CUDA events on CUDA)."""

    def __init__(self, device: torch.device, reps: int, warmup: int = 3):
        self.device, self.reps, self.warmup = device, reps, warmup

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            if self.device.type == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)


def bandwidth(device: torch.device, timer: Timer, mib: int) -> float:
    """Device memory bandwidth in bytes/s from a large copy (read + write)."""
    src = torch.empty(mib * 2**18, device=device)  # float32: mib MiB
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms / 1e3)


def mixture_inputs(rows: int, k: int, d: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, k, device=device, generator=g)
    loc = torch.randn(rows, k, d, device=device, generator=g)
    scale = 0.5 + torch.rand(rows, k, d, device=device, generator=g)
    y = torch.randn(rows, d, device=device, generator=g)
    return [t.requires_grad_() for t in (logits, loc, scale)] + [y]


def torchmdn_step(logits, loc, scale, y) -> None:
    GaussianMixture(logits, loc, scale=scale, validate_args=False).log_prob(y).sum().backward()


def td_log_prob(logits, loc, scale, y):
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    comp = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
    mix = MixtureSameFamily(Categorical(logits=logits, validate_args=False), comp,
                            validate_args=False)  # fmt: skip
    return mix.log_prob(y)


def likelihood_table(device: torch.device, rows: int, timer: Timer, use_compile: bool) -> None:
    bw = bandwidth(device, timer, 1024 if device.type == "cuda" else 64)
    print(f"\n## fwd+bwd of log_prob(y).sum(), B = {rows} rows (medians, ms)")
    print(f"measured copy bandwidth {bw / 1e9:.0f} GB/s\n")
    print("| case | torchmdn | torchmdn eager tensor path | torch.distributions eager | "
          "torch.distributions + torch.compile | bandwidth bound |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    td_compiled = torch.compile(lambda *a: td_log_prob(*a).sum()) if use_compile else None

    def attempt(fn: Callable[[], float]) -> str:  # a compiler failure is a table entry
        try:
            return f"{fn():.3f}"
        except Exception as err:  # noqa: BLE001
            return f"failed ({type(err).__name__}: {str(err).splitlines()[0][:80]})"

    for k, d in CASES:
        args = mixture_inputs(rows, k, d, device)
        ours = timer(lambda args=args: torchmdn_step(*args))
        saved = set(compiled_path.DEVICES)
        compiled_path.DEVICES.clear()  # the eager tensor path, for comparison
        try:
            eager = timer(lambda args=args: torchmdn_step(*args))
        finally:
            compiled_path.DEVICES.update(saved)
        td = timer(lambda args=args: td_log_prob(*args).sum().backward())
        tdc = (
            attempt(lambda args=args: timer(lambda: td_compiled(*args).backward()))
            if td_compiled is not None
            else "-"
        )
        print(f"| diagonal K={k}, D={d} | {ours:.3f} | {eager:.3f} | {td:.3f} | {tdc} | "
              f"{bound_ms(rows, k, d, bw):.3f} |", flush=True)  # fmt: skip
        del args


def training_step_ratio(device: torch.device, rows: int, timer: Timer, use_compile: bool) -> None:
    print(f"\n## one training step, MLP 8-256-256, B = {rows} (medians, ms)\n")
    print("| mode | MDN (MDNHead(256, 2, 8)) | MSE (Linear(256, 2)) | ratio |")
    print("|---|---|---|---|")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, 8, device=device, generator=g)
    y = torch.randn(rows, 2, device=device, generator=g)
    torch.manual_seed(0)
    mdn = nn.Sequential(MLP(8, (256, 256), "silu"), MDNHead(256, 2, 8)).to(device)
    mse = nn.Sequential(MLP(8, (256, 256), "silu"), nn.Linear(256, 2)).to(device)

    def mdn_loss(a, b):
        return -mdn(a).log_prob(b).mean()

    def mse_loss(a, b):
        return nn.functional.mse_loss(mse(a), b)

    def step_times(f_mdn, f_mse):
        out = []
        for model, loss in ((mdn, f_mdn), (mse, f_mse)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

            def step(loss=loss, opt=opt):
                opt.zero_grad(set_to_none=True)
                loss(x, y).backward()
                opt.step()

            out.append(timer(step))
        return out

    modes = [("eager", mdn_loss, mse_loss)]
    if use_compile:
        modes.append(("torch.compile", torch.compile(mdn_loss), torch.compile(mse_loss)))
    for name, f_mdn, f_mse in modes:
        try:
            out = step_times(f_mdn, f_mse)
        except Exception as err:  # noqa: BLE001 - a compiler failure is a table entry
            print(f"| {name} | failed ({type(err).__name__}: {str(err).splitlines()[0][:80]}) |")
            continue
        print(f"| {name} | {out[0]:.3f} | {out[1]:.3f} | {out[0] / out[1]:.2f} |", flush=True)


def fit_throughput(device: torch.device, rows: int, batches: list[int], epochs: int) -> None:
    print(f"\n## fit vs a plain loop, {rows} rows, MDN(8, 2, 8 components, hidden (256, 256))\n")
    print("| batch | fit rows/s | plain loop rows/s | fit / plain |")
    print("|---|---|---|---|")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, 8, device=device, generator=g)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].prod(1)], 1) + 0.1 * torch.randn(
        rows, 2, device=device, generator=g
    )

    def model():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchmdn.MDN(8, 2, n_components=8, hidden=(256, 256)).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for batch in batches:
        ends: list[float] = []

        def clock(epoch, history, ends=ends):  # each epoch's end (validation included)
            sync()
            ends.append(time.perf_counter())

        # steady state: from the end of the first epoch (set-up, caches, compilation) on
        h = torchmdn.fit(model(), x, y, max_epochs=epochs + 1, batch_size=batch, progress=False,
                         random_state=0, callback=clock)  # fmt: skip
        n_train = rows - int(round(0.1 * rows))
        fit_rate = epochs * n_train / (ends[-1] - ends[0])
        assert h.skipped_steps == 0 and all(math.isfinite(v) for v in h.train_nll)

        m = model()
        m.standardize(x, y)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=device.type == "cuda")

        def plain_epoch(m=m, opt=opt, batch=batch):
            order = torch.randperm(rows, device=device)
            for i in range(0, rows, batch):
                idx = order[i : i + batch]
                opt.zero_grad(set_to_none=True)
                (-m.log_prob(x[idx], y[idx]).mean()).backward()
                opt.step()

        plain_epoch()
        sync()
        t0 = time.perf_counter()
        for _ in range(epochs):
            plain_epoch()
        sync()
        plain_rate = epochs * rows / (time.perf_counter() - t0)
        print(f"| {batch} | {fit_rate / 1e6:.2f} M | {plain_rate / 1e6:.2f} M | "
              f"{fit_rate / plain_rate:.2f} |", flush=True)  # fmt: skip


def bishop_defaults(device: torch.device) -> None:
    """Bishop's inverse problem with every default of fit (the capacity chosen from the data)
    and with 5 fixed components, the cost of the choice on the device (RESULTS.md has the
    CPU figures)."""
    from torchmdn.datasets import bishop

    x, t = bishop(3000, 0)
    print("\n## Bishop's inverse problem, seed 0 (2000 training rows)")
    seconds = {}
    for label, kw in (
        ("defaults (n_components='auto')", {}),
        ("5 fixed components", {"n_components": 5}),
    ):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torchmdn.MDN(1, 1, **kw).to(device)
        warm = torchmdn.MDN(1, 1, **kw).to(device)  # compilation and caches, not timed
        torchmdn.fit(warm, x[:2000].to(device), t[:2000].to(device), max_epochs=2,
                     random_state=0, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        h = torchmdn.fit(model, x[:2000].to(device), t[:2000].to(device), random_state=0,
                         progress=False)  # fmt: skip
        seconds[label] = elapsed = time.perf_counter() - t0
        with torch.no_grad():
            nll = -model.log_prob(x[2000:].to(device), t[2000:].to(device)).mean().item()
        print(f"{label}: {model.n_components} components, {h.epochs} epochs in {elapsed:.1f} s, "
              f"test NLL {nll:.4f}")  # fmt: skip
    auto, fixed = seconds.values()
    print(f"cost of the choice: {auto / fixed:.2f}x the fixed model's wall time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and epochs")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on the CPU without torch.compile (checks the script)")  # fmt: skip
    args = p.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        lik_rows, step_rows, fit_rows, batches, epochs, reps = 4096, 1024, 8192, [1024], 1, 3
    else:
        if not torch.cuda.is_available():
            print("benchmarks/gpu.py: no CUDA device on this machine; nothing measured "
                  "(run it on a GPU, or --smoke to check the script on the CPU)")  # fmt: skip
            return 0
        device = torch.device("cuda")
        reps = 10 if args.quick else 50
        lik_rows, step_rows, fit_rows = 2**20, 65536, 2_000_000
        batches, epochs = [8192, 65536], (2 if args.quick else 5)  # timed after a first
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# torchmdn GPU benchmarks: {name}, torch {torch.__version__}"
          f"{', quick' if args.quick else ''}{', smoke' if args.smoke else ''}")  # fmt: skip
    print(f"torchmdn compiled likelihood on this device: {compiled_path.available(device.type)}")
    timer = Timer(device, reps)
    started = time.perf_counter()
    use_compile = not args.smoke
    likelihood_table(device, lik_rows, timer, use_compile)
    training_step_ratio(device, step_rows, timer, use_compile)
    fit_throughput(device, fit_rows, batches, epochs)
    if not args.smoke:
        bishop_defaults(device)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
