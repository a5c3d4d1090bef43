"""The guest /init survives a broken test script and still reports and powers off."""

from __future__ import annotations

from pathlib import Path

from vdev.vm.env import VmEnv
from vdev.vm.session import GuestRun


def test_broken_script_does_not_kill_init(vm_env: VmEnv, workdir: Path) -> None:
    run = GuestRun(env=vm_env, workdir=workdir, timeout=120, scripts={
        "10-broken.sh": b"r before ok\nr oops (unquoted\n",
        "20-next.sh": b"r next ran\n",
    })
    res = run.boot()
    assert res.value("script_failed") == "10-broken.sh 2"
    assert res.value("next") == "ran"
    assert res.completed and res.returncode == 0
    assert not any("Kernel panic" in line for line in res.console)
