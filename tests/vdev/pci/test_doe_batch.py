"""The DOE batch region (vdev.pci.doe_batch): the same mailbox, in bulk.

Every test drives one mailbox through the region and, where it says so, a twin
through its registers the way Linux's drivers/pci/doe.c does (PCIe r6.2
§6.30.2: write each request DW to the Write Data Mailbox, GO, wait for Data
Object Ready, then read each response DW from the Read Data Mailbox and write
it to move on): both must give the same bytes and end in the same state.
"""

from __future__ import annotations

import struct

import pytest

from vdev.doe.mailbox import (
    CTRL_ABORT,
    CTRL_GO,
    DOE_CTRL,
    DOE_READ,
    DOE_STATUS,
    DOE_WRITE,
    STATUS_DATA_OBJECT_READY,
    STATUS_ERROR,
    DoeMailbox,
    MailboxState,
)
from vdev.pci.device_api import RegionType
from vdev.pci.doe_batch import DoeBatchRegion

CAP = 0x100
WINDOW = CAP << 21
WRITE_DATA, READ_ACK, READ_AVAIL, READ_DATA = (WINDOW + reg for reg in (0x0, 0x8, 0xC, 0x10))


def echo_twice(payload: bytes) -> bytes:
    return payload + payload


def mailbox() -> tuple[DoeMailbox, list[tuple[bytes, bytes]]]:
    mb = DoeMailbox(max_object_dw=1024)
    mb.register(0x0001, 0x01, echo_twice)
    seen: list[tuple[bytes, bytes]] = []
    mb.observers.append(lambda protocol, request, response: seen.append((request, response)))
    return mb, seen


def request_dws(payload_dws: int) -> list[int]:
    # DOE header (PCIe r6.2 §6.30.1): vendor 0x0001, type 1; then the length in DWs.
    return [0x0001_0001, 2 + payload_dws, *range(0x1000, 0x1000 + payload_dws)]


def by_registers(mb: DoeMailbox, request: list[int]) -> list[int]:
    for dw in request:
        mb.write_register(DOE_WRITE, dw)
    mb.write_register(DOE_CTRL, CTRL_GO)
    response = []
    while mb.read_register(DOE_STATUS) & STATUS_DATA_OBJECT_READY:
        response.append(mb.read_register(DOE_READ))
        mb.write_register(DOE_READ, 0)
    return response


def by_region(region: DoeBatchRegion, mb: DoeMailbox, request: list[int]) -> list[int]:
    region.write(WRITE_DATA, struct.pack(f"<{len(request)}I", *request))
    mb.write_register(DOE_CTRL, CTRL_GO)
    avail = int.from_bytes(region.read(READ_AVAIL, 4), "little")
    response = list(struct.unpack(f"<{avail}I", region.read(READ_DATA, 4 * avail)))
    region.write(READ_ACK, avail.to_bytes(4, "little"))
    return response


def test_the_region_is_found_by_the_pci_sig_doe_type() -> None:
    region = DoeBatchRegion({CAP: mailbox()[0]})
    # VFIO_REGION_TYPE_PCI_VENDOR_TYPE (1 << 31) | PCI-SIG's vendor ID; the DOE capability ID.
    assert region.type == RegionType(0x8000_0001, 0x2E)
    assert region.size == 0x1000 << 21  # a window for every config-space offset


@pytest.mark.parametrize("payload_dws", [1, 7, 500])
def test_an_exchange_in_bulk_equals_one_dw_at_a_time(payload_dws: int) -> None:
    plain, plain_seen = mailbox()
    batched, batched_seen = mailbox()
    region = DoeBatchRegion({CAP: batched})
    request = request_dws(payload_dws)
    expected = by_registers(plain, request)
    assert expected[:2] == [0x0001_0001, 2 + 2 * payload_dws]
    assert by_region(region, batched, request) == expected
    assert batched_seen == plain_seen and len(batched_seen) == 1
    assert batched.state is plain.state is MailboxState.IDLE
    assert batched.read_register(DOE_STATUS) == plain.read_register(DOE_STATUS) == 0


