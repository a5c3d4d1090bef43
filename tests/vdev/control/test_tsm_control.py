"""TSM mailbox control: mailbox state, evidence without secrets, and the real
`vdev tsm serve --control` process answering `vdev ctl`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers.server_process import vdev_process
from tsm.mailbox_protocol import Op
from vdev.control.tsm import EvidenceKeeper, scrub, tsm_control
from vdev.endpoint.identity_store import load_or_generate
from vdev.profiles import DeviceProfile
from vdev.tsm_mailbox.backend import ScriptedBackend
from vdev.tsm_mailbox.device import TsmMailboxDevice


def test_scrub_drops_secret_fields() -> None:
    ev = {"spdm": {"session_id": "0xff000001", "key": "aa" * 32},
          "tdis": {"01:00.0": {"state": "RUN", "nonce": b"\x01" * 32}},
          "ide": [{"key_set": 0, "ifv": "00"}], "blob": b"\x02"}
    assert scrub(ev) == {"spdm": {"session_id": "0xff000001"},
                         "tdis": {"01:00.0": {"state": "RUN"}},
                         "ide": [{"key_set": 0}], "blob": "02"}


def test_status_mailbox_and_evidence() -> None:
    device = TsmMailboxDevice(ScriptedBackend({}))
    keeper = EvidenceKeeper()
    core = tsm_control(device, keeper, "tsm")
    status = core.handle({"cmd": "status"})["result"]
    assert status["mailbox"]["status"] == "IDLE"
    assert status["mailbox"]["transport"]["client_connected"] is False
    assert status["evidence"] == {"operations": 0, "last": None}
    keeper.note(Op.CONNECT, "0000:01:00.0", {"spdm": {"version": "1.3", "psk": "x"}})
    last = core.handle({"cmd": "evidence"})["result"]["last"]
    assert last["operation"] == "CONNECT"
    assert last["evidence"] == {"spdm": {"version": "1.3"}}
    assert core.handle({"cmd": "reset"})["ok"]
    assert core.handle({"cmd": "ide"})["ok"] is False  # device-only command
    assert tsm_control(device, None, "scripted").handle({"cmd": "evidence"})["result"] is None


def test_tsm_serve_control_process(tmp_path: Path) -> None:
    anchor = load_or_generate(DeviceProfile(), tmp_path / "id").trust_anchor
    sockdir = tempfile.mkdtemp(prefix="vt-", dir="/tmp")
    sock, control = f"{sockdir}/tsm.sock", f"{sockdir}/ctl.sock"
    try:
        with vdev_process(tmp_path, "--log-level", "warning", "tsm", "serve", "--socket", sock,
                          "--trust-anchor", str(anchor), "--control", control,
                          wait_for=[sock, control]) as server:
            out = subprocess.run([sys.executable, "-m", "vdev.cli", "ctl", "--socket", control,
                                  "status"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            assert status["backend"] == "tsm"
            assert status["mailbox"]["status"] == "IDLE"
            assert status["evidence"] == {"operations": 0, "last": None}
            assert server.terminate() == 0
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
