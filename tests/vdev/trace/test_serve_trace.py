"""`vdev serve --trace --pcap` as a process, over vfio-user: the wiring in cmd_serve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.vdev.trace.test_pcap import doe, read_pcap
from vdev.doe.requester import DoeRequester
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient


def test_serve_writes_trace_and_pcap(tmp_path: Path, state_dir: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="vt-", dir="/tmp")
    sock = f"{sockdir}/dev.sock"
    trace, pcap = tmp_path / "dev.jsonl", tmp_path / "dev.pcap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdev.cli", "--log-level", "warning", "serve",
         "--socket", sock, "--state-dir", str(state_dir), "--trace", str(trace),
         "--trace-format", "json", "--pcap", str(pcap)],
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

            port = DoeRequester(read32, write32, 0x100)
            assert port.discover() == [(1, 0), (1, 1), (1, 2)]
            assert port.exchange_bytes(1, bytes.fromhex("10840000"))[:2] == b"\x10\x04"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"DHE Secret" not in err and b"WARNING: --log-secrets" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    msgs = [e["msg"] for e in events if e["proto"] != "state"]
    assert msgs == ["DISCOVERY", "DISCOVERY_RSP"] * 3 + ["SPDM", "GET_VERSION",
                                                         "SPDM", "VERSION"]
    _, records = read_pcap(pcap.read_bytes())
    assert [doe(r)[1] for _, r in records] == [0, 0, 0, 0, 0, 0, 1, 1]
