"""The TSM model's key operations reach a platform root port (tsm.root_port.PlatformRootPort),
e.g. the patched QEMU root port over QMP, in the order the model performs them."""

from __future__ import annotations

from typing import Any

from tests.helpers.tsm_rig import drive, make_device, make_tsm, ok
from tsm import RpSlot


class PortLog:
    """A platform root port that records what it was told; `refuse` makes it fail."""

    def __init__(self, refuse: str = "") -> None:
        self.ops: list[tuple[str, int, Any]] = []
        self.refuse = refuse

    def _op(self, name: str, stream_id: int, what: Any) -> None:
        if name == self.refuse:
            raise RuntimeError(f"root port refused {name}")
        self.ops.append((name, stream_id, what))

    def key_prog(self, stream_id: int, slot: RpSlot) -> None:
        self._op("key-prog", stream_id, slot)

    def k_set_go(self, stream_id: int, slot: RpSlot) -> None:
        self._op("k-set-go", stream_id, slot)

    def k_set_stop(self, stream_id: int, key_set: int) -> None:
        self._op("k-set-stop", stream_id, key_set)

    def snapshot(self) -> dict[str, Any]:
        return {"ops": len(self.ops)}


ALL = {(tx, sub) for tx in (False, True) for sub in range(3)}


def test_connect_refresh_disconnect_reach_the_port_mirrored() -> None:
    dev, port = make_device(), PortLog()
    tsm = make_tsm(root_port=port)
    done = ok(tsm.connect(), dev)
    progs = [slot for op, sid, slot in port.ops if op == "key-prog" and sid == 1]
    gos = [slot for op, sid, slot in port.ops if op == "k-set-go" and sid == 1]
    assert {(s.tx, s.sub_stream) for s in progs} == ALL == {(s.tx, s.sub_stream) for s in gos}
    assert {s.key_set for s in progs + gos} == {0}
    # Every key is programmed before any is activated (the device's order, §6.33.3).
    assert [op for op, _, _ in port.ops] == ["key-prog"] * 6 + ["k-set-go"] * 6
    # The device's RX key is the port's TX key.
    for (_port, _sid, key_set, tx, sub), _key in dev.target.keys.items():
        assert RpSlot(not tx, sub, key_set) in progs
    assert done.evidence["ide"]["root_port"]["platform"] == {"ops": 12}

    port.ops.clear()
    ok(tsm.ide_key_refresh(), dev)
    assert [(op, w if op == "k-set-stop" else w.key_set) for op, _, w in port.ops] == \
        [("key-prog", 1)] * 6 + [("k-set-go", 1)] * 6 + [("k-set-stop", 0)]

    port.ops.clear()
    ok(tsm.disconnect(), dev)
    assert port.ops == [("k-set-stop", 1, 1)]  # key set 0 was retired by the refresh


def test_a_port_refusing_keys_fails_connect_with_its_reason() -> None:
    dev, port = make_device(), PortLog(refuse="k-set-go")
    tsm = make_tsm(root_port=port)
    done = drive(tsm.connect(), dev)
    assert not done.ok
    assert "root port refused k-set-go" in done.reason
    assert not tsm.root_port.secure


def test_a_port_gone_at_teardown_does_not_stop_disconnect() -> None:
    dev, port = make_device(), PortLog()
    tsm = make_tsm(root_port=port)
    ok(tsm.connect(), dev)
    port.refuse = "k-set-stop"
    done = ok(tsm.disconnect(), dev)
    events = [h["event"] for h in done.evidence["ide"]["root_port"]["history"]]
    assert "root port K_SET_STOP key set 0 failed: root port refused k-set-stop" in events
    assert tsm.state == "idle"
