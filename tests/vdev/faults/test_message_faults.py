"""Message-layer faults (rules naming an SPDM, IDE_KM or TDISP request) against the real
requester side: the TSM model over the device's own DOE mailbox, driven with the Linux
doe.c register sequence.  Each test breaks one step, checks how the TSM fails (or what it
records), then checks the device still serves a clean run."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spdm.codes import Req, Rsp
from tdisp.codes import TdiState
from tests.vdev.faults.rig import FaultRig
from tsm import DeviceRef, TsmConfig, TsmModel
from tsm.mailbox_protocol import Done
from tsm.reference_values import ReferenceValues
from vdev.doe.requester import DoeIoError
from vdev.endpoint.tee_device import TeeDevice
from vdev.faults import FaultPlan, install
from vdev.faults.names import message_name
from vdev.faults.plan import FaultPlanError, parse_spec


class Rig(FaultRig):
    def __init__(self, state_dir: Path, *specs: str) -> None:
        super().__init__(state_dir, *specs)
        self.doe.discover()  # as the kernel does before any SPDM (pci_doe_cache_features)

    def tsm(self, **kw: Any) -> TsmModel:
        kw.setdefault("stream_id", None)
        return TsmModel(DeviceRef(0, 1, 0),
                        TsmConfig(trust_anchors=[self.device.identity.root], **kw))

    def run(self, op: Any) -> Done:
        while not op.done:
            req = op.next_request
            try:
                reply = self.doe.exchange_bytes(req.doe_type, req.payload)
            except DoeIoError as exc:
                op.fail(f"DOE: {exc}")
                continue
            op.feed(reply)
        result: Done = op.result
        return result

    def to_run(self, tsm: TsmModel) -> list[Done]:
        """connect, lock, report, start: every result, stopping at the first failure."""
        out: list[Done] = []
        for make in (tsm.connect, lambda: tsm.lock(0), lambda: tsm.report(0),
                     lambda: tsm.start(0)):
            out.append(self.run(make()))
            if not out[-1].ok:
                break
        return out

    def clean_run(self) -> None:
        """The fault is spent: a fresh TSM takes the device to RUN and back."""
        tsm = self.tsm()
        results = self.to_run(tsm)
        assert all(r.ok for r in results), results[-1].reason
        assert self.device.tdi.state == TdiState.RUN
        assert self.run(tsm.disconnect()).ok


def test_message_names_cover_vdms(state_dir: Path) -> None:
    rig = Rig(state_dir, "duplicate:doe:nth=999")  # an installed, idle injector
    seen: list[str] = []
    original = rig.device.responder.hooks.message_interceptor
    assert original is not None

    def spy(sid: int | None, request: bytes, process: Callable[[bytes], bytes]) -> bytes:
        seen.append(message_name(request))
        return original(sid, request, process)

    rig.device.responder.hooks.message_interceptor = spy
    tsm = rig.tsm()
    assert rig.run(tsm.connect()).ok
    assert seen[:3] == ["GET_VERSION", "GET_CAPABILITIES", "NEGOTIATE_ALGORITHMS"]
    for name in ("KEY_EXCHANGE", "FINISH", "QUERY", "KEY_PROG", "K_SET_GO"):
        assert name in seen
    assert rig.events == []


def test_wrong_nonce_makes_start_fail(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_nonce")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert [r.ok for r in results] == [True, True, True, False]
    assert "INVALID_NONCE" in results[-1].reason
    assert rig.device.tdi.state == TdiState.CONFIG_LOCKED  # the device kept its own nonce
    assert rig.events == [
        f"wrong_nonce LOCK_INTERFACE_RESPONSE #1 in session {tsm.session_id:#010x} "
        f"(START_INTERFACE_NONCE inverted)"]
    assert rig.run(tsm.disconnect()).ok
    rig.clean_run()


def test_report_mismatch_is_caught_by_the_report_check(state_dir: Path) -> None:
    rig = Rig(state_dir, "report_mismatch")
    rig.device.config.write_int(0x10, 4, 0xFE000000)  # BAR0 programmed: one MMIO range
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    report = results[2]
    assert report.ok  # the report parses ...
    mmio = report.value["mmio_ranges"][0]
    assert int(mmio["first_page"], 16) == 0xFE001000  # ... but BAR0 one page higher
    assert rig.events[0].startswith("report_mismatch DEVICE_INTERFACE_REPORT #1")
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_report_mismatch_against_expected_bars_refuses_lock(state_dir: Path) -> None:
    from tsm.device_ref import ExpectedBar

    rig = Rig(state_dir, "report_mismatch")
    rig.device.config.write_int(0x10, 4, 0xFE000000)
    tsm = rig.tsm()
    assert rig.run(tsm.connect()).ok
    bar0 = next(b for b in rig.device.live_bars() if b.index == 0)
    assert rig.run(tsm.lock(0, expected_mmio=[ExpectedBar(0, bar0.base, bar0.size)])).ok
    done = rig.run(tsm.report(0))
    assert not done.ok
    assert "report" in done.reason.lower() and done.errno == -errno.EACCES
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_tdi_error_forces_error_state(state_dir: Path) -> None:
    rig = Rig(state_dir, "tdi_error:START_INTERFACE_REQUEST")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert not results[-1].ok and "INVALID_INTERFACE_STATE" in results[-1].reason
    assert rig.device.tdi.state == TdiState.ERROR
    assert "(TDI CONFIG_LOCKED -> ERROR)" in rig.events[0]
    rig.run(tsm.disconnect())  # STOP from ERROR back to CONFIG_UNLOCKED
    rig.clean_run()


def test_tdisp_error_code(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:LOCK_INTERFACE_REQUEST:code=Busy")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert not results[1].ok and "BUSY" in results[1].reason
    assert rig.device.tdi.state == TdiState.CONFIG_UNLOCKED  # not processed
    assert "error LOCK_INTERFACE_REQUEST #1" in rig.events[0]
    assert "TDISP_ERROR BUSY" in rig.events[0]
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_idekm_kp_ack_error_status(state_dir: Path) -> None:
    rig = Rig(state_dir, "error:KEY_PROG:code=UNSUPPORTED_PORT_INDEX")
    done = rig.run(rig.tsm().connect())
    assert not done.ok
    assert "UNSUPPORTED_PORT_INDEX" in done.reason or "status" in done.reason.lower()
    assert "KP_ACK UNSUPPORTED_PORT_INDEX" in rig.events[0]
    assert rig.device.idekm.records == {} or all(
        r is not None for r in rig.device.idekm.records.values())
    assert rig.run(rig.tsm().connect()).ok


def test_changed_measurement_is_validly_signed_and_fails_policy(state_dir: Path) -> None:
    rig = Rig(state_dir, "changed_measurement:GET_MEASUREMENTS:index=1")
    firmware = rig.device.profile.firmware_digest_bytes.hex()
    policy = ReferenceValues.from_dict({"measurements": {"1": firmware}})
    done = rig.run(rig.tsm(reference_values=policy).connect())
    assert not done.ok and done.errno == -errno.EACCES
    assert "1" in done.reason and "signature" not in done.reason.lower()
    assert len(rig.events) == 1
    assert rig.events[0].startswith("changed_measurement GET_MEASUREMENTS #1")
    assert "block 1 differs, validly signed" in rig.events[0]
    assert rig.run(rig.tsm(reference_values=policy).connect()).ok


def test_wrong_chain_is_untrusted(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_chain")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and done.errno == -errno.EACCES
    assert rig.events[0].startswith("wrong_chain GET_CERTIFICATE #1")
    rig.clean_run()  # the swap ends with the next GET_VERSION


def test_wrong_slot_is_refused(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_slot:GET_CERTIFICATE:slot=3")
    done = rig.run(rig.tsm().connect())
    assert not done.ok
    assert done.errno in (-errno.EPROTO, -errno.EACCES)
    assert "SlotID 0 -> 3" in rig.events[0]
    rig.clean_run()


def test_wrong_version_spdm(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_version:GET_DIGESTS")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and done.errno == -errno.EPROTO
    assert "SPDMVersion 0x13 -> 0x12" in rig.events[0]
    rig.clean_run()


def test_wrong_version_tdisp(state_dir: Path) -> None:
    rig = Rig(state_dir, "wrong_version:GET_TDISP_VERSION")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert not results[-1].ok and results[-1].errno == -errno.EPROTO
    assert "TDISPVersion 0x10 -> 0x20" in rig.events[0]
    rig.run(tsm.disconnect())
    rig.clean_run()


def test_corrupt_named_field_in_session(state_dir: Path) -> None:
    rig = Rig(state_dir)
    tsm = rig.tsm()
    assert all(r.ok for r in rig.to_run(tsm))
    # Armed at run time, as `vdev ctl faults arm` does.
    rig.injector.plan.rules.append(parse_spec("corrupt:GET_DEVICE_INTERFACE_STATE:field=state"))
    status = rig.run(tsm.status(0))
    assert rig.events == [f"corrupt DEVICE_INTERFACE_STATE #1 in session "
                          f"{tsm.session_id:#010x} (state)"]
    # RUN (2) with bit 0 flipped is 3: the TSM is told ERROR while the TDI runs.
    assert status.ok and status.value == "ERROR"
    assert rig.device.tdi.state == TdiState.RUN
    rig.run(tsm.disconnect())


def test_corrupt_signature_field(state_dir: Path) -> None:
    rig = Rig(state_dir, "corrupt:CHALLENGE:field=signature")
    done = rig.run(rig.tsm(authentication="challenge").connect())
    assert not done.ok and done.errno == -errno.EACCES
    assert "CHALLENGE_AUTH #1 (signature)" in rig.events[0]
    rig.clean_run()


def test_corrupt_mac_of_a_named_secured_message(state_dir: Path) -> None:
    rig = Rig(state_dir, "corrupt:FINISH:field=mac")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and done.errno == -errno.EBADMSG
    assert rig.events[0].startswith("corrupt FINISH_RSP #1") and "(MAC)" in rig.events[0]
    rig.clean_run()


def test_replay_secured_record_fails_authentication(state_dir: Path) -> None:
    # The second secured record answered with the first one (old sequence number).
    rig = Rig(state_dir, "replay:secured:nth=2")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and done.errno == -errno.EBADMSG
    assert rig.events[0].startswith("replay secured response #2")
    rig.clean_run()


def test_replay_plaintext_in_session(state_dir: Path) -> None:
    # The TSM reads the TDI state before LOCK and after START; the second read answered
    # with the first answer, re-sealed: the record authenticates, the content is stale.
    rig = Rig(state_dir, "replay:GET_DEVICE_INTERFACE_STATE:nth=2")
    tsm = rig.tsm()
    results = rig.to_run(tsm)
    assert [r.ok for r in results] == [True, True, True, False]
    assert "CONFIG_UNLOCKED after START" in results[-1].reason
    assert rig.device.tdi.state == TdiState.RUN  # the device did start
    assert rig.events == [f"replay DEVICE_INTERFACE_STATE #2 in session "
                          f"{tsm.session_id:#010x} (the previous "
                          f"GET_DEVICE_INTERFACE_STATE response)"]
    # The TSM believes CONFIG_UNLOCKED, but it locked the TDI in this session: its
    # disconnect stops it anyway, so the next TSM finds the device unlocked.
    assert rig.run(tsm.disconnect()).ok
    assert rig.device.tdi.state == TdiState.CONFIG_UNLOCKED
    rig.clean_run()


def test_duplicate_answers_the_next_request_with_a_stale_response(state_dir: Path) -> None:
    rig = Rig(state_dir, "duplicate:GET_CAPABILITIES")
    done = rig.run(rig.tsm().connect())
    assert not done.ok and done.errno == -errno.EPROTO  # CAPABILITIES for NEGOTIATE_ALGORITHMS
    assert rig.events == ["duplicate CAPABILITIES #1 (sent again for the next request)",
                          "duplicate: previous response delivered again for "
                          "NEGOTIATE_ALGORITHMS (not processed)"]
    rig.clean_run()


def test_not_ready_then_respond_if_ready(state_dir: Path) -> None:
    rig = Rig(state_dir, "not_ready:GET_DIGESTS")
    assert rig.run(rig.tsm().connect()).ok  # the requester polls RESPOND_IF_READY
    assert rig.events == ["not_ready GET_DIGESTS #1 (ERROR ResponseNotReady; the real "
                          "response waits for RESPOND_IF_READY)"]


def test_doe_error_by_name_inside_a_session(state_dir: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(state_dir, "doe_error:K_SET_GO")
    with caplog.at_level(logging.WARNING):
        done = rig.run(rig.tsm().connect())
    assert not done.ok and "DOE" in done.reason
    assert "doe_error K_SET_GO #1" in rig.events[0] and "DOE ERROR bit" in rig.events[0]
    rig.doe.abort()
    rig.clean_run()


def test_every_injection_reaches_the_trace(state_dir: Path) -> None:
    import io

    from vdev.trace.attach import attach_device
    from vdev.trace.tracer import Tracer

    rig = Rig(state_dir, "wrong_nonce")
    out = io.StringIO()
    attach_device(Tracer("device", out=out), rig.device)
    tsm = rig.tsm()
    rig.to_run(tsm)
    assert "wrong_nonce LOCK_INTERFACE_RESPONSE #1" in out.getvalue()


@pytest.mark.parametrize("spec, words", [
    ("wrong_nonce:GET_DIGESTS", ["wrong_nonce", "LOCK_INTERFACE_REQUEST"]),
    ("tdi_error:KEY_EXCHANGE", ["tdi_error", "not KEY_EXCHANGE"]),
    ("wrong_version:KEY_PROG", ["wrong_version", "not KEY_PROG"]),
    ("not_ready:FINISH", ["not_ready", "not FINISH"]),
    ("replay:bogus", ["'match'", "bogus"]),
    ("error:KEY_PROG:code=SUCCESS", ["SUCCESS is no error"]),
    ("error:START_INTERFACE_REQUEST:code=NOPE", ["INVALID_NONCE"]),
    ("wrong_slot:GET_CERTIFICATE:slot=16", ["'slot'"]),
    ("changed_measurement:secured", ["name the request"]),
    ("corrupt:GET_DIGESTS:field=x,offset=1", ["either offset or field"]),
])
def test_rules_are_validated(spec: str, words: list[str]) -> None:
    with pytest.raises(FaultPlanError) as exc:
        parse_spec(spec)
    for w in words:
        assert w in str(exc.value)


def test_default_matches_and_json() -> None:
    assert parse_spec("wrong_nonce").match == "LOCK_INTERFACE_REQUEST"
    assert parse_spec("report_mismatch").match == "GET_DEVICE_INTERFACE_REPORT"
    assert parse_spec("wrong_chain::every").every
    assert parse_spec("changed_measurement").match == "GET_MEASUREMENTS"
    assert parse_spec("wrong_slot:CHALLENGE").match == "CHALLENGE"
    with pytest.raises(FaultPlanError, match="'match': required for 'tdi_error'"):
        parse_spec("tdi_error")
    rule = parse_spec("error:START_INTERFACE_REQUEST:code=InvalidNonce")
    assert rule.to_json()["code"] == "INVALID_NONCE"
    assert parse_spec("error:KEY_PROG").to_json()["code"] == "UNSPECIFIED_FAILURE"
    assert parse_spec("corrupt:KEY_EXCHANGE:field=signature").to_json()["field"] == "signature"


def test_unknown_field_is_refused_when_the_rule_is_made() -> None:
    with pytest.raises(FaultPlanError) as err:
        FaultPlan.from_specs(["corrupt:GET_DIGESTS:field=nonexistent"])
    text = str(err.value)
    assert "DIGESTS (the response to GET_DIGESTS) has no field 'nonexistent'" in text
    assert "its fields: version, code, param1, param2, " in text and "'mac'" in text


def test_field_names_come_from_the_response_declarations() -> None:
    # The example: KEY_EXCHANGE_RSP has `signature`, not `sig`.
    with pytest.raises(FaultPlanError, match="KEY_EXCHANGE_RSP .* no field 'sig'; its "
                       "fields: .*opaque, signature, verify_data"):
        parse_spec("corrupt:KEY_EXCHANGE:field=sig")
    with pytest.raises(FaultPlanError, match="LOCK_INTERFACE_RESPONSE .*no field 'nonse'; "
                       "its fields: version, message_type, nonce"):
        parse_spec("corrupt:LOCK_INTERFACE_REQUEST:field=nonse")
    with pytest.raises(FaultPlanError, match="KP_ACK .*its fields: stream_id, "
                       "key_sub_stream, port_index, status"):
        parse_spec("corrupt:KEY_PROG:field=slot")
    with pytest.raises(FaultPlanError, match="corrupts whole DOE objects by offset"):
        parse_spec("corrupt:doe:field=signature")
    with pytest.raises(FaultPlanError, match="only secured records carry a MAC"):
        parse_spec("corrupt:doe:field=mac")
    for ok in ("corrupt:KEY_EXCHANGE:field=signature", "corrupt:GET_MEASUREMENTS:field=nonce",
               "corrupt:KEY_PROG:field=status", "corrupt:QUERY:field=max_port_index",
               "corrupt:GET_DEVICE_INTERFACE_STATE:field=state", "corrupt:secured:field=mac",
               "corrupt:FINISH:field=mac", "corrupt:END_SESSION:field=param1"):
        assert parse_spec(ok).field_name


def test_socket_path_drop_gives_an_empty_reply(state_dir: Path) -> None:
    from vdev.spdm_emu.connection import SpdmEmuResponder
    from vdev.spdm_emu.frame import TransportType

    device = TeeDevice(state_dir=state_dir)
    install(device, FaultPlan.from_specs(["drop:GET_VERSION", "delay:GET_CAPABILITIES:"
                                          "delay_ms=250"]))
    emu = SpdmEmuResponder(device, TransportType.NONE)
    assert emu.message(bytes([0x10, Req.GET_VERSION, 0, 0])) == b""
    version = emu.message(bytes([0x10, Req.GET_VERSION, 0, 0]))
    assert version[1] == Rsp.VERSION and emu.take_reply_delay() == 0
    caps = emu.message(bytes([0x12, Req.GET_CAPABILITIES, 0, 0]) + bytes(16))
    assert caps[1] in (Rsp.CAPABILITIES, Rsp.ERROR)
    assert emu.take_reply_delay() == 0.25 and emu.take_reply_delay() == 0
