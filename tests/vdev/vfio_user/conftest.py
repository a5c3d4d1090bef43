"""Fixtures: a fake device served in a background thread, and clients for it."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from vdev.pci.device_api import DmaAccess, IrqIndex, IrqSink, RegionIndex, RegionInfo
from vdev.vfio_user import event_loop
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.server import VfioUserServer
from vdev.vfio_user.threaded import serve_in_thread

# BAR0 register map of the fake device.
DOORBELL = 0x00  # write v: trigger MSI-X vector v; 0x100: assert INTx
DMA_ADDR = 0x08  # u64 guest address
DMA_LEN = 0x10  # u32 length
DMA_CMD = 0x14  # 1: guest -> BUF, 2: BUF -> guest, 3: read a u32 of config
BUF = 0x800
SCRATCH = 0x40  # config-space scratch area


class FakeDevice:
    """A minimal VfioUserDevice: config space, BAR0 with a doorbell and a DMA engine."""

    def __init__(self) -> None:
        self.config = bytearray(4096)
        self.config[0:4] = struct.pack("<HH", 0x1234, 0x5678)
        self.bar0 = bytearray(4096)
        self.rom = b""
        self.irq: IrqSink | None = None
        self.dma: DmaAccess | None = None
        self.resets = 0
        self.attaches = 0
        self.detaches = 0
        self.dma_results: list[bytes] = []
        self.fail_next_read = False

    def regions(self) -> Sequence[RegionInfo]:
        sizes = {RegionIndex.BAR0: 4096, RegionIndex.CONFIG: 4096, RegionIndex.BAR2: 4096}
        out = [RegionInfo(i, sizes.get(RegionIndex(i), 0)) for i in range(9)]
        out[RegionIndex.BAR2] = RegionInfo(RegionIndex.BAR2, 4096, readable=True, writable=False)
        return out

    def irq_count(self, index: int) -> int:
        return {IrqIndex.INTX: 1, IrqIndex.MSI: 1, IrqIndex.MSIX: 4}.get(IrqIndex(index), 0)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if self.fail_next_read:
            self.fail_next_read = False
            raise RuntimeError("device bug")
        if index == RegionIndex.CONFIG:
            return bytes(self.config[offset : offset + count])
        if index == RegionIndex.BAR0:
            return bytes(self.bar0[offset : offset + count])
        return b"\xab" * count

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == RegionIndex.CONFIG:
            self.config[offset : offset + len(data)] = data
            return
        assert index == RegionIndex.BAR0
        self.bar0[offset : offset + len(data)] = data
        if offset == DOORBELL:
            assert self.irq is not None
            value = int.from_bytes(data, "little")
            if value == 0x100:
                self.irq.trigger(IrqIndex.INTX, 0)
            else:
                self.irq.trigger(IrqIndex.MSIX, value)
        elif offset == DMA_CMD:
            self._dma(int.from_bytes(data, "little"))

    def _dma(self, cmd: int) -> None:
        assert self.dma is not None
        addr = int.from_bytes(self.bar0[DMA_ADDR : DMA_ADDR + 8], "little")
        length = int.from_bytes(self.bar0[DMA_LEN : DMA_LEN + 4], "little")
        if cmd == 1:
            data = self.dma.read(addr, length)
            self.bar0[BUF : BUF + length] = data
            self.dma_results.append(data)
        elif cmd == 2:
            self.dma.write(addr, bytes(self.bar0[BUF : BUF + length]))

    def reset(self) -> None:
        self.resets += 1

    def attach(self, irq: IrqSink, dma: DmaAccess) -> None:
        self.attaches += 1
        self.irq, self.dma = irq, dma

    def detach(self) -> None:
        self.detaches += 1
        self.irq = self.dma = None


@dataclass
class ServerHandle:
    device: FakeDevice
    path: str
    server: VfioUserServer
    loop: asyncio.AbstractEventLoop

    def client(self, negotiate: bool = True, timeout: float = 2.0) -> VfioUserClient:
        c = VfioUserClient(self.path, timeout=timeout)
        if negotiate:
            c.negotiate()
        return c

    def call(self, fn: Callable[[], object]) -> object:
        """Run fn on the server's loop thread and return its result."""
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(2)
        return box[0]


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _uvloop_installed() -> bool:
    try:
        event_loop.loop_factory("uvloop")
    except event_loop.EventLoopError:
        return False
    return True


# Every server test runs on asyncio's own loop and on uvloop (when installed): the
# server must behave the same on both (vdev.vfio_user.event_loop).
LOOPS = [pytest.param("asyncio"),
         pytest.param("uvloop", marks=pytest.mark.skipif(not _uvloop_installed(),
                                                         reason="uvloop not installed"))]


@pytest.fixture(params=LOOPS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with serve_in_thread(lambda loop: FakeDevice(), dma_timeout=0.5,
                         loop_choice=request.param) as s:
        yield ServerHandle(s.device, s.path, s.server, s.loop)
