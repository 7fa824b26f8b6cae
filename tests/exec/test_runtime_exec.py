"""Exec through the runtime and the guest agent on the process backend (real runc ``exec``)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from tests.exec.conftest import Sandbox
from vmsandbox.runtime.errors import WrongState
from vmsandbox.runtime.streams import ExecStream, start_exec


def run(sandbox: Sandbox, command: list[str], stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    stream = start_exec(sandbox.agent, sandbox.id, command, stdin=stdin is not None)
    return collect(stream, stdin)


def collect(stream: ExecStream, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    with stream:
        if stdin is not None:
            # Written beside the reading, as a client must: cat's output fills up meanwhile.
            feeder = threading.Thread(target=_feed, args=(stream, stdin), daemon=True)
            feeder.start()
        out, err = bytearray(), bytearray()
        for channel, data in stream.output():
            (out if channel == 1 else err).extend(data)
        assert stream.exit_code is not None
        return bytes(out), bytes(err), stream.exit_code


def _feed(stream: ExecStream, data: bytes) -> None:
    stream.write_stdin(data)
    stream.close_stdin()


def test_stdout_stderr_and_environment_are_separate(sandbox: Sandbox) -> None:
    out, err, code = run(sandbox, ["sh", "-c", 'echo "$GREETING out"; echo err >&2; pwd'])
    assert (out, err, code) == (b"hello out\n/\n", b"err\n", 0)


@pytest.mark.parametrize("code", [0, 1, 3])
def test_exit_codes(sandbox: Sandbox, code: int) -> None:
    assert run(sandbox, ["sh", "-c", f"exit {code}"])[2] == code


def test_killed_by_a_signal_is_128_plus_n(sandbox: Sandbox) -> None:
    assert run(sandbox, ["sh", "-c", "kill -9 $$"])[2] == 137


def test_signal_from_the_host_reaches_the_process(sandbox: Sandbox) -> None:
    stream = start_exec(sandbox.agent, sandbox.id, ["sh", "-c", "echo ready; sleep 30"])
    with stream:
        output = stream.output()
        assert next(output) == (1, b"ready\n")
        stream.signal(9)
        assert list(output) == []
        assert stream.exit_code == 137


def test_stdin_to_cat(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * 4096
    out, err, code = run(sandbox, ["cat"], stdin=data)
    assert (out == data, err, code) == (True, b"", 0)


def test_ten_mib_of_output_is_intact_and_in_order(sandbox: Sandbox) -> None:
    out, _, code = run(sandbox, ["sh", "-c", "seq 1 1500000"])
    expected = b"".join(b"%d\n" % i for i in range(1, 1500001))
    assert len(expected) > 10 * 1024 * 1024
    assert code == 0
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_a_slow_reader_holds_the_producer_back(sandbox: Sandbox) -> None:
    """Flow control: while the host reads nothing, the process blocks instead of the agent buffering."""
    stream = start_exec(sandbox.agent, sandbox.id, ["sh", "-c", "yes | head -c 100000000; echo done >&2"])
    with stream:
        time.sleep(1.5)
        total, err = 0, b""
        for channel, data in stream.output():
            if channel == 1:
                total += len(data)
            else:
                err += data
        assert (total, err, stream.exit_code) == (100000000, b"done\n", 0)


def test_tty_session_with_resize(sandbox: Sandbox) -> None:
    stream = start_exec(sandbox.agent, sandbox.id, ["sh"], stdin=True, tty=True, rows=24, cols=80)
    with stream:
        output = stream.output()
        stream.write_stdin(b"stty size; tty\n")
        seen = _until(output, b"/dev/pts/")
        assert b"24 80" in seen
        stream.resize(50, 132)
        stream.write_stdin(b"stty size\n")
        assert b"50 132" in _until(output, b"50 132")
        stream.write_stdin(b"exit 4\n")
        rest = list(output)
        assert all(channel == 1 for channel, _ in rest)
        assert stream.exit_code == 4


def _until(output: object, marker: bytes) -> bytes:
    seen = b""
    for channel, data in output:  # type: ignore[attr-defined]
        assert channel == 1, "a tty has one output stream"
        seen += data
        if marker in seen:
            return seen
    raise AssertionError(f"{marker!r} never came; got {seen!r}")


def test_two_concurrent_execs(sandbox: Sandbox) -> None:
    """Each exec waits for a file the other one writes: run one after the other, both would fail."""
    results: dict[int, tuple[bytes, bytes, int]] = {}
    for leftover in ("/tmp/mark-5", "/tmp/mark-6"):
        (sandbox.rootfs / leftover.lstrip("/")).unlink(missing_ok=True)

    def one(n: int, other: int) -> None:
        script = (
            f"touch /tmp/mark-{n}; i=0; while [ ! -e /tmp/mark-{other} ]; do "
            f"i=$((i+1)); [ $i -gt 600 ] && exit 99; sleep 0.05; done; echo {n}; exit {n}"
        )
        results[n] = run(sandbox, ["sh", "-c", script])

    threads = [threading.Thread(target=one, args=pair) for pair in ((5, 6), (6, 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {5: (b"5\n", b"", 5), 6: (b"6\n", b"", 6)}


def test_a_missing_command_is_126_with_the_runtime_message(sandbox: Sandbox) -> None:
    _, err, code = run(sandbox, ["no-such-command"])
    assert code == 126
    assert b"no-such-command" in err


def test_exec_in_a_stopped_container_is_refused_clearly(sandbox: Sandbox, tmp_path: object) -> None:
    from tests.exec.conftest import exec_rootfs
    from tests.runtime.support import base_config, write_bundle

    bundle = tmp_path / "bundle"  # type: ignore[operator]
    exec_rootfs(bundle / "rootfs")
    write_bundle(bundle, base_config(["true"]), rootfs=bundle / "rootfs")
    rt = sandbox.runtime
    rt.create("exec-done", bundle)
    try:
        rt.start("exec-done")
        assert rt.wait("exec-done", timeout=20) == 0
        with pytest.raises(WrongState, match="'exec-done' is stopped, not running"):
            start_exec(rt.agent_for("exec-done"), "exec-done", ["true"])
    finally:
        rt.delete("exec-done", force=True)


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_terminal_session_whose_client_vanishes_is_hung_up(sandbox: Sandbox) -> None:
    stream = start_exec(sandbox.agent, sandbox.id, ["sh"], stdin=True, tty=True)
    output = stream.output()
    stream.write_stdin(b"echo ready; sleep 1234; echo after\n")
    _until(output, b"ready\r\n")
    deadline = time.monotonic() + 10
    while not _processes_running("sleep 1234"):
        assert time.monotonic() < deadline, "sleep never started"
        time.sleep(0.05)
    stream.close()  # the client goes away without a word
    deadline = time.monotonic() + 20
    while _processes_running("sleep 1234"):
        assert time.monotonic() < deadline, "the abandoned terminal session kept running"
        time.sleep(0.1)


def test_last_words_before_exit_arrive_and_a_leftover_child_does_not_hold_the_status(
    sandbox: Sandbox,
) -> None:
    # Quiet for longer than the idle allowance, then a last line just before exiting.
    assert run(sandbox, ["sh", "-c", "sleep 1.5; echo last; exit 6"]) == (b"last\n", b"", 6)
    # A background child keeps stdout open: the status still comes about a second after the exit.
    started = time.monotonic()
    assert run(sandbox, ["sh", "-c", "sleep 30 & echo hi"]) == (b"hi\n", b"", 0)
    assert time.monotonic() - started < 15
