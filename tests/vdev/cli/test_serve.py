"""`vdev serve` runs the TeeDevice: GET_VERSION over DOE gets a real VERSION response."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.helpers.server_process import vdev_process
from tests.helpers.vfio_host import config_doe
from vdev.vfio_user.client import VfioUserClient

GET_VERSION = bytes.fromhex("10840000")


def test_serve_speaks_spdm(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="vc-", dir="/tmp")
    sock = f"{sockdir}/dev.sock"
    try:
        with vdev_process(tmp_path, "--log-level", "warning", "serve", "--socket", sock,
                          "--state-dir", str(tmp_path), wait_for=[sock]) as server:
            talk_spdm(sock)
            assert server.terminate() == 0
        assert (tmp_path / "1ded-7e10-ecdsa-p384" / "slot0" / "leaf.key").exists()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def talk_spdm(sock: str) -> None:
    with VfioUserClient(sock, timeout=5.0) as client:
        client.negotiate()
        doe, _port = config_doe(client)
        reply = doe.exchange_bytes(1, GET_VERSION)
        assert reply[:2] == bytes([0x10, 0x04])  # the responder's VERSION, not an ERROR
