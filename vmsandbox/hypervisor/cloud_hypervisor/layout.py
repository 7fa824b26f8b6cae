"""Where one VM's files live inside its state directory (all owned by the driver)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.hypervisor.base import SERIAL_LOG_ENDPOINT, VMHandle, check_socket_path

API_ENDPOINT = "api_socket"
VSOCK_ENDPOINT = "vsock_socket"


class VmLayout(BaseModel):
    model_config = ConfigDict(frozen=True)

    state_dir: Path
    api_socket: Path
    vsock_socket: Path
    vmm_log: Path
    serial_log: Path
    handle: Path

    @classmethod
    def under(cls, state_dir: Path) -> VmLayout:
        """The layout for a new VM; refuses socket paths AF_UNIX cannot hold."""
        state_dir = state_dir.absolute()
        return cls(
            state_dir=state_dir,
            api_socket=check_socket_path(state_dir / "ch-api.sock"),
            vsock_socket=check_socket_path(state_dir / "ch-vsock.sock"),
            vmm_log=state_dir / "cloud-hypervisor.log",
            serial_log=state_dir / "serial.log",
            handle=state_dir / "handle.json",
        )

    @classmethod
    def of(cls, handle: VMHandle) -> VmLayout:
        """The layout recorded in a handle (the endpoints win over the defaults)."""
        base = cls.under(handle.state_dir)
        return base.model_copy(
            update={
                "api_socket": Path(handle.endpoints.get(API_ENDPOINT, base.api_socket)),
                "vsock_socket": Path(handle.endpoints.get(VSOCK_ENDPOINT, base.vsock_socket)),
            }
        )

    def endpoints(self) -> dict[str, str]:
        return {
            API_ENDPOINT: str(self.api_socket),
            VSOCK_ENDPOINT: str(self.vsock_socket),
            SERIAL_LOG_ENDPOINT: str(self.serial_log),
        }

    def sockets(self) -> list[Path]:
        """Every socket-like file the VMM may leave behind (v53 also keeps ``<api>.lock``)."""
        return [self.api_socket, Path(f"{self.api_socket}.lock"), self.vsock_socket]

    @property
    def vmm_status(self) -> Path:
        """Where the VMM's waiter writes its exit status (:mod:`vmsandbox.hypervisor.detached`)."""
        return self.vmm_log.with_name("cloud-hypervisor.status")

    def files(self) -> list[Path]:
        return [*self.sockets(), self.vmm_log, self.vmm_status, self.serial_log, self.handle]
