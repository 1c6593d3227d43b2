"""The capacity ladder: every candidate head evaluated together equals each head alone
(values and gradients, both ways of evaluating them), on each device."""

import copy
import math

import pytest
import torch

import torchmdn
from torchmdn import MDN, fit
from torchmdn.training.capacity import candidates
from torchmdn.training.ladder import SAMPLE_ROWS, Ladder


def _model(d=1, cov="auto"):
    """An MDN that chooses its capacity."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MDN(1, d, hidden=(16,), n_components="auto", covariance_type=cov)


def _ladder(model, x, y):
    """A ladder of ``model``'s candidates set up on ``(x, y)``, with the features and the
    standardised targets its heads see."""
    ladder = Ladder(model, candidates(model), seed=0).to(next(model.parameters()))
    ladder.standardize(x, y)
    ladder.initialize(x, y)
    first = ladder.members[0]
    with torch.no_grad():
        h = first.backbone((x - first.x_loc) / first.x_scale)
        z = (y - first.y_loc) / first.y_scale
    return ladder, h, z


def _curve(n, d, device, seed=0):
    """``n`` rows of a noisy curve in ``d`` (1 or 2) columns on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    y = torch.cat([torch.sin(3 * x), x**2], 1)[:, :d] + 0.1 * torch.randn(n, d, generator=g)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(("d", "cov"), [(1, "auto"), (3, "auto"), (4, "auto"), (2, "isotropic")])
def test_all_heads_at_once_equal_each_head_alone(d, cov, padded, monkeypatch):
    """Values and gradients, whichever way the heads are evaluated (on the CPU: each head by
    the compiled kernel, all in one autograd node, where it is available; else padded)."""
    if padded:
        monkeypatch.setattr(torchmdn.ops.kernel, "available", lambda: False)
    x, y = torch.randn(40, 1, dtype=torch.float64), torch.randn(40, d, dtype=torch.float64)
    ladder, h, z = _ladder(_model(d, cov).double(), x, y)
    with torch.no_grad():
        for m in ladder.members:  # features that matter: random head weights
            m.head.linear.weight.normal_()
            m.head.scale_floor.copy_(torch.linspace(0.05, 0.3, d))  # floors that differ
        got = ladder.head_log_probs(h, z)
        want = torch.stack([m.head(h).log_prob(z) for m in ladder.members], -1)
    assert got.shape == (40, len(ladder.members))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    kinds = {m.head.covariance_type for m in ladder.members}
    assert kinds == {1: {"diagonal"}, 3: {"full"}, 4: {"diagonal", "full"}, 2: {"isotropic"}}[d]
    h.requires_grad_(True)
    params = [h, *(p for m in ladder.members for p in m.head.parameters())]
    got_grads = torch.autograd.grad(ladder.head_log_probs(h, z).square().sum(), params)
    each = torch.stack([m.head(h).log_prob(z) for m in ladder.members], -1)
    want_grads = torch.autograd.grad(each.square().sum(), params)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("d", [1, 2])
def test_the_ladder_on_each_device(device, d):
    """The heads evaluated together equal each head alone on the device (the CPU evaluates
    each head by the kernel, CUDA pads them), and a default fit chooses and installs a head
    there."""
    x, y = _curve(300, d, device)
    model = _model(d).to(device)
    ladder, h, z = _ladder(model, x, y)
    with torch.no_grad():
        got = ladder.head_log_probs(h, z)
        want = torch.stack([m.head(h).log_prob(z) for m in ladder.members], -1)
    assert got.device.type == device.type
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    h = fit(model, x, y, max_epochs=4, random_state=0, progress=False)
    assert all(p.device.type == device.type for p in model.parameters())
    assert model.n_components == h.capacity["chosen"]["n_components"]
    assert all(math.isfinite(r["val_nll"]) for r in h.capacity["tried"])
    # the installed model averages the kept heads, on the device (a grouped head)
    assert model.head.groups in (None, tuple(h.capacity["chosen"]["averaged"]))
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x, y)).all()


