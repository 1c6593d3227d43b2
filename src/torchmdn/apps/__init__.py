"""Worked applications built on torchmdn: Bishop's inverse problem, handwriting and storm
tracks, speech synthesis. The library's core never imports this package; ``torchmdn demo``
loads it on demand."""
