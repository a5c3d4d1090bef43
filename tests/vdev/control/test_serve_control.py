"""The real `vdev serve --control` process: a vfio-user client does DOE discovery and
an SPDM session, then `vdev ctl` shows the session and the DOE counters (instead of
grepping the server's log)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spdm.requester import Outgoing
from tests.helpers.secure_host import SecureHost
from tests.helpers.server_process import vdev_process
from tests.helpers.vfio_host import config_doe
from vdev.control.client import ControlClient
from vdev.endpoint.tee_device import TeeDevice
from vdev.vfio_user.client import VfioUserClient

DOE_CAP = 0x100


def ctl(control: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vdev.cli", "ctl", "--socket", control, *argv],
                          capture_output=True, text=True, timeout=60)


def ctl_json(control: str, *argv: str) -> Any:
    out = ctl(control, *argv)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    sockdir = tempfile.mkdtemp(prefix="vc-", dir="/tmp")
    sock, control = f"{sockdir}/dev.sock", f"{sockdir}/ctl.sock"
    try:
        with vdev_process(tmp_path, "--log-level", "warning", "serve", "--socket", sock,
                          "--control", control, "--state-dir", str(tmp_path),
                          wait_for=[sock, control]) as server:
            yield sock, control, tmp_path
            assert server.terminate() == 0
            assert not os.path.exists(control)  # removed on shutdown
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_ctl_status_shows_session_and_doe_counters(server: tuple[str, str, Path]) -> None:
    sock, control, state_dir = server
    before = ctl_json(control, "status")
    assert before["transport"]["client_connected"] is False
    assert before["spdm"]["sessions"] == []
    assert before["doe"]["counters"]["doe_exchanges"] == 0

    # Same identity directory: offsets and the trust anchor, not the served device.
    local = TeeDevice(state_dir=state_dir)
    with VfioUserClient(sock, timeout=5.0) as client:
        client.negotiate()
        doe, port = config_doe(client)
        assert doe.discover() == [(1, 0), (1, 1), (1, 2)]

        def transport(out: Outgoing) -> bytes:
            return doe.exchange_bytes(out.doe_type, out.data)

        host = SecureHost(local, port, transport, local.identity.root)
        host.authenticate()
        sid = host.open_session()

        status = ctl_json(control, "status")
        assert status["transport"]["client_connected"] is True
        [session] = status["spdm"]["sessions"]
        assert session["session_id"] == f"{sid:#010x}"
        assert session["state"] == "established"
        assert session["algorithms"]["base_asym"] == "ECDSA_P384"
        counters = status["doe"]["counters"]
        assert counters["doe_0001:00"] == 3  # discovery: one exchange per protocol
        assert counters["doe_0001:01"] >= 8  # VCA, digests, certificate, challenge, ...
        assert counters["doe_0001:02"] >= 1  # FINISH travels secured
        assert counters["config_reads"] > 0 and counters["config_writes"] > 0
        assert status["tdi"][0]["state"] == "CONFIG_UNLOCKED"

        # Identity: the served chain is the one in the state directory.
        ident = ctl_json(control, "identity")
        assert ident["trust_anchor"] == str(
            state_dir / "1ded-7e10-ecdsa-p384" / "slot0" / "root.pem")
        root_subject = local.identity.root.subject.rfc4514_string()
        assert ident["certificates"][0]["subject"] == root_subject

        # A bad request is answered, and the device keeps serving.
        bad = ctl(control, "raw", "{not json")
        assert bad.returncode == 1 and "not JSON" in bad.stderr
        assert "unknown (kinds:" in ctl(
            control, "faults", "arm", "--fault", '{"kind": "corrupt_signature"}').stderr
        with ControlClient(control) as c:
            assert c.raw(b"[]\n")["ok"] is False
            assert c.request("sessions")["ok"] is True  # same connection, next request

        reset = ctl_json(control, "reset")["tdi"][0]
        assert reset["state"] == "CONFIG_UNLOCKED"
        assert reset["history"][-1]["event"] == "FUNCTION_RESET"
        host.run(host.requester.heartbeat(sid))  # sessions survive an FLR by default
        host.end_session()
        assert ctl_json(control, "sessions")["sessions"] == []
    deadline = time.monotonic() + 5
    while ctl_json(control, "status")["transport"]["client_connected"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_ctl_unreachable_socket(tmp_path: Path) -> None:
    out = ctl(str(tmp_path / "nothing.sock"), "status")
    assert out.returncode == 2 and "nothing.sock" in out.stderr


def test_spdm_emu_control(tmp_path: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="ve-", dir="/tmp")
    control = f"{sockdir}/ctl.sock"
    try:
        with vdev_process(tmp_path, "--log-level", "warning", "spdm-emu", "--port", "0",
                          "--profile", "auth-only-spdm12", "--control", control,
                          "--state-dir", str(tmp_path), wait_for=[control]) as server:
            status = ctl_json(control, "status")
            assert status["transport"]["kind"] == "spdm-emu"
            assert status["transport"]["port"] > 0 and status["transport"]["connections"] == 0
            assert status["device"]["tee_io"] is False
            assert "authentication-only" in status["device"]["description"]
            assert server.terminate() == 0
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
