"""The asyncio adapter: several requests per connection, partial lines, an overlong
line, a stale socket file, a path that is taken."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from vdev.control.core import Command, ControlCore
from vdev.control.server import MAX_LINE, ControlServer, start_control


def _core() -> ControlCore:
    return ControlCore({"ping": Command(lambda args: "pong", "")}, role="test")


async def _exchange(path: str, data: bytes, replies: int) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    out = [await reader.readline() for _ in range(replies)]
    writer.close()
    return out


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_requests_in_order_and_bad_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")

    async def main() -> list[bytes]:
        server = ControlServer(path, _core())
        await server.start()
        assert os.stat(path).st_mode & 0o777 == 0o600
        try:
            return await _exchange(
                path, b'{"cmd":"ping","id":1}\n\n{oops\n{"cmd":"ping","id":2}\n', 3)
        finally:
            await server.close()
            assert not os.path.exists(path)

    lines = _run(main())
    assert lines[0] == b'{"id":1,"ok":true,"result":"pong"}\n'
    assert b'"ok":false' in lines[1] and b"not JSON" in lines[1]
    assert lines[2] == b'{"id":2,"ok":true,"result":"pong"}\n'


def test_overlong_line_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")

    async def main() -> list[bytes]:
        server = ControlServer(path, _core())
        await server.start()
        try:
            return await _exchange(path, b"x" * (MAX_LINE + 10) + b"\n", 1)
        finally:
            await server.close()

    [line] = _run(main())
    assert b"longer than" in line


def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # file left behind, nobody listening

    async def main() -> None:
        server = await start_control(path, _core())
        assert server is not None
        try:
            with pytest.raises(SystemExit, match="another server"):
                await start_control(path, _core())
        finally:
            await server.close()

    _run(main())
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit, match="not a socket"):
        _run(start_control(str(tmp_path / "f"), _core()))
    assert _run(start_control(None, _core())) is None
