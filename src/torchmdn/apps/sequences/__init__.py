"""Sequence demos: handwriting (Hershey glyphs, LASA shapes) and hurricane tracks."""
