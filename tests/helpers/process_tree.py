"""Run a real `vdev` / `make` command, signal it, and see what it left behind.

Every process the command starts (servers, QEMU, the KVM probe, make's children)
inherits its environment, so a private TMPDIR marks them all: `marked()` finds
them in /proc even after they were re-parented to init, and the TMPDIR itself
shows every temporary file or directory the command did not remove.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vdev.vm.env import REPO


def marked(tmpdir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment has TMPDIR=tmpdir."""
    mark = f"TMPDIR={tmpdir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append((int(proc.name), cmdline.decode(errors="replace").strip()))
        except OSError:  # gone, or not ours to read
            continue
    return found


def wait_gone(tmpdir: Path, timeout: float = 15.0) -> list[tuple[int, str]]:
    """The marked processes still alive after `timeout` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [(pid, cmd) for pid, cmd in marked(tmpdir) if not _zombie(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def kill_marked(tmpdir: Path) -> None:
    """A failed test must not leave its leak running."""
    for pid, _ in marked(tmpdir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_for(tmpdir: Path, what: str, timeout: float = 120.0) -> None:
    """Until a marked process's command line contains `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(what in cmd for _, cmd in marked(tmpdir)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no process running {what!r} after {timeout:.0f} s: "
                         f"{marked(tmpdir)}")


def private_env(tmpdir: Path, **extra: str) -> dict[str, str]:
    tmpdir.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmpdir), **extra}


@dataclass
class OnTerminal:
    """A command on a pseudo-terminal (its controlling terminal), as a user runs it."""

    argv: Sequence[str]
    env: dict[str, str]
    pid: int = 0
    fd: int = -1
    output: bytearray = field(default_factory=bytearray)

    def start(self) -> OnTerminal:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec or die, never return into pytest
            try:
                os.chdir(REPO)
                os.execvpe(self.argv[0], list(self.argv), self.env)
            finally:
                os._exit(127)
        return self

    def expect(self, text: str, timeout: float = 120.0) -> None:
        """Until `text` was printed (line ends as "\n": a terminal adds "\r"s)."""
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if time.monotonic() > deadline or self._read(1.0) == b"":
                raise AssertionError(f"{text!r} never came; output:\n"
                                     f"{self.text[-3000:]}")

    def expect_match(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Until a line matching `pattern` was printed; the match."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text, re.MULTILINE)):
            if time.monotonic() > deadline or self._read(1.0) == b"":
                raise AssertionError(f"{pattern!r} never came; output:\n"
                                     f"{self.text[-3000:]}")
        return found

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, timeout: float) -> bytes | None:
        """What came within `timeout`: None if nothing, b"" at the end."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the terminal's last process closed it
            data = b""
        self.output += data
        return data

    def wait(self, timeout: float = 60.0) -> int:
        """Exit status as subprocess reports it (negative: killed by that signal)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.1):
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"still running after {timeout:.0f} s:\n"
                             f"{self.text[-3000:]}")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r", "")


def started(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A command without a terminal, its output captured, in its own session (as a
    job a user would signal)."""
    return subprocess.Popen(list(argv), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
