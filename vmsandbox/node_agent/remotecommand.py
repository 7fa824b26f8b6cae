"""Kubernetes' remote-command protocol over a WebSocket, relayed to an exec in the guest.

A message's first byte is its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final status (a
``metav1.Status``), 4 terminal resize (``{"Width":..,"Height":..}``), and in ``v5`` 255 to close
the channel named by the next byte. The guest's stream chunks use the same numbers, so the relay
copies payloads and only turns the exit code into the status object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs

from vmsandbox.guest import streams
from vmsandbox.guest.wire import ProtocolError
from vmsandbox.node_agent.websocket import WebSocket, WebSocketError
from vmsandbox.runtime.errors import RuntimeError_
from vmsandbox.runtime.streams import AttachStream, ExecStream

Stream = ExecStream | AttachStream

log = logging.getLogger("vmsandbox.node_agent.exec")

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
#: Ours, best first.
SUBPROTOCOLS = (V5, V4)
_TRUE = ("true", "1")
_BOOLS = ("true", "false", "1", "0")


class BadQuery(ValueError):
    pass


@dataclass(frozen=True)
class ExecQuery:
    command: list[str]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def _flag(params: dict[str, list[str]], name: str, default: bool) -> bool:
    if name not in params:
        return default
    value = params[name][-1].lower()
    if value not in _BOOLS:
        raise BadQuery(f"{name}: must be true or false")
    return value in _TRUE


def parse_exec_query(query: str) -> ExecQuery:
    """The options of ``/exec/...?command=..&command=..&stdin=..&stdout=..&stderr=..&tty=..``."""
    params = parse_qs(query, keep_blank_values=True)
    command = params.get("command", [])
    if not command or not command[0]:
        raise BadQuery("command: at least one command= parameter is required")
    tty = _flag(params, "tty", False)
    return ExecQuery(
        command=command,
        stdin=_flag(params, "stdin", False),
        stdout=_flag(params, "stdout", True),
        # A terminal merges stderr into its one output stream.
        stderr=_flag(params, "stderr", True) and not tty,
        tty=tty,
    )


def status_message(exit_code: int | None, error: str | None = None) -> bytes:
    """The channel-3 ``metav1.Status`` kubelet sends at the end of an exec."""
    if error is not None:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": error,
            "reason": "InternalError",
            "code": 500,
        }
    elif exit_code == 0:
        status = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit code {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    return bytes([streams.STATUS]) + json.dumps(status).encode()


def parse_attach_query(query: str) -> ExecQuery:
    """``/attach/...?stdin=..&stdout=..&stderr=..&tty=..``: as exec, without a command."""
    params = parse_qs(query, keep_blank_values=True)
    tty = _flag(params, "tty", False)
    return ExecQuery(
        command=[],
        stdin=_flag(params, "stdin", False),
        stdout=_flag(params, "stdout", True),
        stderr=_flag(params, "stderr", True) and not tty,
        tty=tty,
    )


def relay(ws: WebSocket, stream: Stream, query: ExecQuery) -> int | None:
    """Copy the client's input to the exec and its output back, then send the status; the exit code."""
    threading.Thread(target=_client_input, args=(ws, stream, query), daemon=True, name="exec-ws-in").start()
    error: str | None = None
    try:
        for channel, data in stream.output():
            if (channel == streams.STDOUT and query.stdout) or (channel == streams.STDERR and query.stderr):
                ws.send(bytes([channel]) + data)
    except RuntimeError_ as exc:
        error = str(exc)
    except OSError as exc:  # the client went away: the exec's end of input follows
        log.debug("exec client gone: %s", exc)
        return None
    try:
        ws.send(status_message(stream.exit_code, error))
    except OSError:
        return stream.exit_code
    ws.close()
    return stream.exit_code


def _client_input(ws: WebSocket, stream: Stream, query: ExecQuery) -> None:
    try:
        while True:
            message = ws.receive()
            if message is None:
                break
            if not message:
                continue
            channel, payload = message[0], message[1:]
            if channel == streams.STDIN and query.stdin:
                if payload:
                    stream.write_stdin(payload)
            elif channel == streams.RESIZE and query.tty:
                stream.resize(*streams.parse_resize(payload))
            elif channel == streams.CLOSE and payload[:1] == bytes([streams.STDIN]):
                stream.close_stdin()
    except (OSError, WebSocketError, ProtocolError) as exc:
        log.debug("exec client input ended: %s", exc)
    # The client is gone or closed: the process sees the end of its input.
    with contextlib.suppress(OSError):
        stream.close_stdin()
