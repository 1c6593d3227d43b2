"""The repository speaks to users: no references to the project's issue tracker."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a tracker reference: "issue 7", "issues 7", "issue #7", "(#12)"
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
    assert TRACKER.search("see issue 7") and TRACKER.search("Issue #12") and TRACKER.search("(#3)")
    assert not TRACKER.search("an issue with 7 rows") and not TRACKER.search("tissue 7")


def test_no_tracker_references():
    found = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in _files()
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if TRACKER.search(line) and f.name != "test_repository.py"
    ]
    assert not found, "\n".join(found)
