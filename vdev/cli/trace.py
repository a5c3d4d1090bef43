"""Command-line glue: `--trace/--trace-format/--pcap/--log-secrets` and `vdev trace show`.

  vdev trace show FILE [--protocol spdm|idekm|tdisp|doe|state|tsm] [--message NAME]
                       [--session ID] [--errors] [--format text|json|mermaid]

`show` reads both trace formats (JSON lines, or the text lines `Event.to_text` writes)
and the pcap (vdev.trace.reader), and prints the matching events as text, JSON lines or
a Mermaid sequence diagram (vdev.trace.mermaid).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from vdev.trace.pcap import LINKTYPE_PCI_DOE, PcapngWriter, PcapWriter
from vdev.trace.tracer import ARROWS, Event, Tracer

SECRETS_WARNING = ("WARNING: --log-secrets: SPDM session secrets are printed "
                   "([DHE Secret] / [PSK]); anyone holding them can decrypt the traced "
                   "sessions. Debugging only.")


DECRYPTED_WARNING = ("WARNING: --pcap-decrypted {}: the plaintext of every secured message "
                     "goes there, IDE key material included. Debugging only.")


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracing")
    g.add_argument("--trace", metavar="FILE",
                   help="write every DOE object and SPDM/IDE_KM/TDISP message (secured "
                   "ones decrypted) and the state changes they cause to FILE")
    g.add_argument("--trace-format", default="text", choices=["text", "json"],
                   help="one line per event: readable text (default) or JSON lines")
    g.add_argument("--pcap", metavar="FILE",
                   help="write the DOE objects as classic pcap, link type 292 (PCI DOE), "
                   "secured objects encrypted, for DMTF's spdm_dump")
    g.add_argument("--pcap-decrypted", metavar="FILE",
                   help="the same DOE objects as pcapng, each secured record decrypted "
                   "and marked as such, for Wireshark with contrib/wireshark/vdev-doe.lua; "
                   "it holds what the session protects (IDE keys too): debugging only")
    g.add_argument("--log-secrets", action="store_true",
                   help="print '[DHE Secret]: <hex>' / '[PSK]: <hex>' per session to stderr "
                   "so spdm_dump can decrypt the pcap (debugging only)")


def tracer_from_args(args: argparse.Namespace, side: str, *, doe_wire: bool = True,
                     stderr: TextIO | None = None) -> Tracer | None:
    """A Tracer for the options given, or None when no tracing option is set.  `doe_wire`
    False: the transport has no DOE objects, so --pcap is refused."""
    trace = getattr(args, "trace", None)
    pcap_path = getattr(args, "pcap", None)
    decrypted_path = getattr(args, "pcap_decrypted", None)
    log_secrets = bool(getattr(args, "log_secrets", False))
    if not (trace or pcap_path or decrypted_path or log_secrets):
        return None
    err = stderr or sys.stderr
    if (pcap_path or decrypted_path) and not doe_wire:
        raise SystemExit("vdev: --pcap records DOE objects: only with the pci_doe transport")
    if log_secrets:
        print(SECRETS_WARNING, file=err, flush=True)
    if decrypted_path:
        print(DECRYPTED_WARNING.format(decrypted_path), file=err, flush=True)
    try:
        out = open(trace, "w", encoding="utf-8") if trace else None  # noqa: SIM115
        pcap = PcapWriter(open(pcap_path, "wb"), LINKTYPE_PCI_DOE) if pcap_path else None  # noqa: SIM115
        decrypted = PcapngWriter(open(decrypted_path, "wb"), LINKTYPE_PCI_DOE,  # noqa: SIM115
                                 interface="PCI DOE, secured records decrypted") \
            if decrypted_path else None
    except OSError as exc:
        raise SystemExit(f"vdev: cannot open the trace output: {exc}") from None
    return opened(Tracer(side, out=out, fmt=getattr(args, "trace_format", "text") or "text",
                         pcap=pcap, pcap_decrypted=decrypted, log_secrets=log_secrets,
                         secrets_out=err, infer_state=side == "tsm"))


# The tracers this command line opened: `finish` closes them when the command is done and
# turns an output that failed on the way (a full disk) into the exit status.
_OPENED: list[Tracer] = []


def opened(tracer: Tracer) -> Tracer:
    _OPENED.append(tracer)
    return tracer


def finish(prog: str, rc: int, err: TextIO | None = None) -> int:
    """Close every tracer opened; a lost trace or pcap is an error line and exit 1 (the
    failure itself was logged when it happened)."""
    lost: list[str] = []
    while _OPENED:
        tracer = _OPENED.pop()
        tracer.close()
        lost += [x for x in tracer.lost if x not in lost]
    for text in lost:
        print(f"{prog}: trace incomplete: {text}", file=err or sys.stderr)
    return 1 if lost and rc == 0 else rc


def trace_device(args: argparse.Namespace, device: Any, *, doe_wire: bool = True) -> Any:
    """`vdev serve` / `vdev spdm-emu`: trace `device` as the options ask; returns what
    the spdm-emu server should serve (the device itself when not tracing)."""
    from vdev.trace.attach import TracedDevice, attach_device

    tracer = tracer_from_args(args, "device", doe_wire=doe_wire)
    if tracer is None:
        return device
    attach_device(tracer, device)
    return TracedDevice(device, tracer)


# ---- vdev trace show ----------------------------------------------------------------------

def _session_matches(have: str | None, want: str) -> bool:
    if have is None:
        return False
    try:
        return int(have, 16) == int(want, 0 if want.lower().startswith("0x") else 16)
    except ValueError:
        return have == want


def matches(ev: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.protocol and ev.get("proto") != args.protocol:
        return False
    if args.message and str(ev.get("msg", "")).upper() != args.message.upper():
        return False
    if args.session and not _session_matches(ev.get("session"), args.session):
        return False
    return not (args.errors and not ev.get("error"))


def _render(ev: dict[str, Any]) -> str:
    if ev.get("t") is None:  # read from text: keep its own time stamp
        sess = f"sess={ev['session']}" if ev.get("session") else "-"
        mark = "[secured] " if ev.get("secured") else ""
        state = ev.get("state")
        tail = f" => {state}" if state and ev["dir"] != "state" else ""
        return (f"{ev['time']} {ev['side']} {ARROWS[ev['dir']]} {ev['proto']:<5} {sess} "
                f"{mark}{ev['summary']}{tail}")
    fields: dict[str, Any] = {k: ev.get(k) for k in ("t", "side", "dir", "proto", "msg", "summary",
                                     "session", "secured", "error", "state")}
    return Event(**fields).to_text()


def cmd_show(args: argparse.Namespace) -> int:
    from vdev.trace.reader import TraceFileError, TraceReader

    reader = TraceReader(args.file)
    try:
        events = [ev for ev in reader if matches(ev, args)] if args.format == "mermaid" \
            else None
        if events is not None:
            from vdev.trace.mermaid import sequence_diagram

            sys.stdout.write(sequence_diagram(events, title=args.title))
        else:
            for ev in reader:
                if matches(ev, args):
                    print(json.dumps(ev, separators=(",", ":")) if args.format == "json"
                          else _render(ev))
    except TraceFileError as exc:
        raise SystemExit(f"vdev trace show: {exc}") from None
    except BrokenPipeError:
        raise  # our reader went away (`| head`): vdev.cli.main exits quietly
    except OSError as exc:
        raise SystemExit(f"vdev trace show: {args.file}: {exc.strerror or exc}") from None
    if reader.skipped:
        print(f"vdev trace show: {args.file}: {reader.skipped} line(s) were not trace events "
              "and were skipped", file=sys.stderr)
    return 0


def add_trace_parser(subparsers: Any) -> None:
    t = subparsers.add_parser("trace", help="read traces written with --trace")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("show", help="print (and filter) a trace file")
    s.add_argument("file", help="a --trace file (text or JSON lines) or a --pcap file")
    s.add_argument("--protocol", choices=["spdm", "idekm", "tdisp", "doe", "state", "tsm"])
    s.add_argument("--message", metavar="NAME", help="e.g. KEY_EXCHANGE_RSP, KEY_PROG, "
                   "LOCK_INTERFACE_REQUEST, DISCOVERY, TDI")
    s.add_argument("--session", metavar="ID", help="session id, e.g. 0xff000001")
    s.add_argument("--errors", action="store_true", help="only errors (SPDM ERROR, "
                   "TDISP_ERROR, failed KP_ACK, TDI to ERROR, discarded objects)")
    s.add_argument("--format", choices=["text", "json", "mermaid"], default="text",
                   help="text lines (default), JSON lines, or a Mermaid sequence diagram "
                   "of requester, device and the state changes (a code host or "
                   "mermaid.live renders it)")
    s.add_argument("--json", dest="format", action="store_const", const="json",
                   help="the same as --format json")
    s.add_argument("--title", help="--format mermaid: the diagram's title (default: none)")
    s.set_defaults(func=cmd_show)


def write_sequence(workdir: Path) -> Path | None:
    """`vdev run`: the device's trace (with the TSM's steps from its own trace) as
    `sequence.md` in the workdir; None (and a line saying why) when it cannot be drawn."""
    from vdev.trace.mermaid import markdown, sequence_diagram
    from vdev.trace.reader import TraceFileError, TraceReader

    device, tsm = workdir / "device.trace", workdir / "tsm.trace"
    out = workdir / "sequence.md"
    try:
        events = list(TraceReader(device))
        steps = list(TraceReader(tsm)) if tsm.exists() else []
    except (OSError, TraceFileError) as exc:
        print(f"vdev run: no sequence diagram: {exc}", file=sys.stderr)
        return None
    if not events:
        print(f"vdev run: no sequence diagram: {device} has no events", file=sys.stderr)
        return None
    diagram = sequence_diagram(events, tsm_steps_only=steps)
    out.write_text(markdown(
        diagram, "vdev run: the guest's connect, as the device saw it",
        "Every DOE exchange of the run from `device.trace` (requests from the guest's "
        "`pci_doe()`, relaying the TSM), the device's state changes as notes on its side, "
        "and the TSM's steps from `tsm.trace` on the requester's.  Redraw with `vdev "
        "trace show device.trace --format mermaid`."))
    print(f"vdev run: the connect as a sequence diagram: {out}")
    return out
