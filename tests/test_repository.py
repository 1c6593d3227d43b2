"""The repository speaks to users: no references to the project's issue tracker."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a tracker reference: the word, an optional hash sign and a number; or a number in parentheses
# after a hash sign
TRACKER = re.compile(r"\bissues? ?#?\d+\b|\(#\d+\)", re.IGNORECASE)
PLACES = [
    "src",
    "tests",
    "benchmarks",
    "examples",
    "README.md",
    "pyproject.toml",
    "Makefile",
    ".ci",
]
SUFFIXES = {".py", ".md", ".toml", ".cpp", ".txt", ".cfg", ""}


def _files():
    for place in PLACES:
        path = ROOT / place
        for f in [path] if path.is_file() else sorted(path.rglob("*")):
            if f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts:
                yield f


def test_pattern_matches_what_it_should():
    word = "iss" + "ue"  # spelled apart so that this file holds no reference itself
    assert TRACKER.search(f"see {word} 7") and TRACKER.search(f"{word.title()} #12")
    assert TRACKER.search("(" + "#3)")
    assert not TRACKER.search(f"an {word} with 7 rows") and not TRACKER.search(f"t{word} 7")


def test_no_tracker_references():
    found = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in _files()
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if TRACKER.search(line)
    ]
    assert not found, "\n".join(found)
