"""The benchmark helpers run and report what they claim (short runs)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from bench.config_access import build_floor_server, c_round_trips, floor_target, run_config_access
from bench.doe_throughput import SIZES, run_doe_throughput
from bench.socket_floor import run_socket_floor
from bench.vfio_user_c import build_c_client, c_config_read
from vdev.vm.session import device_server

needs_cc = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
    reason="no C compiler")


@needs_cc
def test_c_client_reads_config_space_over_the_socket(tmp_path: Path) -> None:
    exe = build_c_client(tmp_path)
    assert isinstance(exe, Path), exe
    server = device_server(tmp_path).start()
    try:
        # c_config_read checks every reply against the one Python got for the same read.
        samples = c_config_read(exe, str(server.socket), 200, 10)
        assert len(samples) == 200 and all(s > 0 for s in samples)
        samples = c_config_read(exe, str(server.socket), 20, 0, offset=0x100, count=4)
        assert len(samples) == 20
    finally:
        server.stop()


def test_build_c_client_without_a_compiler_says_why(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = build_c_client(tmp_path)
    assert isinstance(reason, str) and reason.startswith("skipped: no C compiler")


@needs_cc
def test_socket_floor_includes_the_c_client(tmp_path: Path) -> None:
    floor = run_socket_floor(n=100, warmup=10, workdir=tmp_path)
    assert floor["c_client_asyncio_vfio_user_shape"]["n"] == 100


def test_doe_throughput_moves_objects_of_the_stated_sizes(tmp_path: Path) -> None:
    out = run_doe_throughput(tmp_path, seconds=0.0)
    for name in SIZES:
        assert out[name]["objects"] >= 5 and out[name]["objects_per_s"] > 0
    # 4 KiB response = 1024 DWs, each read and acknowledged: > 2048 config accesses.
    assert out["4KiB"]["config_accesses_per_exchange"] > 2048
    assert out["64B"]["config_accesses_per_exchange"] < 64
    assert out["same_cpu"]["4KiB"]["objects"] >= 5


@needs_cc
def test_floor_server_answers_like_the_device(tmp_path: Path) -> None:
    """The C client checks every reply byte: the floor server answers config reads
    from the image it was given, at any offset."""
    client, floor = build_c_client(tmp_path), build_floor_server(tmp_path)
    assert isinstance(client, Path) and isinstance(floor, Path), (client, floor)
    image = bytes(range(256)) * 16
    with floor_target(floor, "blocking", image, 0) as target:
        sock = target.connect()
        assert len(c_round_trips(client, sock, 50, 0, 0x104, image[0x104:0x108])) == 50
        assert len(c_round_trips(client, sock, 5, 0, 0xFFC, image[0xFFC:])) == 5
        with pytest.raises(RuntimeError, match="differs"):
            c_round_trips(client, sock, 1, 0, 0, b"\0\0\0\0")


@needs_cc
def test_config_access_side_by_side(tmp_path: Path) -> None:
    out = run_config_access(tmp_path, rounds=1, n=300)
    reads = out["reads"]["config_0"]
    assert {"floor_blocking", "floor_poll", "vdev_asyncio"} <= reads.keys()
    ours = reads["vdev_" + out["event_loop"].split()[0]]
    assert ours["ratio_to_floor"] == round(ours["p50_us"] / reads["floor_blocking"]["p50_us"], 2)
    assert out["interpreter"]["implementation"] == "CPython"
    calls = out["syscalls_per_request"]
    if isinstance(calls["vdev_asyncio"], dict):  # strace installed
        # One wait, one receive, one send per config access, like libvfio-user's three.
        assert calls["floor_blocking"]["total"] == pytest.approx(3, abs=0.05)
        for name in calls:
            if name.startswith("vdev_"):
                assert calls[name]["total"] == pytest.approx(3, abs=0.05), calls[name]
                assert calls[name]["recvmsg"] == pytest.approx(1, abs=0.05)


@needs_cc
def test_c_doe_client_moves_4_kib_objects(tmp_path: Path) -> None:
    """bench/vfio_user_doe.c makes doe.c's 2057 config accesses per 4 KiB response and
    checks the response length the device reports."""
    out = run_doe_throughput(tmp_path, seconds=0.0)
    c = out["same_cpu"]["4KiB_c_client"]
    assert c["config_accesses_per_exchange"] == 2057 and c["ms_per_exchange"] > 0
    assert out["same_cpu"]["64B_c_client"]["config_accesses_per_exchange"] == 41


def test_the_benchmarked_handshake_runs_to_the_end() -> None:
    """Every step of `make bench`'s handshake (HEARTBEAT included) is one the
    responder it benchmarks accepts."""
    from bench.spdm_bench import _IDENTITIES, SETS, _in_process_round
    from spdm.identity import IdentityParams, generate_identity

    identity = generate_identity(IdentityParams(key_type=_IDENTITIES["P-256"][0]))
    _in_process_round(SETS["P-256/SHA-256/AES-128-GCM"], identity)


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_a_signal_stops_make_bench_and_everything_it_started(tmp_path: Path, how: str) -> None:
    """Stopped while its first benchmark runs a `vdev serve`: one line, the shell's
    status for the signal, and no server or temporary directory left behind."""
    from tests.helpers.process_tree import (
        OnTerminal,
        kill_marked,
        private_env,
        wait_for,
        wait_gone,
    )

    tmpdir = tmp_path / "tmp"
    bench = OnTerminal([sys.executable, "-m", "bench"], private_env(tmpdir)).start()
    try:
        wait_for(tmpdir, "vdev.cli --event-loop")
        if how == "Ctrl-C":
            bench.send("\x03")  # the terminal signals its whole foreground group
        else:
            os.kill(bench.pid, signal.SIGTERM)
        status = bench.wait()
        assert wait_gone(tmpdir) == []
    finally:
        kill_marked(tmpdir)
    what = "interrupted" if how == "Ctrl-C" else "terminated"
    assert status == (130 if how == "Ctrl-C" else 143), bench.text[-2000:]
    assert bench.text.rstrip().endswith(f"make bench: {what}; servers and QEMU stopped")
    assert "Traceback" not in bench.text
    assert list(tmpdir.iterdir()) == []
