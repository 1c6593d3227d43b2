"""A mixture density acoustic model: phoneme labels -> log-mel frames, with sound files.

    python examples/speech.py --out demo-out/speech                  (about 3.5 min, 1 core)
    python examples/speech.py --sentences 100 --epochs 10 --out DIR  (quicker, rougher)

The same as ``torchmdn demo speech`` (code: ``torchmdn.apps.speech.demo.speech_demo``), with the
corpus and training sizes as options. The first run synthesises the eSpeak NG corpus (a
progress bar; cached under ~/.cache/torchmdn/speech or --cache). Writes spectrogram PNGs and
Griffin-Lim WAVs to --out and prints the held-out table. Needs
``pip install 'torchmdn[speech]'`` (espeakng-loader: libespeak-ng from PyPI, GPL-3).
"""

import argparse

from torchmdn.apps.speech.demo import SpeechSettings, speech_demo

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="demo-out/speech")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--epochs", type=int, default=20, help="epochs of the frame-wise models")
    p.add_argument("--cache", default=None, help="corpus cache folder")
    args = p.parse_args()
    settings = SpeechSettings(n_sentences=args.sentences, epochs=args.epochs)
    result = speech_demo(args.out, args.seed, settings=settings, cache_dir=args.cache)
    print(result.table)
    print("wrote " + ", ".join(p.name for p in result.files))
