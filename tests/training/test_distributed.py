"""Data-parallel fit on 2 CPU processes (gloo): equal to one process, rank 0 writes, in sync.

One spawn of two worker processes runs every scenario (starting processes is the slow part);
each worker saves what it saw and the tests compare that with one-process runs here.
"""

import faulthandler
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchmdn import MDN, fit
from torchmdn.errors import InputError
from torchmdn.training.distributed import Group, local_slice, process_group

KW = dict(max_epochs=6, batch_size=64, progress=False, random_state=3, noise_y=0.05)


def data(n=300):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(2, 1, n_components=3, hidden=(16,)).double()


def poisoned(rank_to_poison, rank):
    """A model whose forward passes 12-14 in training return NaN, on one rank only."""
    m, calls = model(), {"n": 0}

    def poison(module, args, out):
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1
            if rank == rank_to_poison and 12 <= calls["n"] < 15:
                return out * math.nan
        return out

    m.backbone.register_forward_hook(poison)
    return m


def poisoned_run(m):
    # 257 training rows in batches of 64: the last batch has one row, so rank 0 has none
    x, y = data(257)
    xv, yv = data(40)
    return fit(m, x, y, validation_data=(xv, yv), **KW)


def _worker(rank, ports, out):
    faulthandler.dump_traceback_later(600, exit=True)  # a hang fails the test, not CI
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    seen = {}
    # a fresh port for each process group: a reused one can still hold the last group's store
    os.environ["MASTER_PORT"] = str(ports[0])
    # 1. a torchrun environment: fit starts the process group, and destroys it
    m = model()
    h = fit(m, *data(), checkpoint=out / f"ckpt{rank}.safetensors", **KW)
    seen["plain"] = (h.train_nll, h.val_nll, h.best_epoch, m.state_dict())
    seen["left_initialised"] = dist.is_initialized()
    # 2. inside the caller's process group (left alone); NaN on rank 1 only
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=2
    )
    m = poisoned(1, rank)
    h = poisoned_run(m)
    seen["poisoned"] = (h.train_nll, h.skipped_steps, h.rollbacks, m.state_dict())
    seen["kept_group"] = dist.is_initialized()
    dist.destroy_process_group()
    # 3. the command line under torchrun: only rank 0 writes the model
    from torchmdn.cli import main

    os.environ["MASTER_PORT"] = str(ports[2])
    csv = out / "data.csv"
    seen["cli"] = main(["fit", str(csv), "--target", "y", "--epochs", "2", "--hidden", "8",
                        "--components", "2", "--quiet", "-o", str(out / f"m{rank}.safetensors")])  # fmt: skip
    # 4. streamed files: each rank reads its own chunks; replicas stay identical
    from torchmdn import TableSource

    os.environ["MASTER_PORT"] = str(ports[3])
    m = model()
    h = fit(m, TableSource(csv, "y", chunk_rows=40), **KW)
    seen["stream"] = (h.train_nll, h.val_nll, m.state_dict())
    # 5. an error on every rank (no common seed) still destroys the group fit started
    os.environ["MASTER_PORT"] = str(ports[4])
    try:
        fit(model(), *data(), **{**KW, "random_state": None})
    except InputError as err:
        seen["no_seed"] = (str(err), dist.is_initialized())
    # 6. the guard read every few steps (as on GPUs), batch sizes summed on the device
    import torchmdn.training.loop as loop

    os.environ["MASTER_PORT"] = str(ports[5])
    loop._CHECK_EVERY = {"cpu": 3}
    m = model()
    h = fit(m, *data(), **KW)
    seen["windowed"] = (h.train_nll, h.val_nll, h.best_epoch, m.state_dict())
    torch.save(seen, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    x, y = data()
    rows = torch.cat([x, y], 1).numpy()
    np.savetxt(out / "data.csv", rows, delimiter=",", header="a,b,y", comments="")
    sockets = [socket.socket() for _ in range(6)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    mp.start_processes(_worker, args=(ports, out), nprocs=2, start_method="spawn")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("scenario", ["plain", "windowed"])
def test_two_processes_equal_one_process(ranks, scenario):
    _, (r0, r1) = ranks
    one = model()
    h = fit(one, *data(), **KW)
    for r in (r0, r1):
        train, val, best, state = r[scenario]
        assert len(train) == h.epochs and best == h.best_epoch
        assert max(abs(a - b) for a, b in zip(train, h.train_nll, strict=True)) < 1e-5
        assert max(abs(a - b) for a, b in zip(val, h.val_nll, strict=True)) < 1e-5
        for k, v in one.state_dict().items():
            torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-8)


def test_fit_destroys_the_group_it_started_and_keeps_the_callers(ranks):
    _, (r0, r1) = ranks
    assert not r0["left_initialised"] and not r1["left_initialised"]
    assert r0["kept_group"] and r1["kept_group"]


def test_only_rank_0_writes_checkpoints_and_models(ranks):
    out, (r0, r1) = ranks
    assert (out / "ckpt0.safetensors").exists() and not (out / "ckpt1.safetensors").exists()
    assert r0["cli"] == r1["cli"] == 0
    assert (out / "m0.safetensors").exists() and not (out / "m1.safetensors").exists()


def test_a_non_finite_loss_on_one_rank_rolls_back_every_rank_in_step(ranks):
    _, (r0, r1) = ranks
    one = poisoned(0, 0)  # the same steps fail in one process
    h = poisoned_run(one)
    assert h.skipped_steps == 3 and h.rollbacks == 1
    for r in (r0, r1):
        train, skipped, rollbacks, state = r["poisoned"]
        assert (skipped, rollbacks) == (3, 1)
        assert max(abs(a - b) for a, b in zip(train, h.train_nll, strict=True)) < 1e-5
        for k, v in one.state_dict().items():
            torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-8)


