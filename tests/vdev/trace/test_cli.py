"""The command-line side: `vdev tsm connect` against a traced `vdev spdm-emu` device over
a real socket, `vdev tsm serve`'s traced backend, `vdev trace show` filters, and
--log-secrets."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.vdev.trace.rig import traced_connect
from tests.vdev.trace.test_pcap import doe, read_pcap
from tsm.mailbox_backend import mailbox_backend
from tsm.mailbox_protocol import DoeRequest, Op, TargetFunction
from tsm.model import TsmConfig
from vdev.cli import build_parser, main
from vdev.cli.trace import SECRETS_WARNING, trace_device, tracer_from_args
from vdev.cli.tsm_connect import cmd_connect
from vdev.endpoint.tee_device import TeeDevice
from vdev.spdm_emu.frame import TransportType
from vdev.spdm_emu.server import SpdmEmuServer
from vdev.trace.attach import TracedBackend
from vdev.trace.tracer import Tracer


class Emu:
    def __init__(self, device: TeeDevice, server: SpdmEmuServer) -> None:
        self.device, self.server = device, server


@pytest.fixture
def traced_emu(state_dir: Path, tmp_path: Path) -> Iterator[tuple[Emu, Path, Path]]:
    """`vdev spdm-emu --port 0 --trace T --pcap P` as cmd_spdm_emu wires it, in a thread."""
    trace, pcap = tmp_path / "device.trace", tmp_path / "device.pcap"
    args = build_parser().parse_args(["spdm-emu", "--port", "0", "--trace", str(trace),
                                      "--pcap", str(pcap)])
    device = TeeDevice(state_dir=state_dir)
    served = trace_device(args, device)
    server = SpdmEmuServer(served, TransportType.PCI_DOE, "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    started, stop = threading.Event(), asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def go() -> None:
            await server.start()
            started.set()
            await server.serve_forever(stop)

        loop.run_until_complete(go())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield Emu(device, server), trace, pcap
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(5)


def test_connect_over_spdm_emu_traced_on_both_sides(
        traced_emu: tuple[Emu, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    emu, dev_trace, dev_pcap = traced_emu
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    tsm_trace, tsm_pcap = tmp_path / "tsm.jsonl", tmp_path / "tsm.pcap"
    argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.server.port}",
            "--trust-anchor", str(anchor), "--start", "--json", "--trace", str(tsm_trace),
            "--trace-format", "json", "--pcap", str(tsm_pcap), "--log-secrets"]
    assert cmd_connect(build_parser().parse_args(argv)) == 0
    out, err = capsys.readouterr()
    evidence = json.loads(out)
    sid = evidence["spdm"]["session_id"]
    # --log-secrets: a warning first, then the line spdm_dump's users copy.
    assert SECRETS_WARNING in err
    [secret_line] = [ln for ln in err.splitlines() if ln.startswith("[DHE Secret]: ")]
    secret = secret_line.split(": ", 1)[1]
    assert len(secret) == 96  # SECP384R1 shared secret, hex
    # The device side ran without --log-secrets: nothing of it there.
    device_text = dev_trace.read_text()
    assert secret not in device_text and bytes.fromhex(secret) not in dev_pcap.read_bytes()
    assert f"sess={sid} [secured] TDISP START_INTERFACE_REQUEST tdi=01:00.0" in device_text
    assert "TDI 01:00.0 CONFIG_LOCKED --START--> RUN" in device_text
    events = [json.loads(line) for line in tsm_trace.read_text().splitlines()]
    assert any(e["msg"] == "KEY_PROG" and e["secured"] and e["session"] == sid for e in events)
    assert any(e["proto"] == "tsm" and e["summary"].startswith("[tdisp] lock") for e in events)
    assert secret not in tsm_trace.read_text()
    # Both pcaps hold the same DOE objects (the socket carries them unchanged); the TSM's
    # starts with GET_VERSION (it does no discovery over spdm-emu).
    _, dev_records = read_pcap(dev_pcap.read_bytes())
    _, tsm_records = read_pcap(tsm_pcap.read_bytes())
    assert [r for _, r in dev_records] == [r for _, r in tsm_records]
    assert doe(tsm_records[0][1])[1:] == (1, 3, bytes.fromhex("10840000"))


def test_tsm_serve_backend_traced(state_dir: Path, tmp_path: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(device.identity.root.public_bytes(serialization.Encoding.PEM))
    out = io.StringIO()
    tracer = Tracer("tsm", out=out, infer_state=True)
    backend = TracedBackend(mailbox_backend(
        anchor, None, TsmConfig(trust_anchors=(), stream_id=None),
        spdm_hooks=tracer.spdm_hooks()), tracer)
    for op in (Op.CONNECT, Op.LOCK, Op.DISCONNECT):
        action = backend.start(op, TargetFunction(0, 1, 0))
        while isinstance(action, DoeRequest):
            _kind, reply = device.spdm_message(action.doe_type, action.payload)
            action = backend.doe_response(reply)
        assert action.errno == 0, action.reason
    text = out.getvalue()
    assert "== tsm   - TSM CONNECT 0000:01:00.0" in text
    assert "TSM CONNECT done: ok" in text
    assert "[secured] TDISP LOCK_INTERFACE_REQUEST tdi=01:00.0" in text
    assert "=> TDI 01:00.0 CONFIG_LOCKED" in text


def test_tsm_serve_and_serve_take_the_options() -> None:
    p = build_parser()
    for argv in (["serve", "--socket", "/tmp/x"], ["tsm", "serve", "--socket", "/tmp/x"],
                 ["spdm-emu"], ["tsm", "connect", "--spdm-emu", "h:1", "--trust-anchor", "a"]):
        a = p.parse_args([*argv, "--trace", "t", "--trace-format", "json", "--pcap", "p",
                          "--log-secrets"])
        assert (a.trace, a.trace_format, a.pcap, a.log_secrets) == ("t", "json", "p", True)
    assert p.parse_args(["run", "--trace"]).trace is True  # accepted; run always traces
    assert p.parse_args(["run"]).trace is False


def test_log_secrets_warns_and_is_opt_in(state_dir: Path) -> None:
    err = io.StringIO()
    ns = argparse.Namespace(trace=None, pcap=None, log_secrets=False)
    assert tracer_from_args(ns, "device", stderr=err) is None and err.getvalue() == ""
    tracer = tracer_from_args(argparse.Namespace(trace=None, pcap=None, log_secrets=True),
                              "device", stderr=err)
    assert tracer is not None and "WARNING" in err.getvalue()
    secrets = io.StringIO()
    run = traced_connect(state_dir, log_secrets=True, secrets_out=secrets)
    assert secrets.getvalue() == "".join(f"[DHE Secret]: {s.hex()}\n" for s in run.secrets)
    # The trace itself never carries the secret, flag or not.
    assert run.secrets[0].hex() not in run.device_trace


def test_pcap_needs_doe_objects() -> None:
    ns = argparse.Namespace(trace=None, pcap="x.pcap", log_secrets=False)
    with pytest.raises(SystemExit, match="pci_doe"):
        tracer_from_args(ns, "device", doe_wire=False)


# ---- vdev trace show -------------------------------------------------------------------


@pytest.fixture(scope="module", params=["text", "json"])
def trace_file(request: pytest.FixtureRequest, state_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = traced_connect(state_dir, fmt=request.param)
    path = tmp_path_factory.mktemp("show") / f"device.{request.param}"
    path.write_text(run.device_trace)
    return path, run.tsm.evidence()["spdm"]["session_id"]


def _show(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["trace", "show", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_show_filters(trace_file: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, sid = trace_file
    every = _show(capsys, str(path))
    assert len(every) > 100 and "DISCOVERY index=0" in every[0]
    tdisp = _show(capsys, str(path), "--protocol", "tdisp")
    assert tdisp and all(" tdisp " in ln and "TDISP " in ln for ln in tdisp)
    keyprog = _show(capsys, str(path), "--message", "key_prog")
    assert len(keyprog) == 6 and all("IDE_KM KEY_PROG" in ln for ln in keyprog)
    kx = _show(capsys, str(path), "--message", "KEY_EXCHANGE_RSP")
    assert len(kx) == 1 and f"session={sid}" in kx[0]
    session = _show(capsys, str(path), "--session", sid)
    assert session and all(f"sess={sid}" in ln for ln in session)
    assert _show(capsys, str(path), "--session", "0x12345678") == []
    doe_lines = _show(capsys, str(path), "--protocol", "doe", "--message", "DISCOVERY")
    assert len(doe_lines) == 3
    assert _show(capsys, str(path), "--errors") == []
    as_json = _show(capsys, str(path), "--message", "LOCK_INTERFACE_REQUEST", "--json")
    assert json.loads(as_json[0])["summary"].startswith("TDISP LOCK_INTERFACE_REQUEST")
    # Every event has a time; none has a "t" it does not know (a text trace has no date).
    for line in _show(capsys, str(path), "--json"):
        ev = json.loads(line)
        if path.suffix == ".text":
            assert "t" not in ev and re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", ev["time"]), ev
        else:
            assert isinstance(ev["t"], float) and ev["t"] > 1.6e9, ev


def test_show_errors(state_dir: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    device = TeeDevice(state_dir=state_dir)
    path = tmp_path / "errors.trace"
    args = build_parser().parse_args(["spdm-emu", "--trace", str(path)])
    served = trace_device(args, device)
    # GET_DIGESTS before GET_VERSION: the responder answers ERROR.
    served.doe_object(bytes.fromhex("0100010003000000" "10810000"))
    served.doe_object(bytes.fromhex("0100010003000000"))  # Length says 3 DW, 2 written
    lines = _show(capsys, str(path), "--errors")
    assert len(lines) == 2
    assert "<- spdm  - ERROR UNEXPECTED_REQUEST" in lines[0]
    assert "discarded" in lines[1]
