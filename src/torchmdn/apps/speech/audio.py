"""Audio front end of the speech example: log-mel spectrograms, Griffin-Lim, WAV files.

Torch only (``torch.stft`` / ``torch.istft``), no audio library. Conventions, used by
:mod:`torchmdn.apps.speech.data` and :mod:`torchmdn.apps.speech.demo`:

- waveforms are 1-d float tensors in ``[-1, 1]``;
- a log-mel spectrogram is ``(T, n_mels)``: the natural log of the *power* spectrum
  (``|STFT|²``, periodic Hann window, ``center=True``) weighted by a triangular mel
  filterbank (HTK mel scale, Slaney area normalisation), floored at ``1e-10``; one nat of
  log power is ``10 / ln 10 ≈ 4.34`` dB;
- frame ``t`` is centred on sample ``t * hop_length``.

Example:
    >>> import torch
    >>> from torchmdn.apps.speech.audio import MelSpec, log_mel
    >>> spec = MelSpec()
    >>> t = torch.arange(spec.sample_rate) / spec.sample_rate     # one second
    >>> log_mel(torch.sin(2 * torch.pi * 440 * t), spec).shape     # 80 frames per second
    torch.Size([81, 80])
"""

from __future__ import annotations

import math
import wave as _wave
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import InputError

__all__ = [
    "MelSpec",
    "DB_PER_NAT",
    "mel_filterbank",
    "stft_magnitude",
    "log_mel",
    "mel_to_magnitude",
    "griffin_lim",
    "mel_to_wave",
    "resample",
    "read_wav",
    "write_wav",
]

#: decibels per nat of log power: ``10 / ln(10)``
DB_PER_NAT = 10.0 / math.log(10.0)
_FLOOR = 1e-10


@dataclass(frozen=True)
class MelSpec:
    """Settings of the short-time Fourier transform and the mel filterbank.

    The defaults are the usual ones of neural speech synthesis at 16 kHz: a 50 ms Hann
    window, a 12.5 ms hop (80 frames per second) and 80 mel bands from 0 to 8 kHz.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 200
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"MelSpec.{name} must be a positive integer; got {value!r}")
        if self.win_length > self.n_fft:
            raise InputError(
                f"MelSpec.win_length ({self.win_length}) must be <= n_fft ({self.n_fft})"
            )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise InputError(
                f"MelSpec needs 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2}; "
                f"got f_min={self.f_min}, f_max={self.f_max}"
            )

    @property
    def n_freqs(self) -> int:
        """Frequency bins of the one-sided STFT: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def frames_per_second(self) -> float:
        """Frame rate: ``sample_rate / hop_length``."""
        return self.sample_rate / self.hop_length


def _hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(spec: MelSpec = MelSpec(), dtype: torch.dtype = torch.float32) -> Tensor:
    """Triangular mel filters ``(n_freqs, n_mels)``: ``mel_power = power @ filters``.

    Band ``m`` rises linearly from centre ``m - 1`` to centre ``m`` and falls to centre
    ``m + 1`` (centres equally spaced on the HTK mel scale between ``f_min`` and ``f_max``);
    each triangle has area ``1`` in Hz (Slaney normalisation), so a band's output is the mean
    power over its band, comparable across bands of different widths.
    """
    freqs = torch.linspace(0, spec.sample_rate / 2, spec.n_freqs, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(
            _hz_to_mel(torch.tensor(spec.f_min, dtype=torch.float64)).item(),
            _hz_to_mel(torch.tensor(spec.f_max, dtype=torch.float64)).item(),
            spec.n_mels + 2,
            dtype=torch.float64,
        )
    )  # [n_mels + 2]
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # [M]
    f = freqs[:, None]  # [F, 1]
    rise = (f - lo) / (mid - lo)
    fall = (hi - f) / (hi - mid)
    tri = torch.clamp(torch.minimum(rise, fall), min=0.0)  # [F, M]
    return (tri * (2.0 / (hi - lo))).to(dtype)


