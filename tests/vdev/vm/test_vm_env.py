"""guest/vm-env.sh: mirror from the host's apt configuration, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "guest" / "vm-env.sh"
# Made-up archive addresses (.invalid never resolves) for the sample apt files.
SCHEME = "http" + "://"
MIRROR = SCHEME + "mirror.example.invalid/debian"


def run(apt_etc: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, "VDEV_APT_ETC": str(apt_etc), **env},
    )


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: " + MIRROR + "/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: " + SCHEME + "security.example.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    res = run(tmp_path, "--print-mirror")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == MIRROR


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb " + SCHEME + "old.example.invalid/debian bookworm main\n"
        "deb " + SCHEME + "security.example.invalid/debian-security bookworm-security main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] " + MIRROR + " bookworm main\n"
    )
    res = run(tmp_path, "--print-mirror")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == MIRROR


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    res = run(tmp_path, "--print-mirror")
    assert res.returncode != 0
    assert "no Debian archive found" in res.stderr


def test_stamp_is_stable_and_names_no_host(tmp_path: Path) -> None:
    a, b = run(tmp_path, "--print-stamp"), run(tmp_path, "--print-stamp")
    assert a.returncode == 0 and a.stdout == b.stdout and len(a.stdout.strip()) == 16


def test_not_root_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(cache, 0o777)
    # The checkout (and pytest's tmp_path) may sit below a directory only root can
    # enter (a clone in a `mktemp -d` directory is mode 0700): run a copy the other
    # user can reach.
    with tempfile.TemporaryDirectory() as shared:
        os.chmod(shared, 0o755)
        script = Path(shared) / SCRIPT.name
        shutil.copy(SCRIPT, script)
        os.chmod(script, 0o755)
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "bash", str(script)],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "VDEV_CACHE": str(cache), "HOME": str(tmp_path)},
        )
    assert res.returncode != 0
    assert "needs root" in res.stderr


def test_disk_full_is_a_clear_error(tmp_path: Path) -> None:
    """A cache on a tiny filesystem is refused before mmdebstrap starts."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "VDEV_CACHE": str(mnt)})
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert res.returncode != 0
    assert "MB free" in res.stderr and "VDEV_CACHE" in res.stderr
