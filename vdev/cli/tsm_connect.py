"""`vdev tsm connect`: drive the TSM model against an spdm-emu compatible responder.

This is the only module of tsm doing I/O: it owns the socket client (imported
lazily from vdev.spdm_emu.client) and the sleeps a ResponseNotReady asks for.
What the user reads is `DESCRIPTION`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from spdm import psk
from spdm.errors import PskFormatError
from spdm.secured_message import DOE_TRANSPORT, MCTP_TRANSPORT
from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.mailbox_protocol import Done
from tsm.model import TsmConfig, TsmModel
from tsm.operations import TsmOperation
from tsm.reference_values import PolicyError
from vdev.cli.psk_file import add_psk_argument, read_psk_file
from vdev.cli.tsm_inputs import reference_values, trust_anchors
from vdev.cli.tsm_serve import add_spdm_size_argument, spdm_data_transfer_size

DESCRIPTION = """\
Connects to a device over DMTF's spdm-emu socket protocol (`vdev spdm-emu`, or libspdm's
spdm_responder_emu) as the platform TSM would: SPDM authentication (certificate chain
against --trust-anchor, signed measurements against --policy), a secure session and IDE
keys; then, if asked, locks the TDI (the function of --device), fetches and checks its
interface report, starts it, stops it, and finally disconnects (K_SET_STOP,
END_SESSION).

The steps are printed as they happen (on stderr with --json), then the evidence (as
JSON with --json).  Exit status 0 when every requested step succeeded, 1 otherwise.

  vdev spdm-emu --port 2323 &
  vdev tsm connect --spdm-emu 127.0.0.1:2323 \\
      --trust-anchor "$(vdev identity trust-anchor)" --lock --start
