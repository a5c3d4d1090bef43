"""The QEMU invocation and console parsing used by make run and the guest tests."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach, VmResult, VmSpec, qemu_command, run_vm


def test_device_behind_root_port_with_json_socket(tmp_path: Path) -> None:
    env = VmEnv(tmp_path, qemu_override=Path("/usr/bin/qemu-x"))
    spec = VmSpec(env=env, initrd=tmp_path / "i.gz",
                  devices=[VfioUserAttach(Path("/tmp/a.sock")), VfioUserAttach(Path("/tmp/b.sock"),
                                                                               id="vu1")])
    argv = qemu_command(spec, "tcg")
    assert argv[0] == "/usr/bin/qemu-x"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "max"
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in argv
    devs = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devs[0] == "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1"
    vu = json.loads(devs[1])
    assert vu == {"driver": "vfio-user-pci", "id": "vu0", "bus": "rp1", "addr": "0x0",
                  "socket": {"type": "unix", "path": "/tmp/a.sock"}, "rombar": 0}
    assert json.loads(devs[3])["bus"] == "rp2"


def test_root_port_options_reach_only_their_port(tmp_path: Path) -> None:
    spec = VmSpec(env=VmEnv(tmp_path, qemu_override=Path("/usr/bin/qemu-x")),
                  initrd=tmp_path / "i.gz",
                  devices=[VfioUserAttach(Path("/tmp/a.sock"), root_port="x-ide-streams=4"),
                           VfioUserAttach(Path("/tmp/b.sock"), id="vu1")])
    argv = qemu_command(spec, "tcg")
    devs = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devs[0] == "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,x-ide-streams=4"
    assert devs[2] == "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2"


def test_posted_config_writes_only_where_asked(tmp_path: Path) -> None:
    spec = VmSpec(env=VmEnv(tmp_path, qemu_override=Path("/usr/bin/qemu-x")),
                  initrd=tmp_path / "i.gz",
                  devices=[VfioUserAttach(Path("/tmp/a.sock"), post_config_writes=True),
                           VfioUserAttach(Path("/tmp/b.sock"), id="vu1")])
    devs = [json.loads(a) for a in qemu_command(spec, "tcg") if a.startswith("{")]
    assert devs[0]["x-post-config-writes"] is True
    assert "x-post-config-writes" not in devs[1]  # stock QEMU would refuse the property


def test_doe_batch_only_where_asked(tmp_path: Path) -> None:
    spec = VmSpec(env=VmEnv(tmp_path, qemu_override=Path("/usr/bin/qemu-x")),
                  initrd=tmp_path / "i.gz",
                  devices=[VfioUserAttach(Path("/tmp/a.sock")),
                           VfioUserAttach(Path("/tmp/b.sock"), id="vu1", doe_batch=True)])
    devs = [json.loads(a) for a in qemu_command(spec, "tcg") if a.startswith("{")]
    assert "x-doe-batch" not in devs[0]
    assert devs[1]["x-doe-batch"] is True and "x-post-config-writes" not in devs[1]


def test_console_records() -> None:
    res = VmResult(accel="tcg", returncode=0, timed_out=False, seconds=1.0, argv=[],
                   console=["noise\n", "@@VDEV boot 7.3.4\r\n", "x@@VDEV doe_features a b\n",
                            "@@DMESG [ 1.0] hello\n", "@@VDEV done 0\n"])
    assert res.records == [("boot", "7.3.4"), ("doe_features", "a b"), ("done", "0")]
    assert res.value("doe_features") == "a b"
    assert res.dmesg == ["[ 1.0] hello"]
    assert res.completed


class _Interrupted(Exception):
    pass


def test_an_interrupted_boot_leaves_the_console_readers_nothing_to_trip_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a boot: QEMU is killed and the log closes with the run, while a
    reader may still be draining what QEMU printed. No reader may fail on the closed
    log (that printed a thread traceback under `make run`'s interrupted line)."""
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\nwhile :; do seq 1 2000; echo err >&2; done\n")
    qemu.chmod(0o755)
    spec = VmSpec(env=VmEnv(tmp_path, qemu_override=qemu), initrd=tmp_path / "i.gz",
                  accel="tcg", timeout=60)
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    never = threading.Event()

    def slow(_: str) -> None:
        never.wait(0.0005)

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(_Interrupted):
            # A slow console hook keeps the stdout reader behind QEMU's output, so
            # it still holds lines when the run is interrupted.
            run_vm(spec, tmp_path / "console.log", on_line=slow)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(0.2)  # any reader still running would now hit the closed log
    assert failures == []
    assert (tmp_path / "console.log").read_text().count("\n2000\n") >= 1
