"""DOE object throughput through the vfio-user socket, against `vdev serve`.

The DOE mailbox is driven with config-space REGION_READ/REGION_WRITE the way
Linux drivers/pci/doe.c does it (vdev.doe.requester: header and payload DWs to
the write mailbox, GO, poll STATUS, read and acknowledge every response DW),
by the in-repo Python vfio-user client.

Which objects: SPDM GET_CERTIFICATE exchanges after VCA, sized so the response
object (8-byte DOE header + CERTIFICATE, DW padded) is exactly 64 B or 4 KiB:

    CERTIFICATE = 8-byte SPDM header + portion, so portion = size - 16 bytes
    64 B  : portion   48 bytes,  16 response DWs
    4 KiB : portion 4080 bytes, 1024 response DWs

Every exchange also moves one 16-byte GET_CERTIFICATE request object; the
figure is exchanges (= response objects of that size) per second.  A 4080-byte
portion needs a certificate chain longer than that, so the device runs a
profile with an RSA-4096 identity (about 4.6 KB of chain); the chain's content
does not matter to the mailbox.  At the end GET_VERSION resets the responder's
transcript, which grows with every GET_CERTIFICATE.  Measured as the scheduler
places the two processes, and again with both pinned to one CPU (`same_cpu`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from spdm.algorithms import BaseAsym, BaseHash
from spdm.messages import GetCertificate, encode
from spdm.requester import AlgorithmOffer, Outgoing, Requester, RequesterConfig
from vdev.doe.data_object import PCI_SIG_VENDOR_ID, DoeProtocolId, build_object
from vdev.doe.requester import DoeRequester
from vdev.pci.device_api import RegionIndex
from vdev.vfio_user.client import VfioUserClient
from vdev.vm.session import device_server

DOE_CAP = 0x100  # default profile layout
DOE_TYPE_SPDM = 0x01
DOE_HEADER_SIZE = 8
CERTIFICATE_HEADER_SIZE = 8
SIZES = {"64B": 64, "4KiB": 4096}
PROFILE = 'identity_key_type = "rsa-4096"\n'
C_DOE_SOURCE = Path(__file__).resolve().parent / "vfio_user_doe.c"


def _get_certificate(version: int, offset: int, length: int) -> bytes:
    return encode(GetCertificate, {"version": version, "param1": 0, "offset": offset,
                                   "length": length})


def _rate(doe: DoeRequester, request: bytes, want: int, seconds: float,
          min_n: int) -> dict[str, Any]:
    """Exchanges per second, running for about `seconds` (at least `min_n` exchanges)."""
    n, t0 = 0, time.perf_counter()
    while True:
        reply = doe.exchange_bytes(DOE_TYPE_SPDM, request)
        if DOE_HEADER_SIZE + len(reply) != want:
            raise RuntimeError(f"response object of {DOE_HEADER_SIZE + len(reply)} bytes, "
                               f"wanted {want}")
        n += 1
        elapsed = time.perf_counter() - t0
        if n >= min_n and elapsed >= seconds:
            break
    return {"objects": n, "objects_per_s": round(n / elapsed, 1),
            "ms_per_exchange": round(elapsed / n * 1000, 3),
            "response_bytes_per_s": round(n * want / elapsed)}


def build_c_doe(workdir: Path) -> Path | str:
    """bench/vfio_user_doe.c compiled, or why not."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "skipped: no C compiler (cc, gcc or clang) on PATH"
    exe = workdir / "vfio_user_doe"
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(C_DOE_SOURCE)], capture_output=True,
                          text=True, check=False)
    return exe if proc.returncode == 0 else f"skipped: {proc.stderr.strip()[:200]}"


