"""`vdev serve` runs the TeeDevice: GET_VERSION over DOE gets a real VERSION response."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vdev.doe.requester import DoeRequester
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient

GET_VERSION = bytes.fromhex("10840000")


def test_serve_speaks_spdm(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="vc-", dir="/tmp")
    sock = f"{sockdir}/dev.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdev.cli", "--log-level", "warning", "serve",
         "--socket", sock, "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with VfioUserClient(sock, timeout=5.0) as client:
            client.negotiate()

            def read32(off: int) -> int:
                return int.from_bytes(client.region_read(RegionIndex.CONFIG, off, 4), "little")

            def write32(off: int, value: int) -> None:
                client.region_write(RegionIndex.CONFIG, off, value.to_bytes(4, "little"))

            doe = DoeRequester(read32, write32, 0x100)
            reply = doe.exchange_bytes(1, GET_VERSION)
            assert reply[:2] == bytes([0x10, 0x04])  # the responder's VERSION, not an ERROR
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert (tmp_path / "1ded-7e10-ecdsa-p384" / "slot0" / "leaf.key").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
