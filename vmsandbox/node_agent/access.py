"""Who may read a sandbox's logs from the agent: the API server decides, as for ``kubectl logs``.

The caller's bearer token is checked with a TokenReview; the user it names must be allowed
``get`` on ``vmsandboxes/log`` in the sandbox's namespace (a SubjectAccessReview). The agent's
own service account needs ``create`` on both reviews, nothing more.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from vmsandbox.api.constants import GROUP, PLURAL
from vmsandbox.errors import VMSandboxError
from vmsandbox.kube import ApiError, Client
from vmsandbox.kube.paths import access_review_path, token_review_path

LOG_SUBRESOURCE = "log"
#: Seconds an allowed decision is reused for the same token and request, so that a burst of execs
#: does not cost two API round trips each (the kubelet caches its webhook decisions likewise).
#: Refusals are never cached: a grant takes effect at once, a revocation within this time.
ALLOWED_TTL = 10.0


class AccessDenied(VMSandboxError):
    """``status`` is the HTTP answer: 401 (who are you?) or 403 (not allowed)."""

    step = "authorization"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class LogAccess:
    """Checks callers against the API server (thread-safe: the HTTP server asks from many threads)."""

    def __init__(self, client: Client, timeout: float = 10.0) -> None:
        self.client = client
        self.timeout = timeout
        self._allowed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> dict[str, Any]:
        """The user (TokenReview ``status.user``) the ``Authorization`` header names; else AccessDenied."""
        token = bearer_token(authorization)
        if token is None:
            raise AccessDenied(401, "a bearer token is required")
        return self._authenticate(token)

    def check(self, authorization: str | None, namespace: str, name: str) -> str:
        """The caller's user name if they may read ``namespace/name``'s logs; else AccessDenied."""
        return self.check_subresource(authorization, namespace, name, "get", LOG_SUBRESOURCE)

    def check_subresource(
        self, authorization: str | None, namespace: str, name: str, verb: str, subresource: str
    ) -> str:
        """The caller's user name if they may ``verb`` the sandbox's ``subresource``; else AccessDenied."""
        token = bearer_token(authorization)
        if token is None:
            raise AccessDenied(401, "a bearer token is required")
        key = hashlib.sha256("\0".join((token, namespace, name, verb, subresource)).encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._allowed.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = self._authenticate(token)
        self._authorize(user, namespace, name, verb, subresource)
        username = str(user.get("username") or "")
        with self._lock:
            if len(self._allowed) > 4096:
                self._allowed = {k: v for k, v in self._allowed.items() if v[0] > now}
            self._allowed[key] = (now + ALLOWED_TTL, username)
        return username

    def _authenticate(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        review = self._review(token_review_path(), body, "token")
        status = review.get("status") or {}
        user = status.get("user")
        if not status.get("authenticated") or not isinstance(user, dict):
            raise AccessDenied(401, "the token is not valid")
        return user

    def _review(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self.client.request("POST", path, body=body, timeout=self.timeout)
        except ApiError:
            raise AccessDenied(503, f"the API server could not review the {what}") from None

    def _authorize(
        self,
        user: dict[str, Any],
        namespace: str,
        name: str,
        verb: str = "get",
        subresource: str = LOG_SUBRESOURCE,
    ) -> None:
        username = str(user.get("username") or "")
        spec: dict[str, Any] = {
            "user": username,
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": GROUP,
                "resource": PLURAL,
                "subresource": subresource,
                "name": name,
            },
        }
        for key in ("groups", "uid", "extra"):
            if user.get(key):
                spec[key] = user[key]
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        review = self._review(access_review_path(), body, "access")
        if not (review.get("status") or {}).get("allowed"):
            raise AccessDenied(
                403,
                f'user "{username}" cannot {verb} resource "{PLURAL}/{subresource}" in API group '
                f'"{GROUP}" in the namespace "{namespace}"',
            )
