"""Device control commands over a live in-process TeeDevice driven to RUN."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tdisp.codes import TdiState
from tests.helpers.secure_host import SecureHost
from tests.vdev.endpoint.test_secure_mailbox import mailbox_host
from vdev.control.core import ControlCore
from vdev.control.endpoint import device_control
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.ide_cap import SLOTS, IdeStreamState


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control-identity")


def _call(core: ControlCore, cmd: str, **args: Any) -> Any:
    r = core.handle({"cmd": cmd, "args": args})
    assert r["ok"], r
    return r["result"]


def _to_run(state_dir: Path) -> tuple[TeeDevice, SecureHost, ControlCore]:
    device = TeeDevice(state_dir=state_dir)
    core = device_control(device, trust_anchor=state_dir / "slot0" / "root.pem")
    host = mailbox_host(device)
    host.authenticate()
    host.open_session()
    host.secure_stream()
    conn = host.tdisp_connect()
    assert conn.state == TdiState.RUN
    return device, host, core


def test_status_shows_live_state_and_no_key_material(state_dir: Path) -> None:
    device, host, core = _to_run(state_dir)
    status = _call(core, "status")
    text = json.dumps(status)

    spdm = status["spdm"]
    assert spdm["version"] in ("1.2", "1.3") and spdm["challenge_completed"]
    [session] = spdm["sessions"]
    assert session["session_id"] == f"{host.session_id:#010x}"
    assert session["state"] == "established"
    assert session["algorithms"]["aead"] == "AES_256_GCM"
    assert session["algorithms"]["dhe"] == "SECP384R1"

    [stream] = status["ide"]
    assert stream["enabled"] and stream["state"] == IdeStreamState.SECURE.name
    active = [ks for ks, v in stream["key_sets"].items() if v["active_slots"]]
    assert len(active) == 1 and stream["key_sets"][active[0]]["programmed"]
    assert len(stream["key_sets"][active[0]]["active_slots"]) == len(SLOTS)

    [tdi] = status["tdi"]
    assert tdi["state"] == "RUN"
    assert [h["new"] for h in tdi["history"]][-2:] == ["CONFIG_LOCKED", "RUN"]
    assert tdi["lock"]["session_id"] == session["session_id"]

    assert status["doe"]["counters"]["doe_exchanges"] > 10
    assert status["doe"]["counters"]["doe_0001:02"] > 0  # secured SPDM
    assert status["transport"] == {"kind": "vfio-user", "client_connected": False}

    # Never key material: IDE keys and IFVs, SPDM session secrets, the leaf key.
    s = device.ide.streams[0]
    ks = int(active[0])
    for d, sub in SLOTS:
        km = s.key(ks, d, sub)
        assert km.key.hex() not in text and km.ifv.hex() not in text
    sess = device.responder.sessions[host.session_id]
    for prot in (sess.req_prot, sess.rsp_prot):
        assert prot is not None
        for value in vars(prot).values():
            if isinstance(value, bytes) and len(value) >= 8:
                assert value.hex() not in text
    assert "PRIVATE KEY" not in text


def test_identity(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    ident = _call(device_control(device, trust_anchor=state_dir / "slot0" / "root.pem"),
                  "identity")
    assert ident["trust_anchor"].endswith("slot0/root.pem")
    certs = ident["certificates"]
    assert len(certs) == len(device.identity.certs) == 3
    assert certs[-1]["subject"].startswith("CN=vdev 1ded:7e10") or "vdev" in certs[-1]["subject"]
    assert certs[0]["subject"] == certs[0]["issuer"]  # the root is self-signed
    assert all(len(c["sha256"]) == 64 and len(c["sha384"]) == 96 for c in certs)


def test_reset_is_an_flr(state_dir: Path) -> None:
    device, host, core = _to_run(state_dir)
    result = _call(core, "reset")
    assert result["tdi"][0]["state"] == "CONFIG_UNLOCKED"
    assert result["tdi"][0]["history"][-1]["event"] == "FUNCTION_RESET"
    assert _call(core, "ide")[0]["state"] == "INSECURE"
    # Sessions survive an FLR with the default profile (flr_ends_spdm_sessions = false).
    assert _call(core, "sessions")["sessions"][0]["state"] == "established"


def test_faults(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    core = device_control(device)
    assert _call(core, "faults") == {"armed": [], "kinds": [
        "doe_delay", "drop", "delay", "doe_error", "corrupt", "truncate", "error", "not_ready",
        "duplicate", "replay", "wrong_version", "wrong_slot", "wrong_chain",
        "changed_measurement", "tdi_error", "wrong_nonce", "report_mismatch"]}

    def bad(**args: Any) -> str:
        r = core.handle({"cmd": "faults", "args": args})
        assert r["ok"] is False
        return str(r["error"])

    assert "unknown (kinds: doe_delay, drop," in bad(action="arm",
                                                     fault={"kind": "drop_response"})
    assert "'match'" in bad(action="arm", fault={"kind": "tdi_error"})
    nonce = _call(core, "faults", action="arm", fault={"kind": "wrong_nonce"})
    assert nonce["armed"] == [{"kind": "wrong_nonce", "match": "LOCK_INTERFACE_REQUEST",
                               "nth": 1, "seen": 0, "fired": 0}]
    _call(core, "faults", action="clear", fault={"kind": "wrong_nonce"})
    assert "needs a fault spec" in bad(action="arm")
    assert "expected list, arm or clear" in bad(action="explode")
    assert "'delay_ms': required" in bad(action="arm", fault={"kind": "doe_delay"})
    assert "expected an integer >= 0" in bad(action="arm",
                                             fault={"kind": "doe_delay", "delay_ms": -1})
    assert "'match': unknown for kind 'doe_delay'" in bad(
        action="arm", fault={"kind": "doe_delay", "delay_ms": 5, "match": "doe"})
    # Without a server loop there is nothing to release a held response: refused.
    assert "defer_later" in bad(action="arm", fault={"kind": "doe_delay", "delay_ms": 5})

    pending: list[Callable[[], None]] = []
    device.defer_later = lambda seconds, step: pending.append(step)
    armed = _call(core, "faults", action="arm",
                  fault={"kind": "doe_delay", "delay_ms": 1500, "count": 2})
    assert armed["armed"] == [{"kind": "doe_delay", "delay_ms": 1500, "count": 2}]
    assert _call(core, "faults", action="clear", fault={"kind": "doe_delay"}) == {"armed": []}


def test_faults_clear_without_a_rule_clears_everything(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    device.defer_later = lambda seconds, step: None
    core = device_control(device)
    _call(core, "faults", action="arm", fault={"kind": "wrong_nonce"})
    _call(core, "faults", action="arm", fault={"kind": "corrupt", "match": "KEY_EXCHANGE",
                                               "field": "signature"})
    _call(core, "faults", action="arm", fault={"kind": "doe_delay", "delay_ms": 1500})
    assert len(_call(core, "faults")["armed"]) == 3
    assert _call(core, "faults", action="clear") == {"armed": []}
    assert device.doe.response_gate is None  # the DOE delay is gone too


def test_doe_view(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    doe = _call(device_control(device), "doe")
    assert doe["state"] == "IDLE"
    assert doe["protocols"] == ["0001:00", "0001:01", "0001:02"]
    assert doe["counters"]["doe_exchanges"] == 0


def test_ide_shows_the_rule_checkers_findings(state_dir: Path) -> None:
    device, host, core = _to_run(state_dir)
    assert _call(core, "ide")[0]["violations"] == []
    assert _call(core, "status")["ide_rules"] == {"violations": [], "violations_total": 0}
    # The host rewrites the Stream ID of the enabled stream (a TDI in RUN goes to ERROR too).
    host.enable_stream(stream_id=9)
    [v] = _call(core, "ide")[0]["violations"]
    assert v["rule"] == "stream-id-changed-while-enabled" and v["stream_index"] == 0
    assert "changed from 1 to 9" in v["message"]
    assert _call(core, "status")["ide_rules"]["violations_total"] == 1
