"""--pcap-decrypted: the DOE objects as on the wire, each secured record with its
plaintext and a comment saying so (vdev.trace.tracer.DecryptedCapture), read back by
`vdev trace show` (vdev.trace.pcap.PcapngReader)."""

from __future__ import annotations

import io
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.helpers.cli import vdev
from tests.helpers.spdm_emu_server import EmuHandle
from vdev.trace.pcap import PcapngReader, PcapngWriter
from vdev.trace.tracer import (
    DECRYPTED_COMMENT,
    REQ,
    RSP,
    DecryptedCapture,
    SecuredRecordDecrypted,
    doe_object_of,
)

SID = 0xFF000001
FINISH = bytes([0x13, 0xE5, 0, 0]) + bytes(8)


def record(session: int = SID, size: int = 40) -> bytes:
    """An encrypted secured record as a DOE type-2 object (content is opaque here)."""
    return doe_object_of(2, session.to_bytes(4, "little") + size.to_bytes(2, "little")
                         + bytes(range(size)))


def read(buf: io.BytesIO) -> list[tuple[float, bytes, str]]:
    buf.seek(0)
    return list(PcapngReader(buf))


def test_records_pair_with_their_plaintext_in_either_order() -> None:
    out = io.BytesIO()
    capture = DecryptedCapture(PcapngWriter(out))
    plain = doe_object_of(1, bytes([0x12, 0x84, 0, 0]))
    capture.wire(REQ, plain, 1.0)  # not secured: as it is
    capture.wire(REQ, record(), 2.0)  # the device: the record first, then its plaintext
    capture.plaintext(REQ, SID, FINISH)
    capture.plaintext(RSP, SID, bytes([0x13, 0x65, 0, 0]))  # then the reply's plaintext
    capture.wire(RSP, record(size=24), 3.0)
    capture.wire(REQ, record(), 4.0)  # a record that never opens ...
    capture.wire(RSP, doe_object_of(1, bytes([0x13, 0x7F, 6, 0])), 5.0)  # ... ERROR
    capture.flush()
    packets = read(out)
    assert [(t, c.split(" (")[0]) for t, _, c in packets] == [
        (1.0, ""), (2.0, DECRYPTED_COMMENT), (3.0, DECRYPTED_COMMENT), (4.0, ""), (5.0, "")]
    assert packets[0][1] == plain and packets[3][1] == record()
    decrypted = SecuredRecordDecrypted.parse(packets[1][1][8:])
    assert (decrypted.session_id, bytes(decrypted.app_data)) == (SID, FINISH)
    assert decrypted.length == decrypted.app_data_length + 2 == len(FINISH) + 2
    assert packets[1][2] == f"{DECRYPTED_COMMENT} (session 0xff000001)"


def test_a_plaintext_of_another_session_is_not_paired() -> None:
    out = io.BytesIO()
    capture = DecryptedCapture(PcapngWriter(out))
    capture.plaintext(REQ, 0x12345678, FINISH)
    capture.wire(REQ, record(), 1.0)
    capture.flush()
    assert [c for _, _, c in read(out)] == [""]


def test_trace_show_reads_the_decrypted_capture(emu: EmuHandle, tmp_path: Path) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    capture = tmp_path / "tsm.pcapng"
    out = vdev("tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor",
               anchor, "--start", "--pcap-decrypted", capture)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"WARNING: --pcap-decrypted {capture}: the plaintext of every secured message" \
        in out.stderr
    shown = vdev("trace", "show", capture, "--protocol", "tdisp")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert " pcap -> tdisp sess=0xff000001 [secured] TDISP LOCK_INTERFACE_REQUEST tdi=01:00.0" \
        in lines[6]
    assert [ln.split("state=")[1] for ln in lines if "state=" in ln] == [
        "CONFIG_UNLOCKED", "RUN", "CONFIG_UNLOCKED"]