"""


class DoeClient(Protocol):
    def doe_exchange(self, data_object_type: int, payload: bytes) -> bytes: ...


ClientFactory = Callable[[str, int], DoeClient]


def add_connect_parser(tsm_subparsers: Any) -> argparse.ArgumentParser:
    """Add `connect` to the `vdev tsm` sub-command group."""
    c: argparse.ArgumentParser = tsm_subparsers.add_parser(
        "connect", help="authenticate and connect a device over the spdm-emu socket",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_session_arguments(c)
    c.add_argument("--expect-bar", action="append", default=[], metavar="INDEX:BASE:SIZE",
                   help="a BAR as the host assigned it; the interface report must match")
    c.add_argument("--mmio-offset", type=lambda s: int(s, 0), default=0,
                   help="MMIO_REPORTING_OFFSET for LOCK (default 0)")
    c.add_argument("--stream-id", default="auto", metavar="ID|auto",
                   help="IDE Stream ID to key; auto (default): the ID the host configured in "
                   "the device's first selective stream, as QUERY_RESP reports it, or 0 "
                   "when the IDE registers there read all zeros (the log says so)")
    c.add_argument("--heartbeat", type=int, default=0, metavar="N", help="set HBEAT_CAP "
                   "(the device then sends its HeartbeatPeriod) and send N HEARTBEATs "
                   "after connecting")
    c.add_argument("--key-update", action="store_true", help="KEY_UPDATE (UpdateAllKeys, "
                   "then VerifyNewKey) of the session after connecting")
    c.add_argument("--device-info", action="store_true", help="read, inside the session, "
                   "the key pair information, measurement extension log and endpoint "
                   "information the device offers (evidence 'device_info')")
    c.add_argument("--lock", action="store_true", help="TDISP LOCK + interface report")
    c.add_argument("--start", action="store_true", help="START after LOCK (implies --lock)")
    c.add_argument("--stop", action="store_true", help="STOP the TDI at the end")
    c.add_argument("--no-disconnect", action="store_true",
                   help="leave the session and keys in place at the end")
    c.add_argument("--json", action="store_true", help="print the evidence as JSON")
    add_tail_arguments(c)
    c.set_defaults(func=cmd_connect)
    return c


def add_session_arguments(c: argparse.ArgumentParser) -> None:
    """What `connect` and `provision` share: the responder, how to trust it, and how the
    session is opened."""
    c.add_argument("--spdm-emu", required=True, metavar="HOST:PORT",
                   help="spdm-emu responder (e.g. vdev spdm-emu, libspdm's spdm_responder_emu)")
    c.add_argument("--trust-anchor", required=True, metavar="FILE",
                   help="root certificate(s) to accept, PEM or DER")
    c.add_argument("--policy", metavar="FILE", help="measurement reference values (TOML/JSON)")
    c.add_argument("--device", default="0000:01:00.0", metavar="SSSS:BB:DD.F",
                   help="the DSM / TDI routing ID used in INTERFACE_ID (default %(default)s)")
    c.add_argument("--transport", default="pci_doe", choices=["pci_doe", "mctp"],
                   help="spdm-emu transport (default pci_doe)")
    add_spdm_size_argument(c)
    c.add_argument("--slot", type=int, default=0, metavar="N", help="certificate slot to "
                   "authenticate and open the session with (0..7, default 0)")
    c.add_argument("--multi-key", action="store_true", help="ask for an SPDM 1.3 multi-key "
                   "connection: every slot's key usable, DIGESTS with key pair information")
    add_psk_argument(c, "TSM")
    c.add_argument("--psk-hint", metavar="HINT", help="open the session with PSK_EXCHANGE "
                   "using the PSK of this hint from --psk-file (text, or hex:...; '' for "
                   "none) instead of KEY_EXCHANGE; the PSK itself is never printed")
    c.add_argument("--handshake-in-clear", action="store_true", help="set "
                   "HANDSHAKE_IN_THE_CLEAR_CAP: KEY_EXCHANGE_RSP..FINISH_RSP unencrypted "
                   "when the device supports it too")


def add_tail_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--shutdown", action="store_true",
                   help="send SHUTDOWN to the spdm-emu server at the end (default CONTINUE)")
    from vdev.cli.trace import add_trace_arguments  # the adapter layer, as the client is

    add_trace_arguments(c)  # --trace FILE, --trace-format, --pcap FILE, --log-secrets


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"vdev tsm connect: --spdm-emu wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _default_factory(transport: str) -> ClientFactory:
    def make(host: str, port: int) -> DoeClient:
        from vdev.spdm_emu.client import SpdmEmuClient  # the adapter layer, loaded lazily

        client = SpdmEmuClient(host, port, transport=transport)
        client.hello()
        return client

    return make


def run(op: TsmOperation, client: DoeClient) -> Done:
    """Carry one operation's DOE exchanges over the client."""
    while not op.done:
        req = op.next_request
        assert req is not None
        if req.delay_us:
            time.sleep(req.delay_us / 1e6)
        try:
            reply = client.doe_exchange(req.doe_type, req.payload)
        except OSError as exc:
            op.fail(-exc.errno if exc.errno else f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a protocol error of the socket layer (SpdmEmuError)
            op.fail(f"{type(exc).__name__}: {exc}")
        else:
            op.feed(reply)
    assert op.result is not None
    return op.result


def prepare(args: argparse.Namespace, prog: str, log: TextIO,
            **config: Any) -> tuple[TsmModel, DeviceRef, str, int]:
    """The TSM model the session options describe (`config`: further TsmConfig fields),
    with its step log going to `log`."""
    host, port = _host_port(args.spdm_emu)
    try:
        device = DeviceRef.parse(args.device)
        anchors = trust_anchors(prog, args.trust_anchor)
        refs = reference_values(prog, args.policy) if args.policy else None
    except (OSError, ValueError, PolicyError) as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    if not 0 <= args.slot <= 7:
        raise SystemExit(f"{prog}: --slot {args.slot}: a slot is 0..7")
    psks = read_psk_file(prog, args.psk_file)
    hint = None
    if args.psk_hint is not None:
        if not psks:
            raise SystemExit(f"{prog}: --psk-hint needs --psk-file")
        try:
            hint = psk.parse_hint(args.psk_hint)
        except PskFormatError as exc:
            raise SystemExit(f"{prog}: {exc}") from None
        if hint not in psks:
            raise SystemExit(f"{prog}: --psk-hint {psk.describe_hint(hint)} is not "
                             f"in --psk-file {args.psk_file} (it has "
                             f"{', '.join(psk.hints(psks))})")
    tracer = _tracer(args)
    tsm_config = TsmConfig(
        trust_anchors=anchors, reference_values=refs, policy_file=args.policy,
        clock=time.time, cert_slot=args.slot, psk_hint=hint, psks=psks,
        handshake_in_the_clear=args.handshake_in_clear, multi_key=args.multi_key,
        # DSP0275: over MCTP the secured payload carries the MCTP message type too.
        transport=MCTP_TRANSPORT if args.transport == "mctp" else DOE_TRANSPORT,
        spdm_data_transfer_size=spdm_data_transfer_size(prog, args.spdm_data_transfer_size),
        **config,
    )
    tsm = TsmModel(device, tsm_config, tracer.spdm_hooks() if tracer is not None else None)
    tsm.listeners.append(lambda phase, text: print(f"  [{phase}] {text}", file=log, flush=True))
    if tracer is not None:
        tsm.listeners.append(lambda phase, text: tracer.state(f"[{phase}] {text}",
                                                              msg="TSM_STEP", proto="tsm"))
    tsm.tracer = tracer  # type: ignore[attr-defined]
    return tsm, device, host, port


def open_client(args: argparse.Namespace, tsm: TsmModel, host: str, port: int,
                log: TextIO, client_factory: ClientFactory | None) -> DoeClient | None:
    factory = client_factory or _default_factory(args.transport)
    print(f"vdev tsm: connecting to spdm-emu {host}:{port}, device {tsm.device}", file=log)
    try:
        client = factory(host, port)
    except Exception as exc:
        print(f"vdev tsm: cannot reach {host}:{port}: {exc}", file=log)
        return None
    tracer = getattr(tsm, "tracer", None)
    if tracer is not None:
        from vdev.trace.attach import TracedClient

        client = TracedClient(client, tracer,
                              doe=getattr(args, "transport", "pci_doe") == "pci_doe")
    return client


def execute(plan: list[tuple[str, Callable[[], TsmOperation]]], tsm: TsmModel,
            client: DoeClient, log: TextIO, *, disconnect: bool = True,
            shutdown: bool = False) -> tuple[bool, dict[str, Any]]:
    """Run the plan's operations in order (stopping at the first failure), then
    disconnect.  Returns (failed, {step name: value})."""
    failed = False
    values: dict[str, Any] = {}
    for name, make in plan:
        print(f"- {name}", file=log, flush=True)
        done = run(make(), client)
        if not done.ok:
            print(f"FAILED: {done.reason}", file=log, flush=True)
            failed = True
            break
        values[name] = done.value
    if tsm.state == "connected" and disconnect:
        print("- disconnect", file=log, flush=True)
        done = run(tsm.disconnect(), client)
        if not done.ok:
            print(f"FAILED: {done.reason}", file=log, flush=True)
            failed = True
    _close(client, shutdown)
    return failed, values


def cmd_connect(args: argparse.Namespace, client_factory: ClientFactory | None = None) -> int:
    out: TextIO = sys.stdout
    log: TextIO = sys.stderr if args.json else sys.stdout
    prog = "vdev tsm connect"
    try:
        bars = [ExpectedBar.parse(b) for b in args.expect_bar]
        stream_id = None if args.stream_id == "auto" else int(args.stream_id, 0)
    except ValueError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    if args.heartbeat < 0:
        raise SystemExit(f"{prog}: --heartbeat must not be negative")
    tsm, device, host, port = prepare(args, prog, log, stream_id=stream_id,
                                      mmio_reporting_offset=args.mmio_offset,
                                      heartbeat=args.heartbeat > 0)
    client = open_client(args, tsm, host, port, log, client_factory)
    if client is None:
        return 1

    plan: list[tuple[str, Callable[[], TsmOperation]]] = [("connect", tsm.connect)]
    plan += [("heartbeat", tsm.heartbeat)] * args.heartbeat
    if args.key_update:
        plan.append(("key update", tsm.key_update))
    if args.device_info:
        plan.append(("device info", tsm.device_info))
    tdi = device.function
    if args.lock or args.start:
        plan.append(("lock", lambda: tsm.lock(tdi, expected_mmio=bars or None)))
        plan.append(("report", lambda: tsm.report(tdi)))
    if args.start:
        plan.append(("start", lambda: tsm.start(tdi)))
    if args.stop:
        plan.append(("stop", lambda: tsm.stop(tdi)))

    failed, _ = execute(plan, tsm, client, log, disconnect=not args.no_disconnect,
                        shutdown=args.shutdown)

    evidence = tsm.evidence()
    if args.json:
        json.dump(evidence, out, indent=2)
        out.write("\n")
    else:
        out.write(render(evidence, tsm))
    print("vdev tsm: " + ("FAILED" if failed else "ok"), file=log)
    return 1 if failed else 0


def _tracer(args: argparse.Namespace) -> Any:
    """A vdev.trace Tracer for --trace / --pcap / --pcap-decrypted / --log-secrets, or
    None."""
    from vdev.cli.trace import tracer_from_args

    return tracer_from_args(args, "tsm",
                            doe_wire=getattr(args, "transport", "pci_doe") == "pci_doe")


def _close(client: DoeClient, shutdown: bool) -> None:
    finish = getattr(client, "shutdown" if shutdown else "continue_", None)
    try:
        if finish is not None:
            finish()
        elif hasattr(client, "close"):
            client.close()
    except Exception:  # the session is over either way; closing is best effort
        pass


def render(e: dict[str, Any], tsm: TsmModel | None = None) -> str:
    """The evidence as a readable summary."""
    lines = ["", "Evidence"]
    s = e["spdm"]
    if s["version"]:
        a = s["algorithms"] or {}
        lines.append(f"  SPDM {s['version']}: {a.get('asym')}, {a.get('base_hash')}, "
                     f"{a.get('key_exchange')}, {a.get('aead')}; authenticated by "
                     f"{s['authentication'] or '-'}")
        lines.append(f"  session {s['session_id'] or '-'} ({s['session_state'] or 'none'})")
    for c in e["certificates"]:
        lines.append(f"  cert {c['subject']}")
        lines.append(f"       sha256 {c['sha256']}")
    verdicts = {v["index"]: v for v in e["policy"]["verdicts"] if v.get("index") is not None}
    for m in e["measurements"]:
        v = verdicts.get(m["index"], {}).get("verdict", "not checked")
        value = m["value"] if len(m["value"]) <= 32 else m["value"][:32] + "…"
        lines.append(f"  measurement {m['index']:3d} {m['type']:17s} {value}  [{v}]")
    for v in e["policy"]["verdicts"]:
        if v.get("check") == "version":
            lines.append(f"  version {v['got']!r}: {v['verdict']}")
    ide = e["ide"]
    if ide["device"]["slots"]:
        dev = ", ".join(f"{x['direction']} {x['sub_stream']} K{x['key_set']} {x['state']}"
                        for x in ide["device"]["slots"])
        lines.append(f"  IDE stream {ide['stream_id']} device:    {dev}")
        rp = ide["root_port"]
        rps = ", ".join(f"{x['direction']} {x['sub_stream']} K{x['key_set']} {x['state']}"
                        for x in rp["slots"])
        lines.append(f"  IDE stream {ide['stream_id']} root port: {rps} ({rp['state']})")
    for name, t in e["tdis"].items():
        hist = " -> ".join(h["state"] for h in t["history"])
        lines.append(f"  TDI {name} ({t['interface_id']}): {t['state']}  [{hist}]")
        if t["report_check"]:
            lines.append(f"    report check: {t['report_check']}")
        rec = tsm.tdis.get(int(t["interface_id"], 16)) if tsm is not None else None
        if rec is not None and rec.report is not None:
            lines += ["    " + x for x in rec.report.render().splitlines()]
    if e["last_error"]:
        lines.append(f"  last error: {e['last_error']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # `python -m vdev.cli.tsm_connect connect ...` is `vdev tsm connect ...`, through the
    # command line's guard (one line for an error, cleanup on Ctrl-C and SIGTERM).
    from vdev.cli import main

    sys.exit(main(["tsm", *sys.argv[1:]]))
