"""A client killed mid-DOE, mid-handshake and mid-TDISP: the server logs the drop and
the next client completes the full flow (authenticate, session, IDE keys, LOCK,
report, START: RUN), with no fd left behind."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest

from spdm.codes import Rsp
from tests.helpers.vfio_host import full_flow, host_over
from tests.survival.conftest import Served
from vdev.doe.mailbox import DOE_WRITE
from vdev.vfio_user.client import VfioUserClient
from vdev.vfio_user.wire import Command

pytestmark = pytest.mark.timeout(120)


def _kill(c: VfioUserClient) -> None:
    """Abortive close (RST), like a QEMU killed with SIGKILL."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def _mid_doe(served: Served) -> None:
    c = served.client()
    host, doe = host_over(c, served.local)
    doe.abort()
    # A 16-DW GET_VERSION object: header, length, then 7 of its 14 payload DWs...
    doe.wr(DOE_WRITE, 0x0001 | (1 << 16))
    doe.wr(DOE_WRITE, 16)
    for dw in [0x00008410] + [0] * 6:
        doe.wr(DOE_WRITE, dw)
    # ... and half of the REGION_WRITE message carrying the next DW.
    msg = struct.pack("<HHIII", 0x77, Command.REGION_WRITE, 16 + 16 + 4, 0, 0)
    c.send_raw(msg + struct.pack("<QII", 0x100 + DOE_WRITE, 7, 4)[:6])
    _kill(c)


def _mid_handshake(served: Served) -> None:
    c = served.client()
    host, doe = host_over(c, served.local)
    doe.abort()
    host.authenticate()
    op = host.requester.key_exchange()
    reply = host.transport(op.request)  # KEY_EXCHANGE_RSP received, FINISH never sent
    assert reply[1] == Rsp.KEY_EXCHANGE_RSP
    _kill(c)


def _mid_tdisp(served: Served) -> None:
    c = served.client()
    host, doe = host_over(c, served.local)
    full_flow(host, doe, start=False)  # LOCKed, report read, never STARTed
    _kill(c)


def _wait_for_drops(served: Served, count: int) -> None:
    deadline = time.monotonic() + 5
    while served.server.log_text().count("client dropped") < count:
        assert time.monotonic() < deadline, served.server.log_tail()
        time.sleep(0.02)


@pytest.mark.parametrize("kill", [_mid_doe, _mid_handshake, _mid_tdisp],
                         ids=["mid-doe", "mid-handshake", "mid-tdisp"])
def test_next_client_completes_the_flow(served: Served, kill: Callable[[Served], None]) -> None:
    fds = served.proc.fds()
    drops = served.server.log_text().count("client dropped")
    kill(served)
    _wait_for_drops(served, drops + 1)
    last = served.server.log_text().splitlines()
    drop_line = [ln for ln in last if "client dropped" in ln][-1]
    with served.client() as c:
        host, doe = host_over(c, served.local)
        full_flow(host, doe)
        host.end_session()
    _wait_for_drops(served, drops + 2)
    assert served.server.alive()
    assert served.proc.fds() == fds
    print(f"\n{kill.__name__}: server logged {drop_line.strip()!r}")
