"""contrib/wireshark/vdev-doe.lua under tshark, on the pcaps of a real connect to RUN and
back (`vdev tsm connect` against the in-process device): DOE objects, SPDM messages,
secured records, and IDE_KM / TDISP inside them when the capture was written decrypted.

`make test` installs Debian's tshark package first (the `tools` target) and sets
VDEV_REQUIRE_TOOLS=1, so a missing tshark fails there instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers.cli import vdev
from tests.helpers.spdm_emu_server import EmuHandle
from vdev.vm.env import REPO

DISSECTOR = REPO / "contrib" / "wireshark" / "vdev-doe.lua"
TSHARK = shutil.which("tshark")

if TSHARK is None:
    if os.environ.get("VDEV_REQUIRE_TOOLS"):
        pytest.fail("tshark is missing: `make test` installs it (apt-get install tshark); "
                    "the Wireshark dissector test needs it", pytrace=False)
    pytestmark = pytest.mark.skip(reason="tshark not installed (make test installs it)")


def tshark(capture: Path, *args: str) -> str:
    assert TSHARK is not None
    out = subprocess.run([TSHARK, "-n", "-X", f"lua_script:{DISSECTOR}", "-r", str(capture),
                          *args], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(capture.parent)})
    assert out.returncode == 0, out.stderr
    assert "Lua: Error" not in out.stderr and "Error during loading" not in out.stderr, \
        out.stderr
    return out.stdout


def fields(capture: Path, *names: str, display: str | None = None) -> list[list[str]]:
    args = ["-T", "fields", *(a for n in names for a in ("-e", n))]
    if display:
        args += ["-Y", display]
    return [line.split("\t") for line in tshark(capture, *args).splitlines()]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.helpers.spdm_emu_server import start_server
    from vdev.spdm_emu.frame import TransportType

    work = tmp_path_factory.mktemp("wireshark")
    emu: EmuHandle
    emu, shutdown = start_server(work / "identity", TransportType.PCI_DOE)
    try:
        anchor = work / "root.pem"
        anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
        out = vdev("tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor",
                   anchor, "--start", "--pcap", work / "tsm.pcap", "--pcap-decrypted",
                   work / "tsm.pcapng")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "WARNING: --pcap-decrypted" in out.stderr
    finally:
        shutdown()
    return {"wire": work / "tsm.pcap", "decrypted": work / "tsm.pcapng"}


def test_spdm_messages_and_versions(captures: dict[str, Path]) -> None:
    rows = fields(captures["wire"], "doe.type", "spdm.message", "spdm.version",
                  "spdm.version_entry", display="spdm.code")
    assert rows[:4] == [["1", "GET_VERSION", "1.0", ""], ["1", "VERSION", "1.0", "1.2,1.3"],
                        ["1", "GET_CAPABILITIES", "1.3", ""], ["1", "CAPABILITIES", "1.3", ""]]
    names = [r[1] for r in rows]
    # The 1.7 KB P-384 chain comes in one CERTIFICATE (portions fit DataTransferSize).
    assert names[4:14] == ["NEGOTIATE_ALGORITHMS", "ALGORITHMS", "GET_DIGESTS", "DIGESTS",
                           "GET_CERTIFICATE", "CERTIFICATE", "GET_MEASUREMENTS",
                           "MEASUREMENTS", "KEY_EXCHANGE", "KEY_EXCHANGE_RSP"]
    algorithms = fields(captures["wire"], "spdm.base_asym_sel", "spdm.base_hash_sel",
                        display="spdm.code == 0x63")
    assert algorithms == [["ECDSA_P384", "SHA_384"]]


def test_session_id_and_encrypted_records(captures: dict[str, Path]) -> None:
    assert fields(captures["wire"], "spdm.req_session_id", "spdm.rsp_session_id",
                  "spdm.session_id", display="spdm.code == 0x64") == [
        ["", "0xff00", "0xff000001"]]
    records = fields(captures["wire"], "doe.type", "spdm_secured.session_id",
                     "spdm_secured.decrypted", "spdm_secured.mac", display="spdm_secured")
    assert len(records) > 40
    assert {(r[0], r[1], r[2]) for r in records} == {("2", "0xff000001", "0")}
    assert all(len(r[3]) == 32 for r in records)  # 16-byte MAC, in hex
    assert not fields(captures["wire"], "tdisp.message", display="tdisp")  # encrypted


def test_decrypted_capture_shows_idekm_and_tdisp(captures: dict[str, Path]) -> None:
    cap = captures["decrypted"]
    secured = fields(cap, "spdm_secured.decrypted", "spdm_secured.session_id",
                     display="spdm_secured")
    assert secured and {tuple(r) for r in secured} == {("1", "0xff000001")}
    ide = [r[0] for r in fields(cap, "idekm.object", display="idekm")]
    assert ide[:2] == ["QUERY", "QUERY_RESP"]
    assert ide.count("KEY_PROG") == 6 and ide.count("KP_ACK") == 6
    assert ide.count("K_SET_GO") == 6 and ide.count("K_SET_STOP") == 6
    acks = fields(cap, "idekm.status", "idekm.direction", "idekm.sub_stream",
                  display="idekm.object_id == 3")
    assert [(r[1], r[2]) for r in acks] == [("0", "0"), ("0", "1"), ("0", "2"),
                                            ("1", "0"), ("1", "1"), ("1", "2")]
    assert {r[0] for r in acks} == {"0"}  # SUCCESS
    tdisp = [r[0] for r in fields(cap, "tdisp.message", display="tdisp")]
    assert tdisp[:4] == ["GET_TDISP_VERSION", "TDISP_VERSION", "GET_TDISP_CAPABILITIES",
                         "TDISP_CAPABILITIES"]
    for a, b in (("LOCK_INTERFACE_REQUEST", "LOCK_INTERFACE_RESPONSE"),
                 ("GET_DEVICE_INTERFACE_REPORT", "DEVICE_INTERFACE_REPORT"),
                 ("START_INTERFACE_REQUEST", "START_INTERFACE_RESPONSE"),
                 ("STOP_INTERFACE_REQUEST", "STOP_INTERFACE_RESPONSE")):
        assert tdisp.index(b) == tdisp.index(a) + 1
    states = fields(cap, "tdisp.tdi", "tdisp.tdi_state", display="tdisp.message_type == 0x05")
    assert states == [["01:00.0", "0"], ["01:00.0", "2"], ["01:00.0", "0"]]
    verbose = tshark(cap, "-V", "-Y", "tdisp.tdi_state == 2")
    assert "TDI_STATE: RUN (2)" in verbose and "TDISPVersion: 1.0" in verbose
    assert "SPDM secured message (DSP0277), session 0xff000001, decrypted" in verbose
    # Everything the wire capture has, in the same order, plus what the records carried.
    assert len(fields(cap, "frame.number")) == len(fields(captures["wire"], "frame.number"))
    names = [r[0] for r in fields(cap, "spdm.message", display="spdm_secured")]
    assert names[:2] == ["FINISH", "FINISH_RSP"] and names[-2:] == ["END_SESSION",
                                                                      "END_SESSION_ACK"]


@pytest.fixture(scope="module")
def pqc_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A connect to RUN with the `pqc` profile (SPDM 1.4, ML-DSA-87, ML-KEM-1024): the
    chain, the signed measurements and KEY_EXCHANGE_RSP exceed 4096 bytes."""
    from tests.helpers.spdm_emu_server import start_server
    from vdev.profiles import load_profile
    from vdev.spdm_emu.frame import TransportType

    work = tmp_path_factory.mktemp("wireshark-pqc")
    emu, shutdown = start_server(work / "identity", TransportType.PCI_DOE, load_profile("pqc"))
    try:
        anchor = work / "root.pem"
        anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
        out = vdev("tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor",
                   anchor, "--start", "--pcap", work / "pqc.pcap")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        shutdown()
    return work / "pqc.pcap"


