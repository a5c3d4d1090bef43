"""Running `vdev` the way a user does: its own process, no terminal on stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vdev.vm.env import REPO


def vdev(*args: str | Path, cwd: Path = REPO, timeout: float = 60,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vdev.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def one_line_error(out: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The command failed with exactly one line on stderr (after any log lines), starting
    with `prefix`, and no traceback; returns that line."""
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(prefix)]
    assert len(errors) == 1, out.stderr
    assert errors[0] == lines[-1], out.stderr
    return errors[0]
