"""The built-in demo: an MDN with default settings on Bishop's inverse problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets import BISHOP_ENTROPY, bishop, bishop_branches
from ..io import save
from ..nn.mdn import MDN
from ..training.fit import History, fit

__all__ = ["bishop_demo", "DemoResult"]


@dataclass
class DemoResult:
    """What :func:`bishop_demo` measured and wrote."""

    test_nll: float
    floor: float
    history: History
    figure: Path
    model_path: Path


def bishop_demo(out: str | Path = "demo-out", seed: int = 0, progress: bool = True) -> DemoResult:
    """Fit ``MDN(1, 1)`` with default settings to Bishop's problem; write a PNG and the model.

    Uses ``bishop(3000, seed)``: the first 2000 rows to train, the last 1000 to test.
    """
    from ..plot import require_matplotlib

    plt = require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, t = bishop(3000, seed)
    x_tr, t_tr, x_te, t_te = x[:2000], t[:2000], x[2000:], t[2000:]
    with torch.random.fork_rng(devices=[]):  # seeded init, global RNG state restored after
        torch.default_generator.manual_seed(seed)
        model = MDN(1, 1, feature_names=["x"], target_names=["t"])
    history = fit(model, x_tr, t_tr, random_state=seed, progress=progress)
    with torch.no_grad():
        test_nll = -model.log_prob(x_te, t_te).mean().item()

    from ..plot import conditional_density

    fig, ax = plt.subplots(figsize=(8, 5.5))
    bx, bt = bishop_branches()
    conditional_density(
        model,
        (-0.15, 1.15),
        (-0.05, 1.05),
        data=(x_te, t_te),
        curves=[(bx, bt, "true branches")],
        ax=ax,
    )
    ax.set_xlabel("x")
    ax.set_ylabel("t")
    ax.set_title(f"Bishop's inverse problem: test NLL {test_nll:.3f} nats (floor {BISHOP_ENTROPY})")
    fig.tight_layout()
    figure = out / "bishop.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    model_path = save(
        model, out / "bishop.safetensors", metadata={"data": "bishop(3000, seed)[:2000]"}
    )
    return DemoResult(test_nll, BISHOP_ENTROPY, history, figure, model_path)
