"""The identity a claimed VM's guest agent is given: message checks and the guest's own checks.

The ioctl and the clock are exercised in a real guest (tests/node_agent/test_pools_qemu.py); on
the host the agent must never reach them, which the last test checks.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from vmsandbox.guest.agent import Agent
from vmsandbox.guest.identity import IdentityError, add_entropy
from vmsandbox.guest.protocol import REQUEST, CreateSandbox, Ok, ProtocolError


def test_create_sandbox_carries_entropy_and_clock() -> None:
    seed = base64.b64encode(os.urandom(64)).decode()
    message = CreateSandbox(sandbox_id="sb", hostname="box", entropy=seed, clock=1.7e9)
    parsed = REQUEST.parse(message.to_wire())
    assert (parsed.entropy, parsed.clock) == (seed, 1.7e9)
    assert CreateSandbox(sandbox_id="sb", hostname=None).entropy is None  # older hosts send neither
    with pytest.raises(ProtocolError, match="clock"):
        CreateSandbox(sandbox_id="sb", hostname=None, clock="now")


@pytest.mark.parametrize(
    ("encoded", "words"),
    [
        ("not base64!", "not base64"),
        ("", "1 to 4096 bytes"),
        (base64.b64encode(bytes(5000)).decode(), "4096"),
    ],
)
def test_bad_entropy_is_refused_before_any_ioctl(tmp_path: Path, encoded: str, words: str) -> None:
    device = tmp_path / "random"
    with pytest.raises(IdentityError, match=words):
        add_entropy(encoded, device=str(device))
    assert not device.exists()


def test_the_ioctl_failing_is_an_error_naming_it(tmp_path: Path) -> None:
    device = tmp_path / "random"
    device.touch()
    with pytest.raises(IdentityError, match="RNDADDENTROPY"):
        add_entropy(base64.b64encode(b"x" * 64).decode(), device=str(device))


def test_an_agent_on_the_host_ignores_entropy_and_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmsandbox.guest.identity as identity

    touched: list[str] = []
    monkeypatch.setattr(identity, "add_entropy", lambda *a, **k: touched.append("entropy"))
    monkeypatch.setattr(identity, "set_clock", lambda *a, **k: touched.append("clock"))
    cwd = os.getcwd()
    try:
        agent = Agent(tmp_path / "state", "runc")  # no --init-uptime: not a VM's agent
        reply = agent.handle(CreateSandbox(sandbox_id="sb", hostname=None, entropy="eA==", clock=1.0))
    finally:
        os.chdir(cwd)
    assert isinstance(reply, Ok) and touched == []
