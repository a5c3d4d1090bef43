"""Event loop choice: uvloop when installed, asyncio otherwise, forced by name or env."""

from __future__ import annotations

import asyncio
import sys

import pytest

from vdev.vfio_user import event_loop


def test_asyncio_is_always_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    factory, name = event_loop.loop_factory("asyncio")
    assert name == "asyncio"
    loop = factory()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.loop_factory()[1] == "asyncio"
    with pytest.raises(event_loop.EventLoopError, match="not installed"):
        event_loop.loop_factory("uvloop")


def test_environment_chooses_and_bad_names_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.loop_factory()[1] == "asyncio"
    monkeypatch.setenv(event_loop.ENV, "trio")
    with pytest.raises(event_loop.EventLoopError, match="choose one of auto, uvloop, asyncio"):
        event_loop.loop_factory()


def test_run_runs_on_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), "asyncio").startswith("asyncio")
    pytest.importorskip("uvloop")
    assert event_loop.run(which(), "uvloop").startswith("uvloop")
