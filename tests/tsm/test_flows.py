"""The TSM model driven against in-process device engines: the happy path and the
failures a TSM must report clearly without becoming unusable."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from spdm.codes import RspCap
from spdm.crypto import meas_digest
from spdm.measurements import default_measurements
from spdm.responder import DEFAULT_RSP_CAPS
from tdisp.codes import TdiState
from tdisp.idekm_responder import IdeKmPolicy
from tests.helpers.tsm_rig import (
    EXPECTED,
    TDI_ID,
    Device,
    drive,
    identity,
    make_device,
    make_tsm,
    ok,
)
from tsm import ExpectedBar, ReferenceValues, RpSlot
from tsm.root_port import SLOT_ACTIVE


def reference_values(**override: bytes) -> ReferenceValues:
    # SHA-384 is what both sides negotiate by default (strongest first).
    meas = {m.index: meas_digest(0x4, m.value) if not m.raw_only else m.value
            for m in default_measurements()}
    for k, v in override.items():
        meas[int(k.lstrip("i"))] = v
    return ReferenceValues({i: (v,) for i, v in meas.items()}, version="vdev 0.1.0")


def connect_to_run(dev: Device, **kw: Any) -> Any:
    tsm = make_tsm(**kw)
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    ok(tsm.report(0, EXPECTED), dev)
    ok(tsm.start(0), dev)
    return tsm


def test_connect_lock_report_start_stop_disconnect() -> None:
    dev = make_device()
    tsm = make_tsm(heartbeat=True, reference_values=reference_values(), policy_file="ref.toml")
    done = ok(tsm.connect(), dev)
    assert done.value == f"0x{tsm.session_id:08x}"
    assert set(dev.responder.sessions) == {tsm.session_id}
    assert tsm.root_port.secure
    assert all(v["verdict"] == "match" for v in done.evidence["policy"]["verdicts"])
    assert len(done.evidence["policy"]["verdicts"]) == 8  # 7 indices + version

    ok(tsm.lock(0), dev)
    assert dev.tdi_state == "CONFIG_LOCKED"
    rep = ok(tsm.report(0, EXPECTED), dev).value
    assert {r["range_id"] for r in rep["mmio_ranges"]} == {0, 2}
    assert ["MSIX_TABLE"] in [r["attributes"] for r in rep["mmio_ranges"]]
    ok(tsm.start(0), dev)
    assert dev.tdi_state == "RUN"
    ok(tsm.heartbeat(), dev)
    ok(tsm.key_update(), dev)
    assert ok(tsm.status(0), dev).value == "RUN"  # the session still works after KEY_UPDATE
    ok(tsm.stop(0), dev)
    assert dev.tdi_state == "CONFIG_UNLOCKED"
    done = ok(tsm.disconnect(), dev)
    assert dev.responder.sessions == {} and not dev.target.keys and not dev.target.active
    assert not tsm.root_port.secure and tsm.state == "idle"

    e = done.evidence
    json.dumps(e)  # serialisable
    assert e["spdm"]["session_state"] == "ended"
    assert [c["is_ca"] for c in e["certificates"]] == [True, True, False]
    assert all(len(c["sha384"]) == 96 for c in e["certificates"])
    tdi = e["tdis"]["01:00.0"]
    assert [h["state"] for h in tdi["history"]] == [
        "CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "CONFIG_UNLOCKED"]
    times = [h["t"] for h in tdi["history"]]
    assert times == sorted(times)
    assert tdi["report_check"] == "matches 2 expected BAR(s)"
    assert [x["event"] for x in e["ide"]["root_port"]["history"]] == [
        "stream 1 Secure", "stream 1 Insecure: disconnect"]
    assert {p for _t, p, _e in ((x["t"], x["phase"], x["event"]) for x in e["log"])} >= {
        "authentication", "session", "ide_km", "tdisp"}


def test_root_port_keys_mirror_the_device_and_never_reach_evidence() -> None:
    dev = make_device()
    tsm = connect_to_run(dev)
    assert len(dev.target.keys) == 6
    secrets_seen = []
    for (_port, stream, key_set, tx, sub), (key, _ifv) in dev.target.keys.items():
        assert stream == 1
        # The device's RX key of a sub-stream is the root port's TX key and vice versa.
        assert tsm.root_port.holds_key(RpSlot(not tx, sub, key_set), key)
        assert not tsm.root_port.holds_key(RpSlot(tx, sub, key_set), key)
        secrets_seen.append(key)
    assert len(set(secrets_seen)) == 6  # fresh key per slot
    assert all(st == SLOT_ACTIVE for st in tsm.root_port.states.values())
    text = json.dumps(tsm.evidence()) + repr(tsm.evidence()) + repr(tsm.root_port)
    for key in secrets_seen:
        for form in (key.hex(), key.hex().upper(), key[:8].hex(), key[::-1].hex()):
            assert form not in text
    assert "_keys" not in text


def test_lock_nonce_stays_out_of_evidence() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    lock = dev.tdisp.tdi(0x100).lock
    assert lock is not None and lock.nonce is not None
    assert lock.nonce.hex() not in json.dumps(tsm.evidence())
    assert lock.nonce.hex() not in repr(tsm.tdis)


def test_untrusted_chain_fails_without_session() -> None:
    dev = make_device()
    tsm = make_tsm(identity("other"))  # trusts another root
    done = drive(tsm.connect(), dev)
    assert not done.ok
    assert "GET_CERTIFICATE" in done.reason
    assert "certificate chain not trusted: chain does not lead to a trusted root" in done.reason
    assert tsm.session_id is None and tsm.state == "idle"
    assert dev.responder.sessions == {}
    assert done.evidence["last_error"] == done.reason
    assert done.evidence["spdm"]["session_id"] is None


def test_measurement_mismatch_names_the_index() -> None:
    dev = make_device()
    wrong = bytes(48)
    tsm = make_tsm(reference_values=reference_values(i2=wrong))
    done = drive(tsm.connect(), dev)
    assert not done.ok
    assert "measurement policy violated: index 2: expected " + wrong.hex() in done.reason
    got = meas_digest(0x4, default_measurements()[1].value).hex()
    assert f"got {got}" in done.reason
    assert dev.responder.sessions == {} and tsm.session_id is None
    verdicts = {v["index"]: v["verdict"] for v in done.evidence["policy"]["verdicts"]}
    assert verdicts[2] == "mismatch" and verdicts[1] == "match"


def test_version_mismatch_and_missing_index() -> None:
    dev = make_device()
    rv = ReferenceValues({9: (b"\x00",)}, version="vdev 9.9")
    done = drive(make_tsm(reference_values=rv).connect(), dev)
    assert "index 9: expected a measurement, the device reported none" in done.reason
    rv = ReferenceValues({}, version="vdev 9.9")
    done = drive(make_tsm(reference_values=rv).connect(), dev)
    assert "version: expected 'vdev 9.9', got 'vdev 0.1.0'" in done.reason


def test_report_disagreeing_with_bars_fails_and_start_is_refused() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    wrong = [ExpectedBar(0, 0xFE00_0000, 0x2_0000), EXPECTED[1]]
    done = drive(tsm.report(0, wrong), dev)
    assert not done.ok
    assert "interface report does not match the host's BARs: BAR0: report covers " in done.reason
    assert "(16 pages), expected 0xfe000000-0xfe01ffff (32 pages)" in done.reason
    assert done.evidence["tdis"]["01:00.0"]["report_check"].startswith("mismatch: BAR0")
    exchanges = dev.exchanges
    done = drive(tsm.start(0), dev)
    # A rejected report stays rejected: START sends nothing and says why.
    assert done.errno == -errno.EACCES and dev.exchanges == exchanges
    assert "start failed at START_INTERFACE_REQUEST: TDI 01:00.0: its interface report " \
        "was rejected (mismatch: BAR0: report covers" in done.reason
    assert done.reason.endswith("; STOP and LOCK again")
    assert dev.tdi_state == "CONFIG_LOCKED" and done.tdi_state == TdiState.CONFIG_LOCKED
    # The session is intact: a report against the right BARs is accepted, START works.
    ok(tsm.report(0, EXPECTED), dev)
    ok(tsm.start(0), dev)
    assert dev.tdi_state == "RUN"


def test_start_reads_and_checks_the_report_when_nobody_did() -> None:
    """LOCK then START is the whole flow: START fetches the interface report, checks it
    against the BARs LOCK was given, then starts (PCIe 6.2 §11.3: the TSM reviews the
    report of the locked TDI before START)."""
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0, expected_mmio=EXPECTED), dev)
    seen: list[str] = []
    tsm.listeners.append(lambda _phase, text: seen.append(text))
    done = ok(tsm.start(0), dev)
    assert dev.tdi_state == "RUN" and done.value == "RUN" and done.tdi_state == TdiState.RUN
    assert seen[:3] == ["TDI 01:00.0: interface report, 1 portion(s), 5 MMIO ranges",
                        "report check: matches 2 expected BAR(s)", "TDI 01:00.0: RUN"], seen
    tdi = done.evidence["tdis"]["01:00.0"]
    assert tdi["report_check"] == "matches 2 expected BAR(s)"
    assert {r["range_id"] for r in tdi["report"]["mmio_ranges"]} == {0, 2}


def test_start_refuses_a_report_it_reads_that_misses_the_bars() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    moved = [ExpectedBar(0, 0xFE10_0000, 0x1_0000), EXPECTED[1]]
    ok(tsm.lock(0, expected_mmio=moved), dev)
    done = drive(tsm.start(0), dev)
    assert done.errno == -errno.EACCES
    assert done.reason.startswith("start failed at report check: interface report does not "
                                  "match the host's BARs: BAR0: range at 0xfe000000 where "
                                  "0xfe100000 was expected"), done.reason
    assert dev.tdi_state == "CONFIG_LOCKED" and done.tdi_state == TdiState.CONFIG_LOCKED
    # No START_INTERFACE_REQUEST reached the device: its nonce is still unused.
    assert dev.tdisp.tdi(TDI_ID).history[-1].event.name == "LOCK"


def test_a_refused_tdisp_request_reports_where_the_tdi_really_is() -> None:
    """A TDISP_ERROR changes no state (§11.3.17): the TSM reads the state back, so the
    result names CONFIG_LOCKED for a refused LOCK of a locked TDI, and ERROR only for a
    TDI the device really put into ERROR."""
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    done = drive(tsm.lock(0), dev)
    assert done.errno == -errno.EIO and "INVALID_INTERFACE_STATE" in done.reason
    assert done.reason.startswith("lock failed at LOCK_INTERFACE_REQUEST: "), done.reason
    assert done.tdi_state == TdiState.CONFIG_LOCKED
    ok(tsm.report(0, EXPECTED), dev)
    dev.tdisp.tdi(TDI_ID).config_violation("test: BAR0 written while locked")
    done = drive(tsm.start(0), dev)
    assert not done.ok and "INVALID_INTERFACE_STATE" in done.reason
    assert done.reason.startswith("start failed at START_INTERFACE_REQUEST: "), done.reason
    assert done.tdi_state == TdiState.ERROR
    history = done.evidence["tdis"]["01:00.0"]["history"]
    assert history[-1]["state"] == "ERROR"
    assert history[-1]["reason"] == ("GET_DEVICE_INTERFACE_STATE after "
                                     "START_INTERFACE_REQUEST was refused")
    assert ok(tsm.stop(0), dev).tdi_state == TdiState.CONFIG_UNLOCKED


def test_report_with_unknown_range_id_and_moved_bar() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0, expected_mmio=EXPECTED[:1]), dev)
    done = drive(tsm.report(0), dev)  # expectation given at lock time
    assert "range id 2 at 0xfd000000 is not a BAR the host knows" in done.reason
    moved = [ExpectedBar(0, 0xFE10_0000, 0x1_0000), EXPECTED[1]]
    done = drive(tsm.report(0, moved), dev)
    assert "BAR0: range at 0xfe000000 where 0xfe100000 was expected" in done.reason


def test_lock_twice_surfaces_tdisp_error_by_name() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    done = drive(tsm.lock(0), dev)
    assert not done.ok
    assert "at LOCK_INTERFACE_REQUEST: device answered TDISP_ERROR INVALID_INTERFACE_STATE" \
        in done.reason
    assert tsm.state == "connected"
    ok(tsm.report(0, EXPECTED), dev)
    ok(tsm.start(0), dev)


def test_start_without_lock_and_ops_without_session() -> None:
    dev = make_device()
    tsm = make_tsm()
    done = drive(tsm.lock(0), dev)
    assert done.reason == "lock failed: not connected (run connect first)"
    assert dev.exchanges == 0
    ok(tsm.connect(), dev)
    done = drive(tsm.start(0), dev)
    assert "is not locked by this TSM" in done.reason


def test_responder_reset_mid_flow_then_reconnect() -> None:
    dev = make_device()
    tsm = make_tsm()
    ok(tsm.connect(), dev)
    ok(tsm.lock(0), dev)
    dev.responder.reset()  # e.g. function-level reset of the device's SPDM state
    dev.sync_sessions()
    assert dev.tdi_state == "ERROR"
    done = drive(tsm.report(0, EXPECTED), dev)
    assert not done.ok
    # After a reset the responder has no negotiated version: INVALID_SESSION (DSP0274
    # 1.1) rather than SESSION_REQUIRED.
    assert "device answered SPDM ERROR: responder returned ERROR INVALID_SESSION" in done.reason
    assert tsm.state == "idle" and not tsm.root_port.secure
    e = done.evidence
    assert e["spdm"]["session_state"] == "lost"
    assert e["tdis"]["01:00.0"]["state"] == "ERROR"
    # A later connect works; the TDI is recovered with STOP, then locked again.
    ok(tsm.connect(), dev)
    assert tsm.root_port.secure
    ok(tsm.stop(0), dev)
    ok(tsm.lock(0), dev)
    ok(tsm.report(0, EXPECTED), dev)
    ok(tsm.start(0), dev)
    assert dev.tdi_state == "RUN"


def test_end_session_from_under_the_tsm() -> None:
    dev = make_device()
    tsm = connect_to_run(dev, heartbeat=True)
    sid = tsm.session_id
    assert sid is not None
    dev.responder.sessions.pop(sid)  # the device ends the session on its own
    dev.sync_sessions()
    done = drive(tsm.heartbeat(), dev)
    assert not done.ok and "HEARTBEAT" in done.reason and tsm.state == "idle"
    assert done.evidence["tdis"]["01:00.0"]["state"] == "ERROR"
    ok(tsm.connect(), dev)


@pytest.mark.parametrize("cause, text", [
    (-5, "transport failure: errno -5 (-EIO)"),
    ("DOE timeout", "transport failure: DOE timeout"),
])
def test_transport_failure_during_ide_km_then_reconnect(cause: int | str, text: str) -> None:
    dev = make_device()
    tsm = make_tsm()
    op = tsm.connect()
    while op.phase != "ide_km" or not op.step.startswith("K_SET_GO"):
        assert op.next_request is not None
        op.feed(dev.doe_exchange(op.next_request.doe_type, op.next_request.payload))
    op.fail(cause)
    assert op.done and op.result is not None and not op.result.ok
    assert op.result.reason.startswith("connect failed at K_SET_GO port 0 stream 1 K0 RX PR: ")
    assert op.result.reason.endswith(text)
    assert tsm.state == "idle" and not tsm.root_port.secure
    assert {s["state"] for s in op.result.evidence["ide"]["root_port"]["slots"]} == {"stopped"}
    with pytest.raises(RuntimeError):
        op.feed(b"")
    ok(tsm.connect(), dev)  # GET_VERSION resets the device side; IDE_KM is free again
    assert tsm.root_port.secure and len(dev.target.active) == 6


def test_kp_ack_status_is_named() -> None:
    dev = make_device()
    tsm = make_tsm(random_ifv=True)  # the default device accepts only the initial IFV
    done = drive(tsm.connect(), dev)
    assert "at KEY_PROG port 0 stream 1 K0 RX PR: device refused the key: KP_ACK status " \
        "UNSUPPORTED_VALUE (3)" in done.reason
    # The refused connect is unwound: the session it opened is ended.
    assert dev.responder.sessions == {} and tsm.session_id is None
    assert done.evidence["spdm"]["session_state"] == "ended"
    # A device that accepts random IFVs gets them.
    dev = make_device(idekm_policy=IdeKmPolicy(require_initial_ifv=False))
    ok(tsm.connect(), dev)
    ifvs = {ifv for _k, ifv in dev.target.keys.values()}
    assert len(ifvs) == 6


def test_challenge_authentication_and_concurrent_operation_refused() -> None:
    dev = make_device()
    tsm = make_tsm(authentication="both")
    op = tsm.connect()
    second = tsm.lock(0)
    assert second.done and second.result is not None
    assert second.result.reason == "lock: operation 'connect' is still in progress"
    done = drive(op, dev)
    assert done.ok and done.evidence["spdm"]["authentication"] == "challenge+signed-measurements"


def test_status_without_tdi_needs_no_exchange() -> None:
    tsm = make_tsm()
    op = tsm.status()
    assert op.done and op.result is not None and op.result.value == "idle"


def test_reconnect_while_connected_replaces_the_session() -> None:
    dev = make_device()
    tsm = connect_to_run(dev)
    first = tsm.session_id
    ok(tsm.connect(), dev)
    assert tsm.session_id != first and set(dev.responder.sessions) == {tsm.session_id}
    assert tsm.evidence()["tdis"]["01:00.0"]["state"] == "ERROR"
    assert dev.tdi_state == TdiState.ERROR.name


def test_bench_reports_per_phase_timings() -> None:
    from bench.tsm_connect import PHASES, bench_connect_to_run

    r = bench_connect_to_run(rounds=1)
    assert all(r[p] > 0 for p in PHASES)
    # authentication: VCA (3), DIGESTS, one CERTIFICATE (portions fit 4096), MEASUREMENTS
    assert r["exchanges"] == {"authentication": 6, "session": 2, "ide_km": 13, "tdisp": 7}
    assert abs(r["total"] - sum(r[p] for p in PHASES)) < 1e-9


def test_stream_id_taken_from_the_host_configuration() -> None:
    dev = make_device()
    tsm = make_tsm(stream_id=None)
    done = ok(tsm.connect(), dev)
    assert done.evidence["ide"]["stream_id"] == 1
    assert "using Stream ID 1 configured in selective stream 0" in [
        x["event"] for x in done.evidence["log"]]
    ok(tsm.lock(0), dev)
    lock = dev.tdisp.tdi(0x100).lock
    assert lock is not None and lock.params.default_stream_id == 1


def test_stream_id_chosen_when_the_ide_registers_read_all_zeros() -> None:
    """A responder whose QUERY_RESP register block is all zeros (spdm-emu's sample device
    models no IDE capability): the TSM keys Stream ID 0 by itself and says so."""
    dev = make_device()
    dev.target.registers = (0,) * 7
    tsm = make_tsm(stream_id=None)
    done = ok(tsm.connect(), dev)
    assert done.evidence["ide"]["stream_id"] == 0
    events = [x["event"] for x in done.evidence["log"]]
    assert any("read all zeros" in e and "keying Stream ID 0" in e for e in events)
    assert {stream for _port, stream, *_ in dev.target.keys} == {0}
    ok(tsm.lock(0), dev)
    lock = dev.tdisp.tdi(0x100).lock
    assert lock is not None and lock.params.default_stream_id == 0


def test_registers_without_selective_ide_still_refused() -> None:
    dev = make_device()
    dev.target.registers = (0x0000_0001, 0, 0, 0)  # Link IDE only
    done = drive(make_tsm(stream_id=None).connect(), dev)
    assert not done.ok and "no selective IDE stream" in done.reason


def test_refused_key_mid_stream_unwinds_programmed_keys() -> None:
    dev = make_device()
    acked: list[int] = []

    def refuse_fourth_key(device: Device, n: int) -> None:
        # exchanges: 6 authentication, 2 session, QUERY, then KEY_PROGs from #10
        if n == 13:
            acked.append(len(device.target.keys))
            device.target.fail_program = True

    dev.before = refuse_fourth_key
    tsm = make_tsm()
    done = drive(tsm.connect(), dev)
    assert acked == [3]
    assert "device refused the key: KP_ACK status UNSPECIFIED_FAILURE (4)" in done.reason
    assert "at KEY_PROG port 0 stream 1 K0 TX PR" in done.reason  # the step that failed
    assert not dev.target.keys and dev.responder.sessions == {}
    states = {s["state"] for s in done.evidence["ide"]["device"]["slots"]}
    assert states == {"stopped"}
    events = [x["event"] for x in done.evidence["log"]]
    assert any(e.startswith("unwound: session") for e in events)
    dev.target.fail_program = False
    dev.before = None
    ok(tsm.connect(), dev)


def test_ide_key_refresh_switches_key_sets_on_both_ends() -> None:
    dev = make_device()
    tsm = connect_to_run(dev)
    old_keys = {k for k, _ in dev.target.keys.values()}
    done = ok(tsm.ide_key_refresh(), dev)
    assert done.value == 1 and done.evidence["ide"]["key_set"] == 1
    assert set(dev.target.active.values()) == {1} and len(dev.target.active) == 6
    assert {ks for (_p, _s, ks, _tx, _sub) in dev.target.keys} == {1}
    for (_p, _s, ks, tx, sub), (key, _ifv) in dev.target.keys.items():
        assert key not in old_keys
        assert tsm.root_port.holds_key(RpSlot(not tx, sub, ks), key)
    assert tsm.root_port.secure
    assert all(not tsm.root_port.holds_key(RpSlot(tx, sub, 0), k)
               for k in old_keys for tx in (False, True) for sub in range(3))
    assert dev.tdi_state == "RUN"  # the stream never went Insecure
    ok(tsm.ide_key_refresh(), dev)
    assert set(dev.target.active.values()) == {0}
    ok(tsm.disconnect(), dev)
    assert not dev.target.keys


def test_step_log_is_bounded() -> None:
    dev = make_device()
    tsm = make_tsm(max_log_events=5, heartbeat=True)
    ok(tsm.connect(), dev)
    for _ in range(3):
        ok(tsm.heartbeat(), dev)
    log = tsm.evidence()["log"]
    assert len(log) <= 6 and log[-1]["event"] == "heartbeat: ok"


def test_disconnect_after_the_device_lost_its_keys_still_ends_the_session() -> None:
    """An FLR drops the device's IDE keys and unlocks its TDI: the TSM's K_SET_STOP
    is refused, and disconnect must still send END_SESSION rather than leave the
    session open on the device."""
    from tests.helpers.tsm_rig import STREAM, TDI_ID

    dev = make_device()
    tsm = connect_to_run(dev)
    sid = tsm.session_id
    # What the device does on FLR: the IDE model clears SEL_CTL (stream no longer
    # configured) and its keys, IDE_KM forgets them, the TDI goes CONFIG_UNLOCKED.
    dev.target.streams[0].discard(STREAM)
    dev.target.keys.clear()
    dev.target.active.clear()
    dev.idekm.records.clear()
    dev.tdisp.tdi(TDI_ID).function_reset()
    done = ok(tsm.disconnect(), dev)
    events = [x["event"] for x in done.evidence["log"]]
    assert any("refused K_SET_STOP" in e for e in events), events
    assert dev.responder.sessions == {} and tsm.state == "idle"
    assert done.evidence["spdm"]["session_state"] == "ended"
    assert done.evidence["spdm"]["session_id"] == f"0x{sid:08x}"
    slots = done.evidence["ide"]["device"]["slots"]
    assert slots and all(s["state"] == "lost" for s in slots)


# ---- session kinds: heartbeat, PSK, handshake in the clear ------------------------------


def test_heartbeat_period_only_when_the_tsm_keeps_it() -> None:
    """HeartbeatPeriod is 0 unless both ends set HBEAT_CAP (DSP0274 KEY_EXCHANGE_RSP);
    the TSM sets it only when it can send HEARTBEAT on its own."""
    dev = make_device()
    quiet = connect_to_run(dev)
    assert quiet.evidence()["spdm"]["heartbeat_period"] == 0
    refused = drive(quiet.heartbeat(), dev)
    assert not refused.ok and "did not advertise HBEAT_CAP" in refused.reason
    beating = connect_to_run(make_device(), heartbeat=True)
    assert beating.evidence()["spdm"]["heartbeat_period"] == 30


PSK = {b"tsm-hint": bytes(range(32))}


def test_psk_session_connects_locks_and_runs() -> None:
    dev = make_device(psks=PSK)
    tsm = make_tsm(psk_hint=b"tsm-hint", psks=PSK, reference_values=reference_values())
    done = ok(tsm.connect(), dev)
    spdm = done.evidence["spdm"]
    assert spdm["authentication"] == "psk+measurements-in-session"
    assert dev.responder.sessions[tsm.session_id].psk
    assert all(v["verdict"] == "match" for v in done.evidence["policy"]["verdicts"])
    events = [x["event"] for x in done.evidence["log"]]
    assert any("PSK, hint 'tsm-hint'" in e for e in events)
    assert all(bytes(range(32)).hex() not in e for e in events)  # the PSK is never logged
    ok(tsm.lock(0), dev)
    ok(tsm.report(0, EXPECTED), dev)
    ok(tsm.start(0), dev)
    assert dev.tdi_state == "RUN"
    ok(tsm.key_update(), dev)
    ok(tsm.disconnect(), dev)
    assert dev.responder.sessions == {}


def test_psk_session_refused_cleanly() -> None:
    no_psk = drive(make_tsm(psk_hint=b"tsm-hint", psks=PSK).connect(), make_device())
    assert not no_psk.ok and "does not support PSK sessions" in no_psk.reason
    unknown = drive(make_tsm(psk_hint=b"other", psks=PSK).connect(), make_device(psks=PSK))
    assert not unknown.ok and "no PSK for hint 'other'" in unknown.reason
    wrong = drive(make_tsm(psk_hint=b"tsm-hint", psks={b"tsm-hint": b"x" * 32}).connect(),
                  make_device(psks=PSK))
    assert not wrong.ok and "PSK_EXCHANGE" in wrong.reason


def test_handshake_in_the_clear_connects_and_runs() -> None:
    caps = int(DEFAULT_RSP_CAPS | RspCap.HANDSHAKE_IN_THE_CLEAR)
    dev = make_device(capabilities=caps)
    kinds: list[int] = []
    inner = dev.doe_exchange

    def record(doe_type: int, payload: bytes) -> bytes:
        kinds.append(doe_type)
        return inner(doe_type, payload)

    dev.doe_exchange = record  # type: ignore[method-assign]
    tsm = make_tsm(handshake_in_the_clear=True)
    done = ok(tsm.connect(), dev)
    assert any("in the clear handshake" in x["event"] for x in done.evidence["log"])
    assert dev.responder.sessions[tsm.session_id].handshake_in_clear
    # KEY_EXCHANGE, then FINISH in the clear (DOE type 1); type 2 only after FINISH_RSP.
    first_secured = kinds.index(2)
    assert kinds[first_secured - 2:first_secured] == [1, 1]
    ok(tsm.lock(0), dev)
    ok(tsm.disconnect(), dev)
