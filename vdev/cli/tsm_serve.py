"""`vdev tsm serve`: the TSM mailbox device over vfio-user.

  vdev tsm serve --socket PATH --trust-anchor FILE [--policy FILE]

serves the mailbox with the real TSM model behind it:
`tsm.mailbox_backend(trust_anchor, policy, config, on_done)`, a
`tsm.mailbox_protocol.TsmBackend` over the model's operations.

  --root-port-qmp PATH [--root-port ID]

also programs the root port of the patched QEMU (qemu/README.md): every
key operation on the root port's end of the stream goes to pcie-root-port ID
(default rp1) over the QMP socket PATH, and the evidence carries that port's
view (stream state, rule violations).  Backend steps then run in a worker
thread, because QEMU cannot answer QMP while a vCPU waits for this server.

Test-only (hidden from --help): `--scripted FILE` replays a JSON script
(`backend.load_scripts`) instead, and `--record FILE` appends every DOE
exchange the scripted backend saw as one JSON line, so a guest test can
assert on the bytes the real device answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spdm.hooks import RequesterHooks
from tsm.mailbox_backend import mailbox_backend
from tsm.mailbox_protocol import Done, Op, TargetFunction, TsmBackend
from tsm.model import TsmConfig
from tsm.root_port import PlatformRootPort
from vdev.tsm_mailbox.backend import Exchange, ScriptedBackend, load_scripts

log = logging.getLogger("vdev.tsm")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, help="UNIX socket path QEMU connects to")
    # Required, except with the hidden test-only --scripted backend (checked in cmd_serve).
    p.add_argument("--trust-anchor", metavar="FILE", help="required: root certificate(s) "
                   "the TSM accepts, PEM or DER (the device's: `vdev identity trust-anchor`)")
    p.add_argument("--policy", metavar="FILE", help="measurement reference values (TOML, "
                   "or JSON named *.json); default: any measurements are accepted")
    p.add_argument("--evidence", help="write the TSM's evidence (JSON) here after every operation")
    p.add_argument("--control", metavar="PATH", help="serve the JSON control socket here "
                   "(vdev ctl --socket PATH status|evidence|mailbox)")
    add_spdm_size_argument(p)
    p.add_argument("--root-port-qmp", metavar="PATH",
                   help="QMP socket of a QEMU built with `make qemu`: program the IDE keys "
                   "of its root port too")
    p.add_argument("--root-port", metavar="ID", default="rp1",
                   help="device id of that root port (default rp1)")
    p.add_argument("--scripted", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    from vdev.cli.trace import add_trace_arguments

    add_trace_arguments(p)  # --trace FILE, --trace-format, --pcap FILE, --log-secrets


def add_spdm_size_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spdm-data-transfer-size", metavar="BYTES", type=int, default=4096,
                   help="the TSM's SPDM DataTransferSize, 42..65536 (default 4096): larger "
                   "responses (PQC certificates, signatures) come in CHUNK_GET exchanges of at "
                   "most this size, so it bounds each DOE exchange")


def spdm_data_transfer_size(command: str, value: int) -> int:
    # DSP0274 1.2 MinDataTransferSize; above 64 KiB a DOE exchange carried by the guest
    # approaches Linux's 1 s DOE timeout under TCG (docs/linux-pci-tsm.md §7.2).
    if not 42 <= value <= 65536:
        raise SystemExit(f"{command}: --spdm-data-transfer-size {value} not in 42..65536")
    return value


def _scripted_backend(script: str, record: str | None) -> ScriptedBackend:
    try:
        scripts = load_scripts(script)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"vdev tsm serve: bad script {script}: {exc}") from None

    def write(ex: Exchange) -> None:
        log.info("scripted %s exchange %d: type %d, %d bytes out, rc %d, %d bytes back",
                 ex.op.name, ex.index, ex.request.doe_type, len(ex.request.payload),
                 ex.rc, len(ex.response))
        if record:
            with open(record, "a") as f:
                f.write(json.dumps(ex.to_json()) + "\n")

    return ScriptedBackend(scripts, on_exchange=write)


def _evidence_writer(
    path: str | None, keep: Callable[[Op, TargetFunction, dict[str, Any]], None] | None = None
) -> Callable[[Op, TargetFunction, Done], None]:
    """After each model operation: one readable log line, the evidence file, and `keep`
    (the control socket's copy)."""

    def done(op: Op, target: TargetFunction, result: Done) -> None:
        ev: dict[str, Any] = dict(result.evidence or {})
        if keep is not None:
            keep(op, target, ev)
        for line in evidence_summary(op, ev):
            log.info("%s", line)
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(ev, f, indent=2, default=str)
            os.replace(tmp, path)

    return done


def evidence_summary(op: Op, ev: dict[str, Any]) -> list[str]:
    """What the TSM learnt in this step, in the words of a kernel engineer."""
    name = op.name
    spdm = ev.get("spdm") or {}
    out: list[str] = []
    if name == "CONNECT" and spdm.get("version"):
        a = spdm.get("algorithms") or {}
        out.append(f"SPDM {spdm['version']}: {a.get('asym')} / {a.get('base_hash')} / "
                   f"{a.get('key_exchange')} / {a.get('aead')}, authenticated by "
                   f"{spdm.get('authentication')}")
        certs = ev.get("certificates") or []
        if certs:
            out.append(f"device certificate: {certs[-1].get('subject')} "
                       f"(sha256 {str(certs[-1].get('sha256'))[:16]}...)")
        verdicts = (ev.get("policy") or {}).get("verdicts") or []
        if verdicts:
            out.append("measurements: " + ", ".join(
                f"{v.get('index')}={v.get('verdict')}" for v in verdicts))
        else:
            out.append(f"measurements: {len(ev.get('measurements') or [])} blocks, "
                       "no reference values configured")
        ide = ev.get("ide") or {}
        rp = ide.get("root_port") or {}
        out.append(f"SPDM session {spdm.get('session_id')} {spdm.get('session_state')}; "
                   f"IDE stream {ide.get('stream_id')} key set {ide.get('key_set')}, "
                   f"root port end {rp.get('state')}")
    for dsm, tdi in (ev.get("tdis") or {}).items():
        if name in ("LOCK", "START", "STOP", "REPORT"):
            check = tdi.get("report_check")
            # START checks the report itself when nobody read it since LOCK.
            said = f"; interface report {check}" if check and name in ("START", "REPORT") \
                else ""
            out.append(f"TDI {dsm}: {tdi.get('state')}{said}")
            report = tdi.get("report")
            if name == "REPORT" and isinstance(report, dict):
                ranges = report.get("mmio_ranges") or []
                # Several ranges share a Range ID (the BAR they lie in): number them.
                for n, r in enumerate(ranges, 1):
                    addr = int(r.get("first_page", "0"), 16)  # byte address + offset
                    out.append(f"  MMIO range {n} of {len(ranges)} (range ID "
                               f"{r.get('range_id')}): {addr:#x} +{int(r.get('size', 0)):#x} "
                               f"{'|'.join(r.get('attributes') or [])}")
    return out


def _model_backend(
    trust_anchor: str | None, policy: str | None, evidence: str | None = None,
    keep: Callable[[Op, TargetFunction, dict[str, Any]], None] | None = None,
    spdm_hooks: RequesterHooks | None = None, data_transfer_size: int = 4096,
    root_port: PlatformRootPort | None = None,
) -> TsmBackend:
    if not trust_anchor:
        raise SystemExit("vdev tsm serve: --trust-anchor FILE is required")
    from vdev.cli.tsm_inputs import reference_values, trust_anchors

    # Read here first so a bad file is one line; the factory reads them again.
    trust_anchors("vdev tsm serve", trust_anchor)
    if policy:
        reference_values("vdev tsm serve", policy)
    config = TsmConfig(trust_anchors=(), spdm_data_transfer_size=data_transfer_size,
                       root_port=root_port)
    return mailbox_backend(Path(trust_anchor), Path(policy) if policy else None, config,
                           on_done=_evidence_writer(evidence, keep), spdm_hooks=spdm_hooks)


def cmd_serve(args: argparse.Namespace) -> int:
    from vdev.cli.server_process import check_socket_path, serve_until_signalled
    from vdev.control.tsm import EvidenceKeeper, tsm_control
    from vdev.tsm_mailbox.device import TsmMailboxDevice

    check_socket_path(args.socket)
    from vdev.cli.trace import tracer_from_args

    tracer = tracer_from_args(args, "tsm")
    keeper = None if args.scripted else EvidenceKeeper()
    root_port = None
    if getattr(args, "root_port_qmp", None):
        from vdev.vm.rootport_ide import QmpRootPortKeys

        root_port = QmpRootPortKeys(Path(args.root_port_qmp), args.root_port)
    if args.scripted:
        backend: TsmBackend = _scripted_backend(args.scripted, args.record)
    else:
        backend = _model_backend(args.trust_anchor, args.policy, args.evidence,
                                 keeper.note if keeper else None,
                                 tracer.spdm_hooks() if tracer is not None else None,
                                 spdm_data_transfer_size("vdev tsm serve",
                                                         args.spdm_data_transfer_size),
                                 root_port)
    if tracer is not None:
        from vdev.trace.attach import TracedBackend

        backend = TracedBackend(backend, tracer)

    def on_loop(loop: asyncio.AbstractEventLoop) -> TsmMailboxDevice:
        # Deferred steps make BUSY observable and keep a slow TSM step off the
        # vfio-user message that rang the doorbell.
        def defer(step: Callable[[], None]) -> None:
            loop.call_soon(step)

        def defer_later(seconds: float, step: Callable[[], None]) -> None:
            loop.call_later(seconds, step)

        worker = ThreadPoolExecutor(1, thread_name_prefix="tsm-backend")

        def in_worker(call: Callable[[], Any], then: Callable[[Any], None]) -> None:
            loop.run_in_executor(worker, call).add_done_callback(
                lambda done: then(done.result()))

        device = TsmMailboxDevice(backend, defer=defer, defer_later=defer_later,
                                  offload=in_worker if root_port is not None else None)
        log.info("TSM mailbox %s backend", kind)
        return device

    kind = "scripted" if args.scripted else "tsm"
    return serve_until_signalled(
        args.socket, on_loop, control_path=args.control, name="TSM mailbox server",
        make_control=lambda dev: tsm_control(dev, keeper, kind),
    )
