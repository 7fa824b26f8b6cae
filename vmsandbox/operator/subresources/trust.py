"""Whom the aggregated server believes: the API server's front-proxy client certificate only.

As kube-apiserver's requestheader authentication: the identity headers count only on a
connection whose client certificate was signed by the requestheader CA and, when the allowed
names are listed, carries one of them as its common name. A request without such a certificate
is refused (401) whatever headers it sends; a certificate from another CA fails the handshake.
The CA, names and header names come from ``kube-system/extension-apiserver-authentication``,
or from a CA file.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmsandbox.errors import VMSandboxError
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.paths import configmap_path

AUTH_CONFIGMAP = configmap_path("kube-system", "extension-apiserver-authentication")


class Unauthenticated(VMSandboxError):
    step = "authentication"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class RequestHeaderTrust:
    ca_pem: str
    allowed_names: tuple[str, ...] = ()
    user_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)

    @classmethod
    def from_file(cls, path: Path, allowed_names: tuple[str, ...] = ()) -> RequestHeaderTrust:
        return cls(ca_pem=path.read_text(), allowed_names=allowed_names)

    @classmethod
    async def from_configmap(cls, client: AsyncClient) -> RequestHeaderTrust:
        data = (await client.get(AUTH_CONFIGMAP)).get("data") or {}
        ca = data.get("requestheader-client-ca-file")
        if not ca:
            raise VMSandboxError(
                "extension-apiserver-authentication has no requestheader-client-ca-file", step="startup"
            )

        def strings(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            return tuple(str(v) for v in json.loads(raw)) if raw else default

        return cls(
            ca_pem=ca,
            allowed_names=strings("requestheader-allowed-names", ()),
            user_headers=strings("requestheader-username-headers", cls.user_headers),
            group_headers=strings("requestheader-group-headers", cls.group_headers),
        )

    def server_context(self, certfile: Path, keyfile: Path) -> ssl.SSLContext:
        """TLS for the server: its own certificate; client certificates checked against the CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        ctx.load_verify_locations(cadata=self.ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def user(self, peercert: dict[str, Any] | None, headers: Any) -> User:
        """The user the API server vouches for; Unauthenticated without a trusted certificate."""
        if not peercert:
            raise Unauthenticated("a client certificate from the API server's front proxy is required")
        names = [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
        if self.allowed_names and not set(names) & set(self.allowed_names):
            raise Unauthenticated(f"client certificate {names} is not an allowed front proxy")
        user = next((headers.get(h) for h in self.user_headers if headers.get(h)), None)
        if not user:
            raise Unauthenticated("the front proxy named no user")
        groups = tuple(g for h in self.group_headers for g in headers.getall(h, ()))
        return User(user, groups)
