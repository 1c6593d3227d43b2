"""``MDNRegressor``: a scikit-learn estimator around :class:`~torchmdn.MDN` and :func:`~torchmdn.fit`.

scikit-learn is an optional dependency (``pip install 'torchmdn[sklearn]'``); this module is
imported only when ``torchmdn.MDNRegressor`` or ``torchmdn.nll_scorer`` is first used.
NumPy/pandas conversion happens here, at the edge; everything below works on tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._checks import integer
from .distributions.mixture import GaussianMixture
from .errors import InputError
from .io import resolve_device
from .nn.mdn import MDN
from .training.fit import fit
from .training.length import plan as plan_epochs

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "torchmdn.MDNRegressor needs scikit-learn >= 1.6: pip install 'torchmdn[sklearn]'"
    ) from err

__all__ = ["MDNRegressor", "nll_scorer"]

_COVARIANCES = {"diag": "diagonal", "spherical": "isotropic", "full": "full", "auto": "auto"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_KINDS = ("mean", "mode", "median")


class MDNRegressor(RegressorMixin, BaseEstimator):
    r"""Mixture density network regressor: predicts the whole conditional distribution p(y|x).

    ``fit`` standardises x and y inside the network and trains it by maximum likelihood with
    :func:`torchmdn.fit` (AdamW with warm-up and cosine decay, an exponential moving average
    of the weights validated on a held-out share of the training rows, the best averaged
    state restored, noise regularisation). Every prediction is in the original units of y.

    How the defaults were chosen:
        One configuration for every data set, chosen on the *training* parts of the UCI
        regression splits only (each training part split again 90/10; the test parts were
        never looked at) and on Bishop's inverse problem. See ``benchmarks/uci.py --holdout``
        and ``benchmarks/RESULTS.md`` ("UCI regression benchmark"). The result is the
        library's own defaults for :class:`~torchmdn.MDN` and :func:`~torchmdn.fit` (5
        components, two hidden layers of 128 SiLU units, ``min_scale=1e-3``, AdamW at 1e-2
        with warm-up and cosine decay, batch 128, EMA 0.99 validated on 10% of the rows) and
        their rule for the length of training (:mod:`torchmdn.training.length`): 3000
        optimiser steps up to 1200 training rows (about 1500 epochs for 250 rows), more for
        larger data, with early stopping on the validation split; small data sets need many
        passes to fit sharp relationships and large ones few. Tried on the holdouts and rejected: noise
        regularisation (``noise_x, noise_y`` = 0.05, 0.02 or 0.1, 0.05: yacht worse by 1-2
        nats, energy worse), ``weight_decay=0.01`` and 3 components (no change beyond the
        noise between splits), 1500 steps (energy worse). ``min_scale`` was not tuned. A
        target recorded on a grid (UCI wine: six integer scores) gets the floor
        ``target_resolution="auto"`` of :class:`~torchmdn.MDN`: without it components
        collapse onto the grid points, most points score far below any continuous model
        and a point between them scores thousands of nats.

    Args:
        n_components: ``"auto"`` (default): chosen from the training rows by validation
            likelihood over 1, 2, 3, 5, 12 and 20 components (and 32 for a multi-column
            y) trained together on one backbone; the candidates within two paired standard
            errors of the best are averaged into one mixture (under 250 rows, and for one
            column under 400 when the validation rows keep extra modes, the simplest within
            half of one, by cross-validation, its standard deviations then widened by the
            factor the folds choose; :mod:`torchmdn.training.capacity`);
            ``n_components_`` says how many components in all. An integer fixes the number
            of Gaussian components.
        covariance_type: ``"auto"`` (default): with ``n_components="auto"`` and a
            multi-column y, full for 2-3 columns, from 4 chosen with the component count;
            otherwise diagonal; or ``"diag"``, ``"spherical"``, ``"full"`` (scikit-learn's
            names; they only matter for multi-column targets).
        hidden_layer_sizes: widths of the hidden layers of the MLP (one integer: one layer).
        activation: ``"silu"``, ``"relu"``, ``"tanh"`` or ``"gelu"``.
        min_scale: floor on component standard deviations, in standardised units of y.
        target_resolution: ``"auto"`` (detect targets recorded on a grid and floor their
            standard deviations at the grid step / sqrt(12)), ``None`` (off), or the step(s)
            in y's units; see :class:`torchmdn.MDN`.
        max_epochs: passes over the training rows; ``None`` (default) derives them from
            the steps: ``ceil(steps / steps_per_epoch)`` epochs.
        max_steps: optimiser steps to aim for when ``max_epochs`` is ``None``; ``None``
            (default): the shared rule ``clip(2.5 N, 3000, 20000)`` for ``N`` training rows
            (see :func:`torchmdn.fit`).
        batch_size: rows per optimiser step (at most the number of training rows).
        learning_rate: peak AdamW learning rate (5% linear warm-up, then cosine decay to 0).
        weight_decay: AdamW decoupled weight decay.
        noise_x, noise_y: standard deviation of the Gaussian noise added to standardised x and
            y in every batch (Rothfuss et al. 2019).
        validation_fraction: share of the training rows held out to pick the best epoch;
            with fewer than ``2 / validation_fraction`` rows no split is made and the
            training NLL picks it.
        patience: ``"auto"`` (default: stop after ``clip(ceil(0.2 epochs), 20, 100)`` epochs
            without a better validation NLL), ``None`` (never stop early) or epochs.
        ema_decay: decay of the moving average of the weights (0: off).
        random_state: ``None``, an int or a ``numpy.random.RandomState``; seeds the network's
            initialisation, the split, the batch order and the noise (the global torch random
            state is left untouched).
        device: torch device to train and predict on (``"cpu"``, ``"cuda"``, ``"cuda:N"``;
            ``"auto"``: CUDA when available). Pickles hold the model on the CPU; unpickled
            where that device is missing, the model predicts on the CPU.
        dtype: ``"float32"`` or ``"float64"``.
        verbose: show a progress bar while fitting (on terminals).
        n_estimators: train this many networks (seeds drawn from ``random_state``) and
            predict with their :func:`torchmdn.ensemble`: one mixture with every member's
            components, weights divided by ``n_estimators``.
        n_jobs: worker processes for the members (``None``: as many as free CPUs, one torch
            thread each; 1: one after the other in this process).

    Attributes:
        model_: the fitted :class:`torchmdn.MDN` (an :class:`torchmdn.Ensemble` of them
            with ``n_estimators > 1``), in eval mode, on ``device``.
        history_: the :class:`torchmdn.History` of the fit (a list, one per member, with
            ``n_estimators > 1``); ``history_.capacity`` says which capacities were tried
            and why one was chosen.
        n_components_: components of the fitted mixture (summed over ensemble members).
        covariance_type_: the covariance type used (``"diag"``, ``"spherical"``, ``"full"``).
        n_features_in_: number of input columns.
        feature_names_in_: column names when X was a DataFrame with string column names.
        n_outputs_: dimension of y.

    Expected-to-fail scikit-learn checks: none (``tests/test_estimator.py`` runs every check
    of ``parametrize_with_checks`` with a small explicit configuration).

    Example:
        >>> import numpy as np
        >>> from torchmdn import MDNRegressor
        >>> rng = np.random.default_rng(0)
        >>> X = rng.uniform(-1, 1, (200, 2))
        >>> y = X[:, 0] + 0.1 * rng.normal(size=200)
        >>> reg = MDNRegressor(hidden_layer_sizes=(16,), max_epochs=20, random_state=0).fit(X, y)
        >>> reg.predict(X[:3]).shape, reg.predict_dist(X[:3]).event_shape
        ((3,), torch.Size([1]))
    """

    def __init__(
        self,
        n_components: int | str = "auto",
        covariance_type: str = "auto",
        hidden_layer_sizes: Sequence[int] = (128, 128),
        activation: str = "silu",
        min_scale: float = 1e-3,
        target_resolution: str | float | Sequence[float] | None = "auto",
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 128,
        learning_rate: float = 1e-2,
        weight_decay: float = 0.0,
        noise_x: float = 0.0,
        noise_y: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int | str | None = "auto",
        ema_decay: float = 0.99,
        random_state: int | np.random.RandomState | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        verbose: bool = False,
        n_estimators: int = 1,
        n_jobs: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.min_scale = min_scale
        self.target_resolution = target_resolution
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.noise_x = noise_x
        self.noise_y = noise_y
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.ema_decay = ema_decay
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.n_estimators = n_estimators
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ scikit-learn plumbing

    def __sklearn_tags__(self):  # noqa: D105 - scikit-learn protocol
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        return tags

    def _validate_params(self) -> None:
        if self.covariance_type not in _COVARIANCES:
            raise InputError(
                f"covariance_type must be one of {sorted(_COVARIANCES)}; got "
                f"{self.covariance_type!r}. Use 'diag' unless y has correlated dimensions."
            )
        k = self.n_components
        if k != "auto" and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise InputError(
                f"n_components must be 'auto' (chosen from the data) or an integer >= 1; got {k!r}"
            )
        if self.n_jobs is not None and (
            isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, (int, np.integer))
            or self.n_jobs < 1
        ):  # fmt: skip
            raise InputError(
                f"n_jobs must be None (as many processes as free CPUs) or an integer >= 1; "
                f"got {self.n_jobs!r}"
            )
        if self.dtype not in _DTYPES:
            raise InputError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        batch_size = integer("batch_size", self.batch_size)
        # max_epochs, max_steps and patience: checked by the training-length rule
        plan_epochs(1, batch_size, self.max_epochs, self.max_steps, self.patience)
        integer("n_estimators", self.n_estimators)

    def _check_frame(self, X: Any, name: str) -> None:
        """Name the non-numeric columns of a DataFrame (check_array's message does not)."""
        dtypes = getattr(X, "dtypes", None)
        if dtypes is None or not hasattr(X, "columns"):
            return
        bad = [str(c) for c, t in zip(X.columns, dtypes, strict=False) if t.kind not in "biuf"]
        if bad:
            raise InputError(
                f"{name} has non-numeric columns {bad}; MDNRegressor needs numbers only. "
                "Encode them first, e.g. with sklearn.preprocessing.OneHotEncoder in a "
                "ColumnTransformer inside a Pipeline, or drop them."
            )

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        self._check_frame(X, "X")
        try:
            X = validate_data(self, X, reset=reset, dtype=np.float64)
        except ValueError as err:
            raise InputError(f"{err} {_REMEDY}") from err
        return X

    def _device(self) -> torch.device:
        """Where the fitted model is (after unpickling on a machine without the training
        device: the CPU), else where ``device`` says."""
        model = getattr(self, "model_", None)
        if model is not None:
            return next(model.parameters()).device
        return resolve_device(self.device)

    def _tensor(self, a: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """``a`` in the model's dtype, refusing values that overflow it (1e39 in float32)."""
        device = self._device() if device is None else device
        t = torch.tensor(np.asarray(a), dtype=_DTYPES[self.dtype], device=device)
        if not bool(torch.isfinite(t).all()):
            raise InputError(
                f"some values (largest magnitude {float(np.abs(a).max()):.3g}) overflow "
                f"{self.dtype}; use MDNRegressor(dtype='float64') or change units"
            )
        return t

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the model on the CPU, so it unpickles on machines without a GPU."""
        state = super().__getstate__()
        model = state.get("model_")
        if model is not None and next(model.parameters()).device.type != "cpu":
            state = {**state, "model_": copy.deepcopy(model).cpu()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Back on ``device`` when this machine has it (else the model stays on the CPU)."""
        super().__setstate__(state)
        model = getattr(self, "model_", None)
        if model is not None:
            try:
                target = resolve_device(self.device)
            except InputError:
                return
            self.model_ = model.to(target)

    # ------------------------------------------------------------------ fit

    def fit(self, X: Any, y: Any) -> MDNRegressor:
        """Fit the network to ``X (n, p)`` and ``y (n,)`` or ``(n, d)``.

        Args:
            X: array-like or pandas DataFrame of numbers, one row per sample.
            y: array-like, pandas Series or DataFrame; 1-d for one target.

        Returns:
            self, fitted.

        Raises:
            InputError: non-numeric, NaN/inf or empty data, fewer than 2 rows, a constant
                target column, or an invalid setting.
        """
        self._validate_params()
        self._check_frame(X, "X")
        self._check_frame(y, "y")
        try:
            X, y = validate_data(
                self, X, y, multi_output=True, y_numeric=True, dtype=np.float64,
                ensure_min_samples=2,
            )  # fmt: skip
        except ValueError as err:
            raise InputError(f"{err} {_REMEDY}") from err
        if y.dtype.kind not in "biuf":
            raise InputError(
                f"y must hold numbers; got values of dtype {y.dtype} (e.g. {y.flat[0]!r}). "
                "MDNRegressor models numeric targets: convert y to numbers first"
            )
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.n_outputs_ = y2.shape[1]
        constant = np.flatnonzero(np.ptp(y2, axis=0) == 0).tolist()
        if constant:
            raise InputError(
                f"target column(s) {constant} of y are constant: a density over a constant is "
                "not defined. Drop them or add varied data."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if self.n_estimators > 1:
            return self._fit_ensemble(X, y, seed)
        n = len(X)
        val_fraction = self.validation_fraction
        if val_fraction > 0 and n * val_fraction < 2:
            val_fraction = 0.0  # too few rows to hold any out: the training NLL picks the epoch
        n_train = n - int(round(val_fraction * n))
        batch_size = int(min(self.batch_size, n_train))
        with torch.random.fork_rng(devices=[]):  # seeded init; global RNG state restored
            torch.default_generator.manual_seed(seed)
            model = MDN(
                X.shape[1],
                self.n_outputs_,
                n_components=k if (k := self.n_components) == "auto" else int(k),
                hidden=self.hidden_layer_sizes,  # (one integer: one layer)
                covariance_type=_COVARIANCES[self.covariance_type],
                activation=self.activation,
                min_scale=self.min_scale,
                target_resolution=self.target_resolution,
            )
        device = resolve_device(self.device)
        model = model.to(device=device, dtype=_DTYPES[self.dtype])
        self.history_ = fit(
            model,
            self._tensor(X, device),
            self._tensor(y2, device),
            max_epochs=self.max_epochs,
            max_steps=self.max_steps,
            batch_size=batch_size,
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            validation_fraction=val_fraction,
            patience=self.patience,
            ema_decay=self.ema_decay,
            noise_x=self.noise_x,
            noise_y=self.noise_y,
            progress=self.verbose,
            random_state=seed,
        )
        self.model_ = model
        self.n_components_ = model.n_components
        self.covariance_type_ = {v: k for k, v in _COVARIANCES.items()}[model.head.covariance_type]
        return self

    def _fit_ensemble(self, X: np.ndarray, y: np.ndarray, seed: int) -> MDNRegressor:
        """Fit ``n_estimators`` members (seeds drawn from ``seed``), in worker processes when
        more than one CPU is free, and keep their :func:`torchmdn.ensemble`."""
        from .ensemble import ensemble

        seeds = np.random.RandomState(seed).randint(np.iinfo(np.int32).max, size=self.n_estimators)
        members = [
            self.__class__(**{**self.get_params(), "n_estimators": 1, "random_state": int(s)})
            for s in seeds
        ]
        jobs = self.n_jobs if self.n_jobs is not None else _free_cpus()
        jobs = min(jobs, self.n_estimators) if str(self.device).startswith("cpu") else 1
        import multiprocessing

        if multiprocessing.current_process().daemon:  # a pool's worker may not start processes
            jobs = 1
        if jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread) as pool:
                members = list(pool.map(_fit_member, members, [X] * len(members), [y] * len(members)))
        else:
            members = [m.fit(X, y) for m in members]
        models = [m.model_ for m in members]
        self.model_ = ensemble(models).eval()  # diagonal and full members combine as full
        self.history_ = [m.history_ for m in members]
        self.n_components_ = self.model_.n_components
        kind = self.model_.members[0].head.covariance_type
        self.covariance_type_ = {v: k for k, v in _COVARIANCES.items()}[kind]
        return self

    # ------------------------------------------------------------------ predictions

    def predict_dist(self, X: Any) -> GaussianMixture:
        """The predicted mixture over y in its original units, in float64 on the CPU.

        Batch shape ``(n,)``, event shape ``(d,)`` (``(1,)`` for a 1-d y).
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        members = getattr(self.model_, "members", None)
        if members is not None:  # an ensemble: each member in float64, then combined exactly
            from .ensemble import combine

            return combine([self._dist64(m, X) for m in members])
        return self._dist64(self.model_, X)

    def _dist64(self, model: MDN, X: np.ndarray) -> GaussianMixture:
        """``model``'s mixture for ``X`` in float64 on the CPU, in y's units."""
        with torch.no_grad():
            z = model.standardized_forward(self._tensor(X))
            f64 = torch.float64
            scale = None if z.scale is None else z.scale.detach().to("cpu", f64)
            tril = None if z.scale_tril is None else z.scale_tril.detach().to("cpu", f64)
            z = GaussianMixture(
                z.logits.detach().to("cpu", f64),
                z.loc.detach().to("cpu", f64),
                scale=scale,
                scale_tril=tril,
                validate_args=False,
            )
            return z.affine(model.y_scale.to("cpu", f64), model.y_loc.to("cpu", f64))

    def _shape_out(self, values: torch.Tensor) -> np.ndarray:
        """``(..., d)`` -> NumPy float64, dropping the last axis for a 1-d y."""
        out = values.detach().cpu().numpy().astype(np.float64)
        return out[..., 0] if self._y_1d else out

    def predict(self, X: Any, kind: str = "mean") -> np.ndarray:
        """Point predictions, ``(n,)`` for a 1-d y, else ``(n, d)``.

        Args:
            X: inputs.
            kind: ``"mean"`` (the mixture mean, minimises squared error), ``"mode"`` (the
                global mode, found by mean-shift from each component mean) or ``"median"``
                (1-d y only).
        """
        if kind not in _KINDS:
            raise InputError(f"kind must be one of {_KINDS}; got {kind!r}")
        dist = self.predict_dist(X)
        if kind == "mean":
            return self._shape_out(dist.mean)
        if kind == "mode":
            return self._shape_out(dist.mode())
        self._require_1d("predict(kind='median')")
        return self._shape_out(dist.icdf(0.5))

    def _require_1d(self, what: str) -> None:
        if self.n_outputs_ != 1:
            raise InputError(
                f"{what} is defined for a 1-d target; this model predicts d = "
                f"{self.n_outputs_}. Use predict_dist(X).marginal([k]) for dimension k."
            )

    def predict_quantiles(self, X: Any, q: float | Sequence[float]) -> np.ndarray:
        """Quantiles of the predicted distribution (1-d y): ``(n, len(q))``, or ``(n,)`` for
        one number ``q``. Monotone in ``q``."""
        check_is_fitted(self)
        self._require_1d("predict_quantiles")
        qs = np.asarray(q, dtype=np.float64)
        if qs.ndim > 1 or not np.all((qs > 0) & (qs < 1)):
            raise InputError(
                f"q must be a number or a 1-d list of probabilities strictly between 0 and 1 "
                f"(e.g. [0.05, 0.5, 0.95]); got {q!r}"
            )
        dist = self.predict_dist(X)
        probs = torch.as_tensor(qs, dtype=torch.float64).reshape(-1, 1)  # [Q, 1]
        out = dist.icdf(probs)[..., 0].T.numpy()  # [n, Q]
        return out[:, 0] if qs.ndim == 0 else out

    def predict_interval(self, X: Any, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Central prediction interval holding probability ``level`` (1-d y).

        Returns:
            ``(low, high)``, each ``(n,)``: the ``(1 - level) / 2`` and ``(1 + level) / 2``
            quantiles.
        """
        check_is_fitted(self)
        self._require_1d("predict_interval")
        low, high = self.predict_dist(X).interval(level)
        return low[:, 0].numpy(), high[:, 0].numpy()

    def sample(
        self, X: Any, n_samples: int = 1, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        """Draws from the predicted distribution: ``(n, n_samples)`` for a 1-d y, else
        ``(n, n_samples, d)``. ``random_state`` seeds a local generator."""
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or (n_samples < 1)
        ):
            raise InputError(f"n_samples must be an integer >= 1; got {n_samples!r}")
        dist = self.predict_dist(X)
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        draws = dist.sample((int(n_samples),), generator=torch.Generator().manual_seed(seed))
        return self._shape_out(draws.transpose(0, 1))  # [n, S, d]

    def log_likelihood(self, X: Any, y: Any) -> float:
        """Mean log-likelihood of ``y`` given ``X`` in nats, in the original units of y
        (higher is better; the negative of the mean NLL)."""
        dist = self.predict_dist(X)
        self._check_frame(y, "y")
        y = np.asarray(y, dtype=np.float64)
        y = y.reshape(len(y), -1)
        if y.shape != (dist.batch_shape[0], self.n_outputs_):
            raise InputError(
                f"y must have {dist.batch_shape[0]} rows (one per row of X) and "
                f"{self.n_outputs_} column(s); got shape {y.shape}"
            )
        if not np.isfinite(y).all():
            raise InputError(f"y contains NaN or inf. {_REMEDY}")
        return float(dist.log_prob(torch.tensor(y)).mean())


def _free_cpus() -> int:
    """CPUs this process may use."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _one_thread() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


def _fit_member(member: MDNRegressor, X: np.ndarray, y: np.ndarray) -> MDNRegressor:
    """Fit one ensemble member (in a worker process)."""
    return member.fit(X, y)


_REMEDY = (
    "Remedy: pass finite numbers only (impute or drop missing values, e.g. with "
    "sklearn.impute.SimpleImputer in a Pipeline) with the columns used in fit."
)


def nll_scorer(estimator: Any, X: Any, y: Any) -> float:
    """Scorer for ``GridSearchCV(..., scoring=torchmdn.nll_scorer)``: the *negative* mean NLL
    in nats (``estimator.log_likelihood(X, y)``), so that higher is better, as scikit-learn
    requires (like its ``"neg_log_loss"``)."""
    return estimator.log_likelihood(X, y)
