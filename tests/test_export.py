"""Export: ONNX parity under onnxruntime, torch.export with log_prob, serving example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402

from torchmdn import MDN, GaussianMixture  # noqa: E402
from torchmdn.export import (  # noqa: E402
    export_onnx,
    export_program,
    load_onnx_mixture,
    output_names,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

CASES = [("diagonal", 1), ("diagonal", 2), ("isotropic", 1), ("isotropic", 3), ("full", 3)]
TOL = 1e-5


def _model(covariance: str, d: int, seed: int = 0, groups: list[int] | None = None) -> MDN:
    """A small model with non-trivial weights and standardisation (float32)."""
    g = torch.Generator().manual_seed(seed)
    model = MDN(4, d, n_components=3, hidden=(16, 16), covariance_type=covariance, groups=groups)
    x = torch.randn(256, 4, generator=g) * 2.0 + 1.0
    y = torch.randn(256, d, generator=g) * 1.5 - 2.0
    model.standardize(x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _rows(n: int, d_in: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) * 2.0 + 1.0


def _reference(model: MDN, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        gm = model(x)
    return [gm.logits, gm.loc, gm.scale_tril if gm.covariance_type == "full" else gm.scale]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for cov, d in CASES:
        model = _model(cov, d)
        out[cov, d] = (model, export_onnx(model, root / f"{cov}{d}.onnx"))
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{c}-d{d}" for c, d in CASES])
@pytest.mark.parametrize("batch", [1, 3, 37])  # export traced a batch of 18
def test_onnx_parity(exported, case, batch):
    model, path = exported[case]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == output_names(model)
    x = _rows(batch)
    outputs = session.run(None, {"x": x.numpy()})
    for name, got, ref in zip(output_names(model), outputs, _reference(model, x), strict=True):
        assert got.shape == tuple(ref.shape), name
        assert np.abs(got - ref.numpy()).max() <= TOL, name


@pytest.mark.parametrize("case", CASES, ids=[f"{c}-d{d}" for c, d in CASES])
def test_onnx_log_prob_matches_model(exported, case):
    model, path = exported[case]
    x = _rows(29)
    y = torch.randn(29, model.out_features) * 1.5 - 2.0
    mixture = load_onnx_mixture(path)(x.numpy())
    assert isinstance(mixture, GaussianMixture)
    with torch.no_grad():
        diff = (mixture.log_prob(y) - model.log_prob(x, y)).abs().max()
    assert diff <= TOL


@pytest.mark.parametrize("case", [("diagonal", 2), ("isotropic", 1), ("full", 3)])
def test_export_program_log_prob_and_parameters(case):
    model = _model(*case)
    model.train()
    program = export_program(model)
    assert model.training  # mode restored
    assert isinstance(program, torch.export.ExportedProgram)
    for batch in (1, 3, 11):  # 3 == n_components: no guard on the batch size
        x = _rows(batch)
        y = torch.randn(batch, model.out_features)
        with torch.no_grad():
            got = program.module()(x, y)
            ref = [model.log_prob(x, y), *_reference(model, x)]
        assert len(got) == 4
        for g, r in zip(got, ref, strict=True):
            assert g.shape == r.shape
            assert (g - r).abs().max() <= TOL


def test_serving_example_quantiles(exported):
    spec = importlib.util.spec_from_file_location(
        "serve_onnx", Path(__file__).parents[1] / "examples" / "serve_onnx.py"
    )
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    model, path = exported["diagonal", 1]
    x = _rows(6)
    levels = (0.05, 0.5, 0.95)
    got = serve.quantiles(str(path), x.numpy(), levels)
    assert got.shape == (6, 3)
    with torch.no_grad():
        gm = model(x)
        ref = torch.stack([gm.icdf(q).squeeze(-1) for q in levels], dim=-1)
    assert np.abs(got - ref.numpy()).max() <= TOL
    assert (np.diff(got, axis=1) > 0).all()


def test_missing_onnx_gives_install_hint(monkeypatch):
    import torchmdn.export as ex

    real = __import__("importlib").import_module

    def fake(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real(name, *a, **k)

    monkeypatch.setattr("importlib.import_module", fake)
    with pytest.raises(ImportError, match=r"pip install 'torchmdn\[export\]'"):
        ex.load_onnx_mixture("unused.onnx")


def test_onnx_and_program_from_a_model_on_the_device(tmp_path, device):
    """A GPU model exports from a CPU copy (the file runs under onnxruntime on the CPU) and
    stays where it is; torch.export keeps the model's device."""
    torch.manual_seed(0)
    model = MDN(2, 2, n_components=3, hidden=(8,)).to(device).eval()
    x = torch.randn(7, 2)
    path = export_onnx(model, tmp_path / "m.onnx")
    assert model.x_loc.device.type == device.type
    got = load_onnx_mixture(path)(x.numpy())
    with torch.no_grad():
        want = model(x.to(device))
    torch.testing.assert_close(got.loc, want.loc.cpu(), rtol=TOL, atol=TOL)
    program = export_program(model)
    y = torch.randn(7, 2, device=device)
    with torch.no_grad():
        lp = program.module()(x.to(device), y)[0]
        torch.testing.assert_close(lp, model.log_prob(x.to(device), y), rtol=TOL, atol=TOL)


def test_a_grouped_head_exports(tmp_path):
    """A head averaging sub-mixtures (what n_components="auto" installs) exports like any."""
    model = _model("full", 2, groups=[1, 2])
    x = _rows(7)
    y = torch.randn(7, 2) * 1.5 - 2.0
    with torch.no_grad():
        expected = model.log_prob(x, y)
    mixture = load_onnx_mixture(export_onnx(model, tmp_path / "g.onnx"))(x.numpy())
    assert (mixture.log_prob(y) - expected).abs().max() <= TOL
    with torch.no_grad():
        got = export_program(model).module()(x, y)[0]
    assert (got - expected).abs().max() <= TOL
