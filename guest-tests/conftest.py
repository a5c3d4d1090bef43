"""Fixtures for tests that boot the real Linux 7.3 guest under QEMU 11.

Every guest test gets its own artefact directory under out/guest-tests/
(server logs, console log with the QEMU command line, initramfs); the path
is printed when a test fails.  With VDEV_REQUIRE_GUEST=1 (set by `make test`)
a missing VM environment is an error, not a skip.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from tests.helpers.doe_path import DoePath
from vdev.vm.env import REPO, VmEnv, VmEnvError, find_env
from vdev.vm.qemu import choose_accel
from vdev.vm.qemu_build import ensure_qemu

ARTIFACTS = REPO / "out" / "guest-tests"
_accels: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="session")
def vm_env() -> VmEnv:
    try:
        env = find_env()
    except VmEnvError as exc:
        if os.environ.get("VDEV_REQUIRE_GUEST") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    _accels.add(choose_accel(env))
    return env


@pytest.fixture(scope="session")
def patched_env(vm_env: VmEnv) -> VmEnv:
    """The VM environment on `make qemu`'s QEMU (qemu/README.md), built first if
    missing: a cold build happens in the first test that asks, so such tests
    carry a long timeout."""
    return dataclasses.replace(vm_env, qemu_override=ensure_qemu())


@pytest.fixture(params=["config_accesses", "doe_batch"])
def doe_path(request: pytest.FixtureRequest, vm_env: VmEnv) -> DoePath:
    """A test taking this runs twice: the guest's DOE accesses forwarded one by one
    (stock QEMU), and grouped by make qemu's QEMU with x-doe-batch.  The second
    may build that QEMU first, so such tests carry a long timeout."""
    if request.param == "doe_batch":
        return DoePath(request.getfixturevalue("patched_env"), True)
    return DoePath(vm_env, False)


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    d = ARTIFACTS / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d


@pytest.fixture(autouse=True)
def private_tmp(monkeypatch: pytest.MonkeyPatch,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every temporary directory a guest test makes (its sockets' short private
    directories: vdev.vm.session.socket_path), and its servers', goes into one of its
    own, removed afterwards: a test leaves nothing in /tmp."""
    # pytest's own base directory (tmp_path) is fixed before TMPDIR changes: made
    # later, it would land in this test's directory and go with it.
    tmp_path_factory.getbasetemp()
    tmp = Path(tempfile.mkdtemp(prefix="vdev-t-"))  # short: UNIX socket paths go there
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "workdir" in getattr(item, "fixturenames", ()):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)
        report.sections.append(("guest artefacts", f"kept in {ARTIFACTS / name}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _accels:
        terminalreporter.write_line(
            "guest tests ran QEMU with accel=" + ",".join(sorted(_accels))
            + " (KVM only when a probe boot succeeds; VDEV_ACCEL forces it)"
        )
