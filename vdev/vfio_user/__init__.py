"""vfio-user adapter: serve a `VfioUserDevice` to QEMU's vfio-user-pci client.

Modules: `wire` (message declarations), `transport` (framing + fds),
`server` (asyncio server), `dma` (guest memory), `irq` (eventfd interrupts),
`client` (synchronous client for tests and benchmarks), `errors`.
"""

from .client import VfioUserClient, make_memfd
from .errors import DmaError, ProtocolError, VfioUserError
from .server import VfioUserServer, run_server, serve

__all__ = [
    "DmaError",
    "ProtocolError",
    "VfioUserClient",
    "VfioUserError",
    "VfioUserServer",
    "make_memfd",
    "run_server",
    "serve",
]
