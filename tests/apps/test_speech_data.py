"""Speech corpus: sentences, frame labels and features (no synthesiser needed), and the
eSpeak NG path (skipped where neither espeakng-loader nor the system library is installed)."""

import pytest
import torch

from torchmdn.apps.speech import data as S
from torchmdn.apps.speech.audio import MelSpec
from torchmdn.errors import InputError

needs_espeak = pytest.mark.skipif(
    not S.espeak_available(),
    reason="eSpeak NG not installed (pip install espeakng-loader, or apt-get install espeak-ng)",
)
SPEC = MelSpec()


def toy_utterance(phonemes=("_", "a", "b", "a", "_"), seconds=(0.1, 0.2, 0.05, 0.15, 0.1)):
    """An utterance of tones: a "phoneme" is a tone at its own frequency (500 Hz per letter)."""
    rate = SPEC.sample_rate
    parts = []
    for p, s in zip(phonemes, seconds, strict=True):
        t = torch.arange(int(s * rate)) / rate
        freq = 0.0 if p == "_" else 500.0 * (1 + ord(p) - ord("a"))
        parts.append(0.3 * torch.sin(2 * torch.pi * freq * t))
    bounds = torch.tensor([0.0, *seconds], dtype=torch.float64).cumsum(0)
    return S.Utterance("toy", torch.cat(parts), rate, list(phonemes), [0, 2, 0, 1, 0],
                       bounds[:-1], bounds[1:])  # fmt: skip


def test_sentences_are_distinct_seeded_and_varied():
    a = S.make_sentences(200, seed=3)
    assert len(set(a)) == 200 and a == S.make_sentences(200, seed=3)
    assert a != S.make_sentences(200, seed=4)
    assert all(s[-1] in ".?" and s[0].isupper() for s in a)
    lengths = torch.tensor([len(s.split()) for s in a], dtype=torch.float32)
    assert lengths.min() >= 4 and lengths.max() <= 12 and lengths.std() > 1
    with pytest.raises(InputError):
        S.make_sentences(0)


def test_frame_labels_follow_the_timings():
    u = toy_utterance()
    n = len(u.wave) // SPEC.hop_length + 1
    k = S.frame_phonemes(u, n, SPEC)
    centres = torch.arange(n, dtype=torch.float64) * SPEC.hop_length / SPEC.sample_rate
    for j in range(len(u.phonemes)):
        inside = (centres >= u.starts[j]) & (centres < u.ends[j])
        assert (k[inside] == j).all()
    assert k[0] == 0 and k[-1] == len(u.phonemes) - 1


