"""Modes (torchmdn.distributions.modes) against brute-force grids."""

import math

import pytest
import torch

from oracles import F64, KINDS, make
from torchmdn import GaussianMixture

# ---------------------------------------------------------------------- modes


def grid_maxima_1d(gm, lo, hi, num=200_001):
    ys = torch.linspace(lo, hi, num, dtype=F64)
    lp = gm.log_prob(ys.unsqueeze(-1))
    peak = (lp[1:-1] > lp[:-2]) & (lp[1:-1] > lp[2:])
    return ys[1:-1][peak], (hi - lo) / (num - 1)


@pytest.mark.parametrize("seed", range(6))
def test_modes_1d_match_brute_force_grid(seed):
    kind = KINDS[seed % 3]
    gm = make(kind, (), 4, 1, seed=seed, spread=2.5, scale_range=(0.3, 1.2))
    found = gm.modes()
    got = found.loc[found.valid][:, 0].sort().values
    want, h = grid_maxima_1d(gm, -15, 15)
    assert got.shape == want.shape, (got, want)
    torch.testing.assert_close(got, want, atol=2 * h, rtol=0)
    # sorted by density and the log densities are right
    lp = found.log_prob[found.valid]
    assert (lp.diff() <= 0).all()
    torch.testing.assert_close(lp, gm.log_prob(found.loc[found.valid]))
    torch.testing.assert_close(gm.mode(), found.loc[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_modes_2d_match_brute_force_grid(kind, seed):
    gm = make(kind, (), 3, 2, seed=seed, spread=2.0, scale_range=(0.4, 1.0))
    found = gm.modes()
    num, lo, hi = 801, -9.0, 9.0
    g = torch.linspace(lo, hi, num, dtype=F64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    lp = gm.log_prob(pts)
    pad = torch.nn.functional.pad(lp[None, None], (1, 1, 1, 1), value=-math.inf)[0, 0]
    neigh = torch.stack(
        [
            pad[1 + i : 1 + i + num, 1 + j : 1 + j + num]
            for i in (-1, 0, 1)
            for j in (-1, 0, 1)
            if (i, j) != (0, 0)
        ]
    )
    peaks = pts[(lp > neigh.amax(0))]
    got = found.loc[found.valid]
    h = (hi - lo) / (num - 1)
    assert got.shape[0] == peaks.shape[0], (got, peaks)
    for p in peaks:  # each grid maximum has a found mode within a grid cell or two
        assert (got - p).norm(dim=-1).min() <= 2 * h
    # the global mode beats every grid point
    assert gm.log_prob(gm.mode()) >= lp.max() - 1e-12


def test_modes_batched_with_padding():
    # element 0 is bimodal, element 1 has two coincident components: one mode
    loc = torch.tensor([[[-3.0], [3.0]], [[1.0], [1.0]]], dtype=F64)
    gm = GaussianMixture(torch.zeros(2, 2, dtype=F64), loc, scale=torch.ones(2, 2, 1, dtype=F64))
    found = gm.modes()
    assert found.loc.shape == (2, 2, 1)
    assert found.valid.tolist() == [[True, True], [True, False]]
    assert torch.isnan(found.loc[1, 1]).all() and found.log_prob[1, 1] == -math.inf
    torch.testing.assert_close(gm.mode()[1], torch.tensor([1.0], dtype=F64))
    assert found.density[1, 1] == 0


def test_negligible_modes_are_left_out_by_default():
    # a component of weight 1e-4 far from the others is a local mode of density ~1e-4 of the
    # main one: left out by default, returned with min_relative_density=0
    logits = torch.tensor([0.0, 0.0, math.log(1e-4)], dtype=F64)
    loc = torch.tensor([[-2.0], [2.0], [9.0]], dtype=F64)
    gm = GaussianMixture(logits, loc, scale=torch.full((3, 1), 0.5, dtype=F64))
    kept = gm.modes()
    assert int(kept.valid.sum()) == 2
    torch.testing.assert_close(
        kept.loc[kept.valid][:, 0].sort().values.abs(),
        torch.full((2,), 2.0, dtype=F64),
        atol=1e-3,
        rtol=0,
    )
    everything = gm.modes(min_relative_density=0)
    assert int(everything.valid.sum()) == 3
    assert 9.0 in everything.loc[everything.valid][:, 0].round(decimals=3).tolist()
    with pytest.raises(Exception, match="min_relative_density"):
        gm.modes(min_relative_density=1.5)


@pytest.mark.parametrize("kind", ["diagonal", "isotropic", "full"])
def test_modes_in_chunks_equal_one_pass(kind, monkeypatch):
    import torchmdn.distributions.modes as M

    g = torch.Generator().manual_seed(0)
    rows, n, d = 11, 4, 2
    logits, loc = torch.randn(rows, n, generator=g), torch.randn(rows, n, d, generator=g)
    logits, loc = logits.double(), loc.double()
    if kind == "full":
        a = torch.randn(rows, n, d, d, generator=g, dtype=torch.float64)
        gm = GaussianMixture(logits, loc, scale_tril=torch.linalg.cholesky(a @ a.mT + torch.eye(d)))
    else:
        shape = (rows, n, d) if kind == "diagonal" else (rows, n)
        gm = GaussianMixture(logits, loc, scale=torch.rand(shape, generator=g).double() + 0.3)
    whole = gm.modes()
    monkeypatch.setattr(M, "_CHUNK", 1)
    parts = gm.modes()
    k = parts.loc.shape[-2]
    assert torch.equal(whole.valid[..., :k], parts.valid) and not whole.valid[..., k:].any()
    torch.testing.assert_close(parts.loc.nan_to_num(), whole.loc[..., :k, :].nan_to_num())


def test_modes_refuse_a_mixture_too_large_for_one_row():
    from torchmdn.errors import InputError

    gm = GaussianMixture(torch.zeros(100_000), torch.zeros(100_000, 1), torch.ones(100_000, 1))
    with pytest.raises(InputError, match="GiB per row"):
        gm.mode()
