"""Host tools a test needs: skipped where they are missing, a failure where they are promised.

CI (``hack/test.sh``) sets ``VMSANDBOX_REQUIRE_TOOLS=1``: there, a missing tool fails the test
instead of skipping it, so no test passes CI by not running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "VMSANDBOX_REQUIRE_TOOLS"
#: Where Debian keeps tools a non-root PATH may lack (mkfs.ext4, debugfs).
SBIN = (Path("/sbin"), Path("/usr/sbin"))


def tools_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail where the tools are promised."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    """Each of ``names`` is on PATH or in an sbin directory, else :func:`missing`."""
    for name in names:
        if shutil.which(name) is None and not any((d / name).exists() for d in SBIN):
            missing(f"{name} is not installed (hack/setup.sh installs it)")


def assert_shellcheck_clean(script: os.PathLike[str]) -> None:
    """``script`` passes shellcheck, which must be on PATH."""
    require_tools("shellcheck")
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
