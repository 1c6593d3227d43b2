"""MDNRegressor: the scikit-learn contract and each method's promise."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import torchmdn  # noqa: E402
from torchmdn import MDNRegressor  # noqa: E402
from torchmdn.errors import InputError  # noqa: E402

# small and fast, passed explicitly: the library defaults are sized for real data sets
SMALL = dict(n_components=2, hidden_layer_sizes=(32,), max_epochs=10, batch_size=16)


@parametrize_with_checks([MDNRegressor(**SMALL, random_state=0)])
def test_sklearn_checks(estimator, check):
    check(estimator)


def heteroscedastic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(3x) + (0.05 + 0.3 |x|) ε with x ~ U(-1, 1): the true 90% interval is known."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1))
    y = np.sin(3 * x[:, 0]) + (0.05 + 0.3 * np.abs(x[:, 0])) * rng.normal(size=n)
    return x, y


@pytest.fixture(scope="module")
def fitted() -> tuple[MDNRegressor, np.ndarray, np.ndarray]:
    X, y = heteroscedastic(1500)
    reg = MDNRegressor(
        n_components=3, hidden_layer_sizes=(32, 32), max_epochs=60, random_state=0
    ).fit(X, y)
    return reg, X, y


def test_shapes_and_methods(fitted):
    reg, X, y = fitted
    X_te = X[:7]
    assert reg.predict(X_te).shape == (7,)
    assert reg.predict(X_te).dtype == np.float64
    assert reg.predict(X_te, kind="mode").shape == (7,)
    assert reg.predict(X_te, kind="median").shape == (7,)
    dist = reg.predict_dist(X_te)
    assert isinstance(dist, torchmdn.GaussianMixture)
    assert dist.batch_shape == (7,) and dist.event_shape == (1,)
    np.testing.assert_allclose(reg.predict(X_te), dist.mean[:, 0].numpy())
    assert reg.predict_quantiles(X_te, [0.1, 0.5, 0.9]).shape == (7, 3)
    assert reg.predict_quantiles(X_te, 0.5).shape == (7,)
    low, high = reg.predict_interval(X_te, 0.8)
    assert low.shape == high.shape == (7,) and np.all(low < high)
    assert reg.sample(X_te, 11, random_state=0).shape == (7, 11)
    np.testing.assert_array_equal(reg.sample(X_te, 5, random_state=3), reg.sample(X_te, 5, 3))
    with pytest.raises(InputError, match="kind"):
        reg.predict(X_te, kind="average")


def test_quantiles_monotone_and_match_cdf(fitted):
    reg, X, _ = fitted
    qs = np.linspace(0.02, 0.98, 25)
    quant = reg.predict_quantiles(X[:50], qs)
    assert np.all(np.diff(quant, axis=1) > 0)
    cdf = reg.predict_dist(X[:50]).cdf(torch.from_numpy(quant.T[..., None]))
    np.testing.assert_allclose(cdf.numpy(), np.broadcast_to(qs[:, None], (25, 50)), atol=1e-6)


def test_interval_coverage_near_level(fitted):
    reg, _, _ = fitted
    X_te, y_te = heteroscedastic(4000, seed=1)
    for level in (0.5, 0.9):
        low, high = reg.predict_interval(X_te, level)
        coverage = np.mean((y_te >= low) & (y_te <= high))
        assert abs(coverage - level) < 0.04, (level, coverage)
    # heteroscedastic: intervals are wider where the noise is larger
    low, high = reg.predict_interval(np.array([[0.0], [0.9]]), 0.9)
    assert (high - low)[1] > 2 * (high - low)[0]


def test_score_is_r2_and_log_likelihood_is_minus_nll(fitted):
    reg, X, y = fitted
    assert reg.score(X, y) == pytest.approx(r2_score(y, reg.predict(X)), rel=1e-12)
    with torch.no_grad():
        nll = torchmdn.metrics.nll(reg.predict_dist(X), torch.from_numpy(y)[:, None])
    assert reg.log_likelihood(X, y) == pytest.approx(-nll.item(), rel=1e-10)
    assert torchmdn.nll_scorer(reg, X, y) == reg.log_likelihood(X, y)


def test_predict_dist_in_original_units():
    """Targets in other units give the same model up to the change of units: the mixture is
    the affine image, and the log-likelihood shifts by -log(scale)."""
    X, y = heteroscedastic(300)
    a, b = 250.0, -40.0
    kw = dict(SMALL, random_state=0, dtype="float64")
    reg = MDNRegressor(**kw).fit(X, y)
    scaled = MDNRegressor(**kw).fit(X, a * y + b)
    d, ds = reg.predict_dist(X[:20]), scaled.predict_dist(X[:20])
    np.testing.assert_allclose(ds.mean.numpy(), a * d.mean.numpy() + b, rtol=1e-6)
    np.testing.assert_allclose(ds.stddev.numpy(), a * d.stddev.numpy(), rtol=1e-6)
    np.testing.assert_allclose(scaled.predict(X[:20]), a * reg.predict(X[:20]) + b, rtol=1e-6)
    ll, lls = reg.log_likelihood(X, y), scaled.log_likelihood(X, a * y + b)
    assert lls == pytest.approx(ll - np.log(a), rel=1e-6)


def test_two_d_targets_and_pandas():
    X, y = heteroscedastic(200)
    Y = np.c_[y, 2 * y + 1]
    frame = pd.DataFrame(X, columns=["x"])
    reg = MDNRegressor(**SMALL, random_state=0).fit(frame, pd.DataFrame(Y, columns=["a", "b"]))
    assert list(reg.feature_names_in_) == ["x"]
    assert reg.predict(frame).shape == (200, 2)
    assert reg.predict_dist(frame).event_shape == (2,)
    assert reg.sample(frame, 3).shape == (200, 3, 2)
    with pytest.raises(InputError, match="1-d target"):
        reg.predict_quantiles(frame, [0.5])
    series = MDNRegressor(**SMALL, random_state=0).fit(frame, pd.Series(y, name="y"))
    assert series.predict(frame).shape == (200,)


def test_grid_search_with_nll_scorer():
    X, y = heteroscedastic(150)
    search = GridSearchCV(
        MDNRegressor(**SMALL, random_state=0),
        {"n_components": [1, 2]},
        scoring=torchmdn.nll_scorer,
        cv=2,
    ).fit(X, y)
    assert search.best_params_["n_components"] in (1, 2)
    assert np.isfinite(search.best_score_)


def test_clone_pipeline_pickle_round_trip(fitted):
    reg, X, y = fitted
    unfitted = clone(reg)
    assert unfitted.get_params() == reg.get_params() and not hasattr(unfitted, "model_")
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))
    np.testing.assert_array_equal(
        again.predict_quantiles(X[:5], [0.1, 0.9]), reg.predict_quantiles(X[:5], [0.1, 0.9])
    )
    pipe = make_pipeline(StandardScaler(), MDNRegressor(**SMALL, random_state=0)).fit(X, y)
    piped = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(piped.predict(X), pipe.predict(X))
    assert pipe.score(X, y) > 0.5


def test_same_random_state_same_predictions_and_global_rng_untouched():
    X, y = heteroscedastic(120)
    state = torch.get_rng_state()
    a = MDNRegressor(**SMALL, random_state=7).fit(X, y).predict(X)
    b = MDNRegressor(**SMALL, random_state=7).fit(X, y).predict(X)
    c = MDNRegressor(**SMALL, random_state=8).fit(X, y).predict(X)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_clear_errors_for_bad_input(fitted):
    reg, X, y = fitted
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN.*Remedy"):
        MDNRegressor(**SMALL).fit(bad, y)
    with pytest.raises(InputError, match="NaN"):
        reg.predict(bad)
    with pytest.raises(InputError, match="2 features, but MDNRegressor is expecting 1"):
        reg.predict(np.c_[X, X])
    frame = pd.DataFrame({"x": X[:, 0], "colour": ["red"] * len(X)})
    with pytest.raises(InputError, match=r"non-numeric columns \['colour'\].*OneHotEncoder"):
        MDNRegressor(**SMALL).fit(frame, y)
    with pytest.raises(NotFittedError):
        MDNRegressor().predict(X)
    with pytest.raises(NotFittedError):
        MDNRegressor().predict_dist(X)
    with pytest.raises(InputError, match="constant"):
        MDNRegressor(**SMALL).fit(X, np.ones(len(X)))
    with pytest.raises(InputError, match="covariance_type"):
        MDNRegressor(**SMALL, covariance_type="diagonal").fit(X, y)
    with pytest.raises(InputError, match="q must be"):
        reg.predict_quantiles(X, [0.5, 1.5])
    with pytest.raises(InputError, match="rows"):
        reg.log_likelihood(X, y[:-1])


def test_import_torchmdn_does_not_import_sklearn():
    code = "import sys, torchmdn; assert 'sklearn' not in sys.modules; torchmdn.MDNRegressor"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_estimator_takes_pandas_without_torch_warnings():
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from torchmdn import MDNRegressor

    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, generator=g)
    y = x + 0.1 * torch.randn(60, 1, generator=g)
    frame = pd.DataFrame({"x": x[:, 0].double().numpy(), "y": y[:, 0].double().numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = MDNRegressor(hidden_layer_sizes=(8,), n_components=2, max_epochs=2, random_state=0)
        reg.fit(frame[["x"]], frame["y"])
        assert math.isfinite(reg.log_likelihood(frame[["x"]], frame["y"]))
        reg.predict_interval(frame[["x"]])


def test_device_fit_predict_and_pickle(device):
    X, y = heteroscedastic(120)
    reg = MDNRegressor(**SMALL, random_state=0, device=str(device)).fit(X, y)
    assert reg.model_.x_loc.device.type == device.type
    pred = reg.predict(X)
    assert pred.shape == (120,) and np.isfinite(pred).all()
    low, high = reg.predict_interval(X[:5], 0.8)
    assert (low < high).all()
    assert reg.sample(X[:3], n_samples=4, random_state=0).shape == (3, 4)
    assert reg.__getstate__()["model_"].x_loc.device.type == "cpu"  # pickles hold CPU tensors
    assert reg.model_.x_loc.device.type == device.type  # (a copy: the model stays put)
    again = pickle.loads(pickle.dumps(reg))
    assert again.model_.x_loc.device.type == device.type  # back where it was trained
    np.testing.assert_allclose(again.predict(X), pred, rtol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_a_pickle_from_a_gpu_machine_predicts_on_the_cpu():
    X, y = heteroscedastic(120)
    reg = MDNRegressor(**SMALL, random_state=0).fit(X, y)
    reg.device = "cuda"  # as if trained there: unpickling here keeps the model on the CPU
    again = pickle.loads(pickle.dumps(reg))
    assert again.model_.x_loc.device.type == "cpu"
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))


def test_grid_search_over_numpy_integers_and_one_hidden_width():
    X = np.linspace(0, 1, 40)[:, None]
    y = X[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(40)
    reg = MDNRegressor(hidden_layer_sizes=8, max_epochs=2, random_state=0)
    search = GridSearchCV(reg, {"n_components": np.arange(1, 3)}, cv=2, error_score="raise")
    search.fit(X, y)
    assert search.best_params_["n_components"] in (1, 2)


def test_values_beyond_float32_are_refused_with_the_remedy():
    X = np.linspace(0, 1, 20)[:, None]
    y = X[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(20)
    reg = MDNRegressor(hidden_layer_sizes=(4,), max_epochs=1, random_state=0).fit(X, y)
    with pytest.raises(InputError, match="float64"):
        reg.predict(np.array([[1e39]]))
    with pytest.raises(InputError):
        MDNRegressor(max_epochs=1).fit(X, np.array(["a"] * 20))


def test_tiny_and_huge_targets_in_float32():
    X = np.linspace(0, 1, 30)[:, None]
    noise = 1 + 0.1 * np.random.default_rng(0).standard_normal(30)
    for unit in (1e20, 1e-25):
        reg = MDNRegressor(hidden_layer_sizes=(4,), max_epochs=2, random_state=0).fit(
            X, unit * noise
        )
        std = reg.model_.y_scale.item()
        assert 0 < std < math.inf and 0.01 < std / unit < 1


def test_the_default_chooses_the_number_of_components():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (400, 1))
    y = np.where(rng.random(400) < 0.5, -1.0, 1.0) * (1 + x[:, 0]) + 0.1 * rng.normal(size=400)
    reg = MDNRegressor(hidden_layer_sizes=(32,), max_epochs=30, random_state=0).fit(x, y)
    chosen = reg.history_.capacity["chosen"]
    assert reg.n_components_ == chosen["n_components"] >= 2  # two branches need two
    assert reg.get_params()["n_components"] == "auto"  # the parameter is left as given
    assert np.isfinite(reg.log_likelihood(x, y))
