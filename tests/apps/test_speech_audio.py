"""Log-mel front end, Griffin-Lim, resampling and WAV I/O on generated signals (no synthesiser)."""

import math

import pytest
import torch

from torchmdn.apps.speech.audio import (
    DB_PER_NAT,
    MelSpec,
    griffin_lim,
    log_mel,
    mel_filterbank,
    mel_to_magnitude,
    mel_to_wave,
    read_wav,
    resample,
    stft_magnitude,
    write_wav,
)
from torchmdn.errors import InputError

SPEC = MelSpec()


def tone(freq, seconds=0.5, rate=16000, amp=0.5):
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    return amp * torch.sin(2 * math.pi * freq * t)


def _mel_centres(spec):
    fb = mel_filterbank(spec, torch.float64)
    freqs = torch.linspace(0, spec.sample_rate / 2, spec.n_freqs, dtype=torch.float64)
    return (fb * freqs[:, None]).sum(0) / fb.sum(0)


def test_filterbank_shape_and_normalisation():
    fb = mel_filterbank(SPEC, torch.float64)
    assert fb.shape == (SPEC.n_freqs, SPEC.n_mels)
    assert (fb >= 0).all() and (fb.sum(0) > 0).all()  # no empty band
    # Slaney normalisation: each triangle integrates to ~1 over frequency (in Hz)
    df = SPEC.sample_rate / SPEC.n_fft
    area = fb.sum(0) * df
    assert torch.allclose(area[10:], torch.ones_like(area[10:]), atol=0.08)
    centres = _mel_centres(SPEC)
    assert (centres.diff() > 0).all() and centres[-1] < SPEC.f_max


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_log_mel_of_a_tone_peaks_at_its_band(freq):
    lm = log_mel(tone(freq), SPEC)
    assert lm.shape == (len(tone(freq)) // SPEC.hop_length + 1, SPEC.n_mels)
    band = lm[5:-5].mean(0).argmax().item()
    nearest = (_mel_centres(SPEC) - freq).abs().argmin().item()
    assert abs(band - nearest) <= 1


def test_log_mel_level_follows_amplitude_and_dither_floors_silence():
    quiet, loud = log_mel(tone(1000, amp=0.05)), log_mel(tone(1000, amp=0.5))
    # 20 dB more amplitude is 20 dB more power in every frame's peak band
    gap = DB_PER_NAT * (loud.max(1).values - quiet.max(1).values)
    assert torch.allclose(gap[3:-3], torch.full_like(gap[3:-3], 20.0), atol=0.01)
    silent = log_mel(torch.zeros(8000))
    assert silent.max() <= math.log(1e-10) + 1e-4  # the floor
    dithered = log_mel(torch.zeros(8000), dither=1e-4, generator=torch.Generator().manual_seed(0))
    assert dithered.min() > math.log(1e-10) + 3 and dithered.max() < -8


def test_griffin_lim_recovers_a_consistent_magnitude(one_thread):
    t = torch.arange(16000, dtype=torch.float32) / 16000
    wave = 0.5 * torch.sin(2 * math.pi * (200 * t + 300 * t * t)) + 0.2 * torch.sin(
        2 * math.pi * 1000 * t
    )
    mag = stft_magnitude(wave, SPEC)

    def error(n_iter):
        gen = torch.Generator().manual_seed(0)
        rebuilt = griffin_lim(mag, SPEC, n_iter=n_iter, length=len(wave), generator=gen)
        return ((stft_magnitude(rebuilt, SPEC) - mag).norm() / mag.norm()).item()

    start, done = error(0), error(64)
    assert start > 0.4  # random phases are far from consistent
    assert done < 0.12 and done < start / 4


def test_mel_round_trip_keeps_the_spectral_envelope(one_thread):
    wave = tone(700) + tone(2500, amp=0.2)
    lm = log_mel(wave, SPEC)
    mag = mel_to_magnitude(lm, SPEC)
    assert mag.shape == (SPEC.n_freqs, len(lm)) and (mag >= 0).all()
    out = mel_to_wave(lm, SPEC, n_iter=32, generator=torch.Generator().manual_seed(0))
    assert out.abs().max() == pytest.approx(0.9, rel=1e-5)
    again = log_mel(out, SPEC)
    # the two strongest bands survive pseudo-inverse + Griffin-Lim
    top = set(lm[5:-5].mean(0).topk(2).indices.tolist())
    assert set(again[5:-5].mean(0).topk(2).indices.tolist()) == top


def test_resample_keeps_the_frequency():
    out = resample(tone(1000, seconds=1.0), 16000, 22050)
    assert len(out) == 22050
    spec = MelSpec(sample_rate=22050)
    peak_bin = stft_magnitude(out, spec).mean(1).argmax().item()
    assert abs(peak_bin * 22050 / spec.n_fft - 1000) < 22050 / spec.n_fft
    assert out.abs().max() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(resample(out, 22050, 22050), out)


def test_wav_round_trip(tmp_path):
    wave = tone(440, seconds=0.1)
    path = write_wav(tmp_path / "a.wav", wave, 16000)
    back, rate = read_wav(path)
    assert rate == 16000 and back.shape == wave.shape
    assert (back - wave).abs().max() < 2 / 32768


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="1-d"):
        log_mel(torch.zeros(2, 100))
    with pytest.raises(InputError, match="NaN"):
        log_mel(torch.tensor([0.0, float("nan")] * 400))
    with pytest.raises(InputError, match="win_length"):
        MelSpec(n_fft=256, win_length=400)
    with pytest.raises(InputError, match="f_max"):
        MelSpec(f_max=9000.0)
    with pytest.raises(InputError, match=r"\(513, T\)"):
        griffin_lim(torch.ones(100, 10), SPEC)
    with pytest.raises(InputError, match="not found"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(InputError, match="WAV"):
        read_wav(tmp_path / "bad.wav")
