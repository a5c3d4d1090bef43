"""`vdev trace show` on the decrypted captures of real `vdev tsm connect` and `vdev tsm
provision` runs against the `full` profile (tests/helpers/full_captures.py, the same
captures the Wireshark dissector test reads): the newer messages by their DSP0274 1.3
names, with their fields."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vdev.cli import main


def show(capsys: pytest.CaptureFixture[str], capture: Path, *argv: str) -> list[dict[str, str]]:
    capsys.readouterr()
    assert main(["trace", "show", str(capture), "--protocol", "spdm", "--json", *argv]) == 0
    return [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]


def summaries(lines: list[dict[str, str]], message: str) -> list[str]:
    return [ln["summary"] for ln in lines if ln["msg"] == message]


def test_device_information(full_profile_captures: dict[str, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = show(capsys, full_profile_captures["connect"])
    assert not [ln for ln in lines if ln["msg"].startswith("SPDM_0x")]
    assert summaries(lines, "GET_KEY_PAIR_INFO") == [f"GET_KEY_PAIR_INFO key_pair={n}"
                                                     for n in range(1, 5)]
    infos = summaries(lines, "KEY_PAIR_INFO")
    assert len(infos) == 4
    for n, text in enumerate(infos, start=1):
        assert text.startswith(f"KEY_PAIR_INFO key_pair={n}/4 caps=0 "
                               "usage=KEY_EX|CHALLENGE|MEASUREMENT|ENDPOINT_INFO asym=ECC384 "
                               f"slots={1 << (n - 1):#04x} public_key=")
    [get_mel] = summaries(lines, "GET_MEASUREMENT_EXTENSION_LOG")
    assert re.fullmatch(r"GET_MEASUREMENT_EXTENSION_LOG offset=0 length=\d+", get_mel)
    [mel] = summaries(lines, "MEASUREMENT_EXTENSION_LOG")
    assert re.fullmatch(r"MEASUREMENT_EXTENSION_LOG portion=[1-9]\d* remainder=0", mel)
    assert summaries(lines, "GET_ENDPOINT_INFO") == [
        "GET_ENDPOINT_INFO DeviceClassIdentifier signed slot=1"]
    [ep] = summaries(lines, "ENDPOINT_INFO")
    assert re.fullmatch(r"ENDPOINT_INFO ep_info=[1-9]\d*B slot=1 sig=ECDSA_P384", ep)
    assert all(ln["secured"] for ln in lines if "KEY_PAIR" in ln["msg"] or "ENDPOINT" in
               ln["msg"] or "EXTENSION_LOG" in ln["msg"])


def test_provisioning(full_profile_captures: dict[str, Path],
                      capsys: pytest.CaptureFixture[str]) -> None:
    caps = full_profile_captures
    der = x509.load_pem_x509_csr(caps["csr_pem"].read_bytes()).public_bytes(
        serialization.Encoding.DER)
    lines = show(capsys, caps["csr"])
    [get_csr] = summaries(lines, "GET_CSR")
    assert re.fullmatch(r"GET_CSR key_pair=2 model=GENERIC_CERT tracking_tag=0 "
                        r"requester_info=[1-9]\d*B opaque=0B", get_csr)
    assert summaries(lines, "CSR") == [f"CSR csr={len(der)}B"]
    chain = x509.load_pem_x509_certificates(caps["chain_pem"].read_bytes())
    length = 4 + 48 + sum(len(c.public_bytes(serialization.Encoding.DER)) for c in chain)
    lines = show(capsys, caps["set_cert"])
    assert summaries(lines, "SET_CERTIFICATE") == [
        f"SET_CERTIFICATE slot=5 model=GENERIC_CERT key_pair=2 chain={length}B"]
    assert summaries(lines, "SET_CERTIFICATE_RSP") == ["SET_CERTIFICATE_RSP slot=5"]
    lines = show(capsys, caps["erase"])
    assert summaries(lines, "SET_CERTIFICATE") == [
        "SET_CERTIFICATE slot=5 model=NONE key_pair=2 erase"]


def test_session_messages(full_profile_captures: dict[str, Path],
                          capsys: pytest.CaptureFixture[str]) -> None:
    caps = full_profile_captures
    lines = show(capsys, caps["connect"])
    [kx] = [ln for ln in lines if ln["msg"] == "KEY_EXCHANGE_RSP"]
    sid = kx["session"]
    assert kx["summary"].endswith(f"session={sid} sig=ECDSA_P384 heartbeat=10s")
    # Handshake in the clear: FINISH / FINISH_RSP unsecured, yet of that session.
    assert [(ln["msg"], ln["session"], ln["secured"]) for ln in lines
            if ln["msg"].startswith("FINISH")] == [("FINISH", sid, False),
                                                   ("FINISH_RSP", sid, False)]
    for key in ("connect", "psk"):
        lines = show(capsys, caps[key])
        seq = [ln["summary"] for ln in lines if ln["secured"]]
        i = seq.index("HEARTBEAT")
        assert seq[i + 1] == "HEARTBEAT_ACK"
        ops = [s.split(" ", 1) for s in seq if s.startswith("KEY_UPDATE")]
        assert [(m, s.split(" tag=")[0]) for m, s in ops] == [
            ("KEY_UPDATE", "op=UpdateAllKeys"), ("KEY_UPDATE_ACK", "op=UpdateAllKeys"),
            ("KEY_UPDATE", "op=VerifyNewKey"), ("KEY_UPDATE_ACK", "op=VerifyNewKey")]
        assert ops[0][1] == ops[1][1] and ops[2][1] == ops[3][1]  # the Tag echoed
        assert seq[-2:] == ["END_SESSION", "END_SESSION_ACK"]
    lines = show(capsys, caps["psk"])
    [psk] = summaries(lines, "PSK_EXCHANGE")
    m = re.fullmatch(r"PSK_EXCHANGE req_session=0x[0-9a-f]{4} meas_summary=0 "
                     r"hint=18B context=(\d+)B", psk)
    assert m and int(m[1]) >= 32
    [rsp] = [ln for ln in lines if ln["msg"] == "PSK_EXCHANGE_RSP"]
    assert re.fullmatch(rf"PSK_EXCHANGE_RSP session={rsp['session']} context=\d+B "
                        r"heartbeat=10s", rsp["summary"])
    assert [(ln["msg"], ln["session"]) for ln in lines if "PSK_FINISH" in ln["msg"]] == [
        ("PSK_FINISH", rsp["session"]), ("PSK_FINISH_RSP", rsp["session"])]
