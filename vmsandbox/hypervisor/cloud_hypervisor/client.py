"""A small client for Cloud Hypervisor's REST API on its unix socket (requests-unixsocket).

It follows what the server actually does rather than what its OpenAPI document says where the
two differ: body-less actions get no body at all (the server answers 400 even to ``{}``),
``vm.add-disk`` may answer 200 with a ``PciDeviceInfo`` (hot-plug) or 204 (cold-add),
``vmm.shutdown`` answers 200 with an empty body, and error bodies are a JSON array of strings
(the error chain, top to root) on v47 and later, plain text before. ``vm.add-net`` takes the
tap's descriptors as SCM_RIGHTS on the request's own write, which requests cannot send: that
one call is written by hand on a connection of its own (see :mod:`.rawhttp`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import requests
import requests_unixsocket
from pydantic import BaseModel, TypeAdapter, ValidationError

from vmsandbox.hypervisor.cloud_hypervisor import rawhttp
from vmsandbox.hypervisor.cloud_hypervisor.errors import (
    ApiError,
    ApiProtocolError,
    ApiUnreachable,
)
from vmsandbox.hypervisor.cloud_hypervisor.responses import (
    PciDeviceInfo,
    VmCounters,
    VmInfo,
    VmmPingResponse,
)
from vmsandbox.hypervisor.cloud_hypervisor.vmconfig import (
    ApiBody,
    DiskConfig,
    NetConfig,
    RestoreConfig,
    VmConfig,
    VmRemoveDevice,
    VmSnapshotConfig,
)

API_ROOT = "/api/v1"
#: Kata's per-call budget; enough for every call except boot and hot-plug on a loaded host.
DEFAULT_CALL_TIMEOUT = 1.0

_M = TypeVar("_M", bound=BaseModel)


def error_messages(body: bytes) -> list[str]:
    """The server's error chain: a JSON array of strings, or the raw text of older servers."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except ValueError:
        return [text]
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return [text]


class CloudHypervisorClient:
    """One VMM's API. Keeps one keep-alive connection; not safe for concurrent use."""

    def __init__(self, api_socket: Path, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        self.api_socket = api_socket
        self.timeout = timeout
        self._base = f"http+unix://{quote(str(api_socket), safe='')}{API_ROOT}/"
        self._session = requests_unixsocket.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> CloudHypervisorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, endpoint: str, body: ApiBody | None = None, timeout: float | None = None
    ) -> requests.Response:
        data: bytes | None = None
        headers: dict[str, str] = {}
        if body is not None:
            data = json.dumps(body.body(), separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self._session.request(
                method,
                self._base + endpoint,
                data=data,
                headers=headers,
                timeout=self.timeout if timeout is None else timeout,
            )
        except requests.Timeout as exc:
            raise ApiUnreachable(method, endpoint, f"no answer within {timeout or self.timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise ApiUnreachable(method, endpoint, _root_cause(exc)) from exc
        if not 200 <= response.status_code < 300:
            raise ApiError(method, endpoint, response.status_code, error_messages(response.content))
        return response

    @staticmethod
    def _parse(endpoint: str, response: requests.Response, model: type[_M]) -> _M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            reason = f"{response.status_code} body is not a {model.__name__}: {exc}"
            raise ApiProtocolError(endpoint, reason) from exc

    def ping(self, timeout: float | None = None) -> VmmPingResponse:
        return self._parse("vmm.ping", self._call("GET", "vmm.ping", timeout=timeout), VmmPingResponse)

    def info(self) -> VmInfo:
        return self._parse("vm.info", self._call("GET", "vm.info"), VmInfo)

    def counters(self) -> VmCounters:
        response = self._call("GET", "vm.counters")
        try:
            return TypeAdapter(VmCounters).validate_json(response.content)
        except ValidationError as exc:
            raise ApiProtocolError("vm.counters", f"body is not a VmCounters map: {exc}") from exc

    def create(self, config: VmConfig, timeout: float | None = None) -> None:
        self._call("PUT", "vm.create", config, timeout=timeout)

    def boot(self, timeout: float | None = None) -> None:
        self._call("PUT", "vm.boot", timeout=timeout)

    def pause(self) -> None:
        self._call("PUT", "vm.pause")

    def resume(self) -> None:
        self._call("PUT", "vm.resume")

    def snapshot(self, config: VmSnapshotConfig, timeout: float | None = None) -> None:
        """Write the paused VM's state (204); the VM must be Paused."""
        self._call("PUT", "vm.snapshot", config, timeout=timeout)

    def restore(self, config: RestoreConfig, timeout: float | None = None) -> None:
        """Restore a snapshot into this VMM, which must hold no VM yet (204)."""
        self._call("PUT", "vm.restore", config, timeout=timeout)

    def shutdown(self) -> None:
        """Stop the guest; the config stays, so ``vm.info`` reports Created again."""
        self._call("PUT", "vm.shutdown")

    def delete(self) -> None:
        self._call("PUT", "vm.delete")

    def shutdown_vmm(self, timeout: float | None = None) -> None:
        """Delete the VM and make the VMM process exit (it removes its API socket)."""
        self._call("PUT", "vmm.shutdown", timeout=timeout)

    def add_disk(self, disk: DiskConfig, timeout: float | None = None) -> PciDeviceInfo | None:
        """Hot-plug (200 + where it landed) or, before boot, cold-add (204, no body)."""
        response = self._call("PUT", "vm.add-disk", disk, timeout=timeout)
        if response.status_code == 204 or not response.content:
            return None
        return self._parse("vm.add-disk", response, PciDeviceInfo)

    def add_net(self, net: NetConfig, fds: list[int], timeout: float | None = None) -> PciDeviceInfo | None:
        """Hot-plug a NIC on the taps ``fds`` (200 + where it landed), or cold-add it (204)."""
        wait = self.timeout if timeout is None else timeout
        status, content = rawhttp.put_with_fds(
            self.api_socket, f"{API_ROOT}/vm.add-net", net.body(), fds, wait
        )
        if not 200 <= status < 300:
            raise ApiError("PUT", "vm.add-net", status, error_messages(content))
        if status == 204 or not content:
            return None
        try:
            return PciDeviceInfo.model_validate_json(content)
        except ValidationError as exc:
            raise ApiProtocolError("vm.add-net", f"{status} body is not a PciDeviceInfo: {exc}") from exc

    def remove_device(self, device_id: str, timeout: float | None = None) -> None:
        """Hot-unplug (booted) or drop from the config (created); 204 either way."""
        self._call("PUT", "vm.remove-device", VmRemoveDevice(id=device_id), timeout=timeout)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's words (requests wraps the OSError several layers deep)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    return str(seen) or type(seen).__name__
