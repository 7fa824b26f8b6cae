"""The guest agent as the new root's PID 1: however it ends, it powers the VM off, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.test_guest_log import _guest_python

#: Stands in for ``busybox poweroff -f``: the test must see the exec, not stop this machine.
FAKE_POWER_OFF = "m.POWER_OFF = ('/bin/echo', 'poweroff', 'reached'); "


def test_an_agent_that_exits_powers_off_with_its_status() -> None:
    done = _guest_python(
        "import vmsandbox.guest.__main__ as m; " + FAKE_POWER_OFF + "m.run_as_init(['serve', '--bogus', 'x'])"
    )
    assert done.returncode == 0, done.stderr
    assert "unknown option '--bogus'" in done.stderr
    assert "vmsandbox-guest: guest agent exited with status 2; powering off" in done.stdout
    assert done.stdout.rstrip().endswith("poweroff reached"), "the process did not become poweroff"


def test_an_agent_that_crashes_prints_the_error_and_still_powers_off() -> None:
    done = _guest_python(
        "import vmsandbox.guest.__main__ as m; "
        + FAKE_POWER_OFF
        + "m.main = lambda argv=None: {}['lost']; m.run_as_init([])"
    )
    assert done.returncode == 0, done.stderr
    assert "KeyError: 'lost'" in done.stderr, "the traceback reaches the console"
    assert "guest agent failed: KeyError('lost'); powering off" in done.stdout
    assert done.stdout.rstrip().endswith("poweroff reached")


def test_a_power_off_that_cannot_run_exits_instead_of_returning() -> None:
    done = _guest_python(
        "import vmsandbox.guest.__main__ as m; m.POWER_OFF = ('/nonexistent/busybox', 'poweroff'); "
        "m.run_as_init(['serve', '--bogus', 'x']); print('returned')"
    )
    assert done.returncode == 1
    assert "cannot power off" in done.stdout
    assert "returned" not in done.stdout


#: What loading the container machinery does without, though a VM's first create waits for it:
#: logging loads at the first message, shutil on teardown, tempfile for terminals only, every
#: path is a string, and PID 1 needs no ctypes to become a subreaper (ctypes still comes with
#: the first disk's mount, which it does through libc rather than a process per mount).
KEPT_OFF_THE_FIRST_CREATE = (
    "logging",
    "shutil",
    "tempfile",
    "copy",
    "pathlib",
    "urllib",
    "ctypes",
    "bz2",
    "lzma",
    "random",
)


def test_the_container_machinery_of_a_pid_1_agent_loads_without_the_costly_modules(tmp_path: Path) -> None:
    done = _guest_python(
        "import os; os.getpid = lambda: 1; "
        "from vmsandbox.guest.__main__ import _become_subreaper; from vmsandbox.guest.agent import Agent; "
        f"agent = Agent({str(tmp_path)!r}, 'runc', before_containers=_become_subreaper); agent.table; "
        "from vmsandbox.guest.ociruntime import _which; _which('sh'); "
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {KEPT_OFF_THE_FIRST_CREATE!r})))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the first create would import {done.stdout.strip()}"


def test_which_finds_executables_on_path_as_shutil_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from vmsandbox.guest.ociruntime import _which

    (tmp_path / "plain").write_text("")
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "subdir").mkdir(mode=0o755)
    path = f"{tmp_path}:/usr/bin:/bin"
    monkeypatch.setenv("PATH", path)
    for name in ("tool", "plain", "subdir", "sh", "no-such-tool"):
        assert _which(name) == shutil.which(name, path=path), name
    assert _which("tool") == str(tool)


def test_the_preload_also_readies_libc_for_the_first_creates_mounts(tmp_path: Path) -> None:
    """An idle pool member has loaded everything its claim's create needs before the claim."""
    done = _guest_python(
        "import os; os.getpid = lambda: 1; from vmsandbox.guest.agent import Agent; "
        f"agent = Agent({str(tmp_path)!r}, 'runc'); agent._preload(); "
        "from vmsandbox.guest import disks; print(disks._LIBC is not None, 'ctypes' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
