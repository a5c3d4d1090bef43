"""The guest DOE benchmark measures what it says: 4 KiB objects through the 7.3
guest's own DOE driver, every DW a config access, and config reads QEMU answers
itself cheaper than ones that go to our server."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from vdev.vm.env import REPO, VmEnv


def _bench_guest_doe(*args: Any, **kwargs: Any) -> Any:
    """bench/ is not an installed package (make bench runs it from the repo)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("bench.guest_doe").bench_guest_doe(*args, **kwargs)


def test_guest_doe_exchanges_of_4_kib(vm_env: VmEnv) -> None:
    out = _bench_guest_doe(None, floor_rtt_us=10.0, exchanges=3, reads=200)
    assert "failed" not in out and "skipped" not in out, out
    # doe.c: status, 2 header + 2 payload DWs of the 16-byte request, GO, status,
    # 1024 response DWs read and acknowledged, DOR check before the last ack, status.
    assert out["config_accesses_per_exchange"] == 2057
    per = out["per_config_access_us"]
    assert per["guest_read_answered_by_qemu"] < per["guest_read_forwarded_doe_status"]
    assert out["round_trip_floor_ms"] == round(2057 * 10.0 / 1000, 2)
    assert len(out["exchange_ms_all"]) == 3
