"""In-process benchmark of connect-to-RUN, per phase (used by `make bench`).

Builds device-side protocol engines (SPDM responder with a generated identity, IDE_KM
over an in-memory IDE target, TDISP with one TDI; no vdev device model) and drives the
TSM model against them directly.  Each DOE exchange is charged to the phase the model
is in when it asks for it (`TsmOperation.phase`), so the figures include both sides'
work for that phase:

    authentication  VCA, DIGESTS, CERTIFICATE + chain validation, signed MEASUREMENTS
    session         KEY_EXCHANGE + FINISH
    ide_km          QUERY, 6 x KEY_PROG, 6 x K_SET_GO (and root-port programming)
    tdisp           VERSION, CAPABILITIES, LOCK, REPORT, START, state checks

    from bench.tsm_connect import bench_connect_to_run
    bench_connect_to_run(rounds=5)   # {"authentication": s, ..., "total": s, "exchanges": n}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from spdm.identity import CertSlots, DeviceIdentity, IdentityParams, generate_identity
from spdm.measurements import default_measurements
from spdm.responder import Responder, ResponderConfig
from tdisp.device_interface import DeviceInterface, MmioBar
from tdisp.dispatcher import PciSigVdmDispatcher
from tdisp.ide_target import InMemoryIdeTarget
from tdisp.idekm_responder import IdeKmResponder
from tdisp.responder import TdispResponder
from tdisp.vendor_defined import PCISIG_VENDOR_ID_BYTES, STANDARD_ID_PCISIG
from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.model import TsmConfig, TsmModel
from tsm.operations import TsmOperation

PHASES = ("authentication", "session", "ide_km", "tdisp")
_DEVICE = DeviceRef(0, 1, 0)
_BARS = (MmioBar(0, 0xFE00_0000, 0x1_0000, msix_table=(0x8000, 0x100),
                 msix_pba=(0x9000, 8)),)


def _device(ident: DeviceIdentity) -> Callable[[int, bytes], bytes]:
    rsp = Responder(ResponderConfig(slots=CertSlots({0: ident}),
                                    measurements=lambda: default_measurements()))
    idekm = IdeKmResponder(InMemoryIdeTarget(streams={0: {0, 1}}))
    tdisp = TdispResponder([DeviceInterface(_DEVICE.tdi(0), bars=_BARS)], ide=idekm)
    vdm = PciSigVdmDispatcher(idekm, tdisp)
    rsp.register_vendor_handler(STANDARD_ID_PCISIG, PCISIG_VENDOR_ID_BYTES,
                                vdm.spdm_handler())

    def exchange(doe_type: int, payload: bytes) -> bytes:
        return rsp.handle_doe(doe_type, payload)[1]

    return exchange


def _run(op: TsmOperation, exchange: Callable[[int, bytes], bytes],
         acc: dict[str, float], counts: dict[str, int],
         clock: Callable[[], float]) -> None:
    t = clock()
    while not op.done:
        req = op.next_request
        assert req is not None
        phase = op.phase or "authentication"
        op.feed(exchange(req.doe_type, req.payload))
        now = clock()
        acc[phase] = acc.get(phase, 0.0) + now - t
        counts[phase] = counts.get(phase, 0) + 1
        t = now
    assert op.result is not None
    if not op.result.ok:
        raise RuntimeError(op.result.reason)


def bench_connect_to_run(
    rounds: int = 3, *, key_type: str = "ecdsa-p384",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Mean seconds per phase over `rounds` fresh connect-to-RUN runs, plus `total` and
    the number of DOE exchanges per phase (`exchanges`)."""
    ident = generate_identity(IdentityParams(key_type=key_type))
    acc: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    counts: dict[str, int] = {}
    for _ in range(rounds):
        exchange = _device(ident)
        tsm = TsmModel(_DEVICE, TsmConfig(trust_anchors=[ident.root]))
        _run(tsm.connect(), exchange, acc, counts, clock)
        _run(tsm.lock(0), exchange, acc, counts, clock)
        _run(tsm.report(0, [ExpectedBar(b.index, b.base, b.size) for b in _BARS]),
             exchange, acc, counts, clock)
        _run(tsm.start(0), exchange, acc, counts, clock)
    out: dict[str, Any] = {p: acc[p] / rounds for p in PHASES}
    out["total"] = sum(out[p] for p in PHASES)
    out["exchanges"] = {p: counts.get(p, 0) // rounds for p in PHASES}
    out["rounds"] = rounds
    out["key_type"] = key_type
    return out


def main() -> None:
    r = bench_connect_to_run()
    for p in PHASES:
        print(f"{p:15s} {r[p] * 1000:8.2f} ms  ({r['exchanges'][p]} DOE exchanges)")
    print(f"{'total':15s} {r['total'] * 1000:8.2f} ms")


if __name__ == "__main__":
    main()
