"""Errors of the local control plane, each naming the step that failed."""

from __future__ import annotations

from vmsandbox.errors import VMSandboxError


class DevClusterError(VMSandboxError):
    """The local control plane could not start, or an operation on it failed."""

    step = "devcluster"


class KubeBinariesUnavailable(DevClusterError):
    """The apiserver and etcd binaries are neither cached nor buildable on this machine."""

    step = "devcluster binaries"
