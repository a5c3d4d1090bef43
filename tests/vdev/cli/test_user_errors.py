"""Wrong input on the command line: one clear line and a non-zero exit, never a Python
traceback (issue 15).  Each case runs `vdev` in its own process, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.cli import one_line_error, vdev
from tests.helpers.spdm_emu_server import EmuHandle
from vdev.vm.env import REPO


def test_run_with_an_unknown_profile_names_the_shipped_ones() -> None:
    line = one_line_error(vdev("run", "--profile", "nosuch"), "vdev run:")
    assert line.startswith("vdev run: profile 'nosuch' is neither a file nor a shipped "
                           "profile"), line
    assert "auth-only-spdm12, default, full, pqc, pqc-kem" in line


def test_run_with_a_badly_typed_profile_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('msix_vectors = "lots"\n')
    out = vdev("run", "--profile", bad)
    line = one_line_error(out, "vdev run:")
    assert line == f"vdev run: bad profile {bad}: profile key 'msix_vectors': expected " \
        "int, got 'lots'"
    assert out.returncode == 1


def test_run_refuses_a_profile_that_cannot_reach_run_saying_why() -> None:
    """auth-only-spdm12 is shipped and `serve`/`vm` take it; `run` checks a connect to RUN
    that such a device cannot do, and says so instead of booting into failures."""
    out = vdev("run", "--profile", "auth-only-spdm12")
    line = one_line_error(out, "vdev run:")
    assert line.startswith("vdev run: profile 'auth-only-spdm12' lacks the TEE-IO bit "
                           "(tee_io = false) and secure sessions (no KEY_EX capability), so "
                           "the guest's connect to RUN that `vdev run` checks cannot happen")
    assert "vdev vm --profile auth-only-spdm12" in line
    assert out.returncode == 1


@pytest.mark.parametrize(("option", "spelled"), [("--qemu-ide", "QEMU_IDE=1"),
                                                 ("--doe-batch", "DOE_BATCH=1")])
def test_run_on_the_patched_qemu_refuses_a_qemu_of_ones_own(option: str, spelled: str) -> None:
    """QEMU_IDE=1 and DOE_BATCH=1 need make qemu's QEMU: a QEMU= beside them is refused,
    not silently replaced."""
    out = vdev("run", option, env={**os.environ, "QEMU": "/opt/my/qemu-system-x86_64"})
    line = one_line_error(out, "vdev run:")
    assert line == f"vdev run: {spelled} runs make qemu's QEMU; leave out " \
        "QEMU=/opt/my/qemu-system-x86_64"
    assert out.returncode == 1


def test_tsm_serve_with_a_trust_anchor_that_is_no_certificate(tmp_path: Path) -> None:
    notpem = tmp_path / "notpem"
    notpem.write_text("hi\n")
    line = one_line_error(vdev("tsm", "serve", "--socket", tmp_path / "t.sock",
                               "--trust-anchor", notpem), "vdev tsm serve:")
    assert line.startswith(f"vdev tsm serve: --trust-anchor {notpem}: not a certificate "
                           "(PEM, or one DER certificate): ")


def test_tsm_serve_with_a_bad_policy(tmp_path: Path, emu_state_dir: Path) -> None:
    from vdev.endpoint.identity_store import load_or_generate
    from vdev.profiles import DeviceProfile

    anchor = load_or_generate(DeviceProfile(), emu_state_dir).trust_anchor
    policy = tmp_path / "policy.toml"
    policy.write_text("garbage[\n")
    line = one_line_error(vdev("tsm", "serve", "--socket", tmp_path / "t.sock",
                               "--trust-anchor", anchor, "--policy", policy),
                          "vdev tsm serve:")
    assert line.startswith(f"vdev tsm serve: --policy {policy}: ")
    policy.write_text('[measurements]\n1 = "zz"\n')
    line = one_line_error(vdev("tsm", "serve", "--socket", tmp_path / "t.sock",
                               "--trust-anchor", anchor, "--policy", policy),
                          "vdev tsm serve:")
    assert line.startswith(f"vdev tsm serve: --policy {policy}: ")


def test_tsm_connect_with_a_trust_anchor_that_is_no_certificate(tmp_path: Path) -> None:
    notpem = tmp_path / "notpem"
    notpem.write_bytes(b"\x00\x01garbage")
    line = one_line_error(vdev("tsm", "connect", "--spdm-emu", "127.0.0.1:1",
                               "--trust-anchor", notpem), "vdev tsm connect:")
    assert "not a certificate" in line


def test_spdm_emu_with_a_port_out_of_range() -> None:
    out = vdev("spdm-emu", "--port", "99999")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith(
        "argument --port: 99999 is not a TCP port (0..65535)")


@pytest.fixture
def pcap(emu: EmuHandle, tmp_path: Path) -> Path:
    """A pcap of a real connect (vdev tsm connect against the in-process device)."""
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    path = tmp_path / "tsm.pcap"
    out = vdev("tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor",
               anchor, "--pcap", path, "--trace", tmp_path / "tsm.trace")
    assert out.returncode == 0, out.stdout + out.stderr
    return path


def test_trace_show_decodes_a_pcap(pcap: Path) -> None:
    out = vdev("trace", "show", pcap)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert " pcap -> spdm  - GET_VERSION" in lines[1]
    assert " pcap <- spdm  - VERSION 1.2 1.3" in lines[3]
    assert any(" pcap <- spdm  sess=0xff000001 KEY_EXCHANGE_RSP slot=0 session=0xff000001 "
               in ln for ln in lines)
    assert any("SECURED_SPDM" in ln and "(encrypted record)" in ln for ln in lines)
    assert "Traceback" not in out.stderr


def test_trace_show_into_a_closed_pipe_exits_quietly(pcap: Path) -> None:
    shell = (f"{sys.executable} -m vdev.cli trace show {pcap} | head -1; "
             "echo status=${PIPESTATUS[0]}")
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                         cwd=REPO, stdin=subprocess.DEVNULL)
    assert out.stderr == ""
    first, status = out.stdout.splitlines()
    assert "GET_VERSION" not in first and "SPDM 3 DW" in first
    assert status == "status=141"  # what coreutils report: killed by SIGPIPE


def test_trace_show_refuses_what_is_not_a_trace(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"spdm": {"version": "1.3"}, "tdis": {}}, indent=2))
    line = one_line_error(vdev("trace", "show", evidence), "vdev trace show:")
    assert line.startswith(f"vdev trace show: {evidence} is not a trace: it holds JSON, but "
                           "no trace events")
    log = tmp_path / "device.log"
    log.write_text("16:59:29.263 INFO    vdev.endpoint.tee_device: device identity\n")
    line = one_line_error(vdev("trace", "show", log), "vdev trace show:")
    assert line.startswith(f"vdev trace show: {log} is not a trace (its first line reads "
                           "'16:59:29.263 INFO    vdev.endpoint.tee_device: ")


def test_trace_to_dev_full_is_reported(emu: EmuHandle, tmp_path: Path) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    out = vdev("tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor",
               anchor, "--trace", "/dev/full")
    line = one_line_error(out, "vdev tsm connect:")
    assert line == "vdev tsm connect: trace incomplete: --trace /dev/full: No space left " \
        "on device"
    assert out.returncode == 1
    # ... and said when it happened, as an error log line.
    assert "ERROR   vdev.trace.tracer: trace output failed, --trace /dev/full" in out.stderr
    assert "vdev tsm: ok" in out.stdout  # the connect itself went on


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vdev.cli as cli

    def broken(args: object) -> int:
        raise RuntimeError("something vdev got wrong")

    monkeypatch.setattr(cli, "cmd_vm", broken)
    assert cli.main(["vm"]) == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err == "vdev vm: internal error: RuntimeError: something vdev got wrong (a bug in " \
        "vdev; `vdev --log-level debug ...` shows where)\n"
    assert cli.main(["vm", "--log-level", "debug"]) == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err


def test_log_level_and_ctl_options_are_taken_after_the_command() -> None:
    from vdev.cli import build_parser

    args = build_parser().parse_args(["ctl", "--socket", "s", "status", "--compact",
                                      "--log-level", "debug"])
    assert args.compact and args.log_level == "debug"
    args = build_parser().parse_args(["ctl", "--compact", "--socket", "s", "status"])
    assert args.compact and args.log_level == "info"
    args = build_parser().parse_args(["ctl", "--socket", "s", "faults", "list",
                                      "--device", "1"])
    assert args.device == "1"


def test_help_is_for_users() -> None:
    connect = vdev("tsm", "connect", "--help").stdout
    assert "only module of tsm" not in connect and "sleeps a ResponseNotReady" not in connect
    assert "--trust-anchor \"$(vdev identity trust-anchor)\"" in connect
    serve = vdev("tsm", "serve", "--help").stdout
    assert "usage: vdev tsm serve [-h] --socket PATH --trust-anchor FILE [--policy" in serve
    for command in ("run", "vm"):
        text = " ".join(vdev(command, "--help").stdout.split())
        assert "a shipped profile's name (vdev/profiles/) or a TOML file" in text, text
    faults = " ".join(vdev("ctl", "--socket", "s", "faults", "--help").stdout.split())
    assert "clear: remove every armed fault" in faults
    assert "faults clear --fault '{\"kind\": \"error\"}'" in faults


def test_spdm_emu_takes_faults_and_refuses_doe_delay() -> None:
    out = vdev("spdm-emu", "--port", "0", "--fault", "doe_delay:delay_ms=1500")
    line = one_line_error(out, "vdev spdm-emu:")
    assert "--fault delay:doe,delay_ms=MS delays the reply on the socket instead" in line
    out = vdev("spdm-emu", "--port", "0", "--fault", "corrupt:KEY_EXCHANGE:field=sig")
    line = one_line_error(out, "vdev spdm-emu:")
    assert "KEY_EXCHANGE_RSP (the response to KEY_EXCHANGE) has no field 'sig'" in line


def test_vm_without_a_terminal_refuses_before_starting_anything(tmp_path: Path) -> None:
    """`vdev vm </dev/null` would boot a shell nobody can type into and wait forever."""
    out = vdev("vm", "--workdir", tmp_path / "vm")
    line = one_line_error(out, "vdev vm:")
    assert line == "vdev vm: the guest shell needs a terminal on stdin; without one, " \
        "`vdev run` boots the guest and reports"
    assert out.returncode == 1
    assert not (tmp_path / "vm").exists()


def test_tsm_connect_as_a_module_goes_through_the_guard(tmp_path: Path) -> None:
    """`python -m vdev.cli.tsm_connect connect ...` is `vdev tsm connect ...`: a Ctrl-C
    while the device does not answer is one line and exit 130, never a traceback."""
    import signal
    import socket
    import time

    anchor = tmp_path / "root.pem"
    from spdm.identity import generate_identity

    anchor.write_bytes(generate_identity().root.public_bytes(serialization.Encoding.PEM))
    with socket.socket() as mute:  # accepts, never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        port = mute.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "vdev.cli.tsm_connect", "connect", "--spdm-emu",
             f"127.0.0.1:{port}", "--trust-anchor", str(anchor)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        conn, _ = mute.accept()
        with conn:
            time.sleep(0.5)  # inside the first exchange
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == \
        "vdev tsm connect: interrupted", err
    bad = subprocess.run([sys.executable, "-m", "vdev.cli.tsm_connect", "connect",
                          "--spdm-emu", "127.0.0.1:1", "--trust-anchor", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    one_line_error(bad, "vdev tsm connect:")


@pytest.mark.parametrize("failure, status, line", [
    (RuntimeError("boom"), 70, "vdev qemu build: internal error: RuntimeError: boom"),
    (KeyboardInterrupt(), 130, "vdev qemu build: interrupted"),
    (OSError(28, "No space left on device"), 1, "vdev qemu build: [Errno 28] No space left"),
])
def test_make_qemu_goes_through_the_guard_and_stops_its_children(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        failure: BaseException, status: int, line: str) -> None:
    import vdev.cli as cli
    from vdev.vm import qemu_build

    stopped: list[bool] = []

    def fails(**_kw: object) -> Path:
        raise failure

    monkeypatch.setattr(qemu_build, "ensure_qemu", fails)
    monkeypatch.setattr(qemu_build, "stop_children", lambda: stopped.append(True))
    assert cli.main(["qemu", "build"]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(line), err
    assert stopped == [True]


def test_make_qemu_says_what_failed_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import vdev.cli as cli
    from vdev.vm import qemu_build

    def fails(**_kw: object) -> Path:
        raise qemu_build.QemuBuildError("apt-get failed: no network")

    monkeypatch.setattr(qemu_build, "ensure_qemu", fails)
    monkeypatch.setattr(qemu_build, "stop_children", lambda: None)
    assert cli.main(["qemu", "build"]) == 1
    assert capsys.readouterr().err == "vdev qemu build: apt-get failed: no network\n"