def test_spdm14_algorithms_and_chunks(pqc_capture: Path) -> None:
    """DSP0274 1.4: PqcAsymSel and the KEMAlg AlgStruct in ALGORITHMS; CHUNK_GET /
    CHUNK_RESPONSE with u32 ChunkSeqNo; the large messages reassembled and dissected."""
    assert fields(pqc_capture, "spdm.version", "spdm.pqc_asym_sel", "spdm.kem_sel",
                  "spdm.base_hash_sel", display="spdm.code == 0x63") == [
        ["1.4", "ML_DSA_87", "ML_KEM_1024", "SHA_384"]]
    gets = fields(pqc_capture, "spdm.chunk.handle", "spdm.chunk.seq_no",
                  display="spdm.code == 0x86")
    assert gets and gets[0][1] == "0" and [g[1] for g in gets[:2]] == ["0", "1"]
    first = fields(pqc_capture, "spdm.chunk.seq_no", "spdm.chunk.size",
                   "spdm.chunk.large_message_size", display="spdm.chunk.seq_no == 0 && "
                   "spdm.code == 0x06")
    assert first and all(int(r[1]) == 4096 - 16 for r in first)
    # The KEY_EXCHANGE_RSP that came in chunks is dissected whole: its session ID.
    assert ["0xff000001"] in fields(pqc_capture, "spdm.session_id",
                                    display="spdm.code == 0x64")
    info = tshark(pqc_capture, "-Y", "spdm.chunk.last == 1")
    assert "KEY_EXCHANGE_RSP" in info and "MEASUREMENTS" in info


