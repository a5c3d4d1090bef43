"""Kernel image inspection against images laid out by hand from the specs
(System V gABI ELF64 header, program header and note layout; the x86 boot
protocol's setup header, Documentation/arch/x86/boot.rst)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.helpers.kernel_images import bzimage, elf
from vdev.vm.kernel_image import KernelImageError, inspect_image


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_vmlinux_with_pvh_note(tmp_path: Path) -> None:
    img = inspect_image(write(tmp_path, "vmlinux", elf([
        (b"GNU", 3, bytes(20)),            # a build-id note before it
        (b"Xen", 6, b"linux\0"),           # XEN_ELFNOTE_GUEST_OS: not the entry
        (b"Xen", 18, struct.pack("<I", 0x1000000)),  # XEN_ELFNOTE_PHYS32_ENTRY
    ])))
    assert (img.kind, img.release, img.pvh) == ("vmlinux", "7.3.4-dev", True)


@pytest.mark.parametrize("notes", [
    [],
    [(b"GNU", 3, bytes(20))],
    [(b"Xen", 6, b"linux\0")],              # Xen note, wrong type
    [(b"Linux", 18, bytes(4))],             # type 18, wrong owner
])
def test_vmlinux_without_pvh_note(tmp_path: Path, notes: list[tuple[bytes, int, bytes]]) -> None:
    img = inspect_image(write(tmp_path, "vmlinux", elf(notes)))
    assert (img.kind, img.release, img.pvh) == ("vmlinux", "7.3.4-dev", False)


def test_bzimage_release(tmp_path: Path) -> None:
    img = inspect_image(write(tmp_path, "bzImage",
                              bzimage(b"7.3.4-rc1+ (me@box) #12 SMP PREEMPT Fri Dec 4")))
    assert (img.kind, img.release, img.pvh) == ("bzImage", "7.3.4-rc1+", True)
    assert inspect_image(write(tmp_path, "old", bzimage(None))).release is None


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty file"),
    (b"#!/bin/sh\necho hi\n" * 100, "neither a bzImage nor an ELF vmlinux"),
    (b"\x7fELF\x02\x01", "truncated ELF"),
])
def test_not_a_kernel(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(KernelImageError, match=message):
        inspect_image(write(tmp_path, "x", data))


def test_elf_of_another_machine_or_without_banner(tmp_path: Path) -> None:
    with pytest.raises(KernelImageError, match="not an x86-64 kernel"):
        inspect_image(write(tmp_path, "arm", elf([], machine=183)))
    with pytest.raises(KernelImageError, match="banner"):
        inspect_image(write(tmp_path, "prog", elf([], body=b"hello\0")))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KernelImageError, match="no such file"):
        inspect_image(tmp_path / "nope")
