"""Sans-IO dispatch: every bad request gets {"ok": false, "error": ...}, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vdev.control.core import Command, CommandError, ControlCore, expect_args


def _core() -> ControlCore:
    def echo(args: dict[str, Any]) -> Any:
        expect_args(args, {"x"})
        return {"x": args.get("x")}

    def refuse(args: dict[str, Any]) -> Any:
        raise CommandError("no, because")

    def boom(args: dict[str, Any]) -> Any:
        raise RuntimeError("bug")

    def unjson(args: dict[str, Any]) -> Any:
        return {"b": b"\x00"}

    return ControlCore({"echo": Command(echo, "echo x"), "refuse": Command(refuse, ""),
                        "boom": Command(boom, ""), "unjson": Command(unjson, "")}, role="test")


def test_ok_and_id_echoed() -> None:
    assert _core().handle({"cmd": "echo", "args": {"x": 1}, "id": 7}) == {
        "id": 7, "ok": True, "result": {"x": 1}}


def test_help_lists_commands() -> None:
    r = _core().handle({"cmd": "help"})
    assert r["ok"] and set(r["result"]["commands"]) == {"echo", "refuse", "boom", "unjson",
                                                        "help"}


@pytest.mark.parametrize(("request_", "fragment"), [
    ([1, 2], "JSON object"),
    ({}, "missing \"cmd\""),
    ({"cmd": 5}, "missing \"cmd\""),
    ({"cmd": "nope"}, "unknown command 'nope'"),
    ({"cmd": "echo", "args": [1]}, "\"args\" must be a JSON object"),
    ({"cmd": "echo", "argz": {}}, "unknown request field(s) argz"),
    ({"cmd": "echo", "args": {"y": 1}}, "unknown argument(s) y"),
    ({"cmd": "refuse"}, "refuse: no, because"),
    ({"cmd": "boom"}, "internal error: RuntimeError: bug"),
    ({"cmd": "unjson"}, "internal error: TypeError"),
])
def test_bad_requests(request_: Any, fragment: str) -> None:
    r = _core().handle(request_)
    assert r["ok"] is False
    assert fragment in r["error"]


@pytest.mark.parametrize("line", [b"{", b"\xff\xfe", b"null", b"\"status\""])
def test_bad_lines(line: bytes) -> None:
    out = _core().handle_line(line)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert json.loads(out)["ok"] is False


def test_line_round_trip() -> None:
    out = _core().handle_line(b'{"cmd": "echo", "args": {"x": "a"}}\n')
    assert json.loads(out) == {"ok": True, "result": {"x": "a"}}
