"""Regenerate tests/vdev/vm/data/archive: a tiny signed Debian archive for test_debian_archive.

Two throw-away signing keys are made in a temporary GnuPG home; only their
public keyrings are kept (keyring.gpg signs the archive, other-keyring.gpg is
a key the archive is not signed with).  Run from the repository root:

    python3 tests/vdev/vm/data/make_archive.py
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "archive"
FILES = {
    "qemu_0.1+ds-1.dsc": b"Format: 3.0 (quilt)\nSource: qemu\nVersion: 1:0.1+ds-1\n",
    "qemu_0.1+ds.orig.tar.xz": b"not really a tarball: the upstream source of the test package\n",
    "qemu_0.1+ds-1.debian.tar.xz": b"not really a tarball: the packaging of the test package\n",
}


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", *args],
                          input=data, capture_output=True, check=True).stdout


def key(home: Path, uid: str, keyring: Path) -> None:
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    keyring.write_bytes(gpg(home, "--export", uid))


def sources_entry(package: str, version: str, files: dict[str, bytes]) -> str:
    sums = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    return (f"Package: {package}\nBinary: {package}-system\nVersion: {version}\n"
            f"Maintainer: Test <test@example.invalid>\nBuild-Depends: debhelper-compat (= 13),\n"
            f" meson\nArchitecture: any\nChecksums-Sha256:\n{sums}"
            f"Directory: pool/main/{package[0]}/{package}\nSection: misc\n\n")


def suite(home: Path, name: str, sources: str) -> None:
    d = OUT / "dists" / name
    (d / "main" / "source").mkdir(parents=True)
    xz = lzma.compress(sources.encode())
    (d / "main" / "source" / "Sources.xz").write_bytes(xz)
    release = (f"Origin: Test\nSuite: {name}\nCodename: {name}\nComponents: main\nSHA256:\n"
               f" {hashlib.sha256(b'x').hexdigest()} 1 main/binary-amd64/Packages.xz\n"
               f" {hashlib.sha256(xz).hexdigest()} {len(xz)} main/source/Sources.xz\n")
    (d / "InRelease").write_bytes(
        gpg(home, "--local-user", "vdev test archive", "--clearsign", data=release.encode()))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        key(home, "vdev test archive", OUT / "keyring.gpg")
        key(home, "vdev unrelated key", OUT / "other-keyring.gpg")
        pool = OUT / "pool" / "main" / "q" / "qemu"
        pool.mkdir(parents=True)
        for name, data in FILES.items():
            (pool / name).write_bytes(data)
        suite(home, "sid", sources_entry("other", "1.0-1", {"other_1.0-1.dsc": b"x"})
              + sources_entry("qemu", "1:0.1+ds-1", FILES))
        suite(home, "trixie", sources_entry("qemu", "1:0.0.9+ds-1", {"qemu_0.0.9.dsc": b"y"}))


if __name__ == "__main__":
    main()
