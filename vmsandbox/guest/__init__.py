"""The agent that runs inside each sandbox VM and creates its containers with crun/runc.

It imports nothing from vmsandbox except :mod:`vmsandbox.errors`, and nothing outside the
standard library, so it starts quickly and the guest image needs no third-party package.
"""
