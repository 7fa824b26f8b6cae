"""Kubeconfig files for the local control plane (the front over TLS, bearer-token users)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def render_kubeconfig(server: str, user: str, namespace: str = "default", ca: Path | None = None) -> str:
    """A one-context kubeconfig; the front treats the token as the user name. An https ``server``
    needs ``ca``, the front's certificate (client-go sends tokens only over TLS). The certificate
    is embedded, so the file works wherever it is mounted (a container, another machine)."""
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": user}}],
        "contexts": [
            {"name": "devcluster", "context": {"cluster": "devcluster", "user": user, "namespace": namespace}}
        ],
        "current-context": "devcluster",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)
