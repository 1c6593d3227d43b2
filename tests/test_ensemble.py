"""torchmdn.ensemble: M models as one exact mixture; MDNRegressor(n_estimators=M)."""

import math

import numpy as np
import pytest
import torch

import torchmdn
from torchmdn import MDN, ensemble
from torchmdn.ensemble import full_covariance
from torchmdn.errors import InputError


def _members(d=1, covariance="diagonal", counts=(2, 3), dtype=torch.float64):
    x = torch.randn(9, 2, dtype=dtype)
    y = torch.randn(9, d, dtype=dtype)
    out = []
    for i, k in enumerate(counts):
        torch.manual_seed(i)
        m = MDN(2, d, n_components=k, hidden=(8,), covariance_type=covariance).to(dtype)
        m.standardize(x, y)
        with torch.no_grad():
            m.head.linear.weight.normal_()  # members that disagree
        out.append(m.eval())
    return out, x, y


@pytest.mark.parametrize(
    "d, covariance",
    [(1, "diagonal"), (2, "diagonal"), (3, "full"), (1, "isotropic"), (2, "isotropic")],
)
def test_the_mixture_is_the_average_of_the_members(d, covariance):
    members, x, y = _members(d, covariance)
    ens = ensemble(members)
    with torch.no_grad():
        dist = ens(x)
        want = torch.logsumexp(torch.stack([m.log_prob(x, y) for m in members]), 0) - math.log(2)
        torch.testing.assert_close(dist.log_prob(y), want)
        torch.testing.assert_close(ens.log_prob(x, y), want)
        # weights: each member's, divided by the member count
        torch.testing.assert_close(dist.probs[:, :2], members[0](x).probs / 2)
        torch.testing.assert_close(dist.probs.sum(-1), torch.ones(9, dtype=torch.float64))
        # queries work on the one mixture: its mean is the members' average mean
        mean = (members[0](x).mean + members[1](x).mean) / 2
        torch.testing.assert_close(dist.mean, mean)
    assert dist.n_components == ens.n_components == 5


def test_members_must_agree():
    (a,), x, _ = _members(1, counts=(2,))
    (b,), _, _ = _members(2, counts=(2,))
    with pytest.raises(InputError, match="agree on the target dimension"):
        ensemble([a, b])
    (c,), _, _ = _members(1, "isotropic", counts=(2,))
    with pytest.raises(InputError, match="covariance types"):
        ensemble([a, c])
    with pytest.raises(InputError, match="non-empty list"):
        ensemble([])
    with pytest.raises(InputError, match="member 1"):
        ensemble([a, "model"])


def test_save_and_load(tmp_path):
    members, x, y = _members(2, "full")
    ens = ensemble(members)
    path = torchmdn.save(ens, tmp_path / "e.safetensors", metadata={"note": "x"})
    loaded = torchmdn.load(path)
    assert type(loaded).__name__ == "Ensemble" and loaded.metadata["note"] == "x"
    with torch.no_grad():
        torch.testing.assert_close(loaded.to(torch.float64).log_prob(x, y), ens.log_prob(x, y))


def test_a_diagonal_head_turns_into_an_equal_full_one():
    (m,), x, y = _members(3, counts=(4,))
    with torch.no_grad():
        before = m.log_prob(x, y)
        full_covariance(m)
        assert m.head.covariance_type == "full" and m.config()["covariance_type"] == "full"
        torch.testing.assert_close(m.log_prob(x, y), before)


def test_a_grouped_diagonal_head_turns_into_an_equal_grouped_full_one():
    """A head that averages sub-mixtures (as n_components="auto" installs) keeps them."""
    x, y = torch.randn(9, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    torch.manual_seed(0)
    m = MDN(2, 2, n_components=5, hidden=(8,), groups=[2, 3]).double().standardize(x, y)
    with torch.no_grad():
        m.head.linear.weight.normal_()
        before = m.log_prob(x, y)
        full_covariance(m)
        assert m.head.groups == (2, 3) and m.head.covariance_type == "full"
        torch.testing.assert_close(m.log_prob(x, y), before)


def test_diagonal_and_full_members_combine_as_full():
    (a,), x, y = _members(2, counts=(2,))
    (b,), _, _ = _members(2, "full", counts=(3,))
    with torch.no_grad():
        expected = torch.logsumexp(torch.stack([a.log_prob(x, y), b.log_prob(x, y)]), 0)
        ens = ensemble([a, b])
        assert ens(x).covariance_type == "full" and ens.n_components == 5
        torch.testing.assert_close(ens.log_prob(x, y), expected - math.log(2))
    assert a.head.covariance_type == "diagonal"  # the model passed in is not changed


def test_export_program_of_an_ensemble():
    from torchmdn.export import export_program

    members, x, y = _members(1, counts=(2, 2), dtype=torch.float32)
    ens = ensemble(members)
    out = export_program(ens).module()(x, y)
    with torch.no_grad():
        torch.testing.assert_close(out[0], ens.log_prob(x, y))
        assert out[1].shape == (9, 4)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_regressor_with_several_estimators(n_jobs):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (120, 2))
    y = X[:, 0] + 0.1 * rng.normal(size=120)
    kw = dict(hidden_layer_sizes=(8,), max_epochs=3, n_components=2, random_state=0)
    reg = torchmdn.MDNRegressor(n_estimators=3, n_jobs=n_jobs, **kw).fit(X, y)
    assert type(reg.model_).__name__ == "Ensemble" and reg.n_components_ == 6
    assert len(reg.history_) == 3
    # the ensemble's density is the average of the members' (each member refitted alone)
    seeds = np.random.RandomState(np.random.RandomState(0).randint(np.iinfo(np.int32).max)).randint(
        np.iinfo(np.int32).max, size=3
    )
    alone = [torchmdn.MDNRegressor(**{**kw, "random_state": int(s)}).fit(X, y) for s in seeds]
    lp = np.log(np.mean([np.exp(r.predict_dist(X).log_prob(torch.tensor(y[:, None])).numpy())
                         for r in alone], 0))  # fmt: skip
    got = reg.predict_dist(X).log_prob(torch.tensor(y[:, None])).numpy()
    np.testing.assert_allclose(got, lp, rtol=1e-5, atol=1e-5)
    assert reg.predict(X[:4]).shape == (4,)


def test_n_estimators_and_n_jobs_are_checked():
    X, y = np.zeros((10, 1)), np.arange(10.0)
    with pytest.raises(InputError, match="n_estimators"):
        torchmdn.MDNRegressor(n_estimators=0).fit(X, y)
    with pytest.raises(InputError, match="n_jobs"):
        torchmdn.MDNRegressor(n_jobs=0).fit(X, y)


def _ensemble_in_a_worker(_: int) -> int:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (60, 1))
    reg = torchmdn.MDNRegressor(n_estimators=2, n_jobs=2, n_components=1, hidden_layer_sizes=(8,),
                                max_epochs=2, random_state=0).fit(X, X[:, 0])  # fmt: skip
    return reg.n_components_


def test_an_ensemble_fits_inside_a_process_pool_worker():
    # a pool's worker is a daemon and may not start processes: the members train one by one
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_ensemble_in_a_worker, [0]) == [2]
