"""`vdev serve` runs the TeeDevice: GET_VERSION over DOE gets a real VERSION response."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


def _uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not _uvloop(), reason="uvloop not installed"))])
def test_serve_on_either_event_loop(tmp_path: Path, loop: str) -> None:
    """The same device on asyncio's loop and on uvloop; the log says which one runs."""
    sockdir = tempfile.mkdtemp(prefix="vc-", dir="/tmp")
    sock = f"{sockdir}/dev.sock"
    try:
        with vdev_process(tmp_path, "--event-loop", loop, "serve", "--socket", sock,
                          "--state-dir", str(tmp_path), wait_for=[sock]) as server:
            talk_spdm(sock)
            assert server.terminate() == 0
        assert f"event loop: {loop}" in server.output()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_unknown_event_loop_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ, VDEV_EVENT_LOOP="tokio")
    proc = subprocess.run([sys.executable, "-m", "vdev.cli", "serve", "--socket",
                           str(tmp_path / "s.sock")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vdev: event loop 'tokio': choose one of auto, uvloop, asyncio"]


def talk_spdm(sock: str) -> None:
    with VfioUserClient(sock, timeout=5.0) as client:
        client.negotiate()
        doe, _port = config_doe(client)
        reply = doe.exchange_bytes(1, GET_VERSION)
        assert reply[:2] == bytes([0x10, 0x04])  # the responder's VERSION, not an ERROR
