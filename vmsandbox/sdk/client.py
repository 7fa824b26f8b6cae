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
from typing import Any, BinaryIO, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as kconfig
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from vmsandbox.api.constants import (
    AGENT_ENDPOINT_ANNOTATION,
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SUBRESOURCE_GROUP,
    SUBRESOURCE_VERSION,
    VERSION,
)
from vmsandbox.errors import VMSandboxError
from vmsandbox.sdk.remote import Agent, ExecSession, RemoteError, list_path, read_path, write_path

#: Sandbox phases after which it will never be Running again.
FINISHED = ("Succeeded", "Failed")


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


def _api_client(kubeconfig: str | None) -> k8s.ApiClient:
    try:
        if kubeconfig is not None:
            return kconfig.new_client_from_config(config_file=kubeconfig)
        try:
            kconfig.load_incluster_config()
            return k8s.ApiClient()
        except kconfig.ConfigException:
            return kconfig.new_client_from_config()
    except (kconfig.ConfigException, OSError) as exc:
        raise SandboxError("-", "kubeconfig", str(exc)) from None


class Client:
    """Sandboxes in one namespace, with the credentials of a kubeconfig (or the pod's service account)."""

    def __init__(
        self, namespace: str = "default", kubeconfig: str | None = None, *, direct: bool = False
    ) -> None:
        self.namespace = namespace
        self.api_client = _api_client(kubeconfig)
        self.direct = direct
        self._api_path: Agent | Literal[False] | None = None
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api_client.close()

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
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        except ApiException as exc:
            raise box.error("create", exc) from None
        if wait:
            box.wait_running(timeout)
        return box

    def api_path(self) -> Agent | None:
        """The API server as the way in, if it serves subresources.vmsandbox.io (asked once)."""
        if self._api_path is None:
            cfg = self.api_client.configuration
            agent = Agent(
                cfg.host,
                _auth_headers(self.api_client),
                api_path=True,
                verify=(cfg.ssl_ca_cert or True) if cfg.verify_ssl else False,
                cert=(cfg.cert_file, cfg.key_file) if cfg.cert_file else None,
            )
            try:
                resp = self.api_client.call_api(
                    "GET",
                    f"{cfg.host}/apis/{SUBRESOURCE_GROUP}/{SUBRESOURCE_VERSION}",
                    header_params={"Accept": "application/json", **agent.headers},
                    _request_timeout=10,
                )
                resp.read()
            except (ApiException, urllib3.exceptions.HTTPError):
                self._api_path = False
            else:
                self._api_path = agent if resp.status == 200 else False
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
        if isinstance(exc, ApiException):
            detail = f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}"
        else:
            detail = exc.detail if isinstance(exc, VMSandboxError) else str(exc)
        return SandboxError(f"{self.namespace}/{self.name}", step, detail)

    def get(self) -> dict[str, Any]:
        try:
            obj: Any = self.client.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as exc:
            raise self.error("get", exc) from None
        return dict(obj)

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
        broken or expired watch, 410 included, just ends it: the caller reads afresh)."""
        stream = watch.Watch()
        try:
            yield from (
                (str(event["type"]), dict(event["object"]))
                for event in stream.stream(
                    self.client.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=obj["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, int(left)),
                )
            )
        except (ApiException, urllib3.exceptions.HTTPError):
            time.sleep(0.2)
        finally:
            stream.stop()

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
                node_obj = self.client.core.read_node(node)
            except ApiException as exc:
                raise self.error("agent", exc) from None
            meta = node_obj.metadata
            endpoint = ((meta.annotations if meta else None) or {}).get(AGENT_ENDPOINT_ANNOTATION)
            if not endpoint:
                raise self.error("agent", f"node {node} publishes no agent endpoint")
            self._agent = Agent(endpoint, _auth_headers(self.client.api_client))
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
            self.client.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise self.error("delete", exc) from None
            return
        if wait:
            self._wait_gone(timeout)

    def _wait_gone(self, timeout: float) -> None:
        """Block until the object is gone (its finalizers done): a read, then watches from it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj: Any = self.client.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise self.error("delete", exc) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error("delete", f"still present after {timeout:.0f}s")
            if self._deleted_after(dict(obj), left):
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


def _auth_headers(api_client: k8s.ApiClient) -> dict[str, str]:
    """The Authorization header the API client sends, for the agent to review."""
    cfg = api_client.configuration
    value = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    if not value:
        return {}
    return {"Authorization": value if " " in value else f"Bearer {value}"}
