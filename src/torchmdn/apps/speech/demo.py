"""The speech demo: ``torchmdn demo speech`` - a mixture density acoustic model.

Phoneme labels to log-mel frames, after Zen & Senior (2014): on an eSpeak NG corpus
(:mod:`torchmdn.apps.speech.data`) it trains, on the same frame-level linguistic features,

- ``mse``: an MLP with a mean-squared-error head (:class:`~torchmdn.apps.speech.model.MSEBaseline`),
  scored as a Gaussian with its residual variance;
- ``gaussian``: the same MLP as an :class:`~torchmdn.MDN` with one diagonal Gaussian;
- ``mdn``: the same MLP as an MDN with ``n_components`` diagonal Gaussians;
- ``rnn``: a recurrent MDN (:class:`~torchmdn.MDNRNN`, LSTM, diagonal) over whole sentences;

and compares held-out frame NLL, log-spectral distance and global variance of generated
frames (:mod:`torchmdn.apps.speech.model`). The demo writes spectrogram images and Griffin-Lim
WAV files. It needs eSpeak NG (``pip install 'torchmdn[speech]'`` or ``apt-get install
espeak-ng``) and matplotlib; the first run synthesises the corpus (about 30 s, then cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ...distributions.mixture import GaussianMixture
from ...errors import InputError
from ...nn.mdn import MDN
from ...nn.recurrent import MDNRNN, lengths_to_mask
from ...training.fit import History, fit
from ...training.sequences import fit_sequences
from ..sequences.demo import one_thread
from .audio import MelSpec, mel_to_wave, write_wav
from .data import SpeechCorpus, build_corpus
from .model import MSEBaseline, generate, global_variance, log_spectral_distance

__all__ = [
    "SpeechSettings",
    "SpeechModels",
    "SpeechDemoResult",
    "split_corpus",
    "train_models",
    "predict_mixture",
    "generate_frames",
    "frame_nll",
    "evaluate",
    "format_table",
    "speech_demo",
]


@dataclass(frozen=True)
class SpeechSettings:
    """Sizes and training settings shared by the demo and ``benchmarks/speech.py``."""

    n_sentences: int = 300
    n_components: int = 8
    hidden: tuple[int, ...] = (256, 256)
    rnn_hidden: int = 128
    epochs: int = 20
    rnn_epochs: int = 25
    batch_size: int = 256
    rnn_batch_size: int = 8
    lr: float = 3e-3
    min_scale: float = 0.05
    temperature: float = 0.3
    smoothing: float = 0.3
    models: tuple[str, ...] = ("mse", "gaussian", "mdn", "rnn")


@dataclass
class SpeechModels:
    """Trained models by name and their training histories."""

    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)


@dataclass
class SpeechDemoResult:
    """What the speech demo measured and wrote."""

    test_nll: float
    history: History
    figure: Path
    table: str
    rows: list[dict]
    files: list[Path]


def split_corpus(corpus: SpeechCorpus, seed: int = 0) -> tuple[SpeechCorpus, ...]:
    """Random (seeded) split by sentence: 80% train, 10% validation, 10% test."""
    perm = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = n_test = max(1, len(corpus) // 10)
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return corpus.subset(sorted(train)), corpus.subset(sorted(val)), corpus.subset(sorted(test))


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):  # seeded init, global RNG state restored after
        torch.manual_seed(seed)
        return build()


def train_models(
    train: SpeechCorpus,
    val: SpeechCorpus,
    settings: SpeechSettings = SpeechSettings(),
    seed: int = 0,
    progress: bool = True,
) -> SpeechModels:
    """Train the models named in ``settings.models`` with :func:`torchmdn.fit` /
    :func:`torchmdn.fit_sequences` (validation on ``val``'s sentences, best epoch kept)."""
    s = settings
    x, y = train.frames()
    xv, yv = val.frames()
    f, d = x.shape[1], y.shape[1]
    out = SpeechModels()
    steps = max(len(t) for t in train.inputs + val.inputs)  # fit_sequences needs one T
    frame_kwargs = dict(validation_data=(xv, yv), max_epochs=s.epochs, batch_size=s.batch_size,
                        lr=s.lr, random_state=seed, progress=progress)  # fmt: skip
    for name in s.models:
        if name == "mse":
            model = _seeded(seed, lambda: MSEBaseline(f, d, s.hidden))
            hist = fit(model, x, y, **frame_kwargs)
            model.calibrate(x, y)
        elif name in ("gaussian", "mdn"):
            n = 1 if name == "gaussian" else s.n_components
            model = _seeded(seed, lambda n=n: MDN(f, d, n, s.hidden, min_scale=s.min_scale))
            hist = fit(model, x, y, **frame_kwargs)
        elif name == "rnn":
            model = _seeded(seed, lambda: MDNRNN(f, d, s.n_components, s.rnn_hidden,
                                                 covariance_type="diagonal", min_scale=s.min_scale))  # fmt: skip
            hist = fit_sequences(
                model, *train.padded(steps), validation_data=val.padded(steps),
                batch_size=s.rnn_batch_size,
                max_epochs=s.rnn_epochs, lr=s.lr, random_state=seed, progress=progress,
            )  # fmt: skip
        else:
            raise InputError(f"unknown model {name!r}; pick from mse, gaussian, mdn, rnn")
        out.models[name], out.histories[name] = model, hist
    return out


@torch.no_grad()
def predict_mixture(model: torch.nn.Module, x: Tensor) -> GaussianMixture | None:
    """One sentence's per-frame mixtures ``(T,)`` in standardised units (``None`` for MSE)."""
    if isinstance(model, MDN):
        return model.standardized_forward(x)
    if isinstance(model, MDNRNN):
        h, _ = model.features(x.unsqueeze(0))
        return model.head(h[0])
    return None


@torch.no_grad()
def generate_frames(
    model: torch.nn.Module,
    x: Tensor,
    method: str = "component",
    settings: SpeechSettings = SpeechSettings(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-mel frames ``(T, n_mels)`` generated for one sentence's features ``x (T, F)``.

    The MSE model returns its prediction. Mixture models: ``method`` ``"component"``,
    ``"mode"`` or ``"sample"`` (temperature ``settings.temperature``), smoothed over time with
    ``λ = settings.smoothing`` (see :func:`torchmdn.apps.speech.model.generate`), or ``"mean"``
    (the mixture's mean, unsmoothed).
    """
    if isinstance(model, MSEBaseline):
        return model.standardized_mean(x) * model.y_scale + model.y_loc
    mixture = predict_mixture(model, x)
    if method == "mean":
        z = mixture.mean
    else:
        z = generate(mixture, method, settings.temperature, settings.smoothing, generator)
    return z * model.y_scale + model.y_loc


@torch.no_grad()
def frame_nll(model: torch.nn.Module, corpus: SpeechCorpus) -> float:
    """Mean held-out negative log-likelihood per frame (nats, log-mel units)."""
    if isinstance(model, MDNRNN):
        x, y, lengths = corpus.padded()
        mask = lengths_to_mask(lengths, x.shape[1])
        return -(model.log_prob(x, y, mask).sum() / mask.sum()).item()
    x, y = corpus.frames()
    lp = model.log_prob(x, y) if isinstance(model, MDN) else model(x).log_prob(y)
    return -lp.mean().item()


#: (model, generation method) pairs that the table reports
GENERATIONS = (("mse", "mean"), ("gaussian", "mean"), ("mdn", "mean"), ("mdn", "component"),
               ("mdn", "mode"), ("mdn", "sample"), ("rnn", "component"),
               ("rnn", "sample"))  # fmt: skip


@torch.no_grad()
def evaluate(
    models: SpeechModels,
    test: SpeechCorpus,
    settings: SpeechSettings = SpeechSettings(),
    seed: int = 0,
) -> list[dict]:
    """Rows of the results table: NLL per frame, LSD (dB) and GV ratio per generation method.

    The GV ratio is the generated global variance over the real one, both averaged over
    bands and test sentences (1 is ideal; below 1 is over-smoothed).
    """
    real_gv = torch.stack([global_variance(y) for y in test.targets]).mean().item()
    rows = [{"model": "real frames", "method": "", "nll": float("nan"), "lsd": 0.0,
             "gv": real_gv, "gv_ratio": 1.0}]  # fmt: skip
    nll = {name: frame_nll(m, test) for name, m in models.models.items()}
    for name, method in GENERATIONS:
        if name not in models.models:
            continue
        gen = torch.Generator().manual_seed(seed)
        frames = [generate_frames(models.models[name], x, method, settings, gen)
                  for x in test.inputs]  # fmt: skip
        lsd = torch.stack([log_spectral_distance(g, y)
                           for g, y in zip(frames, test.targets, strict=True)])  # fmt: skip
        gv = torch.stack([global_variance(g) for g in frames]).mean().item()
        rows.append({"model": name, "method": method, "nll": nll[name], "lsd": lsd.mean().item(),
                     "gv": gv, "gv_ratio": gv / real_gv})  # fmt: skip
    return rows


_LABELS = {"mse": "MLP + MSE head", "gaussian": "MLP MDN, n=1", "mdn": "MLP MDN, n={n}",
           "rnn": "LSTM MDN-RNN, n={n}"}  # fmt: skip


def format_table(rows: list[dict], settings: SpeechSettings = SpeechSettings()) -> str:
    """A Markdown table of :func:`evaluate`'s rows."""
    lines = ["| model | generation | held-out NLL (nats/frame) | LSD (dB) | GV ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        label = _LABELS.get(r["model"], r["model"]).format(n=settings.n_components)
        nll = "" if r["nll"] != r["nll"] else f"{r['nll']:.1f}"
        lines.append(f"| {label} | {r['method']} | {nll} | {r['lsd']:.2f} | {r['gv_ratio']:.3f} |")
    return "\n".join(lines)


def speech_demo(
    out: str | Path = "demo-out",
    seed: int = 0,
    progress: bool = True,
    settings: SpeechSettings | None = None,
    cache_dir: str | Path | None = None,
    n_shown: int = 3,
) -> SpeechDemoResult:
    """Train the acoustic models, print-ready table, spectrogram images and WAV files.

    Writes to ``out``: ``speech_spectrograms.png`` (for ``n_shown`` held-out sentences: real
    log-mel frames, then those generated by the MSE model, the MDN and the MDN-RNN),
    ``speech_variance.png`` (per-band global variance; one band's trajectory over time) and,
    per shown sentence, ``speech_<k>_<what>.wav``: the eSpeak original, Griffin-Lim from the
    real frames (the vocoder's own ceiling) and from each model's frames.
    """
    settings = settings or SpeechSettings()
    with one_thread():
        return _speech(Path(out), seed, progress, settings, cache_dir, n_shown)


def _speech(out: Path, seed: int, progress: bool, settings: SpeechSettings,
            cache_dir: str | Path | None, n_shown: int) -> SpeechDemoResult:  # fmt: skip
    from ...plot import require_matplotlib

    plt = require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    spec = MelSpec()
    utts = build_corpus(settings.n_sentences, seed=seed, cache_dir=cache_dir, progress=progress)
    corpus = SpeechCorpus.from_utterances(utts, spec=spec, seed=seed)
    train, val, test = split_corpus(corpus, seed)
    models = train_models(train, val, settings, seed, progress)
    rows = evaluate(models, test, settings, seed)
    table = format_table(rows, settings)

    shown = list(range(min(n_shown, len(test))))
    show = [m for m in ("mse", "mdn", "rnn") if m in models.models]
    method = {"mse": "mean", "mdn": "component", "rnn": "component"}
    gen = torch.Generator().manual_seed(seed)
    frames = {m: [generate_frames(models.models[m], test.inputs[i], method[m], settings, gen)
                  for i in shown] for m in show}  # fmt: skip
    real = [test.targets[i] for i in shown]
    lo, hi = torch.cat(real).quantile(0.01).item(), torch.cat(real).max().item()
    titles = {"mse": "MLP + MSE", "mdn": "MDN (top component, smoothed)",
              "rnn": "MDN-RNN (top component, smoothed)"}  # fmt: skip
    fig, axes = plt.subplots(len(shown), 1 + len(show), figsize=(3.4 * (1 + len(show)),
                             2.4 * len(shown)), squeeze=False)  # fmt: skip
    for r, i in enumerate(shown):
        panels = [("real (eSpeak NG)", real[r])] + [(titles[m], frames[m][r]) for m in show]
        for c, (title, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi,
                      cmap="magma", extent=(0, len(img) / spec.frames_per_second, 0, spec.n_mels))  # fmt: skip
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.set_xlabel("seconds" if r == len(shown) - 1 else "", fontsize=8)
            ax.set_ylabel("mel band" if c == 0 else "", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[r, 0].text(0.01, 0.97, f'"{test.utterances[i].text}"', transform=axes[r, 0].transAxes,
                        fontsize=7, color="white", va="top")  # fmt: skip
    fig.tight_layout()
    figure = out / "speech_spectrograms.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    files = [figure, _variance_figure(plt, out, test, models, settings, seed)]
    gl = torch.Generator().manual_seed(seed)
    for r, i in enumerate(shown):
        u = test.utterances[i]
        files.append(write_wav(out / f"speech_{r}_original.wav", u.wave, u.sample_rate))
        for what, img in [("real_griffinlim", real[r])] + [(m, frames[m][r]) for m in show]:
            wav = mel_to_wave(img, spec, generator=gl)
            files.append(write_wav(out / f"speech_{r}_{what}.wav", wav, spec.sample_rate))
    main = "mdn" if "mdn" in models.models else next(iter(models.models))
    nll = next(r["nll"] for r in rows if r["model"] == main)
    return SpeechDemoResult(nll, models.histories[main], figure, table, rows, files)


def _variance_figure(plt, out: Path, test: SpeechCorpus, models: SpeechModels,
                     settings: SpeechSettings, seed: int) -> Path:  # fmt: skip
    """Per-band global variance (real vs generated) and one band's trajectory over time."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.6))
    gv = torch.stack([global_variance(y) for y in test.targets]).mean(0)
    ax0.plot(gv.numpy(), color="k", lw=2, label="real")
    band = 20
    ax1.plot(test.targets[0][:, band].numpy(), color="k", lw=2, label="real")
    styles = {"mse": ("MSE", "mean", "tab:red"), "mdn": ("MDN", "component", "tab:blue"),
              "rnn": ("MDN-RNN", "component", "tab:green")}  # fmt: skip
    for name, (label, method, color) in styles.items():
        if name not in models.models:
            continue
        gen = torch.Generator().manual_seed(seed)
        frames = [generate_frames(models.models[name], x, method, settings, gen)
                  for x in test.inputs]  # fmt: skip
        ax0.plot(torch.stack([global_variance(f) for f in frames]).mean(0).numpy(), color=color,
                 label=label)  # fmt: skip
        ax1.plot(frames[0][:, band].numpy(), color=color, label=label)
    ax0.set_xlabel("mel band")
    ax0.set_ylabel("global variance (nats²)")
    ax0.set_title("variance over time within a sentence, per band", fontsize=9)
    ax1.set_xlabel("frame (12.5 ms)")
    ax1.set_ylabel(f"log-mel band {band} (nats)")
    ax1.set_title("one band of a held-out sentence", fontsize=9)
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "speech_variance.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
