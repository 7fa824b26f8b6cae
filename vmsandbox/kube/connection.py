"""Where the API server is and who we are to it: a kubeconfig file or the in-cluster service account.

Every component (operator, node agent, CLI, SDK) loads its connection here, and every client of
this package builds its TLS context and credentials from it. The in-cluster token is re-read
from its file (kubelet rotates projected tokens), at most once a minute.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmsandbox.errors import VMSandboxError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0


class ConfigError(VMSandboxError):
    step = "kubeconfig"


@dataclass
class _TokenFile:
    path: Path
    token: str = ""
    read_at: float = -1e9
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> str:
        with self.lock:
            if time.monotonic() - self.read_at >= TOKEN_REREAD_SECONDS:
                # On a failed read the last token is kept; the server says when it stops working.
                with contextlib.suppress(OSError):
                    self.token = self.path.read_text().strip()
                self.read_at = time.monotonic()
            return self.token


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    _token_source: _TokenFile | None = field(default=None, compare=False, repr=False)
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, kubeconfig: Path | None = None) -> Connection:
        """From ``kubeconfig``; without one, the in-cluster service account when running in a
        pod, else ``$KUBECONFIG`` or ``~/.kube/config``."""
        in_pod = os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").is_file()
        if kubeconfig is None and in_pod:
            return cls.in_cluster()
        return cls.from_kubeconfig(kubeconfig)

    @classmethod
    def in_cluster(cls, directory: Path = SERVICE_ACCOUNT_DIR) -> Connection:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token, ca = directory / "token", directory / "ca.crt"
        if not host or not token.is_file():
            raise ConfigError(f"not running in a pod: no KUBERNETES_SERVICE_HOST or {token}")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return cls(
            server=server,
            ca_file=str(ca) if ca.is_file() else None,
            _token_source=_TokenFile(token),
        )

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None) -> Connection:
        """Parsed by the official client's loader (contexts, inline data, exec and token plugins)."""
        from kubernetes import config as kconfig
        from kubernetes.client import Configuration

        cfg = Configuration()
        try:
            kconfig.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig is not None else None, client_configuration=cfg
            )
        except (kconfig.ConfigException, OSError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
        raw = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        token = raw.split(" ", 1)[1] if raw and " " in raw else raw
        return cls(
            server=str(cfg.host).rstrip("/"),
            token=token or None,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure=not cfg.verify_ssl,
        )

    @property
    def tls(self) -> bool:
        return self.server.startswith("https")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The one TLS setting of every client of this connection, built once (loading a CA
        file costs milliseconds, the system store tens of them); None for plain http."""
        if not self.tls:
            return None
        if "tls" not in self._contexts:
            self._contexts["tls"] = self._new_ssl_context()
        return self._contexts["tls"]

    def _new_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer_token(self) -> str | None:
        """The token as of now (a service account's is re-read from its file)."""
        return (self._token_source.current() or None) if self._token_source is not None else self.token

    def headers(self) -> dict[str, str]:
        """Credentials to send with each request."""
        token = self.bearer_token()
        return {"Authorization": f"Bearer {token}"} if token else {}