def test_a_response_can_be_read_in_parts() -> None:
    mb, _ = mailbox()
    region = DoeBatchRegion({CAP: mb})
    region.write(WRITE_DATA, struct.pack("<5I", *request_dws(3)))
    mb.write_register(DOE_CTRL, CTRL_GO)
    avail = lambda: int.from_bytes(region.read(READ_AVAIL, 4), "little")  # noqa: E731
    assert avail() == 8
    first = region.read(READ_DATA, 12)
    # Reading does not acknowledge: the same DWs again, and the register agrees.
    assert region.read(READ_DATA, 12) == first
    assert mb.read_register(DOE_READ) == int.from_bytes(first[:4], "little")
    region.write(READ_ACK, (3).to_bytes(4, "little"))
    assert avail() == 5
    rest = region.read(READ_DATA, 20)
    assert struct.unpack("<8I", first + rest)[2:] == (0x1000, 0x1001, 0x1002) * 2
    # The last acknowledgement clears Data Object Ready (PCIe r6.2 §7.9.24.4).
    region.write(READ_ACK, (4).to_bytes(4, "little"))
    assert mb.read_register(DOE_STATUS) & STATUS_DATA_OBJECT_READY
    region.write(READ_ACK, (1).to_bytes(4, "little"))
    assert mb.read_register(DOE_STATUS) == 0 and avail() == 0


def test_writing_while_a_response_is_pending_is_the_mailboxs_error() -> None:
    """The region adds no rules of its own: a write during a response is what it is
    through the register, an ERROR that ABORT clears."""
    mb, _ = mailbox()
    region = DoeBatchRegion({CAP: mb})
    region.write(WRITE_DATA, struct.pack("<3I", *request_dws(1)))
    mb.write_register(DOE_CTRL, CTRL_GO)
    region.write(WRITE_DATA, struct.pack("<I", 0x1234))
    assert mb.read_register(DOE_STATUS) == STATUS_ERROR
    assert region.read(READ_AVAIL, 4) == bytes(4)
    mb.write_register(DOE_CTRL, CTRL_ABORT)
    assert mb.state is MailboxState.IDLE


@pytest.mark.parametrize(("offset", "count", "reason"), [
    (READ_DATA, 4, "1 response DWs asked for, 0 available"),
    (READ_AVAIL, 8, "no 8-byte read at window offset 0xc"),
    (READ_DATA, 6, "no 6-byte read at window offset 0x10"),
    (WINDOW + 0x4, 4, "no 4-byte read at window offset 0x4"),
    (WRITE_DATA, 4, "no 4-byte read at window offset 0x0"),
    ((CAP + 0x18) << 21, 4, "no DOE capability at 0x118"),
])
def test_reads_it_refuses(offset: int, count: int, reason: str) -> None:
    region = DoeBatchRegion({CAP: mailbox()[0]})
    with pytest.raises(ValueError, match=reason):
        region.read(offset, count)


def test_reading_past_the_response_is_refused() -> None:
    mb, _ = mailbox()
    region = DoeBatchRegion({CAP: mb})
    region.write(WRITE_DATA, struct.pack("<3I", *request_dws(1)))
    mb.write_register(DOE_CTRL, CTRL_GO)
    with pytest.raises(ValueError, match="5 response DWs asked for, 4 available"):
        region.read(READ_DATA, 20)


@pytest.mark.parametrize(("offset", "data", "reason"), [
    (WRITE_DATA, b"\x01\x02", "no 2-byte write at window offset 0x0"),
    (WRITE_DATA, b"", "no 0-byte write"),
    (READ_ACK, bytes(8), "no 8-byte write at window offset 0x8"),
    (READ_AVAIL, bytes(4), "no 4-byte write at window offset 0xc"),
    (READ_ACK, (1025).to_bytes(4, "little"), "READ_ACK of 1025 DWs exceeds the mailbox's 1024"),
    (0x104 << 21, bytes(4), "no DOE capability at 0x104"),
])
def test_writes_it_refuses(offset: int, data: bytes, reason: str) -> None:
    mb, seen = mailbox()
    region = DoeBatchRegion({CAP: mb})
    with pytest.raises(ValueError, match=reason):
        region.write(offset, data)
    assert mb.state is MailboxState.IDLE and not seen


@pytest.mark.parametrize("cap", [0x0, 0xFC, 0x102, 0x1000])
def test_a_window_is_only_for_an_extended_capability(cap: int) -> None:
    with pytest.raises(ValueError, match="not in extended config space"):
        DoeBatchRegion({cap: mailbox()[0]})
