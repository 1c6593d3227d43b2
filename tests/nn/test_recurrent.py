"""MDN-RNN contracts: shapes, masking, the joint pen-state likelihood, generation, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchmdn.errors import InputError
from torchmdn.nn.recurrent import (
    MDNRNN,
    SequenceGenerator,
    apply_sampling_bias,
    lengths_to_mask,
    pad_sequences,
)
from torchmdn.training.sequences import fit_sequences

# tiny recurrent steps: on a busy 2-core machine one thread is many times faster
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(b=4, t=6, in_f=3, d=2, pen=0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, in_f, generator=g, dtype=dtype)
    y = torch.randn(b, t, d, generator=g, dtype=dtype)
    if pen:
        codes = torch.randint(pen, (b, t, 1), generator=g).to(dtype)
        y = torch.cat([y, codes], -1)
    return x, y


def _model(in_f=3, d=2, n=3, pen=0, cell="lstm", covariance_type="full", dtype=torch.float64, **kw):
    torch.manual_seed(1)
    m = MDNRNN(
        in_f, d, n, hidden_size=8, cell=cell, covariance_type=covariance_type, pen_states=pen, **kw
    )
    return m.to(dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("covariance", ["full", "diagonal", "isotropic"])
def test_shapes_and_state(cell, covariance):
    m = _model(cell=cell, covariance_type=covariance, num_layers=2)
    x, y = _data()
    mixture, state = m(x)
    assert mixture.batch_shape == (4, 6) and mixture.event_shape == (2,)
    # per-dimension y scales turn an isotropic head into a diagonal mixture in user units
    assert mixture.covariance_type == {"isotropic": "diagonal"}.get(covariance, covariance)
    states = state if cell == "lstm" else (state,)
    assert all(s.shape == (2, 4, 8) for s in states)
    assert m.log_prob(x, y).shape == (4, 6)
    assert m.nll(x, y).dim() == 0


def test_every_parameter_gets_a_gradient():
    m = _model(pen=3)
    x, y = _data(pen=3)
    m.nll(x, y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_log_prob_is_in_user_units_and_matches_forward():
    m = _model()
    x, y = _data()
    m.standardize(x * 3 + 1, y * 5 - 2)
    mixture, _ = m(x)
    torch.testing.assert_close(m.log_prob(x, y), mixture.log_prob(y))


def test_state_carry_over():
    m = _model(cell="gru")
    x, y = _data(t=10)
    full = m.log_prob(x, y)
    _, state = m(x[:, :4])
    second = m.log_prob(x[:, 4:], y[:, 4:], state=state)
    torch.testing.assert_close(second, full[:, 4:])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_teacher_forced_equals_step_by_step(dtype, tol):
    m = _model(pen=2, dtype=dtype)
    x, y = _data(t=12, pen=2, dtype=dtype)
    forced = m.log_prob(x, y)
    gen = m.generator(seed=0)
    steps = []
    for t in range(x.shape[1]):
        gen.observe(x[:, t])
        steps.append(gen.log_prob(y[:, t]))
    torch.testing.assert_close(torch.stack(steps, 1), forced, atol=tol, rtol=tol)
    # priming on a prefix equals feeding it one step at a time
    gen2 = m.generator(seed=0).prime(x[:, :7])
    torch.testing.assert_close(gen2.log_prob(y[:, 6]), forced[:, 6], atol=tol, rtol=tol)


def test_padding_never_changes_the_loss():
    m = _model(pen=2)
    x, y = _data(b=3, t=8, pen=2)
    lengths = torch.tensor([8, 5, 2])
    mask = lengths_to_mask(lengths, 8)
    garbage_x, garbage_y = x.clone(), y.clone()
    garbage_x[~mask] = float("nan")
    garbage_y[~mask] = 1e6
    garbage_y[1, 6, 2] = 7  # not a valid pen code, but padded
    lp = m.log_prob(garbage_x, garbage_y, mask)
    assert (lp[~mask] == 0).all()
    for b, n in enumerate(lengths.tolist()):
        alone = m.log_prob(x[b : b + 1, :n], y[b : b + 1, :n])
        torch.testing.assert_close(lp[b : b + 1, :n], alone)
    loss = m.nll(garbage_x, garbage_y, mask)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    torch.testing.assert_close(loss, -lp.sum() / mask.sum())


def test_joint_pen_likelihood_by_hand():
    x, y = _data(pen=2)
    m = _model(pen=2)
    h, _ = m.features(x)
    logit = m.pen.linear(h).squeeze(-1)
    eos = y[..., 2]
    by_hand = (
        m.head(h).log_prob(y[..., :2])
        + eos * F.logsigmoid(logit)
        + (1 - eos) * F.logsigmoid(-logit)
    )
    torch.testing.assert_close(m.log_prob(x, y), by_hand)

    x, y = _data(pen=3)
    m = _model(pen=3)
    h, _ = m.features(x)
    logp = torch.log_softmax(m.pen.linear(h), -1).gather(-1, y[..., 2:].long()).squeeze(-1)
    torch.testing.assert_close(m.log_prob(x, y), m.head(h).log_prob(y[..., :2]) + logp)


def test_generator_is_reproducible_and_leaves_global_rng_alone():
    m = _model(in_f=3, pen=2)
    x0 = torch.zeros(5, 3, dtype=torch.float64)
    before = torch.random.get_rng_state()
    a = m.generator(temperature=0.8, bias=0.3, seed=7).generate(x0, steps=9)
    b = m.generator(temperature=0.8, bias=0.3, seed=7).generate(x0, steps=9)
    c = m.generator(temperature=0.8, bias=0.3, seed=8).generate(x0, steps=9)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.shape == (5, 9, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a[..., 2].unique().tolist()) <= {0.0, 1.0}
    # vectorised: the sequences differ from each other
    assert not torch.equal(a[0], a[1])


def test_temperature_zero_is_deterministic_and_picks_the_top_component():
    m = _model(in_f=3, pen=3)
    x, _ = _data(b=4, t=5)
    gens = [m.generator(temperature=0.0, seed=s).prime(x) for s in (0, 1)]
    draws = [g.sample() for g in gens]
    assert torch.equal(draws[0], draws[1])
    pred = gens[0].prediction
    top = pred.mixture.logits.argmax(-1)
    expected = pred.mixture.loc[torch.arange(4), top]
    torch.testing.assert_close(draws[0][:, :2], expected)
    assert torch.equal(draws[0][:, 2], pred.pen.logits.argmax(-1).to(draws[0]))
    # small temperatures concentrate the draws around that point
    cold = m.generator(temperature=1e-6, seed=3).prime(x).sample()
    torch.testing.assert_close(cold[:, :2], expected, atol=1e-2, rtol=0)


def test_sampling_bias():
    m = _model()
    mixture, _ = m(_data()[0])
    biased = apply_sampling_bias(mixture, 2.0)
    torch.testing.assert_close(biased.logits, mixture.logits * 3)
    torch.testing.assert_close(biased.scale_tril, mixture.scale_tril * math.exp(-2))
    assert apply_sampling_bias(mixture, 0) is mixture
    with pytest.raises(InputError, match="sampling bias"):
        apply_sampling_bias(mixture, -1)


def test_generate_needs_a_way_to_build_inputs():
    m = _model(in_f=5)
    gen = m.generator(seed=0)
    with pytest.raises(InputError, match="prime"):
        gen.sample()
    with pytest.raises(InputError, match="next_input"):
        gen.generate(torch.zeros(2, 5, dtype=torch.float64), steps=3)
    gen.observe(torch.zeros(2, 5, dtype=torch.float64))
    out = gen.generate(steps=3, next_input=lambda y, xp: torch.cat([y, xp[:, 2:]], -1))
    assert out.shape == (2, 3, 2)
    with pytest.raises(InputError, match="temperature"):
        SequenceGenerator(m, temperature=-1)


def test_standardize_uses_real_steps_only():
    m = _model()
    assert not bool(m.standardized) and torch.equal(m.y_scale, torch.ones(2, dtype=torch.float64))
    x, y = _data(b=3, t=8)
    mask = lengths_to_mask(torch.tensor([8, 3, 5]), 8)
    y_pad = y.clone()
    y_pad[~mask] = 1e3
    m.standardize(x, y_pad, mask)
    torch.testing.assert_close(m.y_loc, y[mask].mean(0))
    torch.testing.assert_close(m.x_scale, x[mask].std(0))


def test_errors_name_value_expectation_and_remedy():
    m = _model()
    with pytest.raises(InputError, match=r"x must have shape \(batch, time, 3\).*x\[None\]"):
        m(torch.zeros(6, 3))
    with pytest.raises(InputError, match="y must have shape"):
        m.log_prob(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3))
    with pytest.raises(InputError, match="lengths_to_mask"):
        m.log_prob(*_data(), mask=torch.ones(3, 3, dtype=torch.bool))
    pm = _model(pen=2)
    x, y = _data(pen=2)
    y[0, 0, 2] = 3
    with pytest.raises(InputError, match="pen-state column"):
        pm.log_prob(x, y)
    with pytest.raises(InputError, match="cell"):
        MDNRNN(2, 2, cell="transformer")
    with pytest.raises(InputError, match="pen_states"):
        MDNRNN(2, 2, pen_states=1)


def test_pad_sequences_and_mask():
    padded, lengths = pad_sequences([torch.ones(3, 2), torch.ones(1, 2)])
    assert padded.shape == (2, 3, 2) and lengths.tolist() == [3, 1]
    assert padded[1, 1:].abs().sum() == 0
    assert lengths_to_mask(lengths).tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(InputError, match="same F"):
        pad_sequences([torch.ones(3, 2), torch.ones(3, 1)])


def _toy_sequences(n=48, t=15, seed=0):
    """A bimodal random walk: each sequence turns left or right with probability 1/2."""
    g = torch.Generator().manual_seed(seed)
    turn = torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
    steps = torch.stack([torch.ones(n, t), turn * 0.8 * torch.ones(n, t)], -1)
    steps = steps + 0.05 * torch.randn(n, t, 2, generator=g)
    x = torch.cat([torch.zeros(n, 1, 2), steps[:, :-1]], 1)
    return x, steps


def test_fit_sequences_learns_and_respects_lengths(tmp_path):
    x, y = _toy_sequences()
    lengths = torch.randint(5, 16, (48,), generator=torch.Generator().manual_seed(1))
    y_pad = y.clone()
    y_pad[~lengths_to_mask(lengths, 15)] = float("nan")  # padding may hold anything
    torch.manual_seed(0)
    m = MDNRNN(2, 2, 2, hidden_size=16, covariance_type="diagonal")
    ckpt = tmp_path / "run.ckpt"
    h = fit_sequences(
        m, x, y_pad, lengths, max_epochs=30, batch_size=16, lr=1e-2, random_state=0,
        progress=False, checkpoint=ckpt, validation_fraction=0.2,
    )  # fmt: skip
    assert bool(m.standardized) and ckpt.exists()
    assert h.train_nll[-1] < h.train_nll[0] - 0.5
    assert len(h.effective_components) == 30
    # after the first step the turn is known: the second step is predicted sharply
    with torch.no_grad():
        nll = -m.log_prob(x, y)[:, 2:].mean()
    assert nll < -1.5
    with pytest.raises(InputError, match="noise_y"):
        fit_sequences(m, x, y, noise_y=0.1)
    with pytest.raises(InputError, match="NaN"):
        fit_sequences(m, x, y_pad)  # NaN on steps that are not declared padding


def test_fit_sequences_can_start_the_components_overlapping():
    """``initialize="overlapping"`` reaches the recurrent head: every component starts at
    the median of the real steps' targets (padding left out)."""
    x, y = _data(b=6, t=5, d=2)
    lengths = torch.tensor([5, 3, 4, 5, 2, 5])
    y_pad = y.clone()
    y_pad[~lengths_to_mask(lengths, 5)] = 1e6  # padding far away: it must not move the median
    m = _model(d=2, n=3, covariance_type="diagonal")
    # every sequence a training row; a learning rate of 1e-12: one epoch leaves the start as is
    fit_sequences(m, x, y_pad, lengths, max_epochs=1, lr=1e-12, random_state=0, progress=False,
                  initialize="overlapping", validation_fraction=0.0)  # fmt: skip
    z = (y[lengths_to_mask(lengths, 5)] - m.y_loc) / m.y_scale
    with torch.no_grad():
        centres = torch.stack([m.head.linear.bias[m.head.component_rows(k)[1:3]] for k in range(3)])
    torch.testing.assert_close(centres, z.median(0).values.expand(3, 2), atol=1e-6, rtol=0)


