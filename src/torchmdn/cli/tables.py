"""CSV at the edge of the command line: reading (with errors that name the line and column),
choosing feature columns (row-index columns are recognised), writing whole files."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .._files import atomic_write
from ..errors import InputError
from ..training.streaming import check_header, read_csv_text

__all__ = [
    "Table", "columns", "in_dtype", "index_like", "index_name", "read_csv", "split_names",
    "write_csv",
]  # fmt: skip

_MISSING = {"", "na", "nan", "null", "none", "?"}


@dataclass
class Table:
    """A CSV file's header and data rows, with each row's line number for error messages."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]


def read_csv(path: str | Path) -> Table:
    """Read a CSV file with a header row (delimiter ``,``, ``;`` or tab, judged on the
    header line); repeated column names and rows of another length are refused."""
    path = Path(path)
    text, dialect = read_csv_text(path)
    reader = csv.reader(io.StringIO(text), dialect)
    # keep each row's real line number for error messages (blank lines are skipped)
    try:
        numbered = [(reader.line_num, r) for r in reader if r]
    except csv.Error as err:  # e.g. a stray carriage return inside a field
        raise InputError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    (_, first), rest = numbered[0], numbered[1:]
    header = check_header(path, first)
    if not rest:
        raise InputError(f"{path} has a header but no data rows")
    for line, r in rest:
        if len(r) != len(header):
            raise InputError(
                f"{path}, line {line}: {len(r)} fields but the header has {len(header)}"
            )
    return Table(path, header, [r for _, r in rest], [line for line, _ in rest])


def columns(table: Table, names: Sequence[str]) -> torch.Tensor:
    """The named columns as a float64 tensor ``(rows, len(names))``, with clear errors."""
    path, header, lines = table.path, table.header, table.lines
    unknown = [n for n in names if n not in header]
    if unknown:
        raise InputError(f"{path}: no column named {unknown}; the columns are {header}")
    idx = [header.index(n) for n in names]
    out = torch.empty(len(table.rows), len(idx), dtype=torch.float64)
    for i, row in enumerate(table.rows):
        for j, k in enumerate(idx):
            cell = row[k].strip()
            if cell.lower() in _MISSING:
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: missing value {cell!r}. "
                    "Drop or impute missing values first."
                )
            try:
                value = float(cell)
            except ValueError:
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: {cell!r} is not a number. "
                    "Use only numeric columns (encode categories first)."
                ) from None
            if not math.isfinite(value):
                raise InputError(
                    f"{path}, line {lines[i]}, column {names[j]!r}: {cell!r} is not finite"
                )
            out[i, j] = value
    return out


def write_csv(
    path: str | Path | None,
    header: list[str],
    rows: torch.Tensor,
    lead: list[list[str]] | None = None,
) -> None:
    """Write rows (optionally prefixed by string columns) to ``path`` or stdout; a file is
    written whole or not at all (temporary file + rename)."""

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows.tolist()):
            w.writerow((lead[i] if lead else []) + [f"{v:.8g}" for v in r])

    if path is None:
        write(sys.stdout)
    else:
        atomic_write(path, write, text=True)


def split_names(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [c.strip() for c in text.split(",") if c.strip()]


_INDEX_NAMES = {"", "rownames", "row.names", "row_names", "id", "index"}


def index_name(name: str) -> str | None:
    """Why a column *name* marks a row index (unnamed, ``rownames``, ``id``, ``index``), or ``None``."""
    key = name.strip().lower()
    if not key or key.startswith("unnamed:"):
        return "unnamed"
    return f"named {name!r}" if key in _INDEX_NAMES else None


def index_like(table: Table, name: str) -> str | None:
    """Why column ``name`` looks like a row index (so not a feature), or ``None``.

    A column is index-like when it is unnamed (an empty header cell, pandas' ``Unnamed: 0``),
    is named ``rownames``, ``id`` or ``index`` (any case), or holds the integers 0..N-1 or 1..N
    in order.
    """
    why = index_name(name)
    if why:
        return why
    k = table.header.index(name)
    try:
        values = [float(row[k]) for row in table.rows]
    except ValueError:
        return None
    for start in (0, 1):
        if values == [float(i) for i in range(start, start + len(values))]:
            return f"holds the integers {start}..{start + len(values) - 1} in order"
    return None


def in_dtype(values: torch.Tensor, dtype: torch.dtype, where: object) -> torch.Tensor:
    """``values`` converted to the model's dtype, refusing those it cannot hold."""
    out = values.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise InputError(
            f"{where}: values up to {values.abs().max().item():.3g} overflow the model's "
            f"{dtype}; change units, or train with dtype=float64"
        )
    return out
