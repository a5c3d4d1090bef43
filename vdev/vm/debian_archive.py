"""Fetch a Debian source package from the host's Debian mirror, verified.

The trust chain is apt's (Debian Repository Format, "Release files" and
"Source Indices"): a suite's InRelease file is signed by the archive keys
that the host's `debian-archive-keyring` holds; it lists the SHA-256 of the
suite's `main/source/Sources.xz`; that index lists the SHA-256 of every file
of every source package.  Only the content gpgv vouches for is read, and a
file is kept only after its hash matched.  The caller may also pin the
hashes it expects, so a rebuilt or replaced upload is refused even though
the archive signed it.

The mirror is the one the host's apt configuration names (read by the VM
environment script, so there is one implementation of that lookup); no
mirror host is written into the project.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from vdev.vm.env import GUEST

ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCES_INDEX = "main/source/Sources.xz"
_CHUNK = 1 << 20


class ArchiveError(RuntimeError):
    """The source package could not be fetched or verified; the message says why."""


@dataclass(frozen=True)
class SourceFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SourcePackage:
    """One version of a source package as a signed Sources index lists it."""

    package: str
    version: str
    suite: str
    directory: str
    files: tuple[SourceFile, ...]

    def file(self, suffix: str) -> SourceFile:
        for f in self.files:
            if f.name.endswith(suffix):
                return f
        raise ArchiveError(f"{self.package} {self.version} has no {suffix} file")


def host_mirror(apt_etc: Path | None = None) -> str:
    """The Debian archive URI of the host's apt configuration."""
    env = dict(os.environ)
    if apt_etc is not None:
        env["VDEV_APT_ETC"] = str(apt_etc)
    proc = subprocess.run(
        ["bash", str(GUEST / "vm-env.sh"), "--print-mirror"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = proc.stderr.strip().splitlines()
        raise ArchiveError(reason[-1] if reason else "no Debian archive in the apt configuration")
    return proc.stdout.strip()


def deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of a deb822 file (Release, Sources): field -> value, where a
    multi-line value keeps its continuation lines joined by newlines."""
    para: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if not line.strip():
            if para:
                yield para
            para, field = {}, ""
        elif line[0] in " \t":
            if field:
                para[field] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            para[field] = value.strip()
    if para:
        yield para


def _sha256_lines(value: str) -> dict[str, tuple[str, int]]:
    """A Checksums-Sha256 / SHA256 field: name -> (digest, size)."""
    out: dict[str, tuple[str, int]] = {}
    for line in value.splitlines():
        parts = line.split()
        if len(parts) == 3 and re.fullmatch(r"[0-9a-f]{64}", parts[0]) and parts[1].isdigit():
            out[parts[2]] = (parts[0], int(parts[1]))
    return out


def release_index_hash(release: str, path: str) -> tuple[str, int]:
    """SHA-256 and size of `path` as the (verified) Release text lists it."""
    paras = list(deb822_paragraphs(release))
    if not paras or "SHA256" not in paras[0]:
        raise ArchiveError("the Release file has no SHA256 list")
    entry = _sha256_lines(paras[0]["SHA256"]).get(path)
    if entry is None:
        raise ArchiveError(f"the Release file does not list {path}")
    return entry


def find_source(sources: str, package: str, version: str, suite: str) -> SourcePackage:
    """The entry of `package` `version` in a Sources index."""
    listed = []
    for para in deb822_paragraphs(sources):
        if para.get("Package") != package:
            continue
        listed.append(para.get("Version", "?"))
        if para.get("Version") != version:
            continue
        files = tuple(
            SourceFile(name, digest, size)
            for name, (digest, size) in _sha256_lines(para.get("Checksums-Sha256", "")).items()
        )
        if not files or "Directory" not in para:
            raise ArchiveError(f"{package} {version} in {suite} lists no files")
        return SourcePackage(package, version, suite, para["Directory"], files)
    have = ", ".join(listed) if listed else "none"
    raise ArchiveError(f"{suite} does not list {package} {version} (it lists: {have})")


def verify_signed(data: bytes, keyring: Path) -> str:
    """The text of a clearsigned file that gpgv verified against `keyring`."""
    if not keyring.is_file():
        raise ArchiveError(
            f"archive keyring {keyring} missing (apt-get install debian-archive-keyring)")
    with tempfile.TemporaryDirectory(prefix="vdev-gpgv-") as tmp:
        signed = Path(tmp) / "InRelease"
        signed.write_bytes(data)
        proc = subprocess.run(
            ["gpgv", "--quiet", "--keyring", str(keyring), "--output", "-", str(signed)],
            capture_output=True, timeout=60,
        )
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ArchiveError("InRelease signature not valid for the archive keyring"
                           + (f" ({why[-1]})" if why else ""))
    return proc.stdout.decode()


class Archive:
    """A Debian archive at `mirror`, trusted through `keyring`."""

    def __init__(self, mirror: str, keyring: Path = ARCHIVE_KEYRING, timeout: float = 60.0):
        self.mirror = mirror.rstrip("/")
        self.keyring = keyring
        self.timeout = timeout

    def _open(self, path: str) -> BinaryIO:
        url = f"{self.mirror}/{path}"
        try:
            return cast(BinaryIO, urllib.request.urlopen(url, timeout=self.timeout))
        except urllib.error.HTTPError as exc:
            raise ArchiveError(f"the Debian archive has no {path} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ArchiveError(f"the Debian archive is unreachable ({reason})") from None

    def _get(self, path: str) -> bytes:
        with self._open(path) as rsp:
            data: bytes = rsp.read()
        return data

    def release(self, suite: str) -> str:
        """The verified InRelease text of `suite`."""
        return verify_signed(self._get(f"dists/{suite}/InRelease"), self.keyring)

    def sources(self, suite: str) -> str:
        """The suite's main Sources index, checked against its signed Release."""
        digest, size = release_index_hash(self.release(suite), SOURCES_INDEX)
        data = self._get(f"dists/{suite}/{SOURCES_INDEX}")
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise ArchiveError(f"dists/{suite}/{SOURCES_INDEX} does not match its signed Release")
        try:
            return lzma.decompress(data).decode("utf-8", errors="replace")
        except lzma.LZMAError as exc:
            raise ArchiveError(f"dists/{suite}/{SOURCES_INDEX} is not xz data ({exc})") from None

    def locate(self, package: str, version: str, suites: Sequence[str]) -> SourcePackage:
        """The first of `suites` whose signed index lists `package` `version`."""
        misses = []
        for suite in suites:
            try:
                return find_source(self.sources(suite), package, version, suite)
            except ArchiveError as exc:
                misses.append(str(exc))
        raise ArchiveError(
            f"{package} {version} is not in the Debian archive: " + "; ".join(misses))

    def download(self, src: SourcePackage, dest: Path,
                 pinned: Mapping[str, str] | None = None) -> list[Path]:
        """Download the files of `src` into `dest` (kept when already there and
        intact); each must match its signed hash and, if given, `pinned`."""
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for f in src.files:
            expected = f.sha256
            if pinned is not None:
                if pinned.get(f.name) is None:
                    raise ArchiveError(f"{f.name} of {src.package} {src.version} is not pinned")
                if pinned[f.name] != f.sha256:
                    raise ArchiveError(
                        f"{f.name} in {src.suite} has SHA-256 {f.sha256}, not the pinned "
                        f"{pinned[f.name]}: the upload changed; review it and update the pin")
            target = dest / f.name
            if target.is_file() and file_sha256(target) == expected:
                out.append(target)
                continue
            self._fetch_file(f"{src.directory}/{f.name}", target, f)
            out.append(target)
        return out

    def _fetch_file(self, path: str, target: Path, f: SourceFile) -> None:
        partial = target.with_name(target.name + ".partial")
        h = hashlib.sha256()
        size = 0
        try:
            with self._open(path) as rsp, partial.open("wb") as out:
                while chunk := rsp.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if size != f.size or h.hexdigest() != f.sha256:
                raise ArchiveError(f"{path} does not match the signed Sources index "
                                   f"(SHA-256 {h.hexdigest()}, {size} bytes)")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
