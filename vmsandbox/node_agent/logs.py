"""Structured logs: one JSON object per line, carrying the sandbox's namespace/name when there is one."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

#: ``name`` is taken on a LogRecord (the logger's name), so the sandbox's travels as ``sandbox_name``.
_RENAMED = {"sandbox_name": "name"}
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_current = threading.local()


def bind_sandbox(namespace: str, name: str) -> None:
    """Name the sandbox this thread works for: every line it logs (runtime, images...) carries it."""
    _current.sandbox = (namespace, name)


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "msg": record.getMessage(),
        }
        bound = getattr(_current, "sandbox", None)
        if bound is not None and "namespace" not in record.__dict__:
            entry["namespace"], entry["name"] = bound
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[_RENAMED.get(key, key)] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(node: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The client's connection-pool chatter is not the agent's story.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


class SandboxLog(logging.LoggerAdapter[logging.Logger]):
    """A logger whose every line names the sandbox (``namespace``, ``name``)."""

    def __init__(self, logger: logging.Logger, namespace: str, name: str) -> None:
        super().__init__(logger, {"namespace": namespace, "sandbox_name": name})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs
