"""``python -m frozen``: the command line (see ``frozen --help``)."""

from ._cli import main

raise SystemExit(main())
