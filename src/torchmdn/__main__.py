"""``python -m torchmdn``: the command line."""

from .cli import main

raise SystemExit(main())
