"""The `vdev` command line.

  vdev serve --socket PATH [--socket PATH ...] [--profile NAME|FILE] [--state-dir DIR ...]
             [--control PATH] [--doe-delay-ms MS --doe-delay-count N] [--fault-plan FILE]
             [--fault SPEC]               serve the TEE-IO endpoint over vfio-user
                                              (one independent device per --socket)
  vdev spdm-emu [--port 2323] [--transport pci_doe|mctp|none] [--profile FILE]
                [--state-dir DIR | --cert-chain FILE --key FILE]
                                              the same device protocols over the
                                              spdm-emu socket protocol (TCP)
  vdev run [--ksrc DIR [--out DIR] [--kconfig FILE] [--llvm 1]] [--append ARGS] [--no-quiet]
           [--initramfs-add PATH ...] [--no-vtsm]
                                              device + real guest, readable summary
  vdev kernel build KSRC [--out DIR] [--kconfig FILE] [--llvm 1|-NN] [-j N]
                                              configure and build your kernel for the guest
  vdev kernel check --kernel IMAGE --kdir DIR check a KERNEL/KDIR pair as run does
  vdev kernel fetch-debian DIR                Debian's linux-source-7.3, unpacked
  vdev vm [--control PATH] [--trace FILE] [--fault SPEC ...] [--ksrc DIR ...]
                                              device + guest, interactive shell
  vdev tsm serve --socket PATH --trust-anchor FILE   the TSM mailbox device
  vdev tsm connect --spdm-emu HOST:PORT --trust-anchor FILE   TSM model over spdm-emu
  vdev trace show FILE [--protocol P] [--message NAME] [--session ID] [--errors]
                                              read a --trace file

serve, spdm-emu, tsm serve and tsm connect take --trace FILE [--trace-format text|json],
--pcap FILE (link type 292, for spdm_dump) and --log-secrets (vdev.trace).
  vdev ctl --socket PATH [--device N] COMMAND query a server started with --control PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spdm.codes import RspCap
from vdev.cli.psk_file import read_psk_file
from vdev.profiles import DeviceProfile, ProfileError, load_profile, resolve_profile
from vdev.vfio_user import event_loop

log = logging.getLogger("vdev")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _load_profile(path: str | None) -> DeviceProfile:
    """`--profile`: a TOML file or the name of a shipped profile (vdev/profiles/)."""
    try:
        return load_profile(path)
    except FileNotFoundError as exc:  # worded by main() under the command's name
        raise UsageError(str(exc)) from None
    except ProfileError as exc:
        raise UsageError(f"bad profile {path}: {exc}") from None


def tcp_port(text: str) -> int:
    """argparse type: a TCP port number."""
    try:
        port = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0..65535)")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    """`vdev serve`: one TeeDevice per --socket, all in this process on one event loop.

    Each device is independent (config space, DOE mailbox, SPDM sessions, IDE streams,
    TDI state, fault injector); all use the same profile.  Identity: one --state-dir
    (or none) gives every device the same chain and key, like cloned devices of one
    model (one trust anchor for all); one --state-dir per --socket gives each its own.
    With several devices, log and trace lines carry the device's label (device0,
    device1, ... in --socket order) and the control socket routes requests by
    "device" (vdev.control.device_set)."""
    from vdev.cli.server_process import (
        check_socket_paths,
        device_label,
        device_label_of,
        install_label_filter,
        serve_devices_until_signalled,
    )
    from vdev.control.device_set import DeviceSet, ServedDevice
    from vdev.control.endpoint import DeviceControl, trust_anchor_path
    from vdev.endpoint.identity_store import IdentityError
    from vdev.endpoint.tee_device import TeeDevice

    sockets: list[str] = args.socket
    multi = len(sockets) > 1
    check_socket_paths(sockets, args.control)
    state_dirs: list[str | None] = list(args.state_dir or [None])
    if len(state_dirs) == 1:
        state_dirs *= len(sockets)
    elif len(state_dirs) != len(sockets):
        raise SystemExit(f"vdev: --state-dir given {len(state_dirs)} times for "
                         f"{len(sockets)} sockets: give it once (a shared identity) or "
                         "once per --socket")
    if multi and (args.pcap or args.pcap_decrypted or args.log_secrets):
        raise SystemExit("vdev: --pcap, --pcap-decrypted and --log-secrets take one device: "
                         "a pcap record "
                         "does not say which device it belongs to (serve one --socket per "
                         "process to capture one; --trace labels every line)")
    profile = _load_profile(args.profile)
    if args.doe_delay_ms < 0 or args.doe_delay_count < 0:
        raise SystemExit("vdev: --doe-delay-ms and --doe-delay-count must not be negative")
    plan = _fault_plan(args, "vdev serve")
    if args.doe_delay_count:  # the same as --fault doe_delay:delay_ms=MS,count=N
        from vdev.faults.plan import DoeDelay

        plan = plan or _empty_plan()
        plan.doe_delay = DoeDelay(args.doe_delay_ms, args.doe_delay_count)
    labels = [device_label_of(i) for i in range(len(sockets))] if multi else None
    if multi:
        install_label_filter()
    label_of: list[str | None] = list(labels) if labels else [None]
    psks = read_psk_file("vdev serve", args.psk_file)
    devices: list[TeeDevice] = []
    try:
        for i, state_dir in enumerate(state_dirs):
            with device_label(label_of[i] if multi else None):
                devices.append(TeeDevice(profile, state_dir=state_dir, psks=psks))
    except (OSError, IdentityError) as exc:
        raise SystemExit(f"vdev serve: device identity: {exc}") from None
    except ProfileError as exc:
        raise SystemExit(f"vdev serve: {exc}") from None
    _trace_devices(args, devices, labels)
    if plan is not None and plan.rules:
        # After tracing: the injector wraps spdm_message, so the trace shows the wire.
        # Every device gets its own copy of the plan (rules count per device).
        from vdev.faults import install

        for device in devices:
            install(device, copy.deepcopy(plan))  # reports to device.fault_observers
        log.info("fault injection: %d rule(s) armed%s", len(plan.rules),
                 f" on each of the {len(devices)} devices" if multi else "")
    log.info(
        "TEE-IO endpoint %04x:%04x class %06x, BAR0 %#x, %d MSI-X vectors%s",
        profile.vendor_id, profile.device_id, profile.class_code,
        profile.bar0_size, profile.msix_vectors,
        f"; {len(devices)} devices: " + ", ".join(
            f"{label} on {sock}" for label, sock in zip(label_of, sockets, strict=True))
        if multi else "",
    )

    def on_loop(loop: asyncio.AbstractEventLoop) -> list[TeeDevice]:
        # A held-back DOE response is released by the event loop, never by
        # sleeping in the vfio-user message that wrote GO.
        for i, device in enumerate(devices):
            device.defer_later = loop.call_later
            delay = plan.doe_delay if plan is not None else None
            if delay is not None and delay.count:
                with device_label(label_of[i] if multi else None):
                    device.delay_doe_responses(delay.delay_ms / 1000, delay.count)
                    log.info("fault injection: the next %d SPDM DOE responses become ready "
                             "%d ms after GO", delay.count, delay.delay_ms)
        return devices

    def make_control(served: Sequence[TeeDevice]) -> DeviceSet:
        def transport(dev: TeeDevice, sock: str) -> Callable[[], dict[str, Any]]:
            return lambda: {"kind": "vfio-user", "socket": sock,
                            "client_connected": dev.irq_sink is not None}

        return DeviceSet([
            ServedDevice(DeviceControl(dev, trust_anchor=trust_anchor_path(dev),
                                       transport=transport(dev, sock)),
                         socket=sock, label=label or device_label_of(0))
            for dev, sock, label in zip(served, sockets, label_of,
                                              strict=True)
        ], enter=(lambda d: device_label(d.label)) if multi else None)

    return serve_devices_until_signalled(
        sockets, on_loop, control_path=args.control, name="server",
        make_control=make_control if args.control else None, labels=labels,
    )


def _empty_plan() -> Any:
    from vdev.faults import FaultPlan

    return FaultPlan()


def _fault_plan(args: argparse.Namespace, prog: str) -> Any:
    """--fault-plan FILE and --fault SPEC (in that order) as one vdev.faults.FaultPlan,
    checked before anything starts; None when neither is given."""
    if not (args.fault_plan or args.fault):
        return None
    from vdev.faults import FaultPlan, FaultPlanError

    try:
        plan = FaultPlan.load(args.fault_plan) if args.fault_plan else FaultPlan()
        plan.extend(FaultPlan.from_specs(args.fault or []))
    except UnicodeDecodeError:
        raise SystemExit(f"{prog}: --fault-plan {args.fault_plan}: not a TOML file") from None
    except OSError as exc:
        raise SystemExit(f"{prog}: --fault-plan {args.fault_plan}: "
                         f"{exc.strerror or exc}") from None
    except FaultPlanError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    return plan


def _add_fault_arguments(p: argparse.ArgumentParser, doe: bool = True) -> None:
    from vdev.faults.plan import KINDS

    kinds = ", ".join((*KINDS, "doe_delay") if doe else KINDS)
    p.add_argument("--fault-plan", metavar="FILE", help="fault injection: a TOML plan of "
                   "[[fault]] rules (kind, match, nth|every|probability+seed, ...)")
    p.add_argument("--fault", action="append", metavar="SPEC", help="fault injection rule "
                   "KIND[:MATCH][:nth=N|every|p=0.5,seed=1][,PARAM=VALUE...] where MATCH is "
                   "a request name (SPDM, IDE_KM or TDISP), 'secured' or 'doe' (repeatable; "
                   f"kinds {kinds}; see README 'Making the device fail on purpose')")


def _trace_devices(args: argparse.Namespace, devices: Sequence[Any],
                   labels: Sequence[str] | None) -> list[Any]:
    """--trace / --pcap / --log-secrets for `vdev serve`: one Tracer per device (each
    decodes its own connection), all writing the one --trace file; with several
    devices each line's side is the device's label instead of "device"."""
    from vdev.cli.trace import opened, tracer_from_args
    from vdev.trace.attach import attach_device
    from vdev.trace.tracer import Tracer

    first = tracer_from_args(args, "device")
    if first is None:
        return [None] * len(devices)
    tracers = [first]
    if labels is not None:
        first.side = labels[0]
        tracers += [opened(Tracer(label, out=first.out, fmt=first.fmt))
                    for label in labels[1:]]
    for tracer, device in zip(tracers, devices, strict=True):
        attach_device(tracer, device)
    return tracers


def cmd_spdm_emu(args: argparse.Namespace) -> int:
    from spdm.identity import import_identity
    from spdm.secured_message import DOE_TRANSPORT, MCTP_TRANSPORT
    from vdev.control.endpoint import device_control, spdm_emu_transport, trust_anchor_path
    from vdev.control.server import start_control
    from vdev.endpoint.identity_store import IdentityError
    from vdev.endpoint.tee_device import TeeDevice
    from vdev.spdm_emu.frame import TRANSPORT_NAMES, TransportType
    from vdev.spdm_emu.server import SpdmEmuServer

    if bool(args.cert_chain) != bool(args.key):
        raise SystemExit("vdev: --cert-chain and --key go together")
    profile = _load_profile(args.profile)
    plan = _fault_plan(args, "vdev spdm-emu")
    if plan is not None and plan.doe_delay is not None:
        raise SystemExit("vdev spdm-emu: doe_delay holds a response in the DOE mailbox, "
                         "which the spdm-emu socket does not have: --fault "
                         "delay:doe,delay_ms=MS delays the reply on the socket instead")
    identity = None
    if args.cert_chain:
        try:
            identity = import_identity(Path(args.cert_chain), Path(args.key))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"vdev: cannot load the identity: {exc}") from None
    transport = TRANSPORT_NAMES[args.transport]
    psks = read_psk_file("vdev spdm-emu", args.psk_file)
    try:
        device = TeeDevice(
            profile,
            state_dir=args.state_dir,
            identity=identity,
            spdm_transport=MCTP_TRANSPORT if transport == TransportType.MCTP else DOE_TRANSPORT,
            psks=psks,
        )
    except (OSError, IdentityError) as exc:
        raise SystemExit(f"vdev spdm-emu: device identity: {exc}") from None
    except ProfileError as exc:
        raise SystemExit(f"vdev spdm-emu: {exc}") from None
    from vdev.cli.trace import trace_device

    served = trace_device(args, device, doe_wire=transport == TransportType.PCI_DOE)
    if plan is not None and plan.rules:
        # After tracing, as for vdev serve: the trace shows what went over the socket.
        from vdev.faults import install

        install(device, plan)
        log.info("fault injection: %d rule(s) armed", len(plan.rules))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        device.defer_later = loop.call_later  # the heartbeat watchdog's timer
        server = SpdmEmuServer(served, transport, args.host, args.port)
        await server.start()
        control = await start_control(args.control, device_control(
            device, transport=spdm_emu_transport(server),
            trust_anchor=trust_anchor_path(device)))
        try:
            await server.serve_forever(stop)
        finally:
            if control is not None:
                await control.close()

    try:
        event_loop.run(main())
    except OSError as exc:
        log.error("%s", exc)
        return 1
    log.info("spdm-emu server stopped")
    return 0


def _guest_profile(command: str, name_or_path: str | None) -> str | None:
    """`vdev run|vm --profile`: checked before anything starts; the file it names (a
    shipped profile's name becomes its path, which the runner hands to `vdev serve`)."""
    if name_or_path is None:
        return None
    profile = _load_profile(name_or_path)
    path = str(resolve_profile(name_or_path))
    if command == "run":
        # `vdev run` checks a connect to RUN: the TSM needs a TEE-IO device with sessions.
        missing = [what for what, ok in (
            ("the TEE-IO bit (tee_io = false)", profile.tee_io),
            ("secure sessions (no KEY_EX capability)",
             bool(profile.spdm_capability_flags & RspCap.KEY_EX)),
        ) if not ok]
        if missing:
            raise SystemExit(
                f"vdev run: profile {name_or_path!r} lacks {' and '.join(missing)}, "
                "so the guest's connect to RUN that `vdev run` checks cannot happen; "
                f"use it with `vdev vm --profile {name_or_path}` or `vdev serve --profile "
                f"{name_or_path}` and your own requester")
    return path


def cmd_run(args: argparse.Namespace) -> int:
    profile = _guest_profile("run", args.profile)
    from vdev.vm.demo import REFUSED, RunOptions, run_demo
    from vdev.vm.env import REPO
    from vdev.vm.initramfs import AdditionError, plan_additions

    try:
        additions = tuple(plan_additions(args.initramfs_add or []))
    except AdditionError as exc:
        raise SystemExit(f"vdev run: {exc}") from None
    source = _kernel_source("run", args)
    own_qemu = os.environ.get("QEMU")
    if (args.qemu_ide or args.doe_batch) and own_qemu:
        wanted = "QEMU_IDE=1" if args.qemu_ide else "DOE_BATCH=1"
        raise SystemExit(f"vdev run: {wanted} runs make qemu's QEMU; leave out QEMU={own_qemu}")
    options = RunOptions(append=args.append or "", quiet=not args.no_quiet,
                         additions=additions, vtsm=not args.no_vtsm,
                         qemu_ide=args.qemu_ide, doe_batch=args.doe_batch)
    workdir = Path(args.workdir) if args.workdir else REPO / "out" / "run"
    try:
        # Always traced: the traces and pcaps are the run's record, and the picture of it.
        rc = run_demo(profile_path=profile, workdir=workdir, trace=True, options=options,
                      source=source)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"vdev run: {what}; servers and QEMU stopped", file=sys.stderr)
        return interrupted_status(exc)
    if rc == REFUSED:  # nothing ran: the workdir still holds an earlier run
        return rc
    from vdev.cli.trace import write_sequence

    write_sequence(workdir)
    return rc