def _c_rate(exe: Path, fd: int, cpu: int, request: bytes, size: int,
            n: int = 20) -> dict[str, Any]:
    """`n` exchanges by the C client (doe.c's accesses, no interpreter on the client
    side) on the connected socket `fd`, pinned to `cpu`: median time per exchange."""
    obj = build_object(DoeProtocolId(PCI_SIG_VENDOR_ID, DOE_TYPE_SPDM), request)
    proc = subprocess.run([str(exe), str(fd), str(n), str(DOE_CAP), obj.hex(), str(size // 4)],
                          pass_fds=(fd,), capture_output=True, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    if proc.returncode != 0:
        raise RuntimeError(f"C DOE client failed ({proc.returncode}): {proc.stderr.strip()}")
    accesses, *times = (int(x) for x in proc.stdout.split())
    ms = statistics.median(times) / 1e6
    return {"objects": n, "ms_per_exchange": round(ms, 3), "objects_per_s": round(1000 / ms, 1),
            "config_accesses_per_exchange": accesses}


def _same_cpu(doe: DoeRequester, requests: dict[str, bytes], server_pid: int,
              seconds: float, fd: int | None = None,
              workdir: Path | None = None) -> dict[str, Any]:
    """The same with this process and the server pinned to one CPU (the one where a
    short 64 B probe runs faster): each config access is then a round trip without a
    cross-CPU wake-up, which in a VM costs an IPI each way (see vfio_user_c).  With
    the client's socket `fd`, also the C client (bench/vfio_user_doe.c) on it."""
    cpus = sorted(os.sched_getaffinity(0))
    saved_self, saved_server = os.sched_getaffinity(0), os.sched_getaffinity(server_pid)
    try:
        probe: dict[int, float] = {}
        for cpu in cpus[:2]:
            os.sched_setaffinity(0, {cpu})
            os.sched_setaffinity(server_pid, {cpu})
            probe[cpu] = _rate(doe, requests["64B"], SIZES["64B"], seconds / 8,
                               min_n=5)["objects_per_s"]
        cpu = max(probe, key=lambda c: probe[c])
        os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(server_pid, {cpu})
        out: dict[str, Any] = {"cpu": cpu}
        for name, size in SIZES.items():
            out[name] = _rate(doe, requests[name], size, seconds, min_n=5)
        if fd is not None and workdir is not None:
            exe = build_c_doe(workdir)
            for name, size in SIZES.items():
                out[f"{name}_c_client"] = (
                    _c_vs_floor(exe, fd, cpu, requests[name], size, workdir)
                    if isinstance(exe, Path) else {"skipped": exe})
        return out

    finally:
        os.sched_setaffinity(0, saved_self)
        os.sched_setaffinity(server_pid, saved_server)


def _c_vs_floor(exe: Path, fd: int, cpu: int, request: bytes, size: int, workdir: Path,
                rounds: int = 9) -> dict[str, Any]:
    """The C client's exchanges side by side with the round-trip floor: in each round
    one exchange, then as many config reads as it made from the C client against the
    blocking floor server (bench/config_access.py), summed.  Under load the sum of
    2057 round trips is dominated by their tail, so the floor is measured the same
    way, in the same rounds, not derived from a p50."""
    from bench.config_access import build_floor_server, c_round_trips, floor_target
    from bench.vfio_user_c import build_c_client

    first = _c_rate(exe, fd, cpu, request, size, n=1)
    client, floor = build_c_client(workdir), build_floor_server(workdir)
    if not isinstance(client, Path) or not isinstance(floor, Path):
        return {**first, "floor": f"skipped: {client if isinstance(floor, Path) else floor}"}
    accesses = first["config_accesses_per_exchange"]
    ours, floors = [], []
    image = bytes(4096)
    with floor_target(floor, "blocking", image, cpu) as target:
        sock = target.connect()
        for _ in range(rounds):
            ours.append(_c_rate(exe, fd, cpu, request, size, n=1)["ms_per_exchange"])
            floors.append(sum(c_round_trips(client, sock, accesses, cpu, 0, image[:4])) / 1e6)
    ms, floor_ms = statistics.median(ours), statistics.median(floors)
    ratios = [a / b for a, b in zip(ours, floors, strict=True)]
    return {"objects": rounds, "ms_per_exchange": round(ms, 3),
            "objects_per_s": round(1000 / ms, 1), "config_accesses_per_exchange": accesses,
            "floor_ms_per_exchange": round(floor_ms, 3),
            # Rounds are pairs measured back to back: the median of their ratios.
            "ratio_to_floor_side_by_side": round(statistics.median(ratios), 2),
            "ratio_of_medians": round(ms / floor_ms, 2),
            "round_ratios": [round(r, 2) for r in ratios]}


def run_doe_throughput(workdir: Path, seconds: float = 2.0) -> dict[str, Any]:
    profile = workdir / "doe-bench.toml"
    profile.write_text(PROFILE)
    server = device_server(workdir, "doe-bench",
                           ["--profile", str(profile), "--state-dir",
                            str(workdir / "doe-bench-state")]).start(timeout=120)
    try:
        with VfioUserClient(str(server.socket)) as c:
            c.negotiate()
            cfg = RegionIndex.CONFIG
            accesses = [0]

            def rd(off: int) -> int:
                accesses[0] += 1
                return int.from_bytes(c.region_read(cfg, off, 4), "little")

            def wr(off: int, value: int) -> None:
                accesses[0] += 1
                c.region_write(cfg, off, value.to_bytes(4, "little"))

            doe = DoeRequester(rd, wr, DOE_CAP)
            doe.abort()
            req = Requester(RequesterConfig(trust_anchors=[], algorithms=AlgorithmOffer(
                base_asym=int(BaseAsym.RSASSA_4096), base_hash=int(BaseHash.SHA_384))))

            def transport(out: Outgoing) -> bytes:
                return doe.exchange_bytes(out.doe_type, out.data)

            req.run(req.init_connection(), transport)
            version = req.conn.version
            out: dict[str, Any] = {
                "target": None,  # reported, not judged: no throughput target
                "method": "SPDM GET_CERTIFICATE after VCA; response object of the given size "
                          "(DOE header + CERTIFICATE), 16-byte request object; Python client",
            }
            requests = {name: _get_certificate(version, 0, size - DOE_HEADER_SIZE
                                               - CERTIFICATE_HEADER_SIZE)
                        for name, size in SIZES.items()}
            for name, size in SIZES.items():
                doe.exchange_bytes(DOE_TYPE_SPDM, requests[name])  # warm-up
                accesses[0] = 0
                result = _rate(doe, requests[name], size, seconds, min_n=5)
                result["config_accesses_per_exchange"] = round(accesses[0] / result["objects"])
                out[name] = result
            if server.proc is not None:
                out["same_cpu"] = _same_cpu(doe, requests, server.proc.pid, seconds,
                                            c.sock.fileno(), workdir)
            req.run(req.init_connection(), transport)  # GET_VERSION: drop the transcript
        return out
    finally:
        server.stop()
