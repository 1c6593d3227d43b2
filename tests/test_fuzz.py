"""Fuzzing the readers: random mutations of a valid model file, a valid checkpoint and a
valid CSV must each end in the library's own error or a correct result: never another
exception, a hang (each case has a deadline) or a large allocation (peak memory is bounded
over the whole run). The outcomes are counted and printed at the end (``pytest -s``)."""

from __future__ import annotations

import collections
import json
import resource
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchmdn
from torchmdn import MDN, fit
from torchmdn.cli.tables import columns, read_csv
from torchmdn.errors import TorchMDNError
from torchmdn.io import load_checkpoint, save_checkpoint
from torchmdn.training.streaming import TableSource

OUTCOMES: collections.Counter = collections.Counter()
FUZZ = settings(
    deadline=2000,  # ms per case: a hang fails the case
    derandomize=True,  # the same cases on every run (CI)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_START_RSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _outcome(suite: str, fn) -> None:
    """Run ``fn``: a result or a TorchMDNError are both fine; record which."""
    try:
        fn()
    except TorchMDNError as err:
        OUTCOMES[f"{suite}: {type(err).__name__}"] += 1
    else:
        OUTCOMES[f"{suite}: loaded"] += 1


class _Files(dict):
    def __repr__(self) -> str:  # (hypothesis prints the arguments of a failing case)
        return "<the valid files>"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 2, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(48, 1, generator=g)
    torch.manual_seed(0)
    model = MDN(2, 1, n_components=2, hidden=(4,), feature_names=["a", "b"], target_names=["y"])
    ckpt = root / "ckpt.safetensors"
    fit(model, x, y, max_epochs=1, checkpoint=ckpt, progress=False, random_state=0)
    path = root / "model.safetensors"
    torchmdn.save(model, path)
    csv = "a,b,y\n" + "".join(f"{a:.3f},{b:.3f},{c:.3f}\n" for (a, b), c in zip(x.tolist(), y[:, 0].tolist(), strict=True))  # fmt: skip
    yield _Files(
        {"model": path.read_bytes(), "ckpt": ckpt.read_bytes(), "csv": csv, "x": x, "y": y}
    )
    print("\nfuzz outcomes:", dict(sorted(OUTCOMES.items())), "total", sum(OUTCOMES.values()))


def _header_end(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]


def _mutate(blob: bytes, data) -> bytes:
    """Byte flips, overwrites and truncations, half of them inside the JSON header."""
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "byte", "truncate", "header"]))
        if kind == "truncate":
            return bytes(out[: data.draw(st.integers(0, len(out)))])
        end = _header_end(blob) if kind == "header" else len(out)
        i = data.draw(st.integers(0, max(0, min(end, len(out)) - 1)))
        if kind == "flip":
            out[i] ^= 1 << data.draw(st.integers(0, 7))
        else:
            out[i] = data.draw(st.sampled_from(list(b'{}[]",:0123456789-eE.x\\ \x00\xff')))
    return bytes(out)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _edit_json(tree, data):
    """Replace one value somewhere in a JSON tree (or add a key) with a random value."""
    node = tree
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(_JSON)
        return tree
    if isinstance(node, dict):
        node[data.draw(st.text(max_size=6))] = data.draw(_JSON)
    return tree


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_model_file_bytes(files, tmp_path, data):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_mutate(files["model"], data))

    def run():
        model = torchmdn.load(path)
        assert torch.isfinite(model(files["x"]).mean).all()  # a correct, usable model

    _outcome("model bytes", run)


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_model_file_fields(files, tmp_path, data):
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save_file

    blob = files["model"]
    meta = json.loads(blob[8 : _header_end(blob)])["__metadata__"]
    header = _edit_json(json.loads(meta["torchmdn"]), data)
    path = tmp_path / "m.safetensors"
    save_file(load_bytes(blob), str(path), metadata={"torchmdn": json.dumps(header)})

    def run():
        model = torchmdn.load(path)
        assert torch.isfinite(model(files["x"]).mean).all()

    _outcome("model fields", run)


def _resume(files, path) -> None:
    model = MDN(2, 1, n_components=2, hidden=(4,), feature_names=["a", "b"], target_names=["y"])
    fit(model, files["x"], files["y"], max_epochs=1, resume=path, progress=False)


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_fuzz_checkpoint_bytes(files, tmp_path, data):
    path = tmp_path / "c.safetensors"
    path.write_bytes(_mutate(files["ckpt"], data))
    _outcome("checkpoint bytes", lambda: _resume(files, path))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_fuzz_checkpoint_state(files, tmp_path, data):
    """Edited state re-saved with a valid checksum: the checks after the checksum."""
    src = tmp_path / "src.safetensors"
    src.write_bytes(files["ckpt"])
    tensors, state = load_checkpoint(src)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tensors, _edit_json(state, data))
    _outcome("checkpoint state", lambda: _resume(files, path))


_CSV_CHARS = st.sampled_from(list('0123456789,;\t"\n\r .-+eExyabnNaIif?\\\x00é'))


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_csv(files, tmp_path, data):
    text = list(files["csv"])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "insert":
            text[i:i] = data.draw(st.lists(_CSV_CHARS, min_size=1, max_size=4))
        elif i < len(text):
            text[i : i + 1] = [] if kind == "delete" else [data.draw(_CSV_CHARS)]
    path = tmp_path / "d.csv"
    path.write_bytes("".join(text).encode("utf-8", "surrogatepass"))

    def in_memory():
        table = read_csv(path)
        values = columns(table, ["a", "b", "y"])
        assert values.shape == (len(table.rows), 3) and torch.isfinite(values).all()

    def streamed():
        source = TableSource(path, target="y", features=["a", "b"], chunk_rows=16)
        rows = sum(len(x) for x, _, _ in source.chunks())
        assert rows > 0

    _outcome("csv in memory", in_memory)
    _outcome("csv streamed", streamed)


def test_fuzz_memory_stayed_bounded(files):
    """Peak memory over all the cases above (and this module's setup) under 1 GiB more than
    at import: a forged size that allocated would blow far past it."""
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _START_RSS
    assert grown < 2**20, f"peak memory grew by {grown / 2**10:.0f} MiB"
    assert sum(OUTCOMES.values()) > 0
