"""Cloud Hypervisor driver: the VMM's REST API over its unix socket, and hybrid vsock to the guest."""

from vmsandbox.hypervisor.cloud_hypervisor.driver import CloudHypervisorDriver, Timeouts

__all__ = ["CloudHypervisorDriver", "Timeouts"]
