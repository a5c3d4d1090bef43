"""`vdev serve` / `vdev tsm serve` / `vdev spdm-emu` as real processes, for the tests that
check the command-line wiring: start, wait until the server is ready, stop cleanly.

    with vdev_process(tmp_path, "serve", "--socket", sock, wait_for=[sock]) as server:
        ...                                  # talk to it
        assert server.terminate() == 0       # SIGTERM: a clean exit
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT = 30.0


class VdevProcess:
    """`python -m vdev.cli ARGV`, its stdout and stderr in `log`."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vdev.cli", *self.argv],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str,
                   timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"vdev {self.argv[0]} exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{what} not ready after {timeout} s"
            time.sleep(0.05)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (what a user's Ctrl-C or a service manager sends); the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def vdev_process(
    workdir: Path, *argv: str, wait_for: Sequence[str | Path] = (),
    ready: Callable[[], bool] | None = None, log_name: str = "server.log",
) -> Iterator[VdevProcess]:
    """Start `vdev ARGV`; yield once every path in `wait_for` exists and `ready()` (if
    given) holds; kill it on the way out if the test did not stop it."""
    server = VdevProcess(argv, workdir / log_name)
    try:
        server.wait_until(lambda: all(os.path.exists(p) for p in wait_for)
                          and (ready is None or ready()), " and ".join(map(str, wait_for))
                          or "the server")
        yield server
    finally:
        server.kill()
