"""Training data larger than memory: CSV or Parquet files read in chunks.

``fit(model, TableSource(paths, target="y"))`` never holds the data set in memory. One
streaming pass first computes everything that needs all rows, in memory bounded by the
source's settings, not by the data:

- normalisation statistics (mean and standard deviation of x and y), merged chunk by chunk
  with the numerically stable pairwise update of Chan, Golub & LeVeque (1979);
- a uniform sample of at most ``sample_rows`` training rows (for the mixture head's k-means
  initialisation, the collapse diagnostics, and the score when there is no validation set);
- the held-out validation set: each row is held out when a hash of its file and row number
  (salted with the seed) falls below ``validation_fraction``; of those, the ``validation_rows``
  rows with the smallest hashes are kept. Both samples are "bottom-k" sketches: uniform,
  deterministic, and independent of chunking and of the number of processes.

Each epoch then streams the files again, shuffling within a buffer of ``shuffle_rows`` rows.
Under data parallelism, rank ``r`` of ``W`` takes chunks ``r, r + W, …`` (every rank still
tokenises the files, but converts, shuffles and trains only on its share); the per-rank
statistics and samples are merged exactly, so initialisation and validation equal those of a
one-process run, while batch composition differs (each rank shuffles its own share).
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import require_extra
from .._files import describe_input
from ..errors import InputError
from .distributed import Group

__all__ = ["TableSource", "check_header", "read_csv_text"]

_PARQUET = {".parquet", ".pq"}
_SAMPLE_SALT = 0x5EED


_DELIMITERS = ",;\t"
_SNIFF_CHARS = 65_536  # the delimiter is judged on at most this much of the header line


def read_csv_text(path: str | Path, *, whole: bool = True) -> tuple[str, type[csv.Dialect]]:
    """A CSV file's text (only its first line when ``whole`` is false) and its dialect: the
    delimiter among ``,``, ``;`` and tab that occurs most often in the header line (its first
    64 KB; ``,`` when none occurs), otherwise as Excel writes CSV. Linear in the header's
    length (``csv.Sniffer`` is superlinear on hostile headers).

    The one place CSV files are opened as text: :class:`TableSource` and the command line.

    Raises:
        InputError: the file is missing, a folder, a FIFO or device, not UTF-8 text or empty;
            the message names it and says which.
    """
    path = Path(path)
    problem = describe_input(path)
    if problem is not None:
        raise InputError(f"data file {problem}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = f.read() if whole else f.readline()
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise InputError(f"{path} is empty")
    line = text[: text.find("\n") if "\n" in text[:_SNIFF_CHARS] else _SNIFF_CHARS]
    counts = [line.count(c) for c in _DELIMITERS]
    delimiter = _DELIMITERS[counts.index(max(counts))] if max(counts) else ","
    dialect = type("Sniffed", (csv.excel,), {"delimiter": delimiter})
    return text, dialect


def check_header(path: Path, header: Sequence[str]) -> list[str]:
    """The column names of ``path``, refusing empty and repeated ones (a repeated name
    would make "the column named x" ambiguous)."""
    names = [str(h).strip() for h in header]
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:
        raise InputError(
            f"{path}: column name(s) {repeated} appear more than once in the header; "
            "give every column its own name"
        )
    return names


def _uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """A hash of each key to [0, 1) (splitmix64): the same key and salt, the same number."""
    z = keys.astype(np.uint64) + np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


class TableSource:
    """Rows ``(x, y)`` streamed from CSV or Parquet files, one chunk at a time.

    Pass it to :func:`torchmdn.fit` in place of ``x`` (and no ``y``). Memory use is bounded
    by ``chunk_rows + shuffle_rows + sample_rows + validation_rows`` rows (plus one Parquet
    row group, which is read at a time), whatever the size of the files. Reading CSV needs pandas, Parquet needs pyarrow: ``pip install
    'torchmdn[stream]'``.

    Args:
        paths: one file or several (``.parquet``/``.pq`` are Parquet, anything else CSV with a
            header row; the delimiter is sniffed among ``,``, ``;`` and tab). All files need
            the named columns.
        target: target column name(s).
        features: feature column names (default: every other column of the first file).
        chunk_rows: rows read and converted at a time.
        shuffle_rows: rows shuffled together in each epoch (a bounded shuffle buffer).
        sample_rows: size of the uniform training sample kept in memory.
        validation_rows: most validation rows kept in memory.

    Example:
        >>> import tempfile, pathlib, torch, torchmdn
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "data.csv"
        >>> _ = path.write_text("x,y\\n" + "".join(f"{i / 50},{(i % 7) / 7}\\n" for i in range(200)))
        >>> source = torchmdn.TableSource(path, target="y", chunk_rows=64)
        >>> source.features, source.targets
        (['x'], ['y'])
        >>> model = torchmdn.MDN(1, 1, n_components=2, hidden=(8,))
        >>> history = torchmdn.fit(model, source, max_epochs=2, progress=False, random_state=0)
        >>> history.epochs
        2
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        target: str | Sequence[str],
        features: Sequence[str] | None = None,
        *,
        chunk_rows: int = 65_536,
        shuffle_rows: int = 262_144,
        sample_rows: int = 20_000,
        validation_rows: int = 20_000,
    ):
        for name, value in (("chunk_rows", chunk_rows), ("shuffle_rows", shuffle_rows),
                            ("sample_rows", sample_rows), ("validation_rows", validation_rows)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1; got {value!r}")
        self.chunk_rows, self.shuffle_rows = chunk_rows, shuffle_rows
        self.sample_rows, self.validation_rows = sample_rows, validation_rows
        many = not isinstance(paths, (str, Path))
        self.paths = [Path(p) for p in paths] if many else [Path(paths)]
        if not self.paths:
            raise InputError("TableSource needs at least one file; got an empty list")
        for p in self.paths:
            problem = describe_input(p)
            if problem is not None:
                raise InputError(f"data file {problem}")
        self._delimiters: dict[Path, str] = {}  # each CSV file's delimiter, judged once
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets:
            raise InputError("target names no column")
        header = self._header(self.paths[0])
        self.features = (
            [c for c in header if c not in self.targets] if features is None else list(features)
        )
        if not self.features:
            raise InputError(
                f"no feature columns left besides the targets {self.targets}; pass features"
            )
        for path in self.paths:
            header = self._header(path)
            absent = [c for c in self.features + self.targets if c not in header]
            if absent:
                raise InputError(f"{path}: no column named {absent}; the columns are {header}")
            if path.suffix.lower() in _PARQUET:
                schema, types = (
                    require_extra(
                        "pyarrow.parquet", "stream", "streaming training data"
                    ).read_schema(path),
                    require_extra("pyarrow.types", "stream", "streaming training data"),
                )
                for name in self.features + self.targets:
                    kind = schema.field(name).type
                    if not (types.is_integer(kind) or types.is_floating(kind)):
                        raise InputError(
                            f"{path}, column {name!r} has type {kind}; expected numbers. "
                            "Use only numeric columns (encode categories first)."
                        )

    def __repr__(self) -> str:
        return (
            f"TableSource({[str(p) for p in self.paths]}, target={self.targets}, "
            f"features={self.features}, chunk_rows={self.chunk_rows})"
        )

    def _header(self, path: Path) -> list[str]:
        if path.suffix.lower() in _PARQUET:
            pq = require_extra("pyarrow.parquet", "stream", "streaming training data")
            try:
                schema = pq.read_schema(path)
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types here
                raise InputError(f"{path} is not a readable Parquet file ({err})") from err
            return check_header(path, list(schema.names))
        line, dialect = read_csv_text(path, whole=False)
        self._delimiters[path] = dialect.delimiter
        return check_header(path, next(csv.reader([line], dialect), []))

    def _frames(self, path: Path) -> Iterator[Any]:
        """The file's chunks as pandas DataFrames / pyarrow RecordBatches of our columns."""
        columns, start = self.features + self.targets, 0
        if path.suffix.lower() in _PARQUET:
            # one row group at a time: ParquetFile.iter_batches over a whole file keeps
            # allocating as it goes (measured: +45 MB per million rows), this stays flat
            file = require_extra(
                "pyarrow.parquet", "stream", "streaming training data"
            ).ParquetFile(path)
            for g in range(file.num_row_groups):
                group = file.read_row_group(g, columns=columns)
                yield from group.to_batches(max_chunksize=self.chunk_rows)
            return
        pd = require_extra("pandas", "stream", "streaming training data")
        reader = pd.read_csv(
            path,
            sep=self._delimiters[path],
            chunksize=self.chunk_rows,
            index_col=False,  # a row with more fields than the header is an error, not an index
            na_values=["?"],
            encoding="utf-8-sig",
        )
        with reader:
            while True:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        frame = reader.get_chunk()
                    except StopIteration:
                        return
                if any("Length of header" in str(w.message) for w in caught):
                    raise InputError(
                        f"{path}: a data row in the chunk of rows {start + 1}..{start + len(frame)} "
                        "has more fields than the header; fix the file"
                    )
                start += len(frame)
                frame = frame.rename(columns=lambda c: str(c).strip())
                yield frame[columns]

    def _numbers(self, path: Path, frame: Any, names: list[str], start: int) -> np.ndarray:
        """Columns ``names`` of one chunk as float64, with an error naming any bad cell."""
        out = np.empty((len(frame), len(names)))
        for j, name in enumerate(names):
            if hasattr(frame, "to_pandas"):  # pyarrow RecordBatch
                col = frame.column(frame.schema.get_field_index(name))
                try:
                    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
                except (TypeError, ValueError) as err:
                    raise InputError(
                        f"{path}, column {name!r} has type {col.type}; expected numbers. "
                        "Use only numeric columns (encode categories first)."
                    ) from err
            else:
                series = frame[name]
                if series.dtype.kind not in "biuf":
                    pd = require_extra("pandas", "stream", "streaming training data")
                    bad = pd.to_numeric(series, errors="coerce").isna() & series.notna()
                    if bad.any():
                        i = int(np.argmax(bad.to_numpy()))
                        raise InputError(
                            f"{path}, data row {start + i + 1}, column {name!r}: "
                            f"{series.iloc[i]!r} is not a number. "
                            "Use only numeric columns (encode categories first)."
                        )
                    series = pd.to_numeric(series)
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.argmax(bad))
                what = "missing value" if np.isnan(values[i]) else f"{values[i]} is not finite"
                raise InputError(
                    f"{path}, data row {start + i + 1}, column {name!r}: {what}. "
                    "Drop or impute missing values first."
                )
            out[:, j] = values
        return out

    def chunks(self, rank: int = 0, world: int = 1) -> Iterator[tuple[np.ndarray, ...]]:
        """This rank's chunks ``(x, y, keys)`` in file order: chunks ``rank, rank + world, …``.

        ``x (n, in_features)`` and ``y (n, out_features)`` are float64; ``keys (n,)`` number
        each row by file and row (``file_index * 2**40 + row``), for hashing.
        """
        piece = 0
        for i, path in enumerate(self.paths):
            start = 0
            try:
                for frame in self._frames(path):
                    n = len(frame)
                    if piece % world == rank and n:
                        x = self._numbers(path, frame, self.features, start)
                        y = self._numbers(path, frame, self.targets, start)
                        keys = np.arange(start, start + n, dtype=np.int64) + (i << 40)
                        yield x, y, keys
                    start += n
                    piece += 1
            except InputError:
                raise
            except UnicodeDecodeError as err:  # past the first line read_csv_text checked
                raise InputError(
                    f"{path} is not UTF-8 text after data row {start} ({err.reason}); "
                    "save it as UTF-8"
                ) from None
            except (ValueError, OSError) as err:  # pandas/pyarrow parse errors
                if type(err).__name__ == "EmptyDataError":
                    raise InputError(f"{path} is empty") from None
                why = " ".join(str(err).split())  # (pandas' messages span lines)
                raise InputError(f"{path}: cannot read it as a table ({why})") from err
            if start == 0:
                raise InputError(f"{path} has a header but no data rows")


