"""Benchmark: a mixture density acoustic model (phoneme labels -> log-mel frames).

    .venv/bin/python benchmarks/speech.py                      # seed 0, about 5 minutes
    .venv/bin/python benchmarks/speech.py --seeds 0 1 2        # three seeds
    .venv/bin/python benchmarks/speech.py --voices en-us       # one fixed voice (ablation)

On an eSpeak NG corpus of 300 sentences (80/10/10 split by sentence; by default four voices
chosen at random per sentence, with random pitch and rate, none of them an input), trains an
MLP with an MSE head, the same MLP as an MDN with 1 and 8 diagonal Gaussians, and an LSTM
MDN-RNN with 8, and prints for the held-out sentences: frame NLL (nats per 80-band frame;
the MSE model as a Gaussian with its training residual variance), log-spectral distance (dB)
and the global-variance ratio (generated / real) of each generation method. Needs eSpeak NG:
pip install 'torchmdn[speech]' (or apt-get install espeak-ng).

With ``--real`` (needs ``apt-get install pocketsphinx-testdata``) it also runs a small
evaluation on 34 s of real speech: the 10 transcribed recordings, labelled by aligning
eSpeak NG's rendering of the transcript (torchmdn.apps.speech.align), 5 folds: each LibriVox
sentence is held out once (the next one validates; the other 3 and the 5 card names train),
with a smaller MLP (64, 64) and 4 components.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from torchmdn.apps.sequences.demo import one_thread
from torchmdn.apps.speech.data import VOICES, SpeechCorpus, build_corpus
from torchmdn.apps.speech.demo import (
    SpeechSettings,
    evaluate,
    format_table,
    split_corpus,
    train_models,
)


def run(seed: int, voices: tuple[str, ...], settings: SpeechSettings) -> list[dict]:
    utts = build_corpus(settings.n_sentences, seed=seed, voices=voices, progress=False)
    corpus = SpeechCorpus.from_utterances(utts, seed=seed)
    train, val, test = split_corpus(corpus, seed)
    start = time.perf_counter()
    models = train_models(train, val, settings, seed, progress=False)
    train_s = time.perf_counter() - start
    rows = evaluate(models, test, settings, seed)
    frames = sum(len(t) for t in train.targets)
    print(f"\nseed {seed}: {len(train)}/{len(val)}/{len(test)} sentences, {frames} training "
          f"frames, trained in {train_s:.0f} s")  # fmt: skip
    print(format_table(rows, settings), flush=True)
    return rows


def real_speech(settings: SpeechSettings, seed: int) -> list[dict]:
    from torchmdn.apps.speech.align import pocketsphinx_utterances

    corpus = SpeechCorpus.from_utterances(pocketsphinx_utterances(), seed=seed)
    small = dataclasses.replace(settings, hidden=(64, 64), n_components=4, epochs=40,
                                batch_size=64, models=("mse", "gaussian", "mdn"))  # fmt: skip
    folds = []
    for k in range(5):  # utterances 0-4 are LibriVox (one reader), 5-9 the card names
        val = (k + 1) % 5
        train = [i for i in range(10) if i not in (k, val)]
        models = train_models(corpus.subset(train), corpus.subset([val]), small, seed, False)
        folds.append(evaluate(models, corpus.subset([k]), small, seed))
    rows = _mean(folds)
    print(f"\nreal speech (pocketsphinx-testdata, DTW-aligned labels), mean of 5 folds, "
          f"{sum(len(t) for t in corpus.targets)} frames in all:")  # fmt: skip
    print(format_table(rows, small), flush=True)
    return rows


def _mean(runs: list[list[dict]]) -> list[dict]:
    mean = []
    for i, row in enumerate(runs[0]):
        avg = dict(row)
        for key in ("nll", "lsd", "gv_ratio"):
            avg[key] = statistics.fmean(r[i][key] for r in runs)
        mean.append(avg)
    return mean


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--voices", nargs="+", default=list(VOICES))
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--real", action="store_true", help="also the pocketsphinx evaluation")
    args = p.parse_args()
    settings = SpeechSettings(n_sentences=args.sentences)
    print(f"voices {args.voices}; settings {settings}")
    with one_thread():
        runs = [run(seed, tuple(args.voices), settings) for seed in args.seeds]
        if len(runs) > 1:
            print(f"\nmean over seeds {args.seeds}:")
            print(format_table(_mean(runs), settings))
        if args.real:
            real_speech(settings, args.seeds[0])


if __name__ == "__main__":
    main()
