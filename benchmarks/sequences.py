"""Benchmark: mixture density RNNs on LASA handwriting and Atlantic storm tracks.

    .venv/bin/python benchmarks/sequences.py            # seeds 0 1 2, about 8 minutes

Measures (i) teacher-forced vs step-by-step log_prob, (ii) held-out LASA per-step NLL of a
5-component MDN-RNN vs the same RNN with one component vs a constant-velocity Gaussian,
(iii) held-out storms (2017-2022): per-step NLL and the 24-hour energy score of the position
(km) for 5 vs 1 components, with persistence (constant velocity) as a reference.
Needs the data extra: pip install 'torchmdn[data]'.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import MultivariateNormal

from torchmdn.apps.sequences import data as D
from torchmdn.nn.recurrent import MDNRNN, lengths_to_mask
from torchmdn.training.sequences import fit_sequences


def lasa_split():
    pos = torch.stack(list(D.lasa_positions(every=10).values()))  # [26, 7, 100, 2]
    x, y = D.trajectory_task(pos.flatten(0, 1))
    x, y = x.view(26, 7, *x.shape[1:]), y.view(26, 7, *y.shape[1:])
    # demonstrations 0-4 of every shape train, 5 validates, 6 is held out
    return (x[:, :5].flatten(0, 1), y[:, :5].flatten(0, 1)), (x[:, 5], y[:, 5]), (x[:, 6], y[:, 6])


def constant_velocity_nll(train, test) -> float:
    """y_t ~ N(last displacement, Σ), Σ the ML covariance of the training residuals."""
    res = (train[1] - train[0][..., 2:]).reshape(-1, 2)
    cov = res.T @ res / len(res)
    return (
        -MultivariateNormal(test[0][..., 2:], covariance_matrix=cov).log_prob(test[1]).mean().item()
    )


def train(model, data, val, seed, epochs, batch_size):
    return fit_sequences(
        model, *data, validation_data=val, max_epochs=epochs, batch_size=batch_size, lr=3e-3,
        random_state=seed, progress=False,
    )  # fmt: skip


def make(in_features, n, seed, hidden):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MDNRNN(in_features, 2, n, hidden_size=hidden, covariance_type="full")


def stepwise_gap(model, x, y) -> tuple[float, float]:
    """max |teacher-forced - step-by-step log_prob|, absolute and relative to max(1, |lp|)."""
    with torch.no_grad():
        forced = model.log_prob(x, y)
        gen = model.generator(seed=0)
        steps = []
        for t in range(x.shape[1]):
            gen.observe(x[:, t])
            steps.append(gen.log_prob(y[:, t]))
    diff = (forced - torch.stack(steps, 1)).abs()
    return diff.max().item(), (diff / forced.abs().clamp_min(1)).max().item()


def lasa(seeds, epochs, hidden):
    tr, va, te = lasa_split()
    cv = constant_velocity_nll(tr, te)
    print(
        f"LASA: {len(tr[0])} train / {len(va[0])} val / {len(te[0])} test demos, {te[0].shape[1]} steps"
    )
    print(f"constant-velocity Gaussian: test NLL {cv:.3f} nats/step")
    rows = {}
    for seed in seeds:
        for n in (1, 5):
            m = make(4, n, seed, hidden)
            t0 = time.perf_counter()
            h = train(m, tr, va, seed, epochs, 16)
            with torch.no_grad():
                nll = m.nll(*te).item()
            rows[(seed, n)] = nll
            print(f"seed {seed} n={n}: test NLL {nll:.3f} nats/step (best epoch {h.best_epoch}, "
                  f"{time.perf_counter() - t0:.0f} s)")  # fmt: skip
            if n == 5 and seed == seeds[0]:
                (a32, r32) = stepwise_gap(m, *te)
                (a64, r64) = stepwise_gap(m.double(), te[0].double(), te[1].double())
                m.float()
                print(f"teacher-forced vs step-by-step log_prob, {te[0].numel() // 4} test steps: "
                      f"max abs diff {a64:.1e} (float64), {a32:.1e} (float32; relative "
                      f"{r32:.1e})")  # fmt: skip
    one = sum(rows[(s, 1)] for s in seeds) / len(seeds)
    five = sum(rows[(s, 5)] for s in seeds) / len(seeds)
    print(
        f"LASA mean over seeds: n=5 {five:.3f}, n=1 {one:.3f}, const-vel {cv:.3f}; "
        f"margin vs n=1 {one - five:.3f} nats/step, vs const-vel {cv - five:.3f}"
    )


def energy_24h(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Energy score (km) of sampled positions ``(S, K, 2)`` at true positions ``(K, 2)``."""
    coslat = torch.cos(torch.deg2rad(truth[:, 0]))

    def km(p):
        return torch.stack([(p[..., 1] - truth[:, 1]) * 111.32 * coslat,
                            (p[..., 0] - truth[:, 0]) * 110.574], -1)  # fmt: skip

    x = km(samples)
    half = len(x) // 2
    return x.norm(dim=-1).mean(0) - 0.5 * (x[:half] - x[half : 2 * half]).norm(dim=-1).mean(0)


