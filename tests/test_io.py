"""Saving and loading models: torchmdn.save / torchmdn.load (safetensors + JSON header)."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import torchmdn
from torchmdn import MDN, load, save
from torchmdn.errors import InputError, ModelFileError, TorchMDNError


def _tiny(d: int = 1, covariance: str = "diagonal", seed: int = 0, **kw) -> MDN:
    torch.manual_seed(seed)
    return MDN(2, d, n_components=2, hidden=(8,), covariance_type=covariance, **kw)


def _data(d: int = 1, rows: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 2, generator=g) * 3.0 + 5.0
    y = torch.randn(rows, d, generator=g) * 0.5 - 2.0
    return x, y


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    return meta, tensors


# ---------------------------------------------------------------------- round trip


@pytest.mark.parametrize("covariance", ["diagonal", "isotropic", "full"])
@pytest.mark.parametrize("d", [1, 3])
def test_round_trip_gives_identical_log_prob(tmp_path, covariance, d):
    model = _tiny(d, covariance, feature_names=["a", "b"], target_names=[f"t{i}" for i in range(d)])
    x, y = _data(d)
    model.standardize(x, y)
    path = save(model, tmp_path / "m.safetensors")
    assert path == tmp_path / "m.safetensors"
    loaded = load(path)
    assert isinstance(loaded, MDN)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))
        assert torch.equal(loaded(x).mean, model(x).mean)
    assert loaded.config() == model.config()
    assert loaded.config()["covariance_type"] == covariance
    assert loaded.out_features == d


def test_round_trip_preserves_every_tensor_exactly(tmp_path):
    model = _tiny(2, "full")
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def test_loaded_model_is_in_eval_mode(tmp_path):
    model = _tiny().train()
    save(model, tmp_path / "m.safetensors")
    assert load(tmp_path / "m.safetensors").training is False


def test_config_and_column_names_preserved(tmp_path):
    torch.manual_seed(0)
    model = MDN(
        2,
        2,
        n_components=3,
        hidden=(8, 4),
        covariance_type="full",
        activation="relu",
        min_scale=0.01,
        feature_names=["age", "höhe"],
        target_names=["p", "q"],
    )
    save(model, str(tmp_path / "m.safetensors"))  # a str path works too
    loaded = load(str(tmp_path / "m.safetensors"))
    assert loaded.config() == model.config()
    assert loaded.feature_names == ["age", "höhe"]
    assert loaded.target_names == ["p", "q"]
    assert loaded.config()["hidden"] == [8, 4]
    assert loaded.config()["activation"] == "relu"
    assert loaded.config()["min_scale"] == 0.01


def test_no_column_names_stay_none(tmp_path):
    save(_tiny(), tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.feature_names is None
    assert loaded.target_names is None


def test_metadata_preserved_and_merged(tmp_path):
    model = _tiny()
    model.metadata = {"author": "me", "rows": 1}
    extra = {"rows": 60, "trained_on": "data.csv", "nested": {"a": [1, 2.5, None]}}
    save(model, tmp_path / "m.safetensors", metadata=extra)
    loaded = load(tmp_path / "m.safetensors")
    # explicit metadata wins over the model's own on a shared key
    assert loaded.metadata == {
        "author": "me",
        "rows": 60,
        "trained_on": "data.csv",
        "nested": {"a": [1, 2.5, None]},
    }


def test_non_json_metadata_is_a_model_file_error_and_writes_nothing(tmp_path):
    with pytest.raises(ModelFileError, match="JSON"):
        save(_tiny(), tmp_path / "m.safetensors", metadata={"bad": object()})
    assert os.listdir(tmp_path) == []


def test_save_rejects_a_non_mdn(tmp_path):
    with pytest.raises(ModelFileError, match="MDN"):
        save(torch.nn.Linear(2, 1), tmp_path / "m.safetensors")  # type: ignore[arg-type]
    assert not (tmp_path / "m.safetensors").exists()


def test_save_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "m.safetensors"
    save(_tiny(), path)
    assert path.is_file()


def test_standardized_model_keeps_its_normalisers(tmp_path):
    model = _tiny(2)
    x, y = _data(2)
    model.standardize(x, y)
    assert bool(model.standardized)
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert bool(loaded.standardized)
    for name in ("x_loc", "x_scale", "y_loc", "y_scale"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    # the normalisers are not the defaults, so this really checks they travelled
    assert not torch.allclose(loaded.x_loc, torch.zeros(2))
    assert not torch.allclose(loaded.y_scale, torch.ones(2))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))


def test_unstandardized_model_stays_unstandardized(tmp_path):
    save(_tiny(), tmp_path / "m.safetensors")
    assert not bool(load(tmp_path / "m.safetensors").standardized)


# ---------------------------------------------------------------------- file format


def test_file_is_safetensors_with_torchmdn_json_header(tmp_path):
    model = _tiny(3, "full", feature_names=["a", "b"], target_names=["u", "v", "w"])
    save(model, tmp_path / "m.safetensors", metadata={"rows": 7})
    meta, tensors = _read_file(tmp_path / "m.safetensors")
    assert "torchmdn" in meta
    header = json.loads(meta["torchmdn"])
    assert header["format"] == "torchmdn"
    assert header["format_version"] == 1
    assert header["class"] == "MDN"
    assert header["torchmdn_version"] == torchmdn.__version__
    assert header["config"] == model.config()
    assert header["metadata"] == {"rows": 7}
    assert tensors.keys() == model.state_dict().keys()


# ---------------------------------------------------------------------- loading bad files


class _Payload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_a_pickle_never_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"  # torch.load would read a *.safetensors name as safetensors
    state = dict(_tiny().state_dict())
    state["x_loc"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(state, path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torchmdn.load must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "safetensors" in str(info.value)
    assert not marker.exists()
    monkeypatch.undo()
    # control: the payload is live, an unpickling loader would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_loading_a_plain_torch_state_dict_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(ModelFileError, match="not a safetensors model file"):
        load(path)


@pytest.mark.parametrize("size", [0, 3, 1024])
def test_random_bytes_are_a_model_file_error(tmp_path, size):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(random.Random(size).randbytes(size))
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "safetensors" in str(info.value)


def test_model_file_error_is_a_value_error_and_torchmdn_error(tmp_path):
    with pytest.raises(ValueError):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(TorchMDNError):
        load(tmp_path / "nope.safetensors")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "does-not-exist.safetensors"
    with pytest.raises(ModelFileError, match="not found") as info:
        load(path)
    assert str(path) in str(info.value)


def test_a_folder_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        load(tmp_path)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_safetensors_without_torchmdn_metadata(tmp_path, metadata):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="not a torchmdn model") as info:
        load(path)
    assert str(path) in str(info.value)


def _rewrite(src: Path, dst: Path, edit_header=None, edit_tensors=None) -> Path:
    meta, tensors = _read_file(src)
    header = json.loads(meta["torchmdn"])
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata={"torchmdn": json.dumps(header)})
    return dst


@pytest.fixture
def saved(tmp_path) -> Path:
    return save(_tiny(), tmp_path / "good.safetensors")


def test_rewrite_helper_keeps_a_loadable_file(saved, tmp_path):
    # control for the tests below: an unedited rewrite still loads
    load(_rewrite(saved, tmp_path / "same.safetensors"))


def test_newer_format_version_says_upgrade(saved, tmp_path):
    path = _rewrite(
        saved,
        tmp_path / "future.safetensors",
        edit_header=lambda h: h.update(format_version=99, torchmdn_version="9.0"),
    )
    with pytest.raises(ModelFileError, match="upgrade") as info:
        load(path)
    assert "9.0" in str(info.value)


def test_unknown_model_class(saved, tmp_path):
    path = _rewrite(
        saved, tmp_path / "cls.safetensors", edit_header=lambda h: h.update({"class": "GAN"})
    )
    with pytest.raises(ModelFileError, match="GAN"):
        load(path)


def test_invalid_config(saved, tmp_path):
    path = _rewrite(
        saved,
        tmp_path / "cfg.safetensors",
        edit_header=lambda h: h["config"].update(covariance_type="banana"),
    )
    with pytest.raises(ModelFileError, match="config"):
        load(path)


def test_weights_missing_a_tensor(saved, tmp_path):
    path = _rewrite(
        saved, tmp_path / "miss.safetensors", edit_tensors=lambda t: t.pop("head.linear.bias")
    )
    with pytest.raises(ModelFileError, match="do not match") as info:
        load(path)
    assert "head.linear.bias" in str(info.value)


def test_weights_with_an_extra_tensor(saved, tmp_path):
    path = _rewrite(
        saved,
        tmp_path / "extra.safetensors",
        edit_tensors=lambda t: t.update(surprise=torch.zeros(3)),
    )
    with pytest.raises(ModelFileError, match="do not match") as info:
        load(path)
    assert "surprise" in str(info.value)


def test_weights_of_the_wrong_shape(saved, tmp_path):
    path = _rewrite(
        saved, tmp_path / "shape.safetensors", edit_header=lambda h: h["config"].update(hidden=[16])
    )
    with pytest.raises(ModelFileError):
        load(path)


def test_broken_json_header(saved, tmp_path):
    _, tensors = _read_file(saved)
    path = tmp_path / "badjson.safetensors"
    save_file(tensors, str(path), metadata={"torchmdn": "{not json"})
    with pytest.raises(ModelFileError):
        load(path)


# ---------------------------------------------------------------------- atomic save


def test_save_leaves_no_temporary_files(tmp_path):
    save(_tiny(), tmp_path / "m.safetensors")
    save(_tiny(seed=1), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_saving_over_an_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.safetensors"
    x, y = _data()
    first, second = _tiny(seed=0), _tiny(seed=1)
    with torch.no_grad():
        assert not torch.equal(first.log_prob(x, y), second.log_prob(x, y))
        save(first, path)
        save(second, path)
        assert torch.equal(load(path).log_prob(x, y), second.log_prob(x, y))


def test_saving_over_a_non_model_file_replaces_it(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old junk that is much longer than nothing" * 100)
    save(_tiny(), path)
    load(path)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save(_tiny(seed=0), path)
    before = path.read_bytes()

    def full_disk(fd):  # the bytes are written, the flush to disk fails (ENOSPC)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torchmdn._files.os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left") as info:
        save(_tiny(seed=1), path)
    assert str(path) in str(info.value)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert path.read_bytes() == before


def test_a_safetensors_failure_is_a_model_file_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def broken(tensors, metadata=None):
        raise SafetensorError("Error while serializing")

    monkeypatch.setattr("torchmdn.io.save_bytes", broken)
    with pytest.raises(ModelFileError, match="cannot write"):
        save(_tiny(), tmp_path / "m.safetensors")


def test_mdnrnn_round_trip(tmp_path):
    model = torchmdn.MDNRNN(3, 2, 4, hidden_size=16, pen_states=2)
    x = torch.randn(2, 5, 3)
    y = torch.randn(2, 5, 3)
    y[..., 2] = (y[..., 2] > 0).float()
    torchmdn.save(model, tmp_path / "rnn.safetensors")
    loaded = torchmdn.load(tmp_path / "rnn.safetensors")
    assert isinstance(loaded, torchmdn.MDNRNN) and loaded.config() == model.config()
    assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))


@pytest.mark.parametrize("resolution", ["auto", None, 0.5, [0.5, 0.0]])
def test_target_resolution_and_its_floor_travel(tmp_path, resolution):
    model = _tiny(2, target_resolution=resolution)
    x, _ = _data(2, rows=40)
    y = torch.randint(0, 5, (40, 2), generator=torch.Generator().manual_seed(3)).float()
    model.standardize(x, y)
    assert model.head.scale_floor.max() > 1e-3 or resolution is None
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.target_resolution == model.target_resolution
    assert torch.equal(loaded.head.scale_floor, model.head.scale_floor)


def test_file_from_before_the_per_dimension_floor_still_loads(tmp_path):
    # session-1 files had no head.scale_floor tensor and no target_resolution in the config
    from torchmdn.io import _write, read_header

    model = _tiny(1)
    model.standardize(*_data(1))
    save(model, tmp_path / "new.safetensors")
    header = read_header(tmp_path / "new.safetensors")
    del header["config"]["target_resolution"]
    tensors = {k: v for k, v in model.state_dict().items() if k != "head.scale_floor"}
    _write(tmp_path / "old.safetensors", tensors, header)
    old = load(tmp_path / "old.safetensors")
    torch.testing.assert_close(old.head.scale_floor, torch.full((1,), model.head.min_scale))
    x, y = _data(1)
    with torch.no_grad():
        torch.testing.assert_close(old.log_prob(x, y), model.log_prob(x, y))


def test_files_written_with_the_old_covariance_key_load(tmp_path):
    """Files from before the config said ``covariance_type`` name it ``covariance``."""
    model = MDN(2, 2, n_components=3, covariance_type="full", hidden=(8,))
    path = torchmdn.save(model, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["torchmdn"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    config = header["config"]
    config["covariance"] = config.pop("covariance_type")
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"torchmdn": json.dumps(header)})
    old = torchmdn.load(tmp_path / "old.safetensors")
    assert old.head.covariance_type == "full"
    x = torch.randn(4, 2)
    torch.testing.assert_close(old(x).mean, model.eval()(x).mean)


def test_a_model_saved_on_the_device_loads_anywhere(tmp_path, device):
    torch.manual_seed(0)
    model = MDN(2, 1, n_components=3, hidden=(8,)).to(device)
    path = save(model, tmp_path / "m.safetensors")
    x, y = torch.randn(5, 2), torch.randn(5, 1)
    with torch.no_grad():
        want = model.log_prob(x.to(device), y.to(device)).cpu()
        on_cpu = load(path)  # default: the CPU (a CUDA-trained file on a CPU-only machine)
        assert on_cpu.x_loc.device.type == "cpu"
        torch.testing.assert_close(on_cpu.log_prob(x, y), want)
        there = load(path, device=device)
        assert all(p.device.type == device.type for p in there.parameters())
        torch.testing.assert_close(there.log_prob(x.to(device), y.to(device)).cpu(), want)
        alias = load(path, map_location=device)  # torch.load's name still works
        assert alias.x_loc.device.type == device.type
        auto = load(path, device="auto")
        assert auto.x_loc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_rejects_a_bad_or_missing_device(tmp_path):
    path = save(MDN(2, 1, hidden=(4,)), tmp_path / "m.safetensors")
    with pytest.raises(InputError, match="device must be"):
        load(path, device="tpu:x")
    with pytest.raises(InputError, match="pass one of them"):
        load(path, device="cpu", map_location="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_load_on_cuda_without_cuda_is_a_clear_error(tmp_path):
    path = save(MDN(2, 1, hidden=(4,)), tmp_path / "m.safetensors")
    with pytest.raises(InputError, match="no usable CUDA device"):
        load(path, device="cuda")


# ---------------------------------------------------------------- forged and damaged files


def _forge(tmp_path, header_edit, tensors_edit=None) -> Path:
    """A saved tiny model whose torchmdn header (and tensors) were edited."""
    good = tmp_path / "good.safetensors"
    save(_tiny(), good)
    with safe_open(str(good), framework="pt") as f:
        header = json.loads(f.metadata()["torchmdn"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header = header_edit(header) or header
    if tensors_edit is not None:
        tensors_edit(tensors)
    path = tmp_path / "forged.safetensors"
    text = header if isinstance(header, str) else json.dumps(header)
    save_file(tensors, str(path), metadata={"torchmdn": text})
    return path


def _config(**changes):
    def edit(header):
        header["config"].update(changes)

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_config(hidden=[16000, 16000]), "numbers but the file holds"),
        (_config(hidden=[1] * 300_000), "hidden layers"),
        (_config(in_features=10**12), "numbers but the file holds"),
        (_config(n_components=10**12), "numbers but the file holds"),
        (_config(n_components=2.5), "invalid model config"),
        (_config(hidden="8"), "invalid model config"),
        (lambda h: h.update({"class": ["MDN"]}), "unknown model class"),
        (lambda h: h.update({"config": [1]}), "invalid model config"),
        (lambda h: "[" * 100_000 + "]" * 100_000, "nested deeper"),
        (lambda h: h["metadata"].update({"x": json.loads("[" * 40 + "]" * 40)}), "nested deeper"),
    ],
)
def test_forged_configs_are_refused_before_anything_is_built(tmp_path, edit, match):
    import time

    path = _forge(tmp_path, edit)
    started = time.perf_counter()
    with pytest.raises(ModelFileError, match=match):
        load(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("x_scale", 0.0, "values <= 0"),
        ("y_scale", -1.0, "values <= 0"),
        ("x_loc", float("nan"), "NaN or infinite"),
        ("head.linear.bias", float("inf"), "NaN or infinite"),
    ],
)
def test_tampered_normalisers_and_weights_are_refused(tmp_path, name, value, match):
    def edit(tensors):
        tensors[name] = torch.full_like(tensors[name], value)

    with pytest.raises(ModelFileError, match=match):
        load(_forge(tmp_path, lambda h: None, edit))


def test_a_header_longer_than_the_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((10**15).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError, match="header of"):
        load(path)


def test_a_header_nested_deep_in_the_tensor_table_is_refused(tmp_path):
    body = b"[" * 50_000 + b"]" * 50_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(ModelFileError, match="nested deeper"):
        load(path)


def test_damaged_checkpoint_is_refused_by_its_checksum(tmp_path):
    from torchmdn.io import load_checkpoint, save_checkpoint

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(4.0)}, {"epoch": 3})
    tensors, state = load_checkpoint(path)
    assert state == {"epoch": 3} and torch.equal(tensors["w"], torch.arange(4.0))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one flipped bit in the last tensor's bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_checkpoint(path)
    save_file({"w": torch.arange(4.0)}, str(path), metadata={"torchmdn": json.dumps(
        {"format_version": 1, "class": "checkpoint", "state": {"epoch": 4}, "checksum": "0"}
    )})  # fmt: skip
    with pytest.raises(ModelFileError, match="checksum"):
        load_checkpoint(path)