# ---- the newer messages, on the `full` profile (tests/helpers/full_captures.py) ----------

def test_every_message_has_its_dsp0274_name(full_profile_captures: dict[str, Path]) -> None:
    """DSP0274 1.3 Tables 4 and 5 name every code these commands put on the wire."""
    names: set[str] = set()
    for key in ("connect", "psk", "csr", "set_cert", "erase"):
        names |= {r[0] for r in fields(full_profile_captures[key], "spdm.message",
                                       display="spdm.code")}
    assert not [n for n in names if n.startswith("0x")]
    assert {"GET_KEY_PAIR_INFO", "KEY_PAIR_INFO", "GET_MEASUREMENT_EXTENSION_LOG",
            "MEASUREMENT_EXTENSION_LOG", "GET_ENDPOINT_INFO", "ENDPOINT_INFO", "GET_CSR",
            "CSR", "SET_CERTIFICATE", "SET_CERTIFICATE_RSP", "HEARTBEAT", "HEARTBEAT_ACK",
            "KEY_UPDATE", "KEY_UPDATE_ACK", "PSK_EXCHANGE", "PSK_EXCHANGE_RSP", "PSK_FINISH",
            "PSK_FINISH_RSP", "END_SESSION", "END_SESSION_ACK"} <= names


def test_key_pair_info_mel_and_endpoint_info(full_profile_captures: dict[str, Path]) -> None:
    cap = full_profile_captures["connect"]
    assert fields(cap, "spdm.key_pair_id", display="spdm.code == 0xfc") == [
        ["1"], ["2"], ["3"], ["4"]]
    # Four slots with a P-384 key each, key pair N certifying slot N-1 (the profile).
    info = fields(cap, "spdm.key_pair_id", "spdm.key_pair.total",
                  "spdm.key_pair.current_key_usage", "spdm.key_pair.current_asym_algo",
                  "spdm.key_pair.assoc_cert_slot_mask", "spdm.key_pair.public_key_info_length",
                  "spdm_secured.app_data_length", display="spdm.code == 0x7c")
    assert [r[:6] for r in info] == [
        [str(n), "4", "KeyEx|Challenge|Measurement|EndpointInfo", "ECC384",
         f"0x{1 << (n - 1):02x}", r[5]] for n, r in zip(range(1, 5), info, strict=True)]
    assert all(int(r[6]) == 23 + int(r[5]) for r in info)  # fixed part + PublicKeyInfo
    # GET_MEASUREMENT_EXTENSION_LOG Offset/Length and MEASUREMENT_EXTENSION_LOG
    # PortionLength/RemainderLength, 32 bits each: the whole log in one portion.
    assert fields(cap, "spdm.offset", display="spdm.code == 0xef") == [["0x00000000"]]
    [[portion, remainder, app]] = fields(cap, "spdm.portion_length", "spdm.remainder_length",
                                         "spdm_secured.app_data_length",
                                         display="spdm.code == 0x6f")
    assert remainder == "0x00000000" and int(portion, 16) == int(app) - 12 > 0
    # The signed endpoint information of slot 1: the response carries the Nonce.
    assert fields(cap, "spdm.endpoint_info.sub_code", "spdm.slot_id",
                  "spdm.endpoint_info.signature_requested", display="spdm.code == 0x87") == [
        ["0x01", "1", "1"]]
    [[slot, length, app]] = fields(cap, "spdm.slot_id", "spdm.endpoint_info.length",
                                   "spdm_secured.app_data_length", display="spdm.code == 0x07")
    assert slot == "1" and int(app) == 8 + 32 + 4 + int(length) + 96  # ECDSA P-384


