"""The runtime library as the agent uses it: one state root, one :class:`Runtime` per backend."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

from vmsandbox.hypervisor.base import HypervisorError
from vmsandbox.hypervisor.config import HypervisorConfig
from vmsandbox.hypervisor.procs import signal_recorded
from vmsandbox.runtime import ContainerState, Runtime, RuntimeError_
from vmsandbox.runtime.errors import NotFound
from vmsandbox.runtime.logfiles import LogLimits

log = logging.getLogger("vmsandbox.node_agent.runtimes")


class Runtimes:
    """Containers of every backend share the root: state records name their own hypervisor."""

    def __init__(
        self,
        root: Path,
        config: HypervisorConfig,
        hypervisors: list[str],
        log_limits: LogLimits | None = None,
    ) -> None:
        if "relay_forkserver" not in config.model_fields_set:  # the agent lives long: worth a server
            config = config.model_copy(update={"relay_forkserver": True})
        self.root = root
        self.config = config
        self._by_name = {name: Runtime(root, name, config, log_limits) for name in hypervisors}
        self.any = next(iter(self._by_name.values()))

    def for_hypervisor(self, name: str) -> Runtime:
        return self._by_name[name]

    def state(self, container_id: str) -> ContainerState | None:
        try:
            return self.any.state(container_id)
        except NotFound:
            return None

    def ids(self) -> list[str]:
        return self.any.store.ids()

    def sweep(self) -> None:
        """Clean up after creates whose creator died (a previous agent killed mid-create)."""
        try:
            for line in self.any.sweep():
                log.warning("sweep: %s", line)
        except (OSError, RuntimeError_, HypervisorError) as exc:
            log.error("sweeping interrupted creates failed: %s", exc)

    def vm_alive(self, state: ContainerState) -> bool:
        if state.vm is None:
            return False
        return self.any.driver(state.hypervisor).alive(state.vm)

    def destroy(self, container_id: str) -> bool:
        """Stop the container and its VM and free the runtime's state; True when there was one."""
        if not (self.root / container_id).exists():
            return False
        with contextlib.suppress(RuntimeError_):
            self.any.kill(container_id, "KILL")
        try:
            self.any.delete(container_id, force=True)
        except NotFound:
            return False
        except (RuntimeError_, HypervisorError) as exc:
            log.warning(
                "deleting container %s: %s; stopping its VM and removing its state by hand", container_id, exc
            )
            self._force_remove(container_id)
        return True

    def _force_remove(self, container_id: str) -> None:
        """When the runtime cannot delete: stop the VM through its driver, kill the relay, drop the state."""
        try:
            record = self.any.store.load(container_id)
        except (RuntimeError_, ValueError):
            self.any.store.remove(container_id)
            return
        if record.relay_pid:
            signal_recorded(record.relay_pid, record.relay_start, signal.SIGKILL)
        vm = record.state.vm
        if vm is not None and record.owns_vm:
            try:
                self.any.driver(record.state.hypervisor).stop(vm)
            except HypervisorError as exc:
                log.error("could not stop VM %s of %s: %s", vm.vm_id, container_id, exc)
        if record.owns_vm:
            try:
                self.any.remove_vm_cgroup(container_id, vm)
            except RuntimeError_ as exc:
                log.error("could not remove the cgroup of %s: %s", container_id, exc)
        self.any.store.remove(container_id)
