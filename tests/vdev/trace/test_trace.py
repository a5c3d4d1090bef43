"""The decoded trace of a full connect, both sides, both formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.vdev.trace.rig import traced_connect


@pytest.fixture(scope="module")
def run(state_dir: Path):  # type: ignore[no-untyped-def]
    return traced_connect(state_dir)


def _index(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def test_device_trace_shows_decrypted_messages_and_transitions(run) -> None:  # type: ignore[no-untyped-def]
    sid = run.tsm.evidence()["spdm"]["session_id"]
    lines = run.device_trace.splitlines()
    text = run.device_trace
    assert " -> doe   - DISCOVERY index=0 version=2" in lines[0]
    assert "-> spdm  - GET_VERSION" in text
    assert f"KEY_EXCHANGE_RSP slot=0 session={sid} sig=ECDSA_P384" in text
    assert f"sess={sid} [secured] FINISH" in text
    assert f"SPDM session {sid} ESTABLISHED" in text
    assert f"sess={sid} [secured] IDE_KM KEY_PROG stream=0 K0 TX PR" in text
    assert "IDE_KM KP_ACK stream=0 K0 TX PR status=SUCCESS" in text
    lock = _index(lines, "[secured] TDISP LOCK_INTERFACE_REQUEST tdi=01:00.0 "
                         "flags=NO_FW_UPDATE|LOCK_MSIX")
    moved = _index(lines, "TDI 01:00.0 CONFIG_UNLOCKED --LOCK--> CONFIG_LOCKED")
    answered = _index(lines, "[secured] TDISP LOCK_INTERFACE_RESPONSE")
    assert lock < moved < answered  # the transition sits where the request caused it
    assert "TDI 01:00.0 CONFIG_LOCKED --START--> RUN" in text
    assert f"SPDM session {sid} ENDED" in text
    # Each secured message is shown between its encrypted objects.
    rec = _index(lines, f"-> doe   sess={sid} SECURED_SPDM")
    assert "[secured] FINISH" in lines[rec + 1]
    assert "[secured] FINISH_RSP" in lines[rec + 2]


def test_tsm_trace_infers_states(run) -> None:  # type: ignore[no-untyped-def]
    sid = run.tsm.evidence()["spdm"]["session_id"]
    text = run.tsm_trace
    assert f"FINISH_RSP => session {sid} ESTABLISHED" in text
    assert "LOCK_INTERFACE_RESPONSE tdi=01:00.0 => TDI 01:00.0 CONFIG_LOCKED" in text
    assert "START_INTERFACE_RESPONSE tdi=01:00.0 => TDI 01:00.0 RUN" in text
    assert f"END_SESSION_ACK => session {sid} ENDED" in text


def test_json_lines(state_dir: Path) -> None:
    run = traced_connect(state_dir, fmt="json")
    events = [json.loads(line) for line in run.device_trace.splitlines()]
    assert {e["proto"] for e in events} == {"doe", "spdm", "idekm", "tdisp", "state"}
    for e in events:
        assert set(e) == {"t", "side", "dir", "proto", "msg", "summary", "session",
                          "secured", "error", "state"}
        assert e["side"] == "device" and e["dir"] in ("req", "rsp", "state")
    secured = [e for e in events if e["secured"]]
    assert secured and all(e["session"] and e["session"].startswith("0x") for e in secured)
    assert {e["msg"] for e in secured} >= {"FINISH", "KEY_PROG", "LOCK_INTERFACE_REQUEST",
                                           "START_INTERFACE_REQUEST", "END_SESSION_ACK"}
    tdi = [e["state"] for e in events if e["msg"] == "TDI"]
    assert tdi[:2] == ["TDI 01:00.0 CONFIG_UNLOCKED --LOCK--> CONFIG_LOCKED "
                       "(session " + secured[0]["session"] + ", stream 0, flags 0x5)",
                       "TDI 01:00.0 CONFIG_LOCKED --START--> RUN"]
    assert not any(e["error"] for e in events)
    [tsm_json] = [json.loads(line) for line in run.tsm_trace.splitlines()[:1]]
    assert tsm_json["side"] == "tsm"


def test_no_secret_without_the_flag(state_dir: Path, caplog: pytest.LogCaptureFixture,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.DEBUG):
        run = traced_connect(state_dir)
    out, err = capsys.readouterr()
    assert run.secrets, "the DHE secret was captured off-band"
    everything = run.device_trace + run.tsm_trace + caplog.text + out + err
    assert "[DHE Secret]" not in everything and "[PSK]" not in everything
    for secret in run.secrets:
        assert secret.hex() not in everything and secret not in run.pcap
    # Nothing the TSM drew at random (IDE keys, IFVs, nonces) is printed in the trace.
    for value in run.random_out:
        if len(value) >= 8:
            assert value.hex() not in run.device_trace + run.tsm_trace
