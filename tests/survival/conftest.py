"""A `vdev serve` subprocess shared by the survival tests (see rig.py for the host)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.vfio_host import Proc
from vdev.endpoint.tee_device import TeeDevice
from vdev.vfio_user.client import VfioUserClient
from vdev.vm.session import ServerProcess


@dataclass
class Served:
    server: ServerProcess
    local: TeeDevice
    proc: Proc

    @property
    def path(self) -> str:
        return str(self.server.socket)

    def client(self) -> VfioUserClient:
        c = VfioUserClient(self.path, timeout=10.0)
        c.negotiate()
        return c


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("survival")
    state = work / "identity"
    local = TeeDevice(state_dir=state)  # creates the identity the server then loads
    sockdir = Path(tempfile.mkdtemp(prefix="vdev-surv-"))
    server = ServerProcess(
        ["--log-level", "info", "serve", "--socket", str(sockdir / "dev.sock"),
         "--state-dir", str(state)],
        socket=sockdir / "dev.sock", log=work / "server.log",
    ).start()
    assert server.proc is not None
    try:
        yield Served(server, local, Proc(server.proc.pid))
        assert server.alive(), server.log_tail()
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