def cmd_vm(args: argparse.Namespace) -> int:
    if not sys.stdin.isatty():
        raise SystemExit("vdev vm: the guest shell needs a terminal on stdin; without one, "
                         "`vdev run` boots the guest and reports")
    profile = _guest_profile("vm", args.profile)
    _fault_plan(args, "vdev vm")  # checked before anything starts; the server reads it
    from vdev.vm.demo import ShellOptions, run_shell

    source = _kernel_source("vm", args)
    options = ShellOptions(control=args.control, trace=args.trace,
                           trace_format=args.trace_format, pcap=args.pcap,
                           faults=tuple(args.fault or ()), fault_plan=args.fault_plan)
    return run_shell(profile_path=profile, options=options, source=source,
                     workdir=Path(args.workdir) if args.workdir else None)


def _kernel_source(command: str, args: argparse.Namespace) -> Any:
    """`--ksrc DIR [--out DIR] [--kconfig FILE] [--llvm 1] [-j N]` (make KSRC=...)."""
    from vdev.vm.demo import KernelSource

    if not args.ksrc and (args.out or args.kconfig or args.llvm):
        raise SystemExit(f"vdev {command}: --out, --kconfig and --llvm go with --ksrc (O=, "
                         "KCONFIG= and LLVM= with KSRC=)")
    return KernelSource(args.ksrc, args.out, args.kconfig, args.llvm, args.jobs) \
        if args.ksrc else None


