"""Speed of torchmdn's likelihood, training step and sampling: same-run ratios.

One process; the implementations of each case run interleaved (A, B, C, A, B, C, ...) and
each figure is the median of many repeats, so drifting load on a shared machine hits every
implementation alike. Ratios are against torch.distributions (``MixtureSameFamily``, built with
``validate_args=False``, the faster of its settings); ``mixture-density-nets`` and ``pyknos`` are
reported as "not installed" unless importable. Eager mode, float32, CPU, no compile.

    .venv/bin/python benchmarks/speed.py [--threads 2] [--repeats 200] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

import torchmdn.distributions.mixture as tdist
from torchmdn import GaussianMixture
from torchmdn.nn.mdn import MLP, MDNHead
from torchmdn.ops import kernel as kernels

NV = dict(validate_args=False)


def td_diag(logits, loc, scale):
    return MixtureSameFamily(
        Categorical(logits=logits, **NV), Independent(Normal(loc, scale, **NV), 1, **NV), **NV
    )


def td_full(logits, loc, tril):
    return MixtureSameFamily(
        Categorical(logits=logits, **NV), MultivariateNormal(loc, scale_tril=tril, **NV), **NV
    )


class tensor_path:
    """Context: the fused Functions' tensor-level code, without the compiled kernel (what runs
    where no C++ compiler is found)."""

    def __enter__(self):
        kernels._USE_KERNEL = False

    def __exit__(self, *exc):
        kernels._USE_KERNEL = True


NO_KERNEL = "torchmdn (fused, tensor-level: no kernel)"


def without_kernel(fn):
    def run():
        with tensor_path():
            return fn()

    return run


class reference_path:
    """Context: GaussianMixture.log_prob uses the plain-autograd reference instead."""

    def __enter__(self):
        tdist._USE_FUSED = False

    def __exit__(self, *exc):
        tdist._USE_FUSED = True


def interleaved(cases: dict, repeats: int, warmup: int = 5) -> dict[str, list[float]]:
    """Run each zero-argument callable in turn, ``repeats`` times; seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(warmup + repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def summary(times: dict[str, list[float]], base: str) -> dict[str, tuple[float, float, float]]:
    """Per implementation: median seconds, ratio of medians to ``base``, and the spread of
    the ratio (interquartile range of per-round ratios, relative to the median ratio)."""
    out = {}
    b = times[base]
    for name, t in times.items():
        per_round = sorted(x / y for x, y in zip(t, b, strict=True))
        q1, q3 = per_round[len(per_round) // 4], per_round[3 * len(per_round) // 4]
        ratio = statistics.median(t) / statistics.median(b)
        out[name] = (statistics.median(t), ratio, (q3 - q1) / max(ratio, 1e-12))
    return out


def report(title: str, times, base: str, rows: list[str]) -> None:
    s = summary(times, base)
    print(f"\n### {title}")
    print("| implementation | median | ratio | ratio IQR/median |")
    print("|---|---|---|---|")
    for name in times:
        med, ratio, spread = s[name]
        print(f"| {name} | {med * 1e3:.3f} ms | {ratio:.2f} | {spread:.2f} |")
        rows.append(f"{title} | {name} | {ratio:.2f}")


def step(fn, params):
    def run():
        for p in params:
            p.grad = None
        fn().mean().neg().backward()

    return run


def saved_bytes(fn) -> int:
    """Bytes of distinct storages the autograd graph of ``fn()`` keeps for its backward."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


# ------------------------------------------------------------------ cases


def diag_cases(B: int, K: int, D: int, gen):
    logits = torch.randn(B, K, generator=gen).requires_grad_()
    loc = torch.randn(B, K, D, generator=gen).requires_grad_()
    scale = (0.5 + torch.rand(B, K, D, generator=gen)).requires_grad_()
    y = torch.randn(B, D, generator=gen)
    params = (logits, loc, scale)

    def ours():
        return GaussianMixture(logits, loc, scale=scale, **NV).log_prob(y)

    def ref():
        with reference_path():
            return ours()

    fns = {
        "torch.distributions": lambda: td_diag(logits, loc, scale).log_prob(y),
        "torchmdn (fused)": ours,
        NO_KERNEL: without_kernel(ours),
        "torchmdn (reference autograd)": ref,
    }
    return {k: step(f, params) for k, f in fns.items()}, fns


def full_user_cases(B: int, K: int, D: int, gen):
    logits = torch.randn(B, K, generator=gen).requires_grad_()
    loc = torch.randn(B, K, D, generator=gen).requires_grad_()
    a = torch.randn(B, K, D, D, generator=gen) / math.sqrt(D)
    tril = torch.linalg.cholesky(a @ a.mT + 0.5 * torch.eye(D)).requires_grad_()
    y = torch.randn(B, D, generator=gen)
    params = (logits, loc, tril)

    def ours():
        return GaussianMixture(logits, loc, scale_tril=tril, **NV).log_prob(y)

    def ref():
        with reference_path():
            return ours()

    fns = {
        "torch.distributions": lambda: td_full(logits, loc, tril).log_prob(y),
        "torchmdn (fused)": ours,
        NO_KERNEL: without_kernel(ours),
        "torchmdn (reference autograd)": ref,
    }
    return {k: step(f, params) for k, f in fns.items()}, fns


def full_head_cases(B: int, K: int, D: int, gen, features: int = 64):
    """From the raw outputs of one Linear layer to the loss (the head's own path)."""
    torch.manual_seed(0)
    head = MDNHead(features, D, K, covariance_type="full")
    h = torch.randn(B, features, generator=gen)
    y = torch.randn(B, D, generator=gen)
    params = tuple(head.parameters())
    rows, cols = torch.tril_indices(D, D)
    flat_index, is_diag = rows * D + cols, rows == cols

    def td():  # the usual recipe: Cholesky factor from the outputs, MultivariateNormal
        logits, loc, raw = head.linear(h).split(head._split, dim=-1)
        raw = raw.unflatten(-1, (K, -1))
        entries = torch.where(is_diag, F.softplus(raw) + head.min_scale, raw)
        tril = raw.new_zeros(raw.shape[:-1] + (D * D,)).index_copy(-1, flat_index, entries)
        return td_full(logits, loc.unflatten(-1, (K, D)), tril.unflatten(-1, (D, D))).log_prob(y)

    def ours():
        return head(h).log_prob(y)

    def ref():
        with reference_path():
            return ours()

    fns = {
        "torch.distributions": td,
        "torchmdn (fused)": ours,
        NO_KERNEL: without_kernel(ours),
        "torchmdn (reference autograd)": ref,
    }
    return {k: step(f, params) for k, f in fns.items()}, fns


def training_cases(B: int = 1024, K: int = 8, D: int = 2, gen=None):
    torch.manual_seed(0)
    x = torch.randn(B, 8, generator=gen)
    y = torch.randn(B, D, generator=gen)

    def make(out_layer):
        body = MLP(8, (256, 256), "tanh")
        head = out_layer(256)
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-3)
        return body, head, opt

    def run(body, head, opt, loss_fn):
        def go():
            opt.zero_grad(set_to_none=True)
            loss_fn(head(body(x))).backward()
            opt.step()

        return go

    mse = make(lambda w: nn.Linear(w, D))
    # an MSE head with as many outputs as the MDN head: the cost of the wider last layer alone
    width = K + 2 * K * D
    wide = make(lambda w: nn.Linear(w, width))
    y_wide = torch.randn(B, width, generator=gen)
    mdn = make(lambda w: MDNHead(w, D, K))
    mdn_ref = make(lambda w: MDNHead(w, D, K))
    mdn_tensor = make(lambda w: MDNHead(w, D, K))
    tdh = make(lambda w: nn.Linear(w, K + 2 * K * D))

    def td_loss(out):
        logits, loc, raw = out.split([K, K * D, K * D], dim=-1)
        scale = F.softplus(raw).add(1e-3).unflatten(-1, (K, D))
        return -td_diag(logits, loc.unflatten(-1, (K, D)), scale).log_prob(y).mean()

    def ref_loss(gm):
        with reference_path():
            return -gm.log_prob(y).mean()

    return {
        "MSE head (the 1.00)": run(*mse, lambda out: F.mse_loss(out, y)),
        f"MSE head with {width} outputs (as wide as the MDN head)": run(
            *wide, lambda out: F.mse_loss(out, y_wide)
        ),
        "torch.distributions head": run(*tdh, td_loss),
        "torchmdn MDNHead (fused)": run(*mdn, lambda gm: -gm.log_prob(y).mean()),
        "torchmdn MDNHead (fused, tensor-level: no kernel)": without_kernel(
            run(*mdn_tensor, lambda gm: -gm.log_prob(y).mean())
        ),
        "torchmdn MDNHead (reference autograd)": run(*mdn_ref, ref_loss),
    }


def sampling_cases(N: int = 100_000, K: int = 8, D: int = 2, gen=None):
    logits = torch.randn(N, K, generator=gen)
    loc = torch.randn(N, K, D, generator=gen)
    scale = 0.5 + torch.rand(N, K, D, generator=gen)
    ours = GaussianMixture(logits, loc, scale=scale, **NV)
    td = td_diag(logits, loc, scale)
    one = GaussianMixture(logits[0], loc[0], scale=scale[0], **NV)
    td_one = td_diag(logits[0], loc[0], scale[0])
    g = torch.Generator().manual_seed(0)
    return {
        "torch.distributions (100k mixtures, 1 draw each)": lambda: td.sample(),
        "torchmdn (100k mixtures, 1 draw each)": lambda: ours.sample(generator=g),
        "torch.distributions (1 mixture, 100k draws)": lambda: td_one.sample((N,)),
        "torchmdn (1 mixture, 100k draws)": lambda: one.sample((N,), generator=g),
    }


def peers() -> list[str]:
    return [
        f"{name}: {'installed' if importlib.util.find_spec(mod) else 'not installed, skipped'}"
        for name, mod in (("mixture-density-nets", "mixture_density_nets"), ("pyknos", "pyknos"))
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else args.repeats
    gen = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, torch.set_num_threads({torch.get_num_threads()}), "
        f"float32, eager; {reps} interleaved repeats, medians"
    )
    print("peers: " + "; ".join(peers()))
    print(kernels.status())
    rows: list[str] = []
    mem: list[str] = []

    for K, D in [(5, 1), (5, 8), (32, 8), (8, 32)]:
        steps, fns = diag_cases(4096, K, D, gen)
        report(
            f"diagonal NLL fwd+bwd, B=4096, K={K}, D={D}",
            interleaved(steps, reps),
            "torch.distributions",
            rows,
        )
        mem.append(
            f"| diagonal K={K}, D={D} | "
            + " | ".join(f"{saved_bytes(f) / 2**20:.1f}" for f in fns.values())
            + " |"
        )
    for title, maker in (
        (
            "full covariance NLL fwd+bwd from raw head outputs (Linear 64->K+KD+KD(D+1)/2)",
            full_head_cases,
        ),
        ("full covariance NLL fwd+bwd from a user-given scale_tril", full_user_cases),
    ):
        steps, fns = maker(4096, 5, 8, gen)
        report(f"{title}, B=4096, K=5, D=8", interleaved(steps, reps), "torch.distributions", rows)
        mem.append(
            f"| {title.split(' from ')[1][:20]} K=5, D=8 | "
            + " | ".join(f"{saved_bytes(f) / 2**20:.1f}" for f in fns.values())
            + " |"
        )

    report(
        "training step (Adam), MLP 8-256-256 tanh, B=1024, K=8, D=2",
        interleaved(training_cases(gen=gen), reps),
        "MSE head (the 1.00)",
        rows,
    )

    samp = interleaved(sampling_cases(gen=gen), max(reps // 4, 5))
    print("\n### sampling, K=8, D=2 (draws per second; ratio = time / torch.distributions)")
    print("| implementation | median | M draws/s | ratio |")
    print("|---|---|---|---|")
    for name, t in samp.items():
        base = samp[name.replace("torchmdn", "torch.distributions")]
        med = statistics.median(t)
        print(
            f"| {name} | {med * 1e3:.2f} ms | {1e5 / med / 1e6:.1f} | "
            f"{med / statistics.median(base):.2f} |"
        )

    print("\n### memory kept for the backward pass (MiB of saved tensors; B=4096)")
    print("| case | torch.distributions | torchmdn (fused) | no kernel | torchmdn (reference) |")
    print("|---|---|---|---|---|")
    print("\n".join(mem))


if __name__ == "__main__":
    main()
