"""vdev.vm.debian_archive against a tiny signed archive (tests/vdev/vm/data/make_archive.py).

The archive is served from a file: URI, so the real code path runs: gpgv on
InRelease, the Sources.xz hash from the signed text, the package's file
hashes from the index.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from vdev.vm.debian_archive import (
    Archive,
    ArchiveError,
    deb822_paragraphs,
    find_source,
    host_mirror,
    release_index_hash,
)

DATA = Path(__file__).resolve().parent / "data" / "archive"
VERSION = "1:0.1+ds-1"
POOL = Path("pool/main/q/qemu")


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A private copy of the test archive that a test may damage."""
    root = tmp_path / "mirror"
    shutil.copytree(DATA, root)
    return root


def archive(root: Path, keyring: str = "keyring.gpg") -> Archive:
    return Archive(root.as_uri(), keyring=DATA / keyring)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_deb822_fields_and_continuation_lines() -> None:
    text = "Package: a\nBuild-Depends: x,\n y\n\n\nPackage: b\nFiles:\n 1 2 f\n 3 4 g\n"
    assert list(deb822_paragraphs(text)) == [
        {"Package": "a", "Build-Depends": "x,\ny"},
        {"Package": "b", "Files": "\n1 2 f\n3 4 g"},
    ]


def test_release_lists_index_hashes() -> None:
    release = "Suite: sid\nSHA256:\n " + "a" * 64 + " 12 main/source/Sources.xz\n"
    assert release_index_hash(release, "main/source/Sources.xz") == ("a" * 64, 12)
    with pytest.raises(ArchiveError, match="does not list main/source/Sources.gz"):
        release_index_hash(release, "main/source/Sources.gz")
    with pytest.raises(ArchiveError, match="no SHA256"):
        release_index_hash("Suite: sid\n", "main/source/Sources.xz")


def test_missing_version_names_the_listed_ones() -> None:
    sources = "Package: qemu\nVersion: 1:9.0-1\nDirectory: p\nChecksums-Sha256:\n " \
              + "b" * 64 + " 3 q.dsc\n"
    assert find_source(sources, "qemu", "1:9.0-1", "sid").files[0].name == "q.dsc"
    with pytest.raises(ArchiveError,
                       match=r"sid does not list qemu 1:10.0-1 \(it lists: 1:9.0-1\)"):
        find_source(sources, "qemu", "1:10.0-1", "sid")


def test_verified_download_from_the_first_suite_that_lists_it(
    mirror: Path, tmp_path: Path
) -> None:
    a = archive(mirror)
    src = a.locate("qemu", VERSION, ["trixie", "sid"])
    assert (src.suite, src.directory) == ("sid", str(POOL))
    assert src.file(".dsc").name == "qemu_0.1+ds-1.dsc"
    files = a.download(src, tmp_path / "dl")
    assert sorted(f.name for f in files) == sorted(f.name for f in src.files)
    for f in files:
        assert f.read_bytes() == (mirror / POOL / f.name).read_bytes()
    assert not list((tmp_path / "dl").glob("*.partial"))


def test_archive_signed_by_another_key_is_refused(mirror: Path) -> None:
    with pytest.raises(ArchiveError, match="InRelease signature not valid"):
        archive(mirror, "other-keyring.gpg").locate("qemu", VERSION, ["sid"])


def test_tampered_inrelease_is_refused(mirror: Path) -> None:
    inrelease = mirror / "dists" / "sid" / "InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"Origin: Test", b"Origin: Evil"))
    with pytest.raises(ArchiveError, match="InRelease signature not valid"):
        archive(mirror).locate("qemu", VERSION, ["sid"])


def test_sources_index_not_matching_the_release_is_refused(mirror: Path) -> None:
    index = mirror / "dists" / "sid" / "main" / "source" / "Sources.xz"
    data = bytearray(index.read_bytes())
    data[-1] ^= 1
    index.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="Sources.xz does not match its signed Release"):
        archive(mirror).locate("qemu", VERSION, ["sid"])


def test_tampered_file_is_refused_and_not_kept(mirror: Path, tmp_path: Path) -> None:
    a = archive(mirror)
    src = a.locate("qemu", VERSION, ["sid"])
    orig = mirror / POOL / "qemu_0.1+ds.orig.tar.xz"
    orig.write_bytes(orig.read_bytes().upper())
    with pytest.raises(ArchiveError, match="orig.tar.xz does not match the signed Sources"):
        a.download(src, tmp_path / "dl")
    assert not (tmp_path / "dl" / orig.name).exists()
    assert not list((tmp_path / "dl").glob("*.partial"))


def test_pinned_hashes_must_match_what_the_archive_signed(mirror: Path, tmp_path: Path) -> None:
    a = archive(mirror)
    src = a.locate("qemu", VERSION, ["sid"])
    pins = {f.name: f.sha256 for f in src.files}
    assert len(a.download(src, tmp_path / "ok", pins)) == 3
    pins["qemu_0.1+ds-1.dsc"] = sha(b"another upload")
    with pytest.raises(ArchiveError, match="not the pinned"):
        a.download(src, tmp_path / "bad", pins)
    del pins["qemu_0.1+ds-1.dsc"]
    with pytest.raises(ArchiveError, match="is not pinned"):
        a.download(src, tmp_path / "bad", pins)


def test_intact_cached_files_are_not_fetched_again(mirror: Path, tmp_path: Path) -> None:
    a = archive(mirror)
    src = a.locate("qemu", VERSION, ["sid"])
    a.download(src, tmp_path / "dl")
    shutil.rmtree(mirror / "pool")
    assert len(a.download(src, tmp_path / "dl")) == 3
    (tmp_path / "dl" / "qemu_0.1+ds-1.dsc").write_bytes(b"damaged")
    with pytest.raises(ArchiveError, match="the Debian archive (has no|is unreachable)"):
        a.download(src, tmp_path / "dl")


def test_version_in_no_suite_is_a_clear_error(mirror: Path) -> None:
    with pytest.raises(ArchiveError, match=r"qemu 1:2.0-1 is not in the Debian archive: "
                       r"trixie does not list qemu 1:2.0-1 \(it lists: 1:0.0.9\+ds-1\)"):
        archive(mirror).locate("qemu", "1:2.0-1", ["trixie"])


def test_missing_suite_and_unreachable_mirror(mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="bookworm-backports"):
        archive(mirror).locate("qemu", VERSION, ["bookworm-backports"])
    with pytest.raises(ArchiveError, match="the Debian archive"):
        archive(tmp_path / "nowhere").locate("qemu", VERSION, ["sid"])


def test_mirror_comes_from_the_host_apt_configuration(tmp_path: Path) -> None:
    uri = (tmp_path / "debian").as_uri()
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {uri}/\nSuites: bookworm\nComponents: main\n")
    assert host_mirror(tmp_path) == uri
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(ArchiveError, match="no Debian archive found"):
        host_mirror(tmp_path)
