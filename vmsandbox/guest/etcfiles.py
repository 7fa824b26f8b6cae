"""A sandbox's ``/etc/resolv.conf``, ``/etc/hostname`` and ``/etc/hosts``, given to each container.

As the kubelet does for a pod: the files live outside the image, once per sandbox, and every
container gets them bind-mounted over its own, so an image's stale resolver list (or none)
never decides where its names resolve. The resolvers are the ones the node makes reachable
to the sandbox; a sandbox without a network gets a resolv.conf naming none.
"""

from __future__ import annotations

import _socket
import os

from vmsandbox.errors import VMSandboxError
from vmsandbox.guest.names import valid_hostname

#: True only for type checkers; importing typing would cost the agent's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _address(value: str, what: str) -> str:
    """``value`` if it is an IPv4 or IPv6 address (checked by the C library: no import on boot)."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, value)
            return value
        except OSError:
            continue
    raise EtcFilesError(f"{what}: {value!r} is not an IP address")


class EtcFilesError(VMSandboxError):
    step = "sandbox files"


def replace_file(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` at once (mode 0644): a reader sees the old file or the new."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_in(directory: str, name: str, text: str) -> str:
    """:func:`replace_file` of ``directory/name``; returns its path."""
    path = os.path.join(directory, name)
    replace_file(path, text)
    return path


def write_sandbox_files(
    directory: str, hostname: str | None, dns: list[str] | None, ip: str | None
) -> dict[str, str]:
    """Write the files; returns ``{destination in the container: file}``.

    ``dns`` None leaves each image's resolv.conf alone (a sandbox made without the node's network
    plumbing, e.g. by hand); ``hostname`` None leaves hostname and hosts alone.
    """
    os.makedirs(directory, exist_ok=True)
    files: dict[str, str] = {}
    if dns is not None:
        servers = [_address(s, "resolvers") for s in dns]
        files["/etc/resolv.conf"] = _write_in(
            directory, "resolv.conf", "".join(f"nameserver {s}\n" for s in servers)
        )
    if hostname:
        if not valid_hostname(hostname):
            raise EtcFilesError(f"hostname {hostname!r} is not a valid host name")
        own = _address(ip, "address") if ip else "127.0.1.1"
        files["/etc/hostname"] = _write_in(directory, "hostname", f"{hostname}\n")
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n"
        files["/etc/hosts"] = _write_in(directory, "hosts", hosts)
    return files


def add_mounts(spec: dict[str, Any], files: dict[str, str]) -> None:
    """Bind ``files`` into ``spec``, except where the spec mounts something there itself."""
    mounts = spec.setdefault("mounts", [])
    if not isinstance(mounts, list):
        return
    taken = {m.get("destination") for m in mounts if isinstance(m, dict)}
    for destination, source in files.items():
        if destination not in taken:
            # Absolute now: the agent's state dir may be relative to its working directory.
            bind = {"destination": destination, "type": "bind", "source": os.path.abspath(source)}
            mounts.append({**bind, "options": ["rbind", "rprivate"]})
