"""The Python SDK: create a sandbox, wait for it by a watch, run commands, move files, delete it.

    from vmsandbox.sdk import Client

    with Client(namespace="default") as client:
        box = client.create("demo", image="oci:/var/lib/vmsandbox-samples/busybox:1.36")
        result = box.run(["sh", "-c", "echo hi; exit 3"])   # result.stdout, .stderr, .exit_code

Sandboxes are ``VMSandbox`` objects created through the API server with the caller's kubeconfig;
commands and files go through the API server's aggregated group ``subresources.vmsandbox.io``
when it is served (RBAC: ``create`` on ``vmsandboxes/exec``, ``vmsandboxes/files`` there), else,
or with ``direct=True``, straight to the node agent running the sandbox, which asks the API server
whether the caller may (the same subresources of ``vmsandbox.io``). Every failure is a
:class:`SandboxError` naming the sandbox and the step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from vmsandbox import kube
from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    API_VERSION,
    KIND,
)
from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import ApiError, ConfigError, Connection
from vmsandbox.kube.paths import node_path, sandbox_path, subresource_group_path
from vmsandbox.sdk.remote import Agent, ExecSession, RemoteError, list_path, read_path, write_path

#: Sandbox phases after which it will never be Running again.
FINISHED = ("Succeeded", "Failed")
#: Served when the API server routes subresources.vmsandbox.io (the API path) somewhere.
USER_AGENT = "vmsandbox-sdk"


class SandboxError(VMSandboxError):
    """An SDK call failed; ``sandbox`` is ``namespace/name`` and ``step`` what was being done."""

    def __init__(self, sandbox: str, step: str, detail: str) -> None:
        super().__init__(f"sandbox {sandbox}: {detail}", step=step)
        self.sandbox = sandbox


@dataclass(frozen=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    exit_code: int

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def _connection(kubeconfig: str | None) -> Connection:
    """``kubeconfig``; without one, the pod's service account in a pod, else the default kubeconfig."""
    try:
        return Connection.load(Path(kubeconfig) if kubeconfig is not None else None)
    except ConfigError as exc:
        raise SandboxError("-", "kubeconfig", exc.detail) from None


