"""Serve an MDN exported to ONNX: quantiles of p(y | x) for new rows, without the model code.

Export once (``pip install 'torchmdn[export]'``)::

    import torchmdn
    from torchmdn.export import export_onnx

    model = torchmdn.load("model.safetensors")
    export_onnx(model, "model.onnx")

then, in the serving process (onnxruntime + torchmdn for the quantile search)::

    quantiles("model.onnx", rows, levels=(0.05, 0.5, 0.95))  # -> (N, 3) array

The ONNX file maps ``x (N, in_features)`` to the mixture parameters ``logits``, ``loc`` and
``scale`` (or ``scale_tril`` for full covariances) in the user's units; see
:mod:`torchmdn.export`. Quantiles need a one-dimensional target (``out_features == 1``).
Run this file to see it on a small untrained model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from torchmdn import GaussianMixture


def quantiles(
    path: str, rows: np.ndarray, levels: Sequence[float] = (0.05, 0.5, 0.95)
) -> np.ndarray:
    """Quantiles ``(N, len(levels))`` of y given each row of ``rows (N, in_features)``."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"x": np.asarray(rows, np.float32)}), strict=True))
    logits, loc = torch.from_numpy(out["logits"]), torch.from_numpy(out["loc"])
    if "scale_tril" in out:
        mixture = GaussianMixture(logits, loc, scale_tril=torch.from_numpy(out["scale_tril"]))
    else:
        mixture = GaussianMixture(logits, loc, scale=torch.from_numpy(out["scale"]))
    q = torch.tensor(levels, dtype=loc.dtype).reshape(-1, 1)  # (L, 1) against batch (N,)
    return mixture.icdf(q).squeeze(-1).T.numpy()  # (L, N, 1) -> (N, L)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    import torchmdn
    from torchmdn.export import export_onnx

    model = torchmdn.MDN(2, 1, n_components=3, hidden=(16,))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(export_onnx(model, Path(tmp) / "model.onnx"))
        print(quantiles(path, np.random.default_rng(0).normal(size=(4, 2))))
