"""Phoneme timings for real recordings, by aligning them to eSpeak NG's rendering (DTW).

No forced aligner is available offline, so the speech example labels real speech the way
early synthesis-based aligners did: eSpeak NG speaks the transcript (phoneme timings known,
:func:`torchmdn.apps.speech.data.synthesize`) at a rate that matches the recording's length, both
are turned into cepstra (the DCT of the log-mel frames, coefficients 1-20, mean and variance
normalised per utterance), dynamic time warping (:func:`dtw_path`) matches the frames, and
each synthetic phoneme boundary is carried over to the recording through the path. This is
coarse (a different "speaker", no acoustic models); boundaries can be off by a few frames.

:func:`pocketsphinx_utterances` applies it to the transcribed recordings of Debian's
``pocketsphinx-testdata`` (``apt-get install pocketsphinx-testdata``): 5 LibriVox sentences
read by one speaker (24.7 s) and 5 spoken card names by another (9.6 s).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

from ...errors import InputError
from .audio import MelSpec, log_mel, read_wav
from .data import Utterance, synthesize

__all__ = ["cepstra", "dtw_path", "align_transcript", "pocketsphinx_utterances", "POCKETSPHINX"]

#: where Debian's pocketsphinx-testdata puts its recordings
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")


def cepstra(logmel: Tensor, n: int = 20) -> Tensor:
    """Coefficients 1..n of the DCT-II of log-mel frames ``(T, M)``, normalised per column."""
    m = logmel.shape[-1]
    k = torch.arange(1, n + 1, dtype=logmel.dtype)[:, None]
    basis = torch.cos(math.pi / m * (torch.arange(m, dtype=logmel.dtype) + 0.5) * k)  # [n, M]
    c = logmel @ basis.T
    return (c - c.mean(0)) / c.std(0).clamp_min(1e-6)


def dtw_path(cost: Tensor) -> Tensor:
    """Minimum-cost monotone path through ``cost (N, M)`` from (0, 0) to (N-1, M-1).

    Steps (1, 0), (0, 1) and (1, 1). Each row is one vectorised min-plus scan:
    ``D[i, j] = min(A[j], D[i, j-1] + C[i, j])`` with ``A[j] = C[i, j] + min(D[i-1, j],
    D[i-1, j-1])`` unrolls to ``S[j] + cummin(A - S)[j]``, ``S`` the running sum of row ``i``.

    Returns:
        ``(L, 2)`` long tensor of ``(i, j)`` pairs along the path, in order.
    """
    if cost.dim() != 2 or min(cost.shape) < 1:
        raise InputError(f"cost must be a non-empty 2-d tensor; got shape {tuple(cost.shape)}")
    c = cost.to(torch.float64)
    n, m = c.shape
    acc = torch.empty_like(c)
    acc[0] = c[0].cumsum(0)
    inf = torch.tensor([math.inf], dtype=torch.float64)
    for i in range(1, n):
        prev = acc[i - 1]
        a = c[i] + torch.minimum(prev, torch.cat([inf, prev[:-1]]))
        s = c[i].cumsum(0)
        acc[i] = s + (a - s).cummin(0).values
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        options = []
        if i > 0 and j > 0:
            options.append((acc[i - 1, j - 1].item(), i - 1, j - 1))
        if i > 0:
            options.append((acc[i - 1, j].item(), i - 1, j))
        if j > 0:
            options.append((acc[i, j - 1].item(), i, j - 1))
        _, i, j = min(options)
        path.append((i, j))
    return torch.tensor(path[::-1])


def align_transcript(
    wave: Tensor,
    text: str,
    spec: MelSpec | None = None,
    voice: str = "en-us",
) -> Utterance:
    """Label a recording (at ``spec.sample_rate``) with the phonemes of ``text`` (see module)."""
    spec = spec or MelSpec()
    if not text.strip():
        raise InputError("the transcript is empty")
    real = log_mel(wave, spec, dither=1e-4, generator=torch.Generator().manual_seed(0))
    first = synthesize(text, voice, sample_rate=spec.sample_rate)
    seconds = len(wave) / spec.sample_rate
    rate = int(min(400, max(90, round(175 * first.duration / seconds))))
    synth = synthesize(text, voice, rate=rate, sample_rate=spec.sample_rate)
    fake = log_mel(synth.wave, spec, dither=1e-4, generator=torch.Generator().manual_seed(0))
    path = dtw_path(torch.cdist(cepstra(fake), cepstra(real)))
    # the first real frame matched to each synthetic frame
    first_match = torch.full((len(fake),), len(real) - 1)
    first_match.scatter_reduce_(0, path[:, 0], path[:, 1], reduce="amin")
    fps = spec.frames_per_second
    start_frames = first_match[(synth.starts * fps).round().long().clamp(0, len(fake) - 1)]
    start_frames[0] = 0
    for k in range(1, len(start_frames)):  # every phoneme keeps at least one frame
        start_frames[k] = max(int(start_frames[k]), int(start_frames[k - 1]) + 1)
    starts = start_frames.to(torch.float64) / fps
    keep = starts < seconds
    starts = starts[keep]
    ends = torch.cat([starts[1:], torch.tensor([seconds], dtype=torch.float64)])
    idx = torch.nonzero(keep).flatten().tolist()
    return Utterance(text, wave, spec.sample_rate, [synth.phonemes[i] for i in idx],
                     [synth.stress[i] for i in idx], starts, ends)  # fmt: skip


def pocketsphinx_utterances(
    root: str | Path = POCKETSPHINX, spec: MelSpec | None = None
) -> list[Utterance]:
    """The transcribed recordings of ``pocketsphinx-testdata``, labelled by
    :func:`align_transcript` (LibriVox first, then the card names)."""
    root, spec = Path(root), spec or MelSpec()
    sets = [("librivox", "transcription", "{}.wav"), ("cards", "cards.transcription", "{}.wav")]
    if not (root / "librivox" / "transcription").is_file():
        raise InputError(
            f"no pocketsphinx test data under {root}: apt-get install pocketsphinx-testdata"
        )
    out = []
    for folder, listing, pattern in sets:
        for line in (root / folder / listing).read_text().splitlines():
            found = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)", line)
            if not found:
                continue
            text, name = found.group(1).strip(), found.group(2)
            wave, rate = read_wav(root / folder / pattern.format(name))
            if rate != spec.sample_rate:
                raise InputError(f"{name}: {rate} Hz, expected {spec.sample_rate}")
            out.append(align_transcript(wave, text[0].upper() + text[1:] + ".", spec))
    return out
