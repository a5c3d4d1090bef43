"""Several devices served by one process: DEVICES `serve_in_thread` servers (one event
loop each), or DEVICES VfioUserServers sharing one event loop; each device is driven
concurrently by its own client thread to a different end state, with no interference.

Also: the RSS of one `vdev serve` device process (reported, not asserted beyond a
sanity bound), so the cost of "one device per process" is on record.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import pytest

from tdisp.codes import TdiState
from tests.helpers.vfio_host import Proc, full_flow, host_over, report
from tests.survival.conftest import Served
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.ide_cap import IdeStreamState
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.server import VfioUserServer
from vdev.vfio_user.threaded import ThreadedServer, serve_in_thread

DEVICES = 4
ROUNDS = 3

pytestmark = pytest.mark.timeout(120)


def _drive(srv: ThreadedServer[TeeDevice], goal: str, out: dict[str, object]) -> None:
    """ROUNDS reconnects, each to RUN; the last one stops at `goal`."""
    try:
        for rnd in range(ROUNDS):
            with VfioUserClient(srv.path, timeout=10.0) as c:
                c.negotiate()
                host, doe = host_over(c, srv.device)
                last = rnd == ROUNDS - 1
                full_flow(host, doe, start=not (last and goal == "locked"))
                assert host.session_id is not None
                out["session"] = host.session_id
                if last and goal == "ended":
                    host.end_session()
        out["ok"] = True
    except BaseException as exc:  # reported by the main thread
        out["error"] = repr(exc)


@contextmanager
def _one_loop(tmp_path: Path, count: int) -> Iterator[list[ThreadedServer[TeeDevice]]]:
    """`count` VfioUserServers on ONE event loop (one thread)."""
    loop = asyncio.new_event_loop()
    sockdir = Path(tempfile.mkdtemp(prefix="vu-many-", dir="/tmp"))
    servers = [ThreadedServer(dev, str(sockdir / f"d{i}.sock"),
                              VfioUserServer(dev, str(sockdir / f"d{i}.sock")), loop)
               for i, dev in enumerate(TeeDevice(state_dir=tmp_path / f"id{i}")
                                       for i in range(count))]
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        for s in servers:
            loop.run_until_complete(s.server.start())
        started.set()
        loop.run_forever()
        for s in servers:
            loop.run_until_complete(s.server.close())
        loop.close()

    thread = threading.Thread(target=run, name="vfio-user-many", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield servers
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        shutil.rmtree(sockdir, ignore_errors=True)


@contextmanager
def _loop_per_device(tmp_path: Path, count: int) -> Iterator[list[ThreadedServer[TeeDevice]]]:
    with ExitStack() as stack:
        yield [stack.enter_context(serve_in_thread(
            lambda loop, i=i: TeeDevice(state_dir=tmp_path / f"id{i}"), name=f"d{i}"))
            for i in range(count)]


@pytest.mark.parametrize("layout", [_loop_per_device, _one_loop],
                         ids=["loop-per-device", "one-loop"])
def test_several_devices_in_one_process(
    tmp_path: Path,
    layout: Callable[[Path, int], AbstractContextManager[list[ThreadedServer[TeeDevice]]]],
) -> None:
    goals = ["run", "locked", "ended", "run"][:DEVICES]
    with layout(tmp_path, DEVICES) as servers:
        results: list[dict[str, object]] = [{} for _ in servers]
        threads = [threading.Thread(target=_drive, args=(s, g, r))
                   for s, g, r in zip(servers, goals, results, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert all(r.get("ok") for r in results), results
        expected: dict[str, tuple[TdiState, int, Callable[[int], bool]]] = {
            "run": (TdiState.RUN, IdeStreamState.SECURE, lambda n: n == 1),
            "locked": (TdiState.CONFIG_LOCKED, IdeStreamState.SECURE, lambda n: n == 1),
            # END_SESSION: the TDI locked over it goes to ERROR, the keys are dropped.
            "ended": (TdiState.ERROR, IdeStreamState.INSECURE, lambda n: n == 0),
        }
        for srv, goal, res in zip(servers, goals, results, strict=True):
            dev = srv.device
            state, stream, sessions_ok = expected[goal]
            assert dev.tdi.state == state, (goal, dev.tdi.state)
            assert dev.ide.stream(0).state == stream, goal
            assert sessions_ok(len(dev.responder.sessions)), (goal, dev.responder.sessions)
            if goal != "ended":
                assert res["session"] in dev.responder.sessions
            # Each device served its own clients only.
            assert srv.server.clients_served == ROUNDS
        # Identities are per device: four different trust anchors.
        assert len({s.device.identity.root.fingerprint(
            s.device.identity.root.signature_hash_algorithm)  # type: ignore[arg-type]
            for s in servers}) == DEVICES
    me = Proc(os.getpid())
    report(f"many_devices_{layout.__name__.strip('_')}", {
        "devices_in_one_process": DEVICES, "rounds_each": ROUNDS,
                            "test_process_rss_kib": me.rss_kib()})


def test_rss_of_one_device_process(served: Served) -> None:
    with served.client() as c:
        host, doe = host_over(c, served.local)
        full_flow(host, doe)
        host.end_session()
    rss = served.proc.rss_kib()
    report("device_process", {"vdev_serve_rss_kib_after_full_flow": rss})
    print(f"\nvdev serve RSS after a full flow: {rss} KiB")
    assert rss < 256 * 1024
