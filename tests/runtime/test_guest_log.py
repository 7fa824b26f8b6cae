"""The guest agent's log: loaded at the first message, configured only by the agent's own start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.runtime.test_wire import PACKAGE_PARENT
from vmsandbox.guest.__main__ import main


def _guest_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in an isolated interpreter, as the guest runs the agent."""
    prelude = f"import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r}); "
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True, text=True, timeout=60
    )


def test_the_first_message_loads_logging_in_the_configured_format() -> None:
    done = _guest_python(
        "from vmsandbox.guest import logs; from vmsandbox.guest.logs import log; "
        "logs.configure('INFO'); assert 'logging' not in sys.modules; "
        "log.debug('hidden'); log.info('hello %s', 'there'); assert 'logging' in sys.modules"
    )
    assert done.returncode == 0, done.stderr
    assert "guest INFO hello there" in done.stderr
    assert "hidden" not in done.stderr


def test_a_process_that_never_configures_keeps_its_own_logging() -> None:
    done = _guest_python(
        "import logging; from vmsandbox.guest.logs import log; log.warning('plain'); "
        "assert not logging.getLogger().handlers, logging.getLogger().handlers"
    )
    assert done.returncode == 0, done.stderr
    assert "plain" in done.stderr and "guest WARNING" not in done.stderr


def test_an_unknown_log_level_is_a_usage_error_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "serve",
            "--listen",
            "unix:/nonexistent/agent.sock",
            "--state-dir",
            "/nonexistent",
            "--log-level",
            "loud",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--log-level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in err
