"""vdev.vm.qmp and vdev.vm.rootport_ide against a scripted QMP server.

The server speaks QMP on a real UNIX socket (greeting, one JSON object per
line, replies carrying the request's id); the tests check the requests on
the wire and how replies, errors and events are handled.  The same client
runs against the patched QEMU in guest-tests/test_qemu_ide_rootport.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vdev.vm.qmp import QmpClient, QmpConnectionError, QmpError
from vdev.vm.rootport_ide import (
    Direction,
    KeyOp,
    QmpRootPortKeys,
    RootPortIde,
    StreamState,
    SubStream,
)

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 2, "micro": 2}},
                    "capabilities": ["oob"]}}
Handler = Callable[[dict[str, Any]], list[bytes]]


class FakeQmp:
    """Answers each request with what `handler` returns (raw lines)."""

    def __init__(self, path: Path, handler: Handler, greeting: bytes | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.handler = handler
        self.greeting = greeting if greeting is not None else json.dumps(GREETING).encode() + b"\n"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """Serve connections one after the other until closed."""
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        conn.sendall(self.greeting)
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                req = json.loads(line)
                self.requests.append(req)
                for out in self.handler(req):
                    if out == b"CLOSE":
                        return
                    conn.sendall(out)

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=5)


def ok(ret: Any = None) -> Handler:
    def handle(req: dict[str, Any]) -> list[bytes]:
        return [json.dumps({"return": {} if ret is None else ret, "id": req["id"]}).encode()
                + b"\n"]
    return handle


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "qmp.sock"


@pytest.fixture
def serve(sock: Path) -> Iterator[Callable[..., FakeQmp]]:
    servers: list[FakeQmp] = []

    def start(handler: Handler, greeting: bytes | None = None) -> FakeQmp:
        servers.append(FakeQmp(sock, handler, greeting))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_negotiates_then_executes_with_ids(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    server = serve(ok({"status": "running"}))
    with QmpClient(sock) as qmp:
        assert qmp.greeting["version"]["qemu"]["major"] == 10
        assert qmp.execute("query-status") == {"status": "running"}
        assert qmp.execute("cont", {"x": 1}) == {"status": "running"}
    assert [r["execute"] for r in server.requests] == ["qmp_capabilities", "query-status", "cont"]
    assert len({r["id"] for r in server.requests}) == 3
    assert "arguments" not in server.requests[1] and server.requests[2]["arguments"] == {"x": 1}


def test_events_before_the_reply_are_kept(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    def handler(req: dict[str, Any]) -> list[bytes]:
        event = {"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}
        return [json.dumps(event).encode() + b"\n", *ok()(req)]

    serve(handler)
    with QmpClient(sock) as qmp:
        qmp.execute("cont")
        assert [e["event"] for e in qmp.events] == ["RESUME", "RESUME"]


def test_error_reply_raises_with_class_and_description(
    sock: Path, serve: Callable[..., FakeQmp]
) -> None:
    def handler(req: dict[str, Any]) -> list[bytes]:
        if req["execute"] == "qmp_capabilities":
            return ok()(req)
        err = {"error": {"class": "DeviceNotFound", "desc": "Device 'rp9' not found"},
               "id": req["id"]}
        return [json.dumps(err).encode() + b"\n"]

    serve(handler)
    with QmpClient(sock) as qmp, pytest.raises(QmpError) as info:
        qmp.execute("x-query-pcie-ide", {"id": "rp9"})
    assert info.value.error_class == "DeviceNotFound"
    assert str(info.value) == "x-query-pcie-ide: Device 'rp9' not found"


def test_broken_peers_are_connection_errors(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    serve(ok(), greeting=b'{"not": "qmp"}\n')
    with pytest.raises(QmpConnectionError, match="did not greet with QMP"):
        QmpClient(sock).connect()


def test_qemu_going_away_mid_command(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    serve(lambda req: ok()(req) if req["execute"] == "qmp_capabilities" else [b"CLOSE"])
    with QmpClient(sock) as qmp, pytest.raises(QmpConnectionError, match="closed"):
        qmp.execute("quit")


def test_garbage_and_silence(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    serve(lambda req: ok()(req) if req["execute"] == "qmp_capabilities" else [b"<html>\n"])
    with QmpClient(sock) as qmp, pytest.raises(QmpConnectionError, match="not JSON"):
        qmp.execute("query-status")


def test_no_answer_times_out(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    serve(lambda req: ok()(req) if req["execute"] == "qmp_capabilities" else [])
    with QmpClient(sock, timeout=0.3) as qmp, pytest.raises(QmpConnectionError, match="no QMP"):
        qmp.execute("query-status")


def test_no_socket(sock: Path) -> None:
    with pytest.raises(QmpConnectionError, match="cannot connect"):
        QmpClient(sock).connect()


def test_root_port_key_operations_on_the_wire(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    server = serve(ok())
    with QmpClient(sock) as qmp:
        ide = RootPortIde(qmp, "rp1")
        ide.program(3)
        ide.key(KeyOp.KEY_PROG, 3, 1, direction=Direction.TX, sub_stream=SubStream.NPR, index=2)
        ide.stop(3, key_set=1)
    sent = [(r["execute"], r.get("arguments")) for r in server.requests[1:]]
    base = {"id": "rp1", "stream-id": 3}
    assert sent == [
        ("x-pcie-ide-key", {**base, "operation": "key-prog", "key-set": 0}),
        ("x-pcie-ide-key", {**base, "operation": "k-set-go", "key-set": 0}),
        ("x-pcie-ide-key", {**base, "operation": "key-prog", "key-set": 1,
                            "direction": "tx", "sub-stream": "npr", "index": 2}),
        ("x-pcie-ide-key", {**base, "operation": "k-set-stop", "key-set": 1}),
    ]


QUERY_REPLY = {
    "streams": [
        {"index": 0, "stream-id": 255, "enabled": False, "state": "insecure",
         "rid-valid": False, "rid-base": 0, "rid-limit": 0,
         "keys": [{"direction": d, "sub-stream": s, "programmed": []}
                  for d in ("rx", "tx") for s in ("pr", "npr", "cpl")]},
        {"index": 1, "stream-id": 7, "enabled": True, "state": "secure",
         "rid-valid": True, "rid-base": 256, "rid-limit": 256, "key-stream-id": 7,
         "keys": [{"direction": d, "sub-stream": s, "programmed": [0, 1], "active": 1}
                  for d in ("rx", "tx") for s in ("pr", "npr", "cpl")]},
    ],
    "violations": [
        {"seq": 4, "rule": "key-for-unconfigured-stream", "stream-id": 9,
         "message": "the platform programmed a key for Stream ID 9, which no Selective IDE "
                    "Stream holds"},
        {"seq": 5, "rule": "enable-before-keys", "stream-index": 1, "stream-id": 7,
         "message": "stream 1 enabled with Stream ID 7 before the platform programmed and "
                    "activated its keys (missing: Rx PR)"},
    ],
    "violations-total": 6,
}


def test_root_port_state_is_parsed(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    server = serve(ok(QUERY_REPLY))
    with QmpClient(sock) as qmp:
        state = RootPortIde(qmp, "rp1").state()
    assert server.requests[1]["arguments"] == {"id": "rp1"}
    idle, live = state.streams
    assert (idle.stream_id, idle.state, idle.key_stream_id) == (255, StreamState.INSECURE, None)
    assert not idle.secure and all(k.programmed == () and k.active is None for k in idle.keys)
    assert live.secure and (live.rid_base, live.rid_limit, live.key_stream_id) == (256, 256, 7)
    assert {(k.direction, k.sub_stream) for k in live.keys} == {
        (d, s) for d in Direction for s in SubStream}
    assert all(k.programmed == (0, 1) and k.active == 1 for k in live.keys)
    assert state.by_stream_id(7) == [live]
    first, second = state.violations
    assert first.stream_index is None and second.stream_index == 1
    assert str(second).startswith("enable-before-keys: stream 1 enabled")
    assert state.violations_total == 6


class Slot:
    """A key slot as the TSM model hands it over (tsm.root_port.RpSlot)."""

    def __init__(self, tx: bool, sub_stream: int, key_set: int) -> None:
        self.tx, self.sub_stream, self.key_set = tx, sub_stream, key_set


def test_tsm_key_operations_become_x_pcie_ide_key(
    sock: Path, serve: Callable[..., FakeQmp]
) -> None:
    server = serve(ok())
    keys = QmpRootPortKeys(sock, "rp1")
    assert server.connections == 0  # connects on first use, when QEMU is up
    keys.key_prog(1, Slot(True, 1, 0))
    keys.k_set_go(1, Slot(False, 2, 0))
    keys.k_set_stop(1, 1)
    keys.close()
    sent = [r.get("arguments") for r in server.requests if r["execute"] == "x-pcie-ide-key"]
    base = {"id": "rp1", "stream-id": 1}
    assert sent == [
        {**base, "operation": "key-prog", "key-set": 0, "direction": "tx", "sub-stream": "npr"},
        {**base, "operation": "k-set-go", "key-set": 0, "direction": "rx", "sub-stream": "cpl"},
        {**base, "operation": "k-set-stop", "key-set": 1},
    ]


def test_a_new_qemu_is_reconnected_once(sock: Path, serve: Callable[..., FakeQmp]) -> None:
    calls = {"n": 0}

    def handler(req: dict[str, Any]) -> list[bytes]:
        if req["execute"] == "x-pcie-ide-key":
            calls["n"] += 1
            if calls["n"] == 2:
                return [b"CLOSE"]  # the first QEMU went away mid-command
        return ok()(req)

    server = serve(handler)
    keys = QmpRootPortKeys(sock, "rp1")
    keys.k_set_stop(1, 0)
    keys.k_set_stop(1, 0)
    assert server.connections == 2 and calls["n"] == 3
    keys.close()


def test_snapshot_is_the_ports_view_and_never_raises(
    sock: Path, serve: Callable[..., FakeQmp]
) -> None:
    assert QmpRootPortKeys(sock, "rp1").snapshot()["error"].startswith("cannot connect")
    serve(ok(QUERY_REPLY))
    snap = QmpRootPortKeys(sock, "rp1").snapshot()
    assert snap["streams"] == [{"index": 1, "stream_id": 7, "enabled": True,
                                "state": "secure", "rid": "0100..0100"}]
    assert [v["rule"] for v in snap["violations"]] == [
        "key-for-unconfigured-stream", "enable-before-keys"]
    assert snap["violations_total"] == 6
