"""`make run` and `make vm`: the device server plus a real Linux 7.3 guest.

`run_demo` starts `vdev serve`, builds the guest test module, boots the
guest, narrates what the guest reports as it happens, then prints a
one-screen summary.  Its exit status is 0 only if every check held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdev.endpoint.registers import ID_MAGIC, REG_DOORBELL, REG_ID, REG_SCRATCH0
from vdev.profiles import DeviceProfile
from vdev.vm.checks import (
    Check,
    ConnectExpected,
    Expected,
    connect_checks,
    foundation_checks,
    kernel_tsm_checks,
)
from vdev.vm.env import REPO, VmEnv, VmEnvError, find_env
from vdev.vm.initramfs import Addition
from vdev.vm.narration import NARRATOR
from vdev.vm.qemu import MARK, VfioUserAttach, VmResult, choose_accel, qemu_command
from vdev.vm.report import RunReport, run_first_failure, script_checks, user_scripts
from vdev.vm.session import (
    GuestRun,
    ServerError,
    ServerProcess,
    device_server,
    root_anchor,
    script,
    socket_path,
    tsm_mailbox_server,
)

BDF = "0000:01:00.0"  # the endpoint, behind the first root port
MAILBOX_BDF = "0000:02:00.0"  # the TSM mailbox, behind the second
# The endpoint's root port in the patched QEMU (qemu/README.md).
ROOT_PORT_IDE = "x-ide-streams=4"

# What the narration prints for each guest record, as it arrives.
_NARRATE = {
    "boot": "guest kernel {v} is up",
    "vendor": "device enumerated at " + BDF + ", vendor {v}",
    "doe_features": "DOE protocols discovered: {v}",
    "insmod": "vdevtest module loaded",
    "bound": "driver bound: {v}",
    "irq_after_doorbell": "doorbell written, MSI-X interrupts counted: {v}",
    "flr": "function-level reset through sysfs: {v}",
    "scratch_after_flr": "scratch register after FLR: {v}",
    "rmmod": "vdevtest unloaded",
    "doe_get_version": "pci_doe() GET_VERSION -> {v}",
    "vtsm_insmod": "vtsm.ko loaded (link TSM over the mailbox)",
    "tsm_class": "/sys/class/tsm: {v}",
    "connect": "echo tsm0 > tsm/connect: {v}",
    "ide_stream": "IDE set up by: {v}",
    "ide_links_connected": "IDE streams under the host bridge: {v}",
    "authenticated": "authenticated: {v}",
    "tsm_dsm": "tsm/dsm: {v}",
    "tdi_lock": "TDISP LOCK (tdi_lock): {v}",
    "tdi_state_locked": "TDI state: {v}",
    "tdi_start": "TDISP START (tdi_start): {v}",
    "tdi_state_run": "TDI state: {v}",
    "run_id_reg": "MMIO in RUN: ID register {v}",
    "run_irqs": "MMIO in RUN: doorbell, MSI-X count {v}",
    "tdi_stop": "TDISP STOP (tdi_stop): {v}",
    "disconnect": "echo tsm0 > tsm/disconnect: {v}",
    "vtsm_rmmod": "vtsm.ko unloaded",
    "done": "guest powering off",
}


def expected_from_profile(profile: DeviceProfile) -> Expected:
    return Expected(
        bdf=BDF, vendor_id=profile.vendor_id, device_id=profile.device_id,
        class_code=profile.class_code, revision=profile.revision,
        id_off=REG_ID, id_value=ID_MAGIC, scratch_off=REG_SCRATCH0, scratch_reset=0,
        doorbell_off=REG_DOORBELL,
    )


def foundation_script(exp: Expected) -> bytes:
    return script(
        "foundation.sh", BDF=exp.bdf, VID=f"{exp.vendor_id:04x}", DID=f"{exp.device_id:04x}",
        ID_OFF=f"{exp.id_off:#x}", SCRATCH_OFF=f"{exp.scratch_off:#x}",
        DOORBELL_OFF=f"{exp.doorbell_off:#x}",
    )


def _print(msg: str) -> None:
    NARRATOR.say(msg)


def _with_compiler(kdir: Path) -> str:
    """' with clang-19 (LLVM=-19)': the compiler the modules are built with;
    nothing when it cannot be told (the build then says why)."""
    from vdev.vm.kernel import KernelError, KernelTree, module_toolchain

    try:
        return f" with {module_toolchain(KernelTree.at(kdir)).describe}"
    except KernelError:
        return ""


def _narrate(line: str) -> None:
    i = line.find(MARK)
    if i < 0:
        return
    key, _, value = line[i + len(MARK):].partition(" ")
    fmt = _NARRATE.get(key)
    if fmt:
        _print(f"  [guest]  {fmt.format(v=value.strip())}")


class LogFollower(threading.Thread):
    """Print a server's interesting log lines as they are written, with a tag."""

    NOISE = ("client negotiated", "listening on", "vdev.vfio_user: client")

    def __init__(self, path: Path, tag: str) -> None:
        super().__init__(daemon=True)
        self.path, self.tag = path, tag
        self.stopping = threading.Event()

    def run(self) -> None:
        pos = 0
        while not self.stopping.is_set():
            if self.path.exists():
                with self.path.open(errors="replace") as f:
                    f.seek(pos)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        pos += len(line.encode())
                        self.show(line.rstrip())
            self.stopping.wait(0.1)

    def show(self, line: str) -> None:
        if any(n in line for n in self.NOISE) or " DEBUG " in line:
            return
        # "HH:MM:SS.mmm LEVEL logger: message" -> "message"
        msg = line.split(": ", 1)[1] if ": " in line else line
        if " WARNING " in line or " ERROR " in line:
            msg = "!! " + msg
        _print(f"  {'[' + self.tag + ']':<8} {msg}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2)


def connect_script(exp: Expected) -> bytes:
    return script(
        "connect.sh", EP=exp.bdf, MB=MAILBOX_BDF, VID=f"{exp.vendor_id:04x}",
        DID=f"{exp.device_id:04x}", ID_OFF=f"{exp.id_off:#x}",
        SCRATCH_OFF=f"{exp.scratch_off:#x}", DOORBELL_OFF=f"{exp.doorbell_off:#x}",
    )


# run_demo's exit status when nothing was started (bad environment, kernel or pair).
REFUSED = 2


@dataclass(frozen=True)
class RunOptions:
    """What a kernel developer changes about a run (docs/kernel-developers.md)."""

    append: str = ""  # extra kernel command-line arguments
    quiet: bool = True  # False drops `quiet` from the command line
    additions: tuple[Addition, ...] = ()  # --initramfs-add files
    vtsm: bool = True  # False: leave vtsm.ko out, report what the kernel did
    qemu_ide: bool = False  # the patched QEMU: the root port has an IDE capability
    doe_batch: bool = False  # the patched QEMU: the DOE mailbox's data moves in bulk


@dataclass(frozen=True)
class KernelSource:
    """`make run KSRC=...`: a tree to build (make kernel) before booting it."""

    ksrc: str
    out: str | None = None
    kconfig: str | None = None
    llvm: str | None = None
    jobs: int | None = None


def guest_env(source: KernelSource | None) -> VmEnv:
    """The VM environment, booting the user's kernel: KERNEL=/KDIR=, or the tree
    `source` names, built first (make kernel)."""
    from vdev.vm.kernel import build_kernel

    env = find_env()
    if source is None:
        return env
    if env.kernel_override or env.kdir_override:
        raise VmEnvError("give KSRC= or KERNEL=/KDIR=, not both")
    built = build_kernel(source.ksrc, source.out, kconfig=source.kconfig,
                         llvm=source.llvm, jobs=source.jobs,
                         say=lambda m: _print(f"[kernel] {m}"))
    return env.with_kernel(str(built.image), str(built.tree.build))


def run_demo(profile_path: str | None = None, workdir: Path | None = None,
             trace: bool = False, options: RunOptions = RunOptions(),
             source: KernelSource | None = None) -> int:
    """The main job: device + TSM + real guest, connect to RUN and back, summary.
    `trace`: both servers write a decoded trace and a pcap into the workdir (vdev.trace).
    `source`: build that kernel tree first and boot it (KERNEL=/KDIR= otherwise).
    `options.qemu_ide`: the patched QEMU (qemu/README.md, built if missing), whose root
    port has an IDE capability, so that the kernel's own pci_ide runs the stream.
    `options.doe_batch`: the patched QEMU too, with x-doe-batch on the endpoint."""
    workdir = workdir or REPO / "out" / "run"
    try:
        env = guest_env(source)
    except VmEnvError as exc:
        _print(f"vdev run: {exc}")
        return REFUSED
    patched = None
    if options.qemu_ide or options.doe_batch:
        from vdev.vm.qemu_build import QemuBuildError, ensure_qemu

        try:
            patched = ensure_qemu()
        except (QemuBuildError, OSError) as exc:
            _print(f"vdev run: building the patched QEMU failed: {exc}")
            return REFUSED
        env = dataclasses.replace(env, qemu_override=patched)
    accel = choose_accel(env)
    _print(f"vdev run: QEMU {env.qemu_version()}, guest kernel {env.kernel}, accel={accel}")
    if env.kdir_override:
        _print(f"          guest modules built against {env.kdir_override}")
    if options.qemu_ide:
        _print(f"          root port with an IDE capability ({ROOT_PORT_IDE}); "
               "the TSM programs its keys over QMP")
    if options.doe_batch:
        _print("          DOE mailbox data in bulk (x-doe-batch): QEMU answers the guest's "
               "mailbox accesses, the device's mailbox gets them grouped")
    _print(f"          logs and evidence in {workdir}")
    report, result = connect_report(env, workdir, profile_path, narrate=True, trace=trace,
                                    options=options)
    if result is None:
        for c in report.checks:
            _print(f"vdev run: {c.name}: {c.detail}")
        return 1
    return 0 if report.print_summary(result.accel, workdir, _print) else 1


def connect_session(
    env: VmEnv, workdir: Path, profile_path: str | None = None, *, narrate: bool = False,
    trace: bool = False, options: RunOptions = RunOptions(),
) -> tuple[list[Check], VmResult | None]:
    """Every check of a connect run (guest, TSM evidence, server health); see
    connect_report.  Used by the guest tests."""
    report, result = connect_report(env, workdir, profile_path, narrate=narrate, trace=trace,
                                    options=options)
    return report.checks, result


def connect_report(
    env: VmEnv, workdir: Path, profile_path: str | None = None, *, narrate: bool = False,
    trace: bool = False, options: RunOptions = RunOptions(),
) -> tuple[RunReport, VmResult | None]:
    """Start `vdev serve` and `vdev tsm serve`, boot the guest through the
    foundation and connect scripts (or, without vtsm, the script that looks
    at what the kernel's own TSM did), then the user's programs; the run's
    report, also written as KTAP to workdir/results.ktap.  Used by `make run`
    and the guest tests.

    `options.doe_batch`: `env` runs the patched QEMU; the endpoint gets x-doe-batch.
    `options.qemu_ide`: `env` runs the patched QEMU; the endpoint's root port gets an
    IDE capability, the TSM programs its keys over QMP, and QEMU traces the root
    port's IDE events (state changes, rule violations) on its stderr."""
    profile = DeviceProfile.from_toml(profile_path) if profile_path else DeviceProfile()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    identity = workdir / "identity"
    extra = ["--state-dir", str(identity)] + (["--profile", profile_path] if profile_path else [])

    def traced(side: str) -> list[str]:
        return ["--trace", str(workdir / f"{side}.trace"),
                "--pcap", str(workdir / f"{side}.pcap")] if trace else []

    extra += traced("device")
    device = device_server(workdir, "device", extra=extra)
    evidence_file = workdir / "evidence.json"
    followers: list[LogFollower] = []
    servers: list[ServerProcess] = []

    def follow(srv: ServerProcess, tag: str) -> None:
        if narrate:
            followers.append(LogFollower(srv.log, tag))
            followers[-1].start()

    qemu_args: list[str] = []
    root_port = ""
    tsm_extra: list[str] = []
    qmp: Path | None = None
    if options.qemu_ide:
        qmp = socket_path("qmp")
        qemu_args = ["-qmp", f"unix:{qmp},server=on,wait=off", "-trace", "pcie_ide_*"]
        root_port = ROOT_PORT_IDE
        tsm_extra = ["--root-port-qmp", str(qmp), "--root-port", "rp1"]

    def finish() -> None:
        for follower in followers:
            follower.stop()
        for srv in servers:
            srv.stop()
        if qmp is not None:  # QEMU's socket and its private directory (socket_path)
            qmp.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                qmp.parent.rmdir()
    try:
        servers.append(device.start())
        follow(device, "device")
        anchor = root_anchor(identity, workdir / "trust-anchor.pem")
        tsm = tsm_mailbox_server(workdir, ["--trust-anchor", str(anchor),
                                           "--evidence", str(evidence_file), *traced("tsm"),
                                           *tsm_extra])
        servers.append(tsm.start())
        follow(tsm, "tsm")
    except ServerError as exc:
        finish()
        return RunReport([("servers", [Check("servers started", False, str(exc))])]), None
    except BaseException:
        finish()
        raise
    exp = expected_from_profile(profile)
    flow = {"60-connect.sh": connect_script(exp)} if options.vtsm else \
        {"60-kernel-tsm.sh": script("kernel-tsm.sh", EP=exp.bdf, MB=MAILBOX_BDF)}
    modules = ["vdevtest", "vtsm"] if options.vtsm else ["vdevtest"]
    run = GuestRun(
        env=env, workdir=workdir, modules=modules,
        devices=[VfioUserAttach(device.socket, root_port=root_port,
                                doe_batch=options.doe_batch), tsm.socket],
        scripts={"50-foundation.sh": foundation_script(exp), **flow},
        append=options.append, quiet=options.quiet, additions=options.additions,
        user_env={"EP": exp.bdf, "MB": MAILBOX_BDF},
        qemu_args=qemu_args,
    )
    result: VmResult | None = None
    try:
        if narrate:
            where = f"against {env.kdir_override}{_with_compiler(env.kdir_override)}" \
                if env.kdir_override else "in the VM root"
            _print(f"  [guest]  building {', '.join(m + '.ko' for m in modules)} {where}, "
                   "booting")
        result = run.boot(on_line=_narrate if narrate else None)
    except VmEnvError as exc:
        failure = Check("guest modules built", False, str(exc))
    finally:
        alive = {srv.log.name: srv.alive() for srv in servers}
        time.sleep(0.3)  # let the followers print the servers' last lines
        finish()
    if result is None:
        report = RunReport([("build", [failure])])
        report.write_ktap(workdir / "results.ktap")
        return report, None
    evidence = json.loads(evidence_file.read_text()) if evidence_file.exists() else None
    groups = [("foundation", foundation_checks(result, exp))]
    if options.vtsm:
        groups.append(("connect", connect_checks(
            result, ConnectExpected(ep=exp.bdf, mb=MAILBOX_BDF, id_value=exp.id_value,
                                    root_port_ide=options.qemu_ide),
            evidence)))
    else:
        groups.append(("kernel TSM", kernel_tsm_checks(result)))
    rule_lines = [line.split("IDE rule violation ", 1)[1]
                  for line in device.log_text().splitlines() if "IDE rule violation " in line]
    groups[-1][1].append(Check("IDE rules (endpoint checker)", not rule_lines,
                               "; ".join(rule_lines) if rule_lines
                               else "no violation recorded"))
    health = []
    for srv in servers:
        text = srv.log_text()
        ok = alive[srv.log.name] and "Traceback" not in text
        health.append(Check(f"{srv.log.stem} healthy", ok,
                            "served to the end, no tracebacks" if ok else srv.log_tail(5)))
    groups.append(("servers", health))
    runs = user_scripts(result)
    added = [Check(f"module {name.split()[0]} loaded", name.endswith(" ok"), name)
             for name in result.values("add_insmod")]
    if runs or added:
        groups.append(("added", added + script_checks(runs)))
    report = RunReport(groups, first=run_first_failure(result), scripts=runs)
    report.write_ktap(workdir / "results.ktap")
    return report, result


@dataclass(frozen=True)
class ShellOptions:
    """`make vm`'s device server options, as `vdev serve` takes them."""

    control: str | None = None  # its control socket (default: device.ctl in the workdir)
    trace: str | None = None  # its trace (default: device.trace in the workdir)
    trace_format: str = "text"
    pcap: str | None = None  # its pcap (default: device.pcap in the workdir)
    faults: tuple[str, ...] = ()  # --fault SPEC
    fault_plan: str | None = None  # --fault-plan FILE


def keep_previous(workdir: Path) -> Path | None:
    """Move the last run's logs out of the way (workdir.prev, replacing the one before
    it); the path they went to, or None when there were none."""
    if not workdir.exists() or not any(workdir.iterdir()):
        return None
    prev = workdir.with_name(workdir.name + ".prev")
    shutil.rmtree(prev, ignore_errors=True)
    workdir.rename(prev)
    return prev


#: What makes the guest's /init give a shell instead of powering off (guest/init.sh);
#: qemu-configs/tee-io.sh passes it too.
SHELL_APPEND = "vdev.shell=1"

#: The commands the guest's banner offers, in order: connect, LOCK, START (which has the
#: TSM check the interface report), the state; the README and docs/guest.md §2 show the
#: same lines and test_vm_shell.py types them.
SHELL_FLOW = (
    f"echo tsm0 > /sys/bus/pci/devices/{BDF}/tsm/connect",
    f"echo {BDF} > /sys/bus/pci/devices/{MAILBOX_BDF}/tdi_lock",
    f"echo {BDF} > /sys/bus/pci/devices/{MAILBOX_BDF}/tdi_start",
    f"cat /sys/bus/pci/devices/{MAILBOX_BDF}/tdi_state",
)


def shell_banner(control: Path) -> bytes:
    """What the guest prints before its shell: the devices, the flow, how to leave."""
    flow = "".join(f"r try \"{line}\"\n" for line in SHELL_FLOW)
    return (
        f"r device \"{BDF} is the TEE-IO endpoint, {MAILBOX_BDF} the TSM mailbox\"\n"
        + flow
        + "r more \"tdi_stop, tdi_report, tdi_status, tsm/disconnect: docs/guest.md section 2\"\n"
        f"r faults \"on the host: vdev ctl --socket {control} faults arm --fault ...\"\n"
        "r leave \"poweroff (or exit) ends the VM; Ctrl-A X quits QEMU at once\"\n"
    ).encode()


def run_shell(profile_path: str | None = None, options: ShellOptions = ShellOptions(),
              source: KernelSource | None = None, workdir: Path | None = None) -> int:
    """`make vm`: the device and the TSM mailbox attached, vdevtest and vtsm
    loaded, the guest console on this terminal.  Logs, console, traces, pcaps and
    evidence go to `workdir` (out/vm); the previous run's move to out/vm.prev."""
    workdir = workdir or REPO / "out" / "vm"
    try:
        env = guest_env(source)
    except VmEnvError as exc:
        _print(f"vdev vm: {exc}")
        return REFUSED
    prev = keep_previous(workdir)
    workdir.mkdir(parents=True)
    if prev is not None:
        _print(f"vdev vm: the previous run's logs are now in {prev}")
    identity = workdir / "identity"
    control = Path(options.control) if options.control else workdir / "device.ctl"
    private_control = False
    if options.control is None and len(bytes(control)) > 100:  # UNIX socket path limit
        control, private_control = socket_path("device-ctl"), True
    device_args = [
        "--state-dir", str(identity), "--control", str(control),
        "--trace", options.trace or str(workdir / "device.trace"),
        "--trace-format", options.trace_format,
        "--pcap", options.pcap or str(workdir / "device.pcap"),
        *(["--profile", profile_path] if profile_path else []),
        *(["--fault-plan", options.fault_plan] if options.fault_plan else []),
        *[arg for spec in options.faults for arg in ("--fault", spec)],
    ]
    servers: list[ServerProcess] = []
    saved_tty = _terminal_state()
    try:
        servers.append(device_server(workdir, "device", extra=device_args).start())
        anchor = root_anchor(identity, workdir / "trust-anchor.pem")
        servers.append(tsm_mailbox_server(workdir, [
            "--trust-anchor", str(anchor), "--evidence", str(workdir / "evidence.json"),
            "--trace", str(workdir / "tsm.trace"), "--pcap", str(workdir / "tsm.pcap"),
        ]).start())
        hello = b"insmod /modules/vdevtest.ko\ninsmod /modules/vtsm.ko\n" + shell_banner(control)
        spec = GuestRun(env=env, workdir=workdir, modules=["vdevtest", "vtsm"],
                        devices=[srv.socket for srv in servers],
                        scripts={"50-shell.sh": hello}, append=SHELL_APPEND).prepare()
        spec = dataclasses.replace(spec, terminal_logs=workdir)
        argv = qemu_command(spec, choose_accel(env))
        (workdir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
        _print(f"vdev vm: logs in {workdir}; device control socket {control}")
        _print("vdev vm: `poweroff` (or `exit`) in the guest ends the VM; Ctrl-A X quits "
               "QEMU at once")
        rc = _run_on_terminal(argv)
    except ServerError as exc:
        _print(f"vdev vm: {exc}")
        return 1
    except VmEnvError as exc:
        _print(f"vdev vm: {exc}")
        return 1
    finally:
        _restore_terminal(saved_tty)
        for srv in reversed(servers):
            srv.stop()
        if private_control:
            control.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                control.parent.rmdir()
    _print(f"vdev vm: QEMU exited ({rc}); logs in {workdir}")
    return rc


def _run_on_terminal(argv: list[str]) -> int:
    """QEMU in the foreground on this terminal (it reads it, so it stays in our process
    group); stopped with SIGTERM, so it puts the terminal back, if we are."""
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _terminal_state() -> list[Any] | None:
    with contextlib.suppress(termios.error, OSError):
        return termios.tcgetattr(sys.stdin.fileno())
    return None


def _restore_terminal(state: list[Any] | None) -> None:
    """QEMU leaves the terminal raw when it is killed; put it back as it was."""
    if state is not None:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, state)
