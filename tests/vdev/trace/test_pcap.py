"""The pcap we write, read back with a reader written here from the pcap format (not
with vdev.trace.pcap): classic pcap, link type 292, one whole DOE object per record."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.vdev.trace.rig import traced_connect


def read_pcap(data: bytes) -> tuple[tuple[int, ...], list[tuple[float, bytes]]]:
    header = struct.unpack_from("<IHHiIII", data, 0)
    records = []
    pos = 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        pos += 16
        assert incl == orig, "no record is truncated at snaplen 65536"
        records.append((sec + usec / 1e6, data[pos : pos + incl]))
        pos += incl
    assert pos == len(data)
    return header, records


def doe(obj: bytes) -> tuple[int, int, int, bytes]:
    vendor, typ = struct.unpack_from("<HB", obj, 0)
    (length,) = struct.unpack_from("<I", obj, 4)
    return vendor, typ, length & 0x3FFFF, obj[8:]


def test_pcap_parses_back_record_by_record(state_dir: Path) -> None:
    run = traced_connect(state_dir)
    (magic, major, minor, zone, sigfigs, snaplen, network), records = read_pcap(run.pcap)
    assert (magic, major, minor, zone, sigfigs, snaplen, network) == (
        0xA1B2C3D4, 2, 4, 0, 0, 65536, 292)
    assert run.pcap[:4] == bytes.fromhex("d4c3b2a1")  # little-endian, as spdm-emu writes it
    objs = [doe(r) for _, r in records]
    for (_, raw), (vendor, _typ, length, _) in zip(records, objs, strict=True):
        assert vendor == 1 and length * 4 == len(raw)  # one whole DOE object per record
    times = [t for t, _ in records]
    assert times == sorted(times)

    # Discovery first (request index i, response naming protocol i), as Linux does it.
    for i, proto_type in enumerate((0, 1, 2)):
        _, qtype, _, q = objs[2 * i]
        _, rtype, _, r = objs[2 * i + 1]
        assert (qtype, q[0]) == (0, i)
        assert rtype == 0 and struct.unpack_from("<HB", r)[1] == proto_type
    # Then GET_VERSION in a type-1 object, and VERSION back.
    assert records[6][1] == bytes.fromhex("01000100030000001084" "0000")
    assert objs[7][1] == 1 and objs[7][3][:2] == b"\x10\x04"

    # Secured objects stay encrypted: type 2, the session id in the clear, and no SPDM
    # header where the plaintext message would start (SessionID, Length, AppLength).
    secured = [o for o in objs if o[1] == 2]
    sid = int(run.tsm.evidence()["spdm"]["session_id"], 16)
    assert len(secured) >= 20
    assert all(struct.unpack_from("<I", p)[0] == sid for _, _, _, p in secured)
    assert not any(p[8:10] in (b"\x13\xfe", b"\x13\x7e", b"\x13\xe5") for _, _, _, p in secured)
    # Requests and responses both: every secured message the trace shows decrypted has
    # its encrypted object in the pcap.
    assert len(secured) == run.device_trace.count("[secured]")
    # Requests and responses alternate after discovery.
    assert len(records) % 2 == 0
