"""Speech acoustic models: smoothing, generation, the MSE baseline, metrics, and the claim of
the example (a mixture beats MSE on NLL and over-smooths less) on a controlled toy corpus
where the truth is bimodal; the eSpeak NG demo end to end where the synthesiser exists."""

import math

import pytest
import torch

from torchmdn import GaussianMixture, fit
from torchmdn.apps.speech import data as S
from torchmdn.apps.speech import demo as D
from torchmdn.apps.speech.audio import DB_PER_NAT, MelSpec
from torchmdn.apps.speech.model import (
    MSEBaseline,
    generate,
    global_variance,
    log_spectral_distance,
    smooth_trajectory,
)
from torchmdn.errors import InputError

TOY_SPEC = MelSpec(n_fft=256, win_length=256, hop_length=128, n_mels=24)


def test_smoothing_solves_the_penalised_least_squares_problem():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(40, 3, generator=gen, dtype=torch.float64) * 5 + 0.1
    lam = 2.0
    y = smooth_trajectory(mu, w, lam)
    diff = torch.diff(torch.eye(40, dtype=torch.float64), dim=0)  # [T-1, T]
    for j in range(3):
        a = torch.diag(w[:, j]) + lam * diff.T @ diff
        assert torch.allclose(y[:, j], torch.linalg.solve(a, w[:, j] * mu[:, j]), atol=1e-10)
    assert torch.equal(smooth_trajectory(mu, w, 0.0), mu)
    # a huge λ gives the precision-weighted mean, constant over time
    flat = smooth_trajectory(mu, w, 1e9)
    assert torch.allclose(flat, ((w * mu).sum(0) / w.sum(0)).expand_as(mu), atol=1e-5)
    # a sure frame stays put, an unsure one follows its neighbours
    w2 = torch.ones(5, 1, dtype=torch.float64)
    w2[2] = 1e-6
    w2[0] = 1e6
    y2 = smooth_trajectory(torch.tensor([[0.0], [0], [10], [0], [0]], dtype=torch.float64), w2, 1.0)
    assert abs(y2[0].item()) < 1e-5 and abs(y2[2].item()) < 0.01
    with pytest.raises(InputError, match="positive"):
        smooth_trajectory(mu, -w, 1.0)


def test_generate_picks_a_component_not_the_average():
    # 20 frames, two well separated equally likely components at ±3, sure of themselves
    logits = torch.zeros(20, 2)
    loc = torch.tensor([[-3.0, -3.0], [3.0, 3.0]]).expand(20, 2, 2)
    gm = GaussianMixture(logits + torch.tensor([0.1, 0.0]), loc, scale=torch.full((20, 2, 2), 0.3))
    for method in ("component", "mode"):
        y = generate(gm, method, smoothing=1.0)
        assert torch.allclose(y, torch.full((20, 2), -3.0), atol=1e-3)  # not the mean, 0
    assert gm.mean.abs().max() < 0.2
    a = generate(gm, "sample", 0.3, 1.0, torch.Generator().manual_seed(1))
    b = generate(gm, "sample", 0.3, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a.abs() > 1.5).all()  # every smoothed sample lies near one of the two modes
    with pytest.raises(InputError, match="method"):
        generate(gm, "median")


def test_mse_baseline_is_least_squares_then_a_calibrated_gaussian(one_thread):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 1, generator=gen) * 4 - 2
    noise = torch.tensor([0.1, 0.5])
    y = torch.cat([x.sin(), x.square()], 1) + noise * torch.randn(1000, 2, generator=gen)
    model = MSEBaseline(1, 2, hidden=(32, 32))
    fit(model, x, y, max_epochs=40, batch_size=100, lr=1e-2, random_state=0, progress=False)
    model.calibrate(x, y)
    # the calibrated scale is the RMS residual, close to the noise level
    sd = model.residual_scale * model.y_scale
    assert torch.allclose(sd, noise, rtol=0.15)
    with torch.no_grad():
        mean = model(x).mean
        rms = (y - mean).square().mean(0).sqrt()
        assert torch.allclose(sd, rms, rtol=1e-4)
        want = -torch.distributions.Normal(mean, sd).log_prob(y).sum(-1)
        assert torch.allclose(-model(x).log_prob(y), want, atol=1e-4)
    with pytest.raises(InputError, match="shape"):
        model.standardized_mean(torch.zeros(3, 2))


