"""The `vdev` command line.

  vdev serve --socket PATH [--socket PATH ...] [--profile NAME|FILE] [--state-dir DIR ...]
             [--control PATH] [--doe-delay-ms MS --doe-delay-count N] [--fault-plan FILE]
             [--fault SPEC]               serve the TEE-IO endpoint over vfio-user
                                              (one independent device per --socket)
  vdev spdm-emu [--port 2323] [--transport pci_doe|mctp|none] [--profile FILE]
                [--state-dir DIR | --cert-chain FILE --key FILE]
                                              the same device protocols over the
                                              spdm-emu socket protocol (TCP)
  vdev run                                    device + real guest, readable summary
  vdev vm                                     device + guest, interactive shell
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
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vdev.profiles import DeviceProfile, ProfileError, load_profile

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
    except FileNotFoundError as exc:
        raise SystemExit(f"vdev: {exc}") from None
    except ProfileError as exc:
        raise SystemExit(f"vdev: bad profile {path}: {exc}") from None


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
    if multi and (args.pcap or args.log_secrets):
        raise SystemExit("vdev: --pcap and --log-secrets take one device: a pcap record "
                         "does not say which device it belongs to (serve one --socket per "
                         "process to capture one; --trace labels every line)")
    profile = _load_profile(args.profile)
    if args.doe_delay_ms < 0 or args.doe_delay_count < 0:
        raise SystemExit("vdev: --doe-delay-ms and --doe-delay-count must not be negative")
    labels = [device_label_of(i) for i in range(len(sockets))] if multi else None
    if multi:
        install_label_filter()
    label_of: list[str | None] = list(labels) if labels else [None]
    devices: list[TeeDevice] = []
    try:
        for i, state_dir in enumerate(state_dirs):
            with device_label(label_of[i] if multi else None):
                devices.append(TeeDevice(profile, state_dir=state_dir))
    except OSError as exc:
        raise SystemExit(f"vdev: cannot create or load the device identity: {exc}") from None
    _trace_devices(args, devices, labels)
    if args.fault_plan or args.fault:
        # After tracing: the injector wraps spdm_message, so the trace shows the wire.
        # Every device gets its own copy of the plan (rules count per device).
        from vdev.faults import FaultPlan, FaultPlanError, install

        for device in devices:
            try:
                plan = FaultPlan.load(args.fault_plan) if args.fault_plan else FaultPlan()
                plan.rules.extend(FaultPlan.from_specs(args.fault or []).rules)
            except (OSError, FaultPlanError) as exc:
                raise SystemExit(f"vdev: {exc}") from None
            install(device, plan)  # reports to device.fault_observers (the tracer)
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
            if args.doe_delay_count:
                with device_label(label_of[i] if multi else None):
                    device.delay_doe_responses(args.doe_delay_ms / 1000, args.doe_delay_count)
                    log.info("fault injection: the next %d SPDM DOE responses become ready "
                             "%d ms after GO", args.doe_delay_count, args.doe_delay_ms)
        return devices

    def make_control(served: Sequence[TeeDevice]) -> DeviceSet:
        def transport(dev: TeeDevice, sock: str) -> Callable[[], dict[str, Any]]:
            return lambda: {"kind": "vfio-user", "socket": sock,
                            "client_connected": dev.irq_sink is not None}

        return DeviceSet([
            ServedDevice(DeviceControl(dev, trust_anchor=trust_anchor_path(dev, sdir),
                                       transport=transport(dev, sock)),
                         socket=sock, label=label or device_label_of(0))
            for dev, sock, sdir, label in zip(served, sockets, state_dirs, label_of,
                                              strict=True)
        ], enter=(lambda d: device_label(d.label)) if multi else None)

    return serve_devices_until_signalled(
        sockets, on_loop, control_path=args.control, name="server",
        make_control=make_control if args.control else None, labels=labels,
    )


def _trace_devices(args: argparse.Namespace, devices: Sequence[Any],
                   labels: Sequence[str] | None) -> list[Any]:
    """--trace / --pcap / --log-secrets for `vdev serve`: one Tracer per device (each
    decodes its own connection), all writing the one --trace file; with several
    devices each line's side is the device's label instead of "device"."""
    from vdev.cli.trace import tracer_from_args
    from vdev.trace.attach import attach_device
    from vdev.trace.tracer import Tracer

    first = tracer_from_args(args, "device")
    if first is None:
        return [None] * len(devices)
    tracers = [first]
    if labels is not None:
        first.side = labels[0]
        tracers += [Tracer(label, out=first.out, fmt=first.fmt) for label in labels[1:]]
    for tracer, device in zip(tracers, devices, strict=True):
        attach_device(tracer, device)
    return tracers


def cmd_spdm_emu(args: argparse.Namespace) -> int:
    from spdm.identity import import_identity
    from spdm.secured_message import DOE_TRANSPORT, MCTP_TRANSPORT
    from vdev.control.endpoint import device_control, spdm_emu_transport, trust_anchor_path
    from vdev.control.server import start_control
    from vdev.endpoint.tee_device import TeeDevice
    from vdev.spdm_emu.frame import TRANSPORT_NAMES, TransportType
    from vdev.spdm_emu.server import SpdmEmuServer

    if bool(args.cert_chain) != bool(args.key):
        raise SystemExit("vdev: --cert-chain and --key go together")
    profile = _load_profile(args.profile)
    identity = None
    if args.cert_chain:
        try:
            identity = import_identity(Path(args.cert_chain), Path(args.key))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"vdev: cannot load the identity: {exc}") from None
    transport = TRANSPORT_NAMES[args.transport]
    try:
        device = TeeDevice(
            profile,
            state_dir=args.state_dir,
            identity=identity,
            spdm_transport=MCTP_TRANSPORT if transport == TransportType.MCTP else DOE_TRANSPORT,
        )
    except OSError as exc:
        raise SystemExit(f"vdev: cannot create or load the device identity: {exc}") from None
    from vdev.cli.trace import trace_device

    served = trace_device(args, device, doe_wire=transport == TransportType.PCI_DOE)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = SpdmEmuServer(served, transport, args.host, args.port)
        await server.start()
        control = await start_control(args.control, device_control(
            device, transport=spdm_emu_transport(server),
            trust_anchor=None if identity else trust_anchor_path(device, args.state_dir)))
        try:
            await server.serve_forever(stop)
        finally:
            if control is not None:
                await control.close()

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("%s", exc)
        return 1
    log.info("spdm-emu server stopped")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from vdev.vm.demo import run_demo

    return run_demo(profile_path=args.profile, workdir=Path(args.workdir) if args.workdir else None,
                    trace=args.trace)


def cmd_vm(args: argparse.Namespace) -> int:
    from vdev.vm.demo import run_shell

    return run_shell(profile_path=args.profile)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdev", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
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
                   help="device identity directory (default "
                   "~/.local/state/vdev/identity/<vendor>-<device>); once: shared by every "
                   "device; once per --socket: each device its own")
    s.add_argument("--doe-delay-ms", type=int, default=0, metavar="MS",
                   help="fault injection: hold DOE responses back MS ms after GO (BUSY "
                   "until then; Linux gives up after 1000 ms); discovery is never delayed")
    s.add_argument("--doe-delay-count", type=int, default=0, metavar="N",
                   help="how many SPDM / secured-SPDM DOE responses --doe-delay-ms "
                   "applies to, counted from the first (default 0: none)")
    s.add_argument("--fault-plan", metavar="FILE", help="fault injection: a TOML plan of "
                   "[[fault]] rules (kind, match, nth|every|probability+seed, ...)")
    from vdev.faults.plan import KINDS

    s.add_argument("--fault", action="append", metavar="SPEC", help="fault injection rule "
                   "KIND[:MATCH[:nth=N|every|p=0.5,seed=1][,PARAM=VALUE...]] where MATCH is "
                   "a request name (SPDM, IDE_KM or TDISP), 'secured' or 'doe' (repeatable; "
                   f"kinds {', '.join(KINDS)}; see README 'Making the device fail')")
    from vdev.cli.trace import add_trace_arguments, add_trace_parser

    add_trace_arguments(s)
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("spdm-emu", help="serve SPDM/IDE_KM/TDISP over the spdm-emu socket protocol")
    e.add_argument("--port", type=int, default=2323, help="TCP port (default 2323)")
    e.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    e.add_argument("--transport", default="pci_doe", choices=["pci_doe", "mctp", "none"])
    e.add_argument("--profile", help="device profile: a TOML file or a shipped profile name")
    e.add_argument("--control", metavar="PATH", help="serve the JSON control socket here")
    e.add_argument("--state-dir", help="device identity directory (as for serve)")
    e.add_argument("--cert-chain", help="certificate chain (PEM/DER) instead of the generated one")
    e.add_argument("--key", help="private key of the chain's leaf (PEM/DER)")
    add_trace_arguments(e)
    e.set_defaults(func=cmd_spdm_emu)

    r = sub.add_parser("run", help="boot the guest against the device and summarise")
    r.add_argument("--profile", help="device profile (TOML)")
    r.add_argument("--workdir", help="where logs go (default out/run)")
    r.add_argument("--trace", action="store_true", help="both servers write a decoded trace "
                   "and a pcap (device.trace/.pcap, tsm.trace/.pcap) into the workdir")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("vm", help="boot the guest with the device and give a shell")
    v.add_argument("--profile", help="device profile (TOML)")
    v.set_defaults(func=cmd_vm)

    from vdev.cli.tsm_serve import add_serve_arguments
    from vdev.cli.tsm_serve import cmd_serve as cmd_tsm_serve

    t = sub.add_parser("tsm", help="the platform TSM side")
    tsm_sub = t.add_subparsers(dest="tsm_command", required=True)
    ts = tsm_sub.add_parser("serve", help="serve the TSM mailbox device to QEMU over vfio-user")
    add_serve_arguments(ts)
    ts.set_defaults(func=cmd_tsm_serve)

    from vdev.cli.tsm_connect import add_connect_parser

    add_connect_parser(tsm_sub)  # vdev tsm connect --spdm-emu HOST:PORT ...
    add_trace_parser(sub)  # vdev trace show FILE ...

    from vdev.cli.ctl import add_ctl_parser

    add_ctl_parser(sub)  # vdev ctl --socket PATH COMMAND
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    rc: int = args.func(args)
    return rc

