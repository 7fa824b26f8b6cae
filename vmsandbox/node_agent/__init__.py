"""The node agent: turns VMSandboxes scheduled to this node into running VMs and reports back.

One process per node (a DaemonSet). It watches only its node's sandboxes, runs one reconcile
worker thread per sandbox, drives :mod:`vmsandbox.runtime` for the OCI create flow and writes
everything it observes through the ``/status`` subresource.
"""
