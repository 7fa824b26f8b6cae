"""``python -m vmsandbox``: the ``vmsandbox`` command."""

from vmsandbox.cli import main

raise SystemExit(main())
