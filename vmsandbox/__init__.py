"""vmsandbox: each VMSandbox custom resource runs as a container in its own microVM."""

__version__ = "0.1.0"
