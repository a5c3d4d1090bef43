"""The TSM model's backend (against stand-in operations driving the real `Done`),
the `vdev tsm serve` backend choice, and the device over the real vfio-user
server with the synchronous client."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import select
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mailbox_driver import MailboxDriver
from tsm.mailbox_backend import OperationBackend
from tsm.mailbox_protocol import DoeRequest, Done, Op, TargetFunction, done_data
from vdev.cli import build_parser
from vdev.cli import tsm_serve as tsm_cli
from vdev.endpoint.function import spdm_unsupported_placeholder
from vdev.pci.device_api import IrqIndex, RegionIndex
from vdev.tsm_mailbox.backend import Script, ScriptedBackend
from vdev.tsm_mailbox.device import TsmMailboxDevice
from vdev.tsm_mailbox.protocol import IRQ_CTRL_COMPLETION, REG_IRQ_CTRL, Status
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.threaded import serve_in_thread

pytestmark = pytest.mark.timeout(20)


# ---- model adapter ---------------------------------------------------------------


@dataclass
class FakeOperation:
    """The shape of tsm.operations.TsmOperation."""

    gen: Generator[DoeRequest, bytes, Any]
    done: bool = False
    next_request: DoeRequest | None = None
    result: Done | None = None
    failures: list[int | str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._advance(lambda: next(self.gen))

    def _advance(self, step: Any) -> None:
        try:
            self.next_request = step()
        except StopIteration as stop:
            self.done, self.next_request = True, None
            self.result = Done(0, "connected", stop.value, {"spdm": "1.2"})
        except Exception as exc:
            self.done, self.next_request = True, None
            self.result = Done(-errno.EIO, str(exc), evidence={})

    def feed(self, response: bytes) -> None:
        self._advance(lambda: self.gen.send(response))

    def fail(self, cause: int | str) -> None:
        self.failures.append(cause)
        self._advance(lambda: self.gen.throw(OSError(str(cause))))


def two_step(value: Any = None) -> Generator[DoeRequest, bytes, Any]:
    rsp = yield DoeRequest(1, b"\x10\x84\x00\x00")
    if rsp[1] == 0x7F:
        raise ValueError("device answered SPDM ERROR")
    yield DoeRequest(2, b"secured")
    return value


def test_model_operation_success_and_failure() -> None:
    started: list[FakeOperation] = []

    def start(op: Op, target: TargetFunction, mmio: object) -> FakeOperation:
        started.append(FakeOperation(two_step(b"REPORT" if op == Op.REPORT else None)))
        return started[-1]

    be = OperationBackend(start)  # type: ignore[arg-type]
    assert be.start(Op.CONNECT, TargetFunction(0, 1, 0)) == DoeRequest(1, b"\x10\x84\x00\x00")
    done = be.doe_response(spdm_unsupported_placeholder(b"\x10\x84\x00\x00"))
    assert isinstance(done, Done) and done.errno == -errno.EIO
    assert done.reason == "device answered SPDM ERROR"
    assert json.loads(done_data(done)) == {"evidence": {}}  # what the model knew when it refused

    assert be.start(Op.REPORT, TargetFunction(0, 1, 0)).doe_type == 1  # type: ignore[union-attr]
    assert be.doe_response(b"\x12\x04\x00\x00") == DoeRequest(2, b"secured")
    assert be.doe_response(b"ok") == Done(0, "connected", b"REPORT", {"spdm": "1.2"})

    be.start(Op.STATUS, TargetFunction(0, 1, 0))
    be.abort()
    assert started[-1].failures and started[-1].done

    be.start(Op.STATUS, TargetFunction(0, 1, 0))
    res = be.transport_error(-errno.ETIMEDOUT)
    assert isinstance(res, Done) and res.errno == -errno.EIO


def test_model_delay_and_errno_pass_through() -> None:
    @dataclass
    class Op1:
        done: bool = False
        next_request: DoeRequest | None = DoeRequest(1, b"\x10\x84\0\0", 1000)
        result: Done | None = None

        def feed(self, response: bytes) -> None:
            self.done, self.next_request = True, None
            self.result = Done(-errno.EACCES, "refused", evidence={})

        def fail(self, cause: int | str) -> None:
            raise AssertionError

    be = OperationBackend(lambda op, t, mmio: Op1())  # type: ignore[arg-type,return-value]
    assert be.start(Op.CONNECT, TargetFunction(0, 1, 0)) == DoeRequest(
        1, b"\x10\x84\0\0", 1000)
    done = be.doe_response(b"")
    assert isinstance(done, Done) and done.errno == -errno.EACCES


def test_model_json_result() -> None:
    def start(op: Op, target: TargetFunction, mmio: object) -> FakeOperation:
        def gen() -> Generator[DoeRequest, bytes, Any]:
            return {"state": "RUN"}
            yield DoeRequest(1, b"")  # pragma: no cover - makes this a generator

        return FakeOperation(gen())

    done = OperationBackend(start).start(  # type: ignore[arg-type]
        Op.STATUS, TargetFunction(0, 1, 0))
    assert isinstance(done, Done) and done.ok
    assert json.loads(done_data(done)) == {"value": {"state": "RUN"}}


# ---- CLI -------------------------------------------------------------------------------


def test_cli_parses_tsm_serve() -> None:
    args = build_parser().parse_args(
        ["tsm", "serve", "--socket", "/tmp/s", "--trust-anchor", "ca.pem", "--policy", "p"])
    assert args.func is tsm_cli.cmd_serve
    assert (args.socket, args.trust_anchor, args.policy) == ("/tmp/s", "ca.pem", "p")


def test_cli_model_backend_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--trust-anchor FILE is required"):
        tsm_cli._model_backend(None, None)
    with pytest.raises(SystemExit, match="--trust-anchor .*missing.pem: No such file"):
        tsm_cli._model_backend(str(tmp_path / "missing.pem"), None)


def test_cli_bad_script_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    args = argparse.Namespace(socket=str(tmp_path / "s"), scripted=str(bad), record=None,
                              trust_anchor=None, policy=None)
    with pytest.raises(SystemExit, match="bad script"):
        tsm_cli.cmd_serve(args)


# ---- over the vfio-user server ------------------------------------------------------------


@dataclass
class Served:
    device: TsmMailboxDevice
    backend: ScriptedBackend
    path: str


@pytest.fixture
def served() -> Iterator[Served]:
    backend = ScriptedBackend({Op.CONNECT: [Script(
        (DoeRequest(1, bytes.fromhex("10840000")),), Done(0, "ok"))]})

    def make(loop: asyncio.AbstractEventLoop) -> TsmMailboxDevice:
        # Deferred steps run on the server's loop, as `vdev tsm serve` does.
        return TsmMailboxDevice(backend, defer=loop.call_soon)

    with serve_in_thread(make, name="mbox") as s:
        yield Served(s.device, backend, s.path)


def test_over_vfio_user_with_interrupts(served: Served) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with VfioUserClient(served.path, timeout=2.0) as c:
            c.negotiate()
            assert c.get_irq_info(IrqIndex.MSIX).count == 1
            c.set_irq_eventfds(IrqIndex.MSIX, 0, [efd])

            def rd(off: int, n: int) -> bytes:
                return c.region_read(RegionIndex.BAR0, off, n)

            def wr(off: int, data: bytes) -> None:
                c.region_write(RegionIndex.BAR0, off, data, posted=True)

            drv = MailboxDriver(rd, wr)
            drv.wr32(REG_IRQ_CTRL, IRQ_CTRL_COMPLETION)
            out = drv.run(Op.CONNECT, lambda t, p: spdm_unsupported_placeholder(p))
            assert out.status == Status.DONE and out.result == 0 and out.reason == "ok"
            assert select.select([efd], [], [], 1.0)[0]
            assert os.eventfd_read(efd) == 2  # DOE_REQUEST, then DONE
            assert served.backend.exchanges[0].response == bytes.fromhex("107f0784")
            # A guest mistake over the wire, then the device still works.
            assert drv.ring(0x99) == Status.ERROR
            assert drv.run(Op.CONNECT, lambda t, p: b"\x10\x04\x00\x00").result == 0
    finally:
        os.close(efd)