def test_fit_sequences_resumes_exactly(tmp_path):
    x, y = _toy_sequences(n=24, t=8)
    kw = dict(batch_size=8, random_state=3, progress=False, validation_fraction=0.25)

    def new():
        torch.manual_seed(0)
        return MDNRNN(2, 2, 2, hidden_size=8, covariance_type="diagonal")

    full = new()
    fit_sequences(full, x, y, max_epochs=4, **kw)
    part = new()
    fit_sequences(part, x, y, max_epochs=4, checkpoint=tmp_path / "c", checkpoint_every=2,
                  callback=lambda e, h: e == 1, **kw)  # fmt: skip
    resumed = new()
    fit_sequences(resumed, x, y, max_epochs=4, resume=tmp_path / "c", **kw)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_demo_parser_keeps_bishop_default():
    from torchmdn.cli import build_parser

    p = build_parser()
    assert p.parse_args(["demo"]).name == "bishop"
    args = p.parse_args(["demo", "storms", "--out", "o", "--seed", "3", "--quiet"])
    assert (args.name, args.out, args.seed, args.quiet) == ("storms", "o", 3, True)


def test_plot_helpers():
    pytest.importorskip("matplotlib")
    from torchmdn.apps.sequences.plots import strokes, trajectory_fan
    from torchmdn.plot import require_matplotlib

    plt = require_matplotlib()
    offs = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ax = strokes(offs)
    assert len(ax.lines) == 2  # the pen lifts after the second point
    ax = trajectory_fan(torch.randn(5, 4, 2), real=torch.randn(4, 2), past=torch.randn(3, 2))
    assert len(ax.lines) == 7
    with pytest.raises(InputError, match="strokes"):
        strokes(torch.zeros(3, 4))
    plt.close("all")


def test_fit_sequences_and_generation_on_the_device(device):
    """Padded sequences on the device: standardise, k-means start, train, resume-free
    generation with a seeded generator there (reproducible)."""
    x, y = _data(b=8, t=5, pen=2, dtype=torch.float32)
    lengths = torch.tensor([5, 4, 5, 3, 5, 2, 5, 5])
    m = _model(pen=2, dtype=torch.float32, covariance_type="diagonal").to(device)
    h = fit_sequences(m, x.to(device), y.to(device), lengths.to(device), max_epochs=2,
                      batch_size=4, random_state=0, progress=False)  # fmt: skip
    assert h.epochs == 2 and all(math.isfinite(v) for v in h.train_nll)
    assert all(p.device.type == device.type for p in m.parameters())
    x0 = torch.zeros(3, 3, device=device)
    a = m.generator(temperature=0.8, seed=7).generate(x0, steps=4)
    b = m.generator(temperature=0.8, seed=7).generate(x0, steps=4)
    assert a.device.type == device.type and a.shape == (3, 4, 3) and torch.equal(a, b)
