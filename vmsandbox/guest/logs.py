"""The guest agent's log, which imports :mod:`logging` only when it first has something to say.

logging brings re, traceback, string and weakref with it: under emulation those imports are a
large share of the agent's start, and the agent has nothing to log before its first request.
:func:`configure` only records the level; the first message (or :func:`load`, which the agent
calls in the background once it listens) sets the handler up. A process that never calls
:func:`configure` (a host process importing a guest module) keeps its own logging untouched.
"""

from __future__ import annotations

NAME = "vmsandbox.guest"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(asctime)s guest %(levelname)s %(message)s"

_level: str | None = None
_loaded = False


def configure(level: str) -> None:
    """Log at ``level`` (one of :data:`LEVELS`) to stderr, from the first message on."""
    global _level, _loaded
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    _level, _loaded = level, False


def load() -> None:
    """Import and set up logging now (called off the start path, before it is needed)."""
    global _loaded
    if _loaded:
        return
    import logging
    import sys

    if _level is not None:
        # basicConfig takes logging's own lock and does nothing once the root has a handler.
        logging.basicConfig(level=_level, stream=sys.stderr, format=FORMAT)
    _loaded = True


class GuestLog:
    """The calls the guest makes on its logger, each loading logging on first use."""

    def debug(self, msg: str, *args: object) -> None:
        self._emit(10, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._emit(20, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(30, msg, args)

    @staticmethod
    def _emit(level: int, msg: str, args: tuple[object, ...]) -> None:
        import logging

        load()
        logging.getLogger(NAME).log(level, msg, *args)


log = GuestLog()
