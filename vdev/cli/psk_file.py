"""`--psk-file FILE` (vdev serve, vdev spdm-emu, vdev tsm connect): pre-shared keys for
PSK_EXCHANGE, one ``HINT=KEY`` per line (spdm.psk).

The keys are secrets: they are never logged or printed (only their hints are), an error
names the line, never the key, and a file that group or others can read earns a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from spdm import psk
from spdm.errors import PskFormatError

log = logging.getLogger(__name__)


def add_psk_argument(parser: Any, side: str) -> None:
    parser.add_argument("--psk-file", metavar="FILE", help=f"pre-shared keys the {side} "
                        "knows, one HINT=KEY per line (text, or hex:...; an empty HINT is "
                        "the key for a PSK_EXCHANGE without a hint); keep it mode 0600")


def read_psk_file(prog: str, path: str | None) -> dict[bytes, bytes]:
    """The table in `path` ({} without one); one line and exit 1 when it is unusable."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SystemExit(f"{prog}: --psk-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"{prog}: --psk-file {path}: not a text file") from None
    try:
        table = psk.parse_file_text(text, f"--psk-file {path}")
    except PskFormatError as exc:
        raise SystemExit(f"{prog}: {exc}") from None
    if not table:
        raise SystemExit(f"{prog}: --psk-file {path}: no HINT=KEY line in it")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--psk-file %s can be read by group or others (mode %o): it holds "
                    "secrets, chmod 600 it", path, stat.S_IMODE(mode))
    weak = psk.weak(table)
    if weak:
        log.warning("PSKs shorter than the 128 bits DSP0274 recommends, for hint(s) %s",
                    ", ".join(weak))
    return table
