"""Operators as real processes (``python -m vmsandbox.operator``), killable with SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.leaks import processes_mentioning
from tests.node_agent.support import unique
from tests.operator.harness import free_port
from vmsandbox.devcluster.binaries import CACHE_ENV, cache_dir
from vmsandbox.devcluster.cluster import LocalCluster
from vmsandbox.devcluster.devstack import log_tails

REPO = Path(__file__).resolve().parents[2]


#: Operator timings that make node loss, fail-over and retried placement happen within seconds;
#: a test adds its hypervisors and its node-loss grace.
QUICK_OPERATOR: dict[str, object] = {
    "agent_alive_seconds": 6,
    "lease_duration_seconds": 4,
    "renew_deadline_seconds": 3,
    "retry_period_seconds": 0.5,
    "sweep_seconds": 0.5,
    "unschedulable_backoff_seconds": 0.5,
    "unschedulable_backoff_max_seconds": 2,
}


class OperatorProcess:
    def __init__(
        self,
        kube: LocalCluster,
        namespace: str,
        identity: str,
        log_dir: Path,
        kubeconfig: Path | None = None,
        **settings: object,
    ) -> None:
        self.identity = identity
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "VMSANDBOX_OPERATOR_NAMESPACE": namespace,
            "VMSANDBOX_OPERATOR_IDENTITY": identity,
            "VMSANDBOX_OPERATOR_METRICS_HOST": "127.0.0.1",
            "VMSANDBOX_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "VMSANDBOX_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        }
        for key, value in settings.items():
            env[f"VMSANDBOX_OPERATOR_{key.upper()}"] = str(value)
        self.log_path = log_dir / f"operator-{identity}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmsandbox.operator",
                "--kubeconfig",
                str(kubeconfig or kube.kubeconfig_path),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def kill(self) -> None:
        """SIGKILL: no lease release, no cleanup, requests cut mid-flight."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_operator(
    kube: LocalCluster, namespace: str, log_dir: Path, kubeconfig: Path | None = None, **settings: object
) -> Iterator[OperatorProcess]:
    """An operator for the test's namespace; stopped at the end, it must exit with status 0."""
    op = OperatorProcess(kube, namespace, unique("op"), log_dir, kubeconfig, **settings)
    yield op
    code = op.stop()
    assert code == 0, f"operator exited with {code}:\n{op.log()[-4000:]}"


def label_writes(kube: LocalCluster, namespace: str, since: int = 0) -> Counter[tuple[str, str]]:
    """Successful writes to sandboxes' main endpoint per (sandbox, operator identity), from the request log.

    With no deletions or node loss in a test, the operator writes a sandbox's main endpoint only
    to record its placement (label + finalizer), so this counts placements.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for rec in kube.requests_made(since):
        if (
            rec.resource == "vmsandboxes"
            and rec.namespace == namespace
            and rec.subresource == ""
            and rec.method == "PATCH"
            and 200 <= rec.status < 300
            and rec.user_agent.startswith("vmsandbox-operator/")
        ):
            counts[(rec.name, rec.user_agent.split("/", 1)[1])] += 1
    return counts


class DevProcess:
    """``vmsandbox dev --hypervisor process`` as a newcomer starts it, with its output in a file.

    The API server binaries are the cached ones; dev's kubeconfig link lands under ``tmp_path``
    instead of ``~/.cache``.
    """

    def __init__(self, tmp_path: Path, registry_host: str, tag: str) -> None:
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"{tag}{os.getpid()}"
        self.out = tmp_path / "dev.out"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            CACHE_ENV: str(cache_dir()),
            "VMSANDBOX_AGENT_INSECURE_REGISTRIES": registry_host,
        }
        env.pop("KUBECONFIG", None)
        argv = [sys.executable, "-m", "vmsandbox", "dev", "--hypervisor", "process"]
        with self.out.open("wb") as sink:
            self.proc = subprocess.Popen(
                [*argv, "--workdir", str(self.workdir)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def text(self) -> str:
        return self.out.read_text()

    def logs(self) -> str:
        """The end of the operator's and the agent's logs in dev's workdir, for a failure message."""
        return log_tails(self.workdir, ("operator", "agent"), lines=40) or "(no logs yet)"

    def wait_ready(self, timeout: float = 120) -> str:
        """The kubeconfig path dev printed once ready; fails if dev exited instead."""
        deadline = time.monotonic() + timeout
        while "export KUBECONFIG=" not in self.text() and self.proc.poll() is None:
            assert time.monotonic() < deadline, f"dev not ready after {timeout}s:\n{self.text()[-3000:]}"
            time.sleep(0.1)
        assert self.proc.poll() is None, self.text()
        return next(
            line.split("=", 1)[1]
            for line in self.text().splitlines()
            if line.startswith("export KUBECONFIG=")
        )

    def interrupt(self) -> int:
        """Ctrl-C; returns dev's exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def leftovers(self) -> list[str]:
        """Processes still mentioning dev's workdir (then the workdir is removed)."""
        time.sleep(0.5)
        found = processes_mentioning(str(self.workdir))
        shutil.rmtree(self.workdir, ignore_errors=True)
        return found
