"""Selective IDE stream state machine behind SEL_STS."""

from __future__ import annotations

import pytest

from tests.helpers.fakes import Cfg
from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.ide_cap import (
    SLOTS,
    IdeCap,
    IdeStreamState,
    KeyDirection,
    SelectiveStream,
    SubStream,
)

KEY = bytes(range(32))
IFV = bytes(8)


def program_all(stream: SelectiveStream, key_set: int) -> None:
    for d, s in SLOTS:
        stream.program_key(key_set, d, s, KEY, IFV)


def go_all(stream: SelectiveStream, key_set: int) -> None:
    for d, s in SLOTS:
        assert stream.go(key_set, d, s)


class Setup:
    def __init__(self) -> None:
        self.ep = TeeIoEndpoint()
        self.cfg = Cfg(self.ep)
        self.stream = self.ep.ide.stream(0)
        self.ctl = self.stream.offset + 4
        self.sts = self.stream.offset + 8
        self.changes: list[tuple[int, IdeStreamState, IdeStreamState]] = []
        self.ep.ide.observers.append(lambda s, old, new: self.changes.append((s.index, old, new)))

    def associate(self, rid: int = 0x0008) -> None:
        """What pci_ide_stream_setup() writes: RID range of the partner, V set."""
        self.cfg.write(self.stream.offset + 0x0C, rid << 8)
        self.cfg.write(self.stream.offset + 0x10, rid << 8 | 1)

    def enable(self, stream_id: int = 5) -> None:
        if not self.stream.rid_valid:
            self.associate()
        self.cfg.write(self.ctl, (stream_id << 24) | 1)

    def disable(self) -> None:
        self.cfg.write(self.ctl, 0)

    @property
    def state(self) -> int:
        return self.cfg.read(self.sts) & 0xF


@pytest.fixture
def s() -> Setup:
    return Setup()


def test_linux_flow_keys_go_then_enable_reads_secure(s: Setup) -> None:
    # pci_ide_stream_setup: SEL_CTL with ID, EN=0; TSM programs keys, K_SET_GO; then enable.
    s.cfg.write(s.ctl, 5 << 24)
    program_all(s.stream, 0)
    assert s.stream.keys_programmed(0)
    go_all(s.stream, 0)
    assert s.state == IdeStreamState.INSECURE  # not enabled yet
    s.enable()
    assert s.state == 2  # SECURE
    assert s.ep.ide.stream_by_id(5) is s.stream
    assert s.changes == [(0, IdeStreamState.INSECURE, IdeStreamState.SECURE)]


def test_enable_before_keys_becomes_secure_on_last_go(s: Setup) -> None:
    s.enable()
    program_all(s.stream, 1)
    slots = list(SLOTS)
    for d, sub in slots[:-1]:
        s.stream.go(1, d, sub)
        assert s.state == IdeStreamState.INSECURE
    s.stream.go(1, *slots[-1])
    assert s.state == IdeStreamState.SECURE


def test_missing_one_key_slot_stays_insecure(s: Setup) -> None:
    for d, sub in SLOTS[:-1]:
        s.stream.program_key(0, d, sub, KEY)
    assert not s.stream.keys_programmed(0)
    assert not s.stream.go(0, *SLOTS[-1])  # K_SET_GO for a slot without key fails
    for d, sub in SLOTS[:-1]:
        s.stream.go(0, d, sub)
    s.enable()
    assert s.state == IdeStreamState.INSECURE


def test_go_without_key_fails(s: Setup) -> None:
    assert not s.stream.go(0, KeyDirection.TX, SubStream.PR)
    assert s.stream.active_key_set(KeyDirection.TX, SubStream.PR) is None