def _add_kernel_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ksrc", metavar="DIR", help="build this kernel tree first (vdev kernel "
                   "build) and boot it")
    p.add_argument("--out", "-O", metavar="DIR", help="with --ksrc: build directory (O=)")
    p.add_argument("--kconfig", metavar="FILE", help="with --ksrc: your config fragment")
    p.add_argument("--llvm", metavar="1|-NN", help="with --ksrc: build with clang (LLVM=)")
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="with --ksrc: parallel jobs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdev", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--event-loop", choices=event_loop.CHOICES, default=None,
                   help="event loop of the servers: uvloop when installed (auto, the "
                   f"default, or ${event_loop.ENV}), else asyncio's own")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the TEE-IO endpoint to QEMU over vfio-user")
    s.add_argument("--socket", required=True, action="append", metavar="PATH",
                   help="UNIX socket path QEMU connects to; repeat it to serve several "
                   "independent devices (device0, device1, ... in this order) from one process")
    s.add_argument("--profile", help="device profile: a TOML file or a shipped profile name "
                   "(vdev/profiles/); default: the built-in endpoint; the same for every device")
    s.add_argument("--control", metavar="PATH", help="serve the JSON control socket here, one "
                   "for all devices (vdev ctl --socket PATH [--device N] ...)")
    s.add_argument("--state-dir", action="append", metavar="DIR",
                   help="where device identities live (default ~/.local/state/vdev/identity): "
                   "the profile's is DIR/<vendor>-<device>-<key type>/slot0/, made once, "
                   "never overwritten (vdev identity); once: shared by every device; once "
                   "per --socket: each device its own")
    s.add_argument("--doe-delay-ms", type=int, default=0, metavar="MS",
                   help="fault injection: hold DOE responses back MS ms after GO (BUSY "
                   "until then; Linux gives up after 1000 ms); discovery is never delayed; "
                   "the same as --fault doe_delay:delay_ms=MS,count=N")
    s.add_argument("--doe-delay-count", type=int, default=0, metavar="N",
                   help="how many SPDM / secured-SPDM DOE responses --doe-delay-ms "
                   "applies to, counted from the first (default 0: none)")
    _add_fault_arguments(s)
    from vdev.cli.psk_file import add_psk_argument
    from vdev.cli.trace import add_trace_arguments, add_trace_parser

    add_psk_argument(s, "device")

    add_trace_arguments(s)
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("spdm-emu", help="serve SPDM/IDE_KM/TDISP over the spdm-emu socket protocol")
    e.add_argument("--port", type=tcp_port, default=2323, help="TCP port (default 2323; 0: "
                   "any free port, logged)")
    e.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    e.add_argument("--transport", default="pci_doe", choices=["pci_doe", "mctp", "none"])
    e.add_argument("--profile", help="device profile: a TOML file or a shipped profile name")
    e.add_argument("--control", metavar="PATH", help="serve the JSON control socket here")
    e.add_argument("--state-dir", metavar="DIR", help="where device identities live (as for "
                   "serve; see vdev identity)")
    e.add_argument("--cert-chain", help="certificate chain (PEM/DER) instead of the generated one")
    e.add_argument("--key", help="private key of the chain's leaf (PEM/DER)")
    _add_fault_arguments(e, doe=False)
    add_psk_argument(e, "device")
    add_trace_arguments(e)
    e.set_defaults(func=cmd_spdm_emu)

    r = sub.add_parser("run", help="boot the guest against the device and summarise",
                       description="device + TSM + a real Linux guest: connect to RUN and "
                       "back, then a summary of named checks (exit 0 only if all held).  "
                       "Logs, console, evidence, both servers' traces and pcaps, and "
                       "sequence.md (the connect as a Mermaid diagram) go to the workdir.")
    r.add_argument("--profile", metavar="NAME|FILE", help="device profile: a shipped "
                   "profile's name (vdev/profiles/) or a TOML file; it must have TEE-IO and "
                   "sessions (default: the built-in endpoint)")
    r.add_argument("--workdir", help="where logs go (default out/run; emptied first)")
    # Both servers always write device.trace/.pcap and tsm.trace/.pcap (and sequence.md).
    r.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    _add_kernel_source_arguments(r)
    r.add_argument("--append", metavar="ARGS", help="extra kernel command-line arguments")
    r.add_argument("--no-quiet", action="store_true", help="drop `quiet` from the kernel "
                   "command line (the whole boot log in console.log)")
    r.add_argument("--initramfs-add", action="append", metavar="PATH", help="copy a file into "
                   "the guest: *.ko is loaded before the tests, an executable runs after them "
                   "(its KTAP output nested in results.ktap), anything else goes to /extra "
                   "(repeatable)")
    r.add_argument("--no-vtsm", action="store_true", help="leave vtsm.ko out (your kernel "
                   "brings its own TSM driver) and report what the kernel did")
    r.add_argument("--qemu-ide", action="store_true", help="use the patched QEMU whose root "
                   "port has an IDE capability (make qemu), so the kernel's pci_ide runs the "
                   "stream and the TSM programs the root port over QMP")
    r.add_argument("--doe-batch", action="store_true", help="use the patched QEMU (make "
                   "qemu) with x-doe-batch: it answers the guest's DOE mailbox data accesses "
                   "itself and exchanges them with the device in bulk")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("vm", help="boot the guest with the device and give a shell",
                       description="device + TSM + a real Linux guest with vdevtest and vtsm "
                       "loaded, its console on this terminal (`poweroff` or `exit` ends it, "
                       "Ctrl-A X quits QEMU).  Logs, console, kernel log, evidence, both "
                       "servers' traces and pcaps go to the workdir; the previous run's "
                       "move to WORKDIR.prev.")
    v.add_argument("--profile", metavar="NAME|FILE", help="device profile: a shipped "
                   "profile's name (vdev/profiles/) or a TOML file (default: the built-in "
                   "endpoint)")
    v.add_argument("--workdir", help="where logs go (default out/vm)")
    v.add_argument("--control", metavar="PATH", help="the device server's control socket "
                   "(vdev ctl --socket PATH ...; default WORKDIR/device.ctl)")
    v.add_argument("--trace", metavar="FILE", help="the device server's trace (default "
                   "WORKDIR/device.trace; the TSM's is WORKDIR/tsm.trace)")
    v.add_argument("--trace-format", default="text", choices=["text", "json"],
                   help="one line per event: readable text (default) or JSON lines")
    v.add_argument("--pcap", metavar="FILE", help="the device server's pcap (default "
                   "WORKDIR/device.pcap)")
    _add_fault_arguments(v)
    _add_kernel_source_arguments(v)
    v.set_defaults(func=cmd_vm)

    from vdev.cli.tsm_serve import add_serve_arguments
    from vdev.cli.tsm_serve import cmd_serve as cmd_tsm_serve

    t = sub.add_parser("tsm", help="the platform TSM side")
    tsm_sub = t.add_subparsers(dest="tsm_command", required=True)
    ts = tsm_sub.add_parser(
        "serve", help="serve the TSM mailbox device to QEMU over vfio-user",
        usage="vdev tsm serve [-h] --socket PATH --trust-anchor FILE [--policy FILE] "
        "[--evidence FILE] [--control PATH] [--trace FILE] [--trace-format {text,json}] "
        "[--pcap FILE] [--log-secrets]")
    add_serve_arguments(ts)
    ts.set_defaults(func=cmd_tsm_serve)

    from vdev.cli.tsm_connect import add_connect_parser

    add_connect_parser(tsm_sub)  # vdev tsm connect --spdm-emu HOST:PORT ...
    from vdev.cli.tsm_provision import add_provision_parser

    add_provision_parser(tsm_sub)  # vdev tsm provision csr|set-certificate|erase|info
    add_trace_parser(sub)  # vdev trace show FILE ...

    from vdev.cli.ctl import add_ctl_parser

    add_ctl_parser(sub)  # vdev ctl --socket PATH COMMAND
    from vdev.cli.identity import add_identity_parser

    add_identity_parser(sub)  # vdev identity show|generate|regenerate|trust-anchor
    from vdev.cli.kernel import add_kernel_parser

    add_kernel_parser(sub)  # vdev kernel build|check|fetch-debian
    from vdev.cli.qemu import add_qemu_parser

    add_qemu_parser(sub)  # vdev qemu build
    accept_after_subcommands(p, "--log-level", choices=["debug", "info", "warning", "error"],
                             help="as before the command (default info)")
    return p


def subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser` (its sub-commands, theirs, ...)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *subcommand_parsers(child)]
    return found


def accept_after_subcommands(parser: argparse.ArgumentParser, option: str,
                             **kwargs: Any) -> None:
    """Let `option` of `parser` also be given after any of its sub-commands (`vdev ctl
    status --compact`, `vdev run --log-level debug`); given there, it wins."""
    for child in subcommand_parsers(parser):
        if option not in child._option_string_actions:
            child.add_argument(option, default=argparse.SUPPRESS, **kwargs)


class UsageError(Exception):
    """A user error a command reports as one line (`vdev COMMAND: message`), exit 1."""


# What a user's input or environment can cause (a missing or unreadable file, a port in
# use, a value out of range): one line.  Anything else is a bug in vdev: one line too,
# and the traceback with --log-level debug.
_USER_ERRORS = (UsageError, OSError, ValueError, OverflowError)
EXIT_INTERNAL_ERROR = 70  # sysexits.h EX_SOFTWARE
EXIT_SIGPIPE = 128 + signal.SIGPIPE  # what a shell reports for `... | head` in coreutils


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as Ctrl-C raises KeyboardInterrupt,
    so every `finally` that stops a process we started or removes a file runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status a shell reports for the signal that stopped us (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def stopped_by_signals() -> Any:
    """SIGINT, SIGTERM and SIGHUP stop the command through an exception, once: a second
    signal is ignored so it cannot break off the cleanup the first one started.  The
    handlers before are back afterwards (tests call main() in their own process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, frame: object) -> None:
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    before = {s: signal.signal(s, stop) for s in signums}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _command_name(args: argparse.Namespace) -> str:
    words = [getattr(args, k, None) for k in ("command", "tsm_command", "trace_command",
                                              "identity_command", "kernel_command",
                                              "qemu_command")]
    return " ".join(["vdev", *(w for w in words if w)])


def _stdout_gone() -> None:
    """The reader of our stdout went away (`vdev trace show ... | head`): drop what is
    still buffered, so the interpreter's last flush does not complain either."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    debug = args.log_level == "debug"
    name = _command_name(args)
    from vdev.cli.trace import finish

    if args.event_loop is not None:
        # Through the environment, so the servers `vdev run` starts use it too.
        os.environ[event_loop.ENV] = args.event_loop
    try:
        event_loop.loop_factory()
    except event_loop.EventLoopError as exc:
        print(f"vdev: {exc}", file=sys.stderr)
        return 2

    try:
        with stopped_by_signals():
            rc: int = finish(name, args.func(args))
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_SIGPIPE
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{name}: {what}", file=sys.stderr)
        return interrupted_status(exc)
    except _USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{name}: internal error: {type(exc).__name__}: {exc} (a bug in vdev; "
              f"`vdev --log-level debug ...` shows where)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return rc

