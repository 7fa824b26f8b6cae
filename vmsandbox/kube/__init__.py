"""The one way every component reaches the API server.

:class:`Connection` says where the server is and who we are; :class:`Client` (threads) and
:class:`AsyncClient` (asyncio) send the same requests and raise the same :class:`ApiError`;
:mod:`.paths` builds resource paths, :mod:`.patches` compare-and-swap writes, :mod:`.events`
Events, :mod:`.leases` Leases and :mod:`.retry` the back-off of writes worth repeating.
Nothing outside this package speaks HTTP to the API server.
"""

from vmsandbox.kube.client import Client
from vmsandbox.kube.connection import ConfigError, Connection
from vmsandbox.kube.errors import ApiError

__all__ = ["ApiError", "Client", "ConfigError", "Connection"]
