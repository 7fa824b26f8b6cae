"""The one error every API-server call raises, typed by what the caller may do about it."""

from __future__ import annotations

from vmsandbox.errors import VMSandboxError

#: Answers that say "not now" rather than "no"; 0 stands for "no answer at all".
RETRYABLE_STATUSES = frozenset({0, 408, 425, 429, 500, 502, 503, 504})


class ApiError(VMSandboxError):
    """A request the API server refused or never answered (``status`` 0)."""

    step = "kubernetes api"

    def __init__(
        self, method: str, path: str, status: int, message: str, *, retry_after: float = 0.0
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        #: Seconds the server asked the client to wait (``Retry-After``), 0 when it named none.
        self.retry_after = retry_after
        super().__init__(f"{method} {path}: {status} {message}")

    @property
    def conflict(self) -> bool:
        """A lost compare-and-swap: a stale resourceVersion or an existing name (409), or a
        patch whose ``test`` failed (the API server answers those 422; a 422 to a PUT or POST
        is an invalid object, which no retry mends)."""
        return self.status == 409 or (self.status == 422 and self.method == "PATCH")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        """A watch's resourceVersion was compacted away: list again."""
        return self.status == 410

    @property
    def retryable(self) -> bool:
        """Repeating the same request later may succeed (the server was down, busy or failing)."""
        return self.status in RETRYABLE_STATUSES