def test_k_set_stop_drops_out_of_secure(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    s.stream.stop(0, KeyDirection.RX, SubStream.CPL)
    assert s.state == IdeStreamState.INSECURE
    assert s.changes[-1] == (0, IdeStreamState.SECURE, IdeStreamState.INSECURE)


def test_stop_of_inactive_key_set_keeps_secure(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    program_all(s.stream, 1)  # next key set staged for a key refresh
    s.enable()
    s.stream.stop(1, KeyDirection.RX, SubStream.PR)
    assert s.state == IdeStreamState.SECURE


def test_key_refresh_switches_key_set(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    program_all(s.stream, 1)
    go_all(s.stream, 1)
    assert s.state == IdeStreamState.SECURE
    s.stream.stop(0, KeyDirection.TX, SubStream.NPR)  # old key set retired
    assert s.state == IdeStreamState.SECURE
    assert s.stream.active_key_set(KeyDirection.TX, SubStream.NPR) == 1


def test_disable_drops_secure_and_keys(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    s.disable()
    assert s.state == IdeStreamState.INSECURE
    assert not s.stream.keys_programmed(0)
    s.enable()
    assert s.state == IdeStreamState.INSECURE  # needs new keys


def test_rewriting_ctl_with_en_zero_while_disabled_keeps_keys(s: Setup) -> None:
    program_all(s.stream, 0)
    s.cfg.write(s.ctl, 255 << 24)  # what the kernel does at boot
    s.cfg.write(s.ctl, 7 << 24)  # pci_ide_stream_setup
    assert s.stream.keys_programmed(0)


def test_sel_sts_is_read_only(s: Setup) -> None:
    s.cfg.write(s.sts, 0xFFFFFFFF)
    assert s.cfg.read(s.sts) == 0


def test_flr_resets_stream(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    s.ep.function_level_reset()
    assert s.state == IdeStreamState.INSECURE
    assert s.cfg.read(s.ctl) == 0
    assert not s.stream.keys_programmed(0)
    assert s.changes[-1] == (0, IdeStreamState.SECURE, IdeStreamState.INSECURE)


def test_streams_are_independent() -> None:
    ide = IdeCap(selective_streams=2)
    ep_streams = ide.streams
    assert len(ep_streams) == 2
    program_all(ep_streams[0], 0)
    assert not ep_streams[1].keys_programmed(0)


def test_bad_key_set_rejected(s: Setup) -> None:
    with pytest.raises(ValueError):
        s.stream.program_key(2, KeyDirection.RX, SubStream.PR, KEY)
    with pytest.raises(ValueError):
        IdeCap(selective_streams=0)
    with pytest.raises(ValueError):
        IdeCap(address_associations=16)


def test_enabled_without_rid_association_fails_until_disabled(s: Setup) -> None:
    """PCIe r6.2 §7.9.26.5.2: Enable with the V bit clear -> Fail_Insecure."""
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.cfg.write(s.ctl, (5 << 24) | 1)
    assert s.state == IdeStreamState.FAIL_INSECURE
    s.associate()  # too late: the failure sticks while enabled
    assert s.state == IdeStreamState.FAIL_INSECURE
    s.disable()
    assert s.state == IdeStreamState.INSECURE
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    assert s.state == IdeStreamState.SECURE


def test_replacing_the_key_in_use_fails_the_stream_refreshing_does_not(s: Setup) -> None:
    program_all(s.stream, 0)
    go_all(s.stream, 0)
    s.enable()
    program_all(s.stream, 1)  # the idle key set: a refresh
    go_all(s.stream, 1)
    assert s.state == IdeStreamState.SECURE
    s.stream.program_key(1, KeyDirection.TX, SubStream.CPL, KEY, IFV)  # the set in use
    assert s.state == IdeStreamState.FAIL_INSECURE


def test_key_observers_see_operations_before_they_apply(s: Setup) -> None:
    seen: list[tuple[str, int, int | None]] = []
    s.ep.ide.key_observers.append(lambda st, op, ks, d, sub: seen.append(
        (op, ks, st.active_key_set(d, sub))))
    s.stream.program_key(0, KeyDirection.RX, SubStream.PR, KEY, IFV)
    s.stream.go(0, KeyDirection.RX, SubStream.PR)
    s.stream.stop(0, KeyDirection.RX, SubStream.PR)
    assert seen == [("key_prog", 0, None), ("k_set_go", 0, None), ("k_set_stop", 0, 0)]
