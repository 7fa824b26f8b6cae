"""The guest agent as the new root's PID 1: however it ends, it powers the VM off, saying why."""

from __future__ import annotations

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
