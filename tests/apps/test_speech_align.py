"""DTW against a brute-force oracle; the transcript aligner against eSpeak NG's own timings;
the pocketsphinx recordings where Debian's pocketsphinx-testdata is installed."""

import itertools

import pytest
import torch

from torchmdn.apps.speech import data as S
from torchmdn.apps.speech.align import (
    POCKETSPHINX,
    align_transcript,
    cepstra,
    dtw_path,
    pocketsphinx_utterances,
)
from torchmdn.errors import InputError

needs_espeak = pytest.mark.skipif(not S.espeak_available(), reason="eSpeak NG not installed")


def _brute_force(cost):
    """Cheapest monotone path by enumerating every sequence of (1,0), (0,1), (1,1) steps."""
    n, m = cost.shape
    best = float("inf")
    for steps in itertools.product([(1, 0), (0, 1), (1, 1)], repeat=n + m - 2):
        i = j = 0
        total = cost[0, 0].item()
        for di, dj in steps:
            i, j = i + di, j + dj
            if i >= n or j >= m:
                break
            total += cost[i, j].item()
            if (i, j) == (n - 1, m - 1):
                best = min(best, total)
                break
    return best


@pytest.mark.parametrize("shape", [(1, 4), (3, 3), (4, 3), (3, 5)])
def test_dtw_finds_the_cheapest_path(shape):
    cost = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    path = dtw_path(cost)
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [shape[0] - 1, shape[1] - 1]
    steps = path.diff(dim=0)
    assert ((steps >= 0) & (steps <= 1)).all() and (steps.sum(1) >= 1).all()
    assert cost[path[:, 0], path[:, 1]].sum().item() == pytest.approx(_brute_force(cost))
    with pytest.raises(InputError):
        dtw_path(torch.zeros(0, 3))


def test_dtw_follows_a_time_warp():
    # the same sequence played at two speeds: the path is the warp
    a = torch.linspace(0, 6, 60).sin()
    b = torch.linspace(0, 6, 90).sin()
    path = dtw_path((a[:, None] - b[None, :]).abs())
    assert ((path[:, 1] - 1.5 * path[:, 0]).abs() <= 3).all()


def test_cepstra_are_normalised():
    c = cepstra(torch.randn(50, 80))
    assert c.shape == (50, 20)
    assert torch.allclose(c.mean(0), torch.zeros(20), atol=1e-5)
    assert torch.allclose(c.std(0), torch.ones(20), atol=1e-5)


@needs_espeak
def test_alignment_recovers_known_boundaries():
    text = "Please bring the yellow window to Martin."
    truth = S.synthesize(text, voice="en-us+f2", rate=140, pitch=70)  # another "speaker"
    got = align_transcript(truth.wave, text)  # aligned against the default voice at 175 wpm
    assert got.phonemes == truth.phonemes
    assert got.starts[0] == 0 and got.ends[-1] == pytest.approx(truth.duration)
    assert (got.ends > got.starts).all()
    error = (got.starts - truth.starts).abs()
    assert error.median() < 0.02 and error.max() < 0.06  # seconds (measured: 0.010 and 0.028)


@pytest.mark.skipif(
    not (S.espeak_available() and (POCKETSPHINX / "librivox" / "transcription").is_file()),
    reason="needs eSpeak NG and Debian's pocketsphinx-testdata",
)
def test_pocketsphinx_recordings_are_labelled_plausibly():
    utts = pocketsphinx_utterances()
    assert len(utts) == 10 and 30 < sum(u.duration for u in utts) < 40
    corpus = S.SpeechCorpus.from_utterances(utts)
    for u, m in zip(utts, corpus.targets, strict=True):
        k = S.frame_phonemes(u, len(m))
        pause = torch.tensor([u.phonemes[i] == S.PAUSE for i in k.tolist()])
        if pause.any():  # frames labelled as pauses are much quieter than speech
            energy = m.logsumexp(1)
            assert energy[~pause].mean() > energy[pause].mean() + 2.0  # nats (8.7 dB)