def test_metrics():
    y = torch.randn(50, 8)
    assert log_spectral_distance(y + 1.0, y).item() == pytest.approx(DB_PER_NAT)
    assert log_spectral_distance(y, y).item() == 0
    assert torch.allclose(global_variance(y), y.var(0))
    with pytest.raises(InputError):
        log_spectral_distance(y, y[:10])


def _toy_corpus(n=40, seed=0):
    """Tone "speech": phoneme a is a 600 Hz or a 2400 Hz tone at random (not in the inputs),
    b is 1200 Hz, with pauses around: the frames of a are truly bimodal given the labels."""
    gen = torch.Generator().manual_seed(seed)
    rate = TOY_SPEC.sample_rate
    utts = []
    for _ in range(n):
        labels = ["_", "a", "b", "a", "_"]
        secs = (0.05 + 0.15 * torch.rand(5, generator=gen)).tolist()
        parts = []
        for p, s in zip(labels, secs, strict=True):
            t = torch.arange(int(s * rate)) / rate
            hz = {"_": 0.0, "b": 1200.0}.get(p) or (
                600.0 if torch.rand(1, generator=gen) < 0.5 else 2400.0
            )
            parts.append(0.3 * torch.sin(2 * math.pi * hz * t))
        bounds = torch.tensor([0.0] + [len(q) / rate for q in parts], dtype=torch.float64).cumsum(0)
        utts.append(S.Utterance("toy", torch.cat(parts), rate, labels, [0] * 5, bounds[:-1],
                                bounds[1:]))  # fmt: skip
    return S.SpeechCorpus.from_utterances(utts, spec=TOY_SPEC)


def test_mixture_beats_mse_and_over_smooths_less_on_bimodal_frames(one_thread):
    corpus = _toy_corpus()
    train, val, test = D.split_corpus(corpus, seed=0)
    settings = D.SpeechSettings(n_components=4, hidden=(64, 64), epochs=25, batch_size=64,
                                models=("mse", "gaussian", "mdn"))  # fmt: skip
    models = D.train_models(train, val, settings, seed=0, progress=False)
    rows = {(r["model"], r["method"]): r for r in D.evaluate(models, test, settings)}
    mse, one, mdn = rows["mse", "mean"], rows["gaussian", "mean"], rows["mdn", "component"]
    assert mdn["nll"] < one["nll"] - 20 and mdn["nll"] < mse["nll"] - 20
    # MSE averages the two tones: its frames vary less than real ones; the mixture's mode
    # picks one tone per frame and keeps (nearly) the real variance
    assert mse["gv_ratio"] < 0.85
    assert abs(1 - mdn["gv_ratio"]) < abs(1 - mse["gv_ratio"]) - 0.05
    table = D.format_table(list(rows.values()), settings)
    assert "| MLP MDN, n=4 | component |" in table and table.count("\n") == len(rows) + 1


needs_espeak = pytest.mark.skipif(
    not S.espeak_available(), reason="eSpeak NG not installed (pip install espeakng-loader)"
)


@needs_espeak
def test_speech_demo_from_the_command_line_writes_images_and_wavs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from torchmdn.apps.speech.audio import read_wav
    from torchmdn.cli import main

    small = D.SpeechSettings(n_sentences=20, hidden=(32,), rnn_hidden=16, n_components=2,
                             epochs=2, rnn_epochs=1)  # fmt: skip
    full_size = D.speech_demo
    results = []

    def tiny_demo(out, seed, progress):  # the CLI's call, at a test's size
        results.append(full_size(out, seed, progress, small, tmp_path / "cache", n_shown=1))
        return results[-1]

    monkeypatch.setattr(D, "speech_demo", tiny_demo)
    assert main(["demo", "speech", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    (result,) = results
    assert result.table in printed and "| MLP MDN, n=2 | component |" in printed
    names = {p.name for p in result.files}
    assert {"speech_spectrograms.png", "speech_variance.png", "speech_0_original.wav",
            "speech_0_real_griffinlim.wav", "speech_0_mse.wav", "speech_0_mdn.wav",
            "speech_0_rnn.wav"} <= names  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in result.files)
    wave, rate = read_wav(tmp_path / "out" / "speech_0_mdn.wav")
    assert rate == 16000 and 0.3 < wave.abs().max() < 1.0
    assert math.isfinite(result.test_nll)
    assert {r["model"] for r in result.rows} == {"real frames", "mse", "gaussian", "mdn", "rnn"}
