"""Export a trained :class:`~torchmdn.MDN` for serving: ONNX and ``torch.export``.

Two exports, both of the model in eval mode and in the user's units (the standardisation
buffers are baked in):

- :func:`export_onnx` writes an ONNX file mapping ``x (N, in_features)`` (``N`` dynamic) to
  the parameters of the predicted mixture, exactly those of ``model(x)``:

  ============  =====================================================================
  ``logits``    ``(N, n)`` unnormalised log mixture weights
  ``loc``       ``(N, n, d)`` component means
  ``scale``     diagonal: ``(N, n, d)`` standard deviations; isotropic: ``(N, n)`` when
                ``d == 1``, else ``(N, n, d)`` (per-column target scaling makes an isotropic
                mixture diagonal in user units, as ``model(x)`` does)
  ``scale_tril`` full only, instead of ``scale``: ``(N, n, d, d)`` Cholesky factors of the
                component covariances
  ============  =====================================================================

  ``GaussianMixture(logits, loc, scale=...)`` (or ``scale_tril=...``) rebuilt from these
  outputs is ``model(x)``; :func:`load_onnx_mixture` does that with onnxruntime.
- :func:`export_program` returns a :class:`torch.export.ExportedProgram` whose
  ``forward(x, y)`` returns ``log p(y | x)`` ``(N,)`` (``model.log_prob``) followed by the
  same parameters as the ONNX file.

ONNX export needs ``onnx`` and ``onnxscript``, serving needs ``onnxruntime``: all optional,
``pip install 'torchmdn[export]'``. This module is not imported by ``import torchmdn``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ._checks import require_extra
from .distributions.mixture import GaussianMixture
from .ensemble import Ensemble
from .errors import InputError
from .nn.mdn import MDN

__all__ = ["export_onnx", "export_program", "load_onnx_mixture", "output_names"]


def _mdns(model: MDN | Ensemble) -> list[MDN]:
    """The MDNs of ``model``: itself, or an ensemble's members."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def output_names(model: MDN | Ensemble) -> list[str]:
    """Names of the exported parameter outputs: logits, loc, then scale or scale_tril."""
    last = "scale_tril" if _mdns(model)[0].head.covariance_type == "full" else "scale"
    return ["logits", "loc", last]


def _tril_inverse_unrolled(a: Tensor) -> Tensor:
    """Inverse of lower-triangular ``a (*, d, d)`` by forward substitution, unrolled over the
    (static) ``d`` rows: plain arithmetic that every ONNX runtime has (no triangular solve)."""
    d = a.shape[-1]
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    rows: list[Tensor] = []
    for i in range(d):
        r = eye[i].expand(a.shape[:-2] + (d,))
        if i:
            done = torch.stack(rows, dim=-2)  # (*, i, d): rows 0..i-1 of the inverse
            r = r - (a[..., i, :i].unsqueeze(-1) * done).sum(-2)
        rows.append(r / a[..., i, i : i + 1])
    return torch.stack(rows, dim=-2)


