"""A guest session: our device servers as subprocesses plus one QEMU boot.

Used by `make run`, `make vm` and the guest tests.  Every artefact of a run
(server logs, console log, the QEMU command line, the initramfs) lands in one
directory so a failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vdev.vm.env import GUEST, GUEST_TESTS, REPO, VmEnv, build_module
from vdev.vm.initramfs import Addition, guest_initramfs
from vdev.vm.qemu import VfioUserAttach, VmResult, VmSpec, run_vm


class ServerError(RuntimeError):
    """A device server did not come up; the message carries its log tail."""


@dataclass
class ServerProcess:
    """`vdev <args>` run as a subprocess, logging to `log`, listening on `socket`."""

    argv: Sequence[str]
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        logf = self.log.open("wb")
        cmd = [sys.executable, "-m", "vdev.cli", *self.argv]
        # Its own process group: a Ctrl-C on the terminal reaches only us, and we stop
        # the server (stop()) after QEMU, in order.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.socket.exists():
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        finally:
            if not self.socket.exists():
                self.stop()
        raise ServerError(f"`vdev {' '.join(self.argv)}` did not listen:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """Stop the server if it runs; its socket goes in any case, started or not."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The socket's private directory (socket_path) goes with the server.
        self.socket.unlink(missing_ok=True)
        if self.socket.parent.name.startswith("vdev-"):
            with contextlib.suppress(OSError):  # not empty: something else lives there
                self.socket.parent.rmdir()
        return None if self.proc is None else self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def socket_path(name: str) -> Path:
    """A socket in a short private directory: UNIX socket paths are limited
    to 107 bytes, which deep work directories exceed."""
    return Path(tempfile.mkdtemp(prefix="vdev-")) / f"{name}.sock"


def device_server(workdir: Path, name: str = "dev0", extra: Sequence[str] = ()) -> ServerProcess:
    sock = socket_path(name)
    return ServerProcess(
        ["serve", "--socket", str(sock), *extra], socket=sock, log=workdir / f"{name}-server.log"
    )


def tsm_mailbox_server(
    workdir: Path, args: Sequence[str], name: str = "tsm0"
) -> ServerProcess:
    """`vdev tsm serve` for the TSM mailbox device; `args` chooses the backend
    (`--trust-anchor FILE [--policy FILE]`, or the test-only `--scripted FILE`)."""
    sock = socket_path(name)
    return ServerProcess(
        ["tsm", "serve", "--socket", str(sock), *args], socket=sock,
        log=workdir / f"{name}-server.log",
    )


@dataclass
class GuestRun:
    """Inputs of one boot: modules to build, scripts to run, devices to attach."""

    env: VmEnv
    workdir: Path
    scripts: dict[str, bytes] = field(default_factory=dict)
    modules: Sequence[str] = ()
    # Sockets of vfio-user servers, or VfioUserAttach for root port options.
    devices: Sequence[Path | VfioUserAttach] = ()
    append: str = ""
    quiet: bool = True
    additions: Sequence[Addition] = ()  # the user's files (--initramfs-add)
    user_env: dict[str, str] = field(default_factory=dict)  # for the added programs
    timeout: float = 240.0
    qemu_args: Sequence[str] = ()

    def prepare(self) -> VmSpec:
        """Build the modules and the initramfs; the VmSpec that boots them."""
        mods = {}
        for name in self.modules:
            ko = build_module(GUEST / name, self.workdir / "modules" / name,
                              kdir=self.env.kdir_override)
            mods[ko.name] = ko
        initrd = self.workdir / "initrd.cpio.gz"
        guest_initramfs(
            self.env.busybox, GUEST / "init.sh", modules=mods, scripts=self.scripts,
            additions=self.additions, user_env=self.user_env,
        ).write(initrd)
        return VmSpec(
            env=self.env, initrd=initrd, append=self.append, quiet=self.quiet,
            timeout=self.timeout,
            qemu_args=list(self.qemu_args),
            devices=[
                replace(d, id=f"vu{i}")
                if isinstance(d, VfioUserAttach) else VfioUserAttach(d, id=f"vu{i}")
                for i, d in enumerate(self.devices)
            ],
        )

    def boot(self, on_line: Callable[[str], None] | None = None) -> VmResult:
        return run_vm(self.prepare(), self.workdir / "console.log", on_line=on_line)


def script(body_file: str, **variables: object) -> bytes:
    """A guest test script from guest-tests/scripts: the variables, then the helpers
    every script shares (scripts/lib.sh: E, M, rd, w), then the script."""
    scripts = GUEST_TESTS / "scripts"
    head = "".join(f"{k}={v}\n" for k, v in variables.items())
    return (head + (scripts / "lib.sh").read_text() + (scripts / body_file).read_text()).encode()


def root_anchor(identity_dir: Path, out: Path) -> Path:
    """The device identity's root CA (first certificate of slot 0's chain), written
    to `out`: the trust anchor a TSM is given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # `vdev serve --state-dir identity_dir` keeps it in <identity>/slot0/ (identity_store).
    chain_file = next(identity_dir.glob("*/slot0/chain.pem"))
    chain = x509.load_pem_x509_certificates(chain_file.read_bytes())
    out.write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
    return out