def test_linguistic_features_columns():
    u = toy_utterance()
    vocab = S.phoneme_vocabulary([u])
    assert vocab == ["<unk>", "_", "a", "b"]
    x = S.linguistic_features(u, vocab, SPEC)
    names = S.feature_names(vocab)
    assert x.shape == (len(u.wave) // SPEC.hop_length + 1, len(names))
    col = {n: i for i, n in enumerate(names)}
    v = len(vocab)
    assert torch.equal(x[:, :v].sum(1), torch.ones(len(x)))  # exactly one phoneme per frame
    k = S.frame_phonemes(u, len(x), SPEC)
    b_frames = k == 2  # the "b" between two "a"s
    assert (x[b_frames, col["phoneme=b"]] == 1).all()
    assert (x[b_frames, col["previous=a"]] == 1).all() and (x[b_frames, col["next=a"]] == 1).all()
    assert torch.allclose(x[b_frames, col["phoneme_duration"]], torch.tensor(0.05))
    pos = x[k == 1, col["position_in_phoneme"]]
    assert (pos.diff() > 0).all() and pos.min() >= 0 and pos.max() <= 1
    since, to_end = x[:, col["seconds_since_start"]], x[:, col["seconds_to_end"]]
    assert torch.allclose(since + to_end, x[:, col["phoneme_duration"]], atol=1e-6)
    assert x[k == 1, col["stress"]].eq(1.0).all() and x[k == 3, col["stress"]].eq(0.5).all()
    # an unseen phoneme maps to <unk>
    x2 = S.linguistic_features(toy_utterance(("_", "c", "_"), (0.1, 0.1, 0.1)), vocab, SPEC)
    assert x2[:, col["phoneme=<unk>"]].sum() > 0
    with pytest.raises(InputError, match="phoneme_vocabulary"):
        S.linguistic_features(u, ["a", "b"], SPEC)


def test_corpus_frames_and_padding():
    utts = [toy_utterance(), toy_utterance(seconds=(0.05, 0.1, 0.1, 0.1, 0.05))]
    c = S.SpeechCorpus.from_utterances(utts, spec=SPEC)
    x, y = c.frames()
    assert len(x) == len(y) == sum(len(t) for t in c.targets)
    assert y.shape[1] == SPEC.n_mels and torch.isfinite(y).all()
    xp, yp, lengths = c.padded()
    assert xp.shape[:2] == yp.shape[:2] == (2, max(lengths)) and lengths.tolist() == [
        len(t) for t in c.targets
    ]
    # tone frames are louder than the silent ones around them
    k = S.frame_phonemes(utts[0], len(c.targets[0]), SPEC)
    energy = c.targets[0].logsumexp(1)
    assert energy[k == 1].mean() > energy[k == 0].mean() + 5
    xl, yl, _ = c.padded(max(lengths) + 7)
    assert xl.shape[1] == yl.shape[1] == max(lengths) + 7 and torch.equal(xl[:, : xp.shape[1]], xp)
    assert (yl[:, xp.shape[1] :] == 0).all()
    with pytest.raises(InputError, match="shorter"):
        c.padded(3)
    assert c.subset([1]).targets[0] is c.targets[1]
    with pytest.raises(InputError, match="sample rate"):
        S.SpeechCorpus.from_utterances(utts, spec=MelSpec(sample_rate=22050))


@needs_espeak
def test_synthesize_gives_contiguous_phonemes_that_match_the_audio():
    u = S.synthesize("She sells sea shells.", pitch=50)
    assert u.sample_rate == 16000 and 0.8 < u.duration < 3.0
    assert u.starts[0] == 0 and u.ends[-1] == pytest.approx(u.duration)
    assert torch.equal(u.starts[1:], u.ends[:-1]) and (u.ends > u.starts).all()
    assert "S" in u.phonemes and "s" in u.phonemes and u.phonemes[-1] == S.PAUSE
    lm = S.SpeechCorpus.from_utterances([u]).targets[0]
    k = S.frame_phonemes(u, len(lm), SPEC)
    energy = lm.logsumexp(1)
    pause = torch.tensor([u.phonemes[i] == S.PAUSE for i in k.tolist()])
    sibilant = torch.tensor([u.phonemes[i] in ("s", "S") for i in k.tolist()])
    assert energy[~pause].mean() > energy[pause].mean() + 3  # the timings line up with sound
    # sibilants put their energy high up: upper half of the bands, unlike the vowels
    high = lm[:, 40:].logsumexp(1) - lm[:, :40].logsumexp(1)
    assert high[sibilant].mean() > high[~sibilant & ~pause].mean() + 2


@needs_espeak
def test_pitch_changes_the_audio_not_the_timings():
    low, high = S.synthesize("A cat.", pitch=20), S.synthesize("A cat.", pitch=80)
    assert low.phonemes == high.phonemes
    assert torch.allclose(low.starts, high.starts, atol=0.02)
    assert not torch.allclose(low.wave[: len(high.wave)], high.wave[: len(low.wave)], atol=1e-3)
    with pytest.raises(InputError, match="pitch"):
        S.synthesize("A cat.", pitch=200)
    with pytest.raises(InputError, match="non-empty"):
        S.synthesize("   ")


@needs_espeak
def test_build_corpus_caches(tmp_path, monkeypatch):
    first = S.build_corpus(3, seed=5, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    monkeypatch.setattr(S, "synthesize", lambda *a, **k: pytest.fail("cache not used"))
    again = S.build_corpus(3, seed=5, cache_dir=tmp_path, progress=False)
    assert [u.text for u in again] == [u.text for u in first]
    assert all(
        torch.allclose(a.wave, b.wave, atol=1 / 16000) for a, b in zip(first, again, strict=True)
    )
    assert all(a.phonemes == b.phonemes and torch.equal(a.starts, b.starts)
               for a, b in zip(first, again, strict=True))  # fmt: skip
    # a damaged cache file is rebuilt
    monkeypatch.undo()
    next(tmp_path.glob("*.pt")).write_bytes(b"garbage")
    rebuilt = S.build_corpus(3, seed=5, cache_dir=tmp_path, progress=False)
    assert [u.phonemes for u in rebuilt] == [u.phonemes for u in first]
