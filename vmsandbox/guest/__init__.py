"""The agent that runs inside each sandbox VM and creates its containers with crun/runc.

It imports nothing from vmsandbox except :mod:`vmsandbox.errors`, so the guest image only
needs this package and pydantic.
"""
