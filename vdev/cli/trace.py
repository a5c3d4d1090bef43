"""Command-line glue: `--trace/--trace-format/--pcap/--log-secrets` and `vdev trace show`.

  vdev trace show FILE [--protocol spdm|idekm|tdisp|doe|state|tsm] [--message NAME]
                       [--session ID] [--errors] [--json]

`show` reads both trace formats (JSON lines, or the text lines `Event.to_text` writes)
and prints the matching events as text (as JSON lines with --json).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from vdev.trace.pcap import LINKTYPE_PCI_DOE, PcapWriter
from vdev.trace.tracer import ARROWS, Event, Tracer

SECRETS_WARNING = ("WARNING: --log-secrets: SPDM session secrets are printed "
                   "([DHE Secret] / [PSK]); anyone holding them can decrypt the traced "
                   "sessions. Debugging only.")


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
    g.add_argument("--log-secrets", action="store_true",
                   help="print '[DHE Secret]: <hex>' / '[PSK]: <hex>' per session to stderr "
                   "so spdm_dump can decrypt the pcap (debugging only)")


def tracer_from_args(args: argparse.Namespace, side: str, *, doe_wire: bool = True,
                     stderr: TextIO | None = None) -> Tracer | None:
    """A Tracer for the options given, or None when no tracing option is set.  `doe_wire`
    False: the transport has no DOE objects, so --pcap is refused."""
    trace = getattr(args, "trace", None)
    pcap_path = getattr(args, "pcap", None)
    log_secrets = bool(getattr(args, "log_secrets", False))
    if not (trace or pcap_path or log_secrets):
        return None
    err = stderr or sys.stderr
    if pcap_path and not doe_wire:
        raise SystemExit("vdev: --pcap records DOE objects: only with the pci_doe transport")
    if log_secrets:
        print(SECRETS_WARNING, file=err, flush=True)
    try:
        out = open(trace, "w", encoding="utf-8") if trace else None  # noqa: SIM115
        pcap = PcapWriter(open(pcap_path, "wb"), LINKTYPE_PCI_DOE) if pcap_path else None  # noqa: SIM115
    except OSError as exc:
        raise SystemExit(f"vdev: cannot open the trace output: {exc}") from None
    return Tracer(side, out=out, fmt=getattr(args, "trace_format", "text") or "text",
                  pcap=pcap, log_secrets=log_secrets, secrets_out=err,
                  infer_state=side == "tsm")


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

_TEXT = re.compile(
    r"^(?P<time>\S+) (?P<side>\S+) (?P<arrow>->|<-|==) (?P<proto>\S+)\s+"
    r"(?:sess=(?P<session>\S+)|-) (?P<secured>\[secured\] )?(?P<summary>.*?)"
    r"(?: => (?P<state>.*))?$"
)
_DIRS = {v: k for k, v in ARROWS.items()}


def _from_text(line: str) -> dict[str, Any] | None:
    mt = _TEXT.match(line)
    if mt is None:
        return None
    summary = mt["summary"]
    error = False
    return {"t": None, "time": mt["time"], "side": mt["side"], "dir": _DIRS[mt["arrow"]],
            "proto": mt["proto"], "msg": _msg_of(summary, mt["proto"]), "summary": summary,
            "session": mt["session"], "secured": bool(mt["secured"]), "error": error,
            "state": mt["state"] or (summary if mt["arrow"] == "==" else None)}


def _msg_of(summary: str, proto: str) -> str:
    words = summary.split()
    if proto in ("idekm", "tdisp") and len(words) > 1:
        return words[1]  # "IDE_KM KEY_PROG ...", "TDISP LOCK_INTERFACE_REQUEST ..."
    return words[0] if words else ""


_ERROR_WORDS = re.compile(r"\bERROR\b|TDISP_ERROR|status=(?!SUCCESS)|discarded|transport error")


def read_events(f: TextIO) -> Iterator[dict[str, Any]]:
    for line in f:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("{"):
            try:
                yield dict(json.loads(line))
                continue
            except json.JSONDecodeError:
                pass
        ev = _from_text(line)
        if ev is not None:
            # The text form has no error column: recover it from the words it prints.
            ev["error"] = bool(_ERROR_WORDS.search(ev["summary"])) and not any(
                w in ev["summary"] for w in ("RESPONSE_NOT_READY", "LARGE_RESPONSE"))
            yield ev


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
    try:
        f = open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise SystemExit(f"vdev trace show: {exc}") from None
    shown = 0
    with f:
        for ev in read_events(f):
            if not matches(ev, args):
                continue
            shown += 1
            if args.json:
                print(json.dumps(ev, separators=(",", ":")))
            else:
                print(_render(ev))
    return 0


def add_trace_parser(subparsers: Any) -> None:
    t = subparsers.add_parser("trace", help="read traces written with --trace")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("show", help="print (and filter) a trace file")
    s.add_argument("file", help="a --trace file (text or JSON lines)")
    s.add_argument("--protocol", choices=["spdm", "idekm", "tdisp", "doe", "state", "tsm"])
    s.add_argument("--message", metavar="NAME", help="e.g. KEY_EXCHANGE_RSP, KEY_PROG, "
                   "LOCK_INTERFACE_REQUEST, DISCOVERY, TDI")
    s.add_argument("--session", metavar="ID", help="session id, e.g. 0xff000001")
    s.add_argument("--errors", action="store_true", help="only errors (SPDM ERROR, "
                   "TDISP_ERROR, failed KP_ACK, TDI to ERROR, discarded objects)")
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.set_defaults(func=cmd_show)
