"""``python3 -m vmsandbox.runtime`` is ``vmsandbox-runtime``."""

import sys

from vmsandbox.runtime.cli import main

sys.exit(main())
