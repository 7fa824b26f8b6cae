"""``python -m vmsandbox.operator``."""

from vmsandbox.operator.main import main

raise SystemExit(main())
