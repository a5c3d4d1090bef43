"""`vdev spdm-emu` as a process: serves, and SHUTDOWN ends it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from vdev.spdm_emu.client import SpdmEmuClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_until_shutdown(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdev.cli", "--log-level", "warning", "spdm-emu",
         "--port", str(port), "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = SpdmEmuClient("127.0.0.1", port, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.hello()
        assert client.discover() == [(1, 0), (1, 1), (1, 2)]
        client.shutdown()
        assert proc.wait(10) == 0
        assert (tmp_path / "1ded-7e10-ecdsa-p384" / "slot0" / "leaf.key").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