def storms(seeds, epochs, hidden, n_samples):
    tracks = D.storm_tracks()
    test_rows = torch.nonzero(tracks.years >= 2017).flatten()
    rest = torch.nonzero(tracks.years < 2017).flatten()
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))]
    tr, va, te = (
        tracks.subset(r) for r in (rest[len(rest) // 10 :], rest[: len(rest) // 10], test_rows)
    )
    xe, ye, le = D.storm_task(te)
    mask = lengths_to_mask(le, xe.shape[1])
    origins = torch.tensor([(i, t) for i in range(len(te)) for t in range(int(le[i]) - 3)])
    truth = te.positions[origins[:, 0], origins[:, 1] + 5]
    # persistence: the last 6-hour displacement repeated 4 times (a point forecast: ES = error)
    x_o = xe[origins[:, 0], origins[:, 1]]
    pos = x_o[:, 2:4]
    for _ in range(4):
        pos = D.move_km(pos, x_o[:, :2])
    persist = energy_24h(torch.stack([pos, pos]), truth).mean().item()  # = the distance
    print(f"storms: {len(tr)} train / {len(va)} val tracks (1975-2016), {len(te)} test tracks "
          f"(2017-2022), {int(mask.sum())} test steps, {len(origins)} 24-h forecasts")  # fmt: skip
    print(f"persistence (constant velocity) 24-h error: {persist:.1f} km")
    res = {}
    for seed in seeds:
        for n in (1, 5):
            m = make(5, n, seed, hidden)
            t0 = time.perf_counter()
            h = train(m, D.storm_task(tr), D.storm_task(va), seed, epochs, 32)
            with torch.no_grad():
                nll = m.nll(xe, ye, mask).item()
                smp = D.storm_rollouts(m, te, origins, 4, n_samples, seed=seed)
            es = energy_24h(smp[:, :, -1], truth)
            res[(seed, n)] = (nll, es)
            print(f"seed {seed} n={n}: test NLL {nll:.3f} nats/step, 24-h energy score "
                  f"{es.mean():.1f} km (best epoch {h.best_epoch}, {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    track = origins[:, 0]
    ones = torch.ones(len(track))
    per_track_n = torch.zeros(len(te)).index_add_(0, track, ones)

    def by_track(v):  # mean per storm, then mean and standard error over storms
        m = torch.zeros(len(te)).index_add_(0, track, v) / per_track_n.clamp_min(1)
        m = m[per_track_n > 0]
        return m.mean().item(), (m.std() / len(m) ** 0.5).item()

    for seed in seeds:
        gain, se = by_track(res[(seed, 1)][1] - res[(seed, 5)][1])
        print(f"seed {seed}: ES(n=1) - ES(n=5) = {gain:.2f} ± {se:.2f} km (s.e. over storms); "
              f"NLL(n=1) - NLL(n=5) = {res[(seed, 1)][0] - res[(seed, 5)][0]:.3f} nats/step")  # fmt: skip
    mean = {n: [sum(float(torch.as_tensor(res[(s, n)][k]).mean()) for s in seeds) / len(seeds) for k in (0, 1)]
            for n in (1, 5)}  # fmt: skip
    gain, se = by_track(sum(res[(s, 1)][1] - res[(s, 5)][1] for s in seeds) / len(seeds))
    print(f"storms mean over seeds: n=5 NLL {mean[5][0]:.3f}, ES24 {mean[5][1]:.1f} km; n=1 NLL "
          f"{mean[1][0]:.3f}, ES24 {mean[1][1]:.1f} km; ES gain {gain:.2f} ± {se:.2f} km "
          f"(s.e. over storms); persistence {persist:.1f} km")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--part", choices=["lasa", "storms", "all"], default="all")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lasa-epochs", type=int, default=200)
    p.add_argument("--storm-epochs", type=int, default=60)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy 2-core box")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.part in ("lasa", "all"):
        lasa(args.seeds, args.lasa_epochs, args.hidden)
    if args.part in ("storms", "all"):
        storms(args.seeds, args.storm_epochs, args.hidden, args.samples)


if __name__ == "__main__":
    main()
