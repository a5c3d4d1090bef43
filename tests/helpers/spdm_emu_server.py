"""An spdm-emu server around a TeeDevice, on 127.0.0.1 and an ephemeral port, in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spdm.secured_message import DOE_TRANSPORT, MCTP_TRANSPORT
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import DeviceProfile
from vdev.spdm_emu.client import SpdmEmuClient
from vdev.spdm_emu.frame import TransportType
from vdev.spdm_emu.server import SpdmEmuServer


@dataclass
class EmuHandle:
    device: TeeDevice
    server: SpdmEmuServer
    thread: threading.Thread
    transport: TransportType

    @property
    def port(self) -> int:
        return self.server.port

    def client(self) -> SpdmEmuClient:
        return SpdmEmuClient("127.0.0.1", self.port, self.transport, timeout=5.0)


@pytest.fixture(scope="session")
def emu_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emu-identity")


def start_server(state_dir: Path, transport: TransportType, profile: DeviceProfile | None = None,
                 **device: Any) -> tuple[EmuHandle, Callable[[], None]]:
    """`device`: further TeeDevice arguments (psks=...)."""
    params = MCTP_TRANSPORT if transport == TransportType.MCTP else DOE_TRANSPORT
    tee = TeeDevice(profile, state_dir=state_dir, spdm_transport=params, **device)
    loop = asyncio.new_event_loop()
    server = SpdmEmuServer(tee, transport, "127.0.0.1", 0)
    started = threading.Event()
    stop: list[asyncio.Event] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            stop.append(asyncio.Event())
            await server.start()
            started.set()
            await server.serve_forever(stop[0])

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, name="spdm-emu", daemon=True)
    thread.start()
    assert started.wait(5)

    def shutdown() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(5)

    return EmuHandle(tee, server, thread, transport), shutdown


@pytest.fixture(params=[TransportType.PCI_DOE])
def emu(request: pytest.FixtureRequest, emu_state_dir: Path) -> Iterator[EmuHandle]:
    handle, shutdown = start_server(emu_state_dir, request.param)
    try:
        yield handle
    finally:
        shutdown()


@pytest.fixture
def emu_mctp(emu_state_dir: Path) -> Iterator[EmuHandle]:
    handle, shutdown = start_server(emu_state_dir, TransportType.MCTP)
    try:
        yield handle
    finally:
        shutdown()


@pytest.fixture
def emu_none(emu_state_dir: Path) -> Iterator[EmuHandle]:
    handle, shutdown = start_server(emu_state_dir, TransportType.NONE)
    try:
        yield handle
    finally:
        shutdown()
