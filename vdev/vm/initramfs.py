"""Build the guest's initramfs: busybox, our /init, optional modules and test scripts.

The archive is the kernel's "newc" cpio format (Documentation/driver-api/
early-userspace/buffer-format.rst), gzip-compressed.  We write it ourselves so
no host cpio is needed and the result is byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from construct import Adapter, Bytes, Const, Struct

_MAGIC = b"070701"


class _Hex8(Adapter):  # type: ignore[misc]
    """An 8-character ASCII hex field of the newc header."""

    def _decode(self, obj: bytes, context: object, path: object) -> int:
        return int(obj, 16)

    def _encode(self, obj: int, context: object, path: object) -> bytes:
        return b"%08X" % obj


_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)
NewcHeader = Struct("magic" / Const(_MAGIC), *[name / _Hex8(Bytes(8)) for name in _FIELDS])


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


@dataclass
class Initramfs:
    """An in-memory file tree that serialises to a gzip'd newc cpio."""

    _entries: list[tuple[str, int, bytes]] = field(default_factory=list)

    def directory(self, path: str) -> None:
        self._entries.append((path.strip("/"), stat.S_IFDIR | 0o755, b""))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((path.strip("/"), stat.S_IFREG | mode, data))

    def symlink(self, path: str, target: str) -> None:
        self._entries.append((path.strip("/"), stat.S_IFLNK | 0o777, target.encode()))

    def to_cpio(self) -> bytes:
        out = io.BytesIO()
        entries = [*self._entries, ("TRAILER!!!", 0, b"")]
        for ino, (name, mode, data) in enumerate(entries, start=1):
            raw_name = name.encode() + b"\0"
            hdr = NewcHeader.build(dict(
                ino=ino if name != "TRAILER!!!" else 0, mode=mode, uid=0, gid=0,
                nlink=2 if stat.S_ISDIR(mode) else 1, mtime=0, filesize=len(data),
                devmajor=0, devminor=0, rdevmajor=0, rdevminor=0,
                namesize=len(raw_name), check=0,
            ))
            out.write(hdr + raw_name + _pad4(len(hdr) + len(raw_name)))
            out.write(data + _pad4(len(data)))
        return out.getvalue()

    def write(self, path: Path) -> Path:
        # mtime=0 keeps the gzip stream reproducible.
        path.write_bytes(gzip.compress(self.to_cpio(), compresslevel=6, mtime=0))
        return path


class AdditionError(ValueError):
    """A file given to --initramfs-add that cannot go into the guest."""


@dataclass(frozen=True)
class Addition:
    """A user's file in the guest: a module /init loads before the test
    scripts (modules/add/), a program it runs after them (user-tests/), or
    data for those programs (extra/)."""

    source: Path
    dest: str
    mode: int


def plan_additions(paths: Sequence[str | Path]) -> list[Addition]:
    """Where each --initramfs-add file goes, by what it is: `*.ko` is a
    module, an executable file a program to run, anything else data."""
    out: list[Addition] = []
    seen: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise AdditionError(f"--initramfs-add {raw}: no such file")
        if not path.is_file():
            raise AdditionError(f"--initramfs-add {raw}: not a regular file (give the files "
                                "one by one)")
        if path.suffix == ".ko":
            add = Addition(path, f"modules/add/{path.name}", 0o644)
        elif os.access(path, os.X_OK):
            add = Addition(path, f"user-tests/{path.name}", 0o755)
        else:
            add = Addition(path, f"extra/{path.name}", 0o644)
        if add.dest in seen:
            raise AdditionError(f"--initramfs-add {raw}: /{add.dest} is already {seen[add.dest]}")
        seen[add.dest] = path
        out.append(add)
    return out


def guest_initramfs(
    busybox: Path,
    init_script: Path,
    *,
    modules: dict[str, Path] | None = None,
    scripts: dict[str, bytes] | None = None,
    additions: Sequence[Addition] = (),
    user_env: dict[str, str] | None = None,
) -> Initramfs:
    """The standard guest image: /init from `init_script`, /bin/busybox,
    modules under /modules and test scripts under /tests (run in name order),
    the user's additions (plan_additions) and, for their programs, the
    variables in /user-env."""
    fs = Initramfs()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "modules", "tests", "mnt",
              "modules/add", "user-tests", "extra"):
        fs.directory(d)
    fs.file("bin/busybox", busybox.read_bytes(), 0o755)
    fs.symlink("bin/sh", "busybox")
    fs.file("init", init_script.read_bytes(), 0o755)
    for name, path in sorted((modules or {}).items()):
        fs.file(f"modules/{name}", path.read_bytes())
    for name, body in sorted((scripts or {}).items()):
        fs.file(f"tests/{name}", body, 0o755)
    for add in additions:
        fs.file(add.dest, add.source.read_bytes(), add.mode)
    if user_env:
        fs.file("user-env", "".join(f"export {k}={v}\n" for k, v in user_env.items()).encode())
    return fs
