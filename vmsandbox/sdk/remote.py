"""The client end of a node agent's ``/exec`` (WebSocket, Kubernetes' remote-command protocol) and
``/files`` (HTTP) routes; the CLI and the SDK both speak through these.

Callers pass the agent's endpoint and the ``Authorization`` header the API server accepts: the
agent asks the API server who the caller is and whether they may ``create`` the subresource.
With ``api_path`` the endpoint is the API server itself, and the same requests go to the
aggregated group ``subresources.vmsandbox.io`` (the API server authorizes them with its RBAC).
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import requests
import websocket

from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import Connection, paths
from vmsandbox.sdk import transfer

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
SUBPROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]


class RemoteError(VMSandboxError):
    """The agent refused or failed an exec or file transfer; ``status`` is its HTTP answer, if any."""

    step = "agent"

    def __init__(self, detail: str, *, step: str | None = None, status: int | None = None) -> None:
        super().__init__(detail, step=step)
        self.status = status


@dataclass(frozen=True)
class Agent:
    """A node agent's base URL (or, with ``api_path``, the API server's) and the caller's
    credentials for it; ``verify`` and ``cert`` as ``requests`` takes them, for https. With a
    ``connection``, its credentials are read at each request (a service account's token rotates)."""

    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    api_path: bool = False
    verify: str | bool = True
    cert: str | tuple[str, str] | None = None
    connection: Connection | None = field(default=None, compare=False, repr=False)

    @classmethod
    def api_server(cls, connection: Connection) -> Agent:
        """The API server as the way in, with the credentials and TLS settings of ``connection``."""
        cert = (
            (connection.cert_file, connection.key_file)
            if connection.cert_file and connection.key_file
            else connection.cert_file
        )
        verify = False if connection.insecure else (connection.ca_file or True)
        return cls(connection.server, api_path=True, verify=verify, cert=cert, connection=connection)

    def auth(self) -> dict[str, str]:
        """The credentials to send now."""
        return self.connection.headers() if self.connection is not None else self.headers

    def url(self, route: str, namespace: str, name: str) -> str:
        if self.api_path:
            sub = "log" if route == "logs" else route
            return self.endpoint.rstrip("/") + paths.subresource_path(namespace, name, sub)
        ns, nm = quote(namespace, safe=""), quote(name, safe="")
        return f"{self.endpoint.rstrip('/')}/{route}/{ns}/{nm}"

    def sslopt(self) -> dict[str, Any]:
        """The same TLS settings for websocket-client, as a context reused across connections."""
        return {"context": transfer.tls_context(self.verify, self.cert)}


def exit_code_of(status: dict[str, Any]) -> int:
    """The exit code a channel-3 ``metav1.Status`` reports; raises when it reports an error instead."""
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    raise RemoteError(str(status.get("message") or status), step="exec")


class ExecSession:
    """One exec (or, with no command, an attach) over a WebSocket: send stdin, resize; iterate
    ``(channel, bytes)`` output."""

    def __init__(
        self, agent: Agent, namespace: str, name: str, command: list[str], *, stdin: bool, tty: bool
    ) -> None:
        query = [("command", c) for c in command] + [
            ("stdin", str(stdin).lower()),
            ("stdout", "true"),
            ("stderr", str(not tty).lower()),
            ("tty", str(tty).lower()),
        ]
        # No command: attach to the sandbox's main process instead.
        route = "exec" if command else "attach"
        url = agent.url(route, namespace, name).replace("http", "ws", 1) + "?" + urlencode(query)
        header = [f"{k}: {v}" for k, v in agent.auth().items()]
        try:
            self.ws = websocket.create_connection(
                url, header=header, subprotocols=SUBPROTOCOLS, timeout=30, sslopt=agent.sslopt()
            )
        except websocket.WebSocketBadStatusException as exc:
            body = (exc.resp_body or b"").decode(errors="replace").strip()
            raise RemoteError(body or str(exc), step="exec", status=exc.status_code) from None
        except (OSError, websocket.WebSocketException) as exc:
            raise RemoteError(f"cannot reach the agent at {agent.endpoint}: {exc}", step="exec") from None
        self.ws.settimeout(None)
        self.protocol = self.ws.getsubprotocol()
        self.exit_code: int | None = None

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_stdin(self, data: bytes) -> None:
        self.ws.send_binary(bytes([STDIN]) + data)

    def close_stdin(self) -> None:
        """End the command's input (the v5 close signal; v4 has none)."""
        if self.protocol == SUBPROTOCOLS[0]:
            self.ws.send_binary(bytes([CLOSE, STDIN]))

    def resize(self, rows: int, cols: int) -> None:
        self.ws.send_binary(bytes([RESIZE]) + json.dumps({"Width": cols, "Height": rows}).encode())

    def output(self) -> Iterator[tuple[int, bytes]]:
        """stdout (1) and stderr (2) in order, until the status sets :attr:`exit_code`."""
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (OSError, websocket.WebSocketException) as exc:
                raise RemoteError(f"the exec stream broke: {exc}", step="exec") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if self.exit_code is None:
                    raise RemoteError("the agent closed the exec stream without an exit status", step="exec")
                return
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel in (STDOUT, STDERR) and payload:
                yield channel, payload
            elif channel == STATUS:
                self.exit_code = exit_code_of(json.loads(payload))
                return

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close()


def _check(resp: requests.Response, step: str) -> None:
    if resp.status_code != 200:
        raise RemoteError(resp.text.strip() or f"HTTP {resp.status_code}", step=step, status=resp.status_code)


def _request(method: str, agent: Agent, namespace: str, name: str, **kw: Any) -> requests.Response:
    try:
        url = agent.url("files", namespace, name)
        return requests.request(method, url, headers=agent.auth(), verify=agent.verify, cert=agent.cert, **kw)
    except requests.RequestException as exc:
        raise RemoteError(f"cannot reach the agent at {agent.endpoint}: {exc}", step="files") from None


@contextlib.contextmanager
def read_path(
    agent: Agent, namespace: str, name: str, path: str
) -> Iterator[tuple[Literal["file", "dir"], Iterator[bytes]]]:
    """``(kind, chunks)``: a file's bytes, or a directory as a tar stream."""
    url = agent.url("files", namespace, name) + "?" + urlencode({"path": path})
    if transfer.proxied(url):
        resp = _request("GET", agent, namespace, name, params={"path": path}, stream=True, timeout=(10, None))
        with resp:
            _check(resp, "files")
            yield _kind(resp.headers.get("X-Vmsandbox-Kind")), _chunks(resp)
        return
    with _connection(agent, url) as conn:
        answer = _transferred(lambda: conn.download("GET"))
        _answered(answer)
        yield _kind(answer.getheader("X-Vmsandbox-Kind")), _pieces(answer)


def _kind(header: str | None) -> Literal["file", "dir"]:
    return "dir" if header == "dir" else "file"


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    try:
        yield from resp.iter_content(chunk_size=None)
    except (OSError, requests.RequestException) as exc:
        raise RemoteError(f"the read ended early: {exc}", step="files") from None


def _pieces(answer: http.client.HTTPResponse) -> Iterator[bytes]:
    try:
        yield from transfer.pieces(answer)
    except transfer.TransferError as exc:
        raise RemoteError(exc.detail, step="files") from None


@contextlib.contextmanager
def _connection(agent: Agent, url: str) -> Iterator[transfer.Connection]:
    conn = _transferred(lambda: transfer.Connection(url, agent.auth(), agent.verify, agent.cert))
    try:
        yield conn
    finally:
        conn.close()


T = TypeVar("T")


def _transferred(step: Callable[[], T]) -> T:
    try:
        return step()
    except transfer.TransferError as exc:
        raise RemoteError(f"cannot reach the agent: {exc.detail}", step="files", status=exc.status) from None


def _answered(answer: http.client.HTTPResponse) -> None:
    """Raise the agent's refusal (its body says why) unless it answered 200."""
    if answer.status == 200:
        return
    with contextlib.suppress(OSError, http.client.HTTPException):
        text = answer.read(64 * 1024).decode(errors="replace").strip()
    raise RemoteError(text or f"HTTP {answer.status}", step="files", status=answer.status)


def write_path(
    agent: Agent,
    namespace: str,
    name: str,
    path: str,
    data: transfer.Body,
    *,
    kind: Literal["file", "tar"] = "file",
    mode: int | None = None,
) -> None:
    """Write ``data`` (bytes, an open file, or pieces) to ``path``; a regular file goes by
    ``sendfile`` from its current position to its end."""
    params = {"path": path, "kind": kind}
    if mode is not None:
        params["mode"] = f"{mode:o}"
    url = agent.url("files", namespace, name) + "?" + urlencode(params)
    if transfer.proxied(url):
        resp = _request("PUT", agent, namespace, name, params=params, data=data, timeout=(10, None))
        _check(resp, "files")
        return
    with _connection(agent, url) as conn:
        answer = _transferred(lambda: conn.upload("PUT", data))
        _answered(answer)
        answer.read()


def list_path(agent: Agent, namespace: str, name: str, path: str) -> list[dict[str, Any]]:
    resp = _request("GET", agent, namespace, name, params={"path": path, "list": "true"}, timeout=60)
    _check(resp, "files")
    entries: list[dict[str, Any]] = resp.json()["entries"]
    return entries
