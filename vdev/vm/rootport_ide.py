"""The platform's side of a patched QEMU root port's IDE streams, over QMP.

A root port's IDE keys are the platform's business (PCIe r6.2 §6.33.3): its
TSM firmware loads them by its own means, not through config space.  The
patched pcie-root-port (qemu/README.md, `x-ide-streams=N`) therefore learns
about key operations from QMP, and reports a Selective IDE Stream Secure only
while the stream is enabled, its RID association is valid and every key slot
(Rx/Tx x PR/NPR/CPL) uses a programmed key set:

- `x-pcie-ide-key`: KEY_PROG / K_SET_GO / K_SET_STOP for one stream (by
  Stream ID), key set 0 or 1, optionally one direction and sub-stream.  No
  key material crosses QMP.
- `x-query-pcie-ide`: the port's streams and the rule violations its checker
  recorded (enable before keys, key refresh of the set in use, RID range
  missing the partner, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vdev.vm.qmp import QmpClient, QmpConnectionError, QmpError


class KeyOp(enum.StrEnum):
    KEY_PROG = "key-prog"
    K_SET_GO = "k-set-go"
    K_SET_STOP = "k-set-stop"


class Direction(enum.StrEnum):
    RX = "rx"
    TX = "tx"


class SubStream(enum.StrEnum):
    PR = "pr"
    NPR = "npr"
    CPL = "cpl"


class StreamState(enum.StrEnum):
    INSECURE = "insecure"
    SECURE = "secure"
    FAIL_INSECURE = "fail-insecure"


@dataclass(frozen=True)
class KeySlot:
    direction: Direction
    sub_stream: SubStream
    programmed: tuple[int, ...]
    active: int | None


@dataclass(frozen=True)
class StreamInfo:
    """One Selective IDE Stream register block of the port."""

    index: int
    stream_id: int
    enabled: bool
    state: StreamState
    rid_valid: bool
    rid_base: int
    rid_limit: int
    keys: tuple[KeySlot, ...]
    key_stream_id: int | None

    @property
    def secure(self) -> bool:
        return self.state is StreamState.SECURE


@dataclass(frozen=True)
class Violation:
    seq: int
    rule: str
    stream_index: int | None
    stream_id: int
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class PortIdeState:
    streams: tuple[StreamInfo, ...]
    violations: tuple[Violation, ...]
    violations_total: int

    def stream(self, index: int) -> StreamInfo:
        return self.streams[index]

    def by_stream_id(self, stream_id: int) -> list[StreamInfo]:
        return [s for s in self.streams if s.stream_id == stream_id]


def parse_state(reply: dict[str, Any]) -> PortIdeState:
    """The reply of x-query-pcie-ide as dataclasses."""
    streams = tuple(
        StreamInfo(
            index=int(s["index"]), stream_id=int(s["stream-id"]), enabled=bool(s["enabled"]),
            state=StreamState(s["state"]), rid_valid=bool(s["rid-valid"]),
            rid_base=int(s["rid-base"]), rid_limit=int(s["rid-limit"]),
            keys=tuple(
                KeySlot(Direction(k["direction"]), SubStream(k["sub-stream"]),
                        tuple(int(x) for x in k["programmed"]),
                        int(k["active"]) if "active" in k else None)
                for k in s["keys"]
            ),
            key_stream_id=int(s["key-stream-id"]) if "key-stream-id" in s else None,
        )
        for s in reply["streams"]
    )
    violations = tuple(
        Violation(int(v["seq"]), str(v["rule"]),
                  int(v["stream-index"]) if "stream-index" in v else None,
                  int(v["stream-id"]), str(v["message"]))
        for v in reply["violations"]
    )
    return PortIdeState(streams, violations, int(reply["violations-total"]))


class RootPortIde:
    """Key operations and state of the IDE streams of root port `port_id`."""

    def __init__(self, qmp: QmpClient, port_id: str) -> None:
        self.qmp = qmp
        self.port_id = port_id

    def key(self, op: KeyOp, stream_id: int, key_set: int, *,
            direction: Direction | None = None, sub_stream: SubStream | None = None,
            index: int | None = None) -> None:
        """One key operation; all six slots unless direction/sub_stream narrow it."""
        args: dict[str, Any] = {"id": self.port_id, "stream-id": stream_id,
                                "operation": str(op), "key-set": key_set}
        if direction is not None:
            args["direction"] = str(direction)
        if sub_stream is not None:
            args["sub-stream"] = str(sub_stream)
        if index is not None:
            args["index"] = index
        self.qmp.execute("x-pcie-ide-key", args)

    def program(self, stream_id: int, key_set: int = 0, *, index: int | None = None) -> None:
        """KEY_PROG then K_SET_GO of `key_set` for every slot of the stream."""
        self.key(KeyOp.KEY_PROG, stream_id, key_set, index=index)
        self.key(KeyOp.K_SET_GO, stream_id, key_set, index=index)

    def stop(self, stream_id: int, key_set: int = 0, *, index: int | None = None) -> None:
        """K_SET_STOP of `key_set` for every slot of the stream."""
        self.key(KeyOp.K_SET_STOP, stream_id, key_set, index=index)

    def state(self) -> PortIdeState:
        reply = self.qmp.execute("x-query-pcie-ide", {"id": self.port_id})
        if not isinstance(reply, dict):
            raise ValueError(f"x-query-pcie-ide returned {reply!r}")
        return parse_state(reply)


class KeySlotLike(Protocol):
    """A root-port key slot as the TSM model names it (tsm.root_port.RpSlot)."""

    @property
    def tx(self) -> bool: ...

    @property
    def sub_stream(self) -> int: ...

    @property
    def key_set(self) -> int: ...


_SUB_STREAMS = (SubStream.PR, SubStream.NPR, SubStream.CPL)  # IDE_KM encoding 0, 1, 2


class QmpRootPortKeys:
    """The TSM model's platform root port (tsm.root_port.PlatformRootPort) in a
    patched QEMU, reached over its QMP socket.

    QEMU creates the socket after the TSM server starts, so the connection is made
    on first use, and made again once if QEMU went away in between (a server that
    outlives one guest).  `snapshot` never raises: it is evidence.
    """

    def __init__(self, qmp_path: Path, port_id: str, timeout: float = 30.0) -> None:
        self.qmp_path = qmp_path
        self.port_id = port_id
        self.timeout = timeout
        self._qmp: QmpClient | None = None

    def _port(self) -> RootPortIde:
        if self._qmp is None:
            qmp = QmpClient(self.qmp_path, self.timeout)
            qmp.connect()
            self._qmp = qmp
        return RootPortIde(self._qmp, self.port_id)

    def _call(self, op: KeyOp, stream_id: int, key_set: int,
              slot: KeySlotLike | None = None) -> None:
        kw: dict[str, Any] = {}
        if slot is not None:
            kw = {"direction": Direction.TX if slot.tx else Direction.RX,
                  "sub_stream": _SUB_STREAMS[slot.sub_stream]}
        try:
            self._port().key(op, stream_id, key_set, **kw)
        except QmpConnectionError:
            self.close()
            self._port().key(op, stream_id, key_set, **kw)

    def key_prog(self, stream_id: int, slot: KeySlotLike) -> None:
        self._call(KeyOp.KEY_PROG, stream_id, slot.key_set, slot)

    def k_set_go(self, stream_id: int, slot: KeySlotLike) -> None:
        self._call(KeyOp.K_SET_GO, stream_id, slot.key_set, slot)

    def k_set_stop(self, stream_id: int, key_set: int) -> None:
        self._call(KeyOp.K_SET_STOP, stream_id, key_set)

    def snapshot(self) -> dict[str, Any]:
        """The port's streams in use and its rule checker's findings."""
        out: dict[str, Any] = {"port": self.port_id}
        try:
            state = self._port().state()
        except (QmpConnectionError, QmpError, OSError, ValueError, KeyError) as exc:
            self.close()
            out["error"] = str(exc)
            return out
        out["streams"] = [
            {"index": s.index, "stream_id": s.stream_id, "enabled": s.enabled,
             "state": str(s.state), "rid": f"{s.rid_base:04x}..{s.rid_limit:04x}"
             if s.rid_valid else None}
            for s in state.streams if s.enabled or s.rid_valid or s.key_stream_id is not None
        ]
        out["violations"] = [{"rule": v.rule, "message": v.message} for v in state.violations]
        out["violations_total"] = state.violations_total
        return out

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