def _check_wave(wave: Tensor, what: str = "wave") -> Tensor:
    if not isinstance(wave, Tensor):
        raise InputError(f"{what} must be a torch.Tensor; got {type(wave).__name__}")
    if wave.dim() != 1 or len(wave) == 0:
        raise InputError(f"{what} must be a non-empty 1-d tensor; got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise InputError(f"{what} must be floating point (samples in [-1, 1]); got {wave.dtype}")
    if not torch.isfinite(wave).all():
        raise InputError(f"{what} contains NaN or inf samples")
    return wave


def _window(spec: MelSpec, like: Tensor) -> Tensor:
    return torch.hann_window(spec.win_length, dtype=like.dtype, device=like.device)


def _stft(wave: Tensor, spec: MelSpec) -> Tensor:
    return torch.stft(
        wave, spec.n_fft, spec.hop_length, spec.win_length, _window(spec, wave),
        center=True, return_complex=True,
    )  # fmt: skip  # [F, T]


def stft_magnitude(wave: Tensor, spec: MelSpec = MelSpec()) -> Tensor:
    """``|STFT|`` of a waveform, ``(n_freqs, T)``."""
    return _stft(_check_wave(wave), spec).abs()


def log_mel(
    wave: Tensor,
    spec: MelSpec = MelSpec(),
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-mel power spectrogram ``(T, n_mels)`` of a waveform (natural log, floor 1e-10).

    ``dither`` adds Gaussian noise of that standard deviation first (as speech front ends
    do), so digital silence gets a finite, data-like noise floor instead of ``log(1e-10)``.
    """
    wave = _check_wave(wave)
    if dither < 0:
        raise InputError(f"dither must be >= 0; got {dither}")
    if dither > 0:
        noise = torch.randn(wave.shape, dtype=wave.dtype, device=wave.device, generator=generator)
        wave = wave + dither * noise
    power = _stft(wave, spec).abs().square()  # [F, T]
    fb = mel_filterbank(spec, wave.dtype).to(wave.device)
    return (power.T @ fb).clamp_min(_FLOOR).log()  # [T, M]


def mel_to_magnitude(logmel: Tensor, spec: MelSpec = MelSpec()) -> Tensor:
    """Approximate ``|STFT|`` ``(n_freqs, T)`` from a log-mel spectrogram ``(T, n_mels)``.

    The mel weighting loses information, so this is a least-squares estimate of the power
    spectrum (the pseudo-inverse of the filterbank, clipped at 0) and its square root.
    """
    if logmel.dim() != 2 or logmel.shape[-1] != spec.n_mels:
        raise InputError(
            f"log-mel spectrogram must have shape (T, {spec.n_mels}); got {tuple(logmel.shape)}"
        )
    fb = mel_filterbank(spec, torch.float64)
    pinv = torch.linalg.pinv(fb).to(logmel.dtype)  # [M, F]
    power = (logmel.exp() @ pinv).clamp_min(0.0)  # [T, F]
    return power.sqrt().T


def griffin_lim(
    magnitude: Tensor,
    spec: MelSpec = MelSpec(),
    n_iter: int = 64,
    momentum: float = 0.99,
    length: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A waveform whose STFT magnitude approximates ``magnitude (n_freqs, T)``.

    Griffin & Lim (1984) with the momentum of the "fast Griffin-Lim" of Perraudin, Balazs &
    Søndergaard (2013): alternate between imposing the wanted magnitude and projecting onto
    consistent spectrograms (``stft(istft(·))``), starting from random phases drawn with
    ``generator``.
    """
    if magnitude.dim() != 2 or magnitude.shape[0] != spec.n_freqs:
        raise InputError(
            f"magnitude must have shape ({spec.n_freqs}, T) for n_fft={spec.n_fft}; "
            f"got {tuple(magnitude.shape)}"
        )
    if not (isinstance(n_iter, int) and n_iter >= 0):
        raise InputError(f"n_iter must be an integer >= 0; got {n_iter!r}")
    if not 0 <= momentum < 1:
        raise InputError(f"momentum must be in [0, 1); got {momentum}")
    window = _window(spec, magnitude)
    if length is None:
        length = (magnitude.shape[1] - 1) * spec.hop_length

    def inverse(s: Tensor) -> Tensor:
        return torch.istft(
            s, spec.n_fft, spec.hop_length, spec.win_length, window, center=True, length=length
        )

    phase = torch.rand(magnitude.shape, dtype=magnitude.dtype, generator=generator)
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * phase.to(magnitude.device))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(inverse(magnitude * angles), spec)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / angles.abs().clamp_min(1e-16)
        previous = rebuilt
    return inverse(magnitude * angles)


def mel_to_wave(
    logmel: Tensor,
    spec: MelSpec = MelSpec(),
    n_iter: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Listenable waveform from a log-mel spectrogram: pseudo-inverse mel, then Griffin-Lim.

    Peak-normalised to 0.9 so quiet or loud predictions are equally audible.
    """
    wave = griffin_lim(mel_to_magnitude(logmel, spec), spec, n_iter, generator=generator)
    return wave * (0.9 / wave.abs().max().clamp_min(1e-8))


def resample(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling by truncating or zero-padding the spectrum (FFT method).

    Exact for periodic band-limited signals; fine for offline use on whole utterances.
    """
    wave = _check_wave(wave)
    if orig_rate < 1 or new_rate < 1:
        raise InputError(f"sample rates must be positive; got {orig_rate} and {new_rate}")
    if orig_rate == new_rate:
        return wave.clone()
    n_new = max(1, round(len(wave) * new_rate / orig_rate))
    spectrum = torch.fft.rfft(wave)
    keep = min(len(spectrum), n_new // 2 + 1)
    out = torch.fft.irfft(spectrum[:keep], n=n_new)
    return out * (n_new / len(wave))


def write_wav(path: str | Path, wave: Tensor, sample_rate: int) -> Path:
    """Write a mono 16-bit PCM WAV file (samples clipped to ``[-1, 1]``)."""
    wave = _check_wave(wave)
    pcm = (wave.detach().cpu().clamp(-1, 1) * 32767).round().to(torch.int16)
    path = Path(path)
    with _wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.numpy().tobytes())
    return path


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """Read a 16-bit PCM WAV file: ``(wave, sample_rate)``; several channels are averaged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"WAV file not found: {path}")
    try:
        with _wave.open(str(path), "rb") as f:
            if f.getsampwidth() != 2:
                raise InputError(f"{path}: only 16-bit PCM WAV is supported")
            rate, channels = f.getframerate(), f.getnchannels()
            data = f.readframes(f.getnframes())
    except _wave.Error as err:
        raise InputError(f"{path} is not a readable WAV file: {err}") from err
    pcm = torch.frombuffer(bytearray(data), dtype=torch.int16).to(torch.float32) / 32768
    return pcm.view(-1, channels).mean(-1), rate