class Client:
    """Sandboxes in one namespace, with the credentials of a kubeconfig (or the pod's service account)."""

    def __init__(
        self, namespace: str = "default", kubeconfig: str | None = None, *, direct: bool = False
    ) -> None:
        self.namespace = namespace
        self.connection = _connection(kubeconfig)
        self.kube = kube.Client(self.connection, user_agent=USER_AGENT)
        self.direct = direct
        self._api_path: Agent | Literal[False] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.kube.close()

    def create(
        self,
        name: str,
        image: str,
        command: list[str] | None = None,
        *,
        wait: bool = True,
        timeout: float = 180.0,
        **spec: Any,
    ) -> Sandbox:
        """Create the sandbox (``command`` defaults to ``sleep infinity``: it stays up for exec) and,
        unless ``wait`` is False, wait until it is Running."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"image": image, "command": command or ["sleep", "infinity"], **spec},
        }
        box = Sandbox(self, name)
        try:
            self.kube.create(sandbox_path(self.namespace), body)
        except ApiError as exc:
            raise box.error("create", exc) from None
        if wait:
            box.wait_running(timeout)
        return box

    def api_path(self) -> Agent | None:
        """The API server as the way in, if it serves subresources.vmsandbox.io (asked once)."""
        if self._api_path is None:
            try:
                self.kube.get(subresource_group_path(), timeout=10)
            except ApiError:
                self._api_path = False
            else:
                self._api_path = Agent.api_server(self.connection)
        return self._api_path or None

    def sandbox(self, name: str) -> Sandbox:
        """An existing sandbox (not checked until used)."""
        return Sandbox(self, name)


class Sandbox:
    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self.namespace = client.namespace
        self._agent: Agent | None = None

    def __repr__(self) -> str:
        return f"Sandbox({self.namespace}/{self.name})"

    def error(self, step: str, exc: BaseException | str) -> SandboxError:
        if isinstance(exc, ApiError):
            detail = f"{exc.status} {exc.message}" if exc.status else exc.message
        else:
            detail = exc.detail if isinstance(exc, VMSandboxError) else str(exc)
        return SandboxError(f"{self.namespace}/{self.name}", step, detail)

    def get(self) -> dict[str, Any]:
        try:
            return self.client.kube.get(self._path())
        except ApiError as exc:
            raise self.error("get", exc) from None

    def _path(self) -> str:
        return sandbox_path(self.namespace, self.name)

    def wait_running(self, timeout: float = 180.0) -> dict[str, Any]:
        """Block until the phase is Running: one read, then a watch from that resourceVersion (resumed
        if the connection drops); a finished or deleted sandbox, or the timeout, is an error."""
        deadline = time.monotonic() + timeout
        obj = self.get()
        while True:
            if self._settled(obj):
                return obj
            left = deadline - time.monotonic()
            if left <= 0:
                phase = (obj.get("status") or {}).get("phase") or "Pending"
                raise self.error("wait", f"not Running after {timeout:.0f}s (phase {phase})")
            obj = self._next_change(obj, left)

    def _settled(self, obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase in FINISHED:
            raise self.error("wait", f"is {phase}, not Running {status.get('message') or ''}".strip())
        return phase == "Running"

    def _events(self, obj: dict[str, Any], left: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """This sandbox's watch events after ``obj``'s resourceVersion, until the watch ends (a
        broken or expired watch, 410 included, just ends it: the caller reads afresh). The
        server sends this sandbox's events only; bookmarks, which name no object, are skipped."""
        stream = self.client.kube.watch(
            sandbox_path(self.namespace),
            obj["metadata"]["resourceVersion"],
            max(1, int(left)),
            field_selector=f"metadata.name={self.name}",
        )
        try:
            for event in stream:
                kind, changed = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":  # 410 Gone among them; the server ends the stream after it
                    break
                if (changed.get("metadata") or {}).get("name") == self.name:
                    yield kind, changed
            else:
                return
        except ApiError:
            pass
        time.sleep(0.2)  # a refused or failed watch: not again at once

    def _next_change(self, obj: dict[str, Any], left: float) -> dict[str, Any]:
        """The sandbox after its next change (or as it is, when the watch ends first)."""
        for kind, changed in self._events(obj, left):
            if kind == "DELETED":
                raise self.error("wait", "was deleted while waiting for it to run")
            if kind in ("ADDED", "MODIFIED"):
                return changed
        return self.get()

    def agent(self) -> Agent:
        """The node agent running this sandbox, with the client's credentials."""
        if self._agent is None and not self.client.direct:
            self._agent = self.client.api_path()
        if self._agent is None:
            obj = self.get()
            node = (obj.get("status") or {}).get("nodeName")
            if not node:
                raise self.error("agent", "is not scheduled to a node yet")
            try:
                node_obj = self.client.kube.get(node_path(node))
            except ApiError as exc:
                raise self.error("agent", exc) from None
            annotations = (node_obj.get("metadata") or {}).get("annotations") or {}
            endpoint = annotations.get(AGENT_ENDPOINT_ANNOTATION)
            if not endpoint:
                raise self.error("agent", f"node {node} publishes no agent endpoint")
            self._agent = Agent(endpoint, self.client.connection.headers())
        return self._agent

    # -- commands --------------------------------------------------------------------------

    def exec(self, command: list[str], *, stdin: bool = False, tty: bool = False) -> ExecSession:
        """A live exec: write stdin, resize, and iterate ``(channel, bytes)`` output yourself."""
        try:
            return ExecSession(self.agent(), self.namespace, self.name, command, stdin=stdin, tty=tty)
        except RemoteError as exc:
            raise self.error("exec", exc) from None

    def run(self, command: list[str], *, stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` to its end: its stdout, stderr and exit code."""
        out, err = bytearray(), bytearray()
        with self.exec(command, stdin=stdin is not None) as session:
            if stdin is not None:
                feeder = threading.Thread(target=_feed, args=(session, stdin), daemon=True)
                feeder.start()
            try:
                for channel, data in session.output():
                    (out if channel == 1 else err).extend(data)
            except RemoteError as exc:
                raise self.error("exec", exc) from None
            assert session.exit_code is not None
            return CommandResult(bytes(out), bytes(err), session.exit_code)

    def stream(self, command: list[str]) -> Iterator[tuple[Literal["stdout", "stderr"], bytes]]:
        """A long command's output as it comes; a non-zero exit ends it with a SandboxError."""
        with self.exec(command) as session:
            try:
                for channel, data in session.output():
                    yield ("stdout" if channel == 1 else "stderr"), data
            except RemoteError as exc:
                raise self.error("exec", exc) from None
            if session.exit_code:
                raise self.error("exec", f"{command[0]} exited with {session.exit_code}")

    # -- files -----------------------------------------------------------------------------

    def write(self, path: str, data: bytes | BinaryIO | Iterable[bytes], *, mode: int | None = None) -> None:
        """Write ``data`` to the file ``path``: bytes, pieces, or an open file (sent from its
        position to its end, by ``sendfile`` where the connection allows)."""
        try:
            write_path(self.agent(), self.namespace, self.name, path, data, mode=mode)
        except RemoteError as exc:
            raise self.error("write", exc) from None

    def read(self, path: str) -> bytes:
        """A file's bytes (a directory comes as a tar stream)."""
        try:
            with read_path(self.agent(), self.namespace, self.name, path) as (_, chunks):
                return b"".join(chunks)
        except RemoteError as exc:
            raise self.error("read", exc) from None

    def list(self, path: str) -> list[dict[str, Any]]:
        """Entries of a directory: name, kind (file, dir, symlink, other), size, mode, mtime, target."""
        try:
            return list_path(self.agent(), self.namespace, self.name, path)
        except RemoteError as exc:
            raise self.error("list", exc) from None

    def delete(self, *, wait: bool = True, timeout: float = 120.0) -> None:
        try:
            self.client.kube.delete(self._path())
        except ApiError as exc:
            if not exc.not_found:
                raise self.error("delete", exc) from None
            return
        if wait:
            self._wait_gone(timeout)

    def _wait_gone(self, timeout: float) -> None:
        """Block until the object is gone (its finalizers done): a read, then watches from it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self.client.kube.get_or_none(self._path())
            except ApiError as exc:
                raise self.error("delete", exc) from None
            if obj is None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error("delete", f"still present after {timeout:.0f}s")
            if self._deleted_after(obj, left):
                return

    def _deleted_after(self, obj: dict[str, Any], left: float) -> bool:
        """Watch from ``obj``'s resourceVersion: True once it is deleted, False if the watch ended."""
        return any(kind == "DELETED" for kind, _ in self._events(obj, left))


def _feed(session: ExecSession, data: bytes) -> None:
    try:
        session.send_stdin(data)
        session.close_stdin()
    except OSError:
        pass
