"""The endpoint's config space: shadowed reads agree with the register model, and
model-backed registers (DOE, IDE stream state) are never answered from the shadow."""

from __future__ import annotations

import random

from vdev.doe.mailbox import DOE_CTRL, DOE_READ, DOE_STATUS, DOE_WRITE, MailboxState
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.config_space import CONFIG_SPACE_SIZE
from vdev.pci.register import RegisterFile


def _reference(rf: RegisterFile, offset: int, count: int) -> bytes:
    out = bytearray(count)
    for i in range(count):
        reg = rf.register_at(offset + i)
        if reg is not None:
            out[i] = (reg.read() >> (8 * (offset + i - reg.offset))) & 0xFF
    return bytes(out)


def _check_all(ep: TeeIoEndpoint) -> None:
    rf = ep.config.file
    for size in (1, 2, 4):
        for off in range(0, CONFIG_SPACE_SIZE - size + 1, size):
            reg = rf.register_at(off)
            if reg is not None and reg.on_read is not None and reg.offset + 0x14 == off:
                continue  # the DOE read mailbox: reading it is not side-effect free here
            assert rf.read(off, size) == _reference(rf, off, size), (hex(off), size)


def test_random_config_writes_and_flr_keep_the_shadow_exact() -> None:
    ep = TeeIoEndpoint()
    rng = random.Random(7)
    _check_all(ep)
    for round_ in range(40):
        for _ in range(30):
            off = rng.randrange(0, 0x180)
            size = rng.choice((1, 2, 4))
            off -= off % size
            ep.region_write(7, off, rng.randbytes(size))
        if round_ % 7 == 3:
            ep.function_level_reset()
        _check_all(ep)


def test_doe_registers_are_read_live() -> None:
    """DOE Status and the Read Data Mailbox change without a config write to them:
    every read reaches the mailbox."""
    ep = TeeIoEndpoint()
    doe = ep.config.find_ext_capability(0x2E)
    assert doe is not None
    ep.region_write(7, doe + DOE_CTRL, (1).to_bytes(4, "little"))  # ABORT
    # A discovery request, index 0: header (vendor 1, type 0), length 3 DW, payload.
    for dw in (0x0000_0001, 3, 0x0000_0200):
        ep.region_write(7, doe + DOE_WRITE, dw.to_bytes(4, "little"))
    status = int.from_bytes(ep.region_read(7, doe + DOE_STATUS, 4), "little")
    assert not status >> 31
    ep.region_write(7, doe + DOE_CTRL, (1 << 31).to_bytes(4, "little"))  # GO
    assert ep.doe.state is MailboxState.READY
    status = int.from_bytes(ep.region_read(7, doe + DOE_STATUS, 4), "little")
    assert status >> 31  # DATA_OBJECT_READY, seen without any write to Status
    words = []
    for _ in range(3):
        words.append(int.from_bytes(ep.region_read(7, doe + DOE_READ, 4), "little"))
        ep.region_write(7, doe + DOE_READ, bytes(4))
    assert words[0] == 0x0000_0001 and words[1] == 3
    assert int.from_bytes(ep.region_read(7, doe + DOE_STATUS, 4), "little") >> 31 == 0
