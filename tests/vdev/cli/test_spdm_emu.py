"""`vdev spdm-emu` as a process: serves, and SHUTDOWN ends it."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers.server_process import vdev_process
from vdev.spdm_emu.client import SpdmEmuClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_until_shutdown(tmp_path: Path) -> None:
    port = free_port()
    clients: list[SpdmEmuClient] = []

    def connected() -> bool:
        try:
            clients.append(SpdmEmuClient("127.0.0.1", port, timeout=5))
        except OSError:
            return False
        return True

    with vdev_process(tmp_path, "--log-level", "warning", "spdm-emu", "--port", str(port),
                      "--state-dir", str(tmp_path), ready=connected) as server:
        client = clients[0]
        client.hello()
        assert client.discover() == [(1, 0), (1, 1), (1, 2)]
        client.shutdown()
        assert server.proc.wait(10) == 0
        assert (tmp_path / "1ded-7e10-ecdsa-p384" / "slot0" / "leaf.key").exists()