def test_streamed_replicas_stay_identical(ranks):
    _, (r0, r1) = ranks
    assert r0["stream"][0] == r1["stream"][0] and r0["stream"][1] == r1["stream"][1]
    assert all(math.isfinite(v) for v in r0["stream"][0])
    for k, v in r0["stream"][2].items():
        assert torch.equal(v, r1["stream"][2][k])


def test_ranks_without_a_common_seed_stop_with_a_clear_error(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        message, initialised = r["no_seed"]
        assert "same random_state on every process" in message and not initialised


def test_local_slices_cover_each_batch_once():
    for n in (0, 1, 5, 64):
        parts = [local_slice(n, Group(r, 3)) for r in range(3)]
        assert [i for s in parts for i in range(n)[s]] == list(range(n))


def test_distributed_true_without_a_launcher_is_a_clear_error(monkeypatch):
    for var in ("MASTER_ADDR", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="torchrun"), process_group(True, torch.device("cpu")):
        pass
    with process_group(None, torch.device("cpu")) as group:  # auto: one process
        assert (group.rank, group.world) == (0, 1)
    with pytest.raises(InputError, match="distributed must be"):
        fit(model(), *data(), distributed="yes", **KW)
    assert not dist.is_initialized()


TORCHRUN_SCRIPT = """
import sys, torch, torch.distributed as dist
from torchmdn import MDN, fit
g = torch.Generator().manual_seed(0)
x = torch.rand(300, 2, generator=g) * 4 - 2
y = torch.sin(x[:, :1]) + 0.1 * torch.randn(300, 1, generator=g)
torch.manual_seed(0)
m = MDN(2, 1, n_components=3, hidden=(16,)).cuda()
backends = []
h = fit(m, x.cuda(), y.cuda(), max_epochs=3, batch_size=64, progress=False, random_state=3,
        distributed=True, callback=lambda e, h: backends.append(dist.get_backend()))
torch.save({"train": h.train_nll, "backends": backends, "left": dist.is_initialized()},
           sys.argv[1])
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_torchrun_on_one_gpu_trains_with_nccl(tmp_path):
    """A world of one under torchrun on a CUDA model: NCCL, and the one-process result."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(script), str(tmp_path / "out.pt")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = torch.load(tmp_path / "out.pt", weights_only=False)
    assert seen["backends"] == ["nccl"] * 3 and not seen["left"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, generator=g) * 4 - 2
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(300, 1, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = MDN(2, 1, n_components=3, hidden=(16,)).cuda()
    h = fit(m, x.cuda(), y.cuda(), max_epochs=3, batch_size=64, progress=False, random_state=3)
    assert np.allclose(seen["train"], h.train_nll, rtol=1e-5, atol=1e-6)


def test_stale_torchrun_variables_are_ignored_with_a_warning(monkeypatch):
    from torchmdn.training.distributed import torchrun_environment

    for var in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.warns(RuntimeWarning, match="not started by torchrun"):
        assert not torchrun_environment()
    with pytest.warns(RuntimeWarning, match="not started by torchrun"), \
            process_group(None, torch.device("cpu")) as group:  # fmt: skip
        assert group.world == 1  # (the old code waited here for a rank 1 forever)