# ---------------------------------------------------------------------- the statistics pass


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per column; merged exactly (Chan et al.)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray) -> _Moments:
        mean = a.mean(0) if len(a) else np.zeros(a.shape[1])
        return cls(len(a), mean, ((a - mean) ** 2).sum(0))

    def merge(self, other: _Moments) -> _Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return _Moments(n, mean, self.m2 + other.m2 + delta**2 * (self.n * other.n / n))

    def std(self) -> np.ndarray:
        """Sample standard deviation (n - 1), as ``torch.std``."""
        return np.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else np.zeros_like(self.mean)


def _bottom_k(parts: list[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """Of ``(hash, x, y, keys)`` parts, the ``k`` rows with the smallest hashes, sorted."""
    u, x, y, keys = (np.concatenate(a) for a in zip(*parts, strict=True))
    keep = np.lexsort((keys, u))[:k]
    return u[keep], x[keep], y[keep], keys[keep]


def _empty(source: TableSource) -> tuple[np.ndarray, ...]:
    d_x, d_y = len(source.features), len(source.targets)
    return np.empty(0), np.empty((0, d_x)), np.empty((0, d_y)), np.empty(0, dtype=np.int64)


class Scan:
    """What one streaming pass learns: counts, moments, the sample and the validation set.

    Built by :meth:`run`; identical on every rank. ``batches`` streams one epoch of this
    rank's training rows.
    """

    def __init__(
        self,
        source: TableSource,
        validation_fraction: float,
        seed: int,
        group: Group,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.source, self.fraction, self.seed, self.group = source, validation_fraction, seed, group
        self.dtype, self.device = dtype, device
        mx = my = None
        val, sample = [_empty(source)], [_empty(source)]
        for x, y, keys in source.chunks(group.rank, group.world):
            u = _uniform(keys, seed)
            held = u < validation_fraction
            tr = ~held
            val = [
                _bottom_k([*val, (u[held], x[held], y[held], keys[held])], source.validation_rows)
            ]
            u_s = _uniform(keys[tr], seed + _SAMPLE_SALT)
            sample = [_bottom_k([*sample, (u_s, x[tr], y[tr], keys[tr])], source.sample_rows)]
            cx, cy = _Moments.of(x[tr]), _Moments.of(y[tr])
            mx, my = (cx, cy) if mx is None else (mx.merge(cx), my.merge(cy))
        if mx is None:  # this rank got no chunk
            mx, my = _Moments.of(_empty(source)[1]), _Moments.of(_empty(source)[2])
        parts = group.gather((mx, my, val[0], sample[0]))
        self.local_rows = [p[0].n for p in parts]  # training rows of each rank
        self.n_train = sum(self.local_rows)
        self.x_moments, self.y_moments = parts[0][0], parts[0][1]
        for p in parts[1:]:
            self.x_moments, self.y_moments = self.x_moments.merge(p[0]), self.y_moments.merge(p[1])
        self._val = _bottom_k([p[2] for p in parts], source.validation_rows)
        self._sample = _bottom_k([p[3] for p in parts], source.sample_rows)
        if self.n_train == 0:
            raise InputError(
                f"{source} holds no training rows (validation_fraction={validation_fraction} "
                "held out all of them); lower validation_fraction or add data"
            )
        if validation_fraction > 0 and len(self._val[0]) == 0:
            raise InputError(
                f"validation_fraction={validation_fraction} of {self.n_train} rows left an empty "
                "validation set; use more data, a larger fraction, or validation_fraction=0"
            )

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(dtype=self.dtype, device=self.device)

    @property
    def sample(self) -> tuple[Tensor, Tensor]:
        """A uniform sample of the training rows ``(x, y)``, at most ``sample_rows``."""
        return self._tensor(self._sample[1]), self._tensor(self._sample[2])

    @property
    def validation(self) -> tuple[Tensor, Tensor]:
        """The held-out rows ``(x, y)``, at most ``validation_rows`` (empty without a split)."""
        return self._tensor(self._val[1]), self._tensor(self._val[2])

    def fingerprint(self) -> str:
        """Identifies the data (and split) for checkpoints."""
        h = hashlib.sha1()
        for a in (self.x_moments.mean, self.x_moments.m2, self.y_moments.mean, self.y_moments.m2,
                  np.array([self.n_train]), self._val[3], self._sample[3]):  # fmt: skip
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def standardize(self, model: Any) -> None:
        """Set an MDN's normalisers from the streamed moments (``MDN.set_normalizers``; the
        grid step of y, if any, is detected on the bounded sample)."""
        if not callable(getattr(model, "set_normalizers", None)):
            raise InputError(
                f"streamed training standardises through MDN.set_normalizers; "
                f"{type(model).__name__} has none: use a torchmdn.MDN or standardize=False"
            )
        as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
        model.set_normalizers(
            as_t(self.x_moments.mean), as_t(self.x_moments.std()),
            as_t(self.y_moments.mean), as_t(self.y_moments.std()), y_sample=self.sample[1],
        )  # fmt: skip

    def batches(
        self, epoch: int, batch_size: int, gen: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, tuple[torch.Generator, int, slice]]]:
        """One epoch of this rank's training rows: ``(x, y, rows, (gen, len(x), slice(None)))``.

        There are ``ceil(n_train / batch_size)`` steps on every rank; each rank splits its own
        rows evenly over them. The epoch's own generator (seeded by seed, epoch and rank, so
        training resumes exactly at epoch boundaries; ``gen`` is not used) shuffles the buffer
        and draws any noise. ``rows`` are row numbers within each file, for error messages.
        """
        steps = math.ceil(self.n_train / batch_size)
        mine = self.local_rows[self.group.rank]
        if mine < steps:
            raise InputError(
                f"rank {self.group.rank} holds {mine} training rows, fewer than the "
                f"{steps} steps per epoch: lower chunk_rows (now {self.source.chunk_rows}) so "
                "the chunks spread over the processes, or raise batch_size"
            )
        sizes = [(t + 1) * mine // steps - t * mine // steps for t in range(steps)]
        mixed = _uniform(np.array([epoch * 65_536 + self.group.rank]), self.seed)[0]
        gen = torch.Generator().manual_seed(int(mixed * 2**53))
        pending: list[tuple[np.ndarray, ...]] = []
        held, t = 0, 0

        def drain(parts):
            nonlocal t
            x, y, k = (np.concatenate(a) for a in zip(*parts, strict=True))
            perm = torch.randperm(len(x), generator=gen).numpy()
            x, y, k = x[perm], y[perm], k[perm]
            pos = 0
            while t < steps and pos + sizes[t] <= len(x):
                s = slice(pos, pos + sizes[t])
                rows = torch.from_numpy(k[s] % 2**40)
                yield self._tensor(x[s]), self._tensor(y[s]), rows, (gen, len(rows), slice(None))
                pos, t = pos + sizes[t], t + 1
            return [(x[pos:], y[pos:], k[pos:])]

        for x, y, keys in self.source.chunks(self.group.rank, self.group.world):
            tr = _uniform(keys, self.seed) >= self.fraction
            pending.append((x[tr], y[tr], keys[tr]))
            held += int(tr.sum())
            if held >= self.source.shuffle_rows:
                pending = yield from drain(pending)
                held = len(pending[0][0])
        if pending:
            yield from drain(pending)
