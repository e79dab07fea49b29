"""What a service process does before it imports anything else: ``python -m vpcbus_<svc>``
imports this module first (its ``__main__``'s first import).

nats-py imports aiohttp when it is imported, for its WebSocket transport (``ws://`` and
``wss://`` servers), used or not. aiohttp is installed (the ``kubernetes`` package requires
it), and importing it was 0.10-0.14 CPU-s of every service start on this machine, a third of
a service's imports. At a restart of the stack the four services import at once on two
cores, ahead of VPC loading its NB replica: the critical path of "serving again" (bench/).

So unless ``NATS_URL`` names a WebSocket server, ``import aiohttp`` fails in a service
process (``sys.modules`` maps it to None, the documented way to make an import fail), and
nats-py goes on without the transport, as when aiohttp is not installed. Nothing else a
service runs imports aiohttp: the Kubernetes backend uses the synchronous client.
"""

from __future__ import annotations

import os
import sys

#: The URL schemes of nats-py's WebSocket transport.
WEBSOCKET_SCHEMES = ("ws://", "wss://")


def wants_websocket(urls: str) -> bool:
    """Whether any server of a ``NATS_URL`` (comma-separated) is reached over WebSocket."""
    return any(u.strip().lower().startswith(WEBSOCKET_SCHEMES) for u in urls.split(","))


if "aiohttp" not in sys.modules and not wants_websocket(os.environ.get("NATS_URL", "")):
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
