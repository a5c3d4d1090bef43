"""The endpoint's IDE rule checker (vdev.pci.ide_rules) on config writes and IDE_KM
key operations, in the orders a host and a TSM produce them."""

from __future__ import annotations

import pytest

from tests.helpers.fakes import Cfg
from tests.vdev.pci.test_ide_cap import IFV, KEY, go_all, program_all
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.ide_registers import EndpointIdeTarget
from vdev.pci.ide_cap import IdeStreamState, KeyDirection, SubStream
from vdev.pci.ide_rules import KEPT, IdeRuleChecker
from vdev.profiles import DeviceProfile


class Port:
    """An endpoint whose first two selective streams the test programs like Linux."""

    def __init__(self) -> None:
        self.ep = TeeIoEndpoint(DeviceProfile(ide_selective_streams=2))
        self.cfg = Cfg(self.ep)
        self.rules = IdeRuleChecker(self.ep.ide)
        self.target = EndpointIdeTarget(self.ep.ide, self.ep.config, rules=self.rules)

    def block(self, index: int) -> int:
        return self.ep.ide.stream(index).offset

    def setup(self, index: int = 0, stream_id: int = 1, rid: int = 0x0008,
              limit: int | None = None, valid: bool = True) -> None:
        """pci_ide_stream_setup(): RID association, then the Stream ID with EN clear."""
        b = self.block(index)
        self.cfg.write(b + 0x0C, (rid if limit is None else limit) << 8)
        self.cfg.write(b + 0x10, rid << 8 | int(valid))
        self.cfg.write(b + 0x04, stream_id << 24)

    def enable(self, index: int = 0, stream_id: int = 1) -> None:
        self.cfg.write(self.block(index) + 0x04, stream_id << 24 | 1)

    def keys(self, index: int = 0, key_set: int = 0) -> None:
        program_all(self.ep.ide.stream(index), key_set)
        go_all(self.ep.ide.stream(index), key_set)

    @property
    def found(self) -> list[str]:
        return [v.rule for v in self.rules.violations]


@pytest.fixture
def port() -> Port:
    return Port()


def test_the_linux_flow_and_a_refresh_break_no_rule(port: Port) -> None:
    port.setup()
    port.keys()
    port.enable()
    port.keys(key_set=1)  # refresh into the idle set, then switch
    assert port.ep.ide.stream(0).state is IdeStreamState.SECURE
    assert port.found == [] and port.rules.total == 0


def test_enable_before_keys_names_the_missing_slots(port: Port) -> None:
    port.setup()
    stream = port.ep.ide.stream(0)
    stream.program_key(0, KeyDirection.RX, SubStream.PR, KEY, IFV)
    stream.go(0, KeyDirection.RX, SubStream.PR)
    port.enable()
    assert port.found == ["enable-before-keys"]
    msg = port.rules.violations[0].message
    assert "missing: RX NPR, RX CPL, TX PR, TX NPR, TX CPL" in msg
    assert port.rules.for_stream(0)[0].stream_id == 1 and port.rules.for_stream(1) == []


def test_enable_without_valid_rid_or_with_an_empty_range(port: Port) -> None:
    port.setup(valid=False)
    port.keys()
    port.enable()
    assert port.found == ["enable-without-rid-association"]
    assert port.ep.ide.stream(0).state is IdeStreamState.FAIL_INSECURE
    port.setup(index=1, stream_id=2, rid=0x0010, limit=0x0008)
    port.keys(index=1)
    port.enable(index=1, stream_id=2)
    assert port.found[-1] == "rid-range-empty"
    assert "base 0010 above limit 0008" in port.rules.violations[-1].message


def test_duplicate_and_changed_stream_ids(port: Port) -> None:
    for i in (0, 1):
        port.setup(index=i, stream_id=4)
        port.keys(index=i)
    port.enable(index=0, stream_id=4)
    port.enable(index=1, stream_id=4)
    assert port.found == ["duplicate-stream-id"]
    port.enable(index=0, stream_id=6)  # rewritten while enabled
    assert port.found[-1] == "stream-id-changed-while-enabled"


def test_key_operations_the_tsm_gets_wrong(port: Port) -> None:
    port.setup()
    port.keys()
    port.enable()
    stream = port.ep.ide.stream(0)
    stream.go(1, KeyDirection.TX, SubStream.CPL)  # key set 1 holds nothing
    stream.program_key(0, KeyDirection.TX, SubStream.CPL, KEY, IFV)  # the set in use
    assert port.found == ["k-set-go-without-key", "key-prog-active-set"]
    assert stream.state is IdeStreamState.FAIL_INSECURE


def test_ide_km_for_a_stream_id_no_stream_holds(port: Port) -> None:
    port.setup(stream_id=1)
    assert port.target.program_key(0, 9, 0, True, 0, KEY, IFV).name == "UNSPECIFIED_FAILURE"
    assert not port.target.key_set_go(0, 9, 0, True, 0)
    assert port.found == ["key-for-unconfigured-stream"] * 2
    assert port.rules.violations[0].stream_index is None
    assert "KEY_PROG for Stream ID 9" in port.rules.violations[0].message


def test_only_the_newest_are_kept_but_all_are_counted(port: Port) -> None:
    for _ in range(KEPT + 3):
        port.target.key_set_go(0, 9, 0, True, 0)
    assert len(port.rules.violations) == KEPT and port.rules.total == KEPT + 3
    assert port.rules.violations[0].seq == 3
    assert port.rules.to_json()["violations_total"] == KEPT + 3
