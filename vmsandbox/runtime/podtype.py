"""Whether a bundle is a pod sandbox or a container joining one, read from CRI annotations.

Keys are tried in the order containerd, CRI-O, dockershim; the first present decides, and its
value may be any of the known spellings. No key at all means a one-container pod sandbox.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from vmsandbox.runtime.errors import InvalidConfig, InvalidId
from vmsandbox.runtime.ids import validate_id

TYPE_KEYS = (
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
    "io.kubernetes.docker.type",
)
SANDBOX_ID_KEYS = (
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
    "io.kubernetes.sandbox.id",
)
SANDBOX_VALUES = ("sandbox", "podsandbox")
CONTAINER_VALUES = ("container",)


class PodRole(BaseModel):
    kind: Literal["sandbox", "container"]
    #: For a pod container, the id of the sandbox whose VM it joins; for a sandbox, its own id.
    sandbox_id: str


def _sandbox_id(key: str, value: str) -> str:
    """The id becomes a path under the state root: it obeys the same rules as a container id."""
    try:
        return validate_id(value)
    except InvalidId as exc:
        raise InvalidConfig(exc.detail, step=f"config.json: annotations.{key}") from None


def pod_role(container_id: str, annotations: dict[str, str]) -> PodRole:
    for key in TYPE_KEYS:
        if key not in annotations:
            continue
        value = annotations[key]
        if value in SANDBOX_VALUES:
            return PodRole(kind="sandbox", sandbox_id=container_id)
        if value in CONTAINER_VALUES:
            for id_key in SANDBOX_ID_KEYS:
                if annotations.get(id_key):
                    return PodRole(kind="container", sandbox_id=_sandbox_id(id_key, annotations[id_key]))
            raise InvalidConfig(
                f"a pod container needs its sandbox id in one of {', '.join(SANDBOX_ID_KEYS)}",
                step="config.json: annotations",
            )
        raise InvalidConfig(f"unknown container type {value!r}", step=f"config.json: annotations.{key}")
    return PodRole(kind="sandbox", sandbox_id=container_id)