class _Parameters(nn.Module):
    """x -> (logits, loc, scale or scale_tril) of ``model(x)``, in user units."""

    def __init__(self, model: MDN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # rows become batch shape (N, 1): GaussianMixture's shape checks then compare only
        # static sizes, so the exporter adds no guard on N (such as N != n_components)
        out = self._mixture_parameters(x.unsqueeze(-2))
        return tuple(t.squeeze(1) for t in out)  # type: ignore[return-value]

    def _mixture_parameters(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(self.model, Ensemble):
            return _parameters(self.model, x)
        # an ensemble: every member's components, log-weights minus log M (as Ensemble does)
        parts = [_parameters(m, x) for m in self.model.members]
        log_m = math.log(len(parts))
        logits = torch.cat([torch.log_softmax(p[0], -1) - log_m for p in parts], -1)
        loc = torch.cat([p[1] for p in parts], -2)
        dim = -3 if parts[0][2].dim() == loc.dim() + 1 else -2
        if parts[0][2].dim() == loc.dim() - 1:  # isotropic with d == 1: (N, n)
            dim = -1
        return logits, loc, torch.cat([p[2] for p in parts], dim)


def _parameters(m: MDN, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits, loc, scale or scale_tril)`` of ``m(x)`` in user units, export-friendly."""
    gm = m.standardized_forward(x)
    loc = gm.loc * m.y_scale + m.y_loc
    if gm.covariance_type == "full":
        # the head gives the precision factor A = L⁻¹ in standardised units; in user units
        # it is A diag(1/y_scale) (as GaussianMixture.affine computes it), inverted here
        # the way model(x).scale_tril inverts it: forward substitution
        tril = _tril_inverse_unrolled(gm.precision_tril / m.y_scale)
        return gm.logits, loc, tril
    scale = gm.scale
    if gm.covariance_type == "isotropic":
        scale = scale * m.y_scale if m.out_features == 1 else scale.unsqueeze(-1) * m.y_scale
    else:
        scale = scale * m.y_scale
    return gm.logits, loc, scale


class _LogProbAndParameters(_Parameters):
    """(x, y) -> (log p(y|x), logits, loc, scale or scale_tril)."""

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        log_prob = self.model.log_prob(x.unsqueeze(-2), y.unsqueeze(-2)).squeeze(1)
        return (log_prob, *super().forward(x))


@contextlib.contextmanager
def _export_mode(model: MDN | Ensemble) -> Iterator[None]:
    """Eval mode, no mean-gradient scaling, and torch's global switches restored afterwards."""
    if not isinstance(model, (MDN, Ensemble)) or not all(
        isinstance(m, MDN) for m in _mdns(model)
    ):
        raise InputError(
            f"export expects a torchmdn.MDN or an Ensemble of MDNs; got {type(model).__name__}"
        )
    saved = (model.training, [m.head.mean_grad_scaling for m in _mdns(model)])
    validate, grad = Distribution._validate_args, torch.is_grad_enabled()
    model.eval()
    for m in _mdns(model):
        m.head.mean_grad_scaling = False
    try:
        yield
    finally:
        model.train(saved[0])
        for m, flag in zip(_mdns(model), saved[1], strict=True):
            m.head.mean_grad_scaling = flag
        Distribution.set_default_validate_args(validate)
        torch.set_grad_enabled(grad)


def _on_cpu(model: MDN) -> MDN:
    """``model`` itself on the CPU, else a CPU copy (the caller's model stays where it is)."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    if params and params[0].device.type != "cpu":
        return copy.deepcopy(model).cpu()
    return model


def _example_x(model: MDN) -> Tensor:
    # a batch size equal to no other dimension of the model, so that the exporter cannot
    # mistake the batch for, say, the number of components and specialise it
    sizes = [model.in_features, model.out_features, model.n_components]
    for m in _mdns(model):
        cfg = m.config()
        sizes += [m.n_components, *cfg["hidden"]]
    batch = 2 + max(sizes)
    p = next(model.parameters())
    return torch.randn(batch, model.in_features, dtype=p.dtype, device=p.device)


def export_onnx(model: MDN | Ensemble, path: str | os.PathLike[str], *, opset: int | None = None) -> Path:
    """Write ``model`` as ONNX: input ``x (N, in_features)``, outputs :func:`output_names`.

    ``N`` is dynamic. The outputs are the parameters of ``model(x)`` (see the module docstring)
    in the model's dtype; ``opset=None`` uses the exporter's default opset. A model on a GPU
    is exported from a CPU copy (the file is the same wherever the model was trained).

    Returns:
        The path written.
    """
    require_extra("onnx", "export", "ONNX export and serving")
    require_extra("onnxscript", "export", "ONNX export and serving")
    path = Path(path)
    model = _on_cpu(model)  # the file is the same wherever the model was trained
    with _export_mode(model), torch.no_grad():
        kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
        program = torch.onnx.export(
            _Parameters(model).eval(),
            (_example_x(model),),
            dynamo=True,
            input_names=["x"],
            output_names=output_names(model),
            dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}},
            external_data=False,
            verbose=False,
            **kwargs,
        )
        program.save(str(path), external_data=False)
    return path


def export_program(model: MDN | Ensemble) -> torch.export.ExportedProgram:
    """A :class:`torch.export.ExportedProgram` of ``(x, y) -> (log p(y|x), *parameters)``.

    ``x (N, in_features)``, ``y (N, out_features)`` with ``N`` dynamic; the first output is
    ``model.log_prob(x, y)``, the rest are the :func:`export_onnx` outputs. Run it with
    ``program.module()(x, y)``; save it with ``torch.export.save``.
    """
    with _export_mode(model), torch.no_grad():
        x = _example_x(model)
        y = torch.randn(len(x), model.out_features, dtype=x.dtype, device=x.device)
        batch = torch.export.Dim.DYNAMIC
        return torch.export.export(
            _LogProbAndParameters(model).eval(),
            (x, y),
            dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
        )


def load_onnx_mixture(
    path: str | os.PathLike[str], providers: list[str] | None = None
) -> Callable[[Any], GaussianMixture]:
    """Load an :func:`export_onnx` file with onnxruntime; returns ``predict(x) -> GaussianMixture``.

    ``x`` is anything ``numpy.asarray`` accepts, shape ``(N, in_features)``.
    """
    ort = require_extra("onnxruntime", "export", "ONNX export and serving")
    import numpy as np

    session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32

    def predict(x: Any) -> GaussianMixture:
        out = dict(zip(names, session.run(None, {"x": np.asarray(x, dtype=dtype)}), strict=True))
        logits, loc = torch.from_numpy(out["logits"]), torch.from_numpy(out["loc"])
        if "scale_tril" in out:
            return GaussianMixture(logits, loc, scale_tril=torch.from_numpy(out["scale_tril"]))
        return GaussianMixture(logits, loc, scale=torch.from_numpy(out["scale"]))

    return predict
