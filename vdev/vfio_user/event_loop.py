"""The event loop the servers run on: uvloop when it is installed, else asyncio's own.

Every guest config access is one wake-up of the server's loop.  asyncio's
selector loop spends a few microseconds of Python per wake-up (timer heap,
ready queue, handle objects); uvloop (libuv, an optional dependency:
`pip install 'vdev[fast]'`) does the same in C.  Both run the same server
code: it only uses `add_reader`/`add_writer`, `call_soon`, `call_later` and
futures.  `auto` takes uvloop when it can be imported and asyncio otherwise;
the choice can be forced with `vdev serve --event-loop` or the environment
variable VDEV_EVENT_LOOP, and the server logs which loop runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("vdev")

CHOICES = ("auto", "uvloop", "asyncio")
ENV = "VDEV_EVENT_LOOP"

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopError(Exception):
    """The event loop asked for cannot be had (unknown name, uvloop not installed)."""


def loop_factory(choice: str | None = None) -> tuple[LoopFactory, str]:
    """(factory, description) for `choice` (default: $VDEV_EVENT_LOOP, else auto)."""
    choice = choice or os.environ.get(ENV) or "auto"
    if choice not in CHOICES:
        raise EventLoopError(f"event loop {choice!r}: choose one of {', '.join(CHOICES)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise EventLoopError("event loop uvloop: not installed "
                                     "(pip install 'vdev[fast]', or uvloop)") from None
        else:
            return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".strip()
    return asyncio.new_event_loop, "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop; logs which loop it is."""
    factory, name = loop_factory(choice)
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
