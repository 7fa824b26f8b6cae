"""The root of every typed error the project raises.

Each layer subclasses :class:`VMSandboxError` with its own kinds; the user-facing text is
built once, in ``__str__``, from the step that failed and the detail, so that CLI output,
status messages and logs all say the same thing.
"""

from __future__ import annotations


class VMSandboxError(Exception):
    """An error a user can act on: names the step (or field) that failed and why."""

    step: str = "vmsandbox"

    def __init__(self, detail: str, *, step: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if step is not None:
            self.step = step

    def __str__(self) -> str:
        return f"{self.step}: {self.detail}"
