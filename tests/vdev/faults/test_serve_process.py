"""Fault injection in a real `vdev serve` process: `--fault SPEC` and faults armed on
its control socket break exactly the chosen response, the requester (our vfio-user
client + DOE requester + SPDM requester, the way a TSM reaches the device) sees it,
`vdev ctl faults list` counts it, the `--trace` file records it; a bad
`--fault-plan` / `--fault` stops `vdev serve` at start with the field named."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spdm.errors import ErrorResponse, PeerError
from tests.helpers.vfio_host import host_over
from vdev.endpoint.tee_device import TeeDevice
from vdev.vfio_user.client import VfioUserClient
from vdev.vm.env import REPO
from vdev.vm.session import ServerProcess


@dataclass
class Served:
    server: ServerProcess
    local: TeeDevice
    control: Path
    trace: Path

    def client(self) -> VfioUserClient:
        c = VfioUserClient(str(self.server.socket), timeout=10.0)
        c.negotiate()
        return c


def ctl(control: Path, *args: str) -> Any:
    """`vdev ctl --socket CONTROL --compact ARGS`, its JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", "vdev.cli", "ctl", "--socket", str(control), "--compact",
         *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def pick(rule: dict[str, Any], *extra: str) -> dict[str, Any]:
    """The fields of a `faults list` rule this test checks (rules may carry more)."""
    keys = ("kind", "match", "nth", "seen", "fired", *extra)
    return {k: rule[k] for k in keys if k in rule}


@pytest.fixture
def served(state_dir: Path, tmp_path: Path) -> Iterator[Served]:
    local = TeeDevice(state_dir=state_dir)  # the identity the server loads
    sockdir = Path(tempfile.mkdtemp(prefix="vdev-fault-"))
    control, trace = sockdir / "ctl.sock", tmp_path / "trace.txt"
    server = ServerProcess(
        ["--log-level", "info", "serve", "--socket", str(sockdir / "dev.sock"),
         "--control", str(control), "--state-dir", str(state_dir),
         "--fault", "corrupt:KEY_EXCHANGE:nth=1", "--trace", str(trace)],
        socket=sockdir / "dev.sock", log=tmp_path / "server.log",
    ).start()
    try:
        yield Served(server, local, control, trace)
        assert server.alive(), server.log_tail()
        assert "Traceback" not in server.log_text(), server.log_tail()
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_fault_from_the_command_line_fires_once_and_is_traced(served: Served) -> None:
    with served.client() as c:
        host, doe = host_over(c, served.local)
        doe.abort()
        host.authenticate()
        # The last byte of KEY_EXCHANGE_RSP is ResponderVerifyData: the requester
        # refuses the session the device offered.
        with pytest.raises(PeerError, match="ResponderVerifyData mismatch"):
            host.open_session()
        armed = ctl(served.control, "faults", "list")["armed"]
        assert [pick(r) for r in armed] == [
            {"kind": "corrupt", "match": "KEY_EXCHANGE", "nth": 1, "seen": 1, "fired": 1}], armed
        # Consumed: a new connection (GET_VERSION resets the device side) gets a session.
        host.authenticate()
        assert host.open_session()
        host.end_session()
        armed = ctl(served.control, "faults", "list")["armed"]
        assert [(r["seen"], r["fired"]) for r in armed] == [(2, 1)], armed
    trace = served.trace.read_text()
    faults = [line for line in trace.splitlines() if "FAULT" in line]
    assert len(faults) == 1, faults
    assert "FAULT corrupt KEY_EXCHANGE_RSP #1 (last byte)" in faults[0], faults
    assert "fault injected: corrupt KEY_EXCHANGE_RSP #1 (last byte)" in served.server.log_text()


def test_fault_armed_on_the_control_socket_at_run_time(served: Served) -> None:
    rule = {"kind": "error", "match": "GET_DIGESTS", "code": "Unspecified"}
    armed = ctl(served.control, "faults", "arm", "--fault", json.dumps(rule))["armed"]
    assert [r["kind"] for r in armed] == ["corrupt", "error"], armed
    with served.client() as c:
        host, doe = host_over(c, served.local)
        doe.abort()
        host.run(host.requester.init_connection())
        with pytest.raises(ErrorResponse) as exc:
            host.run(host.requester.get_digests())
        assert "UNSPECIFIED" in str(exc.value)
        host.authenticate()  # the rule is spent (nth=1), the device answers again
    armed = ctl(served.control, "faults", "list")["armed"]
    error = [r for r in armed if r["kind"] == "error"]
    assert [pick(r, "code") for r in error] == [
        {"kind": "error", "match": "GET_DIGESTS", "nth": 1, "code": "UNSPECIFIED",
         "seen": 2, "fired": 1}], armed
    cleared = ctl(served.control, "faults", "clear", "--fault", json.dumps({"kind": "error"}))
    assert [r["kind"] for r in cleared["armed"]] == ["corrupt"], cleared


# (plan, the rule the error names, the field it names): the wording around them is
# vdev.faults.plan's.
BAD_PLANS = [
    ('[[fault]]\nkind = "corrupt"\nmatch = "KEY_EXCHANGE"\nnth = 0\n', "fault #1", "nth"),
    ('[[fault]]\nkind = "error"\nmatch = "CHALLENGE"\n\n'
     '[[fault]]\nkind = "truncate"\nmatch = "GET_DIGESTS"\n', "fault #2", "length"),
    ('[[fault]]\nkind = "drop"\nmatch = "NOT_A_REQUEST"\n', "fault #1", "match"),
    ('[[fault]]\nkind = "corrupt"\nmatch = "doe"\nbyte = 3\n', "fault #1", "byte"),
    ('[[fault]]\nkind = "no_such_kind"\nmatch = "doe"\n', "fault #1", "kind"),
]


def _serve(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sockdir = Path(tempfile.mkdtemp(prefix="vdev-fault-"))
    try:
        return subprocess.run(
            [sys.executable, "-m", "vdev.cli", "serve", "--socket", str(sockdir / "d.sock"),
             "--state-dir", str(state_dir), *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize("plan, rule, field", BAD_PLANS,
                         ids=["nth", "length", "match", "unknown-field", "kind"])
def test_bad_fault_plan_stops_serve_naming_the_field(
    state_dir: Path, tmp_path: Path, plan: str, rule: str, field: str
) -> None:
    TeeDevice(state_dir=state_dir)  # the identity exists: serve fails on the plan alone
    path = tmp_path / "plan.toml"
    path.write_text(plan)
    out = _serve(state_dir, "--fault-plan", str(path))
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert re.match(rf"vdev serve: {re.escape(str(path))}: {rule}\b", error), error
    assert f"field '{field}'" in error, error


def test_bad_fault_spec_stops_serve_naming_the_field(state_dir: Path, tmp_path: Path) -> None:
    TeeDevice(state_dir=state_dir)
    out = _serve(state_dir, "--fault", "corrupt:KEY_EXCHANGE:offset=x")
    assert out.returncode != 0, out
    assert "--fault 'corrupt:KEY_EXCHANGE:offset=x'" in out.stderr, out.stderr
    assert "field 'offset'" in out.stderr, out.stderr
