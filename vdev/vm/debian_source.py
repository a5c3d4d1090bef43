"""Debian's `linux-source-7.3` (trixie-backports): a kernel tree to build from source.

It is the source of the kernel the VM environment boots (Debian's 7.3.4,
with Debian's patches), so the tests can build a kernel the way a kernel
developer does and boot it.  The package is fetched with the host's own
apt, through a private configuration that names only trixie-backports: the
mirror is the one the host's apt configuration uses (read by
guest/vm-env.sh, which builds the VM root from the same mirror) and the
signature is checked against the host's Debian archive keyring, so apt
verifies the Release signature and the package's hash as for any install.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vdev.vm.env import GUEST, VmEnvError

PACKAGE = "linux-source-7.3"
SUITE = "trixie-backports"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class SourceError(VmEnvError):
    """The source package could not be fetched or unpacked; one line says why."""


@dataclass(frozen=True)
class DebianSource:
    """An unpacked source tree and the package version it came from."""

    tree: Path
    version: str


def host_mirror() -> str:
    """The Debian archive URI of the host's apt configuration (vm-env.sh reads it)."""
    proc = subprocess.run(["bash", str(GUEST / "vm-env.sh"), "--print-mirror"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SourceError(proc.stderr.strip().removeprefix("[vm-env] error: ")
                          or "no Debian archive in the host's apt configuration")
    return proc.stdout.strip()


def _apt_options(work: Path) -> list[str]:
    """apt options that use only `work`: our sources list, lists and caches; the
    host's package state is neither read nor changed."""
    return [
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={work / 'lists'}",
        "-o", f"Dir::Cache={work / 'cache'}",
        "-o", "Dir::State::status=/dev/null",
        "-o", "Acquire::Languages=none",
        # The download lands in a root-owned directory: apt's _apt sandbox
        # user could not write there.
        "-o", "APT::Sandbox::User=root",
    ]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise SourceError(f"{what}: {argv[0]} is not installed") from None
    if proc.returncode != 0:
        err = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W:"))]
        detail = err[0] if err else (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if "NO_PUBKEY" in proc.stderr:
            detail = (f"the host's archive keyring {KEYRING} lacks the key {SUITE} is signed "
                      "with (apt-get install debian-archive-keyring)")
        raise SourceError(f"{what} failed: {detail}")
    return proc.stdout


def download(work: Path) -> tuple[Path, str]:
    """Fetch the package into `work`; the .deb and its version."""
    if shutil.which("apt-get") is None:
        raise SourceError("fetching Debian's kernel source needs apt-get (a Debian host)")
    if not KEYRING.is_file():
        raise SourceError(f"no Debian archive keyring at {KEYRING} "
                          "(apt-get install debian-archive-keyring)")
    work.mkdir(parents=True, exist_ok=True)
    for d in ("lists/partial", "cache/archives/partial"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(f"deb [signed-by={KEYRING}] {host_mirror()} {SUITE} main\n")
    opts = _apt_options(work)
    _run(["apt-get", "-q", *opts, "update"], f"apt-get update ({SUITE})")
    version = _run(["apt-cache", *opts, "show", "--no-all-versions", PACKAGE],
                   f"apt-cache show {PACKAGE}")
    version = next((line.split(":", 1)[1].strip() for line in version.splitlines()
                    if line.startswith("Version:")), "")
    if not version:
        raise SourceError(f"{PACKAGE} is not in {SUITE} on the host's Debian mirror")
    for old in work.glob(f"{PACKAGE}_*.deb"):
        old.unlink()
    _run(["apt-get", "-q", *opts, "download", f"{PACKAGE}/{SUITE}"],
         f"apt-get download {PACKAGE}", cwd=work)
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise SourceError(f"apt-get download {PACKAGE} left no .deb in {work}")
    return debs[-1], version


def unpack(deb: Path, dest: Path) -> Path:
    """The kernel tree from the package's /usr/src tarball, as `dest`."""
    tarball = f"./usr/src/{PACKAGE}.tar.xz"
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _run(["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" "$3"', "_",
              str(deb), str(tmp), tarball], f"unpacking {deb.name}")
        _run(["tar", "-x", "-I", "xz -T0", "-C", str(tmp), "-f", str(tmp / tarball)],
             f"unpacking {PACKAGE}.tar.xz")
        tree = tmp / PACKAGE
        if not (tree / "Makefile").is_file():
            raise SourceError(f"{deb.name} holds no kernel tree at {PACKAGE}/")
        shutil.rmtree(dest, ignore_errors=True)
        tree.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch(dest: Path) -> DebianSource:
    """Download and unpack Debian's linux-source-7.3 as `dest` (replaced)."""
    work = dest.with_name(dest.name + ".apt")
    try:
        deb, version = download(work)
        unpack(deb, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DebianSource(dest, version)
