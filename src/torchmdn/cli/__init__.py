"""The ``torchmdn`` command line: parse arguments, call the library, map errors to exit codes.

``main(argv) -> int`` is testable without a subprocess. Every error the library raises on
purpose (and a missing file) ends with status 1 and one line on stderr, no traceback.

- :mod:`~torchmdn.cli.parser`: the commands' options, ``main`` and the small commands
  (``demo``, ``kernel``);
- :mod:`~torchmdn.cli.fit`: ``torchmdn fit``;
- :mod:`~torchmdn.cli.query`: ``predict``, ``sample`` and ``evaluate`` on a saved model;
- :mod:`~torchmdn.cli.tables`: CSV files in and out, with errors that name line and column.
"""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
