"""A full connect in-process: the TSM model over the device model's own DOE mailbox (the
register sequence of Linux drivers/pci/doe.c), both sides traced."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tsm import DeviceRef, TsmConfig, TsmModel
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice
from vdev.trace.attach import TracedClient, attach_device
from vdev.trace.pcap import PcapWriter
from vdev.trace.tracer import Tracer

DOE_CAP = 0x100


class _Unclosing(io.BytesIO):
    def close(self) -> None:  # keep the bytes readable after Tracer.close()
        pass


@dataclass
class Run:
    device: TeeDevice
    device_trace: str
    tsm_trace: str
    pcap: bytes
    tsm: TsmModel
    secrets: list[bytes] = field(default_factory=list)  # DHE secrets, captured off-band
    random_out: list[bytes] = field(default_factory=list)  # every TSM random (IDE keys...)


def traced_connect(state_dir: Path, *, fmt: str = "text", log_secrets: bool = False,
                   secrets_out: io.StringIO | None = None,
                   steps: Callable[[TsmModel], list[Callable[[], object]]] | None = None) -> Run:
    device = TeeDevice(state_dir=state_dir)
    dev_out, tsm_out, pcap = io.StringIO(), io.StringIO(), _Unclosing()
    dev_tracer = Tracer("device", out=dev_out, fmt=fmt, pcap=PcapWriter(pcap),
                        log_secrets=log_secrets, secrets_out=secrets_out)
    attach_device(dev_tracer, device)
    secrets: list[bytes] = []
    # Capture the DHE secret without the opt-in sink, to check that it never leaks.
    original = device.responder._reveal

    def reveal(label: str, secret: bytes) -> None:
        secrets.append(secret)
        original(label, secret)

    device.responder._reveal = reveal  # type: ignore[method-assign]
    cfg = device.config
    doe = DoeRequester(lambda off: cfg.read_int(off, 4),
                       lambda off, v: cfg.write_int(off, 4, v), DOE_CAP)
    doe.discover()  # as the kernel does before any SPDM (pci_doe_cache_features)

    tsm_tracer = Tracer("tsm", out=tsm_out, fmt=fmt, infer_state=True)
    randoms: list[bytes] = []

    def random(n: int) -> bytes:
        out = os.urandom(n)
        randoms.append(out)
        return out

    class Port:
        def doe_exchange(self, doe_type: int, payload: bytes) -> bytes:
            return doe.exchange_bytes(doe_type, payload)

    client = TracedClient(Port(), tsm_tracer)
    tsm = TsmModel(DeviceRef(0, 1, 0), TsmConfig(
        trust_anchors=[device.identity.root], stream_id=None, random=random),
        tsm_tracer.spdm_hooks())
    plan = steps(tsm) if steps else [tsm.connect, lambda: tsm.lock(0),
                                     lambda: tsm.report(0), lambda: tsm.start(0),
                                     tsm.disconnect]
    for make in plan:
        op = make()
        while not op.done:  # type: ignore[attr-defined]
            req = op.next_request  # type: ignore[attr-defined]
            op.feed(client.doe_exchange(req.doe_type, req.payload))  # type: ignore[attr-defined]
        assert op.result.ok, op.result.reason  # type: ignore[attr-defined]
    return Run(device, dev_out.getvalue(), tsm_out.getvalue(), pcap.getvalue(), tsm,
               secrets, randoms)
