"""Kubeconfig files for the local control plane (plain http to the front, bearer-token users)."""

from __future__ import annotations

import yaml


def render_kubeconfig(server: str, user: str, namespace: str = "default") -> str:
    """A one-context kubeconfig; the front treats the token as the user name."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"token": user}}],
        "contexts": [
            {"name": "devcluster", "context": {"cluster": "devcluster", "user": user, "namespace": namespace}}
        ],
        "current-context": "devcluster",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)
