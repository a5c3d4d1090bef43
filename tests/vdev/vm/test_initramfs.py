"""The initramfs writer produces a newc archive the kernel can unpack."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

from vdev.vm.initramfs import Initramfs, NewcHeader, guest_initramfs


def entries(cpio: bytes) -> list[tuple[str, int, bytes]]:
    out, pos = [], 0
    while True:
        hdr = NewcHeader.parse(cpio[pos:pos + 110])
        name_end = pos + 110 + hdr.namesize
        name = cpio[pos + 110:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data = cpio[data_start:data_start + hdr.filesize]
        pos = data_start + hdr.filesize + (-(data_start + hdr.filesize) % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, hdr.mode, data))


def test_newc_round_trip() -> None:
    fs = Initramfs()
    fs.directory("bin")
    fs.file("bin/hello", b"abc", 0o755)
    fs.symlink("bin/sh", "busybox")
    cpio = fs.to_cpio()
    assert cpio.startswith(b"070701")
    assert len(cpio) % 4 == 0
    got = entries(cpio)
    assert [(n, stat.S_IFMT(m)) for n, m, _ in got] == [
        ("bin", stat.S_IFDIR), ("bin/hello", stat.S_IFREG), ("bin/sh", stat.S_IFLNK)]
    assert got[1][2] == b"abc" and got[1][1] & 0o777 == 0o755
    assert got[2][2] == b"busybox"


def test_guest_image_is_reproducible(tmp_path: Path) -> None:
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF fake")
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/sh\n")
    a = guest_initramfs(bb, init, scripts={"10-a.sh": b"r a 1\n"}).write(tmp_path / "a.gz")
    b = guest_initramfs(bb, init, scripts={"10-a.sh": b"r a 1\n"}).write(tmp_path / "b.gz")
    assert a.read_bytes() == b.read_bytes()
    names = [n for n, _, _ in entries(gzip.decompress(a.read_bytes()))]
    assert {"init", "bin/busybox", "tests/10-a.sh"} <= set(names)
