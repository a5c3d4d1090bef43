"""Boot the guest under QEMU with vfio-user devices and collect its console.

The guest's /init prints `@@VDEV key value` lines on the serial console; this
module runs QEMU under a hard timeout, streams the console to a log file and
hands back the parsed lines.  KVM is used only if a short probe boot shows it
works (on our machines it does not: /dev/kvm is a software hypervisor that
the 7.3 kernel trips over), otherwise TCG.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vdev.vm.env import GUEST, VmEnv, cache_dir
from vdev.vm.initramfs import guest_initramfs

MARK = "@@VDEV "
DMESG = "@@DMESG "


@dataclass(frozen=True)
class VfioUserAttach:
    """One vfio-user device, each placed behind its own PCIe root port.

    `root_port` adds options to that root port, e.g. "x-ide-streams=4" for
    the patched QEMU's IDE capability (qemu/README.md).  `post_config_writes`
    sets that QEMU's x-post-config-writes: config space writes are sent without
    waiting for the reply; `doe_batch` its x-doe-batch: the DOE mailboxes' data
    moves in bulk through the device's DOE batch region (vdev.pci.doe_batch).
    Stock QEMU has neither property.
    """

    socket: Path
    id: str = "vu0"
    root_port: str = ""
    post_config_writes: bool = False
    doe_batch: bool = False


@dataclass
class VmSpec:
    env: VmEnv
    initrd: Path
    devices: list[VfioUserAttach] = field(default_factory=list)
    memory_mb: int = 512
    append: str = ""
    quiet: bool = True  # `quiet` on the kernel command line (False: the whole boot log)
    accel: str = "auto"
    timeout: float = 240.0
    qemu_args: list[str] = field(default_factory=list)  # e.g. -qmp, -trace
    # make vm: the console on this terminal (with QEMU's monitor, Ctrl-A X quits),
    # logged to console.log in this directory; the guest's kernel log at power-off
    # goes to its second serial port, dmesg.log there.
    terminal_logs: Path | None = None


@dataclass
class VmResult:
    accel: str
    returncode: int | None
    timed_out: bool
    seconds: float
    console: list[str]
    argv: list[str]
    stderr: list[str] = field(default_factory=list)  # QEMU's own messages

    @property
    def records(self) -> list[tuple[str, str]]:
        """The `@@VDEV key value` lines, in order."""
        out = []
        for line in self.console:
            i = line.find(MARK)
            if i >= 0:
                key, _, value = line[i + len(MARK):].rstrip("\r\n").partition(" ")
                out.append((key, value))
        return out

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.records if k == key]

    def value(self, key: str) -> str | None:
        vals = self.values(key)
        return vals[-1] if vals else None

    @property
    def dmesg(self) -> list[str]:
        out = []
        for line in self.console:
            i = line.find(DMESG)
            if i >= 0:
                out.append(line[i + len(DMESG):].rstrip("\r\n"))
        return out

    @property
    def completed(self) -> bool:
        return self.value("done") == "0"


def kernel_cmdline(spec: VmSpec) -> str:
    """console=ttyS0: the serial line is all the host reads; panic=-1: a panic
    reboots, which -no-reboot turns into QEMU exiting at once; no_timer_check: skip the
    boot-time test of the timer interrupt (kernel-parameters.txt)."""
    return " ".join(["console=ttyS0", "panic=-1",
                     "no_timer_check",  # slow TCG fails it: "8254 timer not connected"
                     *(["quiet"] if spec.quiet else []),
                     *([spec.append] if spec.append else [])])


def serial_ports(spec: VmSpec) -> list[str]:
    """ttyS0 is the console: a pipe the host reads, or for make vm this terminal,
    multiplexed with QEMU's monitor (signal=off: Ctrl-C goes to the guest) and logged;
    ttyS1 then takes the kernel log the guest writes at power-off (guest/init.sh)."""
    if spec.terminal_logs is None:
        return ["-serial", "stdio"]
    logs = spec.terminal_logs
    return ["-chardev", f"stdio,id=console,mux=on,signal=off,logfile={logs / 'console.log'}",
            "-serial", "chardev:console", "-monitor", "chardev:console",
            "-serial", f"file:{logs / 'dmesg.log'}"]


def qemu_command(spec: VmSpec, accel: str) -> list[str]:
    """The exact QEMU invocation (also what qemu-configs/ documents)."""
    mem = f"{spec.memory_mb}M"
    argv = [
        *spec.env.qemu_argv(),
        "-machine", "q35,memory-backend=mem",
        # A shared memfd backend makes QEMU pass the guest-RAM fd with every
        # DMA_MAP, so the device reaches guest memory by mmap, not messages.
        "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-m", mem,
        "-smp", "1",
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-nographic", "-nodefaults", "-no-reboot",
        *serial_ports(spec),
        "-kernel", str(spec.env.kernel),
        "-initrd", str(spec.initrd),
        "-append", kernel_cmdline(spec),
    ]
    for n, dev in enumerate(spec.devices, start=1):
        rp = f"rp{n}"
        rp_opts = f",{dev.root_port}" if dev.root_port else ""
        argv += [
            "-device", f"pcie-root-port,id={rp},bus=pcie.0,chassis={n},slot={n}{rp_opts}",
            "-device", json.dumps({
                "driver": "vfio-user-pci", "id": dev.id, "bus": rp, "addr": "0x0",
                # Only the JSON form of the socket property works (docs/vfio-user-qemu.md §9).
                "socket": {"type": "unix", "path": str(dev.socket)}, "rombar": 0,
                **({"x-post-config-writes": True} if dev.post_config_writes else {}),
                **({"x-doe-batch": True} if dev.doe_batch else {}),
            }, separators=(",", ":")),
        ]
    argv += spec.qemu_args
    # VDEV_QEMU_ARGS appends extra QEMU options, e.g. "-trace vfio_msi*".
    argv += shlex.split(os.environ.get("VDEV_QEMU_ARGS", ""))
    return argv


def run_vm(
    spec: VmSpec,
    console_log: Path,
    *,
    on_line: Callable[[str], None] | None = None,
) -> VmResult:
    """Boot, stream the console into `console_log`, return when QEMU exits or times out."""
    accel = choose_accel(spec.env) if spec.accel == "auto" else spec.accel
    argv = qemu_command(spec, accel)
    console: list[str] = []
    stderr: list[str] = []
    start = time.monotonic()
    with console_log.open("w") as log:
        log.write("# " + shlex.join(argv) + "\n")
        log.flush()
        # Its own process group: a Ctrl-C on the terminal reaches only us; we stop QEMU
        # (below) and only then the device servers it talks to.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", process_group=0,
        )
        lock = threading.Lock()
        interrupted = threading.Event()  # what is left is drained, not narrated

        def record(lines: list[str], line: str, logged: str) -> None:
            # A reader may still hold a line when an interrupted run closes the
            # log on its way out; that line is kept in memory, not written.
            with lock:
                lines.append(line)
                if not log.closed:
                    log.write(logged)
                    log.flush()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                record(console, line, line)
                if on_line and not interrupted.is_set():
                    on_line(line.rstrip("\r\n"))

        def pump_stderr() -> None:
            # QEMU's own messages stay apart from the guest console (the first
            # failure of a run is often one of them) and are logged marked.
            assert proc.stderr is not None
            for line in proc.stderr:
                record(stderr, line, "# qemu stderr: " + line)

        readers = [threading.Thread(target=pump, daemon=True),
                   threading.Thread(target=pump_stderr, daemon=True)]
        timed_out = False
        try:
            for reader in readers:
                reader.start()
            proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: QEMU goes with us
            interrupted.set()
            proc.kill()
            proc.wait()
            raise
        finally:
            # The readers finish the pipes QEMU leaves behind before the log closes.
            for reader in readers:
                if reader.is_alive():
                    reader.join(timeout=5)
        if timed_out:
            with lock:
                log.write(f"\n# QEMU killed after {spec.timeout:.0f} s timeout\n")
    return VmResult(
        accel=accel, returncode=proc.returncode, timed_out=timed_out,
        seconds=time.monotonic() - start, console=console, argv=argv, stderr=stderr,
    )


def _probe_key(env: VmEnv) -> str:
    return f"{os.uname().release}|{env.qemu_version()}|{env.kernel}"


def choose_accel(env: VmEnv) -> str:
    """'kvm' if a short probe boot under KVM completes, else 'tcg'.

    VDEV_ACCEL=kvm|tcg forces a choice.  The probe result is cached per host
    kernel, QEMU and guest kernel, so it costs one short boot per machine.
    """
    forced = os.environ.get("VDEV_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = cache_dir() / "kvm-probe"
    key = _probe_key(env)
    if cache.is_file():
        cached_key, _, verdict = cache.read_text().rpartition("\n")
        if cached_key == key and verdict in ("kvm", "tcg"):
            return verdict
    verdict = "kvm" if _kvm_boots(env) else "tcg"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(f"{key}\n{verdict}")
    return verdict


def _kvm_boots(env: VmEnv) -> bool:
    with tempfile.TemporaryDirectory(prefix="vdev-kvm-probe-") as tmp:
        initrd = Path(tmp) / "initrd.gz"
        guest_initramfs(env.busybox, GUEST / "init.sh").write(initrd)
        spec = VmSpec(env=env, initrd=initrd, accel="kvm", timeout=15.0, memory_mb=256)
        result = run_vm(spec, Path(tmp) / "console.log")
        return result.completed and not result.timed_out