def test_csr_and_set_certificate(full_profile_captures: dict[str, Path]) -> None:
    caps = full_profile_captures
    csr = x509.load_pem_x509_csr(caps["csr_pem"].read_bytes())
    der = csr.public_bytes(serialization.Encoding.DER)
    [[key_pair, model, info_length]] = fields(
        caps["csr"], "spdm.key_pair_id", "spdm.cert_model", "spdm.csr.requester_info_length",
        display="spdm.code == 0xed")
    assert (key_pair, model) == ("2", "3") and int(info_length) > 0  # GenericCert
    assert fields(caps["csr"], "spdm.csr.length", display="spdm.code == 0x6d") == [
        [str(len(der))]]
    chain = x509.load_pem_x509_certificates(caps["chain_pem"].read_bytes())
    chain_length = 4 + 48 + sum(len(c.public_bytes(serialization.Encoding.DER))
                                for c in chain)  # Length, Reserved, SHA-384 RootHash
    assert fields(caps["set_cert"], "spdm.slot_id", "spdm.cert_model",
                  "spdm.set_certificate.erase", "spdm.key_pair_id", "spdm.cert_chain_length",
                  display="spdm.code == 0xee") == [["5", "3", "0", "2", str(chain_length)]]
    assert fields(caps["set_cert"], "spdm.slot_id", display="spdm.code == 0x6e") == [["5"]]
    assert fields(caps["erase"], "spdm.slot_id", "spdm.set_certificate.erase",
                  "spdm.cert_chain_length", display="spdm.code == 0xee") == [["5", "1", ""]]


def test_session_messages(full_profile_captures: dict[str, Path]) -> None:
    """HEARTBEAT, KEY_UPDATE (operation names, the tag echoed), END_SESSION, the
    HeartbeatPeriod of KEY_EXCHANGE_RSP / PSK_EXCHANGE_RSP, PSK_EXCHANGE's lengths and the
    session ID built from PSK_EXCHANGE(_RSP)."""
    caps = full_profile_captures
    for key, rsp in (("connect", "0x64"), ("psk", "0x66")):
        [[period, sid]] = fields(caps[key], "spdm.heartbeat_period", "spdm.session_id",
                                 display=f"spdm.code == {rsp}")
        assert period == "10"  # spdm_heartbeat_period in the profile
        names = fields(caps[key], "spdm.message", "spdm_secured.session_id",
                       display="spdm_secured")
        assert {r[1] for r in names} == {sid}
        seq = [r[0] for r in names]
        i = seq.index("HEARTBEAT")
        assert seq[i:i + 6] == ["HEARTBEAT", "HEARTBEAT_ACK", "KEY_UPDATE", "KEY_UPDATE_ACK",
                                "KEY_UPDATE", "KEY_UPDATE_ACK"]
        assert seq[-2:] == ["END_SESSION", "END_SESSION_ACK"]
        updates = fields(caps[key], "spdm.key_update.operation", "spdm.key_update.tag",
                         display="spdm.code == 0xe9 || spdm.code == 0x69")
        assert [r[0] for r in updates] == ["2", "2", "3", "3"]  # UpdateAllKeys, VerifyNewKey
        assert updates[0][1] == updates[1][1] and updates[2][1] == updates[3][1]
        assert "KeyOperation: UpdateAllKeys (2)" in tshark(caps[key], "-V", "-Y",
                                                            "spdm.code == 0x69")
        if key == "connect":  # handshake in the clear: FINISH(_RSP) outside any record
            assert fields(caps[key], "spdm.message", "spdm.session_id",
                          display="(spdm.code == 0xe5 || spdm.code == 0x65) && "
                                  "!spdm_secured") == [["FINISH", sid], ["FINISH_RSP", sid]]
    [[hint, context, req_sid]] = fields(caps["psk"], "spdm.psk.hint_length",
                                        "spdm.context_length", "spdm.req_session_id",
                                        display="spdm.code == 0xe6")
    assert hint == str(len("vdev-full-test-psk")) and int(context) >= 32
    [[rsp_sid, rsp_context, sid]] = fields(caps["psk"], "spdm.rsp_session_id",
                                           "spdm.context_length", "spdm.session_id",
                                           display="spdm.code == 0x66")
    assert int(sid, 16) == int(rsp_sid, 16) << 16 | int(req_sid, 16)
    assert int(rsp_context) >= 32  # PSK_CAP 10b: a ResponderContext
    assert [r[0] for r in fields(caps["psk"], "spdm_secured.session_id",
                                 display="spdm.code == 0xe7 || spdm.code == 0x67")] == [sid,
                                                                                         sid]
