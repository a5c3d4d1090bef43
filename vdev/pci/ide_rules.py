"""The endpoint's IDE rule checker: programming mistakes a device can see, named.

The host (the kernel's pci_ide, or a TSM driver) and the TSM (over IDE_KM) set a
Selective IDE Stream up in an order PCIe r6.2 §6.33.3 and §7.9.26.5 prescribe.
This checker watches the endpoint's IDE capability (`IdeCap`: SEL_CTL writes and
key operations, before they take effect) and records each violation, with a
WARNING log line; `vdev ctl ide` and the evidence of a run list them.  It never
changes what the device does: the stream state (vdev.pci.ide_cap) is the
device's own reaction.

Rules, each recorded under its name:

  enable-without-rid-association  EN set while the V bit of the RID association
                                  is clear (the stream fails, §7.9.26.5.2)
  rid-range-empty                 EN set with an RID base above the RID limit
  enable-before-keys              EN set before every slot (Rx/Tx x PR/NPR/CPL)
                                  had an active key set holding a key
  duplicate-stream-id             EN set with a Stream ID another enabled stream uses
  stream-id-changed-while-enabled the Stream ID of an enabled stream rewritten
  key-prog-active-set             KEY_PROG of the key set in use while enabled (a
                                  refresh programs the other set; the stream fails)
  k-set-go-without-key            K_SET_GO of a key set with no key for the slot
  key-for-unconfigured-stream     KEY_PROG or K_SET_GO for a Stream ID no stream holds
                                  (IDE_KM answers it with a KP_ACK error)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vdev.pci.ide_cap import CTL_EN, CTL_ID, IdeCap, KeyDirection, SelectiveStream, SubStream

log = logging.getLogger(__name__)

KEPT = 64  # the newest violations kept; older ones are only counted


@dataclass(frozen=True)
class IdeViolation:
    seq: int
    rule: str
    stream_index: int | None
    stream_id: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "rule": self.rule, "stream_index": self.stream_index,
                "stream_id": self.stream_id, "message": self.message}


def _slot(direction: KeyDirection, sub_stream: SubStream) -> str:
    return f"{direction.name} {sub_stream.name}"


class IdeRuleChecker:
    """Records the violations of the IDE programming rules on one `IdeCap`."""

    def __init__(self, ide: IdeCap) -> None:
        self.ide = ide
        self.violations: deque[IdeViolation] = deque(maxlen=KEPT)
        self.total = 0
        self.observers: list[Callable[[IdeViolation], None]] = []
        ide.control_observers.append(self._control_written)
        ide.key_observers.append(self._key_operation)

    def record(self, rule: str, stream: SelectiveStream | None, stream_id: int,
               message: str) -> IdeViolation:
        v = IdeViolation(self.total, rule, None if stream is None else stream.index,
                         stream_id, message)
        self.total += 1
        self.violations.append(v)
        log.warning("IDE rule violation %s: %s", rule, message)
        for observer in self.observers:
            observer(v)
        return v

    def for_stream(self, index: int) -> list[IdeViolation]:
        return [v for v in self.violations if v.stream_index == index]

    def _control_written(self, stream: SelectiveStream, old: int, new: int) -> None:
        sid = (new & CTL_ID) >> 24
        if old & CTL_EN and new & CTL_EN and (old ^ new) & CTL_ID:
            self.record("stream-id-changed-while-enabled", stream, sid,
                        f"Stream ID of enabled stream {stream.index} changed from "
                        f"{(old & CTL_ID) >> 24} to {sid}")
        if old & CTL_EN or not new & CTL_EN:
            return
        base, limit = stream.rid_range
        if not stream.rid_valid:
            self.record("enable-without-rid-association", stream, sid,
                        f"stream {stream.index} enabled with Stream ID {sid} while the V bit "
                        "of its RID association is clear")
        elif base > limit:
            self.record("rid-range-empty", stream, sid,
                        f"stream {stream.index} enabled with RID base {base:04x} above "
                        f"limit {limit:04x}")
        missing = stream.missing_slots()
        if missing:
            self.record("enable-before-keys", stream, sid,
                        f"stream {stream.index} enabled with Stream ID {sid} before its keys "
                        f"were programmed and activated (missing: "
                        f"{', '.join(_slot(d, s) for d, s in missing)})")
        others = [o.index for o in self.ide.streams
                  if o is not stream and o.enabled and o.stream_id == sid]
        if others:
            self.record("duplicate-stream-id", stream, sid,
                        f"stream {stream.index} enabled with Stream ID {sid}, which enabled "
                        f"stream {others[0]} already uses")

    def _key_operation(self, stream: SelectiveStream, op: str, key_set: int,
                       direction: KeyDirection, sub_stream: SubStream) -> None:
        sid = stream.stream_id
        if op == "key_prog" and stream.enabled and \
                stream.active_key_set(direction, sub_stream) == key_set:
            self.record("key-prog-active-set", stream, sid,
                        f"KEY_PROG of key set {key_set} ({_slot(direction, sub_stream)}) of "
                        f"enabled stream {stream.index}, the set in use: a refresh programs "
                        "the other set")
        elif op == "k_set_go":
            try:
                stream.key(key_set, direction, sub_stream)
            except KeyError:
                self.record("k-set-go-without-key", stream, sid,
                            f"K_SET_GO of key set {key_set} ({_slot(direction, sub_stream)}) "
                            f"of stream {stream.index}, which holds no key")

    def unconfigured_stream(self, op: str, stream_id: int) -> None:
        """IDE_KM named a Stream ID no selective stream holds (called by the device's
        IDE_KM target, which answers with an error)."""
        self.record("key-for-unconfigured-stream", None, stream_id,
                    f"{op} for Stream ID {stream_id}, which no selective stream holds "
                    "(the host writes the Stream ID before the TSM programs keys)")

    def to_json(self) -> dict[str, Any]:
        return {"violations": [v.to_json() for v in self.violations],
                "violations_total": self.total}
