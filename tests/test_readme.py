"""The README's quickstart runs as written (in a temporary folder)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with torch.random.fork_rng():
        exec(compile(code, "README quickstart", "exec"), namespace)
    assert (tmp_path / "bishop.safetensors").exists()
    assert namespace["draws"].shape == (100, 1000, 1)
    assert -namespace["dist"].log_prob(namespace["t"][2000:]).mean() < -1.0
