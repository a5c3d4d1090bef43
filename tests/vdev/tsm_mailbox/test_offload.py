"""TsmMailboxDevice with `offload`: every backend call runs away from the event loop,
one at a time in order, and the mailbox keeps answering meanwhile (a backend that waits
on QEMU's QMP must not stall the vCPU that waits on this server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.helpers.mailbox_driver import MailboxDriver
from tests.vdev.tsm_mailbox.test_device import CONNECT_SCRIPT, GET_VERSION, Irqs, NoDma
from tsm.mailbox_protocol import Action, DoeRequest, LockBar, Op, TargetFunction
from vdev.pci.device_api import DmaAccess, RegionIndex
from vdev.tsm_mailbox.backend import ScriptedBackend
from vdev.tsm_mailbox.device import TsmMailboxDevice
from vdev.tsm_mailbox.protocol import REG_IN_LEN, REG_STATUS, Status

Job = tuple[Callable[[], Any], Callable[[Any], None]]


class Worker:
    """An offload whose jobs the test runs by hand, in submission order."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, call: Callable[[], Any], then: Callable[[Any], None]) -> None:
        self.jobs.append((call, then))

    def run_one(self) -> None:
        call, then = self.jobs.pop(0)
        then(call())


class Recording(ScriptedBackend):
    """ScriptedBackend that notes which calls reached it, in order."""

    def __init__(self) -> None:
        super().__init__({Op.CONNECT: [CONNECT_SCRIPT]})
        self.calls: list[str] = []

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        self.calls.append(f"start {op.name}")
        return super().start(op, target, mmio=mmio)

    def doe_response(self, payload: bytes) -> Action:
        self.calls.append("doe_response")
        return super().doe_response(payload)

    def abort(self) -> None:
        self.calls.append("abort")
        super().abort()


def make(backend: Any, offload: Any) -> tuple[TsmMailboxDevice, MailboxDriver]:
    dev = TsmMailboxDevice(backend, offload=offload)
    nodma: DmaAccess = NoDma()
    dev.attach(Irqs(), nodma)
    drv = MailboxDriver(lambda o, n: dev.region_read(RegionIndex.BAR0, o, n),
                        lambda o, d: dev.region_write(RegionIndex.BAR0, o, d))
    return dev, drv


def test_the_mailbox_stays_busy_until_the_offloaded_step_returns() -> None:
    backend, worker = Recording(), Worker()
    dev, drv = make(backend, worker)
    assert drv.start(Op.CONNECT, wait=False) == Status.BUSY
    assert backend.calls == []  # nothing ran on the event loop
    assert drv.start(Op.CONNECT, wait=False) == Status.ERROR  # still busy: a guest mistake
    worker.run_one()
    assert backend.calls == ["start CONNECT"]
    # The step finished after the operation was dropped: its request is not published,
    # and the abort reaches the backend only after that step.
    assert drv.outcome().status == Status.ERROR
    worker.run_one()
    assert backend.calls == ["start CONNECT", "abort"]
    assert worker.jobs == []


def test_offloaded_steps_publish_in_order() -> None:
    backend, worker = Recording(), Worker()
    dev, drv = make(backend, worker)
    drv.start(Op.CONNECT, wait=False)
    worker.run_one()
    assert drv.outcome().status == Status.DOE_REQUEST
    assert dev.out_payload == GET_VERSION
    drv.wr32(REG_IN_LEN, 0)
    assert drv.ring(Op.DOE_RESPONSE, wait=False) == Status.BUSY
    worker.run_one()
    assert drv.outcome().status == Status.DOE_REQUEST
    assert backend.calls == ["start CONNECT", "doe_response"]


def test_a_blocking_backend_does_not_block_the_loop() -> None:
    gate = threading.Event()

    class Blocking(Recording):
        def start(self, op: Op, target: TargetFunction, *,
                  mmio: Sequence[LockBar] = ()) -> Action:
            assert gate.wait(10), "the test never opened the gate"
            return DoeRequest(1, GET_VERSION)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1)

        def offload(call: Callable[[], Any], then: Callable[[Any], None]) -> None:
            loop.run_in_executor(executor, call).add_done_callback(
                lambda fut: then(fut.result()))

        dev, drv = make(Blocking(), offload)
        seen: list[int] = [drv.start(Op.CONNECT, wait=False)]
        for _ in range(3):  # the guest polls while the backend is stuck
            await asyncio.sleep(0.01)
            seen.append(drv.rd32(REG_STATUS))
        gate.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if drv.rd32(REG_STATUS) != Status.BUSY:
                break
        seen.append(drv.rd32(REG_STATUS))
        executor.shutdown()
        return seen

    assert asyncio.run(scenario()) == [Status.BUSY] * 4 + [Status.DOE_REQUEST]
