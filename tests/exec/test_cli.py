"""``vmsandbox exec`` / ``cp`` / ``ls`` (and the ``kubectl-vmsandbox`` plugin) as a user runs them:
subprocesses with the cluster's kubeconfig, a real agent, a real terminal for ``-it``."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.chart.helm import find_tool, missing
from tests.node_agent.support import AgentProcess, Cluster
from vmsandbox.devcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]


def program(plugin: bool = False) -> list[str]:
    """How to run the CLI (as kubectl's plugin): the installed entry point, else ``python -m``."""
    entry = Path(sys.executable).parent / ("kubectl-vmsandbox" if plugin else "vmsandbox")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "vmsandbox"]


def cli(
    kube: LocalCluster, *args: str, plugin: bool = False, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*program(plugin), "--kubeconfig", str(kube.kubeconfig_path), *args],
        capture_output=True,
        timeout=120,
        **kw,  # type: ignore[call-overload]
    )


def exec_it(program: list[str], kube: LocalCluster, namespace: str, name: str, *command: str) -> list[str]:
    """``vmsandbox exec -it`` (run as ``program``) of ``command`` in sandbox ``name``, with the
    test cluster's kubeconfig: what a user at a terminal types."""
    kubeconfig = str(kube.kubeconfig_path)
    return [*program, "--kubeconfig", kubeconfig, "exec", "-it", "-n", namespace, name, "--", *command]


@pytest.mark.kube
def test_exec_status_and_streams(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    _, name = running
    ns = cluster.namespace
    done = cli(kube, "exec", "-n", ns, name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    fed = cli(kube, "exec", "-i", "-n", ns, name, "--", "cat", input=b"piped\n" * 1000)
    assert (fed.returncode, fed.stdout) == (0, b"piped\n" * 1000)
    plugin = cli(kube, "exec", "-n", ns, name, "--", "sh", "-c", "kill -9 $$", plugin=True)
    assert plugin.returncode == 137
    missing = cli(kube, "exec", "-n", ns, "nope", "--", "true")
    assert missing.returncode == 1 and b"404" in missing.stderr


@pytest.mark.kube
def test_cp_round_trips_a_tree_and_a_file(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster, tmp_path: Path
) -> None:
    _, name = running
    ns = cluster.namespace
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    (src / "blob").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "link").symlink_to("sub/a.txt")
    assert cli(kube, "cp", "-n", ns, str(src), f"{name}:/copied").returncode == 0
    back = tmp_path / "back"
    done = cli(kube, "cp", "-n", ns, f"{name}:/copied", str(back))
    assert done.returncode == 0, done.stderr
    assert (back / "blob").read_bytes() == (src / "blob").read_bytes()
    assert (back / "sub" / "a.txt").read_text() == "a\n" and os.readlink(back / "link") == "sub/a.txt"
    one = tmp_path / "one.bin"
    assert cli(kube, "cp", "-n", ns, f"{name}:/copied/blob", str(one)).returncode == 0
    assert one.read_bytes() == (src / "blob").read_bytes()
    listing = cli(kube, "ls", "-n", ns, f"{name}:/copied")
    assert listing.stdout.decode().split("\n")[0].endswith(" blob")
    bad = cli(kube, "cp", "-n", ns, str(src), str(tmp_path / "x"))
    assert bad.returncode == 1 and b"exactly one of SRC and DST" in bad.stderr


def _read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never came; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


@pytest.mark.kube
def test_exec_it_is_a_real_terminal(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    """A pty plays the user's terminal: the prompt, a command, the window size and its change, Ctrl-C."""
    _, name = running
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    entry = Path(sys.executable).parent / "vmsandbox"
    proc = subprocess.Popen(
        exec_it([str(entry)], kube, cluster.namespace, name, "sh"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    try:
        _read_until(master, b"# ")  # the remote shell's prompt
        os.write(master, b"stty size\r")
        assert b"33 101" in _read_until(master, b"33 101")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        time.sleep(0.5)  # SIGWINCH reaches the CLI, which sends the new size
        os.write(master, b"stty size\r")
        assert b"40 120" in _read_until(master, b"40 120")
        os.write(master, b"sleep 30; echo not-interrupted\r")
        time.sleep(1)
        os.write(master, b"\x03")  # Ctrl-C goes to the remote terminal, not to the CLI
        os.write(master, b"echo after-$?\r")
        assert b"after-130" in _read_until(master, b"after-130")
        os.write(master, b"exit 7\r")
        assert proc.wait(30) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.kube
def test_kubectl_runs_the_plugin(
    running: tuple[AgentProcess, str], cluster: Cluster, kube: LocalCluster
) -> None:
    """``kubectl vmsandbox exec``: the real kubectl finds ``kubectl-vmsandbox`` on PATH and runs it."""
    kubectl = find_tool("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    assert kubectl is not None
    _, name = running
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kube.kubeconfig_path),
    }
    done = subprocess.run(
        [
            str(kubectl),
            "vmsandbox",
            "exec",
            "-n",
            cluster.namespace,
            name,
            "--",
            "sh",
            "-c",
            "echo via-kubectl; exit 3",
        ],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert (done.returncode, done.stdout) == (3, b"via-kubectl\n"), done.stderr
