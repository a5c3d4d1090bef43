"""`vdev serve --trace --pcap` as a process, over vfio-user: the wiring in cmd_serve."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tests.helpers.server_process import vdev_process
from tests.helpers.vfio_host import config_doe
from tests.vdev.trace.test_pcap import doe, read_pcap
from vdev.vfio_user.client import VfioUserClient


def test_serve_writes_trace_and_pcap(tmp_path: Path, state_dir: Path) -> None:
    sockdir = tempfile.mkdtemp(prefix="vt-", dir="/tmp")
    sock = f"{sockdir}/dev.sock"
    trace, pcap = tmp_path / "dev.jsonl", tmp_path / "dev.pcap"
    try:
        with vdev_process(tmp_path, "--log-level", "warning", "serve", "--socket", sock,
                          "--state-dir", str(state_dir), "--trace", str(trace),
                          "--trace-format", "json", "--pcap", str(pcap),
                          wait_for=[sock]) as server:
            with VfioUserClient(sock, timeout=5.0) as client:
                client.negotiate()
                port, _config = config_doe(client)
                assert port.discover() == [(1, 0), (1, 1), (1, 2)]
                assert port.exchange_bytes(1, bytes.fromhex("10840000"))[:2] == b"\x10\x04"
            assert server.terminate() == 0
            err = server.output()
            assert "DHE Secret" not in err and "WARNING: --log-secrets" not in err
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    msgs = [e["msg"] for e in events if e["proto"] != "state"]
    assert msgs == ["DISCOVERY", "DISCOVERY_RSP"] * 3 + ["SPDM", "GET_VERSION",
                                                         "SPDM", "VERSION"]
    _, records = read_pcap(pcap.read_bytes())
    assert [doe(r)[1] for _, r in records] == [0, 0, 0, 0, 0, 0, 1, 1]
