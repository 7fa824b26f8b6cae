"""Running ``ip`` and ``nft``: one place that turns a failed command into a :class:`NetworkError`.

:class:`Host` is the network namespace the node's plumbing lives in: the agent's own (the
node's, in a cluster), or one named by ``networkNamespace`` for ``vmsandbox dev`` and tests,
entered with ``nsenter --net`` for each command.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmsandbox.node_agent.network import libnft
from vmsandbox.node_agent.network.errors import NetworkError


@dataclass
class Pending:
    """A command started by :meth:`Host.spawn`; :meth:`wait` raises as :meth:`Host.run` would."""

    proc: subprocess.Popen[str]
    argv: list[str]
    stdin: str
    step: str

    def wait(self) -> str:
        try:
            out, err = self.proc.communicate(self.stdin, timeout=30)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.communicate()
            raise NetworkError(f"{self.argv[0]}: {exc}", step=self.step) from exc
        if self.proc.returncode != 0:
            detail = (err or out).strip() or f"exit status {self.proc.returncode}"
            raise NetworkError(f"{' '.join(self.argv[:6])}: {detail}", step=self.step)
        return out


@dataclass
class Done:
    """A step that already ran (in-process); :meth:`wait` raises its error, as :class:`Pending` would."""

    output: str = ""
    error: NetworkError | None = None

    def wait(self) -> str:
        if self.error is not None:
            raise self.error
        return self.output


@dataclass(frozen=True)
class Host:
    netns: Path | None = None

    def _argv(self, argv: list[str]) -> list[str]:
        return argv if self.netns is None else ["nsenter", f"--net={self.netns}", *argv]

    def run(self, argv: list[str], *, stdin: str | None = None, step: str = "network") -> str:
        """Run one command; its stderr becomes the error's detail."""
        try:
            done = subprocess.run(
                self._argv(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"{argv[0]}: {exc}", step=step) from exc
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise NetworkError(f"{' '.join(argv[:6])}: {detail}", step=step)
        return done.stdout

    def spawn(self, argv: list[str], *, stdin: str, step: str) -> Pending:
        """Start a command now and check it later, so independent steps overlap."""
        try:
            proc = subprocess.Popen(
                self._argv(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            raise NetworkError(f"{argv[0]}: {exc}", step=step) from exc
        return Pending(proc, argv, stdin, step)

    def nft(self, script: str, *, step: str = "network policy", json_output: bool = False) -> str:
        """One nftables transaction: in-process when this is the agent's own namespace."""
        lib = libnft.shared() if self.netns is None else None
        if lib is None:
            if json_output:  # ``nft -j -f`` prints nothing for list commands: give it argv
                return self.run(["nft", "-j", *script.split()], step=step)
            return self.run(["nft", "-f", "-"], stdin=script, step=step)
        status, out, err = lib.run(script, json_output=json_output)
        if status != 0:
            raise NetworkError(f"nft: {err.strip() or f'status {status}'}", step=step)
        return out

    def nft_start(self, script: str, *, step: str = "network policy") -> Pending | Done:
        """:meth:`nft` that overlaps with other steps when it has to start a process."""
        if self.netns is not None or libnft.shared() is None:
            return self.spawn(["nft", "-f", "-"], stdin=script, step=step)
        try:
            return Done(self.nft(script, step=step))
        except NetworkError as exc:
            return Done(error=exc)

    def succeeds(self, argv: list[str]) -> bool:
        """Whether a probing command (does this link exist?) exits 0."""
        try:
            done = subprocess.run(self._argv(argv), capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def enable_forwarding(self, *, ipv6: bool = False) -> None:
        """IPv4 (and IPv6) forwarding in this namespace (``/proc/sys/net`` is the reader's
        namespace's)."""
        files = ["/proc/sys/net/ipv4/ip_forward"]
        if ipv6:
            files.append("/proc/sys/net/ipv6/conf/all/forwarding")
        if self.netns is None:
            for name in files:
                Path(name).write_text("1\n")
        else:
            self.run(["sh", "-c", " && ".join(f"echo 1 > {name}" for name in files)])