def test_the_recorder_keeps_a_sample_of_the_validation_inputs():
    """Scoring records every head's per-row NLL and keeps the first rows scored (the inputs
    the capacity choice checks its average's modes on)."""
    x, y = _curve(100, 1, "cpu")
    ladder, _, _ = _ladder(_model(), x, y)
    ladder.eval()
    with torch.no_grad():
        ladder.log_prob(x[:50], y[:50])
        ladder.log_prob(x[50:], y[50:])  # a second batch: the sample stays the first rows
    rec = ladder.recorder
    assert len(rec.rows) == len(ladder.members) and len(rec.rows[0]) == 2
    torch.testing.assert_close(rec.inputs, x[:SAMPLE_ROWS])
    rec.reset()
    assert not rec.rows[0] and rec.inputs is not None  # the sample outlives an epoch


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(("d", "cov"), [(1, "auto"), (2, "isotropic"), (3, "auto")])
def test_widened_scores_are_the_heads_with_wider_standard_deviations(
    d, cov, padded, device, monkeypatch
):
    """``head_log_probs(h, z, widen)`` equals each head's mixture with its covariances times
    ``widen`` squared (torch's normals, or multivariate normals from its Cholesky factors
    times ``widen``), either way of evaluating the heads; scoring with ``widenings``
    records them."""
    if padded:
        monkeypatch.setattr(torchmdn.ops.kernel, "available", lambda: False)
    x, y = _curve(60, min(d, 2), device)
    y = torch.cat([y, y[:, :1] ** 2], 1)[:, :d].double()
    model = _model(d, cov).double().to(device)
    ladder, h, z = _ladder(model, x.double(), y)
    ladder.widenings = (1.3, 2.0)
    dist = torch.distributions
    with torch.no_grad():
        for m in ladder.members:
            m.head.linear.weight.normal_()
        for w in ladder.widenings:
            got = ladder.head_log_probs(h, z, w)
            want = []
            for m in ladder.members:
                gm = m.head(h)
                if gm.covariance_type == "full":
                    comp = dist.MultivariateNormal(gm.loc, scale_tril=gm.scale_tril * w)
                else:
                    scale = gm.scale * w
                    scale = scale if scale.dim() == 3 else scale[..., None].expand_as(gm.loc)
                    comp = dist.Independent(dist.Normal(gm.loc, scale), 1)
                mix = dist.Categorical(logits=gm.logits)
                want.append(dist.MixtureSameFamily(mix, comp).log_prob(z))
            torch.testing.assert_close(got, torch.stack(want, -1), rtol=1e-9, atol=1e-9)
        ladder.eval()
        ladder.log_prob(x.double(), y)
    features = ladder.recorder.features
    assert len(features) == 1 and features[0][1].shape == (60, d)
    wide = ladder.widened_rows(features)
    assert wide.shape == (60, len(ladder.members), 2) and wide.dtype == torch.float64
    first = ladder.members[0]
    want = -(ladder.head_log_probs(h, z, 2.0) - first.y_scale.log().sum())
    torch.testing.assert_close(wide[..., 1].to(device), want.double())


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("d", [1, 2])
def test_under_bf16_autocast_the_mixtures_are_float32(device, d, padded, monkeypatch):
    """Under autocast the heads' linear layers run in bfloat16 and their mixtures in float32
    with autocast off, as each head alone does (either way of evaluating them; CUDA pads),
    and a bf16 fit chooses and installs a head."""
    if padded:
        monkeypatch.setattr(torchmdn.ops.kernel, "available", lambda: False)
    x, y = _curve(300, d, device, seed=1)
    model = _model(d).to(device)
    ladder, h, z = _ladder(model, x, y)
    with torch.no_grad():
        for m in ladder.members:  # random head weights: far from the initial fit
            m.head.linear.weight.normal_()
        with torch.autocast(device.type, torch.bfloat16):
            got = ladder.head_log_probs(h, z)
            want = torch.stack([m.head(h).log_prob(z) for m in ladder.members], -1)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    history = fit(model, x, y, max_epochs=3, precision="bf16", random_state=0, progress=False)
    assert history.skipped_steps == 0
    assert all(math.isfinite(r["val_nll"]) for r in history.capacity["tried"])
    assert model.n_components == history.capacity["chosen"]["n_components"]


def test_switching_modes_reaches_every_module_and_respects_custom_train():
    """The ladder's flat mode switch: every submodule follows, a deep copy (the loop's moving
    average) switches on its own, and a submodule with its own ``train`` is called."""
    model = _model()
    ladder = Ladder(model, candidates(model), seed=0)
    assert ladder.eval() is ladder and not any(m.training for m in ladder.modules())
    assert all(m.training for m in ladder.train().modules())
    twin = copy.deepcopy(ladder).eval()
    assert not any(m.training for m in twin.modules())
    assert all(m.training for m in ladder.modules())
    with pytest.raises(ValueError, match="boolean"):
        ladder.train("no")

    calls = []

    class Custom(torch.nn.Identity):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    other = Ladder(model, candidates(model), seed=0)
    other.members[0].head.add_module("custom", Custom())
    other.eval()
    assert calls == [False] and not any(m.training for m in other.modules())


def test_the_loop_skips_component_tracking_for_the_ladder(monkeypatch):
    """The loop does not track the ladder's components every epoch (its ``head`` is one
    candidate's, not the model installed); the trajectory is the same as with tracking, and
    re-seeding dead components still tracks them."""
    x, y = _curve(120, 1, "cpu")

    def trained(tracks, **kw):
        monkeypatch.setattr(Ladder, "tracks_components", tracks)
        ladder = Ladder(_model(), candidates(_model()), seed=0)
        h = fit(ladder, x, y, max_epochs=6, random_state=0, progress=False, **kw)
        return ladder, h

    skipped, h = trained(False)
    assert h.effective_components == [] and h.epochs == 6
    tracked, h_tracked = trained(True)
    assert len(h_tracked.effective_components) == 6
    want = tracked.state_dict()
    for name, a in skipped.state_dict().items():
        torch.testing.assert_close(a, want[name], rtol=0, atol=0, msg=name)
    assert h.val_nll == h_tracked.val_nll
    _, h = trained(False, reseed_dead=True)
    assert len(h.effective_components) == 6
