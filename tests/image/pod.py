"""A rendered Deployment or DaemonSet turned into the ``podman run`` that runs its container as kubelet would.

Everything the container definition says is carried over: command and args, environment (values
and the downward-API fields the chart uses), every volume mount (hostPath, emptyDir, configMap)
at its path and read-only flag, the pod's and the container's security context (user, groups,
privileged, capabilities, no-new-privileges, read-only root), ``hostPID`` and ``hostNetwork``.
A field this translation does not know fails loudly rather than being dropped.

What a node does and this does not: containers always share the host's network namespace (the
tests listen on loopback only), resources and probes are not enforced (the tests call the probes
themselves), and the service account token is replaced by a kubeconfig the caller mounts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnsupportedField(AssertionError):
    """The chart uses a field this translation cannot reproduce: the test must learn it first."""


@dataclass(frozen=True)
class PodIdentity:
    """What the downward API would give the pod."""

    name: str
    namespace: str
    node: str
    ip: str = "127.0.0.1"

    def field(self, path: str) -> str:
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "spec.nodeName": self.node,
            "status.podIP": self.ip,
        }
        if path not in values:
            raise UnsupportedField(f"fieldRef {path}")
        return values[path]


@dataclass
class ContainerRun:
    """``podman run`` arguments for one container of a rendered workload."""

    name: str
    image: str
    flags: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    #: The effective user the chart asks for (None: the image's).
    user: str | None = None
    read_only_root: bool = False

    def command(self) -> list[str]:
        return ["run", "--detach", "--name", self.name, *self.flags, self.image, *self.argv]


def _volume_source(
    volume: dict[str, Any], workdir: Path, config_maps: dict[str, dict[str, str]]
) -> tuple[str, str | None]:
    """The host side of one pod volume, made ready; also the hostPath type when it is one."""
    name = volume["name"]
    if "hostPath" in volume:
        host = volume["hostPath"]
        path, kind = host["path"], host.get("type", "")
        if kind == "DirectoryOrCreate":
            Path(path).mkdir(parents=True, exist_ok=True)
        elif kind == "CharDevice" and not Path(path).is_char_device():
            return "", kind  # kubelet would refuse to start the pod; the caller decides
        elif kind not in ("", "Directory", "CharDevice"):
            raise UnsupportedField(f"hostPath type {kind} (volume {name})")
        return path, kind
    if "emptyDir" in volume:
        path = workdir / "emptydir" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # kubelet makes emptyDirs world-writable
        return str(path), None
    if "configMap" in volume:
        cm = volume["configMap"]["name"]
        if cm not in config_maps:
            raise AssertionError(f"volume {name} mounts ConfigMap {cm}, which the chart did not render")
        path = workdir / "configmap" / name
        path.mkdir(parents=True, exist_ok=True)
        for key, text in config_maps[cm].items():
            (path / key).write_text(text)
        return str(path), None
    raise UnsupportedField(f"volume {name}: {sorted(set(volume) - {'name'})}")


def _security_flags(
    pod: dict[str, Any], container: dict[str, Any], image_user: str
) -> tuple[list[str], str | None]:
    pod_sc = pod.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    known = {
        "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile",
        "privileged", "allowPrivilegeEscalation", "capabilities", "readOnlyRootFilesystem",
    }  # fmt: skip
    unknown = set(sc) - known
    if unknown:
        raise UnsupportedField(f"securityContext {sorted(unknown)}")
    flags: list[str] = []
    user: str | None = None
    if "runAsUser" in sc:
        user = str(sc["runAsUser"]) + (f":{sc['runAsGroup']}" if "runAsGroup" in sc else "")
        flags += ["--user", user]
    if sc.get("runAsNonRoot"):
        effective = (user or image_user or "0").split(":")[0]
        # kubelet refuses to start a non-numeric or root user under runAsNonRoot.
        assert effective.isdigit() and int(effective) != 0, f"runAsNonRoot but the user is {effective!r}"
    for group in [sc["fsGroup"]] if "fsGroup" in sc else []:
        flags += ["--group-add", str(group)]
    for group in sc.get("supplementalGroups") or []:
        flags += ["--group-add", str(group)]
    if sc.get("privileged"):
        flags.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif seccomp not in (None, "RuntimeDefault"):
        raise UnsupportedField(f"seccompProfile {seccomp}")
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        flags += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        flags += ["--cap-add", cap]
    if sc.get("readOnlyRootFilesystem"):
        # Only what the pod mounts is writable, as on a node (no podman tmpfs on /tmp, /run).
        flags += ["--read-only", "--read-only-tmpfs=false"]
    return flags, user


def container_run(
    workload: dict[str, Any],
    *,
    identity: PodIdentity,
    workdir: Path,
    config_maps: dict[str, dict[str, str]],
    image_user: str,
    skip_absent_devices: bool = True,
) -> ContainerRun:
    """The podman run for the first container of ``workload`` (a rendered Deployment/DaemonSet)."""
    pod = workload["spec"]["template"]["spec"]
    containers = pod["containers"]
    assert len(containers) == 1, "one container per pod in this chart"
    container = containers[0]
    if pod.get("initContainers"):
        raise UnsupportedField("initContainers")
    run = ContainerRun(name=identity.name, image=container["image"], spec=container)
    run.flags += ["--network", "host", "--pull", "never", "--hostname", identity.name]
    if pod.get("hostPID"):
        run.flags += ["--pid", "host"]
    if pod.get("hostIPC"):
        run.flags += ["--ipc", "host"]
    sec, run.user = _security_flags(pod, container, image_user)
    run.flags += sec
    run.read_only_root = "--read-only" in sec
    for env in container.get("env") or []:
        if "value" in env:
            value = str(env["value"])
        elif "fieldRef" in (env.get("valueFrom") or {}):
            value = identity.field(env["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise UnsupportedField(f"env {env['name']}: {env}")
        run.flags += ["--env", f"{env['name']}={value}"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("mountPropagation"):
            raise UnsupportedField(f"volumeMount {mount}")
        source, kind = _volume_source(volumes[mount["name"]], workdir, config_maps)
        if not source:
            assert skip_absent_devices, f"{mount['name']}: hostPath of type {kind} is missing on this node"
            continue
        if kind == "CharDevice":
            run.flags += ["--device", f"{source}:{mount['mountPath']}"]
            continue
        run.flags += ["--volume", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
    for port in container.get("ports") or []:
        run.ports[port.get("name") or str(port["containerPort"])] = int(port["containerPort"])
    command = container.get("command")
    if command:
        run.flags += ["--entrypoint", json.dumps(command)]
    run.argv = [str(a) for a in container.get("args") or []]
    if os.environ.get("VMSANDBOX_IMAGE_TEST_DEBUG"):
        print("podman", " ".join(run.command()))
    return run


def config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: dict(o.get("data") or {}) for o in objects if o.get("kind") == "ConfigMap"}
